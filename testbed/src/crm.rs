//! `crm-api`: the CRM (nested JSON; the queue hands it the order id in a header).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::faults::FaultKind;
use crate::net::{ApiError, Ctx, JsonBody, OrderSlot, Store, ensure_room, fault_of};
use crate::service::Service;
use crate::status::Status;

/// Where a deal is in the sales pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    AwaitingApproval,
    Approved,
    Closed,
}

impl Stage {
    /// The canonical status a deal in this stage stands for.
    pub fn status(self) -> Status {
        match self {
            Stage::AwaitingApproval => Status::PriceCalculated,
            Stage::Approved => Status::ManufacturingApproved,
            Stage::Closed => Status::Closed,
        }
    }
}

#[derive(Debug, Deserialize)]
struct NewDeal {
    deal: DealBody,
}

#[derive(Debug, Deserialize)]
struct DealBody {
    source: String,
    price: Price,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Price {
    amount: f64,
    currency: String,
}

#[derive(Debug)]
struct Deal {
    stage: Stage,
    price: Price,
}

#[derive(Debug, Deserialize)]
struct CarrierEvent {
    shipment: Shipment,
}

#[derive(Debug, Deserialize)]
struct Shipment {
    order_ref: String,
    event: String,
}

struct Crm {
    ctx: Arc<Ctx>,
    deals: Store<Deal>,
}

type Shared = Arc<Crm>;

/// The CRM's routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let crm = Arc::new(Crm {
        ctx,
        deals: Store::default(),
    });
    Router::new()
        .route("/crm/v1/deals", post(receive_deal))
        .route("/crm/v1/deals/{order_id}", get(lookup))
        .route("/crm/v1/deals/{order_id}/approve", post(approve))
        .route("/crm/v1/deals/{order_id}/close", post(close))
        .route("/crm/v1/webhooks/carrier", post(carrier_webhook))
        .with_state(crm)
}

fn order_answer(id: &str, status: Status) -> Json<serde_json::Value> {
    Json(json!({ "order": { "id": id, "status": status } }))
}

async fn receive_deal(
    State(crm): State<Shared>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewDeal>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = headers
        .get("x-order-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing X-Order-Id header"))?;
    if req.deal.source.is_empty() {
        return Err(ApiError::bad_request("a deal needs a source"));
    }
    let mut deals = crm.deals.lock();
    if deals.contains_key(id) {
        return Err(ApiError::conflict(format!(
            "deal for order {id} already exists"
        )));
    }
    ensure_room(&deals)?;
    deals.insert(
        id.to_owned(),
        Deal {
            stage: Stage::AwaitingApproval,
            price: req.deal.price,
        },
    );
    let body = json!({ "deal": { "order": { "id": id }, "stage": Stage::AwaitingApproval } });
    Ok((StatusCode::CREATED, Json(body)))
}

/// The deal screen's lookup. Sent chunked, as the CRM's streaming serializer does.
async fn lookup(State(crm): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let body = {
        let deals = crm.deals.lock();
        let deal = deals.get(&id).ok_or_else(|| ApiError::unknown_order(&id))?;
        let (stage, price) = (deal.stage, &deal.price);
        json!({ "deal": { "order": { "id": id, "status": stage.status() }, "stage": stage, "price": price } })
    };
    let bytes = serde_json::to_vec(&body).expect("a JSON value always serializes");
    let half = bytes.len() / 2;
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::copy_from_slice(&bytes[..half])),
        Ok(Bytes::copy_from_slice(&bytes[half..])),
    ];
    let stream = futures_util::stream::iter(chunks);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn approve(
    State(crm): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    {
        let mut deals = crm.deals.lock();
        let stage = &mut deals
            .get_mut(&id)
            .ok_or_else(|| ApiError::unknown_order(&id))?
            .stage;
        if *stage != Stage::AwaitingApproval {
            return Err(ApiError::conflict(format!(
                "deal {id} is not awaiting approval"
            )));
        }
        *stage = Stage::Approved;
    }
    // The work order goes out after the seller has the answer, as an outbox would send it.
    tokio::spawn(publish_work_order(
        crm.clone(),
        id.clone(),
        fault_of(&headers),
    ));
    Ok(order_answer(&id, Status::ManufacturingApproved))
}

async fn publish_work_order(crm: Shared, id: String, fault: Option<FaultKind>) {
    let ctx = &crm.ctx;
    let route = "/queue/v1/topics/work-orders/messages";
    let body = json!({ "order": { "id": id } });
    let timeout = ctx.timings.request_timeout();
    ctx.post_json(Service::Queue, route, &id, &body, fault, timeout)
        .await;
}

/// Closes the deal and, after the answer, tells the shop and the MES.
fn close_deal(crm: &Shared, id: &str) -> Result<Json<serde_json::Value>, ApiError> {
    {
        let mut deals = crm.deals.lock();
        let stage = &mut deals
            .get_mut(id)
            .ok_or_else(|| ApiError::unknown_order(id))?
            .stage;
        if *stage != Stage::Approved {
            return Err(ApiError::conflict(format!(
                "deal {id} cannot be closed before approval"
            )));
        }
        *stage = Stage::Closed;
    }
    tokio::spawn(notify_closed(crm.clone(), id.to_owned()));
    Ok(order_answer(id, Status::Closed))
}

/// The CRM is where an order ends, so it is the one that tells the other two systems.
async fn notify_closed(crm: Shared, id: String) {
    let ctx = &crm.ctx;
    let timeout = ctx.timings.request_timeout();
    let shop_route = "/api/v1/orders/{order_id}/status";
    let shop_body = json!({ "status": Status::Closed, "source": "crm" });
    let mes_route = "/mes/api/work-orders/{orderRef}/transitions";
    let mes_body = json!({ "to": "CLOSED" });
    tokio::join!(
        ctx.post_json(Service::Shop, shop_route, &id, &shop_body, None, timeout),
        ctx.post_json(Service::Mes, mes_route, &id, &mes_body, None, timeout),
    );
}

async fn close(
    State(crm): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    close_deal(&crm, &id)
}

async fn carrier_webhook(
    State(crm): State<Shared>,
    Extension(slot): Extension<OrderSlot>,
    JsonBody(req): JsonBody<CarrierEvent>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = req.shipment.order_ref;
    slot.set(&id);
    if req.shipment.event != "DELIVERED" {
        // Other carrier events (IN_TRANSIT, …) change nothing in the CRM.
        let deals = crm.deals.lock();
        let deal = deals.get(&id).ok_or_else(|| ApiError::unknown_order(&id))?;
        return Ok(order_answer(&id, deal.stage.status()));
    }
    close_deal(&crm, &id)
}
