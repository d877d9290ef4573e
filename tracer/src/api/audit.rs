//! The audit log: every API and page request (who, what, which order, when, result), written
//! to the store's append-only table and, when configured, exported as OTLP logs.

use std::sync::{Arc, Mutex};

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

#[derive(Clone)]
pub struct AuditLog {
    store: Arc<Mutex<Store>>,
    export: Option<mpsc::Sender<AuditEntry>>,
    metrics: crate::metrics::SharedMetrics,
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
        Self {
            store,
            export,
            metrics,
        }
    }

    /// Appends one record; the request's answer waits for it, so no answer goes out unlogged.
    pub async fn record(&self, entry: AuditEntry) {
        let store = self.store.clone();
        let stored = entry.clone();
        let written = tokio::task::spawn_blocking(move || match store.lock() {
            Ok(store) => store.append_audit(&stored).map_err(|e| e.to_string()),
            Err(_) => Err("store lock poisoned".to_string()),
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            self.metrics.store_errors.inc();
            tracing::error!(?written, "audit record not written");
        }
        if let Some(export) = &self.export
            && export.try_send(entry).is_err()
        {
            self.metrics.count_drop("audit_export_queue_full");
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
