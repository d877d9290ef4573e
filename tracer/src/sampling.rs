//! Sampling of what is exported to the tracing backend: whole orders, decided by a hash of
//! the trace id (itself a function of the order id), so every agent on every host keeps or
//! drops the same orders with no coordination.
//!
//! Decisions, in order:
//! 1. An *important* span (status error, or a lookup that found no order) is always kept when
//!    `always_keep_errors` is on, bypassing ratio and ceiling: an error storm is exactly when
//!    the traces are needed, and the export queue still bounds the volume (drops are counted
//!    there). Its order is then pinned: later spans of it are kept too, and its spans that the
//!    ratio dropped a moment ago are recalled from a bounded look-back buffer, so an order with
//!    an error is exported whole as long as its earlier spans are still held.
//! 2. Otherwise the order is kept when `hash < ratio` of the span's service (`service.name` of
//!    the traced process). Ratios are nested: an order kept at ratio 0.1 is also kept at 0.5,
//!    so the orders the lowest-ratio service keeps are complete everywhere.
//! 3. A kept span then needs a token of its service's `max_spans_per_second` bucket (the
//!    ceiling that protects a busy service's host and the backend). Over the ceiling a span is
//!    dropped and counted: the ceiling is a safety valve and may cut an order.
//!
//! The hash: the trace id's bytes 8..16 as a big-endian u64, shifted right by 11, divided by
//! 2^53; keep when below the ratio. In Python:
//! `(int.from_bytes(tid[8:16], "big") >> 11) / 2**53 < ratio`.
//!
//! The in-process lifecycle monitor sees every span, before sampling (see `export::Fanout`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::spans::{AttrValue, SpanRecord, SpanStatus};

/// The `[sampling]` section.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Share of orders exported, 0.0 to 1.0, for services without their own ratio.
    #[serde(default = "default_ratio")]
    pub default_ratio: f64,
    /// Keep error and anomaly spans and their orders whatever the ratio says.
    #[serde(default = "default_true")]
    pub always_keep_errors: bool,
    /// Spans of ratio-dropped orders held back in memory so an error shortly after can still
    /// bring its order back whole. 0 turns the look-back off.
    #[serde(default = "default_lookback")]
    pub error_lookback_spans: usize,
    /// Per service (`service.name`): `[sampling.service.mes-api] ratio = 0.2`.
    #[serde(default, rename = "service")]
    pub services: BTreeMap<String, ServiceSampling>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSampling {
    /// Share of orders exported for this service's spans (default: `default_ratio`).
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Most spans per second exported for this service (no limit when absent).
    #[serde(default)]
    pub max_spans_per_second: Option<u32>,
}

fn default_ratio() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_lookback() -> usize {
    10_000
}

/// Orders pinned by an error, remembered at most this many at a time (oldest forgotten).
const PINNED_ORDERS: usize = 65_536;

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            default_ratio: default_ratio(),
            always_keep_errors: default_true(),
            error_lookback_spans: default_lookback(),
            services: BTreeMap::new(),
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<(), String> {
        let check = |what: &str, ratio: f64| {
            if (0.0..=1.0).contains(&ratio) {
                Ok(())
            } else {
                Err(format!(
                    "sampling: {what} = {ratio} must be between 0.0 (export nothing) and 1.0 (export all)"
                ))
            }
        };
        check("default_ratio", self.default_ratio)?;
        for (name, service) in &self.services {
            if let Some(ratio) = service.ratio {
                check(&format!("service.{name}.ratio"), ratio)?;
            }
            if service.max_spans_per_second == Some(0) {
                return Err(format!(
                    "sampling: service.{name}.max_spans_per_second = 0 would export nothing; use ratio = 0.0 for that, or remove the line for no limit"
                ));
            }
        }
        if self.error_lookback_spans > 1_000_000 {
            return Err(
                "sampling: error_lookback_spans above 1000000 holds too much memory; lower it"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Where sampled spans went, for the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SamplingCounters {
    /// Spans passed on for export (recalled ones included).
    pub kept: u64,
    /// Of those, important spans (errors, anomalies) and spans of pinned orders.
    pub kept_important: u64,
    /// Spans of orders the ratio dropped (held ones included).
    pub dropped_ratio: u64,
    /// Spans over a service's ceiling.
    pub dropped_ceiling: u64,
    /// Held spans brought back because their order had an error.
    pub recalled: u64,
    /// Held spans forgotten to stay within `error_lookback_spans`.
    pub lookback_evicted: u64,
}

/// The ratio decision for a trace id (see the module docs for the formula).
pub fn keep_by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = (u64::from_be_bytes(low) >> 11) as f64 / (1u64 << 53) as f64;
    x < ratio
}

/// Whether an order's root span (emitted by the lifecycle monitor) is exported: when any
/// service keeps the order — ratios are nested, so the widest one decides — or when the order
/// is in trouble. Jaeger then never shows a root without the order's spans, nor the reverse.
pub fn keep_root(config: &SamplingConfig, root: &SpanRecord) -> bool {
    let widest = config
        .services
        .values()
        .filter_map(|s| s.ratio)
        .fold(config.default_ratio, f64::max);
    (config.always_keep_errors && is_important(root)) || keep_by_ratio(&root.trace_id, widest)
}

/// Important spans bypass the ratio: errors, and lookups that found no order.
pub fn is_important(span: &SpanRecord) -> bool {
    span.status == SpanStatus::Error
        || matches!(span.attributes.get("order.lookup"), Some(AttrValue::Str(s)) if s == "not_found")
}

/// Applies a [`SamplingConfig`]. One per agent pipeline; not shared between threads.
#[derive(Debug)]
pub struct Sampler {
    config: SamplingConfig,
    buckets: HashMap<String, TokenBucket>,
    pinned: BoundedSet,
    held: Lookback,
    counters: SamplingCounters,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let held = Lookback::new(if config.always_keep_errors {
            config.error_lookback_spans
        } else {
            0
        });
        Self {
            config,
            buckets: HashMap::new(),
            pinned: BoundedSet::new(PINNED_ORDERS),
            held,
            counters: SamplingCounters::default(),
        }
    }

    pub fn counters(&self) -> &SamplingCounters {
        &self.counters
    }

    /// Decides on one span; spans to export (this one and any recalled) are pushed to `out`.
    pub fn offer(&mut self, span: SpanRecord, now: Instant, out: &mut Vec<SpanRecord>) {
        if self.config.always_keep_errors && is_important(&span) {
            if span.parent_span_id.is_some() {
                self.pinned.insert(span.trace_id);
                let recalled = self.held.release(&span.trace_id);
                self.counters.recalled += recalled.len() as u64;
                self.counters.kept += recalled.len() as u64;
                out.extend(recalled);
            }
            self.keep_important(span, out);
            return;
        }
        if self.pinned.contains(&span.trace_id) {
            self.keep_important(span, out);
            return;
        }
        let service = match span.resource.get("service.name") {
            Some(AttrValue::Str(s)) => s.as_str(),
            _ => "",
        };
        let settings = self.config.services.get(service);
        if !keep_by_ratio(&span.trace_id, self.ratio(settings)) {
            self.counters.dropped_ratio += 1;
            // Only order spans can be recalled: other spans have no order to have an error.
            if span.parent_span_id.is_some() {
                self.counters.lookback_evicted += self.held.hold(span);
            }
            return;
        }
        if let Some(limit) = settings.and_then(|s| s.max_spans_per_second) {
            let bucket = self
                .buckets
                .entry(service.to_string())
                .or_insert_with(|| TokenBucket::new(limit, now));
            if !bucket.take(now) {
                self.counters.dropped_ceiling += 1;
                return;
            }
        }
        self.counters.kept += 1;
        out.push(span);
    }

    /// Whether the ratio drops `service`'s spans of the order with `trace_id`, no error
    /// having pinned it: told before any span is built, for the overloaded pipeline to shed
    /// such orders' exchanges first. An important span would still be kept: the caller
    /// judges that from the exchange.
    pub fn drops_by_ratio(&self, service: &str, trace_id: &[u8; 16]) -> bool {
        let ratio = self.ratio(self.config.services.get(service));
        !self.pinned.contains(trace_id) && !keep_by_ratio(trace_id, ratio)
    }

    /// The ratio of a service with these settings (`None`: none of its own).
    fn ratio(&self, settings: Option<&ServiceSampling>) -> f64 {
        settings
            .and_then(|s| s.ratio)
            .unwrap_or(self.config.default_ratio)
    }

    fn keep_important(&mut self, span: SpanRecord, out: &mut Vec<SpanRecord>) {
        self.counters.kept += 1;
        self.counters.kept_important += 1;
        out.push(span);
    }
}

/// `rate` tokens per second, at most one second's worth saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A set that forgets its oldest members beyond a capacity.
#[derive(Debug)]
struct BoundedSet {
    members: HashSet<[u8; 16]>,
    order: VecDeque<[u8; 16]>,
    capacity: usize,
}

impl BoundedSet {
    fn new(capacity: usize) -> Self {
        Self {
            members: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn contains(&self, id: &[u8; 16]) -> bool {
        self.members.contains(id)
    }

    fn insert(&mut self, id: [u8; 16]) {
        if self.members.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.capacity
                && let Some(old) = self.order.pop_front()
            {
                self.members.remove(&old);
            }
        }
    }
}

/// Spans of ratio-dropped orders, by trace id, oldest evicted first.
#[derive(Debug)]
struct Lookback {
    by_trace: HashMap<[u8; 16], VecDeque<(u64, SpanRecord)>>,
    /// Insertion order; entries of released traces go stale and are skipped or compacted.
    order: VecDeque<([u8; 16], u64)>,
    held: usize,
    capacity: usize,
    next_seq: u64,
}

impl Lookback {
    fn new(capacity: usize) -> Self {
        Self {
            by_trace: HashMap::new(),
            order: VecDeque::new(),
            held: 0,
            capacity,
            next_seq: 0,
        }
    }

    /// Holds a span; returns how many older spans were evicted to make room.
    fn hold(&mut self, span: SpanRecord) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((span.trace_id, seq));
        self.by_trace
            .entry(span.trace_id)
            .or_default()
            .push_back((seq, span));
        self.held += 1;
        let mut evicted = 0;
        while self.held > self.capacity {
            let Some((trace, seq)) = self.order.pop_front() else {
                break;
            };
            if let Some(spans) = self.by_trace.get_mut(&trace)
                && spans.front().is_some_and(|(s, _)| *s == seq)
            {
                spans.pop_front();
                if spans.is_empty() {
                    self.by_trace.remove(&trace);
                }
                self.held -= 1;
                evicted += 1;
            }
        }
        if self.order.len() > 2 * self.capacity.max(16) {
            let live = &self.by_trace;
            self.order.retain(|(trace, seq)| {
                live.get(trace)
                    .is_some_and(|s| s.iter().any(|(q, _)| q == seq))
            });
        }
        evicted
    }

    fn release(&mut self, trace_id: &[u8; 16]) -> Vec<SpanRecord> {
        let spans: Vec<SpanRecord> = self
            .by_trace
            .remove(trace_id)
            .into_iter()
            .flatten()
            .map(|(_, s)| s)
            .collect();
        self.held -= spans.len();
        spans
    }
}

#[cfg(test)]
mod tests;
