//! Read side of the store: the lists the operator API pages through.

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, from_sql_time, to_sql_time};
use crate::lifecycle::{Detection, DetectionKind};

/// One line of the audit log: who did what to which order, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix ns.
    pub at: u64,
    pub who: String,
    pub action: String,
    pub order_id: Option<String>,
    pub result: String,
}

#[derive(Clone, Debug, Default)]
pub struct OrderQuery {
    pub status: Option<String>,
    /// Only the orders the lifecycle still follows (not given up), longest in their status
    /// first: the board's view of a status.
    pub waiting: bool,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OrderSummary {
    pub order_id: String,
    pub status: Option<String>,
    pub first_seen: u64,
    pub last_activity: u64,
    pub closed_at: Option<u64>,
    /// Unix ns the order entered its current status.
    pub status_since: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DetectionQuery {
    /// `Some(true)`: only open ones; `Some(false)`: only resolved ones.
    pub open: Option<bool>,
    pub kind: Option<DetectionKind>,
    pub service: Option<String>,
    /// The status not reached.
    pub step: Option<String>,
    pub order_id: Option<String>,
    /// Oldest first (the ones waiting longest), instead of newest first.
    pub oldest_first: bool,
    pub limit: u32,
    pub offset: u64,
}

impl Store {
    /// Orders, most recently active first.
    pub fn list_orders(&self, query: &OrderQuery) -> Result<Vec<OrderSummary>, StoreError> {
        let mut sql = String::from(
            "SELECT order_id, status, first_seen, last_activity, closed_at,
                    json_extract(state, '$.status_since') AS since
             FROM orders WHERE 1 = 1",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(status) = &query.status {
            sql.push_str(" AND status = ?");
            args.push(Value::Text(status.clone()));
        }
        if query.waiting {
            sql.push_str(" AND active = 1 ORDER BY since, order_id");
        } else {
            sql.push_str(" ORDER BY last_activity DESC, order_id");
        }
        sql.push_str(" LIMIT ? OFFSET ?");
        args.push(Value::Integer(query.limit.into()));
        args.push(Value::Integer(to_sql_time(query.offset)));
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
            Ok(OrderSummary {
                order_id: row.get(0)?,
                status: row.get(1)?,
                first_seen: from_sql_time(row.get(2)?),
                last_activity: from_sql_time(row.get(3)?),
                closed_at: row.get::<_, Option<i64>>(4)?.map(from_sql_time),
                status_since: from_sql_time(row.get::<_, Option<i64>>(5)?.unwrap_or(0)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Detections, newest first.
    pub fn detections(&self, query: &DetectionQuery) -> Result<Vec<Detection>, StoreError> {
        let mut sql = String::from(
            "SELECT id, order_id, kind, step, service, at, resolved_at FROM detections WHERE 1 = 1",
        );
        let mut args: Vec<Value> = Vec::new();
        match query.open {
            Some(true) => sql.push_str(" AND resolved_at IS NULL"),
            Some(false) => sql.push_str(" AND resolved_at IS NOT NULL"),
            None => {}
        }
        for (column, value) in [
            ("kind", query.kind.map(|k| k.as_str().to_string())),
            ("service", query.service.clone()),
            ("step", query.step.clone()),
            ("order_id", query.order_id.clone()),
        ] {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(Value::Text(value));
            }
        }
        sql.push_str(if query.oldest_first {
            " ORDER BY at, id LIMIT ? OFFSET ?"
        } else {
            " ORDER BY at DESC, id LIMIT ? OFFSET ?"
        });
        args.push(Value::Integer(query.limit.into()));
        args.push(Value::Integer(to_sql_time(query.offset)));
        let mut stmt = self.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
            let kind: String = row.get(2)?;
            Ok(Detection {
                id: row.get(0)?,
                order_id: row.get(1)?,
                // Kinds are written by this code only; an unknown one means a newer writer.
                kind: DetectionKind::parse(&kind).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Text,
                        format!("unknown detection kind {kind}").into(),
                    )
                })?,
                step: row.get(3)?,
                service: row.get(4)?,
                at: from_sql_time(row.get(5)?),
                resolved_at: row.get::<_, Option<i64>>(6)?.map(from_sql_time),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Audit entries, newest first.
    pub fn audit_entries(&self, limit: u32, offset: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self.conn().prepare(
            "SELECT at, who, action, order_id, result FROM audit ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
        )?;
        let rows = stmt.query_map([i64::from(limit), to_sql_time(offset)], |row| {
            Ok(AuditEntry {
                at: from_sql_time(row.get(0)?),
                who: row.get(1)?,
                action: row.get(2)?,
                order_id: row.get(3)?,
                result: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
