//! The central monitor's OTLP receiver: traces over gRPC (`TraceService/Export`) and over
//! HTTP (`POST /v1/traces`, protobuf). Each request is turned into [`SpanRecord`]s for the
//! lifecycle and forwarded, unchanged, to the upstream collector (Jaeger) when one is set.
//! With `[api] tls_cert`/`tls_key` both listeners speak TLS only; with `otlp_client_ca` they
//! also require a client certificate (mutual TLS: how the Collector authenticates).
//!
//! Bounded and honest: a request is refused before it is decoded when its decoded size would
//! pass [`MAX_DECODED_BYTES`] (413 / `RESOURCE_EXHAUSTED`, counted on the wire by [`budget`]);
//! at most [`MAX_CONCURRENT`] requests and [`MAX_IN_FLIGHT_BYTES`] of them (wire and decoded)
//! are handled at once, over which the answer is 503 + `Retry-After` / `UNAVAILABLE`; spans
//! the monitor could not take are named in the answer's partial success (`rejected_spans`),
//! never a silent success.

pub mod budget;
mod grpc;

use crate::spans::Attributes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiConfig;
use crate::monitor::SpanSink;
use crate::otlp_out::Forwarder;
use crate::spans::{AttrValue, SpanEvent, SpanKind, SpanLink, SpanRecord, SpanStatus};

/// Largest request accepted (both transports, after gzip): what a Collector's batch sends by
/// default, with room to spare.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest estimated decoded size of one request.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;
/// Requests handled at once, both transports together.
pub const MAX_CONCURRENT: usize = 8;
/// Bytes of all requests being handled (their wire bytes, then their decoded estimate).
pub const MAX_IN_FLIGHT_BYTES: usize = 160 * 1024 * 1024;
/// The budget counts in units of this many bytes (a semaphore's permits are u32).
const UNIT: usize = 1024;
/// What a refused client is told to wait before trying again, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// Why a request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the monitor is at its limit of requests in flight; retry in {RETRY_AFTER_SECS} s")]
    Busy,
    #[error(
        "the monitor could not store the spans (its store failed); send them again in {RETRY_AFTER_SECS} s"
    )]
    NotStored,
}

impl Refused {
    fn grpc_status(&self) -> tonic::Status {
        match self {
            Self::Invalid(m) => tonic::Status::invalid_argument(m.clone()),
            Self::TooLarge(m) => tonic::Status::resource_exhausted(m.clone()),
            // UNAVAILABLE is what OTLP clients retry with backoff.
            Self::Busy | Self::NotStored => tonic::Status::unavailable(self.to_string()),
        }
    }

    fn http_response(&self) -> Response {
        let (status, retry) = match self {
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, false),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, false),
            Self::Busy | Self::NotStored => (StatusCode::SERVICE_UNAVAILABLE, true),
        };
        let mut response = (status, self.to_string()).into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        response
    }
}

/// What both receivers share: how many requests, and how many bytes, are in flight.
#[derive(Clone)]
struct Limits {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Limits {
    fn new() -> Self {
        Self {
            requests: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            bytes: Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES / UNIT)),
        }
    }

    fn request(&self) -> Result<OwnedSemaphorePermit, Refused> {
        self.requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Busy)
    }

    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Refused> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).map_err(|_| Refused::Busy)?;
        self.bytes
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| Refused::Busy)
    }
}

/// The listeners' TLS: the identity of `[api] tls_cert`/`tls_key` and, for mutual TLS, the
/// CA of `otlp_client_ca`. Built at start, so bad files stop the monitor, not a client.
#[derive(Clone)]
pub struct ReceiverTls {
    grpc: tonic::transport::ServerTlsConfig,
    http: Arc<rustls::ServerConfig>,
}

fn read_pem(path: &Path, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read [api] {key} {}: {e}", path.display()))
}

impl ReceiverTls {
    /// From `[api]`: `None` without `tls_cert`/`tls_key` (plain text).
    pub fn load(config: &ApiConfig) -> anyhow::Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            return Ok(None);
        };
        let cert = read_pem(cert, "tls_cert")?;
        let key = read_pem(key, "tls_key")?;
        let client_ca = config
            .otlp_client_ca
            .as_deref()
            .map(|ca| read_pem(ca, "otlp_client_ca"))
            .transpose()?;
        let http = Arc::new(http_tls(&cert, &key, client_ca.as_deref())?);
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut grpc = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            grpc = grpc.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(Some(Self { grpc, http }))
    }
}

fn http_tls(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("[api] tls_cert is not a PEM certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| anyhow::anyhow!("[api] tls_key is not a PEM private key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| {
                    anyhow::anyhow!("[api] otlp_client_ca is not a PEM certificate: {e}")
                })?;
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!("[api] otlp_client_ca holds an unusable CA: {e}")
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| anyhow::anyhow!("[api] otlp_client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("[api] tls_cert and tls_key do not make a pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A request taken: its answer, given once the spans it handed on are durable.
struct Accepted {
    response: ExportTraceServiceResponse,
    stored: Option<tokio::sync::oneshot::Receiver<bool>>,
}

impl Accepted {
    async fn durable(self) -> Result<ExportTraceServiceResponse, Refused> {
        match self.stored {
            None => Ok(self.response),
            Some(stored) => match stored.await {
                Ok(true) => Ok(self.response),
                // The store failed, or the monitor stopped before saving.
                _ => Err(Refused::NotStored),
            },
        }
    }
}

/// Where received spans go.
#[derive(Clone)]
pub struct Receiver {
    sink: SpanSink,
    forward: Option<Forwarder>,
    tls: Option<ReceiverTls>,
    limits: Limits,
}

impl Receiver {
    pub fn new(sink: SpanSink, forward: Option<Forwarder>, tls: Option<ReceiverTls>) -> Self {
        Self {
            sink,
            forward,
            tls,
            limits: Limits::new(),
        }
    }

    /// One request's bytes, as received: counted, decoded within the budget, handed on.
    /// `_wire` is the reservation of the bytes themselves, held until they are decoded.
    async fn export_raw(&self, raw: Bytes) -> Result<ExportTraceServiceResponse, Refused> {
        let _request = self.limits.request()?;
        let _wire = self.limits.reserve(raw.len())?;
        self.decode_and_accept(raw)?.durable().await
    }

    fn decode_and_accept(&self, raw: Bytes) -> Result<Accepted, Refused> {
        let cost = budget::cost(&raw, MAX_DECODED_BYTES).map_err(|refusal| {
            self.sink.count_parse_error();
            match refusal {
                budget::Refusal::OverBudget { .. } => Refused::TooLarge(refusal.to_string()),
                budget::Refusal::Malformed(_) => Refused::Invalid(refusal.to_string()),
            }
        })?;
        let _decoded = self.limits.reserve(cost.bytes)?;
        let request = ExportTraceServiceRequest::decode(raw.clone()).map_err(|e| {
            self.sink.count_parse_error();
            Refused::Invalid(format!("not an OTLP ExportTraceServiceRequest: {e}"))
        })?;
        Ok(self.accept(&request, raw, cost.spans))
    }

    /// Forwards the request and hands its spans to the monitor; the answer says what was not
    /// taken, and comes once what was taken is durable.
    fn accept(&self, request: &ExportTraceServiceRequest, raw: Bytes, spans: usize) -> Accepted {
        let mut warnings = Vec::new();
        if let Some(forward) = &self.forward
            && !forward.send(raw)
        {
            warnings.push("not forwarded upstream: the forward queue is full");
        }
        let decoded = spans_from_otlp(request);
        let mut rejected = spans - decoded.len();
        if rejected > 0 {
            warnings.push("spans without a valid trace id and span id were rejected");
        }
        let stored = if decoded.is_empty() {
            None
        } else {
            match self.sink.send_durable(decoded) {
                Ok(stored) => Some(stored),
                Err(n) => {
                    rejected += n;
                    warnings
                        .push("the monitor's queue is full: spans rejected, send them again later");
                    None
                }
            }
        };
        Accepted {
            response: ExportTraceServiceResponse {
                partial_success: (!warnings.is_empty()).then(|| ExportTracePartialSuccess {
                    rejected_spans: rejected as i64,
                    error_message: warnings.join("; "),
                }),
            },
            stored,
        }
    }

    /// Serves OTLP/gRPC on a bound listener until the process ends.
    pub async fn serve_grpc(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let tls = self.tls.as_ref().map(|tls| tls.grpc.clone());
        let service = grpc::TraceServer(self);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("OTLP/gRPC TLS from [api] tls_cert / tls_key: {e}"))?;
        }
        server
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await?;
        Ok(())
    }

    /// The OTLP/HTTP routes.
    pub fn http_router(self) -> Router {
        Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(self)
    }

    /// Serves OTLP/HTTP on a bound listener until the process ends.
    pub async fn serve_http(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let tls = self.tls.as_ref().map(|tls| tls.http.clone());
        let app = self.http_router().into_make_service();
        let listener = listener.into_std()?;
        match tls {
            Some(tls) => {
                let tls = axum_server::tls_rustls::RustlsConfig::from_config(tls);
                axum_server::tls_rustls::from_tcp_rustls(listener, tls)?
                    .serve(app)
                    .await?
            }
            None => axum_server::from_tcp(listener)?.serve(app).await?,
        }
        Ok(())
    }
}

/// `POST /v1/traces`: the request slot and the body's bytes are reserved before the body is
/// read, so concurrent large bodies cannot pile up in memory.
async fn http_export(State(receiver): State<Receiver>, request: Request) -> Response {
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send OTLP/HTTP as application/x-protobuf",
        )
            .into_response();
    }
    if headers.contains_key(header::CONTENT_ENCODING) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send OTLP/HTTP uncompressed (or use OTLP/gRPC, which takes gzip)",
        )
            .into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES) {
        return Refused::TooLarge(format!("the body is over {MAX_REQUEST_BYTES} bytes"))
            .http_response();
    }
    let answered = async {
        let _slot = receiver.limits.request()?;
        let _wire = receiver
            .limits
            .reserve(declared.unwrap_or(MAX_REQUEST_BYTES))?;
        let body = axum::body::to_bytes(request.into_body(), MAX_REQUEST_BYTES)
            .await
            .map_err(|e| Refused::TooLarge(format!("reading the body: {e}")))?;
        receiver.decode_and_accept(body)?.durable().await
    };
    match answered.await {
        Ok(answer) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            answer.encode_to_vec(),
        )
            .into_response(),
        Err(refused) => refused.http_response(),
    }
}

fn attr_value(value: &AnyValue) -> Option<AttrValue> {
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => AttrValue::Str(s.clone()),
        any_value::Value::BoolValue(b) => AttrValue::Bool(*b),
        any_value::Value::IntValue(i) => AttrValue::Int(*i),
        any_value::Value::DoubleValue(d) => AttrValue::Double(*d),
        // Arrays, maps and bytes carry nothing the lifecycle reads.
        _ => return None,
    })
}

fn attributes(list: &[KeyValue]) -> Attributes {
    list.iter()
        .filter_map(|kv| Some((kv.key.clone(), attr_value(kv.value.as_ref()?)?)))
        .collect()
}

fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// OTLP → spans; spans with malformed ids are skipped.
pub fn spans_from_otlp(request: &ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                let (Some(trace_id), Some(span_id)) = (fixed(&span.trace_id), fixed(&span.span_id))
                else {
                    continue;
                };
                out.push(SpanRecord {
                    trace_id,
                    span_id,
                    parent_span_id: fixed(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .filter_map(|l| {
                            Some(SpanLink {
                                trace_id: fixed(&l.trace_id)?,
                                span_id: fixed(&l.span_id)?,
                            })
                        })
                        .collect(),
                    name: span.name.clone(),
                    kind: match otlp::span::SpanKind::try_from(span.kind) {
                        Ok(otlp::span::SpanKind::Server) => SpanKind::Server,
                        Ok(otlp::span::SpanKind::Client) => SpanKind::Client,
                        Ok(otlp::span::SpanKind::Producer) => SpanKind::Producer,
                        Ok(otlp::span::SpanKind::Consumer) => SpanKind::Consumer,
                        _ => SpanKind::Internal,
                    },
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    status: match span
                        .status
                        .as_ref()
                        .and_then(|s| otlp::status::StatusCode::try_from(s.code).ok())
                    {
                        Some(otlp::status::StatusCode::Error) => SpanStatus::Error,
                        Some(otlp::status::StatusCode::Ok) => SpanStatus::Ok,
                        _ => SpanStatus::Unset,
                    },
                    resource: resource.clone(),
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|e| SpanEvent {
                            name: e.name.clone(),
                            time_unix_nano: e.time_unix_nano,
                            attributes: attributes(&e.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// Spans → OTLP as the exporter builds them, one resource per distinct resource (the
/// monitor's root spans; tests), without the exporter's instrumentation scope: the monitor
/// forwards its root spans upstream scope-less, as it always has.
pub fn otlp_from_spans(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut request = crate::export::to_request(spans);
    for scope_spans in request
        .resource_spans
        .iter_mut()
        .flat_map(|resource_spans| &mut resource_spans.scope_spans)
    {
        scope_spans.scope = None;
    }
    request
}

/// Binds a listener with an error that names the flag to change.
pub async fn bind(
    addr: SocketAddr,
    what: &str,
    flag: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for {what}: {e} (pick a free address with {flag})")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn span() -> SpanRecord {
        SpanRecord {
            trace_id: crate::spans::order_trace_id("SO-1"),
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some(crate::spans::order_root_span_id("SO-1")),
            links: vec![SpanLink {
                trace_id: [9; 16],
                span_id: [8; 8],
            }],
            name: "POST /api/v1/orders".into(),
            kind: SpanKind::Server,
            start_unix_nano: 10,
            end_unix_nano: 20,
            status: SpanStatus::Error,
            resource: Attributes::from([(
                "service.name".into(),
                AttrValue::Str("shop-api".into()),
            )]),
            attributes: Attributes::from([
                ("order.id".into(), AttrValue::Str("SO-1".into())),
                ("http.response.status_code".into(), AttrValue::Int(500)),
                ("x.ok".into(), AttrValue::Bool(true)),
                ("x.ratio".into(), AttrValue::Double(0.5)),
            ]),
            events: vec![SpanEvent {
                name: "e".into(),
                time_unix_nano: 15,
                attributes: Attributes::new(),
            }],
        }
    }

    #[test]
    fn spans_survive_the_round_trip_through_otlp_bytes() {
        let request = otlp_from_spans(&[span(), span()]);
        assert_eq!(request.resource_spans.len(), 1);
        let bytes = request.encode_to_vec();
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(spans_from_otlp(&decoded), vec![span(), span()]);
    }

    #[test]
    fn malformed_ids_are_skipped_not_fatal() {
        let mut request = otlp_from_spans(&[span()]);
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1, 2, 3];
        assert!(spans_from_otlp(&request).is_empty());
    }
}
