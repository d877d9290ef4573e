//! The lifecycle monitor's logic: where each order is, which are stuck, which were lost.
//!
//! [`Lifecycle`] is fed exchange spans ([`SpanRecord`], attributes per docs/contracts.md §2)
//! and a clock ([`Lifecycle::tick`]); it answers with [`Event`]s: status changes, detections
//! raised and resolved, and each order's root span. No I/O: the monitor persists, alerts and
//! exports what comes out.
//!
//! Detections (kind, step = the canonical status the order did not reach, service blamed):
//! - `stuck`: longer in a status than its limit, and nothing else explains it;
//! - `lost_in_transit`: a configured hand-over was sent and never received within its limit;
//! - `failed_step`: a call toward a step failed (5xx/4xx, reset, timeout) and no retry reached
//!   the step within the retry grace;
//! - `skipped` / `backwards`: a status change that jumps over statuses or goes back (also a
//!   lookup at a service answering an earlier status than that service itself reported);
//! - `vanished`: the service that holds the order answers a lookup with "not found";
//! - `possible_duplicate`: a creation with the same key soon after a hung creation.
//!
//! Resolution ("the order moves on"): `stuck` on any status change; `failed_step`,
//! `lost_in_transit`, `vanished`, `backwards` when the order reaches the detection's step (a
//! found lookup also resolves `vanished`); `skipped` and `possible_duplicate` describe the
//! order's past, so they resolve when it closes. An order given up (expiry) resolves all.
//! A resolved detection stays on the order's record: the set of detections ever raised per
//! order is what a truth file is compared with.
//!
//! Timers are judged at the evidence's time ([`evidence`]): the slowest source's watermark,
//! and no later than the oldest span still waiting in the reorder buffer. A gap in the
//! evidence ([`Lifecycle::note_gap`]) makes the orders in flight across it wait for new
//! evidence before any timer runs again, and the limits then count from the gap's end; a jump
//! over statuses across a gap is no `skipped` (the statuses may have been reached unseen).

mod changes;
mod config;
mod evidence;
mod ingest;
mod judge;
mod order;
mod root;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::spans::{AttrValue, Attributes, SpanRecord};

pub use changes::Changes;
use config::secs_to_ns;
pub use config::{LifecycleConfig, StatusConfig, TransitConfig};
use evidence::Watermarks;
pub use evidence::{Gap, GapCause};
pub use order::{Creation, HistoryEntry, OrderState, PendingFailure, PendingTransit};
pub use root::{MONITOR_SERVICE, root_span};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionKind {
    Stuck,
    LostInTransit,
    FailedStep,
    Skipped,
    Backwards,
    Vanished,
    PossibleDuplicate,
}

impl DetectionKind {
    pub const ALL: [DetectionKind; 7] = [
        Self::Stuck,
        Self::LostInTransit,
        Self::FailedStep,
        Self::Skipped,
        Self::Backwards,
        Self::Vanished,
        Self::PossibleDuplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stuck => "stuck",
            Self::LostInTransit => "lost_in_transit",
            Self::FailedStep => "failed_step",
            Self::Skipped => "skipped",
            Self::Backwards => "backwards",
            Self::Vanished => "vanished",
            Self::PossibleDuplicate => "possible_duplicate",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Kinds that explain why an order stopped, so that no `stuck` is raised on top.
    pub fn blocks(self) -> bool {
        !matches!(self, Self::Skipped | Self::PossibleDuplicate)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Stable: a function of order, kind and step, so a restart cannot raise it twice.
    pub id: String,
    pub order_id: String,
    pub kind: DetectionKind,
    pub step: String,
    pub service: String,
    /// Unix ns when raised.
    pub at: u64,
    pub resolved_at: Option<u64>,
}

impl Detection {
    pub fn id_for(order_id: &str, kind: DetectionKind, step: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"order-tracer/detection/v1:");
        for part in [order_id, kind.as_str(), step] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        hex::encode(&hasher.finalize()[..12])
    }
}

/// What the lifecycle tells the rest of the monitor.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    StatusChanged {
        order_id: String,
        from: Option<String>,
        to: String,
        at: u64,
        /// Time spent in `from`.
        dwell_ns: Option<u64>,
    },
    Raised(Detection),
    Resolved(Detection),
    /// The order's root span, emitted once: at its final status or when it is given up.
    RootSpan(Box<SpanRecord>),
    /// The order left memory (expired, or evicted over `max_orders`); the store keeps it.
    Forgotten {
        order_id: String,
    },
}

/// Counters of what the lifecycle could not use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleCounters {
    pub spans_applied: u64,
    pub spans_without_order: u64,
    pub spans_applied_early: u64,
    pub orders_evicted: u64,
}

/// The span attributes the lifecycle reads ([`ingest::SpanView`]; keep the two in step); a span is cut to these (and the
/// resource's `service.name`) as it comes in, so nothing else reaches the store's inbox.
const READ_ATTRIBUTES: [&str; 11] = [
    "messaging.system",
    "order.id",
    "order.owner",
    "order.rule",
    "order.status",
    "order.step",
    "order.observed_status",
    "order.lookup",
    "order.key",
    "http.response.status_code",
    "error.type",
];
/// Longest attribute value kept (statuses, rule and service names, hashes); longer ones are
/// dropped, not cut, so that two values never become one.
const MAX_VALUE_LEN: usize = 256;

/// `span` as the lifecycle keeps it: ids, kind, times, status, the attributes it reads
/// within the agent's limits (order ids as the agent would accept them); `None` when no
/// usable order id is left.
pub fn minimal(span: SpanRecord) -> Option<SpanRecord> {
    let fits = |value: &AttrValue| !matches!(value, AttrValue::Str(s) if s.len() > MAX_VALUE_LEN);
    let mut attributes: Attributes = span
        .attributes
        .into_iter()
        .filter(|(key, value)| READ_ATTRIBUTES.contains(&key.as_ref()) && fits(value))
        .collect();
    let order_id = match attributes.get("order.id") {
        Some(AttrValue::Str(raw)) => crate::orders::clean_order_id(raw)?,
        _ => return None,
    };
    attributes.insert("order.id".into(), AttrValue::Str(order_id));
    let resource = span
        .resource
        .into_iter()
        .filter(|(key, value)| *key == "service.name" && fits(value))
        .collect();
    Some(SpanRecord {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: span.parent_span_id,
        links: Vec::new(),
        name: String::new(),
        kind: span.kind,
        start_unix_nano: span.start_unix_nano,
        end_unix_nano: span.end_unix_nano,
        status: span.status,
        resource,
        attributes,
        events: Vec::new(),
    })
}

fn str_attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    match span.attributes.get(key) {
        Some(AttrValue::Str(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

#[derive(Clone, Debug)]
struct CreationRef {
    order_id: String,
    start: u64,
    hung: bool,
}

/// A span waiting out the reorder window.
struct Buffered {
    /// Identifies the span in the store's inbox.
    seq: u64,
    /// Unix ns when it was taken in.
    arrival: u64,
    span: SpanRecord,
}

/// The status machine over all orders in memory.
pub struct Lifecycle {
    config: LifecycleConfig,
    orders: HashMap<String, OrderState>,
    /// Spans waiting out the reorder window, in arrival order.
    buffer: VecDeque<Buffered>,
    next_seq: u64,
    creations: HashMap<String, Vec<CreationRef>>,
    /// Orders changed since the last `take_changes`.
    dirty: BTreeSet<String>,
    /// What else changed since the last `take_changes`: the inbox, orders given up.
    unsaved: Changes,
    counters: LifecycleCounters,
    watermarks: Watermarks,
    /// Unix ns up to which the timers have judged the evidence (never goes back).
    judged: Option<u64>,
    /// After a restart: the end of the downtime gap, until the first source reports (its
    /// evidence may start later still).
    restarted_at: Option<u64>,
    /// The end of the latest gap: an order known only from evidence older than this (a span
    /// resumed from the inbox, a straggler) was in flight across it.
    last_gap_end: u64,
    /// Receiving rules of transits seen since a source (re)started: a hand-over whose
    /// receiving side has not been seen since may be invisible (a long-lived consumer
    /// connection opened before the agent attached), so its silence proves no loss. `None`
    /// while no source is known to have started (spans fed from outside: all judged).
    receivers_seen: Option<BTreeSet<String>>,
}

impl Lifecycle {
    pub fn new(config: LifecycleConfig) -> Self {
        Self::restore(config, Vec::new())
    }

    /// Resumes from orders a store kept (timers, pending hand-overs, detections included).
    pub fn restore(config: LifecycleConfig, orders: Vec<OrderState>) -> Self {
        let mut lifecycle = Self {
            config,
            orders: HashMap::with_capacity(orders.len()),
            buffer: VecDeque::new(),
            next_seq: 1,
            creations: HashMap::new(),
            dirty: BTreeSet::new(),
            unsaved: Changes::default(),
            counters: LifecycleCounters::default(),
            watermarks: Watermarks::default(),
            judged: None,
            restarted_at: None,
            last_gap_end: 0,
            receivers_seen: None,
        };
        for order in orders {
            if let Some(creation) = &order.creation {
                lifecycle.remember_creation(&order.order_id, creation);
            }
            lifecycle.orders.insert(order.order_id.clone(), order);
        }
        lifecycle
    }

    pub fn config(&self) -> &LifecycleConfig {
        &self.config
    }

    pub fn counters(&self) -> LifecycleCounters {
        self.counters
    }

    pub fn order(&self, order_id: &str) -> Option<&OrderState> {
        self.orders.get(order_id)
    }

    pub fn orders(&self) -> impl Iterator<Item = &OrderState> {
        self.orders.values()
    }

    pub fn buffered_spans(&self) -> usize {
        self.buffer.len()
    }

    /// Unix ns up to which the timers have judged the evidence; a store keeps it so that a
    /// restart knows since when the monitor was blind.
    pub fn judged(&self) -> Option<u64> {
        self.judged
    }

    /// Orders waiting for evidence after a gap before their timers run again.
    pub fn blind_orders(&self) -> usize {
        self.orders
            .values()
            .filter(|o| o.blind_until.is_some())
            .count()
    }

    /// Puts back the spans a store kept unapplied, (seq, arrival ns, span) in arrival order,
    /// before any new span is taken in. They are already in the store: no change to save.
    pub fn resume_inbox(&mut self, inbox: Vec<(u64, u64, SpanRecord)>) -> Vec<Event> {
        let mut out = Vec::new();
        for (seq, arrival, span) in inbox {
            self.next_seq = self.next_seq.max(seq + 1);
            self.make_room(&mut out);
            self.buffer.push_back(Buffered { seq, arrival, span });
        }
        out
    }

    /// Takes a span in, cut to what the lifecycle reads ([`minimal`]); it is applied by a later
    /// `tick` once the reorder window has passed.
    pub fn ingest(&mut self, span: SpanRecord, now: u64) -> Vec<Event> {
        let mut out = Vec::new();
        let Some(span) = minimal(span) else {
            self.counters.spans_without_order += 1;
            return out;
        };
        self.make_room(&mut out);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unsaved.inbox_added.insert(seq, (now, span.clone()));
        self.buffer.push_back(Buffered {
            seq,
            arrival: now,
            span,
        });
        out
    }

    /// Applies the spans whose reorder window passed, then the timers.
    pub fn tick(&mut self, now: u64) -> Vec<Event> {
        let cutoff = now.saturating_sub(secs_to_ns(self.config.reorder_secs));
        let mut out = Vec::new();
        self.release(|arrival| arrival <= cutoff, &mut out);
        let at = self.judge_time(now);
        self.run_timers(at, &mut out);
        out
    }

    /// Applies every buffered span now (shutdown), then the timers.
    pub fn flush(&mut self, now: u64) -> Vec<Event> {
        let mut out = Vec::new();
        self.release(|_| true, &mut out);
        let at = self.judge_time(now);
        self.run_timers(at, &mut out);
        out
    }

    /// Everything a store must write since the last call: changed orders, orders given up,
    /// spans taken in and applied (`alerts` is left to the caller).
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = std::mem::take(&mut self.unsaved);
        for id in std::mem::take(&mut self.dirty) {
            if let Some(order) = self.orders.get(&id) {
                // Given up and seen again since: followed, not given up.
                changes.forgotten.remove(&id);
                changes.orders.insert(id, order.clone());
            }
        }
        changes
    }

    /// Number of orders in memory per current status (statuses in lifecycle order).
    pub fn status_counts(&self) -> Vec<(String, u64)> {
        let mut counts: Vec<(String, u64)> = self
            .config
            .statuses
            .iter()
            .map(|s| (s.name.clone(), 0))
            .collect();
        for order in self.orders.values() {
            if let Some(i) = order.status_index(&self.config) {
                counts[i].1 += 1;
            }
        }
        counts
    }
}
