//! Export to a real OTLP receiver (built from opentelemetry-proto), over gRPC and HTTP, and
//! what happens when the endpoint is down.

#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otlp_receiver::{OtlpReceiver, ReceivedSpan, TestPki};
use tracer::capture::Role;
use tracer::export::{ExportConfig, ExportKind, Exporter};
use tracer::orders::RuleSet;
use tracer::spans::fixtures::{ExchangeFixture, exchange};
use tracer::spans::{Redactor, SpanBuilder, SpanRecord, order_root_span_id, order_trace_id};

const WAIT: Duration = Duration::from_secs(10);

/// Spans of one order as the testbed's services would produce them: shop server, shop's call
/// to the MES (failed), MES server.
fn order_spans(order: &str) -> Vec<SpanRecord> {
    let rules = RuleSet::compile(&tracer::config::Config::embedded_default().services).unwrap();
    let mut builder = SpanBuilder::new(rules, Redactor::default(), "test-host".into(), 0);
    let exchanges = [
        exchange(
            "shop-api",
            Role::Server,
            "POST",
            &format!("/api/v1/orders/{order}/submit"),
        )
        .respond(200, "{}"),
        exchange(
            "shop-api",
            Role::Client,
            "POST",
            "/mes/api/pricing-requests",
        )
        .request_body(&format!(r#"{{"orderRef":"{order}"}}"#))
        .respond(409, "{}"),
        exchange("mes-api", Role::Server, "POST", "/mes/api/pricing-requests")
            .request_body(&format!(r#"{{"orderRef":"{order}"}}"#))
            .respond(409, "{}"),
    ];
    exchanges
        .iter()
        .map(|ex| builder.build(ex).1.expect("testbed rules match"))
        .collect()
}

fn otlp_config(kind: ExportKind, endpoint: String) -> ExportConfig {
    let mut config = ExportConfig {
        kind,
        endpoint: Some(endpoint),
        flush_interval_ms: 50,
        ..ExportConfig::default()
    };
    config
        .headers
        .insert("authorization".into(), "Bearer test-token".into());
    config.validate().unwrap();
    config
}

fn check_received(received: &[ReceivedSpan], sent: &[SpanRecord], transport: &str) {
    assert_eq!(received.len(), sent.len());
    for (got, want) in received.iter().zip(sent) {
        assert_eq!(got.transport, transport);
        assert_eq!(got.span.trace_id, want.trace_id.to_vec());
        assert_eq!(got.span.span_id, want.span_id.to_vec());
        assert_eq!(
            got.span.parent_span_id,
            want.parent_span_id.unwrap().to_vec()
        );
        assert_eq!(got.span.name, want.name);
        assert_eq!(got.span.start_time_unix_nano, want.start_unix_nano);
        assert_eq!(got.span.attributes.len(), want.attributes.len());
        assert_eq!(got.resource_attr("host.name").as_deref(), Some("test-host"));
        assert_eq!(got.resource_attr("process.pid").as_deref(), Some("4242"));
    }
    let by_rule = |rule: &str, service: &str| {
        received
            .iter()
            .find(|s| {
                s.attr("order.rule").as_deref() == Some(rule)
                    && s.resource_attr("service.name").as_deref() == Some(service)
            })
            .unwrap_or_else(|| panic!("no {rule} span of {service}"))
    };
    let submit = by_rule("shop.submit", "shop-api");
    assert_eq!(submit.span.trace_id, order_trace_id("SO-42").to_vec());
    assert_eq!(
        submit.span.parent_span_id,
        order_root_span_id("SO-42").to_vec()
    );
    assert_eq!(submit.attr("order.status").as_deref(), Some("SUBMITTED"));
    assert_eq!(
        submit.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(submit.span.kind, 2, "server");
    let call = by_rule("mes.pricing", "shop-api");
    assert_eq!(
        (call.span.kind, call.span.status.as_ref().unwrap().code),
        (3, 2),
        "client, error"
    );
    assert_eq!(call.attr("peer.service").as_deref(), Some("mes-api"));
    let answer = by_rule("mes.pricing", "mes-api");
    assert_eq!(
        answer.span.status.as_ref().unwrap().code,
        0,
        "a 409 answered is no server error"
    );
}

async fn round_trip(kind: ExportKind) {
    let receiver = OtlpReceiver::start().await;
    let (endpoint, transport) = match kind {
        ExportKind::OtlpGrpc => (receiver.grpc_endpoint(), "grpc"),
        _ => (receiver.http_endpoint(), "http"),
    };
    let exporter = Exporter::start(&otlp_config(kind, endpoint)).unwrap();
    let spans = order_spans("SO-42");
    for span in &spans {
        exporter.handle().submit(span.clone());
    }
    assert!(exporter.flush(WAIT).await);
    let received = receiver.wait_for_spans(spans.len(), WAIT).await;
    check_received(&received, &spans, transport);
    assert!(
        receiver
            .authorizations()
            .iter()
            .all(|a| a.as_deref() == Some("Bearer test-token"))
    );
    let counters = exporter.shutdown(WAIT).await;
    assert_eq!(
        (
            counters.exported,
            counters.failed_batches,
            counters.dropped_queue_full
        ),
        (3, 0, 0)
    );
}

#[tokio::test]
async fn exports_over_grpc() {
    round_trip(ExportKind::OtlpGrpc).await;
}

#[tokio::test]
async fn exports_over_http_protobuf() {
    round_trip(ExportKind::OtlpHttp).await;
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn dead_endpoint_then_recovery(kind: ExportKind) {
    let (grpc_addr, http_addr) = (free_port(), free_port());
    let endpoint = match kind {
        ExportKind::OtlpGrpc => format!("http://{grpc_addr}"),
        _ => format!("http://{http_addr}/v1/traces"),
    };
    let config = ExportConfig {
        queue_size: 16,
        batch_size: 4,
        max_retries: 2,
        retry_backoff_ms: 10,
        timeout_ms: 2_000,
        ..otlp_config(kind, endpoint)
    };
    let exporter = Exporter::start(&config).unwrap();
    let handle = exporter.handle();
    let spans = order_spans("SO-7");
    // The caller is never held up: 300 submits against a dead endpoint return at once.
    for i in 0..300 {
        handle.submit(spans[i % spans.len()].clone());
    }
    assert!(exporter.flush(WAIT).await);
    let down = handle.counters();
    assert_eq!(down.exported, 0);
    assert!(down.dropped_queue_full > 0, "{down:?}");
    assert!(
        down.failed_batches > 0 && down.retries >= 2 * down.failed_batches,
        "{down:?}"
    );
    assert_eq!(
        down.dropped_queue_full + down.dropped_failed,
        300,
        "every span accounted for: {down:?}"
    );

    let receiver = OtlpReceiver::start_on(grpc_addr, http_addr).await;
    for span in &spans {
        handle.submit(span.clone());
    }
    assert!(exporter.flush(WAIT).await);
    assert_eq!(receiver.wait_for_spans(3, WAIT).await.len(), 3);
    assert_eq!(exporter.shutdown(WAIT).await.exported, 3);
}

/// Spans with large attributes against a dead endpoint: what the exporter holds (queued and
/// being retried) stays within `max_queue_bytes` at every moment, and every span beyond it
/// is dropped and counted.
async fn large_spans_stay_within_the_byte_bound(kind: ExportKind) {
    let (grpc_addr, http_addr) = (free_port(), free_port());
    let endpoint = match kind {
        ExportKind::OtlpGrpc => format!("http://{grpc_addr}"),
        _ => format!("http://{http_addr}/v1/traces"),
    };
    let max = 256 * 1024;
    let config = ExportConfig {
        queue_size: 4096,
        max_queue_bytes: max,
        batch_size: 4,
        max_retries: 2,
        retry_backoff_ms: 10,
        timeout_ms: 2_000,
        ..otlp_config(kind, endpoint)
    };
    config.validate().unwrap();
    let exporter = Exporter::start(&config).unwrap();
    let handle = exporter.handle();
    let mut spans = order_spans("SO-8");
    for span in &mut spans {
        let big = tracer::spans::AttrValue::Str("u".repeat(20 * 1024));
        span.attributes.insert("url.full".into(), big);
    }
    let total = 600;
    for i in 0..total {
        handle.submit(spans[i % spans.len()].clone());
        let held = handle.queued_bytes();
        assert!(held <= max, "{held} bytes held after span {i}");
        if i % 16 == 0 {
            // Let the export task take batches and fail them meanwhile.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(exporter.flush(WAIT).await);
    let down = handle.counters();
    assert_eq!(down.exported, 0);
    assert!(down.dropped_queue_bytes > 0, "{down:?}");
    assert_eq!(
        down.dropped_queue_full, 0,
        "the span count never bound: {down:?}"
    );
    assert_eq!(
        down.dropped_queue_bytes + down.dropped_failed,
        total as u64,
        "every span accounted for: {down:?}"
    );
    assert_eq!(
        handle.queued_bytes(),
        0,
        "given-up batches give their bytes back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_spans_to_a_dead_grpc_endpoint_stay_within_the_byte_bound() {
    large_spans_stay_within_the_byte_bound(ExportKind::OtlpGrpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_spans_to_a_dead_http_endpoint_stay_within_the_byte_bound() {
    large_spans_stay_within_the_byte_bound(ExportKind::OtlpHttp).await;
}

#[tokio::test]
async fn a_dead_grpc_endpoint_drops_and_counts_then_recovers() {
    dead_endpoint_then_recovery(ExportKind::OtlpGrpc).await;
}

#[tokio::test]
async fn a_dead_http_endpoint_drops_and_counts_then_recovers() {
    dead_endpoint_then_recovery(ExportKind::OtlpHttp).await;
}

/// The test PKI's files, and a config that trusts its CA and presents its client certificate.
fn tls_config(
    kind: ExportKind,
    endpoint: String,
    pki: &TestPki,
    dir: &std::path::Path,
    with_client_cert: bool,
) -> ExportConfig {
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let mut config = ExportConfig {
        ca_file: Some(write("ca.pem", &pki.ca_pem)),
        max_retries: 0,
        ..otlp_config(kind, endpoint)
    };
    if with_client_cert {
        config.client_cert = Some(write("agent.pem", &pki.client_cert_pem));
        config.client_key = Some(write("agent-key.pem", &pki.client_key_pem));
    }
    config.validate().unwrap();
    config
}

async fn tls_round_trip(kind: ExportKind) {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start_tls(&pki).await;
    let endpoint = match kind {
        ExportKind::OtlpGrpc => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let spans = order_spans("SO-42");

    // Without a client certificate the receiver refuses the connection: counted, not sent.
    let refused =
        Exporter::start(&tls_config(kind, endpoint.clone(), &pki, dir.path(), false)).unwrap();
    refused.handle().submit(spans[0].clone());
    assert!(refused.flush(WAIT).await);
    let counters = refused.shutdown(WAIT).await;
    assert_eq!(
        (counters.exported, counters.failed_batches),
        (0, 1),
        "{counters:?}"
    );

    let exporter = Exporter::start(&tls_config(kind, endpoint, &pki, dir.path(), true)).unwrap();
    for span in &spans {
        exporter.handle().submit(span.clone());
    }
    assert!(exporter.flush(WAIT).await);
    let transport = if kind == ExportKind::OtlpGrpc {
        "grpc"
    } else {
        "http"
    };
    check_received(
        &receiver.wait_for_spans(spans.len(), WAIT).await,
        &spans,
        transport,
    );
    assert_eq!(exporter.shutdown(WAIT).await.exported, 3);
}

#[tokio::test]
async fn exports_over_grpc_with_mutual_tls() {
    tls_round_trip(ExportKind::OtlpGrpc).await;
}

#[tokio::test]
async fn exports_over_http_with_mutual_tls() {
    tls_round_trip(ExportKind::OtlpHttp).await;
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn json_lines_follow_the_contract() {
    let out = Shared::default();
    let exporter = Exporter::start_lines(&ExportConfig::default(), Box::new(out.clone()));
    let spans = order_spans("SO-42");
    for span in &spans {
        exporter.handle().submit(span.clone());
    }
    assert_eq!(exporter.shutdown(WAIT).await.exported, 3);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let first = &lines[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "attributes",
            "end_unix_nano",
            "kind",
            "links",
            "name",
            "parent_span_id",
            "resource",
            "span_id",
            "start_unix_nano",
            "status",
            "trace_id"
        ]
    );
    assert_eq!(first["trace_id"], hex::encode(order_trace_id("SO-42")));
    assert_eq!(
        first["parent_span_id"],
        hex::encode(order_root_span_id("SO-42"))
    );
    assert_eq!(first["kind"], "server");
    assert_eq!(first["status"], "unset");
    assert_eq!(first["resource"]["service.name"], "shop-api");
    assert_eq!(first["attributes"]["order.id"], "SO-42");
    assert_eq!(first["attributes"]["http.response.status_code"], 200);
    assert_eq!(lines[1]["status"], "error");
    assert_eq!(lines[1]["attributes"]["error.type"], "409");
}
