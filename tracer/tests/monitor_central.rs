//! `tracer monitor` as a process: spans arrive as real OTLP from `opentelemetry-otlp`'s
//! exporters (gRPC, then HTTP), are forwarded upstream unchanged, and the monitor is killed
//! (SIGKILL) mid-run and restarted: no order state or open detection is lost, pending
//! timers still fire, and no detection is alerted twice.

mod monitor_common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use monitor_common::*;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SpanExporter as _;
use prost::Message;
use tracer::spans::SpanRecord;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Ports {
    api: SocketAddr,
    grpc: SocketAddr,
    http: SocketAddr,
}

/// The monitor process, killed when the test ends however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_monitor(
    config: &std::path::Path,
    store: &std::path::Path,
    ports: &Ports,
    upstream: SocketAddr,
) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["monitor", "--config"])
        .arg(config)
        .arg("--store")
        .arg(store)
        .args(["--listen", &ports.api.to_string()])
        .args(["--otlp-grpc", &ports.grpc.to_string()])
        .args(["--otlp-http", &ports.http.to_string()])
        .args(["--forward-to", &format!("http://{upstream}/v1/traces")])
        .arg("--allow-anonymous-loopback")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the tracer binary starts");
    Process(child)
}

async fn wait_healthy(client: &reqwest::Client, api: SocketAddr) {
    wait_for(Duration::from_secs(20), "monitor up", || async {
        let r = client
            .get(format!("http://{api}/healthz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

enum Transport {
    Grpc(SocketAddr),
    Http(SocketAddr),
}

/// Sends each span when its exchange ends, through an OTLP exporter of its service.
async fn replay_otlp(mut spans: Vec<SpanRecord>, transport: &Transport) {
    spans.sort_by_key(|s| s.end_unix_nano);
    let mut exporters = std::collections::HashMap::new();
    for span in spans {
        let service = service_of(&span);
        let exporter = exporters.entry(service.clone()).or_insert_with(|| {
            let mut exporter = match transport {
                Transport::Grpc(addr) => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(format!("http://{addr}"))
                    .build()
                    .unwrap(),
                Transport::Http(addr) => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("http://{addr}/v1/traces"))
                    .build()
                    .unwrap(),
            };
            exporter.set_resource(
                &opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name(service)
                    .build(),
            );
            exporter
        });
        tokio::time::sleep(Duration::from_nanos(
            span.end_unix_nano.saturating_sub(now_ns()),
        ))
        .await;
        exporter
            .export(vec![sdk_span(&span)])
            .await
            .expect("the monitor accepts OTLP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_monitor_survives_a_kill_and_forwards_everything() {
    tracer::process::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (capture, upstream) = Capture::start().await;
    let store = dir.path().join("central.db");
    let config = dir.path().join("monitor.toml");
    std::fs::write(
        &config,
        config_toml(
            &store,
            &format!("alert_webhook = \"http://{upstream}/alerts\"\n"),
        ),
    )
    .unwrap();
    let ports = Ports {
        api: free_port(),
        grpc: free_port(),
        http: free_port(),
    };
    let client = reqwest::Client::new();
    let api = format!("http://{}", ports.api);

    let child = spawn_monitor(&config, &store, &ports, upstream);
    wait_healthy(&client, ports.api).await;

    // Run 1, over gRPC: every fault row and healthy orders.
    let (mut faulty, truth_1) = fault_run("SO-C", now_ns() + S / 2);
    number_spans(&mut faulty);
    let sent_1 = faulty.len();
    replay_otlp(faulty, &Transport::Grpc(ports.grpc)).await;
    // Kill while the last spans still wait out the reorder window (they are in the store's
    // inbox), with stuck and transit timers of several orders still running.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before: serde_json::Value =
        get_json(&client, &format!("{api}/api/v1/detections?limit=100"))
            .await
            .unwrap();
    let open_before = before["items"].as_array().unwrap().len();
    assert!(
        open_before < truth_1.matches("\"detection\"").count(),
        "killed while timers still run"
    );
    drop(child);

    let child = spawn_monitor(&config, &store, &ports, upstream);
    wait_healthy(&client, ports.api).await;
    // Nothing raised before the kill is gone.
    let after: serde_json::Value = get_json(&client, &format!("{api}/api/v1/detections?limit=100"))
        .await
        .unwrap();
    for detection in before["items"].as_array().unwrap() {
        assert!(
            after["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == detection["id"]),
            "detection {detection} lost in the restart"
        );
    }

    // Run 2, over HTTP: more orders after the restart.
    let mut healthy = Vec::new();
    let mut truth_2 = String::new();
    for i in 0..3 {
        let order = format!("SO-H-{i}");
        healthy.extend(walk::walk(&order, None, now_ns() + S / 2));
        truth_2.push_str(&format!(
            "{}\n",
            serde_json::json!({"order_id": order, "final_status": "CLOSED", "faults": []})
        ));
    }
    number_spans(&mut healthy);
    let sent_2 = healthy.len();
    replay_otlp(healthy, &Transport::Http(ports.http)).await;

    let truth = format!("{truth_1}{truth_2}");
    let limits = monitor_common::config(&store, "").lifecycle;
    let expected = truth_1.matches("\"detection\"").count();
    wait_for(Duration::from_secs(20), "every detection", || async {
        let v: serde_json::Value =
            get_json(&client, &format!("{api}/api/v1/detections?limit=100")).await?;
        (v["items"].as_array()?.len() >= expected).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let problems = compare_with_truth(&client, &api, None, &truth, &limits).await;
    assert!(problems.is_empty(), "{problems:#?}");

    // One firing alert per detection, across the restart.
    let alerts = wait_for(Duration::from_secs(10), "alerts", || async {
        let alerts = capture.alerts();
        (alerts.iter().filter(|(s, _)| s == "firing").count() >= expected).then_some(alerts)
    })
    .await;
    let mut firing: Vec<_> = alerts
        .iter()
        .filter(|(s, _)| s == "firing")
        .map(|(_, id)| id.clone())
        .collect();
    firing.sort();
    let count = firing.len();
    firing.dedup();
    assert_eq!(
        count,
        firing.len(),
        "a detection was alerted twice: {alerts:?}"
    );
    assert_eq!(count, expected);

    // Upstream got every exchange span (unchanged ids) and the closed orders' root spans.
    let forwarded = wait_for(Duration::from_secs(10), "forwarded spans", || async {
        let spans: Vec<_> = capture
            .bodies("/v1/traces")
            .iter()
            .flat_map(|b| {
                tracer::receiver::spans_from_otlp(
                    &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(b.clone()).unwrap(),
                )
            })
            .collect();
        let exchanges = spans.iter().filter(|s| !s.name.starts_with("order ")).count();
        (exchanges >= sent_1 + sent_2).then_some(spans)
    })
    .await;
    let root = forwarded
        .iter()
        .find(|s| s.span_id == tracer::spans::order_root_span_id("SO-H-0"))
        .expect("the root span of a closed order went upstream");
    assert_eq!(root.trace_id, tracer::spans::order_trace_id("SO-H-0"));
    assert!(
        root.events
            .iter()
            .filter(|e| e.name.starts_with("status "))
            .count()
            == 10
    );
    assert_eq!(
        forwarded
            .iter()
            .filter(|s| !s.name.starts_with("order "))
            .count(),
        sent_1 + sent_2
    );

    let metrics = monitor_common::get_metrics(&client, &api).await;
    assert!(
        metrics.contains("order_tracer_monitor_spans_received_total"),
        "{metrics}"
    );
    drop(child);
}
