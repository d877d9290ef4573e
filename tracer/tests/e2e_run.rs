//! End to end, as root: `tracer run` (agent + monitor + SQLite in one process) traces the
//! testbed from the kernel while it injects every kind of fault. The monitor's detections
//! must equal the truth file — every fault found with the right kind, step and service within
//! its limit + 5 s, nothing on a healthy order — and `/metrics` and the alert webhook agree.
//! In the testbed's TLS mode (HTTPS through OpenSSL) the same holds, the exported spans are
//! the request and message logs one for one, and no ciphertext is taken for bad HTTP.

mod monitor_common;
#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;
#[path = "support/spans_vs_logs.rs"]
mod spans_vs_logs;
#[path = "support/testbed_run.rs"]
mod testbed_run;
#[path = "support/tracer_run.rs"]
mod tracer_run;

use std::collections::{BTreeMap, BTreeSet};

use monitor_common::{Capture, compare_with_truth, get_json, get_metrics};
use otlp_receiver::OtlpReceiver;
use testbed::messagelog::read_message_log;
use testbed::requestlog::read_request_log;
use testbed::truth::read_truth;
use testbed_run::{Run, free_base_port, free_port, scratch};
use tracer::lifecycle::MONITOR_SERVICE;
use tracer_run::{TracerRun, config, longest_limit};

/// One traced run at a time: two brokers and two agents side by side starve two cores.
static ONE_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    detections_equal_the_truth(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_detections_and_spans_equal_the_truth_and_the_logs() {
    detections_equal_the_truth(true).await;
}

/// One traced testbed run with faults; `tls`: in the testbed's TLS mode, with the spans
/// exported and compared with the testbed's logs.
async fn detections_equal_the_truth(tls: bool) {
    let _one_run = ONE_RUN.lock().await;
    let dir = scratch(if tls { "e2e-run-tls" } else { "e2e-run" });
    let (webhook, webhook_addr) = Capture::start().await;
    let receiver = if tls {
        Some(OtlpReceiver::start().await)
    } else {
        None
    };
    let endpoint = receiver.as_ref().map(OtlpReceiver::grpc_endpoint);
    let base_port = free_base_port();
    let alerts_url = format!("http://{webhook_addr}/alerts");
    let (text, config) = config(&dir, Some(&alerts_url), base_port, endpoint.as_deref());
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, text).unwrap();
    let api_port = free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let listen = format!("127.0.0.1:{api_port}");
    let tracer = TracerRun::start(&config_path, &listen, &dir, "run.log");

    let run = Run {
        orders: 120,
        rate: 20.0,
        faults: "all=0.05",
        seed: 7,
        base_port,
        dir: &dir,
        tls,
    };
    tokio::task::block_in_place(|| run.run());

    tokio::time::sleep(longest_limit(&config)).await;

    tracer::process::install_crypto_provider();
    let client = reqwest::Client::new();
    let truth = std::fs::read_to_string(run.truth()).unwrap();
    let problems = compare_with_truth(&client, &api, None, &truth, &config.lifecycle).await;
    assert!(
        problems.is_empty(),
        "{} mismatches with the truth file:\n{}\n--- tracer log tail:\n{}",
        problems.len(),
        problems.join("\n"),
        tracer
            .log_text()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
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
    if let Some(receiver) = &receiver {
        // Ciphertext on the syscall path is neither parsed nor counted as bad HTTP.
        assert_eq!(
            metrics.get("order_tracer_pipeline_parse_errors_total"),
            Some(&0.0),
            "{page}"
        );
        let log = read_request_log(run.request_log()).unwrap();
        let messages = read_message_log(run.message_log()).unwrap();
        let expected = spans_vs_logs::expected(&log, &messages);
        let truth = read_truth(run.truth()).unwrap();
        let ours: BTreeSet<&str> = truth.iter().map(|o| o.order_id.as_str()).collect();
        // The monitor's own root spans are not exchanges.
        let spans: Vec<_> = spans_vs_logs::of_orders(receiver.spans(), &ours)
            .into_iter()
            .filter(|s| s.resource_attr("service.name").as_deref() != Some(MONITOR_SERVICE))
            .collect();
        // HTTP was read decrypted on every hop; the broker hop is plain AMQP.
        for span in &spans {
            let http = span.attr("http.request.method").is_some();
            let tls = span.attr("tls.protocol.name");
            assert_eq!(
                tls.as_deref(),
                http.then_some("tls"),
                "{:?}",
                span.span.name
            );
        }
        if let Some(differences) = spans_vs_logs::differences(&expected, &spans) {
            panic!("{differences}");
        }
    }
    drop(tracer);
    let _ = std::fs::remove_dir_all(&dir);
}
