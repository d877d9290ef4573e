//! The monitor's store under trouble: a save that fails is retried with everything it held.

mod monitor_common;

use std::time::Duration;

use monitor_common::walk::Span;
use monitor_common::*;

/// Makes every write of an order fail, as a full disk or a broken file would, until dropped.
struct FailingWrites(rusqlite::Connection);

impl FailingWrites {
    fn install(store: &std::path::Path) -> Self {
        let conn = rusqlite::Connection::open(store).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER fail_insert BEFORE INSERT ON orders
               BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;
             CREATE TRIGGER fail_update BEFORE UPDATE ON orders
               BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;",
        )
        .unwrap();
        Self(conn)
    }

    fn heal(self) {
        self.0
            .execute_batch("DROP TRIGGER fail_insert; DROP TRIGGER fail_update;")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_is_retried_without_losing_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.db");
    let (monitor, api) = start_monitor(config(&store, "metrics_public = true"), true).await;
    let client = reqwest::Client::new();
    let failing = FailingWrites::install(&store);

    // A closed order: no timer runs on it, so nothing but the retry writes it again.
    let order = "SO-SAVE-1";
    let closed = Span::server(order, "crm-api", "crm.close", now_ns())
        .reached("CLOSED")
        .at(0.0, 0.01);
    assert!(monitor.span_sink().send(closed));
    wait_for(Duration::from_secs(10), "a failed save", || async {
        get_metrics(&client, &api)
            .await
            .lines()
            .any(|l| l.starts_with("order_tracer_store_errors_total ") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    let url = format!("{api}/api/v1/orders/{order}");
    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 404, "nothing could be written yet");

    failing.heal();
    wait_for(Duration::from_secs(20), "the order saved", || async {
        let v = get_json(&client, &url).await?;
        (v["status"] == "CLOSED").then_some(())
    })
    .await;
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_spans_reach_disk_cut_to_what_the_lifecycle_reads() {
    use monitor_common::process::{Ports, post_spans, spawn_monitor, wait_healthy};
    tracer::process::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("canary.db");
    let config = dir.path().join("monitor.toml");
    std::fs::write(&config, config_toml(&store, "")).unwrap();
    let ports = Ports::free();
    let client = reqwest::Client::new();
    let api = ports.api_url();
    let _monitor = spawn_monitor(&config, &ports, &[]);
    wait_healthy(&client, &api).await;

    const CANARY: &str = "CANARY-7f3a9c";
    let order = "SO-MIN-1";
    let mut span = Span::server(order, "shop-api", "shop.create", now_ns())
        .reached("INITIATED")
        .attr("http.request.header.cookie", &format!("session={CANARY}"))
        .attr("url.path", &format!("/api/v1/orders?email={CANARY}"))
        .at(0.0, 0.01);
    span.name = format!("POST /api/v1/orders {CANARY}");
    span.resource.insert(
        "host.name".into(),
        tracer::spans::AttrValue::Str(CANARY.into()),
    );
    span.events.push(tracer::spans::SpanEvent {
        name: CANARY.into(),
        time_unix_nano: now_ns(),
        attributes: Default::default(),
    });
    // An order id no agent would send (the agent's limit is 128 characters).
    let huge = "X".repeat(20_000);
    let oversized = Span::server(&huge, "shop-api", "shop.create", now_ns())
        .reached("INITIATED")
        .at(0.0, 0.01);
    let (status, _) = post_spans(&client, &ports.traces_url(), &[span, oversized]).await;
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(10), "the order applied", || async {
        let v = get_json(&client, &format!("{api}/api/v1/orders/{order}")).await?;
        (v["status"] == "INITIATED").then_some(())
    })
    .await;
    // Applied spans leave the inbox, but their bytes would stay in the WAL: look at every file.
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().contains("canary.db") {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(CANARY),
            "the canary reached {}",
            path.display()
        );
        assert!(
            !text.contains(&huge[..1000]),
            "the 20,000-character id reached {}",
            path.display()
        );
    }
    assert!(files >= 2, "the store and its WAL were read");
}
