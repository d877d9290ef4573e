//! Alert notifications, delivered at least once: the lifecycle thread queues every detection
//! raised and resolved in the store's outbox, in the same transaction that saves it; one task
//! per [`AlertTarget`] takes them off in order, retrying with backoff until the target
//! acknowledges, across restarts. A copy delivered twice (a crash between the delivery and
//! its removal from the outbox) is identical to the first, so receivers can drop duplicates
//! by [`alert_id`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::lifecycle::Detection;
use crate::metrics::SharedMetrics;
use crate::store::{PendingAlert, Store};

/// Alerts kept per target while it is unreachable; over this, the oldest are dropped
/// (counted as `alert_outbox_full`).
pub const MAX_QUEUED_PER_TARGET: usize = 100_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(5);
/// Alertmanager's "no end yet".
const OPEN_END: &str = "0001-01-01T00:00:00Z";

/// Why a delivery did not go through.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The target may take it later (unreachable, 5xx, 429, time-out): tried again.
    #[error("{0} (will retry)")]
    Retry(String),
    /// The target refused the content itself (another 4xx): retrying cannot help, dropped.
    #[error("{0} (refused, dropped)")]
    Refused(String),
}

impl DeliveryError {
    /// Classifies an HTTP answer that was not a success.
    pub fn from_status(target: &str, status: reqwest::StatusCode) -> Self {
        let message = format!("{target} answered {status}");
        if status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Self::Refused(message)
        } else {
            Self::Retry(message)
        }
    }
}

pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// Where alerts go: the Alertmanager-style webhook, Alertmanager's own API, …
///
/// `deliver` may be called again with alerts it already delivered (at-least-once): a target
/// must send the same content each time, carrying [`alert_id`], so receivers drop copies.
pub trait AlertTarget: Send + Sync + 'static {
    /// Names this target's queue in the store: stable across restarts and unique.
    fn name(&self) -> &'static str;
    /// At most this many alerts per `deliver`, oldest first.
    fn batch_size(&self) -> usize {
        1
    }
    fn deliver<'a>(&'a self, alerts: &'a [Detection]) -> Delivery<'a>;
}

/// The targets `[api]` configures, in a fixed order. `open` are the detections open now.
pub fn targets(api: &crate::api::ApiConfig, open: Vec<Detection>) -> Vec<Box<dyn AlertTarget>> {
    let mut targets: Vec<Box<dyn AlertTarget>> = Vec::new();
    if let Some(url) = &api.alert_webhook {
        targets.push(Box::new(Webhook::new(url)));
    }
    if let Some(url) = &api.alertmanager_url {
        targets.push(Box::new(super::alertmanager::Alertmanager::new(
            url,
            api.jaeger_url.as_deref(),
            open,
        )));
    }
    targets
}

/// Stable id of one notification: the detection and whether it fires or resolves.
pub fn alert_id(detection: &Detection) -> String {
    format!("{}-{}", detection.id, status_of(detection))
}

fn status_of(detection: &Detection) -> &'static str {
    if detection.resolved_at.is_some() {
        "resolved"
    } else {
        "firing"
    }
}

/// An HTTP client for alert targets (rustls, the system's roots, a time-out).
pub fn http_client() -> reqwest::Client {
    crate::process::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The Alertmanager-compatible webhook (`[api] alert_webhook`): one message per alert.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
}

impl Webhook {
    pub fn new(url: &str) -> Self {
        Self {
            client: http_client(),
            url: url.to_string(),
        }
    }
}

impl AlertTarget for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn deliver<'a>(&'a self, alerts: &'a [Detection]) -> Delivery<'a> {
        Box::pin(async move {
            for detection in alerts {
                let response = self
                    .client
                    .post(&self.url)
                    .header("Idempotency-Key", alert_id(detection))
                    .json(&payload(detection))
                    .send()
                    .await
                    .map_err(|e| {
                        DeliveryError::Retry(format!("alert webhook {}: {e}", self.url))
                    })?;
                if !response.status().is_success() {
                    return Err(DeliveryError::from_status(
                        &format!("alert webhook {}", self.url),
                        response.status(),
                    ));
                }
            }
            Ok(())
        })
    }
}

/// The delivery side of the outbox: one task per target.
pub struct Outbox {
    names: Vec<&'static str>,
    wake: Vec<Arc<Notify>>,
}

impl Outbox {
    /// Spawns one delivery task per target on the current runtime. `store` is a connection
    /// of the outbox's own; what targets no longer configured left queued is dropped.
    pub fn start(
        store: Store,
        targets: Vec<Box<dyn AlertTarget>>,
        metrics: SharedMetrics,
    ) -> Result<Self, crate::store::StoreError> {
        let names: Vec<&'static str> = targets.iter().map(|t| t.name()).collect();
        let dropped = store.drop_alerts_except(&names)?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "alerts queued for targets no longer configured were dropped"
            );
        }
        metrics
            .alerts_pending
            .set(store.pending_alert_count()? as i64);
        let store = Arc::new(Mutex::new(store));
        let mut wake = Vec::new();
        for target in targets {
            let notify = Arc::new(Notify::new());
            wake.push(notify.clone());
            tokio::spawn(deliver_loop(target, store.clone(), notify, metrics.clone()));
        }
        Ok(Self { names, wake })
    }

    /// The targets every alert is queued for.
    pub fn targets(&self) -> &[&'static str] {
        &self.names
    }

    /// New alerts were committed; callable from any thread.
    pub fn wake(&self) {
        for notify in &self.wake {
            notify.notify_one();
        }
    }
}

/// Runs a store call on the blocking pool.
async fn with_store<T: Send + 'static>(
    store: &Arc<Mutex<Store>>,
    job: impl FnOnce(&mut Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = store
            .lock()
            .map_err(|_| "store lock poisoned".to_string())?;
        job(&mut store).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn deliver_loop(
    target: Box<dyn AlertTarget>,
    store: Arc<Mutex<Store>>,
    wake: Arc<Notify>,
    metrics: SharedMetrics,
) {
    let name = target.name();
    let batch = target.batch_size().max(1);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let due = with_store(&store, move |s| s.pending_alerts(name, batch)).await;
        let alerts: Vec<PendingAlert> = match due {
            Ok(alerts) => alerts,
            Err(err) => {
                metrics.store_errors.inc();
                tracing::error!(alert_target = name, "reading the alert outbox: {err}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if alerts.is_empty() {
            wake.notified().await;
            continue;
        }
        let detections: Vec<Detection> = alerts.iter().map(|a| a.detection.clone()).collect();
        let seqs: Vec<i64> = alerts.iter().map(|a| a.seq).collect();
        match target.deliver(&detections).await {
            Ok(()) => {
                backoff = FIRST_BACKOFF;
                metrics.alerts_sent.inc_by(seqs.len() as u64);
                forget(&store, &metrics, seqs).await;
            }
            Err(DeliveryError::Refused(err)) => {
                metrics.alerts_failed.inc_by(seqs.len() as u64);
                tracing::error!(alert_target = name, "alert dropped: {err}");
                forget(&store, &metrics, seqs).await;
            }
            Err(DeliveryError::Retry(err)) => {
                metrics.alerts_failed.inc();
                let attempts = alerts[0].attempts + 1;
                tracing::warn!(
                    alert_target = name,
                    attempts,
                    "alert delivery failed, retrying in {backoff:?}: {err}"
                );
                let head = seqs[0];
                let noted = with_store(&store, move |s| {
                    s.alert_failed(head, &err)?;
                    s.trim_alerts(name, MAX_QUEUED_PER_TARGET)
                })
                .await;
                match noted {
                    Ok(0) => {}
                    Ok(trimmed) => {
                        metrics.count_drops("alert_outbox_full", trimmed as u64);
                        refresh_pending(&store, &metrics).await;
                    }
                    Err(err) => {
                        metrics.store_errors.inc();
                        tracing::error!(alert_target = name, "noting a failed alert: {err}");
                    }
                }
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Takes delivered (or refused) alerts off the outbox. Should that fail, they are sent again
/// later: a duplicate, never a loss.
async fn forget(store: &Arc<Mutex<Store>>, metrics: &SharedMetrics, seqs: Vec<i64>) {
    if let Err(err) = with_store(store, move |s| s.alerts_delivered(&seqs)).await {
        metrics.store_errors.inc();
        tracing::error!("removing delivered alerts from the outbox: {err}");
    }
    refresh_pending(store, metrics).await;
}

async fn refresh_pending(store: &Arc<Mutex<Store>>, metrics: &SharedMetrics) {
    if let Ok(count) = with_store(store, |s| s.pending_alert_count()).await {
        metrics.alerts_pending.set(count as i64);
    }
}

/// ±20 %, so that monitors restarted together do not retry in step.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random_range(0.8..1.2))
}

pub(super) fn alert_name(detection: &Detection) -> String {
    let mut name = String::from("Order");
    for word in detection.kind.as_str().split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

/// What a person reads first about the detection.
pub(super) fn summary(detection: &Detection) -> String {
    format!(
        "order {} {}: did not reach {} ({})",
        detection.order_id,
        detection.kind.as_str(),
        detection.step,
        detection.service
    )
}

/// The webhook body, shaped as Alertmanager's so existing receivers take it.
pub fn payload(detection: &Detection) -> Value {
    let status = status_of(detection);
    let labels = json!({
        "alertname": alert_name(detection),
        "kind": detection.kind.as_str(),
        "step": detection.step,
        "service": detection.service,
        "order_id": detection.order_id,
        "detection_id": detection.id,
        "severity": if detection.kind.blocks() { "warning" } else { "info" },
    });
    let annotations = json!({ "summary": summary(detection) });
    let rfc = crate::clock::rfc3339;
    json!({
        "version": "4",
        "groupKey": format!("order-tracer:{}", detection.id),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "order-tracer",
        "groupLabels": {"detection_id": detection.id},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc(detection.at),
            "endsAt": detection.resolved_at.map(rfc).unwrap_or_else(|| OPEN_END.to_string()),
            "generatorURL": "",
            "fingerprint": detection.id,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::DetectionKind;

    #[test]
    fn payload_is_alertmanager_shaped() {
        let mut detection = Detection {
            id: "abc".into(),
            order_id: "SO-1".into(),
            kind: DetectionKind::LostInTransit,
            step: "MANUFACTURING_APPROVED".into(),
            service: "crm-api".into(),
            at: 1_000_000_000,
            resolved_at: None,
        };
        let firing = payload(&detection);
        assert_eq!(firing["version"], "4");
        assert_eq!(firing["status"], "firing");
        assert_eq!(
            firing["alerts"][0]["labels"]["alertname"],
            "OrderLostInTransit"
        );
        assert_eq!(firing["alerts"][0]["endsAt"], OPEN_END);
        assert_eq!(firing["alerts"][0]["startsAt"], "1970-01-01T00:00:01Z");
        detection.resolved_at = Some(2_000_000_000);
        let resolved = payload(&detection);
        assert_eq!(resolved["status"], "resolved");
        assert_eq!(resolved["alerts"][0]["endsAt"], "1970-01-01T00:00:02Z");
    }
}
