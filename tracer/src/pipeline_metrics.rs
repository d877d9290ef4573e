//! The agent pipeline's own counters as Prometheus metrics: kernel events taken, items
//! dropped to stay bounded (by reason), parse errors, export failures. A stand-alone agent
//! serves them on its `/metrics`; in `tracer run` they join the monitor's registry.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: String,
}

/// The agent pipeline's counters. Cheap to clone (shared atomics): the agent keeps a clone
/// and adds to it; `/metrics` shows the totals.
#[derive(Clone, Default)]
pub struct PipelineCounters {
    events: Counter,
    drops: Family<ReasonLabel, Counter>,
    parse_errors: Counter,
    export_failures: Counter,
}

impl PipelineCounters {
    /// Kernel events (socket reads/writes, connects, closes) taken from the ring buffer.
    pub fn add_events(&self, n: u64) {
        self.events.inc_by(n);
    }

    /// Things dropped on purpose to stay bounded, by reason (e.g. `ring_full`,
    /// `connections_full`, `export_queue_full`).
    pub fn add_drops(&self, reason: &str, n: u64) {
        self.drops
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// Bytes that were not HTTP/1.x or broke a message.
    pub fn add_parse_errors(&self, n: u64) {
        self.parse_errors.inc_by(n);
    }

    /// Batches the exporter could not deliver.
    pub fn add_export_failures(&self, n: u64) {
        self.export_failures.inc_by(n);
    }

    /// Adds these counters to `registry` (prefixed `order_tracer` by its owner).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pipeline_events",
            "Kernel events taken by the agent",
            self.events.clone(),
        );
        registry.register(
            "pipeline_drops",
            "Items the agent dropped to stay bounded, by reason",
            self.drops.clone(),
        );
        registry.register(
            "pipeline_parse_errors",
            "Streams the agent could not parse as HTTP",
            self.parse_errors.clone(),
        );
        registry.register(
            "pipeline_export_failures",
            "Span batches the exporter could not deliver",
            self.export_failures.clone(),
        );
    }

    /// For an agent that keeps its own running totals (a counters snapshot): sets each
    /// counter to the total, never lower than it was (Prometheus counters only go up).
    pub fn set_totals(&self, totals: &PipelineTotals<'_>) {
        let raise = |counter: &Counter, total: u64| {
            counter.inner().fetch_max(total, Ordering::Relaxed);
        };
        raise(&self.events, totals.events);
        raise(&self.parse_errors, totals.parse_errors);
        raise(&self.export_failures, totals.export_failures);
        for (reason, total) in totals.drops {
            raise(
                &self.drops.get_or_create(&ReasonLabel {
                    reason: (*reason).to_string(),
                }),
                *total,
            );
        }
    }
}

/// Running totals of the agent pipeline, for [`PipelineCounters::set_totals`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineTotals<'a> {
    pub events: u64,
    /// (reason, total) pairs.
    pub drops: &'a [(&'a str, u64)],
    pub parse_errors: u64,
    pub export_failures: u64,
}
