//! Applying spans to the orders: the reorder buffer lets them out in the order they ended,
//! and each one may move its order on (a status reached, a lookup answered), note a failed
//! call toward a step, start or end a hand-over, or record a creation that makes another
//! order a possible duplicate. What only the passing of time reveals is left to the timers
//! ([`super::judge`]).

use super::config::secs_to_ns;
use super::{
    Buffered, Creation, CreationRef, DetectionKind, Event, HistoryEntry, Lifecycle,
    LifecycleConfig, OrderState, PendingFailure, PendingTransit, TransitConfig, root_span,
    str_attr,
};
use crate::spans::{AttrValue, SpanKind, SpanRecord, SpanStatus};

/// Creations remembered per duplicate key.
const MAX_CREATIONS_PER_KEY: usize = 16;

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

impl Lifecycle {
    /// Over the buffer bound the oldest span is applied early (counted).
    pub(super) fn make_room(&mut self, out: &mut Vec<Event>) {
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

    pub(super) fn release(&mut self, ready: impl Fn(u64) -> bool, out: &mut Vec<Event>) {
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

    pub(super) fn remember_creation(&mut self, order_id: &str, creation: &Creation) {
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
