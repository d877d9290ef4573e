//! The lifecycle monitor as a running component; the commands of its two deployment shapes
//! (all-in-one, central) wire it to the agent or to the OTLP receiver from above.
//!
//! [`Monitor`] owns one thread that feeds the [`Lifecycle`] (spans through a bounded channel,
//! a clock tick), persists what changed — with the alerts it raised, in the store's outbox,
//! in the same transaction — then notifies (outbox, metrics, root spans). A restart neither
//! raises a detection twice nor loses its alert; a failed save is retried with everything it
//! held.

pub mod alertmanager;
pub mod alerts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::{ApiState, AuditLog, Auth};
use crate::config::Config;
use crate::export::SpanConsumer;
use crate::lifecycle::{Changes, Event, Lifecycle};
use crate::metrics::SharedMetrics;
use crate::pipeline_metrics::PipelineCounters;
use crate::spans::SpanRecord;
use crate::store::Store;
use alerts::Outbox;

/// Spans waiting for the lifecycle thread; over this they are dropped and counted.
pub const SPAN_QUEUE: usize = 65_536;
/// Clock of the lifecycle: timers (stuck, lost) fire at most this late.
const TICK: Duration = Duration::from_millis(250);
/// Gauges (orders per status, open detections) are recomputed this often.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);
/// Spans taken off the channel per wake-up, so ticks keep their pace under load.
const DRAIN_BATCH: usize = 4096;
/// After a failed save, the next try waits this long, doubling up to `MAX_SAVE_RETRY`.
const FIRST_SAVE_RETRY: Duration = Duration::from_secs(1);
const MAX_SAVE_RETRY: Duration = Duration::from_secs(30);

/// How spans get into the monitor: cheap to clone, never blocks the sender.
#[derive(Clone)]
pub struct SpanSink {
    tx: SyncSender<SpanRecord>,
    metrics: SharedMetrics,
}

impl SpanSink {
    /// Queues a span; `false` when it was dropped (queue full or monitor stopped), counted
    /// in `order_tracer_monitor_drops_total`.
    pub fn send(&self, span: SpanRecord) -> bool {
        match self.tx.try_send(span) {
            Ok(()) => {
                self.metrics.spans_received.inc();
                true
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.count_drop("monitor_queue_full");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.count_drop("monitor_stopped");
                false
            }
        }
    }

    pub(crate) fn count_parse_error(&self) {
        self.metrics.count_drop("otlp_parse_error");
    }
}

/// The export stage's consumer: how the in-process agent's spans reach the monitor.
impl SpanConsumer for SpanSink {
    fn consume(&mut self, span: &SpanRecord) -> bool {
        self.send(span.clone())
    }
}

/// Where the orders' root spans go (an exporter); called on the lifecycle thread, so it
/// must not block.
pub type RootSpanOut = Box<dyn Fn(SpanRecord) + Send>;

pub struct MonitorSettings {
    pub config: Config,
    /// Shared with what runs beside the monitor (receiver, forwarder, agent).
    pub metrics: SharedMetrics,
    pub anonymous_loopback: bool,
    pub root_spans: Option<RootSpanOut>,
}

pub struct Monitor {
    sink: SpanSink,
    metrics: SharedMetrics,
    api: Arc<ApiState>,
    stop: Arc<AtomicBool>,
    core: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    /// Opens the store, resumes the orders it holds, and starts the lifecycle thread.
    /// Call inside a tokio runtime (alerts and audit export run as tasks).
    pub async fn start(settings: MonitorSettings) -> anyhow::Result<Self> {
        crate::process::install_crypto_provider();
        let config = settings.config;
        if !config.api.auth.is_configured() && !settings.anonymous_loopback {
            anyhow::bail!(
                "no way to authenticate API callers: configure [api.auth] (oidc or static_tokens), or pass --allow-anonymous-loopback for a local demo"
            );
        }
        if config.lifecycle.order_expiry_secs > config.store.retention_days * 86_400.0 {
            anyhow::bail!(
                "[lifecycle] order_expiry_secs is longer than [store] retention_days: followed orders would outlive their records; shorten the expiry or lengthen the retention"
            );
        }
        let path = &config.store.path;
        let writer = Store::open(path)?;
        writer.set_audit_retention(config.store.audit_retention_ns())?;
        let reader = Store::open(path)?;
        let orders = writer.load_active()?;
        let resumed = orders.len();
        let mut lifecycle = Lifecycle::restore(config.lifecycle.clone(), orders);
        let inbox = writer.load_inbox()?;
        let requeued = inbox.len();
        let resumed_events = lifecycle.resume_inbox(inbox);
        let metrics = settings.metrics;
        let open = lifecycle
            .orders()
            .flat_map(|o| o.open_detections().cloned())
            .collect();
        let outbox = Outbox::start(
            Store::open(path)?,
            alerts::targets(&config.api, open),
            metrics.clone(),
        )?;
        tracing::info!(
            store = %path.display(),
            resumed,
            requeued,
            alert_targets = ?outbox.targets(),
            "lifecycle monitor started"
        );
        let lifecycle_config = lifecycle.config();
        metrics.know_services(
            lifecycle_config
                .statuses
                .iter()
                .map(|s| s.service.as_str())
                .chain(lifecycle_config.transits.iter().map(|t| t.service.as_str()))
                .chain(config.services.iter().map(|s| s.name.as_str())),
        );
        metrics.refresh(&lifecycle);
        let (tx, rx) = std::sync::mpsc::sync_channel(SPAN_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let core = Core {
            lifecycle,
            store: writer,
            unsaved: Changes::default(),
            next_save: None,
            save_retry: FIRST_SAVE_RETRY,
            metrics: metrics.clone(),
            outbox,
            root_spans: settings.root_spans,
            retention_ns: config.store.retention_ns(),
            audit_retention_ns: config.store.audit_retention_ns(),
            purge_every: Duration::from_secs_f64(config.store.purge_interval_secs),
        };
        let core_stop = stop.clone();
        let core = std::thread::Builder::new()
            .name("lifecycle".into())
            .spawn(move || core.run(rx, core_stop, resumed_events))
            .context("cannot start the lifecycle thread")?;
        let store = Arc::new(Mutex::new(reader));
        let auth = Auth::new(&config.api.auth, settings.anonymous_loopback).await?;
        let audit = AuditLog::new(
            store.clone(),
            config.api.audit_otlp_logs.as_deref(),
            metrics.clone(),
        );
        let api = Arc::new(ApiState {
            store,
            auth,
            audit,
            metrics: metrics.clone(),
            config: config.api.clone(),
            statuses: config.lifecycle.statuses.clone(),
        });
        Ok(Self {
            sink: SpanSink {
                tx,
                metrics: metrics.clone(),
            },
            metrics,
            api,
            stop,
            core: Some(core),
        })
    }

    /// Feed spans here (the agent pipeline, the OTLP receiver).
    pub fn span_sink(&self) -> SpanSink {
        self.sink.clone()
    }

    /// The agent's counters, shown on `/metrics`.
    pub fn pipeline_counters(&self) -> PipelineCounters {
        self.metrics.pipeline()
    }

    pub fn metrics(&self) -> SharedMetrics {
        self.metrics.clone()
    }

    pub fn api_state(&self) -> Arc<ApiState> {
        self.api.clone()
    }

    /// Serves the API (and page, `/metrics`) until the process ends; also keeps the
    /// identity provider's keys fresh.
    pub async fn serve_api(&self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let state = self.api.clone();
        let refresher = state.clone();
        let refresh = tokio::spawn(async move { refresher.auth.refresh_periodically().await });
        let served = crate::api::serve_on(state, listener).await;
        refresh.abort();
        served
    }

    /// Applies what is buffered, saves everything, stops the lifecycle thread.
    pub fn shutdown(mut self) {
        self.stop_core();
    }

    fn stop_core(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(core) = self.core.take()
            && core.join().is_err()
        {
            tracing::error!("the lifecycle thread panicked");
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop_core();
    }
}

/// The lifecycle thread's state.
struct Core {
    lifecycle: Lifecycle,
    store: Store,
    /// What saves that failed held, written with the next one.
    unsaved: Changes,
    /// After a failed save: not before this.
    next_save: Option<Instant>,
    save_retry: Duration,
    metrics: SharedMetrics,
    outbox: Outbox,
    root_spans: Option<RootSpanOut>,
    retention_ns: u64,
    audit_retention_ns: u64,
    purge_every: Duration,
}

impl Core {
    fn run(mut self, rx: Receiver<SpanRecord>, stop: Arc<AtomicBool>, resumed: Vec<Event>) {
        self.settle(resumed);
        let mut last_tick = Instant::now();
        let mut last_gauges = Instant::now();
        let mut last_purge: Option<Instant> = None;
        loop {
            let mut events = Vec::new();
            let wait = (last_tick + TICK).saturating_duration_since(Instant::now());
            let mut disconnected = false;
            match rx.recv_timeout(wait) {
                Ok(span) => {
                    events.extend(self.lifecycle.ingest(span, crate::clock::unix_now()));
                    for span in rx.try_iter().take(DRAIN_BATCH) {
                        events.extend(self.lifecycle.ingest(span, crate::clock::unix_now()));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
            let stopping = disconnected || stop.load(Ordering::SeqCst);
            if stopping {
                for span in rx.try_iter() {
                    events.extend(self.lifecycle.ingest(span, crate::clock::unix_now()));
                }
                events.extend(self.lifecycle.flush(crate::clock::unix_now()));
            } else if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                events.extend(self.lifecycle.tick(crate::clock::unix_now()));
            }
            if stopping {
                // The last chance to save: no waiting out a retry delay.
                self.next_save = None;
            }
            self.settle(events);
            if last_gauges.elapsed() >= GAUGE_REFRESH {
                last_gauges = Instant::now();
                self.metrics.refresh(&self.lifecycle);
            }
            if last_purge.is_none_or(|t| t.elapsed() >= self.purge_every) {
                last_purge = Some(Instant::now());
                self.purge();
            }
            if stopping {
                tracing::info!("lifecycle monitor stopped; state saved");
                return;
            }
        }
    }

    /// Saves what changed with its alerts in one transaction, then tells the outbox.
    fn settle(&mut self, events: Vec<Event>) {
        let mut changes = self.lifecycle.take_changes();
        if !self.outbox.targets().is_empty() {
            changes.alerts = events
                .iter()
                .filter_map(|e| match e {
                    Event::Raised(d) | Event::Resolved(d) => Some(d.clone()),
                    _ => None,
                })
                .collect();
        }
        self.unsaved.merge(changes);
        self.save();
        self.metrics.observe(&events);
        for event in events {
            if let Event::RootSpan(span) = event
                && let Some(out) = &self.root_spans
            {
                out(*span);
            }
        }
    }

    /// Writes what is unsaved; on failure keeps all of it for the next try, which waits a
    /// growing delay (a full disk should not be hammered four times a second).
    fn save(&mut self) {
        if self.unsaved.is_empty() || self.next_save.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match self.store.save(&self.unsaved, self.outbox.targets()) {
            Ok(()) => {
                let queued = self.unsaved.alerts.len() * self.outbox.targets().len();
                self.unsaved = Changes::default();
                self.next_save = None;
                self.save_retry = FIRST_SAVE_RETRY;
                if queued > 0 {
                    self.metrics.alerts_pending.inc_by(queued as i64);
                    self.outbox.wake();
                }
            }
            Err(err) => {
                self.metrics.store_errors.inc();
                tracing::error!(
                    orders = self.unsaved.orders.len(),
                    alerts = self.unsaved.alerts.len(),
                    "saving the lifecycle's changes failed, retrying in {:?}: {err}",
                    self.save_retry
                );
                self.next_save = Some(Instant::now() + self.save_retry);
                self.save_retry = (self.save_retry * 2).min(MAX_SAVE_RETRY);
            }
        }
    }

    fn purge(&mut self) {
        let now = crate::clock::unix_now();
        let cutoff = now.saturating_sub(self.retention_ns);
        let audit_cutoff = now.saturating_sub(self.audit_retention_ns);
        match self.store.purge(cutoff, audit_cutoff) {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "purged records older than the retention"),
            Err(err) => {
                self.metrics.store_errors.inc();
                tracing::error!("retention purge: {err}");
            }
        }
    }
}
