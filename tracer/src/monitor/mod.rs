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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::{ApiState, AuditLog, Auth};
use crate::config::Config;
use crate::export::SpanConsumer;
use crate::lifecycle::{Changes, Event, Gap, GapCause, Lifecycle};
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
/// How often the store is told how far the timers have judged (what a restart counts its
/// blind time from).
const JUDGED_SAVE: Duration = Duration::from_secs(1);
/// After a failed save, the next try waits this long, doubling up to `MAX_SAVE_RETRY`.
const FIRST_SAVE_RETRY: Duration = Duration::from_secs(1);
const MAX_SAVE_RETRY: Duration = Duration::from_secs(30);

/// What reaches the lifecycle thread, in the order the senders saw it.
enum Evidence {
    Span(SpanRecord),
    /// Spans whose sender waits to hear that they are durable (true) or not (false).
    Durable(Vec<SpanRecord>, tokio::sync::oneshot::Sender<bool>),
    /// Every exchange `source` saw end before `up_to` (unix ns) was sent before this.
    Watermark {
        source: &'static str,
        up_to: u64,
    },
    Gap(Gap),
}

/// The end times (unix ns) of spans the queue refused since the lifecycle thread last
/// looked: the monitor missed evidence there.
struct Refused {
    first: AtomicU64,
    last: AtomicU64,
}

impl Refused {
    fn new() -> Self {
        Self {
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
        }
    }

    fn note(&self, end: u64) {
        self.first.fetch_min(end, Ordering::Relaxed);
        self.last.fetch_max(end, Ordering::Relaxed);
    }

    fn take(&self) -> Option<Gap> {
        let last = self.last.swap(0, Ordering::Relaxed);
        let first = self.first.swap(u64::MAX, Ordering::Relaxed);
        (first <= last).then_some(Gap {
            start: first,
            end: last,
            cause: GapCause::MonitorQueueFull,
        })
    }
}

/// How spans get into the monitor: cheap to clone, never blocks the sender.
#[derive(Clone)]
pub struct SpanSink {
    tx: SyncSender<Evidence>,
    refused: Arc<Refused>,
    metrics: SharedMetrics,
}

/// The in-process agent, as a source of watermarks.
const IN_PROCESS_AGENT: &str = "agent";

impl SpanSink {
    /// Queues a span; `false` when it was dropped (queue full or monitor stopped), counted
    /// in `order_tracer_monitor_drops_total`.
    pub fn send(&self, span: SpanRecord) -> bool {
        let end = span.end_unix_nano;
        match self.tx.try_send(Evidence::Span(span)) {
            Ok(()) => {
                self.metrics.spans_received.inc();
                true
            }
            Err(TrySendError::Full(_)) => {
                self.refused.note(end);
                self.metrics.count_drop("monitor_queue_full");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.count_drop("monitor_stopped");
                false
            }
        }
    }

    /// Queues spans whose sender answers only once they are durable: the answer comes true
    /// once the store has committed them (with the batch that holds them), false when it
    /// could not (send them again later). `Err(n)`: the queue was full or the monitor stopped,
    /// none of the `n` spans was taken.
    pub fn send_durable(
        &self,
        spans: Vec<SpanRecord>,
    ) -> Result<tokio::sync::oneshot::Receiver<bool>, usize> {
        let n = spans.len();
        let ends: Option<(u64, u64)> = spans.iter().fold(None, |range, s| {
            let end = s.end_unix_nano;
            Some(range.map_or((end, end), |(a, b)| (a.min(end), b.max(end))))
        });
        let (done, answer) = tokio::sync::oneshot::channel();
        match self.tx.try_send(Evidence::Durable(spans, done)) {
            Ok(()) => {
                self.metrics.spans_received.inc_by(n as u64);
                Ok(answer)
            }
            Err(TrySendError::Full(_)) => {
                if let Some((first, last)) = ends {
                    self.refused.note(first);
                    self.refused.note(last);
                }
                self.metrics.count_drops("monitor_queue_full", n as u64);
                Err(n)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.count_drops("monitor_stopped", n as u64);
                Err(n)
            }
        }
    }

    pub(crate) fn count_parse_error(&self) {
        self.metrics.count_drop("otlp_parse_error");
    }

    /// Tells the monitor it may have missed exchanges in `gap` (e.g. the agent's capture
    /// dropped events then). A full queue is a gap of its own, noted anyway.
    pub fn note_gap(&self, gap: Gap) {
        let end = gap.end;
        if self.tx.try_send(Evidence::Gap(gap)).is_err() {
            self.refused.note(end);
        }
    }

    fn watermark(&self, source: &'static str, up_to: u64) {
        // A watermark lost to a full queue is followed by a newer one.
        let _ = self.tx.try_send(Evidence::Watermark { source, up_to });
    }
}

/// The export stage's consumer: how the in-process agent's spans and watermarks reach the
/// monitor.
impl SpanConsumer for SpanSink {
    fn consume(&mut self, span: &SpanRecord) -> bool {
        self.send(span.clone())
    }

    fn watermark(&mut self, up_to_unix_ns: u64) {
        SpanSink::watermark(self, IN_PROCESS_AGENT, up_to_unix_ns);
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
    /// Whether evidence is lost while the monitor is down: in-process, the agent stops with
    /// it, so its downtime is a gap; OTLP senders keep and resend their spans, so there it is
    /// only a delay.
    pub blind_when_down: bool,
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
        if let Some(judged) = writer.load_judged()?
            && settings.blind_when_down
        {
            lifecycle.resume_after_downtime(judged, crate::clock::unix_now());
        }
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
        let refused = Arc::new(Refused::new());
        let stop = Arc::new(AtomicBool::new(false));
        let core = Core {
            lifecycle,
            store: writer,
            unsaved: Changes::default(),
            refused: refused.clone(),
            awaiting: Vec::new(),
            last_judged_save: None,
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
                refused,
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
    refused: Arc<Refused>,
    /// Senders of spans taken in since the last save, waiting to hear whether it held.
    awaiting: Vec<tokio::sync::oneshot::Sender<bool>>,
    last_judged_save: Option<Instant>,
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
    fn run(mut self, rx: Receiver<Evidence>, stop: Arc<AtomicBool>, resumed: Vec<Event>) {
        self.settle(resumed);
        let mut last_tick = Instant::now();
        let mut last_gauges = Instant::now();
        let mut last_purge: Option<Instant> = None;
        loop {
            let mut events = Vec::new();
            let wait = (last_tick + TICK).saturating_duration_since(Instant::now());
            let mut disconnected = false;
            match rx.recv_timeout(wait) {
                Ok(evidence) => {
                    self.take_in(evidence, &mut events);
                    for evidence in rx.try_iter().take(DRAIN_BATCH) {
                        self.take_in(evidence, &mut events);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
            if let Some(gap) = self.refused.take() {
                self.lifecycle.note_gap(gap);
            }
            let stopping = disconnected || stop.load(Ordering::SeqCst);
            if stopping {
                for evidence in rx.try_iter() {
                    self.take_in(evidence, &mut events);
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

    fn take_in(&mut self, evidence: Evidence, events: &mut Vec<Event>) {
        let now = crate::clock::unix_now();
        match evidence {
            Evidence::Span(span) => events.extend(self.lifecycle.ingest(span, now)),
            Evidence::Durable(spans, done) => {
                for span in spans {
                    events.extend(self.lifecycle.ingest(span, now));
                }
                self.awaiting.push(done);
            }
            Evidence::Watermark { source, up_to } => self.lifecycle.watermark(source, up_to, now),
            Evidence::Gap(gap) => {
                self.lifecycle.note_gap(gap);
            }
        }
    }

    /// Saves what changed with its alerts in one transaction, then tells the outbox.
    fn settle(&mut self, events: Vec<Event>) {
        let mut changes = self.lifecycle.take_changes();
        for gap in &changes.gaps {
            self.metrics.count_gap(gap.cause);
        }
        if self
            .last_judged_save
            .is_none_or(|t| t.elapsed() >= JUDGED_SAVE)
        {
            self.last_judged_save = Some(Instant::now());
            changes.judged = self.lifecycle.judged();
        }
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
        // Everything taken in so far is in this save (or was in an earlier one).
        let durable = self.unsaved.is_empty();
        for done in self.awaiting.drain(..) {
            // A sender that stopped waiting needs no answer.
            let _ = done.send(durable);
        }
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
