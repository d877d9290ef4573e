//! Export: spans leave the agent here, to an OTLP endpoint (gRPC or HTTP/protobuf) or as JSON
//! lines on stdout, and go to in-process consumers (the lifecycle monitor).
//!
//! The traced apps must never wait for a backend: [`ExportHandle::submit`] puts a span in a
//! queue bounded in spans and in bytes (the spans' estimated size, until their batch is
//! sent or given up) and returns; a full queue drops the span and counts it. One task drains the
//! queue in batches and retries failed batches with exponential backoff, while new spans keep
//! queueing (and, when the endpoint stays down, dropping, counted).

mod config;
mod env;
mod lines;
mod otlp;
mod size;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use config::{ExportConfig, ExportKind};
pub use env::{ExportUse, OtelEnv};
pub use lines::write_line;
pub use otlp::to_request;

use crate::sampling::Sampler;
use crate::spans::{AttrValue, SpanRecord};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Config(String),
    #[error(
        "export TLS setup: {0} (check ca_file, client_cert and client_key: PEM files readable by the agent)"
    )]
    Tls(String),
}

/// What became of the spans handed to the exporter.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportCounters {
    /// Spans the endpoint accepted (or written, for stdout).
    pub exported: u64,
    /// Spans dropped because the queue was full (endpoint slow or down).
    pub dropped_queue_full: u64,
    /// Spans dropped because the queue held `max_queue_bytes` already (large spans, endpoint
    /// slow or down).
    pub dropped_queue_bytes: u64,
    /// Spans dropped because their batch failed for good.
    pub dropped_failed: u64,
    /// Spans the endpoint said it rejected (OTLP partial success).
    pub rejected: u64,
    pub batches: u64,
    pub failed_batches: u64,
    pub retries: u64,
}

#[derive(Default)]
struct Stats {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_queue_bytes: AtomicU64,
    dropped_failed: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
    retries: AtomicU64,
    /// Estimated bytes of the spans queued or in the batch being sent.
    queued_bytes: AtomicUsize,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `bytes` in the queue unless that would pass `max`.
    fn reserve(&self, bytes: usize, max: usize) -> bool {
        self.queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                queued.checked_add(bytes).filter(|total| *total <= max)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ExportCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExportCounters {
            exported: get(&self.exported),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_queue_bytes: get(&self.dropped_queue_bytes),
            dropped_failed: get(&self.dropped_failed),
            rejected: get(&self.rejected),
            batches: get(&self.batches),
            failed_batches: get(&self.failed_batches),
            retries: get(&self.retries),
        }
    }
}

enum Command {
    /// A span and the bytes reserved for it.
    Span(SpanRecord, usize),
    /// Send what is queued, then answer.
    Flush(oneshot::Sender<()>),
}

/// Cheap to clone; hands spans to the export task without ever waiting.
#[derive(Clone)]
pub struct ExportHandle {
    tx: Option<mpsc::Sender<Command>>,
    stats: Arc<Stats>,
    max_bytes: usize,
}

impl ExportHandle {
    /// Queues a span for export, or drops and counts it when the queue is full (in spans or
    /// in bytes).
    pub fn submit(&self, span: SpanRecord) {
        let Some(tx) = &self.tx else { return };
        let bytes = size::span_bytes(&span);
        if !self.stats.reserve(bytes, self.max_bytes) {
            Stats::add(&self.stats.dropped_queue_bytes, 1);
            return;
        }
        if tx.try_send(Command::Span(span, bytes)).is_err() {
            self.stats.release(bytes);
            Stats::add(&self.stats.dropped_queue_full, 1);
        }
    }

    pub fn counters(&self) -> ExportCounters {
        self.stats.snapshot()
    }

    /// Estimated bytes of the spans waiting for export (queued, or in the batch being sent
    /// or retried): at most `max_queue_bytes`.
    pub fn queued_bytes(&self) -> usize {
        self.stats.queued_bytes.load(Ordering::Relaxed)
    }
}

/// A running export task.
pub struct Exporter {
    handle: ExportHandle,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Where batches are written.
enum Backend {
    /// `None` only while a write is in flight on the blocking pool, or after one panicked.
    Lines(Option<Box<dyn std::io::Write + Send>>),
    Otlp(Box<otlp::OtlpClient>),
}

impl Exporter {
    /// Starts the export task on the current tokio runtime. Fails only on configuration (bad
    /// endpoint, unreadable TLS files); an unreachable endpoint is a runtime matter, counted.
    pub fn start(config: &ExportConfig) -> Result<Self, ExportError> {
        let backend = match config.kind {
            ExportKind::None => {
                return Ok(Self {
                    handle: ExportHandle {
                        tx: None,
                        stats: Arc::default(),
                        max_bytes: 0,
                    },
                    task: None,
                });
            }
            ExportKind::Stdout => Backend::Lines(Some(Box::new(std::io::stdout()))),
            ExportKind::OtlpGrpc | ExportKind::OtlpHttp => {
                Backend::Otlp(Box::new(otlp::OtlpClient::new(config)?))
            }
        };
        Ok(Self::spawn(config, backend))
    }

    /// Writes JSON lines (the stdout format) to any writer: a file, a pipe, a test buffer.
    pub fn start_lines(config: &ExportConfig, writer: Box<dyn std::io::Write + Send>) -> Self {
        Self::spawn(config, Backend::Lines(Some(writer)))
    }

    fn spawn(config: &ExportConfig, backend: Backend) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let stats = Arc::new(Stats::default());
        let worker = Worker {
            rx,
            backend,
            stats: stats.clone(),
            batch_bytes: 0,
            batch_size: config.batch_size.max(1),
            flush_every: Duration::from_millis(config.flush_interval_ms.max(1)),
            max_retries: config.max_retries,
            backoff: Duration::from_millis(config.retry_backoff_ms),
            resource: config
                .resource_attributes
                .iter()
                .map(|(k, v)| (k.clone(), AttrValue::Str(v.clone())))
                .collect(),
        };
        let task = tokio::spawn(worker.run());
        Self {
            handle: ExportHandle {
                tx: Some(tx),
                stats,
                max_bytes: config.max_queue_bytes,
            },
            task: Some(task),
        }
    }

    pub fn handle(&self) -> ExportHandle {
        self.handle.clone()
    }

    /// Sends everything queued so far; waits at most `limit`. False when it did not finish.
    pub async fn flush(&self, limit: Duration) -> bool {
        let Some(tx) = &self.handle.tx else {
            return true;
        };
        let (done, wait) = oneshot::channel();
        let sent = tokio::time::timeout(limit, async {
            tx.send(Command::Flush(done)).await.is_ok() && wait.await.is_ok()
        })
        .await;
        sent == Ok(true)
    }

    /// Flushes (within `limit`) and stops the task; returns the final counters.
    pub async fn shutdown(mut self, limit: Duration) -> ExportCounters {
        self.flush(limit).await;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.handle.counters()
    }
}

struct Worker {
    rx: mpsc::Receiver<Command>,
    backend: Backend,
    stats: Arc<Stats>,
    /// The bytes reserved for the spans of the batch: they stay counted in the queue's
    /// bound until the batch is sent or given up (a dead endpoint's retries hold it).
    batch_bytes: usize,
    batch_size: usize,
    flush_every: Duration,
    max_retries: u32,
    backoff: Duration,
    /// `[export] resource_attributes` (with `OTEL_RESOURCE_ATTRIBUTES`): added to every
    /// span's resource where the span does not say otherwise.
    resource: Vec<(String, AttrValue)>,
}

impl Worker {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut deadline = tokio::time::Instant::now() + self.flush_every;
        loop {
            let command = tokio::select! {
                command = self.rx.recv() => command,
                _ = tokio::time::sleep_until(deadline) => {
                    self.send(&mut batch).await;
                    deadline = tokio::time::Instant::now() + self.flush_every;
                    continue;
                }
            };
            match command {
                Some(Command::Span(span, bytes)) => {
                    batch.push(span);
                    self.batch_bytes += bytes;
                    if batch.len() >= self.batch_size {
                        self.send(&mut batch).await;
                        deadline = tokio::time::Instant::now() + self.flush_every;
                    }
                }
                Some(Command::Flush(done)) => {
                    self.send(&mut batch).await;
                    let _ = done.send(());
                }
                None => {
                    self.send(&mut batch).await;
                    return;
                }
            }
        }
    }

    /// Sends and empties the batch, retrying retryable failures with doubling waits.
    async fn send(&mut self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        for span in batch.iter_mut() {
            for (key, value) in &self.resource {
                span.resource.insert_missing(key, || value.clone());
            }
        }
        let n = batch.len() as u64;
        Stats::add(&self.stats.batches, 1);
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            let result = match &mut self.backend {
                Backend::Lines(slot) => {
                    let mut text = Vec::with_capacity(batch.len() * 512);
                    for span in batch.iter() {
                        write_line(&mut text, span);
                    }
                    write_lines(slot, text).await
                }
                Backend::Otlp(client) => client.send(batch).await,
            };
            match result {
                Ok(sent) => {
                    Stats::add(&self.stats.exported, n.saturating_sub(sent.rejected));
                    Stats::add(&self.stats.rejected, sent.rejected.min(n));
                    break;
                }
                Err(failure) if failure.retryable && attempt < self.max_retries => {
                    attempt += 1;
                    Stats::add(&self.stats.retries, 1);
                    tracing::debug!(attempt, error = %failure.message, "span export failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(failure) => {
                    Stats::add(&self.stats.failed_batches, 1);
                    Stats::add(&self.stats.dropped_failed, n);
                    tracing::warn!(spans = n, error = %failure.message, "span export failed; batch dropped (counted)");
                    break;
                }
            }
        }
        batch.clear();
        self.stats.release(std::mem::take(&mut self.batch_bytes));
    }
}

/// Writes on the blocking pool: a stdout nobody reads (a stuck pipe) must hold up only this
/// task, whose queue then fills and drops (counted), not a runtime worker.
async fn write_lines(
    slot: &mut Option<Box<dyn std::io::Write + Send>>,
    text: Vec<u8>,
) -> Result<otlp::Sent, otlp::SendFailure> {
    let failure = |message: String| otlp::SendFailure {
        message,
        retryable: false,
    };
    let mut writer = slot
        .take()
        .ok_or_else(|| failure("the span writer was lost after a panic".into()))?;
    let (writer, result) = tokio::task::spawn_blocking(move || {
        let result = writer.write_all(&text).and_then(|()| writer.flush());
        (writer, result)
    })
    .await
    .map_err(|e| failure(format!("span writer task failed: {e}")))?;
    *slot = Some(writer);
    result
        .map(|()| otlp::Sent { rejected: 0 })
        .map_err(|e| failure(e.to_string()))
}

/// Something in the agent's process that takes every span (the lifecycle monitor).
pub trait SpanConsumer: Send {
    /// Takes a span without waiting; false when it had to drop it.
    fn consume(&mut self, span: &SpanRecord) -> bool;

    /// Every exchange the pipeline saw end before `up_to_unix_ns` has been consumed: how far
    /// the evidence has got, so that a consumer judging time limits (the monitor) waits for a
    /// lagging pipeline instead of judging by the wall clock.
    fn watermark(&mut self, _up_to_unix_ns: u64) {}
}

/// A bounded channel to another task is a consumer; when it is full the span is dropped
/// (counted by [`Fanout`]), never waited for.
impl SpanConsumer for mpsc::Sender<SpanRecord> {
    fn consume(&mut self, span: &SpanRecord) -> bool {
        self.try_send(span.clone()).is_ok()
    }
}

/// Hands each span to the in-process consumers (all spans) and, through the sampler, to the
/// exporter.
pub struct Fanout {
    consumers: Vec<Box<dyn SpanConsumer>>,
    sampler: Sampler,
    export: ExportHandle,
    kept: Vec<SpanRecord>,
    consumer_drops: u64,
}

impl Fanout {
    pub fn new(sampler: Sampler, export: ExportHandle) -> Self {
        Self {
            consumers: Vec::new(),
            sampler,
            export,
            kept: Vec::new(),
            consumer_drops: 0,
        }
    }

    pub fn with_consumer(mut self, consumer: Box<dyn SpanConsumer>) -> Self {
        self.consumers.push(consumer);
        self
    }

    pub fn submit(&mut self, span: SpanRecord) {
        for consumer in &mut self.consumers {
            if !consumer.consume(&span) {
                self.consumer_drops += 1;
            }
        }
        self.sampler.offer(span, Instant::now(), &mut self.kept);
        for span in self.kept.drain(..) {
            self.export.submit(span);
        }
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Tells the in-process consumers how far the pipeline's evidence has got.
    pub fn watermark(&mut self, up_to_unix_ns: u64) {
        for consumer in &mut self.consumers {
            consumer.watermark(up_to_unix_ns);
        }
    }

    /// Spans an in-process consumer could not take (its queue was full).
    pub fn consumer_drops(&self) -> u64 {
        self.consumer_drops
    }
}

#[cfg(test)]
mod tests;
