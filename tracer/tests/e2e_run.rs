//! End to end, as root: `tracer run` (agent + monitor + SQLite in one process) traces the
//! testbed from the kernel while it injects every kind of fault. The monitor's detections
//! must equal the truth file — every fault found with the right kind, step and service within
//! its limit + 5 s, nothing on a healthy order — and `/metrics` and the alert webhook agree.

mod monitor_common;
#[path = "support/testbed_run.rs"]
mod testbed_run;
// Shared with e2e_restart, which also kills the run hard.
#[allow(dead_code)]
#[path = "support/tracer_run.rs"]
mod tracer_run;

use std::collections::BTreeMap;
use std::time::Duration;

use monitor_common::{Capture, compare_with_truth, get_json, get_metrics};
use testbed_run::{Run, free_base_port, scratch};
use tracer_run::{TracerRun, config, free_port};

/// `name{labels} value` lines of a Prometheus text page, by `name{labels}`.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_equal_the_truth_and_metrics_and_alerts_agree() {
    let dir = scratch("e2e-run");
    let (webhook, webhook_addr) = Capture::start().await;
    let base_port = free_base_port();
    let (text, config) = config(
        &dir,
        Some(&format!("http://{webhook_addr}/alerts")),
        base_port,
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, text).unwrap();
    let api_port = free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let tracer = TracerRun::start(
        &config_path,
        &format!("127.0.0.1:{api_port}"),
        &dir,
        "run.log",
    );

    let run = Run {
        orders: 120,
        rate: 20.0,
        faults: "all=0.05",
        seed: 7,
        base_port,
        dir: &dir,
    };
    tokio::task::block_in_place(|| run.run());

    // The longest limit (a stuck limit, plus the reorder wait) and the 5 s of slack.
    let longest = config
        .lifecycle
        .statuses
        .iter()
        .filter_map(|s| s.stuck_after_secs)
        .fold(0.0, f64::max)
        + config.lifecycle.reorder_secs
        + 5.0;
    tokio::time::sleep(Duration::from_secs_f64(longest)).await;

    tracer::process::install_crypto_provider();
    let client = reqwest::Client::new();
    let truth = std::fs::read_to_string(run.truth()).unwrap();
    let problems = compare_with_truth(&client, &api, None, &truth, &config.lifecycle).await;
    assert!(
        problems.is_empty(),
        "{} mismatches with the truth file:\n{}\n--- tracer log tail:\n{}",
        problems.len(),
        problems.join("\n"),
        tracer.log_tail(20)
    );

    // Open detections by kind and service: the API, /metrics and the webhook say the same.
    let open = get_json(
        &client,
        &format!("{api}/api/v1/detections?open=true&limit=500"),
    )
    .await
    .expect("detections list");
    let mut by_api: BTreeMap<(String, String), f64> = BTreeMap::new();
    for d in open["items"].as_array().unwrap() {
        *by_api
            .entry((
                d["kind"].as_str().unwrap().to_string(),
                d["service"].as_str().unwrap().to_string(),
            ))
            .or_default() += 1.0;
    }
    assert!(
        !by_api.is_empty(),
        "a run with faults leaves open detections"
    );
    let page = get_metrics(&client, &api).await;
    let metrics = samples(&page);
    for ((kind, service), count) in &by_api {
        let key = format!("order_tracer_open_detections{{kind=\"{kind}\",service=\"{service}\"}}");
        assert_eq!(metrics.get(&key), Some(count), "{key} in:\n{page}");
    }
    let mut firing: BTreeMap<String, i32> = BTreeMap::new();
    for (status, id) in webhook.alerts() {
        *firing.entry(id).or_default() += if status == "firing" { 1 } else { -1 };
    }
    let still_firing = firing.values().filter(|n| **n > 0).count() as f64;
    assert_eq!(
        still_firing,
        by_api.values().sum::<f64>(),
        "alerts firing vs open detections"
    );
    assert!(
        firing.values().all(|n| (0..=1).contains(n)),
        "an alert was sent twice: {firing:?}"
    );
    drop(tracer);
    let _ = std::fs::remove_dir_all(&dir);
}
