//! Handlers of the operator API and the page's static assets.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::ApiState;
use crate::clock::rfc3339;
use crate::lifecycle::{Detection, DetectionKind, OrderState};
use crate::store::{DetectionQuery, OrderQuery, Store};

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/app.js");
const PAGE_CSS: &str = include_str!("page/style.css");

/// Default page size of the lists.
const DEFAULT_PAGE: u32 = 50;

pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v1/orders", get(list_orders))
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/detections", get(list_detections))
        .route("/api/v1/stuck", get(list_stuck))
        .route("/api/v1/lost", get(list_lost))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/board", get(super::console::board))
        .route("/api/v1/dwell", get(super::console::dwell))
        .route("/metrics", get(metrics))
        .route("/", get(|| asset("text/html; charset=utf-8", PAGE_HTML)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", PAGE_JS)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", PAGE_CSS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; object-src 'none'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Runs a store read off the async threads.
pub(super) async fn read<T: Send + 'static>(
    state: &Arc<ApiState>,
    job: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    let internal = |e: String| {
        tracing::error!("store read: {e}");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store unavailable".into(),
        )
    };
    tokio::task::spawn_blocking(move || {
        let store = store
            .lock()
            .map_err(|_| "store lock poisoned".to_string())?;
        job(&store).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(internal)
}

#[derive(Serialize)]
struct HistoryView {
    status: String,
    at: String,
    service: String,
    rule: String,
    span_id: String,
    /// Seconds spent in this status (until the next change, or until now).
    dwell_secs: f64,
}

#[derive(Serialize)]
pub(super) struct DetectionView {
    id: String,
    order_id: String,
    kind: DetectionKind,
    step: String,
    service: String,
    at: String,
    resolved_at: Option<String>,
}

impl From<&Detection> for DetectionView {
    fn from(d: &Detection) -> Self {
        Self {
            id: d.id.clone(),
            order_id: d.order_id.clone(),
            kind: d.kind,
            step: d.step.clone(),
            service: d.service.clone(),
            at: rfc3339(d.at),
            resolved_at: d.resolved_at.map(rfc3339),
        }
    }
}

#[derive(Serialize)]
struct OrderView {
    order_id: String,
    status: Option<String>,
    trace_id: String,
    /// The order's trace in Jaeger, when `[api] jaeger_url` is set.
    trace_url: Option<String>,
    first_seen: String,
    last_activity: String,
    closed_at: Option<String>,
    history: Vec<HistoryView>,
    /// Total seconds per status, over the whole history.
    time_in_status: BTreeMap<String, f64>,
    detections: Vec<DetectionView>,
}

fn order_view(order: &OrderState, now: u64, jaeger_url: Option<&str>) -> OrderView {
    let trace_id = hex::encode(crate::spans::order_trace_id(&order.order_id));
    let mut history = Vec::with_capacity(order.history.len());
    let mut time_in_status = BTreeMap::new();
    for (i, entry) in order.history.iter().enumerate() {
        let until = match order.history.get(i + 1) {
            Some(next) => next.at,
            None => order.closed_at.unwrap_or(now).max(entry.at),
        };
        let dwell = until.saturating_sub(entry.at) as f64 / 1e9;
        *time_in_status.entry(entry.status.clone()).or_insert(0.0) += dwell;
        history.push(HistoryView {
            status: entry.status.clone(),
            at: rfc3339(entry.at),
            service: entry.service.clone(),
            rule: entry.rule.clone(),
            span_id: entry.span_id.clone(),
            dwell_secs: dwell,
        });
    }
    OrderView {
        order_id: order.order_id.clone(),
        status: order.status.clone(),
        trace_url: jaeger_url
            .map(|base| format!("{}/trace/{trace_id}", base.trim_end_matches('/'))),
        trace_id,
        first_seen: rfc3339(order.first_seen),
        last_activity: rfc3339(order.last_activity),
        closed_at: order.closed_at.map(rfc3339),
        history,
        time_in_status,
        detections: order.detections.iter().map(DetectionView::from).collect(),
    }
}

async fn get_order(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let wanted = id.clone();
    let order = read(&state, move |store| store.order(&wanted)).await?;
    match order {
        Some(order) => Ok(Json(order_view(
            &order,
            crate::clock::unix_now(),
            state.config.jaeger_url.as_deref(),
        ))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no order {id}"))),
    }
}

// Each query struct lists `limit` and `offset` itself: `serde(flatten)` would hand the
// numbers over as strings, which the query decoder then refuses.
#[derive(Deserialize)]
struct Paging {
    limit: Option<u32>,
    offset: Option<u64>,
}

fn page_limit(limit: Option<u32>, state: &ApiState) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        0 => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "limit must be at least 1".into(),
        )),
        n if n > state.config.max_page => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit is at most {}", state.config.max_page),
        )),
        n => Ok(n),
    }
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    limit: u32,
    offset: u64,
    /// Offset of the next page, absent on the last one.
    next_offset: Option<u64>,
}

/// Cuts the one extra row asked for to learn whether another page follows.
fn page<T>(mut items: Vec<T>, limit: u32, offset: u64) -> Page<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Page {
        next_offset: more.then(|| offset + u64::from(limit)),
        items,
        limit,
        offset,
    }
}

#[derive(Deserialize)]
struct OrdersParams {
    status: Option<String>,
    /// `true`: only followed orders, longest in their status first (the board's lists).
    waiting: Option<bool>,
    limit: Option<u32>,
    offset: Option<u64>,
}

async fn list_orders(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<OrdersParams>,
) -> Result<Json<Page<crate::store::OrderSummary>>, ApiError> {
    let limit = page_limit(params.limit, &state)?;
    let offset = params.offset.unwrap_or(0);
    let query = OrderQuery {
        status: params.status.filter(|s| !s.is_empty()),
        waiting: params.waiting.unwrap_or(false),
        limit: limit + 1,
        offset,
    };
    let items = read(&state, move |store| store.list_orders(&query)).await?;
    Ok(Json(page(items, limit, offset)))
}

#[derive(Deserialize)]
struct DetectionParams {
    open: Option<bool>,
    kind: Option<String>,
    service: Option<String>,
    step: Option<String>,
    order_id: Option<String>,
    /// `oldest` (the longest-standing first) or `newest` (the default).
    sort: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

async fn detections_page(
    state: Arc<ApiState>,
    params: DetectionParams,
    kind: Option<DetectionKind>,
) -> Result<Json<Page<DetectionView>>, ApiError> {
    let limit = page_limit(params.limit, &state)?;
    let offset = params.offset.unwrap_or(0);
    let kind = match (kind, params.kind.as_deref().filter(|k| !k.is_empty())) {
        (Some(kind), _) => Some(kind),
        (None, Some(text)) => Some(DetectionKind::parse(text).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown kind {text}; use one of {}",
                    DetectionKind::ALL.map(|k| k.as_str()).join(", ")
                ),
            )
        })?),
        (None, None) => None,
    };
    let query = DetectionQuery {
        open: params.open,
        kind,
        service: params.service.filter(|s| !s.is_empty()),
        step: params.step.filter(|s| !s.is_empty()),
        order_id: params.order_id.filter(|s| !s.is_empty()),
        oldest_first: match params.sort.as_deref() {
            None | Some("") | Some("newest") => false,
            Some("oldest") => true,
            Some(other) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("sort {other:?}: use oldest or newest"),
                ));
            }
        },
        limit: limit + 1,
        offset,
    };
    let items = read(&state, move |store| store.detections(&query)).await?;
    let views = items.iter().map(DetectionView::from).collect();
    Ok(Json(page(views, limit, offset)))
}

async fn list_detections(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<DetectionParams>,
) -> Result<Json<Page<DetectionView>>, ApiError> {
    detections_page(state, params, None).await
}

async fn list_stuck(
    State(state): State<Arc<ApiState>>,
    Query(mut params): Query<DetectionParams>,
) -> Result<Json<Page<DetectionView>>, ApiError> {
    params.open = Some(params.open.unwrap_or(true));
    detections_page(state, params, Some(DetectionKind::Stuck)).await
}

async fn list_lost(
    State(state): State<Arc<ApiState>>,
    Query(mut params): Query<DetectionParams>,
) -> Result<Json<Page<DetectionView>>, ApiError> {
    params.open = Some(params.open.unwrap_or(true));
    detections_page(state, params, Some(DetectionKind::LostInTransit)).await
}

#[derive(Serialize)]
struct AuditView {
    at: String,
    who: String,
    action: String,
    order_id: Option<String>,
    result: String,
}

async fn list_audit(
    State(state): State<Arc<ApiState>>,
    Query(paging): Query<Paging>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    let limit = page_limit(paging.limit, &state)?;
    let offset = paging.offset.unwrap_or(0);
    let items = read(&state, move |store| store.audit_entries(limit + 1, offset)).await?;
    let views = items
        .into_iter()
        .map(|e| AuditView {
            at: rfc3339(e.at),
            who: e.who,
            action: e.action,
            order_id: e.order_id,
            result: e.result,
        })
        .collect();
    Ok(Json(page(views, limit, offset)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_know_whether_more_follow() {
        let p = page(vec![1, 2, 3], 2, 10);
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next_offset, Some(12));
        assert_eq!(page(vec![1], 2, 0).next_offset, None);
    }

    #[test]
    fn timeline_has_dwell_per_status() {
        let mut order = OrderState::new("SO-1", 0);
        for (status, at) in [("INITIATED", 0), ("FILE_UPLOADED", 2_000_000_000)] {
            order.history.push(crate::lifecycle::HistoryEntry {
                status: status.into(),
                at,
                service: "shop-api".into(),
                rule: "r".into(),
                span_id: "00".into(),
            });
        }
        let view = order_view(&order, 5_000_000_000, Some("https://jaeger.example/"));
        assert_eq!(
            view.trace_url.as_deref(),
            Some(format!("https://jaeger.example/trace/{}", view.trace_id).as_str())
        );
        assert_eq!(view.history[0].dwell_secs, 2.0);
        assert_eq!(view.time_in_status["FILE_UPLOADED"], 3.0);
        assert_eq!(view.history[0].at, "1970-01-01T00:00:00Z");
    }
}
