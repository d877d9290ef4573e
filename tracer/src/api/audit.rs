//! The audit log: every API and page request (who, what, which order, when, result), written
//! to the store's append-only table and, when configured, exported as OTLP logs.
//!
//! An answer waits for its record: if the record cannot be written, the request fails (fail
//! closed). Refused and malformed requests are recorded too, but anyone can send those, so
//! they are cut to a bounded size and rate: past the rate they are counted, and the count is
//! recorded once a second instead.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::mpsc;

use crate::otlp_out::{OtlpPoster, string_attr};
use crate::store::{AuditEntry, Store};

/// Audit records waiting for the OTLP logs exporter; over this, they are dropped (and
/// counted as `audit_export_queue_full`): the store keeps them all regardless.
const EXPORT_QUEUE: usize = 4096;
/// Records per OTLP request.
const EXPORT_BATCH: usize = 256;
/// Characters kept of a record's `action` and `who` (a refused request's path is the
/// caller's to choose).
pub const MAX_FIELD_CHARS: usize = 256;
/// Refusals recorded one by one: a burst of this many, then this many per second.
const REFUSALS_BURST: f64 = 60.0;
const REFUSALS_PER_SEC: f64 = 10.0;
/// How often the count of refusals not recorded one by one is written.
const SUPPRESSED_FLUSH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("audit record not written: {0}")]
pub struct AuditError(String);

/// A token bucket for refused requests' records.
struct RefusalBudget {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl RefusalBudget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * REFUSALS_PER_SEC;
        self.tokens = (self.tokens + refill).min(REFUSALS_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[derive(Clone)]
pub struct AuditLog {
    store: Arc<Mutex<Store>>,
    export: Option<mpsc::Sender<AuditEntry>>,
    metrics: crate::metrics::SharedMetrics,
    refusals: Arc<Mutex<RefusalBudget>>,
}

fn capped(text: &mut String) {
    if let Some((cut, _)) = text.char_indices().nth(MAX_FIELD_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
}

impl AuditLog {
    /// `otlp_logs_url`: an OTLP/HTTP logs endpoint (`…/v1/logs`) to copy the log to.
    pub fn new(
        store: Arc<Mutex<Store>>,
        otlp_logs_url: Option<&str>,
        metrics: crate::metrics::SharedMetrics,
    ) -> Self {
        let export = otlp_logs_url.map(|url| {
            let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
            tokio::spawn(export_loop(OtlpPoster::new(url), rx, metrics.clone()));
            tx
        });
        let log = Self {
            store,
            export,
            metrics,
            refusals: Arc::new(Mutex::new(RefusalBudget {
                tokens: REFUSALS_BURST,
                last: Instant::now(),
                suppressed: 0,
            })),
        };
        tokio::spawn(log.clone().flush_suppressed());
        log
    }

    /// Appends one record; the request's answer waits for it, so no answer goes out unlogged.
    pub async fn record(&self, mut entry: AuditEntry) -> Result<(), AuditError> {
        capped(&mut entry.action);
        capped(&mut entry.who);
        if let Some(order) = &mut entry.order_id {
            capped(order);
        }
        let store = self.store.clone();
        let stored = entry.clone();
        let written = tokio::task::spawn_blocking(move || match store.lock() {
            Ok(store) => store.append_audit(&stored).map_err(|e| e.to_string()),
            Err(_) => Err("store lock poisoned".to_string()),
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(err) = written {
            self.metrics.store_errors.inc();
            tracing::error!("audit record not written: {err}");
            return Err(AuditError(err));
        }
        if let Some(export) = &self.export
            && export.try_send(entry).is_err()
        {
            self.metrics.count_drop("audit_export_queue_full");
        }
        Ok(())
    }

    /// Records a refused or malformed request, within the refusals' rate; past it, counts.
    pub async fn record_refusal(&self, entry: AuditEntry) {
        let within = self.refusals.lock().map(|mut b| b.take()).unwrap_or(false);
        if within {
            // The request is refused either way; a failed write is counted by `record`.
            let _ = self.record(entry).await;
        }
    }

    async fn flush_suppressed(self) {
        let mut every = tokio::time::interval(SUPPRESSED_FLUSH);
        loop {
            every.tick().await;
            let suppressed = self
                .refusals
                .lock()
                .map(|mut b| std::mem::take(&mut b.suppressed))
                .unwrap_or(0);
            if suppressed > 0 {
                let summary = AuditEntry {
                    at: crate::clock::unix_now(),
                    who: "refused".into(),
                    action: format!(
                        "{suppressed} refused requests not recorded one by one (over {REFUSALS_PER_SEC}/s)"
                    ),
                    order_id: None,
                    result: "refused".into(),
                };
                if self.record(summary).await.is_err() {
                    // Counted again next second rather than lost.
                    if let Ok(mut b) = self.refusals.lock() {
                        b.suppressed += suppressed;
                    }
                }
            }
        }
    }
}

async fn export_loop(
    poster: OtlpPoster,
    mut rx: mpsc::Receiver<AuditEntry>,
    metrics: crate::metrics::SharedMetrics,
) {
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    while rx.recv_many(&mut batch, EXPORT_BATCH).await > 0 {
        let request = logs_request(&batch);
        batch.clear();
        if let Err(err) = poster.post(&request).await {
            metrics.count_drop("audit_export_failed");
            tracing::warn!("audit log export: {err}");
        }
    }
}

/// The OTLP form of audit records: body = action, attributes = the fields.
pub fn logs_request(entries: &[AuditEntry]) -> ExportLogsServiceRequest {
    let records = entries
        .iter()
        .map(|e| {
            let mut attributes = vec![
                string_attr("audit.who", &e.who),
                string_attr("audit.action", &e.action),
                string_attr("audit.result", &e.result),
            ];
            if let Some(order) = &e.order_id {
                attributes.push(string_attr("order.id", order));
            }
            LogRecord {
                time_unix_nano: e.at,
                observed_time_unix_nano: e.at,
                severity_text: "INFO".into(),
                severity_number: 9,
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(e.action.clone())),
                }),
                attributes,
                event_name: "order_tracer.audit".into(),
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string_attr(
                    "service.name",
                    crate::lifecycle::MONITOR_SERVICE,
                )],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: None,
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}
