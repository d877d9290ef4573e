//! The central monitor's OTLP receiver: traces over gRPC (`TraceService/Export`) and over
//! HTTP (`POST /v1/traces`, protobuf). Each request is turned into [`SpanRecord`]s for the
//! lifecycle and forwarded, unchanged, to the upstream collector (Jaeger) when one is set.

use std::collections::BTreeMap;
use std::net::SocketAddr;

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

use crate::monitor::SpanSink;
use crate::monitor::otlp_out::Forwarder;
use crate::spans::{AttrValue, SpanEvent, SpanKind, SpanLink, SpanRecord, SpanStatus};

/// Largest request accepted (both transports): what a Collector's batch sends by default,
/// with room to spare.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Where received spans go.
#[derive(Clone)]
pub struct Receiver {
    sink: SpanSink,
    forward: Option<Forwarder>,
}

impl Receiver {
    pub fn new(sink: SpanSink, forward: Option<Forwarder>) -> Self {
        Self { sink, forward }
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
        let service = TraceServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tonic::transport::Server::builder()
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
        axum::serve(listener, self.http_router()).await?;
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

fn attributes(list: &[KeyValue]) -> BTreeMap<String, AttrValue> {
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

fn key_values(attributes: &BTreeMap<String, AttrValue>) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.clone(),
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
    let mut groups: Vec<(&BTreeMap<String, AttrValue>, Vec<otlp::Span>)> = Vec::new();
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
            resource: BTreeMap::from([("service.name".into(), AttrValue::Str("shop-api".into()))]),
            attributes: BTreeMap::from([
                ("order.id".into(), AttrValue::Str("SO-1".into())),
                ("http.response.status_code".into(), AttrValue::Int(500)),
                ("x.ok".into(), AttrValue::Bool(true)),
                ("x.ratio".into(), AttrValue::Double(0.5)),
            ]),
            events: vec![SpanEvent {
                name: "e".into(),
                time_unix_nano: 15,
                attributes: BTreeMap::new(),
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
