//! `crm-api`: the CRM (nested JSON). Consumes priced orders from the broker (the order id in
//! the `correlation-id`) and publishes approved work orders to it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::broker::{self, keys};
use crate::faults::FaultKind;
use crate::messaging::{Amqp, Carry, property};
use crate::net::{ApiError, Ctx, JsonBody, OrderSlot, Store, ensure_room, fault_of};
use crate::queue::{PRICED_ORDERS, WORK_ORDERS};
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

/// A priced order as the MES publishes it.
#[derive(Debug, Deserialize)]
struct PricedOrder {
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
    amqp: Arc<Amqp>,
}

type Shared = Arc<Crm>;

/// The CRM's routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let crm = Arc::new(Crm {
        amqp: Amqp::new(ctx.clone()),
        ctx,
        deals: Store::default(),
    });
    let consumer = crm.clone();
    crm.amqp
        .consume(PRICED_ORDERS, broker::CRM_QUEUE, move |delivery| {
            let id = property(delivery.properties.correlation_id())?;
            let created = serde_json::from_slice::<PricedOrder>(&delivery.data)
                .map_err(|e| ApiError::bad_request(format!("malformed priced order: {e}")))
                .and_then(|order| consumer.open_deal(&id, order.price));
            if let Err(e) = created {
                eprintln!("crm-api: priced order {id}: {}", e.message);
            }
            Some((id, true))
        });
    Router::new()
        .route("/crm/v1/deals/{order_id}", get(lookup))
        .route("/crm/v1/deals/{order_id}/approve", post(approve))
        .route("/crm/v1/deals/{order_id}/close", post(close))
        .route("/crm/v1/webhooks/carrier", post(carrier_webhook))
        .with_state(crm)
}

fn order_answer(id: &str, status: Status) -> Json<serde_json::Value> {
    Json(json!({ "order": { "id": id, "status": status } }))
}

impl Crm {
    /// A priced order arrived: a deal waits for the seller's approval.
    fn open_deal(&self, id: &str, price: Price) -> Result<(), ApiError> {
        let mut deals = self.deals.lock();
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
                price,
            },
        );
        Ok(())
    }
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

/// The work order goes to the MES through the broker; the faults of the hand-over pick a
/// routing key the broker treats differently (no label the tracer could read).
async fn publish_work_order(crm: Shared, id: String, fault: Option<FaultKind>) {
    let key = match fault {
        Some(FaultKind::WorkOrderDropped) => keys::WORK_OVER_LIMIT,
        Some(FaultKind::WorkOrderUnacked) => keys::WORK_RUSH,
        _ => keys::WORK,
    };
    let body = json!({ "workOrder": { "plant": key } });
    crm.amqp
        .publish(
            WORK_ORDERS,
            broker::WORK_EXCHANGE,
            key,
            &id,
            Carry::HeaderAndMessageId,
            &body,
        )
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
