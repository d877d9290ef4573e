//! `order-queue`: the broker between MES and CRM. It starts a RabbitMQ node of its own (see
//! [`crate::broker`]), declares the shop's topology, stops the node when it ends, and keeps
//! what the services report of each message for the driver. The services report over a
//! Unix socket and the driver asks over HTTP; neither this process nor the driver is traced
//! (infrastructure, like a real broker), so the bookkeeping adds nothing to the traced wire.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::broker::{self, Broker, Ports};
use crate::net::{ApiError, Ctx, Store};
use crate::service::Service;

/// Topic of priced orders (MES → CRM), as the driver names it.
pub const PRICED_ORDERS: &str = "priced-orders";
/// Topic of approved work orders (CRM → MES).
pub const WORK_ORDERS: &str = "work-orders";

/// What became of the message of one order on one topic, as its publisher and consumer told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The broker confirmed the publish (where it went next, the consumer tells).
    Confirmed,
    /// The broker returned it: no queue was bound for its routing key.
    Returned,
    /// The broker refused it.
    Nacked,
    /// The consumer got it and will never acknowledge it (an overloaded line).
    Held,
    /// The consumer handled and acknowledged it.
    Delivered,
}

/// One report of a service about a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub topic: String,
    pub order_id: String,
    pub state: Delivery,
}

/// The Unix socket the services report to, per testbed (its base port).
pub fn report_socket(base_port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("order-testbed-{base_port}.sock"))
}

/// How a service reports. A send waits (a second at most) for room in the queue process's
/// socket: a report dropped under load would leave the driver waiting for good.
pub struct Reporter {
    socket: Option<std::os::unix::net::UnixDatagram>,
    to: PathBuf,
}

impl Reporter {
    pub fn new(base_port: u16) -> Self {
        let socket = std::os::unix::net::UnixDatagram::unbound().ok();
        if let Some(s) = &socket {
            let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        }
        Reporter {
            socket,
            to: report_socket(base_port),
        }
    }

    pub fn report(&self, topic: &str, order_id: &str, state: Delivery) {
        let report = Report {
            topic: topic.to_owned(),
            order_id: order_id.to_owned(),
            state,
        };
        if let (Some(socket), Ok(bytes)) = (&self.socket, serde_json::to_vec(&report))
            && let Err(e) = socket.send_to(&bytes, &self.to)
        {
            eprintln!("report of {order_id} on {topic} lost: {e}");
        }
    }
}

type Shared = Arc<Store<Delivery>>;

/// Runs the broker and the bookkeeping until the process is told to stop.
pub async fn run(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let base = ctx.base_port;
    // The port first: the driver waits for it to answer, which it does once the broker is up.
    let listener = crate::net::bind(&ctx).await?;
    let ports = Ports {
        amqp: Service::amqp_port(base),
        dist: base + 5,
        epmd: base + 6,
    };
    let dir = std::env::temp_dir().join(format!(
        "order-testbed-{base}-{}-rabbitmq",
        std::process::id()
    ));
    let mut node = Broker::start(&format!("testbed{base}"), ports, &dir).await?;
    broker::declare_topology(&broker::amqp_url(ports.amqp)).await?;
    let store: Shared = Arc::new(Store::default());
    let socket_path = report_socket(base);
    let _ = std::fs::remove_file(&socket_path);
    let socket = tokio::net::UnixDatagram::bind(&socket_path)?;
    tokio::spawn(listen(socket, store.clone()));
    let routes = Router::new()
        .route(
            "/queue/v1/topics/{topic}/deliveries/{order_id}",
            get(delivery),
        )
        .with_state(store);
    let served = tokio::select! {
        served = crate::net::serve_on(listener, ctx, routes) => served.map_err(anyhow::Error::from),
        _ = terminated() => Ok(()),
    };
    node.stop();
    let _ = std::fs::remove_file(&socket_path);
    served
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    if let Ok(mut term) = signal(SignalKind::terminate()) {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn listen(socket: tokio::net::UnixDatagram, store: Shared) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(n) = socket.recv(&mut buf).await else {
            return;
        };
        let Ok(report) = serde_json::from_slice::<Report>(&buf[..n]) else {
            continue;
        };
        let mut deliveries = store.lock();
        if deliveries.len() >= crate::net::MAX_ORDERS {
            continue;
        }
        let key = format!("{}/{}", report.topic, report.order_id);
        // The consumer's word is final: a confirm reported after it changes nothing.
        let entry = deliveries.entry(key).or_insert(report.state);
        *entry = (*entry).max(report.state);
    }
}

async fn delivery(
    State(store): State<Shared>,
    Path((topic, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let deliveries = store.lock();
    let state = deliveries
        .get(&format!("{topic}/{id}"))
        .ok_or_else(|| ApiError::unknown_order(&id))?;
    Ok(Json(json!({ "order_id": id, "state": state })))
}
