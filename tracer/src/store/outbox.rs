//! The alert outbox: detections raised or resolved, queued per delivery target in the same
//! transaction that saves the detection, taken off once the target acknowledged them. So
//! every alert is delivered at least once, across crashes and restarts.

use rusqlite::{Transaction, params};

use super::{Store, StoreError, to_sql_time};
use crate::lifecycle::Detection;

/// One queued alert for one target.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingAlert {
    pub seq: i64,
    /// The detection as it was when raised (open) or resolved.
    pub detection: Detection,
    /// Deliveries tried and failed so far.
    pub attempts: u32,
}

/// Queues `alerts` for every target, inside the caller's transaction.
pub(super) fn enqueue(
    tx: &Transaction<'_>,
    alerts: &[Detection],
    targets: &[&str],
) -> Result<(), StoreError> {
    if alerts.is_empty() || targets.is_empty() {
        return Ok(());
    }
    let mut insert =
        tx.prepare_cached("INSERT INTO outbox (target, detection, queued_at) VALUES (?1, ?2, ?3)")?;
    for detection in alerts {
        let text = serde_json::to_string(detection)?;
        let happened = to_sql_time(detection.resolved_at.unwrap_or(detection.at));
        for target in targets {
            insert.execute(params![target, text, happened])?;
        }
    }
    Ok(())
}

impl Store {
    /// The oldest `limit` alerts queued for `target`, oldest first.
    pub fn pending_alerts(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, detection, attempts FROM outbox WHERE target = ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![target, limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut alerts = Vec::new();
        for row in rows {
            let (seq, detection, attempts) = row?;
            alerts.push(PendingAlert {
                seq,
                detection: serde_json::from_str(&detection)?,
                attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
            });
        }
        Ok(alerts)
    }

    /// The target took these: they leave the outbox.
    pub fn alerts_delivered(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for seq in seqs {
                delete.execute([seq])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A delivery failed and will be tried again; the error is kept for inspection.
    pub fn alert_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let error: String = error.chars().take(500).collect();
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            params![seq, error],
        )?;
        Ok(())
    }

    /// Drops what is queued for targets no longer configured; returns how many rows.
    pub fn drop_alerts_except(&self, targets: &[&str]) -> Result<usize, StoreError> {
        let placeholders = vec!["?"; targets.len()].join(", ");
        let sql = if targets.is_empty() {
            "DELETE FROM outbox".to_string()
        } else {
            format!("DELETE FROM outbox WHERE target NOT IN ({placeholders})")
        };
        Ok(self
            .conn
            .execute(&sql, rusqlite::params_from_iter(targets))?)
    }

    /// Keeps at most `keep` alerts queued for `target`, dropping the oldest; returns how
    /// many were dropped.
    pub fn trim_alerts(&self, target: &str, keep: usize) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM outbox WHERE target = ?1 AND seq NOT IN
               (SELECT seq FROM outbox WHERE target = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![target, keep as i64],
        )?)
    }

    /// Alerts queued over all targets.
    pub fn pending_alert_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))?;
        Ok(count.max(0) as u64)
    }
}
