//! The OTLP receiver acknowledges spans only once they are durable: while the store cannot
//! commit them, the answer is 503 + Retry-After (the sender keeps them and retries); once it
//! can, the retry is taken and the span is in the store.

mod monitor_common;

use std::time::Duration;

use monitor_common::process::{Ports, spawn_monitor, wait_healthy};
use monitor_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_acknowledged_only_once_stored() {
    tracer::process::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("m.db");
    let config = dir.path().join("monitor.toml");
    std::fs::write(&config, config_toml(&store, "")).unwrap();
    let ports = Ports::free();
    let client = reqwest::Client::new();
    let _monitor = spawn_monitor(&config, &ports, &[]);
    wait_healthy(&client, &ports.api_url()).await;

    // The store refuses every span (as a full disk would).
    let db = rusqlite::Connection::open(&store).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full_disk BEFORE INSERT ON inbox
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    let (spans, _) = fault_run("SO-DUR", now_ns());
    let body = prost::Message::encode_to_vec(&tracer::receiver::otlp_from_spans(&spans[..1]));
    let url = format!("http://{}/v1/traces", ports.http);
    let post = || {
        client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
    };
    let refused = post().await.unwrap();
    assert_eq!(refused.status(), 503, "{:?}", refused.text().await);
    assert!(refused.headers().contains_key("retry-after"));

    // The disk has room again: a retry (after the monitor's own save back-off) is taken.
    db.execute_batch("DROP TRIGGER full_disk").unwrap();
    let taken = wait_for(Duration::from_secs(30), "a retry taken", || async {
        let answer = post().await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
    let () = taken;
    let order = spans[0].attributes["order.id"].clone();
    let tracer::spans::AttrValue::Str(order) = order else {
        panic!("order id")
    };
    wait_for(Duration::from_secs(20), "the span applied", || async {
        get_json(
            &client,
            &format!("{}/api/v1/orders/{order}", ports.api_url()),
        )
        .await
        .filter(|o| o["order_id"].is_string())
    })
    .await;
}
