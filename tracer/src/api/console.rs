//! What the operator console adds to the API: the board (where orders wait now, against each
//! status's stuck limit) and the dwell times (how long orders stayed in each status).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::routes::{ApiError, read};
use crate::clock::{rfc3339, unix_now};

/// The longest window `GET /api/v1/dwell` reads: older stays are what Prometheus's
/// `order_tracer_status_dwell_seconds` is for.
const MAX_WINDOW_SECS: u64 = 31 * 86_400;
const DEFAULT_WINDOW: &str = "24h";

#[derive(Serialize)]
pub(super) struct Board {
    at: String,
    statuses: Vec<Column>,
}

/// One status of the board, in lifecycle order.
#[derive(Serialize, Debug, PartialEq)]
struct Column {
    status: String,
    /// The service that moves orders out of this status (blamed when they stay).
    next_service: Option<String>,
    stuck_after_secs: Option<f64>,
    /// Orders in the status now.
    orders: u64,
    /// Of those, the ones there longer than `stuck_after_secs`.
    over_limit: u64,
    /// The longest-waiting one, and for how long.
    oldest_order_id: Option<String>,
    oldest_secs: Option<f64>,
}

pub(super) async fn board(State(state): State<Arc<ApiState>>) -> Result<Json<Board>, ApiError> {
    let waiting = read(&state, |store| store.waiting()).await?;
    let now = unix_now();
    Ok(Json(Board {
        at: rfc3339(now),
        statuses: columns(&state.statuses, &waiting, now),
    }))
}

fn columns(
    statuses: &[crate::lifecycle::StatusConfig],
    waiting: &[crate::store::Waiting],
    now: u64,
) -> Vec<Column> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, status)| {
            let here: Vec<_> = waiting.iter().filter(|w| w.status == status.name).collect();
            let age = |since: u64| now.saturating_sub(since) as f64 / 1e9;
            let oldest = here.iter().min_by_key(|w| (w.since, &w.order_id));
            Column {
                status: status.name.clone(),
                next_service: statuses.get(i + 1).map(|s| s.service.clone()),
                stuck_after_secs: status.stuck_after_secs,
                orders: here.len() as u64,
                over_limit: status.stuck_after_secs.map_or(0, |limit| {
                    here.iter().filter(|w| age(w.since) > limit).count() as u64
                }),
                oldest_order_id: oldest.map(|w| w.order_id.clone()),
                oldest_secs: oldest.map(|w| age(w.since)),
            }
        })
        .collect()
}

#[derive(Deserialize)]
pub(super) struct DwellParams {
    window: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Dwell {
    window: String,
    window_secs: u64,
    statuses: Vec<DwellRow>,
}

#[derive(Serialize, Debug, PartialEq)]
struct DwellRow {
    status: String,
    stuck_after_secs: Option<f64>,
    /// Stays that ended inside the window.
    count: u64,
    p50_secs: Option<f64>,
    p90_secs: Option<f64>,
    p99_secs: Option<f64>,
    max_secs: Option<f64>,
}

pub(super) async fn dwell(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<DwellParams>,
) -> Result<Json<Dwell>, ApiError> {
    let window = params.window.unwrap_or_else(|| DEFAULT_WINDOW.into());
    let secs = parse_window(&window).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let since = unix_now().saturating_sub(secs * 1_000_000_000);
    let stays = read(&state, move |store| store.stays_since(since)).await?;
    Ok(Json(Dwell {
        window,
        window_secs: secs,
        statuses: dwell_rows(&state.statuses, stays),
    }))
}

fn dwell_rows(
    statuses: &[crate::lifecycle::StatusConfig],
    stays: Vec<crate::store::Stay>,
) -> Vec<DwellRow> {
    statuses
        .iter()
        .filter(|s| statuses.last() != Some(s))
        .map(|status| {
            let mut secs: Vec<f64> = stays
                .iter()
                .filter(|s| s.status == status.name)
                .map(|s| s.dwell_ns as f64 / 1e9)
                .collect();
            secs.sort_by(f64::total_cmp);
            DwellRow {
                status: status.name.clone(),
                stuck_after_secs: status.stuck_after_secs,
                count: secs.len() as u64,
                p50_secs: quantile(&secs, 0.5),
                p90_secs: quantile(&secs, 0.9),
                p99_secs: quantile(&secs, 0.99),
                max_secs: secs.last().copied(),
            }
        })
        .collect()
}

/// Nearest-rank quantile of sorted values: a stay that really happened, never an average.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `90s`, `15m`, `6h`, `7d` or plain seconds, up to 31 days.
fn parse_window(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 0,
    };
    let secs = number
        .parse::<u64>()
        .ok()
        .filter(|n| scale > 0 && *n > 0)
        .map(|n| n.saturating_mul(scale))
        .ok_or_else(|| format!("window {text:?}: give e.g. 15m, 1h, 24h or 7d"))?;
    if secs > MAX_WINDOW_SECS {
        return Err(format!("window {text:?} is longer than 31 days"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::LifecycleConfig;
    use crate::store::{Stay, Waiting};

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_board_counts_orders_per_status_against_the_limit() {
        let statuses = LifecycleConfig::default().statuses;
        let hour = 3600 * S;
        let now = 10 * hour;
        let waiting = [
            ("A", "INITIATED", now - 2 * hour),
            ("B", "INITIATED", now - 10 * S),
            ("C", "CLOSED", now - 5 * hour),
        ]
        .map(|(id, status, since)| Waiting {
            order_id: id.into(),
            status: status.into(),
            since,
        });
        let board = columns(&statuses, &waiting, now);
        assert_eq!(board.len(), 10);
        assert_eq!(
            board[0],
            Column {
                status: "INITIATED".into(),
                next_service: Some("shop-api".into()),
                stuck_after_secs: Some(3600.0),
                orders: 2,
                over_limit: 1,
                oldest_order_id: Some("A".into()),
                oldest_secs: Some(7200.0),
            }
        );
        assert_eq!(
            (board[9].orders, board[9].over_limit),
            (1, 0),
            "no limit on CLOSED"
        );
        assert_eq!(board[9].next_service, None);
        assert_eq!(board[1].oldest_secs, None);
    }

    #[test]
    fn dwell_quantiles_are_stays_that_happened() {
        let statuses = LifecycleConfig::default().statuses;
        let stays = (1..=100)
            .map(|i| Stay {
                status: "PACKAGING".into(),
                dwell_ns: i * S,
            })
            .collect();
        let rows = dwell_rows(&statuses, stays);
        assert_eq!(rows.len(), 9, "the final status has no stay");
        let packaging = rows.iter().find(|r| r.status == "PACKAGING").unwrap();
        assert_eq!(
            (
                packaging.count,
                packaging.p50_secs,
                packaging.p90_secs,
                packaging.p99_secs
            ),
            (100, Some(50.0), Some(90.0), Some(99.0))
        );
        assert_eq!(rows[0].p50_secs, None);
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn windows_read_like_durations() {
        assert_eq!(parse_window("15m"), Ok(900));
        assert_eq!(parse_window("24h"), Ok(86_400));
        assert_eq!(parse_window("7d"), Ok(604_800));
        assert_eq!(parse_window("90"), Ok(90));
        for bad in ["", "0h", "1w", "-5m", "h", "40d"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }
}
