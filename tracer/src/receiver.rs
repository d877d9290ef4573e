//! The central monitor's OTLP receiver: traces over gRPC (`TraceService/Export`) and over
//! HTTP (`POST /v1/traces`, protobuf). Each request is turned into [`SpanRecord`]s for the
//! lifecycle and forwarded, unchanged, to the upstream collector (Jaeger) when one is set.
//! With `[api] tls_cert`/`tls_key` both listeners speak TLS only; with `otlp_client_ca` they
//! also require a client certificate (mutual TLS: how the Collector authenticates).

use crate::spans::Attributes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prost::Message;

use crate::api::ApiConfig;
use crate::monitor::SpanSink;
use crate::otlp_out::Forwarder;
use crate::spans::{AttrValue, SpanEvent, SpanKind, SpanLink, SpanRecord, SpanStatus};

/// Largest request accepted (both transports): what a Collector's batch sends by default,
/// with room to spare.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

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

/// Where received spans go.
#[derive(Clone)]
pub struct Receiver {
    sink: SpanSink,
    forward: Option<Forwarder>,
    tls: Option<ReceiverTls>,
}

impl Receiver {
    pub fn new(sink: SpanSink, forward: Option<Forwarder>, tls: Option<ReceiverTls>) -> Self {
        Self { sink, forward, tls }
    }

    fn accept(&self, request: &ExportTraceServiceRequest, raw: Option<Bytes>) {
        if let Some(forward) = &self.forward {
            forward.send(raw.unwrap_or_else(|| Bytes::from(request.encode_to_vec())));
        }
        for span in spans_from_otlp(request) {
            self.sink.send(span);
        }
    }

    /// Serves OTLP/gRPC on a bound listener until the process ends.
    pub async fn serve_grpc(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let tls = self.tls.as_ref().map(|tls| tls.grpc.clone());
        let service = TraceServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
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
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
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

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.accept(request.get_ref(), None);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn http_export(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    match ExportTraceServiceRequest::decode(body.clone()) {
        Ok(request) => {
            receiver.accept(&request, Some(body));
            let answer = ExportTraceServiceResponse {
                partial_success: None,
            };
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                answer.encode_to_vec(),
            )
                .into_response()
        }
        Err(err) => {
            receiver.sink.count_parse_error();
            (
                StatusCode::BAD_REQUEST,
                format!("not an OTLP ExportTraceServiceRequest: {err}"),
            )
                .into_response()
        }
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

fn key_values(attributes: &Attributes) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(match value {
                    AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
                    AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
                    AttrValue::Int(i) => any_value::Value::IntValue(*i),
                    AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
                }),
            }),
            ..Default::default()
        })
        .collect()
}

/// Spans → OTLP, one resource per distinct resource (the monitor's root spans; tests).
pub fn otlp_from_spans(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut groups: Vec<(&Attributes, Vec<otlp::Span>)> = Vec::new();
    for span in spans {
        let converted = otlp::Span {
            trace_id: span.trace_id.to_vec(),
            span_id: span.span_id.to_vec(),
            parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: span.name.clone(),
            kind: match span.kind {
                SpanKind::Server => otlp::span::SpanKind::Server,
                SpanKind::Client => otlp::span::SpanKind::Client,
                SpanKind::Internal => otlp::span::SpanKind::Internal,
            } as i32,
            start_time_unix_nano: span.start_unix_nano,
            end_time_unix_nano: span.end_unix_nano,
            attributes: key_values(&span.attributes),
            events: span
                .events
                .iter()
                .map(|e| otlp::span::Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name.clone(),
                    attributes: key_values(&e.attributes),
                    dropped_attributes_count: 0,
                })
                .collect(),
            links: span
                .links
                .iter()
                .map(|l| otlp::span::Link {
                    trace_id: l.trace_id.to_vec(),
                    span_id: l.span_id.to_vec(),
                    ..Default::default()
                })
                .collect(),
            status: Some(otlp::Status {
                message: String::new(),
                code: match span.status {
                    SpanStatus::Unset => otlp::status::StatusCode::Unset,
                    SpanStatus::Ok => otlp::status::StatusCode::Ok,
                    SpanStatus::Error => otlp::status::StatusCode::Error,
                } as i32,
            }),
            ..Default::default()
        };
        match groups.iter_mut().find(|(r, _)| *r == &span.resource) {
            Some((_, list)) => list.push(converted),
            None => groups.push((&span.resource, vec![converted])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| otlp::ResourceSpans {
                resource: Some(Resource {
                    attributes: key_values(resource),
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: None,
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
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
mod tests {
    use super::*;

    fn span() -> SpanRecord {
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
