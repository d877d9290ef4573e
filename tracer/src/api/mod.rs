//! The operator API (JSON, `/api/v1`), the built-in page over it, and `/metrics`; every
//! request authenticated and audited.
//!
//! - `GET /api/v1/orders/{id}`: the order with its timeline and detections;
//! - `GET /api/v1/orders?status=&limit=&offset=`: orders, most recently active first;
//! - `GET /api/v1/orders?status=&waiting=true`: the followed orders of a status, longest
//!   waiting first (the board's lists);
//! - `GET /api/v1/detections?open=&kind=&service=&step=&order_id=&sort=oldest|newest&limit=&offset=`;
//! - `GET /api/v1/board`: per status, orders there now, how many over the stuck limit, the
//!   oldest one's age;
//! - `GET /api/v1/dwell?window=24h`: per status, median / p90 / p99 of the stays that ended in
//!   the window;
//! - `GET /api/v1/stuck`, `GET /api/v1/lost`: the open `stuck` / `lost_in_transit` ones;
//! - `GET /api/v1/audit?limit=&offset=`: the audit log, newest first;
//! - `GET /` (page), `GET /metrics` (Prometheus), `GET /healthz` (liveness, no data).

mod audit;
mod auth;
mod console;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

pub use audit::{AuditLog, logs_request};
pub use auth::{Auth, AuthConfig, AuthError, AuthSetupError, OidcConfig, Principal, StaticToken};

use crate::metrics::SharedMetrics;
use crate::store::{AuditEntry, Store};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the API, page and `/metrics` (`--listen` overrides it).
    pub listen: SocketAddr,
    /// PEM certificate chain and key: both or neither. With them the API speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA of the OTLP clients (`tracer monitor`): with it, a client (the Collector, an
    /// agent) must present a certificate this CA signed. Needs `tls_cert`, whose identity the
    /// OTLP listeners serve as well.
    pub otlp_client_ca: Option<PathBuf>,
    pub auth: AuthConfig,
    /// Alertmanager-compatible webhook receiving one notification per detection raised and
    /// resolved (Alertmanager's webhook format, for relays).
    pub alert_webhook: Option<String>,
    /// Alertmanager itself (e.g. `http://alertmanager:9093`): each detection is posted to its
    /// `POST /api/v2/alerts`, firing while open, with `endsAt` when resolved.
    pub alertmanager_url: Option<String>,
    /// OTLP/HTTP logs endpoint (`…/v1/logs`) the audit log is copied to.
    pub audit_otlp_logs: Option<String>,
    /// Jaeger's UI (e.g. `https://jaeger.example.com`): order views link to
    /// `{jaeger_url}/trace/{trace_id}`.
    pub jaeger_url: Option<String>,
    /// Serve `/metrics` without a token (metrics carry no order ids).
    pub metrics_public: bool,
    /// Largest page a list request may ask for.
    pub max_page: u32,
    /// Plain text across the network, both ways: serve plain HTTP on an address other than
    /// loopback (bearer tokens and order data in clear), and send to `http://` URLs of other
    /// hosts (`alert_webhook`, `audit_otlp_logs`, `jwks_url`, `tracer monitor --forward-to`).
    /// Off: listening off loopback needs `tls_cert` and `tls_key`, and those URLs `https://`.
    pub insecure: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            tls_cert: None,
            tls_key: None,
            otlp_client_ca: None,
            auth: AuthConfig::default(),
            alert_webhook: None,
            alertmanager_url: None,
            audit_otlp_logs: None,
            jaeger_url: None,
            metrics_public: false,
            max_page: 500,
            insecure: false,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("[api] give both tls_cert and tls_key, or neither".into());
        }
        if self.otlp_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(
                "[api] otlp_client_ca needs tls_cert and tls_key: client certificates are only \
                 asked for over TLS"
                    .into(),
            );
        }
        let jwks_url = self.auth.oidc.as_ref().and_then(|o| o.jwks_url.as_ref());
        for (field, url) in [
            ("[api] alert_webhook", self.alert_webhook.as_ref()),
            ("[api] alertmanager_url", self.alertmanager_url.as_ref()),
            ("[api] audit_otlp_logs", self.audit_otlp_logs.as_ref()),
            ("[api.auth.oidc] jwks_url", jwks_url),
        ] {
            if let Some(url) = url {
                crate::transport::check_url(url, field, self.insecure, "[api] insecure = true")?;
            }
        }
        // A link for the operators' browsers, not a connection the monitor makes.
        if let Some(url) = &self.jaeger_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err("[api] jaeger_url: give an http:// or https:// URL".into());
        }
        if self.max_page == 0 {
            return Err("[api] max_page must be at least 1".into());
        }
        self.check_listen(self.listen, "[api] listen =")?;
        self.auth.validate()
    }

    /// Tokens, spans and order data cross the network only encrypted, unless someone decided
    /// otherwise. `what` names where `addr` came from (a config key or a flag); checked again
    /// after the command line overrides an address.
    pub fn check_listen(&self, addr: SocketAddr, what: &str) -> Result<(), String> {
        if !addr.ip().is_loopback() && self.tls_cert.is_none() && !self.insecure {
            return Err(format!(
                "{what} {addr} is reachable from other hosts: give [api] tls_cert and tls_key \
                 (or set [api] insecure = true to serve plain text there)"
            ));
        }
        Ok(())
    }
}

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<Mutex<Store>>,
    pub auth: Auth,
    pub audit: AuditLog,
    pub metrics: SharedMetrics,
    pub config: ApiConfig,
    /// The lifecycle's statuses in order, with their limits (the board's columns).
    pub statuses: Vec<crate::lifecycle::StatusConfig>,
}

/// The whole HTTP surface.
pub fn router(state: Arc<ApiState>) -> Router {
    routes::routes()
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(state)
}

/// Binds and serves until the process ends; HTTPS when TLS files are configured.
pub async fn serve(state: Arc<ApiState>, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen} for the API: {e} (pick a free address with --listen)"
        )
    })?;
    serve_on(state, listener).await
}

/// Serves on a bound listener (tests bind port 0 first).
pub async fn serve_on(state: Arc<ApiState>, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let tls = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(cert), Some(key)) => {
            crate::process::install_crypto_provider();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot load TLS certificate {} / key {}: {e}",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        _ => None,
    };
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(tls) => {
            axum_server::tls_rustls::from_tcp_rustls(listener, tls)?
                .serve(app)
                .await?
        }
        None => axum_server::from_tcp(listener)?.serve(app).await?,
    }
    Ok(())
}

/// Longest request target and header block the API takes. Past them the answer is 414 / 431
/// from here, audited; hyper's own limits are far above, and its refusals would bypass the
/// audit.
const MAX_TARGET_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 32 * 1024;

fn oversized(request: &Request) -> Option<(StatusCode, &'static str)> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Some((StatusCode::URI_TOO_LONG, "request target too long"));
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (headers > MAX_HEADER_BYTES).then_some((
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request headers too large",
    ))
}

/// The order a request is about, decoded by the extractors the handlers use (so
/// `order%5Fid=X` is the same `order_id` for both): a path's `{order_id}`, an order's `{id}`,
/// or the query's `order_id`.
async fn audited_order(parts: &mut axum::http::request::Parts, matched: &str) -> Option<String> {
    use axum::extract::{FromRequestParts, Query, RawPathParams};
    if let Ok(params) = RawPathParams::from_request_parts(parts, &()).await {
        let under_orders = matched.starts_with("/api/v1/orders/");
        if let Some((_, value)) = params
            .iter()
            .find(|(key, _)| *key == "order_id" || (under_orders && *key == "id"))
        {
            return Some(value.to_string());
        }
    }
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).ok()?;
    pairs
        .into_iter()
        .find_map(|(key, value)| (key == "order_id").then_some(value))
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": text }))).into_response()
}

/// Authenticates, then audits, every request; refusals are audited within a rate.
async fn guard(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let action = format!("{} {}", request.method(), path);
    let refusal = |result: StatusCode, order_id: Option<String>| AuditEntry {
        at: crate::clock::unix_now(),
        who: format!("refused@{}", peer.ip()),
        action: action.clone(),
        order_id,
        result: result.as_u16().to_string(),
    };
    if let Some((status, reason)) = oversized(&request) {
        state.audit.record_refusal(refusal(status, None)).await;
        return error(status, reason);
    }
    let (mut parts, body) = request.into_parts();
    let order_id = audited_order(&mut parts, &path).await;
    let mut request = Request::from_parts(parts, body);
    let public = path == "/metrics" && state.config.metrics_public;
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let checked = if public {
        Ok(Principal(format!("public@{}", peer.ip())))
    } else {
        state.auth.check(authorization, peer, host).await
    };
    match checked {
        Ok(principal) => {
            let who = principal.0.clone();
            request.extensions_mut().insert(principal);
            let response = next.run(request).await;
            let entry = AuditEntry {
                at: crate::clock::unix_now(),
                who,
                action,
                order_id,
                result: response.status().as_u16().to_string(),
            };
            match state.audit.record(entry).await {
                Ok(()) => response,
                // Fail closed: what cannot be audited is not answered.
                Err(_) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the audit log cannot be written; try again later",
                ),
            }
        }
        Err(err) => {
            let (code, text) = err.public();
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::UNAUTHORIZED);
            tracing::info!(peer = %peer.ip(), %action, "request refused: {err}");
            let mut response = error(status, text);
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"order-tracer\""),
                );
            }
            state.audit.record_refusal(refusal(status, order_id)).await;
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_hosts_get_plain_text_only_when_asked_for() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 4317));
        let any = SocketAddr::from(([0, 0, 0, 0], 4317));
        let plain = ApiConfig::default();
        assert_eq!(plain.check_listen(loopback, "--otlp-grpc"), Ok(()));
        let refused = plain.check_listen(any, "--otlp-grpc").unwrap_err();
        assert!(
            refused.starts_with("--otlp-grpc 0.0.0.0:4317")
                && refused.contains("[api] tls_cert and tls_key")
                && refused.contains("[api] insecure = true"),
            "{refused}"
        );
        let insecure = ApiConfig {
            insecure: true,
            ..ApiConfig::default()
        };
        assert_eq!(insecure.check_listen(any, "--otlp-grpc"), Ok(()));
        let tls = ApiConfig {
            tls_cert: Some("tls.crt".into()),
            tls_key: Some("tls.key".into()),
            ..ApiConfig::default()
        };
        assert_eq!(tls.check_listen(any, "--otlp-grpc"), Ok(()));
    }

    #[test]
    fn a_client_ca_needs_a_server_certificate() {
        let config = ApiConfig {
            otlp_client_ca: Some("ca.crt".into()),
            ..ApiConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.contains("otlp_client_ca needs tls_cert"), "{err}");
        let with_cert = ApiConfig {
            tls_cert: Some("tls.crt".into()),
            tls_key: Some("tls.key".into()),
            ..config
        };
        assert_eq!(with_cert.validate(), Ok(()));
    }
}
