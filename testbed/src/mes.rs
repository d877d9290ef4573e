//! `mes-api`: the vendor MES (camelCase JSON, its own state names, `orderRef`). Publishes
//! priced orders to the broker and consumes approved work orders from it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::broker::{self, keys};
use crate::faults::FaultKind;
use crate::messaging::{Amqp, Carry, property};
use crate::net::{ApiError, Ctx, JsonBody, OrderSlot, Store, ensure_room, fault_of};
use crate::queue::{PRICED_ORDERS, WORK_ORDERS};

/// The MES's own state names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MesState {
    Priced,
    Queued,
    InWork,
    Done,
    Packing,
    Dispatched,
    Closed,
}

impl MesState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MesState::Priced => "PRICED",
            MesState::Queued => "QUEUED",
            MesState::InWork => "IN_WORK",
            MesState::Done => "DONE",
            MesState::Packing => "PACKING",
            MesState::Dispatched => "DISPATCHED",
            MesState::Closed => "CLOSED",
        }
    }

    /// Whether a work order may move from `self` to `to`. `DONE → DISPATCHED` is allowed:
    /// operators do skip packing, and the MES does not stop them. `CLOSED` is the CRM's
    /// word that the dispatched order was delivered.
    fn may_go_to(self, to: MesState) -> bool {
        use MesState::*;
        matches!(
            (self, to),
            (Queued, InWork)
                | (InWork, Done)
                | (Done, Packing)
                | (Done, Dispatched)
                | (Packing, Dispatched)
                | (Dispatched, Closed)
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PricingRequest {
    order_ref: String,
    model: ModelInfo,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    size_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct Transition {
    to: MesState,
    carrier: Option<String>,
}

#[derive(Debug)]
struct WorkOrder {
    state: MesState,
}

struct Mes {
    ctx: Arc<Ctx>,
    orders: Store<WorkOrder>,
    amqp: Arc<Amqp>,
}

type Shared = Arc<Mes>;

/// The MES's routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let mes = Arc::new(Mes {
        amqp: Amqp::new(ctx.clone()),
        ctx,
        orders: Store::default(),
    });
    let consumer = mes.clone();
    mes.amqp
        .consume(WORK_ORDERS, broker::MES_QUEUE, move |delivery| {
            let id = property(delivery.properties.message_id())?;
            if let Err(e) = consumer.queue_work_order(&id) {
                eprintln!("mes-api: work order {id}: {}", e.message);
            }
            Some((id, true))
        });
    // The rush line's worker is overloaded: it takes work orders and never gets to them.
    mes.amqp
        .consume(WORK_ORDERS, broker::MES_RUSH_QUEUE, |delivery| {
            Some((property(delivery.properties.message_id())?, false))
        });
    Router::new()
        .route("/mes/api/pricing-requests", post(price))
        .route("/mes/api/work-orders/{orderRef}", get(lookup))
        .route(
            "/mes/api/work-orders/{orderRef}/transitions",
            post(transition),
        )
        .with_state(mes)
}

fn answer(order_ref: &str, state: MesState) -> Json<serde_json::Value> {
    Json(json!({ "orderRef": order_ref, "state": state }))
}

async fn price(
    State(mes): State<Shared>,
    Extension(slot): Extension<OrderSlot>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PricingRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = req.order_ref;
    slot.set(&id);
    let fault = fault_of(&headers);
    match fault {
        Some(FaultKind::PricingNoAnswer) => {
            // Held until the shop's client gives up and closes (this future is dropped
            // then); the bound only matters for a client that never gives up.
            tokio::time::sleep(mes.ctx.timings.pricing_hang()).await;
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "pricing engine overloaded",
            ));
        }
        Some(FaultKind::PricingAfterChange) => {
            return Err(ApiError::conflict(format!(
                "order {id} changed since it was submitted"
            )));
        }
        _ => {}
    }
    {
        let mut orders = mes.orders.lock();
        if let Some(order) = orders.get(&id) {
            if order.state != MesState::Priced {
                return Err(ApiError::conflict(format!(
                    "order {id} is already in production"
                )));
            }
        } else {
            ensure_room(&orders)?;
        }
        orders.insert(
            id.clone(),
            WorkOrder {
                state: MesState::Priced,
            },
        );
    }
    // 80.00 plus 1.00 per 64 KiB of model, in cents.
    let cents = 8_000 + req.model.size_bytes / (64 << 10) * 100;
    let price = json!({ "amount": cents as f64 / 100.0, "currency": "EUR" });
    tokio::spawn(publish_priced(
        mes.clone(),
        id.clone(),
        price.clone(),
        fault,
    ));
    Ok(Json(
        json!({ "orderRef": id, "state": MesState::Priced, "price": price }),
    ))
}

/// The priced order goes to the CRM through the broker; the faults of the hand-over pick a
/// routing key the broker treats differently (no label the tracer could read).
async fn publish_priced(
    mes: Shared,
    id: String,
    price: serde_json::Value,
    fault: Option<FaultKind>,
) {
    let key = match fault {
        Some(FaultKind::PricedOrderDropped) => keys::PRICED_EXPIRED,
        Some(FaultKind::PricedOrderReturned) => keys::PRICED_UNROUTED,
        _ => keys::PRICED,
    };
    let body = json!({ "orderRef": id, "price": price });
    mes.amqp
        .publish(
            PRICED_ORDERS,
            broker::PRICED_EXCHANGE,
            key,
            &id,
            Carry::CorrelationId,
            &body,
        )
        .await;
}

impl Mes {
    /// A work order arrived from the CRM: it waits for the operator.
    fn queue_work_order(&self, id: &str) -> Result<(), ApiError> {
        let mut orders = self.orders.lock();
        let order = orders
            .get_mut(id)
            .ok_or_else(|| ApiError::unknown_order(id))?;
        if order.state != MesState::Priced {
            return Err(ApiError::conflict(format!(
                "work order {id} already exists in state {}",
                order.state.as_str()
            )));
        }
        order.state = MesState::Queued;
        Ok(())
    }
}

async fn lookup(
    State(mes): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let orders = mes.orders.lock();
    let order = orders
        .get(&id)
        .ok_or_else(|| ApiError::unknown_order(&id))?;
    Ok(answer(&id, order.state))
}

async fn transition(
    State(mes): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<Transition>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.to == MesState::Dispatched && req.carrier.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("DISPATCHED needs a carrier"));
    }
    let mut orders = mes.orders.lock();
    let order = orders
        .get_mut(&id)
        .ok_or_else(|| ApiError::unknown_order(&id))?;
    if !order.state.may_go_to(req.to) {
        return Err(ApiError::conflict(format!(
            "work order {id} cannot go from {} to {}",
            order.state.as_str(),
            req.to.as_str()
        )));
    }
    match (fault_of(&headers), req.to) {
        (Some(FaultKind::Completion500), MesState::Done) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "MES database error",
            ));
        }
        // Answered as done, but the write is lost.
        (Some(FaultKind::CompletionLost), MesState::Done) => {
            return Ok(answer(&id, MesState::Done));
        }
        (Some(FaultKind::ShippingUnavailable), MesState::Dispatched) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shipping service unavailable",
            ));
        }
        _ => {}
    }
    order.state = req.to;
    Ok(answer(&id, req.to))
}
