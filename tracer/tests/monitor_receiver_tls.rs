//! `tracer monitor` with `[api] tls_cert`, `tls_key` and `otlp_client_ca`: the project's own
//! exporter sends an order over OTLP/gRPC and over OTLP/HTTP with mutual TLS, the order shows
//! up in the API (HTTPS); a client without a certificate gets nothing in.

mod monitor_common;
#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_common::process::{Ports, spawn_monitor};
use monitor_common::*;
use otlp_receiver::TestPki;
use tracer::export::{ExportConfig, ExportKind, Exporter};

const WAIT: Duration = Duration::from_secs(10);

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn exporter_config(
    kind: ExportKind,
    endpoint: String,
    pki: &TestPki,
    dir: &Path,
    with_client_cert: bool,
) -> ExportConfig {
    let mut config = ExportConfig {
        kind,
        endpoint: Some(endpoint),
        flush_interval_ms: 50,
        max_retries: 0,
        ca_file: Some(write(dir, "ca.pem", &pki.ca_pem)),
        ..ExportConfig::default()
    };
    if with_client_cert {
        config.client_cert = Some(write(dir, "agent.pem", &pki.client_cert_pem));
        config.client_key = Some(write(dir, "agent-key.pem", &pki.client_key_pem));
    }
    config.validate().unwrap();
    config
}

/// Sends one healthy order's spans; returns what the exporter counted.
async fn send_order(config: &ExportConfig, order: &str) -> tracer::export::ExportCounters {
    let exporter = Exporter::start(config).unwrap();
    for span in walk::walk(order, None, now_ns() - 10 * S) {
        exporter.handle().submit(span);
    }
    assert!(exporter.flush(WAIT).await);
    exporter.shutdown(WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_mutual_tls_reaches_the_monitor_and_anonymous_clients_do_not() {
    tracer::process::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate();
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\notlp_client_ca = {:?}\n",
        write(dir.path(), "server.pem", &pki.server_cert_pem),
        write(dir.path(), "server-key.pem", &pki.server_key_pem),
        write(dir.path(), "client-ca.pem", &pki.ca_pem),
    );
    let config = write(
        dir.path(),
        "monitor.toml",
        &config_toml(&dir.path().join("m.db"), &extra),
    );
    let ports = Ports::free();
    let (api, grpc, http) = (ports.api, ports.grpc, ports.http);
    let _monitor = spawn_monitor(&config, &ports, &[]);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let api = format!("https://localhost:{}", api.port());
    wait_for(Duration::from_secs(20), "monitor up", || async {
        let r = client.get(format!("{api}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let cases = [
        (
            ExportKind::OtlpGrpc,
            format!("https://localhost:{}", grpc.port()),
            "SO-TLS-G",
        ),
        (
            ExportKind::OtlpHttp,
            format!("https://localhost:{}/v1/traces", http.port()),
            "SO-TLS-H",
        ),
    ];
    for (kind, endpoint, order) in cases {
        let anonymous = format!("{order}-anon");
        let refused = send_order(
            &exporter_config(kind, endpoint.clone(), &pki, dir.path(), false),
            &anonymous,
        )
        .await;
        assert_eq!(refused.exported, 0, "{kind:?} without a client certificate");
        assert!(refused.failed_batches > 0, "{kind:?}: {refused:?}");

        let sent = send_order(
            &exporter_config(kind, endpoint, &pki, dir.path(), true),
            order,
        )
        .await;
        assert!(sent.exported > 0, "{kind:?}: {sent:?}");
        assert_eq!(sent.failed_batches, 0, "{kind:?}: {sent:?}");
        let url = format!("{api}/api/v1/orders/{order}");
        wait_for(WAIT, &format!("{order} closed"), || async {
            let v = get_json(&client, &url).await?;
            (v["status"] == "CLOSED").then_some(())
        })
        .await;
        let unknown = client
            .get(format!("{api}/api/v1/orders/{anonymous}"))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404, "{anonymous} never got in");
    }
}
