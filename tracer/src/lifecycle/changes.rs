//! What changed in the lifecycle since a store last saved it, and how changes a failed save
//! held fold into the next save.

use std::collections::{BTreeMap, BTreeSet};

use super::{Detection, Gap, OrderState};
use crate::spans::SpanRecord;

/// The changes of one or more lifecycle passes not yet committed to a store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Orders followed, by id: their latest state.
    pub orders: BTreeMap<String, OrderState>,
    /// Orders given up (expired, evicted), by id: their final state, kept queryable.
    pub forgotten: BTreeMap<String, OrderState>,
    /// Spans taken into the lifecycle's reorder buffer: seq → (arrival ns, span).
    pub inbox_added: BTreeMap<u64, (u64, SpanRecord)>,
    /// Seqs of spans the lifecycle applied (left the buffer).
    pub inbox_removed: BTreeSet<u64>,
    /// Detections raised or resolved, as they were then: each is one alert to deliver (the
    /// monitor adds them from the events of the pass).
    pub alerts: Vec<Detection>,
    /// Gaps in the evidence noted.
    pub gaps: Vec<Gap>,
    /// How far the timers have judged the evidence (unix ns), when the caller wants it kept.
    pub judged: Option<u64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
            && self.forgotten.is_empty()
            && self.inbox_added.is_empty()
            && self.inbox_removed.is_empty()
            && self.alerts.is_empty()
            && self.gaps.is_empty()
            && self.judged.is_none()
    }

    /// Folds `newer` in, as if both had been saved in turn: a later state of an order
    /// replaces the earlier, a span added and applied in between never reaches the store.
    pub fn merge(&mut self, newer: Changes) {
        for (id, order) in newer.forgotten {
            self.orders.remove(&id);
            self.forgotten.insert(id, order);
        }
        for (id, order) in newer.orders {
            self.forgotten.remove(&id);
            self.orders.insert(id, order);
        }
        self.inbox_added.extend(newer.inbox_added);
        for seq in newer.inbox_removed {
            if self.inbox_added.remove(&seq).is_none() {
                self.inbox_removed.insert(seq);
            }
        }
        self.alerts.extend(newer.alerts);
        self.gaps.extend(newer.gaps);
        self.judged = newer.judged.or(self.judged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> SpanRecord {
        super::super::tests::span_of("SO-1")
    }

    #[test]
    fn merging_keeps_the_latest_state_and_cancels_spans_added_then_applied() {
        let mut first = Changes::default();
        first
            .orders
            .insert("SO-1".into(), OrderState::new("SO-1", 1));
        first.inbox_added.insert(1, (10, span()));
        first.inbox_added.insert(2, (11, span()));
        first.inbox_removed.insert(0);
        let mut second = Changes::default();
        second
            .forgotten
            .insert("SO-1".into(), OrderState::new("SO-1", 2));
        second.inbox_removed.insert(1);
        second
            .orders
            .insert("SO-2".into(), OrderState::new("SO-2", 3));
        first.merge(second);
        assert!(!first.orders.contains_key("SO-1"));
        assert_eq!(first.forgotten["SO-1"].first_seen, 2);
        assert!(first.orders.contains_key("SO-2"));
        assert_eq!(first.inbox_added.keys().collect::<Vec<_>>(), [&2]);
        assert_eq!(first.inbox_removed.iter().collect::<Vec<_>>(), [&0]);
        // An order seen again after it was given up is followed again.
        let mut third = Changes::default();
        third
            .orders
            .insert("SO-1".into(), OrderState::new("SO-1", 4));
        first.merge(third);
        assert!(first.forgotten.is_empty() && first.orders.contains_key("SO-1"));
    }
}
