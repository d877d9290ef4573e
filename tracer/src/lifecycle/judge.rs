//! The timers: up to when the evidence lets them judge (the sources' watermarks, the gaps
//! in what the monitor saw, the spans still in the reorder buffer) and what they judge at that
//! time: each open order's deadlines, and the orders given up after their expiry.

use std::collections::BTreeSet;

use super::config::secs_to_ns;
use super::evidence::Report;
use super::{Event, Gap, GapCause, Lifecycle, root_span};

impl Lifecycle {
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
    pub(super) fn judge_time(&mut self, now: u64) -> u64 {
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

    pub(super) fn run_timers(&mut self, now: u64, out: &mut Vec<Event>) {
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
    pub(super) fn forget(&mut self, order_id: &str, now: u64, out: &mut Vec<Event>) {
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
}
