//! Prometheus exposition (`GET /metrics`) of the monitor: orders per status, dwell time per
//! status, open detections by kind and service, the monitor's own counters, and the agent
//! pipeline's counters ([`crate::pipeline_metrics`]).
//!
//! Labels carry statuses, kinds, services and drop reasons only, never order ids: the label
//! sets stay small and no order data leaves through metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::lifecycle::{Event, Lifecycle};
use crate::pipeline_metrics::{PipelineCounters, ReasonLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectionLabels {
    kind: String,
    service: String,
}

/// Every metric the monitor exposes.
pub struct Metrics {
    registry: Registry,
    orders: Family<StatusLabel, Gauge>,
    dwell: Family<StatusLabel, Histogram, fn() -> Histogram>,
    open_detections: Family<DetectionLabels, Gauge>,
    detections_raised: Family<DetectionLabels, Counter>,
    pipeline: PipelineCounters,
    /// Spans the monitor received (agent channel or OTLP).
    pub spans_received: Counter,
    /// Spans refused because the monitor's queue was full, and other monitor-side drops.
    monitor_drops: Family<ReasonLabel, Counter>,
    pub alerts_sent: Counter,
    pub alerts_failed: Counter,
    /// Alerts in the store's outbox, not yet acknowledged by their target.
    pub alerts_pending: Gauge,
    pub store_errors: Counter,
    /// Gaps in the evidence the monitor noted, by cause.
    evidence_gaps: Family<CauseLabel, Counter>,
    /// How far the time the timers judge at trails the wall clock.
    evidence_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Orders in flight across a gap, waiting for new evidence.
    blind_orders: Gauge,
    /// Services a `service` label may name; any other is `other`, so that senders cannot grow
    /// the label set (a detection's service comes from the spans).
    services: std::sync::RwLock<std::collections::BTreeSet<String>>,
}

/// The label of services not configured.
pub const OTHER_SERVICE: &str = "other";

fn dwell_histogram() -> Histogram {
    // 0.1 s … about 5 days: testbed limits are seconds, a shop's are hours to days.
    Histogram::new(exponential_buckets(0.1, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("order_tracer"),
            orders: Family::default(),
            dwell: Family::new_with_constructor(dwell_histogram),
            open_detections: Family::default(),
            detections_raised: Family::default(),
            pipeline: PipelineCounters::default(),
            spans_received: Counter::default(),
            monitor_drops: Family::default(),
            alerts_sent: Counter::default(),
            alerts_failed: Counter::default(),
            alerts_pending: Gauge::default(),
            store_errors: Counter::default(),
            evidence_gaps: Family::default(),
            evidence_lag: Gauge::default(),
            blind_orders: Gauge::default(),
            services: Default::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "orders",
            "Orders followed, by current status",
            metrics.orders.clone(),
        );
        r.register(
            "status_dwell_seconds",
            "Time orders spent in a status before leaving it",
            metrics.dwell.clone(),
        );
        r.register(
            "open_detections",
            "Open detections, by kind and the service responsible",
            metrics.open_detections.clone(),
        );
        r.register(
            "detections_raised",
            "Detections raised, by kind and service",
            metrics.detections_raised.clone(),
        );
        metrics.pipeline.register(r);
        r.register(
            "monitor_spans_received",
            "Spans the lifecycle monitor received",
            metrics.spans_received.clone(),
        );
        r.register(
            "monitor_drops",
            "Spans or alerts the monitor dropped, by reason",
            metrics.monitor_drops.clone(),
        );
        r.register(
            "alerts_sent",
            "Alert notifications their target acknowledged",
            metrics.alerts_sent.clone(),
        );
        r.register(
            "alerts_failed",
            "Alert deliveries that failed (retried until acknowledged; a 4xx refusal drops the alert)",
            metrics.alerts_failed.clone(),
        );
        r.register(
            "alerts_pending",
            "Alerts in the outbox waiting for their target",
            metrics.alerts_pending.clone(),
        );
        r.register(
            "store_errors",
            "Store writes that failed",
            metrics.store_errors.clone(),
        );
        r.register(
            "evidence_gaps",
            "Times the monitor could not see (its downtime, a source late or silent, events dropped), by cause",
            metrics.evidence_gaps.clone(),
        );
        r.register(
            "evidence_lag_seconds",
            "How far the evidence the timers judge trails the wall clock",
            metrics.evidence_lag.clone(),
        );
        r.register(
            "blind_orders",
            "Orders in flight across a gap in the evidence, waiting for new evidence before their timers run",
            metrics.blind_orders.clone(),
        );
        metrics
    }

    pub fn count_gap(&self, cause: crate::lifecycle::GapCause) {
        self.evidence_gaps
            .get_or_create(&CauseLabel {
                cause: cause.as_str(),
            })
            .inc();
    }

    /// The services the configuration names (lifecycle statuses, transits): label values.
    pub fn know_services<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut services) = self.services.write() {
            services.extend(names.into_iter().map(str::to_string));
        }
    }

    fn detection_labels(&self, d: &crate::lifecycle::Detection) -> DetectionLabels {
        let known = self
            .services
            .read()
            .is_ok_and(|services| services.contains(&d.service));
        DetectionLabels {
            kind: d.kind.as_str().to_string(),
            service: if known {
                d.service.clone()
            } else {
                OTHER_SERVICE.to_string()
            },
        }
    }

    /// The counters the agent adds to (all-in-one mode).
    pub fn pipeline(&self) -> PipelineCounters {
        self.pipeline.clone()
    }

    pub fn count_drop(&self, reason: &str) {
        self.count_drops(reason, 1);
    }

    pub fn count_drops(&self, reason: &str, n: u64) {
        self.monitor_drops
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// Sets the gauges from the lifecycle's current state (at start and periodically).
    pub fn refresh(&self, lifecycle: &Lifecycle) {
        if let Some(judged) = lifecycle.judged() {
            let lag = crate::clock::unix_now().saturating_sub(judged);
            self.evidence_lag.set(lag as f64 / 1e9);
        }
        self.blind_orders.set(lifecycle.blind_orders() as i64);
        for (status, count) in lifecycle.status_counts() {
            self.orders
                .get_or_create(&StatusLabel { status })
                .set(count as i64);
        }
        self.open_detections.clear();
        for order in lifecycle.orders() {
            for d in order.open_detections() {
                self.open_detections
                    .get_or_create(&self.detection_labels(d))
                    .inc();
            }
        }
    }

    /// Accounts for what the lifecycle reported.
    pub fn observe(&self, events: &[Event]) {
        for event in events {
            match event {
                Event::StatusChanged {
                    from: Some(from),
                    dwell_ns: Some(dwell),
                    ..
                } => self
                    .dwell
                    .get_or_create(&StatusLabel {
                        status: from.clone(),
                    })
                    .observe(*dwell as f64 / 1e9),
                Event::Raised(d) => {
                    let labels = self.detection_labels(d);
                    self.detections_raised.get_or_create(&labels).inc();
                    self.open_detections.get_or_create(&labels).inc();
                }
                Event::Resolved(d) => {
                    self.open_detections
                        .get_or_create(&self.detection_labels(d))
                        .dec();
                }
                _ => {}
            }
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Shared handle, as the API and the monitor loop hold it.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Detection, DetectionKind};
    use crate::pipeline_metrics::PipelineTotals;

    #[test]
    fn exposition_has_the_documented_families() {
        let metrics = Metrics::new();
        metrics.know_services(["crm-api"]);
        metrics.pipeline().add_events(5);
        metrics.pipeline().add_drops("ring_full", 2);
        // Totals from a snapshot never lower a counter.
        metrics.pipeline().set_totals(&PipelineTotals {
            events: 3,
            drops: &[("ring_full", 2), ("connections_full", 7)],
            ..Default::default()
        });
        let detection = Detection {
            id: "x".into(),
            order_id: "SO-1".into(),
            kind: DetectionKind::Stuck,
            step: "CLOSED".into(),
            service: "crm-api".into(),
            at: 0,
            resolved_at: None,
        };
        metrics.observe(&[
            Event::Raised(detection.clone()),
            Event::StatusChanged {
                order_id: "SO-1".into(),
                from: Some("SHIPPED".into()),
                to: "CLOSED".into(),
                at: 0,
                dwell_ns: Some(3_000_000_000),
            },
        ]);
        let text = metrics.encode();
        for needle in [
            "order_tracer_pipeline_events_total 5",
            "order_tracer_pipeline_drops_total{reason=\"ring_full\"} 2",
            "order_tracer_pipeline_drops_total{reason=\"connections_full\"} 7",
            "order_tracer_open_detections{kind=\"stuck\",service=\"crm-api\"} 1",
            "order_tracer_status_dwell_seconds_count{status=\"SHIPPED\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        assert!(!text.contains("SO-1"), "no order ids in metrics");
        // A service the configuration does not name is `other`, whatever a sender put there.
        metrics.observe(&[Event::Raised(Detection {
            service: "x".repeat(1000),
            ..detection.clone()
        })]);
        assert!(
            metrics.encode().contains(
                "order_tracer_detections_raised_total{kind=\"stuck\",service=\"other\"} 1"
            )
        );
        metrics.observe(&[Event::Resolved(detection)]);
        assert!(
            metrics
                .encode()
                .contains("order_tracer_open_detections{kind=\"stuck\",service=\"crm-api\"} 0")
        );
    }
}
