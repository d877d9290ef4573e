//! Alert notifications: one Alertmanager-compatible webhook message (version 4) per
//! detection raised ("firing") and resolved ("resolved"), through a bounded queue, retried.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::lifecycle::Detection;
use crate::metrics::SharedMetrics;

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(5);
/// Alertmanager's "no end yet".
const OPEN_END: &str = "0001-01-01T00:00:00Z";

#[derive(Clone)]
pub struct AlertQueue {
    tx: mpsc::Sender<Value>,
    metrics: SharedMetrics,
}

impl AlertQueue {
    /// Spawns the sender on the current runtime.
    pub fn start(url: &str, metrics: SharedMetrics) -> Self {
        crate::process::install_crypto_provider();
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        tokio::spawn(send_loop(client, url.to_string(), rx, metrics.clone()));
        Self { tx, metrics }
    }

    /// Queues the notification for a raised or resolved detection; never blocks.
    pub fn notify(&self, detection: &Detection) {
        if self.tx.try_send(payload(detection)).is_err() {
            self.metrics.count_drop("alert_queue_full");
        }
    }
}

async fn send_loop(
    client: reqwest::Client,
    url: String,
    mut rx: mpsc::Receiver<Value>,
    metrics: SharedMetrics,
) {
    while let Some(message) = rx.recv().await {
        let mut backoff = FIRST_BACKOFF;
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            match client.post(&url).json(&message).send().await {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) => tracing::warn!(attempt, "alert webhook {url} answered {}", r.status()),
                Err(err) => tracing::warn!(attempt, "alert webhook {url}: {err}"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        if delivered {
            metrics.alerts_sent.inc();
        } else {
            metrics.alerts_failed.inc();
        }
    }
}

fn alert_name(detection: &Detection) -> String {
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

/// The webhook body, shaped as Alertmanager's so existing receivers take it.
pub fn payload(detection: &Detection) -> Value {
    let status = if detection.resolved_at.is_some() {
        "resolved"
    } else {
        "firing"
    };
    let labels = json!({
        "alertname": alert_name(detection),
        "kind": detection.kind.as_str(),
        "step": detection.step,
        "service": detection.service,
        "order_id": detection.order_id,
        "detection_id": detection.id,
        "severity": if detection.kind.blocks() { "warning" } else { "info" },
    });
    let annotations = json!({
        "summary": format!(
            "order {} {}: did not reach {} ({})",
            detection.order_id,
            detection.kind.as_str(),
            detection.step,
            detection.service
        ),
    });
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
