//! `tracer monitor` as a process: spans arrive as real OTLP from `opentelemetry-otlp`'s
//! exporters (gRPC, then HTTP), are forwarded upstream unchanged, and the monitor is killed
//! (SIGKILL) mid-run and restarted: no order state or open detection is lost, pending
//! timers still fire, and no detection is alerted twice.

mod monitor_common;

use std::net::SocketAddr;
use std::time::Duration;

use monitor_common::process::{Ports, Process, wait_healthy};
use monitor_common::*;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SpanExporter as _;
use prost::Message;
use tracer::spans::SpanRecord;

fn spawn_monitor(
    config: &std::path::Path,
    store: &std::path::Path,
    ports: &Ports,
    upstream: SocketAddr,
) -> Process {
    let store = store.display().to_string();
    let forward = format!("http://{upstream}/v1/traces");
    monitor_common::process::spawn_monitor(
        config,
        ports,
        &["--store", &store, "--forward-to", &forward],
    )
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
    let ports = Ports::free();
    let client = reqwest::Client::new();
    let api = ports.api_url();

    let child = spawn_monitor(&config, &store, &ports, upstream);
    wait_healthy(&client, &api).await;

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
    wait_healthy(&client, &api).await;
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

    // A firing alert for every detection, across the restart, and none for anything else.
    // Delivery is at least once: a kill between a delivery and its removal from the outbox
    // sends that alert again after the restart, with the same id.
    let firing = wait_for(Duration::from_secs(10), "alerts", || async {
        let mut firing: Vec<_> = capture
            .alerts()
            .into_iter()
            .filter(|(s, _)| s == "firing")
            .map(|(_, id)| id)
            .collect();
        firing.sort();
        firing.dedup();
        (firing.len() >= expected).then_some(firing)
    })
    .await;
    assert_eq!(firing.len(), expected, "{firing:?}");

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
