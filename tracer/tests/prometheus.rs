//! The Prometheus side for real (Debian's `prometheus` and `prometheus-alertmanager`):
//! `deploy/alerts` passes `promtool check rules` and its unit tests (`promtool test rules`);
//! and a real Prometheus scraping `tracer run`'s `/metrics` with those rules, sending to a
//! real Alertmanager, fires the stuck alert of an order the testbed's shop leaves waiting, and
//! resolves it when the order moves on.

// This test drives the testbed's services itself, not a whole `testbed run`.
#[path = "support/alertmanager.rs"]
mod alertmanager;
#[path = "support/testbed_run.rs"]
mod testbed_run;
#[path = "support/tracer_run.rs"]
mod tracer_run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alertmanager::spawn;
use serde_json::{Value, json};
use testbed_run::{bin_dir, free_base_port, free_port, scratch};

fn alerts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alerts")
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(alerts_dir())
        .output()
        .expect("promtool runs (apt-get install -y prometheus; cargo xtask prereqs does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "order-tracer.rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "order-tracer.rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

async fn wait_until<T, F, Fut>(limit: Duration, what: &str, logs: &[&Path], mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = logs
                .iter()
                .map(|log| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().rev().take(15).collect();
                    format!(
                        "--- {}:\n{}",
                        log.display(),
                        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("timed out waiting for {what}\n{}", tails.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `log` (a process's stderr) satisfies `done`.
async fn wait_for_log(log: &Path, what: &str, done: impl Fn(&str) -> bool) {
    wait_until(Duration::from_secs(60), what, &[log], || async {
        done(&std::fs::read_to_string(log).unwrap_or_default()).then_some(())
    })
    .await;
}

/// The rules file with its `for:` holds cut to a few seconds, so a test run does not wait
/// the minutes a real page waits; the expressions, labels and annotations stay as shipped.
fn rules_with_short_holds() -> String {
    let text = std::fs::read_to_string(alerts_dir().join("order-tracer.rules.yml")).unwrap();
    text.lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 2s"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_order_pages_through_prometheus_and_alertmanager_and_resolves() {
    let dir = scratch("prometheus");
    tracer::process::install_crypto_provider();
    let client = reqwest::Client::new();

    let (_alertmanager, am_url) = alertmanager::start(&dir);
    let am_port = am_url.rsplit(':').next().unwrap().to_string();

    // tracer run on the testbed's config (INITIATED is stuck after 8 s), tracing only the
    // services this test starts: the alert counts every stuck order the tracer sees.
    let base_port = free_base_port();
    let config = dir.join("tracer.toml");
    std::fs::write(&config, tracer_run::config(&dir, None, base_port, None).0).unwrap();
    let api_port = free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let tracer_log = dir.join("tracer.log");
    let _tracer = spawn(
        &bin_dir().join("tracer"),
        &[
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--allow-anonymous-loopback".into(),
            "--listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--store".into(),
            dir.join("orders.db").display().to_string(),
        ],
        &tracer_log,
    );
    wait_for_log(&tracer_log, "tracer run to attach", |log| {
        log.matches("waiting for target").count() >= 3
    })
    .await;

    // Prometheus scraping it every second, with the shipped rules.
    std::fs::write(dir.join("order-tracer.rules.yml"), rules_with_short_holds()).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - order-tracer.rules.yml\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: order-tracer\n    static_configs:\n      - targets: ['127.0.0.1:{api_port}']\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let prom_log = dir.join("prometheus.log");
    let _prometheus = spawn(
        Path::new("prometheus"),
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--rules.alert.resend-delay=1s".into(),
        ],
        &prom_log,
    );
    wait_until(
        Duration::from_secs(30),
        "Prometheus scraping the tracer",
        &[&prom_log],
        || async {
            let v: Value = client
                .get(format!(
                    "{prom_url}/api/v1/query?query=up%7Bjob%3D%22order-tracer%22%7D"
                ))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["data"]["result"][0]["value"][1] == "1").then_some(())
        },
    )
    .await;

    // The testbed's services; one order created and left waiting in INITIATED.
    let testbed_log = dir.join("testbed.log");
    let _testbed = spawn(
        &bin_dir().join("testbed"),
        &["serve".into(), "--base-port".into(), base_port.to_string()],
        &testbed_log,
    );
    let shop = format!("http://127.0.0.1:{base_port}");
    wait_until(
        Duration::from_secs(30),
        "the shop",
        &[&testbed_log],
        || async {
            client
                .get(format!("{shop}/api/v1/orders/none"))
                .send()
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    // The agent attaches to each service as it starts; give it a moment past the log line.
    wait_for_log(&tracer_log, "tracing the shop", |log| {
        log.contains("as shop-api")
    })
    .await;
    let created: Value = client
        .post(format!("{shop}/api/v1/orders"))
        .json(&json!({"customer_id": "c-prom", "items": [{"sku": "ring-1", "quantity": 1}], "cart_id": "cart-prom"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order = created["order_id"]
        .as_str()
        .expect("an order id")
        .to_string();

    let logs = [
        &tracer_log as &Path,
        &prom_log,
        &dir.join("alertmanager.log"),
    ];
    let firing = wait_until(
        Duration::from_secs(60),
        "OrdersStuck at Alertmanager",
        &logs,
        || async {
            let alerts = alertmanager::alerts(&client, &am_url, "OrdersStuck").await;
            alerts
                .into_iter()
                .find(|a| a["status"]["state"] == "active")
        },
    )
    .await;
    assert_eq!(firing["labels"]["service"], "shop-api", "{firing}");
    assert_eq!(firing["labels"]["severity"], "warning");
    assert_eq!(
        firing["annotations"]["summary"],
        "1 orders stuck waiting for shop-api"
    );
    let stuck: Value = client
        .get(format!("{api}/api/v1/stuck"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stuck["items"][0]["order_id"], order.as_str());

    // The order moves on (its model is uploaded): the detection resolves, so does the alert.
    let uploaded = client
        .put(format!("{shop}/api/v1/orders/{order}/model"))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success(), "{}", uploaded.status());
    wait_until(
        Duration::from_secs(60),
        "OrdersStuck resolved at Alertmanager",
        &logs,
        || async {
            let alerts = alertmanager::alerts(&client, &am_url, "OrdersStuck").await;
            alerts
                .iter()
                .all(|a| a["status"]["state"] != "active")
                .then_some(())
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
