//! Reads for the operator console: where orders wait now, and how long they waited before.
//! Both come from the orders' saved state (`status_since`, `history`), so they agree with the
//! order view and need nothing written beyond what the lifecycle already saves.

use super::{Store, StoreError, from_sql_time, to_sql_time};

/// One followed order in its current status.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub order_id: String,
    pub status: String,
    /// Unix ns it entered the status.
    pub since: u64,
}

/// One completed stay of an order in a status.
#[derive(Clone, Debug, PartialEq)]
pub struct Stay {
    pub status: String,
    pub dwell_ns: u64,
}

impl Store {
    /// Every followed order with its current status and since when (the board).
    pub fn waiting(&self) -> Result<Vec<Waiting>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT order_id, status, json_extract(state, '$.status_since') FROM orders
             WHERE active = 1 AND status IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(Waiting {
                order_id: row.get(0)?,
                status: row.get(1)?,
                since: from_sql_time(row.get::<_, Option<i64>>(2)?.unwrap_or(0)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stays that ended at or after `since` (Unix ns), from each order's history: a stay
    /// lasts from one status change to the next.
    pub fn stays_since(&self, since: u64) -> Result<Vec<Stay>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT o.order_id, json_extract(h.value, '$.status'), json_extract(h.value, '$.at')
             FROM orders o, json_each(o.state, '$.history') h
             WHERE o.last_activity >= ?1
             ORDER BY o.order_id, h.key",
        )?;
        let mut rows = stmt.query([to_sql_time(since)])?;
        let mut stays = Vec::new();
        let mut previous: Option<(String, String, u64)> = None;
        while let Some(row) = rows.next()? {
            let order: String = row.get(0)?;
            let status: String = row.get(1)?;
            let at = from_sql_time(row.get(2)?);
            if let Some((prev_order, prev_status, prev_at)) = previous.take()
                && prev_order == order
                && at >= since
            {
                stays.push(Stay {
                    status: prev_status,
                    dwell_ns: at.saturating_sub(prev_at),
                });
            }
            previous = Some((order, status, at));
        }
        Ok(stays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{HistoryEntry, OrderState};

    fn order(id: &str, walk: &[(&str, u64)]) -> OrderState {
        let mut order = OrderState::new(id, walk[0].1);
        for (status, at) in walk {
            order.history.push(HistoryEntry {
                status: status.to_string(),
                at: *at,
                service: "shop-api".into(),
                rule: "r".into(),
                span_id: "00".into(),
            });
            order.status = Some(status.to_string());
            order.status_since = *at;
            order.last_activity = *at;
        }
        order
    }

    #[test]
    fn waiting_orders_and_stays_come_from_the_saved_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .save_orders(&[
                order(
                    "A",
                    &[("INITIATED", 10), ("SUBMITTED", 30), ("CLOSED", 100)],
                ),
                order("B", &[("INITIATED", 50), ("SUBMITTED", 55)]),
            ])
            .unwrap();
        let mut waiting = store.waiting().unwrap();
        waiting.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        assert_eq!(
            waiting,
            [
                Waiting {
                    order_id: "A".into(),
                    status: "CLOSED".into(),
                    since: 100
                },
                Waiting {
                    order_id: "B".into(),
                    status: "SUBMITTED".into(),
                    since: 55
                },
            ]
        );
        let mut stays: Vec<(String, u64)> = store
            .stays_since(0)
            .unwrap()
            .into_iter()
            .map(|s| (s.status, s.dwell_ns))
            .collect();
        stays.sort();
        assert_eq!(
            stays,
            [
                ("INITIATED".to_string(), 5),
                ("INITIATED".to_string(), 20),
                ("SUBMITTED".to_string(), 70)
            ]
        );
        // Only stays that ended inside the window.
        let recent = store.stays_since(60).unwrap();
        assert_eq!(recent.len(), 1, "{recent:?}");
        assert_eq!(recent[0].dwell_ns, 70);
    }
}
