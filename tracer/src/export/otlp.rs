//! OTLP on the wire: [`SpanRecord`]s as `opentelemetry-proto` messages, sent over gRPC
//! (tonic) or HTTP/protobuf (reqwest), with TLS from the system roots or a CA file.
//!
//! The spans are sent as built here rather than through the SDK's exporter because one agent
//! exports for several services: each span carries its own resource, which the SDK's
//! one-resource-per-exporter model cannot express.

use crate::spans::Attributes;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;

use super::{ExportConfig, ExportError, ExportKind};
use crate::spans::{AttrValue, SpanKind, SpanRecord, SpanStatus};

/// Why a batch did not go through, and whether trying again may help.
#[derive(Debug)]
pub(super) struct SendFailure {
    pub message: String,
    pub retryable: bool,
}

/// Spans the receiver accepted and rejected.
pub(super) struct Sent {
    pub rejected: u64,
}

pub(super) enum OtlpClient {
    Grpc {
        client: TraceServiceClient<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
    },
}

impl OtlpClient {
    /// Builds the client; connects lazily, so a dead endpoint fails sends, not start-up.
    pub fn new(config: &ExportConfig) -> Result<Self, ExportError> {
        crate::process::install_crypto_provider();
        let url = config.endpoint_url().map_err(ExportError::Config)?;
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| ExportError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        let ca = config.ca_file.as_deref().map(read).transpose()?;
        let identity = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        match config.kind {
            ExportKind::OtlpGrpc => {
                use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
                let mut endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| ExportError::Config(format!("export: endpoint {url:?}: {e}")))?
                    .timeout(config.timeout())
                    .connect_timeout(config.timeout());
                if url.starts_with("https://") {
                    let mut tls = ClientTlsConfig::new();
                    tls = match ca {
                        Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                        None => tls.with_native_roots(),
                    };
                    if let Some((cert, key)) = identity {
                        tls = tls.identity(Identity::from_pem(cert, key));
                    }
                    endpoint = endpoint
                        .tls_config(tls)
                        .map_err(|e| ExportError::Tls(e.to_string()))?;
                }
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &config.headers {
                    let key = tonic::metadata::AsciiMetadataKey::from_bytes(
                        name.to_ascii_lowercase().as_bytes(),
                    )
                    .map_err(|_| {
                        ExportError::Config(format!(
                            "export: header name {name:?} is not valid gRPC metadata"
                        ))
                    })?;
                    let value = value.parse().map_err(|_| {
                        ExportError::Config(format!(
                            "export: the value of header {name:?} is not printable ASCII"
                        ))
                    })?;
                    metadata.insert(key, value);
                }
                Ok(OtlpClient::Grpc {
                    client: TraceServiceClient::new(endpoint.connect_lazy()),
                    metadata,
                })
            }
            ExportKind::OtlpHttp => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &config.headers {
                    let name =
                        reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            ExportError::Config(format!(
                                "export: header name {name:?} is not valid"
                            ))
                        })?;
                    let mut value =
                        reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                            ExportError::Config(format!(
                                "export: the value of header {name:?} is not valid"
                            ))
                        })?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                let tls = rustls_config(ca.as_deref(), identity)?;
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(config.timeout())
                    .connect_timeout(config.timeout())
                    .build()
                    .map_err(|e| ExportError::Tls(e.to_string()))?;
                Ok(OtlpClient::Http {
                    client,
                    url,
                    headers,
                })
            }
            ExportKind::Stdout | ExportKind::None => {
                Err(ExportError::Config("export: not an OTLP kind".into()))
            }
        }
    }

    pub async fn send(&mut self, spans: &[SpanRecord]) -> Result<Sent, SendFailure> {
        let request = to_request(spans);
        let response = match self {
            OtlpClient::Grpc { client, metadata } => {
                let mut grpc_request = tonic::Request::new(request);
                *grpc_request.metadata_mut() = metadata.clone();
                client
                    .export(grpc_request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| {
                        use tonic::Code;
                        let retryable = matches!(
                            status.code(),
                            Code::Unavailable
                                | Code::ResourceExhausted
                                | Code::DeadlineExceeded
                                | Code::Aborted
                                | Code::Cancelled
                                | Code::OutOfRange
                                | Code::DataLoss
                                | Code::Unknown
                        );
                        SendFailure {
                            message: format!("gRPC {:?}: {}", status.code(), status.message()),
                            retryable,
                        }
                    })?
            }
            OtlpClient::Http {
                client,
                url,
                headers,
            } => {
                let reply = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| SendFailure {
                        message: describe(&e),
                        retryable: true,
                    })?;
                let status = reply.status();
                if !status.is_success() {
                    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                    return Err(SendFailure {
                        message: format!("HTTP {status}"),
                        retryable,
                    });
                }
                let body = reply.bytes().await.map_err(|e| SendFailure {
                    message: describe(&e),
                    retryable: true,
                })?;
                ExportTraceServiceResponse::decode(body).unwrap_or_default()
            }
        };
        let rejected = response
            .partial_success
            .map_or(0, |p| p.rejected_spans.max(0) as u64);
        Ok(Sent { rejected })
    }
}

/// A reqwest error with its causes (the top level alone says only "error sending request").
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn rustls_config(
    ca: Option<&[u8]>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, ExportError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_error =
        |what: &str, e: &dyn std::fmt::Display| ExportError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| tls_error("ca_file is not PEM certificates", &e))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_error("ca_file holds a bad certificate", &e))?;
            }
            if roots.is_empty() {
                return Err(ExportError::Tls("ca_file holds no certificate".into()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS setup", &e))?
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_error("client_cert is not PEM", &e))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| tls_error("client_key is not a PEM private key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error("client certificate", &e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// One request: spans grouped by resource (one agent exports for several services).
pub fn to_request(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut groups: Vec<(&Attributes, Vec<Span>)> = Vec::new();
    for record in spans {
        let span = to_span(record);
        match groups
            .iter_mut()
            .find(|(resource, _)| **resource == record.resource)
        {
            Some((_, group)) => group.push(span),
            None => groups.push((&record.resource, vec![span])),
        }
    }
    let scope = InstrumentationScope {
        name: "order-tracer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: key_values(resource),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

fn to_span(record: &SpanRecord) -> Span {
    Span {
        trace_id: record.trace_id.to_vec(),
        span_id: record.span_id.to_vec(),
        parent_span_id: record
            .parent_span_id
            .map(|p| p.to_vec())
            .unwrap_or_default(),
        name: record.name.clone(),
        kind: match record.kind {
            SpanKind::Internal => span::SpanKind::Internal,
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Producer => span::SpanKind::Producer,
            SpanKind::Consumer => span::SpanKind::Consumer,
        } as i32,
        start_time_unix_nano: record.start_unix_nano,
        end_time_unix_nano: record.end_unix_nano,
        attributes: key_values(&record.attributes),
        events: record
            .events
            .iter()
            .map(|e| span::Event {
                time_unix_nano: e.time_unix_nano,
                name: e.name.clone(),
                attributes: key_values(&e.attributes),
                ..Default::default()
            })
            .collect(),
        links: record
            .links
            .iter()
            .map(|l| span::Link {
                trace_id: l.trace_id.to_vec(),
                span_id: l.span_id.to_vec(),
                ..Default::default()
            })
            .collect(),
        status: Some(Status {
            message: String::new(),
            code: match record.status {
                SpanStatus::Unset => 0,
                SpanStatus::Ok => 1,
                SpanStatus::Error => 2,
            },
        }),
        ..Default::default()
    }
}

fn key_values(map: &Attributes) -> Vec<KeyValue> {
    map.iter()
        .map(|(key, value)| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(match value {
                    AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
                    AttrValue::Int(i) => any_value::Value::IntValue(*i),
                    AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
                    AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
                }),
            }),
            ..Default::default()
        })
        .collect()
}
