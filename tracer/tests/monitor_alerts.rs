//! Alerts survive crashes: `tracer monitor` raises a detection while its webhook is down, is
//! killed (SIGKILL) before any delivery succeeded, and after a restart on the same store the
//! alert still arrives — and so does its resolution, each copy with the same alert id.

mod monitor_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use monitor_common::process::{Ports, post_spans, spawn_monitor, wait_healthy};
use monitor_common::walk::Span;
use monitor_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_before_a_kill_is_delivered_after_the_restart() {
    tracer::process::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (webhook, webhook_addr) = Capture::start().await;
    webhook.refusing.store(true, Ordering::SeqCst);
    let store = dir.path().join("alerts.db");
    let config = dir.path().join("monitor.toml");
    std::fs::write(
        &config,
        config_toml(
            &store,
            &format!("alert_webhook = \"http://{webhook_addr}/alerts\"\n"),
        ),
    )
    .unwrap();
    let ports = Ports::free();
    let client = reqwest::Client::new();
    let api = ports.api_url();

    let monitor = spawn_monitor(&config, &ports, &[]);
    wait_healthy(&client, &api).await;
    // An order created and then left alone: `stuck` (FILE_UPLOADED) after STUCK_SECS.
    let order = "SO-ALERT-1";
    let created = Span::server(order, "shop-api", "shop.create", now_ns())
        .reached("INITIATED")
        .at(0.0, 0.01);
    let (status, _) = post_spans(&client, &ports.traces_url(), &[created]).await;
    assert_eq!(status, 200);
    let detection = wait_for(Duration::from_secs(20), "the stuck detection", || async {
        let v = get_json(&client, &format!("{api}/api/v1/detections?open=true")).await?;
        v["items"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    // The webhook was tried and refused: the alert is raised but not delivered.
    wait_for(Duration::from_secs(10), "a refused delivery", || async {
        (webhook.refused.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    monitor.kill();
    assert!(webhook.alert_messages().is_empty());

    webhook.refusing.store(false, Ordering::SeqCst);
    let _monitor = spawn_monitor(&config, &ports, &[]);
    wait_healthy(&client, &api).await;
    wait_for(Duration::from_secs(20), "the firing alert", || async {
        webhook
            .alert_messages()
            .iter()
            .any(|(s, id, _)| s == "firing" && *id == detection)
            .then_some(())
    })
    .await;

    // The order moves on: the resolution is delivered too.
    let uploaded = Span::server(order, "shop-api", "shop.upload", now_ns())
        .reached("FILE_UPLOADED")
        .at(0.0, 0.01);
    let (status, _) = post_spans(&client, &ports.traces_url(), &[uploaded]).await;
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(20), "the resolved alert", || async {
        webhook
            .alert_messages()
            .iter()
            .any(|(s, id, _)| s == "resolved" && *id == detection)
            .then_some(())
    })
    .await;
    // Copies of one notification (at-least-once) are identical, so a receiver can drop them
    // by id; firing and resolved share the Alertmanager fingerprint.
    let all = webhook.alert_messages();
    for (status, id, body) in &all {
        assert_eq!(id, &detection);
        assert_eq!(body["alerts"][0]["fingerprint"], detection.as_str());
        let first = all.iter().find(|(s, _, _)| s == status).unwrap();
        assert_eq!(body, &first.2, "duplicates carry the same content");
    }
}
