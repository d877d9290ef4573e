//! `order-queue`: the broker between MES and CRM. It relays each message to its consumer
//! and is not traced, like real infrastructure. The driver (also untraced) asks it whether
//! a message was delivered, so waiting for the relay adds nothing to the traced wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::faults::FaultKind;
use crate::net::{ApiError, Ctx, JsonBody, Store, ensure_room, fault_of};
use crate::service::Service;

/// Topic of priced orders (MES → CRM).
pub const PRICED_ORDERS: &str = "priced-orders";
/// Topic of approved work orders (CRM → MES).
pub const WORK_ORDERS: &str = "work-orders";

/// Tries to hand one message to its consumer.
const DELIVERY_ATTEMPTS: u32 = 3;

/// What became of the message of one order on one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Pending,
    /// The consumer answered 2xx.
    Delivered,
    /// The broker lost it (an injected fault).
    Dropped,
    /// The consumer refused it or could not be reached.
    Failed,
}

struct Queue {
    ctx: Arc<Ctx>,
    /// By `topic/order_id`.
    deliveries: Store<Delivery>,
    next_message: AtomicU64,
}

type Shared = Arc<Queue>;

impl Queue {
    fn set(&self, topic: &'static str, id: &str, state: Delivery) {
        self.deliveries
            .lock()
            .insert(format!("{topic}/{id}"), state);
    }
}

/// The queue's routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let queue = Arc::new(Queue {
        ctx,
        deliveries: Store::default(),
        next_message: AtomicU64::new(1),
    });
    Router::new()
        .route("/queue/v1/topics/{topic}/messages", post(publish))
        .route(
            "/queue/v1/topics/{topic}/deliveries/{order_id}",
            get(delivery),
        )
        .with_state(queue)
}

fn topic_name(topic: &str) -> Result<&'static str, ApiError> {
    [PRICED_ORDERS, WORK_ORDERS]
        .into_iter()
        .find(|t| *t == topic)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no topic {topic}")))
}

/// The order a message is about, by the topic's message shape.
fn message_order(topic: &str, msg: &Value) -> Option<String> {
    let id = match topic {
        PRICED_ORDERS => msg.get("orderRef"),
        _ => msg.get("order").and_then(|o| o.get("id")),
    };
    id.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

async fn publish(
    State(queue): State<Shared>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    JsonBody(msg): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let topic = topic_name(&topic)?;
    let id = message_order(topic, &msg)
        .ok_or_else(|| ApiError::bad_request(format!("a {topic} message names no order")))?;
    ensure_room(&queue.deliveries.lock())?;
    let dropped = matches!(
        (topic, fault_of(&headers)),
        (PRICED_ORDERS, Some(FaultKind::PricedOrderDropped))
            | (WORK_ORDERS, Some(FaultKind::WorkOrderDropped))
    );
    if dropped {
        queue.set(topic, &id, Delivery::Dropped);
    } else {
        queue.set(topic, &id, Delivery::Pending);
        tokio::spawn(deliver(queue.clone(), topic, id, msg));
    }
    let n = queue.next_message.fetch_add(1, Ordering::Relaxed);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "messageId": format!("msg-{n:08}") })),
    ))
}

async fn deliver(queue: Shared, topic: &'static str, id: String, msg: Value) {
    let ctx = &queue.ctx;
    let mut outcome = Delivery::Failed;
    for attempt in 0..DELIVERY_ATTEMPTS {
        let req = match topic {
            PRICED_ORDERS => ctx
                .client
                .post(ctx.url(Service::Crm, "/crm/v1/deals"))
                .header("X-Order-Id", &id)
                .json(&json!({ "deal": { "source": "mes", "price": msg.get("price") } })),
            _ => ctx
                .client
                .post(ctx.url(Service::Mes, "/mes/api/work-orders"))
                .json(&json!({ "workOrder": { "orderRef": id } })),
        };
        match req.timeout(ctx.timings.request_timeout()).send().await {
            Ok(resp) => {
                outcome = if resp.status().is_success() {
                    Delivery::Delivered
                } else {
                    Delivery::Failed
                };
                break;
            }
            // Only a consumer that could not be reached is retried: a refusal is final.
            Err(e) => {
                eprintln!("order-queue: delivering {topic} for {id} failed: {e}");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    queue.set(topic, &id, outcome);
}

async fn delivery(
    State(queue): State<Shared>,
    Path((topic, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let topic = topic_name(&topic)?;
    let deliveries = queue.deliveries.lock();
    let state = deliveries
        .get(&format!("{topic}/{id}"))
        .ok_or_else(|| ApiError::unknown_order(&id))?;
    Ok(Json(json!({ "order_id": id, "state": state })))
}
