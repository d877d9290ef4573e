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
