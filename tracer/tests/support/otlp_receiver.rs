//! An OTLP trace receiver for tests, built from the official protobuf definitions
//! (`opentelemetry-proto`): gRPC (`TraceService/Export`) and HTTP/protobuf
//! (`POST /v1/traces`) on loopback, keeping every span it gets in memory.
//!
//! Use: `let rx = OtlpReceiver::start().await;` then point an exporter at
//! `rx.grpc_endpoint()` or `rx.http_endpoint()`, and `rx.wait_for_spans(n, timeout)`.
//! `OtlpReceiver::start_tls(&TestPki::generate())` serves both over TLS and requires a client
//! certificate signed by the same test CA.

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One span as received, with the resource it came under.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub resource: Vec<KeyValue>,
    pub span: Span,
    /// `grpc` or `http`.
    pub transport: &'static str,
}

impl ReceivedSpan {
    /// A resource attribute as text (strings as they are, integers in decimal).
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attr_text(&self.resource, key)
    }

    pub fn attr(&self, key: &str) -> Option<String> {
        attr_text(&self.span.attributes, key)
    }
}

pub fn attr_text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    /// The value of the `authorization` header (or metadata) of each request.
    authorizations: Vec<Option<String>>,
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Received>>);

impl Store {
    fn record(
        &self,
        request: ExportTraceServiceRequest,
        authorization: Option<String>,
        transport: &'static str,
    ) {
        let mut received = self.0.lock().unwrap();
        received.authorizations.push(authorization);
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.spans.push(ReceivedSpan {
                        resource: resource.clone(),
                        span,
                        transport,
                    });
                }
            }
        }
    }
}

/// A throw-away CA, a server certificate for `localhost`/`127.0.0.1`, and a client
/// certificate, all PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl TestPki {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "order-tracer test CA");
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert_pem, server_key_pem) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert_pem, client_key_pem) = leaf(vec!["agent.test".into()]);
        Self {
            ca_pem,
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        }
    }
}

fn server_tls(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

pub struct OtlpReceiver {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Whether both listeners speak TLS.
    pub tls: bool,
    store: Store,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.record(request.into_inner(), authorization, "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(
    axum::extract::State(store): axum::extract::State<Store>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Vec<u8>) {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
        return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
    };
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    store.record(request, authorization, "http");
    (
        axum::http::StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

impl OtlpReceiver {
    /// Starts both listeners on free loopback ports.
    pub async fn start() -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
    }

    /// Starts on given addresses (e.g. where an exporter already points, to bring a dead
    /// endpoint back).
    pub async fn start_on(grpc_addr: SocketAddr, http_addr: SocketAddr) -> Self {
        Self::serve(grpc_addr, http_addr, None).await
    }

    /// Both listeners over TLS with the test PKI's server certificate; clients must present a
    /// certificate signed by its CA.
    pub async fn start_tls(pki: &TestPki) -> Self {
        let any = "127.0.0.1:0".parse().unwrap();
        Self::serve(any, any, Some(pki)).await
    }

    async fn serve(grpc_addr: SocketAddr, http_addr: SocketAddr, pki: Option<&TestPki>) -> Self {
        let store = Store::default();
        let grpc = tokio::net::TcpListener::bind(grpc_addr).await.unwrap();
        let http = std::net::TcpListener::bind(http_addr).unwrap();
        http.set_nonblocking(true).unwrap();
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let mut grpc_server = tonic::transport::Server::builder();
        if let Some(pki) = pki {
            use tonic::transport::{Certificate, Identity, ServerTlsConfig};
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(
                    &pki.server_cert_pem,
                    &pki.server_key_pem,
                ))
                .client_ca_root(Certificate::from_pem(&pki.ca_pem));
            grpc_server = grpc_server.tls_config(tls).unwrap();
        }
        let grpc_service = TraceServiceServer::new(store.clone());
        let grpc_task = tokio::spawn(async move {
            grpc_server
                .add_service(grpc_service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
                .await
                .unwrap();
        });
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(store.clone());
        let http_task = match pki {
            Some(pki) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_config(server_tls(pki));
                let server = axum_server::from_tcp_rustls(http, config).unwrap();
                tokio::spawn(async move { server.serve(app.into_make_service()).await.unwrap() })
            }
            None => {
                let http = tokio::net::TcpListener::from_std(http).unwrap();
                tokio::spawn(async move { axum::serve(http, app).await.unwrap() })
            }
        };
        Self {
            grpc_addr,
            http_addr,
            tls: pki.is_some(),
            store,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// With TLS, the host is `localhost`, the name the test certificate carries.
    fn base(&self, addr: SocketAddr) -> String {
        match self.tls {
            true => format!("https://localhost:{}", addr.port()),
            false => format!("http://{addr}"),
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        self.base(self.grpc_addr)
    }

    /// The full URL, `/v1/traces` included.
    pub fn http_endpoint(&self) -> String {
        format!("{}/v1/traces", self.base(self.http_addr))
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.0.lock().unwrap().spans.clone()
    }

    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.store.0.lock().unwrap().authorizations.clone()
    }

    /// Waits until at least `n` spans arrived (or `limit` passed); returns what arrived.
    pub async fn wait_for_spans(&self, n: usize, limit: Duration) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if spans.len() >= n || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops listening; later exports to it fail (connection refused).
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}
