//! The monitor's store: orders (with their whole lifecycle state), detections and the audit
//! log in SQLite, WAL-journaled, so a restart resumes every order and open detection.
//!
//! Only extracted fields are stored (order id, statuses, times, services, rule names), never
//! payloads. Rows older than the retention are purged. The schema is versioned with
//! `PRAGMA user_version`; migrations run at open, in order, each in a transaction.

mod console;
mod outbox;
mod query;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;

use crate::lifecycle::{Changes, Gap, GapCause, OrderState};
use crate::spans::SpanRecord;

pub use console::{Stay, Waiting};
pub use outbox::PendingAlert;
pub use query::{AuditEntry, DetectionQuery, OrderQuery, OrderSummary};

/// Purging less often than weekly is never what retention wants, and keeps the interval far
/// from what a `Duration` can hold.
const MAX_PURGE_INTERVAL_SECS: f64 = 604_800.0;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file (created when missing). `tracer run --store` overrides it.
    pub path: PathBuf,
    /// Orders (and their detections) given up and untouched for this long are purged.
    pub retention_days: f64,
    /// Audit records are kept this long, whatever happens to the orders they name, and
    /// nothing else deletes them: the store refuses any DELETE of a younger record.
    pub audit_retention_days: f64,
    /// How often the purge runs.
    pub purge_interval_secs: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("order-tracer.db"),
            retention_days: 90.0,
            audit_retention_days: 365.0,
            purge_interval_secs: 3600.0,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("[store] path: give the SQLite file to keep order state in".into());
        }
        for (key, days) in [
            ("retention_days", self.retention_days),
            ("audit_retention_days", self.audit_retention_days),
        ] {
            // Past 100 years the nanoseconds would not fit SQLite's integers.
            if !(days.is_finite() && days > 0.0 && days <= 36_500.0) {
                return Err(format!(
                    "[store] {key}: give a positive number of days (at most 36500)"
                ));
            }
        }
        if !(self.purge_interval_secs.is_finite()
            && (1.0..=MAX_PURGE_INTERVAL_SECS).contains(&self.purge_interval_secs))
        {
            return Err(format!(
                "[store] purge_interval_secs: give between 1 second and {MAX_PURGE_INTERVAL_SECS} (a week)"
            ));
        }
        Ok(())
    }

    pub fn retention_ns(&self) -> u64 {
        days_to_ns(self.retention_days)
    }

    pub fn audit_retention_ns(&self) -> u64 {
        days_to_ns(self.audit_retention_days)
    }
}

fn days_to_ns(days: f64) -> u64 {
    (days * 86_400.0 * 1e9) as u64
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {path}: {source} (check that the directory exists and is writable, and that no other monitor uses the file)"
    )]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "store {path} has schema version {found}, newer than this tracer knows ({known}); run a newer tracer or point --store at another file"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: order state in the database is not readable by this version: {0}")]
    State(#[from] serde_json::Error),
}

/// Schema versions: entry `i` migrates version `i` to `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: orders with their serialized lifecycle state, detections, append-only audit.
    "CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        status TEXT,
        first_seen INTEGER NOT NULL,
        last_activity INTEGER NOT NULL,
        closed_at INTEGER,
        active INTEGER NOT NULL,
        state TEXT NOT NULL
    );
    CREATE INDEX orders_by_status ON orders(status, last_activity DESC);
    CREATE INDEX orders_by_activity ON orders(last_activity);
    CREATE TABLE detections (
        id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        step TEXT NOT NULL,
        service TEXT NOT NULL,
        at INTEGER NOT NULL,
        resolved_at INTEGER
    );
    CREATE INDEX detections_by_time ON detections(at DESC);
    CREATE INDEX detections_by_order ON detections(order_id);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        order_id TEXT,
        result TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit(at);
    CREATE TRIGGER audit_is_append_only BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    // 2: spans received and not yet applied (the lifecycle's reorder buffer), so a crash
    // loses none of what the receivers acknowledged.
    "CREATE TABLE inbox (
        seq INTEGER PRIMARY KEY,
        arrival INTEGER NOT NULL,
        span TEXT NOT NULL
    );",
    // 3: alerts not yet delivered, one row per detection change and target, written with the
    // detection itself: a crash between the two cannot lose a page.
    "CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        detection TEXT NOT NULL,
        queued_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX outbox_by_target ON outbox(target, seq);",
    // 4: audit records leave only by the audit's own retention: a DELETE of a record younger
    // than it is refused, whoever issues it (the monitor sets the policy at each start).
    "CREATE TABLE audit_policy (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        retention_ns INTEGER NOT NULL
    );
    CREATE TRIGGER audit_is_kept BEFORE DELETE ON audit
    WHEN OLD.at >= CAST((julianday('now') - 2440587.5) * 86400000000000.0 AS INTEGER)
        - COALESCE((SELECT retention_ns FROM audit_policy), 9223372036854775807)
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: records leave only by its retention'); END;",
    // 5: what the monitor could not see: how far its timers had judged the evidence (so a
    // restart knows since when it was blind) and the gaps it noted.
    "CREATE TABLE evidence (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        judged_up_to INTEGER NOT NULL
    );
    CREATE TABLE gaps (
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        cause TEXT NOT NULL
    );
    CREATE INDEX gaps_by_end ON gaps(end);",
];

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (or creates) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // NORMAL under WAL: a power cut may lose the last commits, never corrupt the file.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Self { conn })
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// Writes orders' current state and their detections, in one transaction.
    pub fn save_orders(&mut self, orders: &[OrderState]) -> Result<(), StoreError> {
        self.save(
            &Changes {
                orders: orders
                    .iter()
                    .map(|o| (o.order_id.clone(), o.clone()))
                    .collect(),
                ..Changes::default()
            },
            &[],
        )
    }

    /// Writes one pass of the lifecycle in one transaction: orders (with their detections),
    /// orders given up, the inbox's additions and removals, and the alerts for each of
    /// `alert_targets`. After a crash, every span is either in the orders' state or in the
    /// inbox (never both, never neither), and every detection saved has its alerts queued.
    pub fn save(&mut self, changes: &Changes, alert_targets: &[&str]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut upsert_order = tx.prepare_cached(
                "INSERT INTO orders (order_id, status, first_seen, last_activity, closed_at, active, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(order_id) DO UPDATE SET status = ?2, first_seen = ?3,
                   last_activity = ?4, closed_at = ?5, active = ?6, state = ?7",
            )?;
            let mut upsert_detection = tx.prepare_cached(
                "INSERT INTO detections (id, order_id, kind, step, service, at, resolved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET resolved_at = ?7",
            )?;
            let followed = changes.orders.values().map(|o| (o, true));
            let given_up = changes.forgotten.values().map(|o| (o, false));
            for (order, active) in followed.chain(given_up) {
                upsert_order.execute(params![
                    order.order_id,
                    order.status,
                    to_sql_time(order.first_seen),
                    to_sql_time(order.last_activity),
                    order.closed_at.map(to_sql_time),
                    active,
                    serde_json::to_string(order)?,
                ])?;
                for d in &order.detections {
                    upsert_detection.execute(params![
                        d.id,
                        d.order_id,
                        d.kind.as_str(),
                        d.step,
                        d.service,
                        to_sql_time(d.at),
                        d.resolved_at.map(to_sql_time),
                    ])?;
                }
            }
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO inbox (seq, arrival, span) VALUES (?1, ?2, ?3)",
            )?;
            for (seq, (arrival, span)) in &changes.inbox_added {
                insert.execute(params![
                    to_sql_time(*seq),
                    to_sql_time(*arrival),
                    serde_json::to_string(span)?
                ])?;
            }
            let mut remove = tx.prepare_cached("DELETE FROM inbox WHERE seq = ?1")?;
            for seq in &changes.inbox_removed {
                remove.execute([to_sql_time(*seq)])?;
            }
            outbox::enqueue(&tx, &changes.alerts, alert_targets)?;
            let mut insert_gap =
                tx.prepare_cached("INSERT INTO gaps (start, end, cause) VALUES (?1, ?2, ?3)")?;
            for gap in &changes.gaps {
                insert_gap.execute(params![
                    to_sql_time(gap.start),
                    to_sql_time(gap.end),
                    gap.cause.as_str()
                ])?;
            }
            if let Some(judged) = changes.judged {
                tx.execute(
                    "INSERT INTO evidence (id, judged_up_to) VALUES (1, ?1)
                     ON CONFLICT(id) DO UPDATE SET judged_up_to = MAX(judged_up_to, ?1)",
                    [to_sql_time(judged)],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The spans received but not applied when the monitor stopped: (seq, arrival, span), in
    /// arrival order.
    pub fn load_inbox(&self) -> Result<Vec<(u64, u64, SpanRecord)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, arrival, span FROM inbox ORDER BY seq")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut spans = Vec::new();
        for row in rows {
            let (seq, arrival, span) = row?;
            spans.push((
                from_sql_time(seq),
                from_sql_time(arrival),
                serde_json::from_str(&span)?,
            ));
        }
        Ok(spans)
    }

    /// How far the lifecycle's timers had judged the evidence when it last saved (unix ns);
    /// `None` for a new store.
    pub fn load_judged(&self) -> Result<Option<u64>, StoreError> {
        let judged: Option<i64> = self
            .conn
            .query_row(
                "SELECT judged_up_to FROM evidence WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        Ok(judged.map(from_sql_time))
    }

    /// The gaps in the evidence that ended after `since` (unix ns), newest first.
    pub fn gaps(&self, since: u64, limit: usize) -> Result<Vec<Gap>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT start, end, cause FROM gaps WHERE end >= ?1 ORDER BY end DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![to_sql_time(since), limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut gaps = Vec::new();
        for row in rows {
            let (start, end, cause) = row?;
            if let Some(cause) = GapCause::parse(&cause) {
                gaps.push(Gap {
                    start: from_sql_time(start),
                    end: from_sql_time(end),
                    cause,
                });
            }
        }
        Ok(gaps)
    }

    /// The orders the lifecycle follows, to resume after a restart.
    pub fn load_active(&self) -> Result<Vec<OrderState>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state FROM orders WHERE active = 1")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        let mut orders = Vec::new();
        for state in rows {
            orders.push(serde_json::from_str(&state?)?);
        }
        Ok(orders)
    }

    pub fn order(&self, order_id: &str) -> Result<Option<OrderState>, StoreError> {
        let state: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM orders WHERE order_id = ?1",
                [order_id],
                |row| row.get(0),
            )
            .optional()?;
        Ok(match state {
            Some(state) => Some(serde_json::from_str(&state)?),
            None => None,
        })
    }

    /// How long audit records are kept (`[store] audit_retention_days`): younger ones cannot
    /// be deleted.
    pub fn set_audit_retention(&self, retention_ns: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit_policy (id, retention_ns) VALUES (1, ?1)
             ON CONFLICT(id) DO UPDATE SET retention_ns = ?1",
            [to_sql_time(retention_ns)],
        )?;
        Ok(())
    }

    /// Appends to the audit log (the only way rows get into it; updates are refused by a
    /// trigger, deletes of records younger than the audit's retention by another).
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit (at, who, action, order_id, result) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                to_sql_time(entry.at),
                entry.who,
                entry.action,
                entry.order_id,
                entry.result
            ],
        )?;
        Ok(())
    }

    /// Deletes orders (with their detections) inactive since before `cutoff`, and audit
    /// entries older than `audit_cutoff`. Orders still followed are kept whatever their age.
    pub fn purge(&mut self, cutoff: u64, audit_cutoff: u64) -> Result<usize, StoreError> {
        let cutoff = to_sql_time(cutoff);
        let audit_cutoff = to_sql_time(audit_cutoff);
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM detections WHERE order_id IN
               (SELECT order_id FROM orders WHERE active = 0 AND last_activity < ?1)",
            [cutoff],
        )?;
        let orders = tx.execute(
            "DELETE FROM orders WHERE active = 0 AND last_activity < ?1",
            [cutoff],
        )?;
        let audit = tx.execute("DELETE FROM audit WHERE at < ?1", [audit_cutoff])?;
        tx.execute("DELETE FROM gaps WHERE end < ?1", [cutoff])?;
        tx.commit()?;
        Ok(orders + audit)
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Unix ns as SQLite's signed 64-bit integer (good until the year 2262).
pub(crate) fn to_sql_time(ns: u64) -> i64 {
    ns.min(i64::MAX as u64) as i64
}

pub(crate) fn from_sql_time(ns: i64) -> u64 {
    ns.max(0) as u64
}

#[cfg(test)]
mod tests;
