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
mod order;
mod root;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::spans::{AttrValue, Attributes, SpanKind, SpanRecord, SpanStatus};

pub use changes::Changes;
use config::secs_to_ns;
pub use config::{LifecycleConfig, StatusConfig, TransitConfig};
pub use evidence::{Gap, GapCause};
use evidence::{Report, Watermarks};
pub use order::{Creation, HistoryEntry, OrderState, PendingFailure, PendingTransit};
pub use root::{MONITOR_SERVICE, root_span};

/// Creations remembered per duplicate key.
const MAX_CREATIONS_PER_KEY: usize = 16;

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

/// The span attributes the lifecycle reads ([`SpanView`]; keep the two in step); a span is cut to these (and the
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

/// The fields of an exchange span the lifecycle reads.
struct SpanView<'a> {
    order_id: &'a str,
    owner: &'a str,
    rule: &'a str,
    kind: SpanKind,
    status: Option<&'a str>,
    step: Option<&'a str>,
    observed: Option<&'a str>,
    lookup_found: Option<bool>,
    key: Option<&'a str>,
    failed: bool,
    succeeded: bool,
    gave_up: bool,
    /// A consumer span of a message never acknowledged: delivered, never handled.
    unsettled: bool,
    start: u64,
    end: u64,
    span_id: String,
}

fn str_attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    match span.attributes.get(key) {
        Some(AttrValue::Str(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

impl<'a> SpanView<'a> {
    fn of(span: &'a SpanRecord) -> Option<Self> {
        let order_id = str_attr(span, "order.id")?;
        let service = match span.resource.get("service.name") {
            Some(AttrValue::Str(s)) => s.as_str(),
            _ => "unknown",
        };
        let code = match span.attributes.get("http.response.status_code") {
            Some(AttrValue::Int(code)) => Some(*code),
            Some(AttrValue::Str(code)) => code.parse().ok(),
            _ => None,
        };
        let error_type = str_attr(span, "error.type");
        let failed = error_type.is_some()
            || span.status == SpanStatus::Error
            || code.is_some_and(|c| c >= 400);
        // A message span has no status code: settled as wanted is success.
        let message = str_attr(span, "messaging.system").is_some();
        Some(Self {
            order_id,
            owner: str_attr(span, "order.owner").unwrap_or(service),
            rule: str_attr(span, "order.rule").unwrap_or(""),
            kind: span.kind,
            status: str_attr(span, "order.status"),
            step: str_attr(span, "order.step"),
            observed: str_attr(span, "order.observed_status"),
            lookup_found: str_attr(span, "order.lookup").map(|l| l == "found"),
            key: str_attr(span, "order.key"),
            failed,
            succeeded: !failed && (message || code.is_some_and(|c| (200..400).contains(&c))),
            gave_up: matches!(error_type, Some("timeout" | "reset" | "no_response")),
            unsettled: span.kind == SpanKind::Consumer
                && matches!(error_type, Some("timeout" | "reset" | "channel_closed")),
            start: span.start_unix_nano,
            end: span.end_unix_nano.max(span.start_unix_nano),
            span_id: hex::encode(span.span_id),
        })
    }

    fn cause(&self, status: &str) -> HistoryEntry {
        HistoryEntry {
            status: status.to_string(),
            at: self.end,
            service: self.owner.to_string(),
            rule: self.rule.to_string(),
            span_id: self.span_id.clone(),
        }
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

    /// After a restart: the monitor saw nothing from `last_judged` (what the store kept) to
    /// `now`. Returns the orders in flight across the gap.
    pub fn resume_after_downtime(&mut self, last_judged: u64, now: u64) -> usize {
        self.judged = Some(last_judged);
        self.restarted_at = Some(now);
        self.note_gap(Gap {
            start: last_judged,
            end: now.max(last_judged),
            cause: GapCause::MonitorDown,
        })
    }

    /// The monitor may have missed exchanges in `gap`: the orders in flight across it
    /// (open, in their status since before its end) run no timer until new evidence about
    /// them comes, and count their limits from its end. Returns how many orders that is.
    pub fn note_gap(&mut self, gap: Gap) -> usize {
        let mut blind = 0;
        for order in self.orders.values_mut() {
            if order.closed_at.is_none() && order.status_since < gap.end {
                order.blind_until = Some(order.blind_until.unwrap_or(0).max(gap.end));
                self.dirty.insert(order.order_id.clone());
                blind += 1;
            }
        }
        tracing::warn!(
            cause = gap.cause.as_str(),
            from = %crate::clock::rfc3339(gap.start),
            to = %crate::clock::rfc3339(gap.end),
            orders_in_flight = blind,
            "the monitor could not see for {:.1} s: orders in flight wait for new evidence",
            gap.end.saturating_sub(gap.start) as f64 / 1e9
        );
        self.last_gap_end = self.last_gap_end.max(gap.end);
        if gap.cause.loses_connections() {
            self.receivers_seen = Some(BTreeSet::new());
        }
        self.unsaved.gaps.push(gap);
        blind
    }

    /// A source's watermark: every exchange it saw end before `up_to` (unix ns) has been
    /// taken in. Timers are judged no later than the slowest source heard from lately.
    pub fn watermark(&mut self, source: &str, up_to: u64, now: u64) {
        match self.watermarks.report(source, up_to, now) {
            Report::First => {
                self.receivers_seen = Some(BTreeSet::new());
                if let Some(restarted) = self.restarted_at.take()
                    && up_to > restarted
                {
                    self.note_gap(Gap {
                        start: restarted,
                        end: up_to,
                        cause: GapCause::SourceStarted,
                    });
                }
            }
            Report::Returned(last) if up_to > last => {
                self.note_gap(Gap {
                    start: last,
                    end: up_to,
                    cause: GapCause::SourceSilent,
                });
            }
            Report::Returned(_) | Report::Ongoing => {}
        }
    }

    /// The time the timers may judge at: `now`, held back by the sources' watermarks and by
    /// the spans still waiting in the reorder buffer (what they tell is not applied yet).
    fn judge_time(&mut self, now: u64) -> u64 {
        let mut at = now;
        if let Some(horizon) = self.watermarks.horizon(now) {
            at = at.min(horizon);
        }
        if let Some(oldest) = self.buffer.iter().map(|b| b.span.end_unix_nano).min() {
            at = at.min(oldest);
        }
        let at = self.judged.map_or(at, |judged| judged.max(at));
        self.judged = Some(at);
        at
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

    /// Over the buffer bound the oldest span is applied early (counted).
    fn make_room(&mut self, out: &mut Vec<Event>) {
        if self.buffer.len() >= self.config.max_buffered_spans
            && let Some(oldest) = self.buffer.pop_front()
        {
            self.counters.spans_applied_early += 1;
            self.note_applied(oldest.seq);
            self.apply(&oldest.span, out);
        }
    }

    fn note_applied(&mut self, seq: u64) {
        if self.unsaved.inbox_added.remove(&seq).is_none() {
            self.unsaved.inbox_removed.insert(seq);
        }
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

    fn release(&mut self, ready: impl Fn(u64) -> bool, out: &mut Vec<Event>) {
        let mut batch: Vec<Buffered> = Vec::new();
        while let Some(first) = self.buffer.front() {
            if !ready(first.arrival) {
                break;
            }
            if let Some(first) = self.buffer.pop_front() {
                batch.push(first);
            }
        }
        if batch.is_empty() {
            return;
        }
        // Stragglers that ended before the newest released span go with it, in order.
        let newest = batch
            .iter()
            .map(|b| b.span.end_unix_nano)
            .max()
            .unwrap_or(0);
        let (early, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.buffer)
            .into_iter()
            .partition(|b| b.span.end_unix_nano <= newest);
        self.buffer = later.into();
        batch.extend(early);
        batch.sort_by_key(|b| (b.span.end_unix_nano, b.span.start_unix_nano));
        for buffered in &batch {
            self.note_applied(buffered.seq);
            self.apply(&buffered.span, out);
        }
    }

    fn run_timers(&mut self, now: u64, out: &mut Vec<Event>) {
        let expiry = secs_to_ns(self.config.order_expiry_secs);
        let mut expired = Vec::new();
        for order in self.orders.values_mut() {
            if now >= order.last_activity.saturating_add(expiry) {
                expired.push(order.order_id.clone());
                continue;
            }
            let before = out.len();
            if order.closed_at.is_none() && order.blind_until.is_none() {
                order.on_tick(&self.config, &self.receivers_seen, now, out);
            }
            if out.len() != before {
                self.dirty.insert(order.order_id.clone());
            }
        }
        for order_id in expired {
            self.forget(&order_id, now, out);
        }
        let keep = secs_to_ns(2.0 * self.config.duplicate_window_secs);
        self.creations.retain(|_, list| {
            list.retain(|c| c.start.saturating_add(keep) > now);
            !list.is_empty()
        });
    }

    /// Gives an order up: resolves what is open, ends its root span if it never closed.
    fn forget(&mut self, order_id: &str, now: u64, out: &mut Vec<Event>) {
        let Some(mut order) = self.orders.remove(order_id) else {
            return;
        };
        order.resolve_where(now, out, |_| true);
        if order.closed_at.is_none() {
            out.push(Event::RootSpan(Box::new(root_span(&order, now))));
        }
        self.dirty.remove(order_id);
        for list in self.creations.values_mut() {
            list.retain(|c| c.order_id != order_id);
        }
        out.push(Event::Forgotten {
            order_id: order_id.to_string(),
        });
        self.unsaved.forgotten.insert(order_id.to_string(), order);
    }

    fn apply(&mut self, span: &SpanRecord, out: &mut Vec<Event>) {
        let Some(view) = SpanView::of(span) else {
            self.counters.spans_without_order += 1;
            return;
        };
        self.counters.spans_applied += 1;
        if let Some(seen) = &mut self.receivers_seen
            && !seen.contains(view.rule)
            && self.config.transits.iter().any(|t| t.to_rule == view.rule)
        {
            seen.insert(view.rule.to_string());
        }
        if !self.orders.contains_key(view.order_id) {
            if self.orders.len() >= self.config.max_orders
                && let Some(oldest) = self
                    .orders
                    .values()
                    .min_by_key(|o| o.last_activity)
                    .map(|o| o.order_id.clone())
            {
                self.counters.orders_evicted += 1;
                self.forget(&oldest, view.end, out);
            }
            self.orders.insert(
                view.order_id.to_string(),
                OrderState::new(view.order_id, view.start),
            );
        }
        self.dirty.insert(view.order_id.to_string());
        let last_gap_end = self.last_gap_end;
        let config = &self.config;
        let Some(order) = self.orders.get_mut(view.order_id) else {
            return;
        };
        order.first_seen = order.first_seen.min(view.start);
        order.last_activity = order.last_activity.max(view.end);
        let was_closed = order.closed_at.is_some();

        if let Some(found) = view.lookup_found {
            apply_lookup(config, order, &view, found, out);
        } else if view.succeeded {
            if let Some(status) = view.status
                && let Some(index) = config.index_of(status)
                && !is_stale(config, order, index, view.end)
            {
                order.set_service_status(view.owner, status);
                order.reach(config, index, view.cause(status), out);
            }
            if let Some(step) = view.step {
                order.pending_failures.retain(|f| f.step != step);
            }
        } else if view.failed && !view.unsettled {
            note_failure(config, order, &view);
        }
        apply_transits(config, order, &view, out);
        if let Some(gap_end) = order.blind_until
            && view.end >= gap_end
        {
            order.seen_after_gap(config, gap_end);
        }
        if view.end < last_gap_end
            && order.closed_at.is_none()
            && order.status_since < last_gap_end
            && order.blind_until.is_none()
        {
            order.blind_until = Some(last_gap_end);
        }
        if !was_closed && order.closed_at.is_some() {
            out.push(Event::RootSpan(Box::new(root_span(order, view.end))));
        }
        if let Some(key) = view.key {
            let creation = Creation {
                key: format!("{}/{key}", view.rule),
                start: view.start,
                hung: view.gave_up
                    || view.end.saturating_sub(view.start) >= secs_to_ns(config.hung_creation_secs),
                service: view.owner.to_string(),
                step: view
                    .status
                    .or(view.step)
                    .unwrap_or(&config.statuses[0].name)
                    .to_string(),
            };
            if order.creation.is_none() {
                order.creation = Some(creation.clone());
                self.check_duplicates(view.order_id, &creation, view.end, out);
                self.remember_creation(view.order_id, &creation);
            }
        }
    }

    fn remember_creation(&mut self, order_id: &str, creation: &Creation) {
        let list = self.creations.entry(creation.key.clone()).or_default();
        if list.len() == MAX_CREATIONS_PER_KEY {
            list.remove(0);
        }
        list.push(CreationRef {
            order_id: order_id.to_string(),
            start: creation.start,
            hung: creation.hung,
        });
    }

    /// A hung creation followed (within the window) by another with the same key: that next
    /// creation is the customer's retry, a possible duplicate. Only the first one after the
    /// hung creation is: later orders with the same key are new purchases. Either span may
    /// arrive first (the hung one ends late), so the pairing is redone on each creation.
    fn check_duplicates(
        &mut self,
        order_id: &str,
        creation: &Creation,
        at: u64,
        out: &mut Vec<Event>,
    ) {
        let window = secs_to_ns(self.config.duplicate_window_secs);
        let mut all: Vec<(&str, u64, bool)> = self
            .creations
            .get(&creation.key)
            .map(|list| {
                list.iter()
                    .filter(|c| c.order_id != order_id)
                    .map(|c| (c.order_id.as_str(), c.start, c.hung))
                    .collect()
            })
            .unwrap_or_default();
        all.push((order_id, creation.start, creation.hung));
        let duplicates: Vec<String> = all
            .iter()
            .filter(|(_, _, hung)| *hung)
            .filter_map(|(_, hung_start, _)| {
                all.iter()
                    .filter(|(_, start, _)| start > hung_start && start - hung_start <= window)
                    .min_by_key(|(_, start, _)| *start)
                    .map(|(next, _, _)| next.to_string())
            })
            .collect();
        for duplicate in duplicates {
            if let Some(order) = self.orders.get_mut(&duplicate) {
                order.raise(
                    DetectionKind::PossibleDuplicate,
                    &creation.step,
                    &creation.service,
                    at,
                    out,
                );
                self.dirty.insert(duplicate);
            }
        }
    }
}

/// A status change already applied (a span delivered again: OTLP is at-least-once), or an
/// earlier status from an exchange older than the current status (later than the reorder
/// window): neither is a step back.
fn is_stale(config: &LifecycleConfig, order: &OrderState, index: usize, end: u64) -> bool {
    let status = &config.statuses[index].name;
    order
        .history
        .iter()
        .any(|h| &h.status == status && h.at == end)
        || order
            .status_index(config)
            .is_some_and(|current| index < current && end < order.status_since)
}

/// A status lookup: compared with what the answering service itself reported earlier.
fn apply_lookup(
    config: &LifecycleConfig,
    order: &mut OrderState,
    view: &SpanView<'_>,
    found: bool,
    out: &mut Vec<Event>,
) {
    // A lookup older than the service's own latest change says nothing new (redelivery).
    if order
        .history
        .iter()
        .rev()
        .find(|h| h.service == view.owner)
        .is_some_and(|h| view.end < h.at)
    {
        return;
    }
    let current = order.status_index(config);
    let own = order.service_status(view.owner).map(str::to_string);
    if !found {
        // Only the service the order is at can make it vanish: other systems may simply not
        // have heard of it yet.
        if own.is_some() && own == order.status && !order.is_blocked() {
            let step = current.map_or(0, |c| (c + 1).min(config.statuses.len() - 1));
            order.raise(
                DetectionKind::Vanished,
                &config.statuses[step].name,
                view.owner,
                view.end,
                out,
            );
        }
        return;
    }
    order.resolve_where(view.end, out, |d| d.kind == DetectionKind::Vanished);
    let Some(observed) = view.observed else {
        return;
    };
    let Some(seen) = config.index_of(observed) else {
        return;
    };
    let own_index = own.as_deref().and_then(|s| config.index_of(s));
    match own_index {
        Some(own_index) if seen < own_index => {
            if current == Some(own_index) {
                order.reach(config, seen, view.cause(observed), out);
            } else {
                order.raise(
                    DetectionKind::Backwards,
                    &config.statuses[own_index].name,
                    view.owner,
                    view.end,
                    out,
                );
            }
        }
        _ if current.is_none_or(|c| seen > c) => {
            // The service is further than the tracer saw: an exchange was missed.
            order.reach(config, seen, view.cause(observed), out);
        }
        _ => {}
    }
    order.set_service_status(view.owner, observed);
}

fn note_failure(config: &LifecycleConfig, order: &mut OrderState, view: &SpanView<'_>) {
    let current = order.status_index(config);
    let step = match view.step.and_then(|s| config.index_of(s)) {
        Some(step) => step,
        None => current.map_or(0, |c| (c + 1).min(config.statuses.len() - 1)),
    };
    if current.is_some_and(|c| c >= step) {
        return;
    }
    let name = &config.statuses[step].name;
    if !order.pending_failures.iter().any(|f| &f.step == name) {
        order.pending_failures.push(PendingFailure {
            step: name.clone(),
            service: view.owner.to_string(),
            at: view.end,
        });
    }
}

fn apply_transits(
    config: &LifecycleConfig,
    order: &mut OrderState,
    view: &SpanView<'_>,
    out: &mut Vec<Event>,
) {
    for transit in &config.transits {
        if view.rule == transit.to_rule {
            order
                .pending_transits
                .retain(|t| t.to_rule != transit.to_rule);
            if view.unsettled {
                // Delivered, never acknowledged: lost between the broker and the receiver.
                let reached = order
                    .status_index(config)
                    .is_some_and(|c| config.index_of(&transit.step).is_some_and(|s| c >= s));
                if !reached {
                    order.raise(
                        DetectionKind::LostInTransit,
                        &transit.step,
                        &transit.service,
                        view.end,
                        out,
                    );
                }
                continue;
            }
            order.resolve_where(view.end, out, |d| {
                d.kind == DetectionKind::LostInTransit && d.step == transit.step
            });
            if !order.received_rules.contains(&transit.to_rule) {
                order.received_rules.push(transit.to_rule.clone());
            }
        } else if starts(transit, view)
            && !order.received_rules.contains(&transit.to_rule)
            && !order
                .pending_transits
                .iter()
                .any(|t| t.to_rule == transit.to_rule)
            && order
                .status_index(config)
                .is_none_or(|c| config.index_of(&transit.step).is_some_and(|s| s > c))
        {
            order.pending_transits.push(PendingTransit {
                to_rule: transit.to_rule.clone(),
                step: transit.step.clone(),
                service: transit.service.clone(),
                deadline: view.end.saturating_add(secs_to_ns(transit.limit_secs)),
            });
        }
    }
}

/// Whether a span starts a hand-over: the sender's successful call or publish, or the status
/// the hand-over follows.
fn starts(transit: &TransitConfig, view: &SpanView<'_>) -> bool {
    if !view.succeeded {
        return false;
    }
    match (&transit.from_rule, &transit.from_status) {
        (Some(rule), _) => {
            view.rule == rule && matches!(view.kind, SpanKind::Client | SpanKind::Producer)
        }
        (None, Some(status)) => view.status == Some(status.as_str()),
        (None, None) => false,
    }
}
