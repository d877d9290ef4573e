//! The state of one order and the rules that move it: status changes, detections, timers.

use serde::{Deserialize, Serialize};

use super::config::{LifecycleConfig, secs_to_ns};
use super::{Detection, DetectionKind, Event};

/// History entries kept per order; a flapping status cannot grow an order without bound.
const MAX_HISTORY: usize = 128;

/// One status change and the exchange that caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: String,
    /// Unix ns: the end of the exchange that reached the status.
    pub at: u64,
    /// The service that owns the rule (for a client span: the service called).
    pub service: String,
    /// `order.rule` of the exchange.
    pub rule: String,
    /// Span id (hex) of the exchange, to find it in the trace.
    pub span_id: String,
}

/// A call that failed; it becomes `failed_step` unless a retry reaches the step in time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingFailure {
    pub step: String,
    pub service: String,
    pub at: u64,
}

/// A hand-over sent through something untraced, waiting for the receiver's span.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingTransit {
    pub to_rule: String,
    pub step: String,
    pub service: String,
    pub deadline: u64,
}

/// The order's creation, for duplicate detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Creation {
    /// `order.rule` + `order.key`: equal for two creations by the same customer and cart.
    pub key: String,
    pub start: u64,
    pub hung: bool,
    pub service: String,
    pub step: String,
}

/// Everything the monitor knows about one order. Serialized as is into the store, so a
/// restart resumes every timer where it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    pub order_id: String,
    /// Current canonical status (`None` until a span reached one).
    pub status: Option<String>,
    /// Unix ns since when the order is in `status`.
    pub status_since: u64,
    /// Unix ns of the first span that named the order (the root span's start).
    pub first_seen: u64,
    pub last_activity: u64,
    pub closed_at: Option<u64>,
    pub history: Vec<HistoryEntry>,
    /// Every detection ever raised on the order, open and resolved.
    pub detections: Vec<Detection>,
    /// The latest status each service itself reported for the order: what a lookup at that
    /// service is compared with (each system only knows its own statuses).
    pub service_status: Vec<(String, String)>,
    pub pending_failures: Vec<PendingFailure>,
    pub pending_transits: Vec<PendingTransit>,
    /// Receiving rules of transits already seen, so a late sender span starts no watch.
    pub received_rules: Vec<String>,
    pub creation: Option<Creation>,
    /// In flight across a gap in the evidence that ended here (unix ns): no timer runs until
    /// a span about the order shows where it is.
    #[serde(default)]
    pub blind_until: Option<u64>,
    /// Limits count from here at the earliest (the end of the last gap it crossed).
    #[serde(default)]
    pub limits_from: u64,
}

impl OrderState {
    pub fn new(order_id: &str, first_seen: u64) -> Self {
        Self {
            order_id: order_id.to_string(),
            status: None,
            status_since: first_seen,
            first_seen,
            last_activity: first_seen,
            closed_at: None,
            history: Vec::new(),
            detections: Vec::new(),
            service_status: Vec::new(),
            pending_failures: Vec::new(),
            pending_transits: Vec::new(),
            received_rules: Vec::new(),
            creation: None,
            blind_until: None,
            limits_from: 0,
        }
    }

    pub fn status_index(&self, config: &LifecycleConfig) -> Option<usize> {
        self.status.as_deref().and_then(|s| config.index_of(s))
    }

    pub fn open_detections(&self) -> impl Iterator<Item = &Detection> {
        self.detections.iter().filter(|d| d.resolved_at.is_none())
    }

    /// An open detection already explains why the order does not move on.
    pub fn is_blocked(&self) -> bool {
        self.open_detections().any(|d| d.kind.blocks())
    }

    pub(super) fn service_status(&self, service: &str) -> Option<&str> {
        self.service_status
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, status)| status.as_str())
    }

    pub(super) fn set_service_status(&mut self, service: &str, status: &str) {
        match self.service_status.iter_mut().find(|(s, _)| s == service) {
            Some(entry) => entry.1 = status.to_string(),
            None => self
                .service_status
                .push((service.to_string(), status.to_string())),
        }
    }

    /// Raises a detection unless one with the same id (same order, kind and step) was ever
    /// raised: each detection is raised once, across restarts too.
    pub(super) fn raise(
        &mut self,
        kind: DetectionKind,
        step: &str,
        service: &str,
        at: u64,
        out: &mut Vec<Event>,
    ) {
        let id = Detection::id_for(&self.order_id, kind, step);
        if self.detections.iter().any(|d| d.id == id) {
            return;
        }
        let detection = Detection {
            id,
            order_id: self.order_id.clone(),
            kind,
            step: step.to_string(),
            service: service.to_string(),
            at,
            resolved_at: None,
        };
        self.detections.push(detection.clone());
        out.push(Event::Raised(detection));
    }

    pub(super) fn resolve_where(
        &mut self,
        at: u64,
        out: &mut Vec<Event>,
        mut which: impl FnMut(&Detection) -> bool,
    ) {
        for detection in &mut self.detections {
            if detection.resolved_at.is_none() && which(detection) {
                // Late evidence may resolve at a time before the raise: never end before
                // the start (Alertmanager refuses `endsAt` < `startsAt`).
                detection.resolved_at = Some(at.max(detection.at));
                out.push(Event::Resolved(detection.clone()));
            }
        }
    }

    /// The order reached status `to` (an index into the configured statuses).
    pub(super) fn reach(
        &mut self,
        config: &LifecycleConfig,
        to: usize,
        cause: HistoryEntry,
        out: &mut Vec<Event>,
    ) {
        let from = self.status_index(config);
        if from == Some(to) {
            return;
        }
        let at = cause.at;
        // Across a gap the statuses in between may have been reached unseen.
        let across_gap = self.blind_until.is_some_and(|gap_end| at >= gap_end);
        if let Some(from) = from {
            if to > from + 1 && !across_gap {
                let skipped = &config.statuses[from + 1];
                self.raise(
                    DetectionKind::Skipped,
                    &skipped.name,
                    &skipped.service,
                    at,
                    out,
                );
            } else if to < from {
                self.raise(
                    DetectionKind::Backwards,
                    &config.statuses[from].name,
                    &cause.service,
                    at,
                    out,
                );
            }
        }
        out.push(Event::StatusChanged {
            order_id: self.order_id.clone(),
            from: self.status.clone(),
            to: config.statuses[to].name.clone(),
            at,
            dwell_ns: from.map(|_| at.saturating_sub(self.status_since)),
        });
        self.status = Some(config.statuses[to].name.clone());
        self.status_since = at;
        if self.history.len() == MAX_HISTORY {
            self.history.remove(0);
        }
        self.history.push(cause);

        // Moving on resolves what the order was waiting for.
        let reached = |step: &str| config.index_of(step).is_some_and(|s| s <= to);
        self.resolve_where(at, out, |d| match d.kind {
            DetectionKind::Stuck => true,
            DetectionKind::FailedStep
            | DetectionKind::LostInTransit
            | DetectionKind::Vanished
            | DetectionKind::Backwards => reached(&d.step),
            DetectionKind::Skipped | DetectionKind::PossibleDuplicate => false,
        });
        self.pending_failures.retain(|f| !reached(&f.step));
        self.pending_transits.retain(|t| !reached(&t.step));
        if config.is_final(to) {
            // Findings about the order's past stay on its record but need no more action
            // once it is closed.
            self.resolve_where(at, out, |d| {
                matches!(
                    d.kind,
                    DetectionKind::Skipped | DetectionKind::PossibleDuplicate
                )
            });
            self.closed_at = Some(at);
        }
    }

    /// The first evidence after a gap ending at `gap_end`: the timers run again, their limits
    /// counted from the gap's end (what they waited for may have happened unseen in it).
    pub(super) fn seen_after_gap(&mut self, config: &LifecycleConfig, gap_end: u64) {
        self.blind_until = None;
        self.limits_from = self.limits_from.max(gap_end);
        for failure in &mut self.pending_failures {
            failure.at = failure.at.max(gap_end);
        }
        for transit in &mut self.pending_transits {
            if let Some(config) = config
                .transits
                .iter()
                .find(|t| t.to_rule == transit.to_rule)
            {
                let deadline = gap_end.saturating_add(secs_to_ns(config.limit_secs));
                transit.deadline = transit.deadline.max(deadline);
            }
        }
    }

    /// Raises what the clock says: failures not retried, transits not received, stuck.
    /// A transit whose receiving rule was not seen since the sources started
    /// (`receivers_seen`) is dropped when due, not raised: its receiver may be invisible; the
    /// order's `stuck` limit still applies.
    pub(super) fn on_tick(
        &mut self,
        config: &LifecycleConfig,
        receivers_seen: &Option<std::collections::BTreeSet<String>>,
        now: u64,
        out: &mut Vec<Event>,
    ) {
        let grace = secs_to_ns(config.retry_grace_secs);
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_failures)
            .into_iter()
            .partition(|f| now >= f.at.saturating_add(grace));
        self.pending_failures = waiting;
        for failure in due {
            self.raise(
                DetectionKind::FailedStep,
                &failure.step,
                &failure.service,
                now,
                out,
            );
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_transits)
            .into_iter()
            .partition(|t| now >= t.deadline);
        self.pending_transits = waiting;
        for transit in due.into_iter().filter(|t| {
            receivers_seen
                .as_ref()
                .is_none_or(|s| s.contains(&t.to_rule))
        }) {
            self.raise(
                DetectionKind::LostInTransit,
                &transit.step,
                &transit.service,
                now,
                out,
            );
        }
        self.check_stuck(config, now, out);
    }

    fn check_stuck(&mut self, config: &LifecycleConfig, now: u64, out: &mut Vec<Event>) {
        let Some(current) = self.status_index(config) else {
            return;
        };
        if config.is_final(current)
            || !self.pending_failures.is_empty()
            || !self.pending_transits.is_empty()
            || self.is_blocked()
        {
            return;
        }
        let Some(limit) = config.statuses[current].stuck_after_secs else {
            return;
        };
        let since = self.status_since.max(self.limits_from);
        if now >= since.saturating_add(secs_to_ns(limit)) {
            let next = &config.statuses[current + 1];
            self.raise(DetectionKind::Stuck, &next.name, &next.service, now, out);
        }
    }
}
