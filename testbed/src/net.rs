//! What every testbed service shares: its arguments, JSON errors, the request log on the
//! server and client side, pooled clients, and serving on loopback (HTTP, or HTTPS with
//! `--tls-dir`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{FromRequest, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::faults::{FAULT_HEADER, FaultKind};
use crate::requestlog::{RequestLog, RequestLogRecord, Side};
use crate::service::{DEFAULT_BASE_PORT, Endpoints, Scheme, Service};
use crate::timings::Timings;
use crate::tls::{Pki, TlsError, TlsListener};

/// Most orders a service keeps; past it, new orders get `503` instead of growing memory.
pub const MAX_ORDERS: usize = 500_000;

/// A service's records by order id, at most [`MAX_ORDERS`] of them.
#[derive(Debug)]
pub struct Store<V>(Mutex<HashMap<String, V>>);

impl<V> Default for Store<V> {
    fn default() -> Self {
        Store(Mutex::new(HashMap::new()))
    }
}

impl<V> Store<V> {
    /// The map; a handler that panicked while holding it left it usable.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, V>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `503` when a store cannot take one more order.
pub fn ensure_room<V>(map: &HashMap<String, V>) -> Result<(), ApiError> {
    if map.len() >= MAX_ORDERS {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "order store is full",
        ));
    }
    Ok(())
}

/// Command line of every service process.
#[derive(Debug, Clone, clap::Parser)]
pub struct ServiceArgs {
    /// Base port: shop on it, MES +1, CRM +2, queue +3, broker +4..+6 (all on 127.0.0.1).
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    pub base_port: u16,
    /// Append one JSON line per side of every exchange to this file.
    #[arg(long)]
    pub request_log: Option<PathBuf>,
    /// Append one JSON line per message published or consumed through the broker.
    #[arg(long)]
    pub message_log: Option<PathBuf>,
    /// Scales every delay (fault timeouts); 1.0 is the documented default.
    #[arg(long, default_value_t = 1.0)]
    pub time_factor: f64,
    /// Serve HTTPS with this directory's `server.pem`/`server.key`, and call the other
    /// services over HTTPS trusting its `ca.pem` alone (`testbed serve --tls` makes it).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
}

/// Why a service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Log(#[from] crate::jsonl::JsonLinesError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A `4xx`/`5xx` answer with a JSON `{"error": …}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unknown_order(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no order {id}"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// A JSON body whose every defect (syntax, missing field, wrong type) is a `400`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
    }
}

/// The fault the caller asked this exchange to play, if any.
pub fn fault_of(headers: &HeaderMap) -> Option<FaultKind> {
    headers.get(FAULT_HEADER)?.to_str().ok()?.parse().ok()
}

/// Where a handler puts the order id it learnt from a body, for the request log.
#[derive(Debug, Clone, Default)]
pub struct OrderSlot(Arc<Mutex<Option<String>>>);

impl OrderSlot {
    pub fn set(&self, id: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_owned());
    }

    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What one service process shares between its handlers.
#[derive(Debug)]
pub struct Ctx {
    pub service: Service,
    pub base_port: u16,
    /// The certificates it serves HTTPS with (and whose CA it trusts), in TLS mode.
    pub tls: Option<Pki>,
    pub timings: Timings,
    pub log: RequestLog,
    pub message_log: RequestLog,
    /// Pooled keep-alive client for the calls this service makes.
    pub client: reqwest::Client,
}

impl Ctx {
    pub fn new(service: Service, args: &ServiceArgs) -> Result<Arc<Self>, StartError> {
        let open = |path: &Option<PathBuf>| match path {
            Some(path) => RequestLog::open(path),
            None => Ok(RequestLog::disabled()),
        };
        let (log, message_log) = (open(&args.request_log)?, open(&args.message_log)?);
        let tls = args.tls_dir.as_ref().map(Pki::at);
        Ok(Arc::new(Ctx {
            service,
            base_port: args.base_port,
            timings: Timings::new(args.time_factor),
            log,
            message_log,
            client: pooled_client(tls.as_ref())?,
            tls,
        }))
    }

    /// Where this testbed's services answer.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            base_port: self.base_port,
            scheme: match self.tls {
                Some(_) => Scheme::Https,
                None => Scheme::Http,
            },
        }
    }

    /// The URL of a route of another testbed service.
    pub fn url(&self, of: Service, path: &str) -> String {
        self.endpoints().url(of, path)
    }

    /// POSTs `body` as JSON to the route `route` of another service for one order, passing
    /// the order's fault on, and logs the client side. A `{order_id}` or `{orderRef}` in the
    /// route stands for the order's id, so the log has the template and the path alike, as
    /// on the server side. Returns the status (`None` when no answer came in `timeout`) and
    /// the whole body.
    pub async fn post_json(
        &self,
        to: Service,
        route: &str,
        order_id: &str,
        body: &serde_json::Value,
        fault: Option<FaultKind>,
        timeout: std::time::Duration,
    ) -> (Option<StatusCode>, Bytes) {
        let path = route
            .replace("{order_id}", order_id)
            .replace("{orderRef}", order_id);
        let mut req = self
            .client
            .post(self.url(to, &path))
            .timeout(timeout)
            .json(body);
        if let Some(fault) = fault {
            req = req.header(FAULT_HEADER, fault.as_str());
        }
        let start = OffsetDateTime::now_utc();
        let outcome = async {
            let resp = req.send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        }
        .await;
        // No answer (timeout, refused, cut off) is recorded as a null status code.
        let (status, body) = match outcome {
            Ok((status, body)) => (Some(status), body),
            Err(_) => (None, Bytes::new()),
        };
        self.log.append(&RequestLogRecord {
            service: self.service,
            side: Side::Client,
            method: "POST".to_owned(),
            route: Some(route.to_owned()),
            path,
            order_id: Some(order_id.to_owned()),
            status_code: status.map(|s| s.as_u16()),
            start,
            end: OffsetDateTime::now_utc(),
        });
        (status, body)
    }
}

/// A keep-alive client with a connection pool, HTTP/1.1 only, as the services' SDKs use.
/// With `tls`, it trusts that testbed's CA and nothing else (OpenSSL, through native-tls).
pub fn pooled_client(tls: Option<&Pki>) -> Result<reqwest::Client, TlsError> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .tcp_nodelay(true);
    if let Some(pki) = tls {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(pki.ca_certificate()?);
    }
    Ok(builder.build()?)
}

/// Logs the server side of one exchange, also when the exchange is cut off (the client
/// went away before the answer): then the record has no status code.
struct ServerExchange {
    ctx: Arc<Ctx>,
    record: Option<RequestLogRecord>,
    slot: OrderSlot,
}

impl ServerExchange {
    fn finish(&mut self, status: Option<u16>) {
        if let Some(mut record) = self.record.take() {
            if let Some(id) = self.slot.take() {
                record.order_id = Some(id);
            }
            record.status_code = status;
            record.end = OffsetDateTime::now_utc();
            self.ctx.log.append(&record);
        }
    }
}

impl Drop for ServerExchange {
    fn drop(&mut self) {
        self.finish(None);
    }
}

async fn log_server_side(
    State(ctx): State<Arc<Ctx>>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let from_path = params.ok().and_then(|params| {
        params
            .iter()
            .find(|(name, _)| matches!(*name, "order_id" | "orderRef"))
            .map(|(_, value)| value.to_owned())
    });
    let from_header = || {
        req.headers()
            .get("x-order-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let order_id = from_path.or_else(from_header);
    let now = OffsetDateTime::now_utc();
    let slot = OrderSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut exchange = ServerExchange {
        record: Some(RequestLogRecord {
            service: ctx.service,
            side: Side::Server,
            method: req.method().to_string(),
            route: matched.map(|m| m.as_str().to_owned()),
            path: req.uri().path().to_owned(),
            order_id,
            status_code: None,
            start: now,
            end: now,
        }),
        ctx,
        slot,
    };
    let response = next.run(req).await;
    exchange.finish(Some(response.status().as_u16()));
    response
}

/// Serves `routes` (plus `GET /healthz`) for `service` on 127.0.0.1 until the process is
/// killed. Traced services log each exchange's server side.
pub async fn serve(ctx: Arc<Ctx>, routes: Router) -> Result<(), StartError> {
    let listener = bind(&ctx).await?;
    serve_on(listener, ctx, routes).await
}

/// Takes the service's port (before a slow start, so nothing else takes it meanwhile).
pub async fn bind(ctx: &Ctx) -> std::io::Result<tokio::net::TcpListener> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ctx.service.port(ctx.base_port)));
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{}: cannot listen on {addr}: {e}", ctx.service),
        )
    })
}

/// Serves `routes` (plus `GET /healthz`) on a port [`bind`] took, over HTTPS in TLS mode.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    routes: Router,
) -> Result<(), StartError> {
    let mut app = routes.route("/healthz", get(|| async { "ok" }));
    if ctx.service != Service::Queue {
        app = app.layer(middleware::from_fn_with_state(ctx.clone(), log_server_side));
    }
    match &ctx.tls {
        Some(pki) => axum::serve(TlsListener::new(listener, pki.acceptor()?)?, app).await?,
        None => axum::serve(listener, app).await?,
    }
    Ok(())
}
