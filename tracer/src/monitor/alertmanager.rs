//! Alertmanager's own API as an alert target (`[api] alertmanager_url`): each detection is
//! posted to `POST /api/v2/alerts` as one alert labelled with its kind, step, service and
//! order, `startsAt` when raised and `endsAt` when resolved.
//!
//! Alertmanager resolves a firing alert by itself once its `endsAt` passes, so, as Prometheus
//! does, the open ones are posted again every [`RESEND_EVERY`] with `endsAt` a few periods
//! ahead: a monitor that stops lets them lapse instead of paging forever. The outbox delivers
//! each change at least once; the resend keeps what is open alive in between.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::alerts::{AlertTarget, Delivery, DeliveryError, alert_name, http_client, summary};
use crate::clock::{rfc3339, unix_now};
use crate::lifecycle::Detection;

/// How often the open alerts are posted again.
pub const RESEND_EVERY: Duration = Duration::from_secs(60);
/// A firing alert's `endsAt` is this many resend periods ahead.
const HOLD_PERIODS: u64 = 4;
/// Alerts per request.
const BATCH: usize = 64;

pub struct Alertmanager {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// `…/api/v2/alerts`.
    url: String,
    jaeger_url: Option<String>,
    /// The firing detections delivered, by id: what the resend keeps alive.
    open: Mutex<BTreeMap<String, Detection>>,
}

impl Alertmanager {
    /// `open` are the detections open at start (a restart must keep their alerts alive).
    /// Spawns the resend task on the current runtime.
    pub fn new(base_url: &str, jaeger_url: Option<&str>, open: Vec<Detection>) -> Self {
        let inner = Arc::new(Inner {
            client: http_client(),
            url: format!("{}/api/v2/alerts", base_url.trim_end_matches('/')),
            jaeger_url: jaeger_url.map(|u| u.trim_end_matches('/').to_string()),
            open: Mutex::new(open.into_iter().map(|d| (d.id.clone(), d)).collect()),
        });
        tokio::spawn(resend_loop(Arc::downgrade(&inner)));
        Self { inner }
    }
}

impl AlertTarget for Alertmanager {
    fn name(&self) -> &'static str {
        "alertmanager"
    }

    fn batch_size(&self) -> usize {
        BATCH
    }

    fn deliver<'a>(&'a self, alerts: &'a [Detection]) -> Delivery<'a> {
        Box::pin(async move {
            self.inner.post(alerts).await?;
            let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            for detection in alerts {
                if detection.resolved_at.is_some() {
                    open.remove(&detection.id);
                } else {
                    open.insert(detection.id.clone(), detection.clone());
                }
            }
            Ok(())
        })
    }
}

impl Inner {
    async fn post(&self, alerts: &[Detection]) -> Result<(), DeliveryError> {
        let now = unix_now();
        let body: Vec<Value> = alerts
            .iter()
            .map(|d| posted(d, now, self.jaeger_url.as_deref()))
            .collect();
        let what = || format!("Alertmanager {}", self.url);
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| DeliveryError::Retry(format!("{}: {e}", what())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::from_status(&what(), response.status()))
        }
    }
}

/// Posts the open alerts again each period, until the target is dropped.
async fn resend_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(RESEND_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let open: Vec<Detection> = inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for batch in open.chunks(BATCH) {
            if let Err(e) = inner.post(batch).await {
                // The next period tries again; the outbox still owns every change.
                tracing::warn!("re-posting open alerts: {e}");
                break;
            }
        }
    }
}

/// One alert as `POST /api/v2/alerts` takes it. The labels identify the detection (so a copy
/// posted again is the same alert to Alertmanager); `endsAt` is the resolution when there is
/// one, else a few resend periods ahead.
fn posted(detection: &Detection, now: u64, jaeger_url: Option<&str>) -> Value {
    let ends = detection
        .resolved_at
        .unwrap_or_else(|| now.saturating_add(HOLD_PERIODS * RESEND_EVERY.as_nanos() as u64));
    let mut alert = json!({
        "labels": {
            "alertname": alert_name(detection),
            "kind": detection.kind.as_str(),
            "step": detection.step,
            "service": detection.service,
            "order_id": detection.order_id,
            "severity": if detection.kind.blocks() { "warning" } else { "info" },
        },
        "annotations": {
            "summary": summary(detection),
            "trace_id": hex::encode(crate::spans::order_trace_id(&detection.order_id)),
        },
        "startsAt": rfc3339(detection.at),
        "endsAt": rfc3339(ends),
    });
    if let Some(base) = jaeger_url {
        alert["generatorURL"] = json!(format!(
            "{base}/trace/{}",
            hex::encode(crate::spans::order_trace_id(&detection.order_id))
        ));
    }
    alert
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::DetectionKind;

    #[test]
    fn alerts_carry_the_detection_and_end_when_resolved() {
        let mut detection = Detection {
            id: "d1".into(),
            order_id: "SO-1".into(),
            kind: DetectionKind::Stuck,
            step: "PACKAGING".into(),
            service: "mes-api".into(),
            at: 1_000_000_000,
            resolved_at: None,
        };
        let now = 10_000_000_000;
        let firing = posted(&detection, now, Some("https://jaeger.example"));
        assert_eq!(firing["labels"]["alertname"], "OrderStuck");
        assert_eq!(firing["labels"]["order_id"], "SO-1");
        assert_eq!(firing["labels"]["step"], "PACKAGING");
        assert_eq!(firing["startsAt"], "1970-01-01T00:00:01Z");
        assert_eq!(
            firing["endsAt"],
            rfc3339(now + 240_000_000_000),
            "held four periods"
        );
        assert!(
            firing["generatorURL"]
                .as_str()
                .unwrap()
                .starts_with("https://jaeger.example/trace/")
        );
        detection.resolved_at = Some(5_000_000_000);
        let resolved = posted(&detection, now, None);
        assert_eq!(resolved["endsAt"], "1970-01-01T00:00:05Z");
        assert_eq!(resolved["labels"], firing["labels"], "the same alert");
        assert!(resolved.get("generatorURL").is_none());
    }
}
