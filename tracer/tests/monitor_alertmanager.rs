//! The monitor's Alertmanager client against a real Alertmanager (Debian's
//! `prometheus-alertmanager`): a stuck order is posted to `POST /api/v2/alerts` with its
//! labels and annotations, listed by Alertmanager's API as active, and ends there when the
//! order moves on.

#[path = "support/alertmanager.rs"]
mod alertmanager;
mod monitor_common;
// The Alertmanager helper takes its port from there.
#[path = "support/testbed_run.rs"]
mod testbed_run;

use std::time::Duration;

use monitor_common::walk::Span;
use monitor_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_reach_alertmanager_and_resolve_there() {
    tracer::process::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (_alertmanager, am_url) = alertmanager::start(dir.path());
    let client = reqwest::Client::new();
    wait_for(Duration::from_secs(20), "Alertmanager", || async {
        client
            .get(format!("{am_url}/-/ready"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    let config = config(
        &dir.path().join("m.db"),
        &format!("alertmanager_url = \"{am_url}\"\njaeger_url = \"http://jaeger.example:16686\""),
    );
    let (monitor, api) = start_monitor(config, true).await;
    let order = "SO-AM-1";
    let created = Span::server(order, "shop-api", "shop.create", now_ns())
        .reached("INITIATED")
        .at(0.0, 0.01);
    assert!(monitor.span_sink().send(created));

    let alert = wait_for(
        Duration::from_secs(30),
        "the alert at Alertmanager",
        || async {
            alertmanager::alerts(&client, &am_url, "OrderStuck")
                .await
                .into_iter()
                .find(|a| a["labels"]["order_id"] == order && a["status"]["state"] == "active")
        },
    )
    .await;
    assert_eq!(alert["labels"]["kind"], "stuck");
    assert_eq!(alert["labels"]["step"], "FILE_UPLOADED");
    assert_eq!(alert["labels"]["service"], "shop-api");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains(order),
        "{alert}"
    );
    let trace_id = alert["annotations"]["trace_id"].as_str().unwrap();
    assert_eq!(
        alert["generatorURL"],
        format!("http://jaeger.example:16686/trace/{trace_id}").as_str()
    );
    let detection = get_json(&client, &format!("{api}/api/v1/stuck"))
        .await
        .unwrap();
    assert_eq!(
        alert["startsAt"].as_str().map(|t| &t[..19]),
        detection["items"][0]["at"].as_str().map(|t| &t[..19]),
        "startsAt is when the detection was raised"
    );

    let uploaded = Span::server(order, "shop-api", "shop.upload", now_ns())
        .reached("FILE_UPLOADED")
        .at(0.0, 0.01);
    assert!(monitor.span_sink().send(uploaded));
    wait_for(Duration::from_secs(30), "the alert resolved", || async {
        let alerts = alertmanager::alerts(&client, &am_url, "OrderStuck").await;
        alerts
            .iter()
            .all(|a| a["labels"]["order_id"] != order || a["status"]["state"] != "active")
            .then_some(())
    })
    .await;
    monitor.shutdown();
}
