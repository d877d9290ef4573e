//! The operator API (JSON, `/api/v1`), the built-in page over it, and `/metrics`; every
//! request authenticated and audited.
//!
//! - `GET /api/v1/orders/{id}`: the order with its timeline and detections;
//! - `GET /api/v1/orders?status=&limit=&offset=`: orders, most recently active first;
//! - `GET /api/v1/detections?open=&kind=&service=&order_id=&limit=&offset=`: newest first;
//! - `GET /api/v1/stuck`, `GET /api/v1/lost`: the open `stuck` / `lost_in_transit` ones;
//! - `GET /api/v1/audit?limit=&offset=`: the audit log, newest first;
//! - `GET /` (page), `GET /metrics` (Prometheus), `GET /healthz` (liveness, no data).

mod audit;
mod auth;
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
    /// resolved.
    pub alert_webhook: Option<String>,
    /// OTLP/HTTP logs endpoint (`…/v1/logs`) the audit log is copied to.
    pub audit_otlp_logs: Option<String>,
    /// Serve `/metrics` without a token (metrics carry no order ids).
    pub metrics_public: bool,
    /// Largest page a list request may ask for.
    pub max_page: u32,
    /// Serve plain HTTP on an address other than loopback, bearer tokens and order data in
    /// clear. Off: such an address needs `tls_cert` and `tls_key`.
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
            audit_otlp_logs: None,
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
        for (field, url) in [
            ("alert_webhook", &self.alert_webhook),
            ("audit_otlp_logs", &self.audit_otlp_logs),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!("[api] {field}: give an http:// or https:// URL"));
            }
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

/// Authenticates, then audits, every request.
async fn guard(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let action = format!("{} {}", request.method(), path);
    let order_id = routes::order_of(&path, request.uri());
    let public = path == "/metrics" && state.config.metrics_public;
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let checked = if public {
        Ok(Principal(format!("public@{}", peer.ip())))
    } else {
        state.auth.check(authorization, peer).await
    };
    let (who, response) = match checked {
        Ok(principal) => {
            let who = principal.0.clone();
            request.extensions_mut().insert(principal);
            (who, next.run(request).await)
        }
        Err(err) => {
            let status = match err {
                AuthError::Forbidden => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            let mut response = (
                status,
                axum::Json(serde_json::json!({"error": err.to_string()})),
            )
                .into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"order-tracer\""),
                );
            }
            (format!("refused@{}", peer.ip()), response)
        }
    };
    state
        .audit
        .record(AuditEntry {
            at: crate::clock::unix_now(),
            who,
            action,
            order_id,
            result: response.status().as_u16().to_string(),
        })
        .await;
    response
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
