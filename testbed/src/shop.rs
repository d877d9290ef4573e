//! `shop-api`: the online shop (snake_case JSON, ids born in the create answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::faults::FaultKind;
use crate::net::{ApiError, Ctx, JsonBody, OrderSlot, Store, ensure_room, fault_of};
use crate::service::Service;
use crate::status::Status;

/// Largest model file the shop takes.
pub const MAX_MODEL_BYTES: usize = 8 << 20;

/// The create call's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateOrder {
    pub customer_id: String,
    pub items: Vec<Item>,
    pub cart_id: String,
}

/// One line of a cart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub quantity: u32,
}

#[derive(Debug)]
struct Order {
    status: Status,
    size_bytes: u64,
    /// Fault the customer's submit asked the downstream systems to play.
    downstream_fault: Option<FaultKind>,
}

struct Shop {
    ctx: Arc<Ctx>,
    orders: Store<Order>,
    next_id: AtomicU64,
    /// Distinguishes this process's ids from an earlier run's.
    id_prefix: String,
}

type Shared = Arc<Shop>;

/// The shop's routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let started = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let shop = Arc::new(Shop {
        ctx,
        orders: Store::default(),
        next_id: AtomicU64::new(1),
        id_prefix: format!(
            "SO-{:06x}",
            (started ^ u64::from(std::process::id())) & 0xff_ffff
        ),
    });
    Router::new()
        .route("/api/v1/orders", post(create))
        .route("/api/v1/orders/{order_id}", get(lookup))
        .route(
            "/api/v1/orders/{order_id}/model",
            put(upload).layer(DefaultBodyLimit::max(MAX_MODEL_BYTES)),
        )
        .route("/api/v1/orders/{order_id}/submit", post(submit))
        .route("/api/v1/orders/{order_id}/status", post(status_update))
        .with_state(shop)
}

async fn create(
    State(shop): State<Shared>,
    Extension(slot): Extension<OrderSlot>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateOrder>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if body.items.is_empty() {
        return Err(ApiError::bad_request("an order needs at least one item"));
    }
    let n = shop.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{n:06}", shop.id_prefix);
    slot.set(&id);
    let fault = fault_of(&headers);
    if fault != Some(FaultKind::CreatedNotSaved) {
        let mut orders = shop.orders.lock();
        ensure_room(&orders)?;
        let order = Order {
            status: Status::Initiated,
            size_bytes: 0,
            downstream_fault: None,
        };
        orders.insert(id.clone(), order);
    }
    if fault == Some(FaultKind::SessionHung) {
        tokio::time::sleep(shop.ctx.timings.session_hung_delay()).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "order_id": id, "status": Status::Initiated })),
    ))
}

async fn lookup(
    State(shop): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let orders = shop.orders.lock();
    let order = orders
        .get(&id)
        .ok_or_else(|| ApiError::unknown_order(&id))?;
    Ok(Json(json!({ "order_id": id, "status": order.status })))
}

async fn upload(
    State(shop): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    model: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_status(&shop, &id, Status::Initiated, "upload a model")?;
    match fault_of(&headers) {
        Some(FaultKind::UploadStorageFull) => {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "object storage is full",
            ));
        }
        Some(FaultKind::UploadTimeout) => {
            tokio::time::sleep(shop.ctx.timings.storage_timeout()).await;
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "object storage timed out",
            ));
        }
        _ => {}
    }
    if model.is_empty() {
        return Err(ApiError::bad_request("the model file is empty"));
    }
    let size = model.len() as u64;
    let mut orders = shop.orders.lock();
    let order = orders
        .get_mut(&id)
        .ok_or_else(|| ApiError::unknown_order(&id))?;
    order.status = Status::FileUploaded;
    order.size_bytes = size;
    Ok(Json(
        json!({ "order_id": id, "status": order.status, "size_bytes": size }),
    ))
}

async fn submit(
    State(shop): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_status(&shop, &id, Status::FileUploaded, "submit")?;
    let fault = fault_of(&headers);
    if fault == Some(FaultKind::SubmitDbError) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database error",
        ));
    }
    let size = {
        let mut orders = shop.orders.lock();
        let order = orders
            .get_mut(&id)
            .ok_or_else(|| ApiError::unknown_order(&id))?;
        order.status = Status::Submitted;
        order.downstream_fault = fault;
        order.size_bytes
    };
    // The shop prices the order after answering the customer, as a background job would.
    tokio::spawn(request_price(shop.clone(), id.clone(), size));
    Ok(Json(json!({ "order_id": id, "status": Status::Submitted })))
}

fn check_status(shop: &Shop, id: &str, expected: Status, action: &str) -> Result<(), ApiError> {
    let orders = shop.orders.lock();
    let order = orders.get(id).ok_or_else(|| ApiError::unknown_order(id))?;
    if order.status != expected {
        return Err(ApiError::conflict(format!(
            "cannot {action} order {id} in status {}",
            order.status
        )));
    }
    Ok(())
}

/// Another system's word on an order's status.
#[derive(Debug, Deserialize)]
struct StatusUpdate {
    status: Status,
    source: String,
}

/// The shop's part of the walk ends with the price; it learns of the close from the CRM,
/// the only later status it shows.
async fn status_update(
    State(shop): State<Shared>,
    Path(id): Path<String>,
    JsonBody(update): JsonBody<StatusUpdate>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if update.status != Status::Closed || update.source.is_empty() {
        return Err(ApiError::bad_request(
            "the shop takes only the status CLOSED, with its source",
        ));
    }
    let mut orders = shop.orders.lock();
    let order = orders
        .get_mut(&id)
        .ok_or_else(|| ApiError::unknown_order(&id))?;
    if order.status != Status::PriceCalculated {
        return Err(ApiError::conflict(format!(
            "cannot close order {id} in status {}",
            order.status
        )));
    }
    order.status = Status::Closed;
    Ok(Json(json!({ "order_id": id, "status": Status::Closed })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PriceAnswer {
    state: String,
}

async fn request_price(shop: Shared, id: String, size: u64) {
    let ctx = &shop.ctx;
    let fault = shop.orders.lock().get(&id).and_then(|o| o.downstream_fault);
    let route = "/mes/api/pricing-requests";
    let request = json!({ "orderRef": id, "model": { "sizeBytes": size } });
    let timeout = ctx.timings.pricing_timeout();
    let (status, body) = ctx
        .post_json(Service::Mes, route, &id, &request, fault, timeout)
        .await;
    let priced = status == Some(StatusCode::OK)
        && serde_json::from_slice::<PriceAnswer>(&body).is_ok_and(|a| a.state == "PRICED");
    if priced && let Some(order) = shop.orders.lock().get_mut(&id) {
        order.status = Status::PriceCalculated;
    }
}
