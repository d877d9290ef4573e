//! Helpers of the monitor's integration tests: a short-limit config, a running monitor, an
//! HTTP capture server (webhook, OTLP upstream), and the truth-file comparison.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use tracer::config::Config;
use tracer::lifecycle::LifecycleConfig;
use tracer::spans::{
    AttrValue, Attributes, SpanKind, SpanRecord, SpanStatus, order_root_span_id, order_trace_id,
};

#[path = "idp.rs"]
pub mod idp;
#[path = "process.rs"]
pub mod process;
#[path = "walk.rs"]
pub mod walk;

pub const S: u64 = 1_000_000_000;
/// Longer than the slowest failing call of the walk (the 3 s pricing timeout): a stuck limit
/// shorter than a client's timeout reports `stuck` before the failure is known.
pub const STUCK_SECS: f64 = 4.0;
pub const TRANSIT_SECS: f64 = 2.0;
pub const GRACE_SECS: f64 = 1.0;

/// `[lifecycle]`, `[store]` and `[api]` with limits of a few seconds.
pub fn config_toml(store: &std::path::Path, api_extra: &str) -> String {
    let mut text = format!(
        "[lifecycle]\nretry_grace_secs = {GRACE_SECS}\nhung_creation_secs = 1.0\nduplicate_window_secs = 30.0\nreorder_secs = 0.3\norder_expiry_secs = 600.0\n"
    );
    let statuses = [
        ("INITIATED", "shop-api"),
        ("FILE_UPLOADED", "shop-api"),
        ("SUBMITTED", "shop-api"),
        ("PRICE_CALCULATED", "mes-api"),
        ("MANUFACTURING_APPROVED", "crm-api"),
        ("MANUFACTURING_STARTED", "mes-api"),
        ("MANUFACTURING_COMPLETED", "mes-api"),
        ("PACKAGING", "mes-api"),
        ("SHIPPED", "mes-api"),
    ];
    for (name, service) in statuses {
        text.push_str(&format!(
            "[[lifecycle.statuses]]\nname = \"{name}\"\nservice = \"{service}\"\nstuck_after_secs = {STUCK_SECS}\n"
        ));
    }
    text.push_str("[[lifecycle.statuses]]\nname = \"CLOSED\"\nservice = \"crm-api\"\n");
    for (from, to, step, service) in [
        (
            "queue.publish_priced",
            "crm.receive_deal",
            "MANUFACTURING_APPROVED",
            "crm-api",
        ),
        (
            "queue.publish_work_order",
            "mes.receive_work_order",
            "MANUFACTURING_STARTED",
            "mes-api",
        ),
    ] {
        text.push_str(&format!(
            "[[lifecycle.transits]]\nfrom_rule = \"{from}\"\nto_rule = \"{to}\"\nstep = \"{step}\"\nservice = \"{service}\"\nlimit_secs = {TRANSIT_SECS}\n"
        ));
    }
    text.push_str(&format!(
        "[store]\npath = {:?}\nretention_days = 1.0\n[api]\nlisten = \"127.0.0.1:0\"\n{api_extra}\n",
        store.display().to_string()
    ));
    text
}

pub fn config(store: &std::path::Path, api_extra: &str) -> Config {
    Config::parse(&config_toml(store, api_extra), "test").unwrap()
}

pub fn now_ns() -> u64 {
    tracer::clock::unix_now()
}

/// GETs `url` as JSON; `None` on any failure (for polling).
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

/// The monitor's `/metrics` page (no token: tests serve it publicly or anonymously).
pub async fn get_metrics(client: &reqwest::Client, api: &str) -> String {
    client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `check` every 100 ms until it gives a value or `limit` passes.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records every POST body by path: a stand-in for Alertmanager and for an OTLP upstream.
/// While `refusing`, it answers 503 and records nothing (a receiver that is down).
#[derive(Clone, Default)]
pub struct Capture {
    pub posts: Arc<Mutex<Vec<(String, Bytes)>>>,
    pub refusing: Arc<std::sync::atomic::AtomicBool>,
    /// POSTs answered 503 while refusing.
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl Capture {
    pub async fn start() -> (Self, SocketAddr) {
        let capture = Self::default();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(record))
            .with_state(capture.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (capture, addr)
    }

    pub fn bodies(&self, path: &str) -> Vec<Bytes> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Alertmanager messages received: (status, detection id).
    pub fn alerts(&self) -> Vec<(String, String)> {
        self.alert_messages()
            .into_iter()
            .map(|(status, id, _)| (status, id))
            .collect()
    }

    /// Alertmanager messages received: (status, detection id, the whole message).
    pub fn alert_messages(&self) -> Vec<(String, String, serde_json::Value)> {
        self.bodies("/alerts")
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                (
                    v["status"].as_str().unwrap().to_string(),
                    v["alerts"][0]["labels"]["detection_id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    v,
                )
            })
            .collect()
    }
}

async fn record(
    State(capture): State<Capture>,
    Path(path): Path<String>,
    body: Bytes,
) -> (axum::http::StatusCode, &'static str) {
    use std::sync::atomic::Ordering;
    if capture.refusing.load(Ordering::SeqCst) {
        capture.refused.fetch_add(1, Ordering::SeqCst);
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down");
    }
    capture
        .posts
        .lock()
        .unwrap()
        .push((format!("/{path}"), body));
    (axum::http::StatusCode::OK, "ok")
}

/// Sends spans as an agent would: each when its exchange ends.
pub async fn replay(mut spans: Vec<SpanRecord>, sink: &tracer::monitor::SpanSink) {
    spans.sort_by_key(|s| s.end_unix_nano);
    for span in spans {
        let wait = span.end_unix_nano.saturating_sub(now_ns());
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        assert!(sink.send(span), "the monitor's queue took the span");
    }
}

/// Starts a monitor in this process with its API on a free loopback port.
pub async fn start_monitor(config: Config, anonymous: bool) -> (tracer::monitor::Monitor, String) {
    let monitor = tracer::monitor::Monitor::start(tracer::monitor::MonitorSettings {
        config,
        metrics: Arc::new(tracer::metrics::Metrics::new()),
        anonymous_loopback: anonymous,
        root_spans: None,
        blind_when_down: false,
    })
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = monitor.api_state();
    tokio::spawn(async move {
        if let Err(err) = tracer::api::serve_on(state, listener).await {
            eprintln!("API server stopped: {err:#}");
        }
    });
    (monitor, url)
}

/// The synthetic spans of every fault row plus healthy orders, based `base` ns, and the truth
/// lines (docs/contracts.md §1 format) they stand for.
pub fn fault_run(prefix: &str, base: u64) -> (Vec<SpanRecord>, String) {
    let mut spans = Vec::new();
    let mut truth = String::new();
    let last_end = |spans: &[SpanRecord]| spans.iter().map(|s| s.end_unix_nano).max().unwrap();
    for (i, (fault, kind, step, service)) in walk::FAULTS.iter().enumerate() {
        let order = format!("{prefix}-{i}");
        let walk = walk::walk(&order, Some(fault), base);
        truth.push_str(&truth_line(
            &order,
            &[(fault, kind, step, service, last_end(&walk))],
        ));
        spans.extend(walk);
    }
    let (first, second) = (format!("{prefix}-hung"), format!("{prefix}-dup"));
    let pair = walk::hung_pair(&first, &second, base);
    let hung_end = pair[0].end_unix_nano;
    truth.push_str(&truth_line(
        &first,
        &[(
            "session_hung",
            "stuck",
            "FILE_UPLOADED",
            "shop-api",
            hung_end,
        )],
    ));
    truth.push_str(&truth_line(
        &second,
        &[(
            "duplicate_order",
            "possible_duplicate",
            "INITIATED",
            "shop-api",
            hung_end,
        )],
    ));
    spans.extend(pair);
    for i in 0..3 {
        let order = format!("{prefix}-ok{i}");
        spans.extend(walk::walk(&order, None, base));
        truth.push_str(&truth_line(&order, &[]));
    }
    (spans, truth)
}

fn truth_line(order: &str, faults: &[(&str, &str, &str, &str, u64)]) -> String {
    let faults: Vec<_> = faults
        .iter()
        .map(|(kind, detection, step, service, at)| {
            serde_json::json!({"kind": kind, "detection": detection, "step": step, "service": service, "at": tracer::clock::rfc3339(*at)})
        })
        .collect();
    format!(
        "{}\n",
        serde_json::json!({"order_id": order, "final_status": null, "faults": faults})
    )
}

pub fn parse_time(text: &str) -> u64 {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp_nanos() as u64
}

/// How long after the fault a detection may come by `config`: its limit (the caller adds
/// the 5 s of slack), plus the reorder wait every span goes through.
pub fn limit_of(config: &LifecycleConfig, kind: &str, step: &str) -> f64 {
    let limit = match kind {
        "stuck" => config
            .index_of(step)
            .and_then(|i| i.checked_sub(1))
            .and_then(|before| config.statuses[before].stuck_after_secs)
            .unwrap_or(0.0),
        "lost_in_transit" => config
            .transits
            .iter()
            .find(|t| t.step == step)
            .map_or(0.0, |t| t.limit_secs),
        "failed_step" => config.retry_grace_secs,
        _ => 0.0,
    };
    limit + config.reorder_secs
}

/// Compares the monitor's detections (via `GET /api/v1/orders/{id}`) with a truth file:
/// returns the mismatches (empty = precision and recall 100 %, every detection within its
/// limit + 5 s). Works on the testbed's truth file as well as on [`fault_run`]'s.
pub async fn compare_with_truth(
    client: &reqwest::Client,
    api: &str,
    token: Option<&str>,
    truth: &str,
    limits: &LifecycleConfig,
) -> Vec<String> {
    let mut problems = Vec::new();
    for line in truth.lines().filter(|l| !l.trim().is_empty()) {
        let order: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = order["order_id"].as_str().unwrap();
        let mut request = client.get(format!("{api}/api/v1/orders/{id}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        if !response.status().is_success() {
            problems.push(format!("{id}: API answered {}", response.status()));
            continue;
        }
        let got: serde_json::Value = response.json().await.unwrap();
        let mut seen: Vec<(String, String, String, u64)> = got["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_string(),
                    d["step"].as_str().unwrap().to_string(),
                    d["service"].as_str().unwrap().to_string(),
                    parse_time(d["at"].as_str().unwrap()),
                )
            })
            .collect();
        for fault in order["faults"].as_array().unwrap() {
            let want = (
                fault["detection"].as_str().unwrap(),
                fault["step"].as_str().unwrap(),
                fault["service"].as_str().unwrap(),
            );
            let at = parse_time(fault["at"].as_str().unwrap());
            match seen
                .iter()
                .position(|(k, s, v, _)| (k.as_str(), s.as_str(), v.as_str()) == want)
            {
                Some(i) => {
                    let (kind, step, _, detected) = seen.remove(i);
                    let late = detected as f64 / 1e9 - at as f64 / 1e9;
                    if late > limit_of(limits, &kind, &step) + 5.0 {
                        problems.push(format!("{id}: {kind} came {late:.1} s after the fault"));
                    }
                }
                None => problems.push(format!("{id}: missed {want:?}")),
            }
        }
        for extra in seen {
            problems.push(format!(
                "{id}: false detection {:?}",
                (extra.0, extra.1, extra.2)
            ));
        }
    }
    problems
}

/// A span as an OpenTelemetry SDK exporter takes it.
pub fn sdk_span(record: &SpanRecord) -> opentelemetry_sdk::trace::SpanData {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let at = |ns: u64| std::time::UNIX_EPOCH + Duration::from_nanos(ns);
    let attributes = record
        .attributes
        .iter()
        .map(|(k, v)| match v {
            AttrValue::Str(s) => opentelemetry::KeyValue::new(k.to_string(), s.clone()),
            AttrValue::Int(i) => opentelemetry::KeyValue::new(k.to_string(), *i),
            AttrValue::Bool(b) => opentelemetry::KeyValue::new(k.to_string(), *b),
            AttrValue::Double(d) => opentelemetry::KeyValue::new(k.to_string(), *d),
        })
        .collect();
    opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(record.trace_id),
            SpanId::from_bytes(record.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: record
            .parent_span_id
            .map(SpanId::from_bytes)
            .unwrap_or(SpanId::INVALID),
        parent_span_is_remote: false,
        span_kind: match record.kind {
            SpanKind::Server => opentelemetry::trace::SpanKind::Server,
            SpanKind::Client => opentelemetry::trace::SpanKind::Client,
            SpanKind::Internal => opentelemetry::trace::SpanKind::Internal,
            SpanKind::Producer => opentelemetry::trace::SpanKind::Producer,
            SpanKind::Consumer => opentelemetry::trace::SpanKind::Consumer,
        },
        name: record.name.clone().into(),
        start_time: at(record.start_unix_nano),
        end_time: at(record.end_unix_nano),
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: match record.status {
            SpanStatus::Error => opentelemetry::trace::Status::error(""),
            _ => opentelemetry::trace::Status::Unset,
        },
        instrumentation_scope: opentelemetry::InstrumentationScope::builder("monitor-test").build(),
    }
}

pub fn service_of(record: &SpanRecord) -> String {
    match record.resource.get("service.name") {
        Some(AttrValue::Str(s)) => s.clone(),
        _ => "unknown".into(),
    }
}

/// Gives each span a distinct id (the walk reuses one) so upstream counts are exact.
pub fn number_spans(spans: &mut [SpanRecord]) {
    for (i, span) in spans.iter_mut().enumerate() {
        span.span_id = ((i as u64) + 1).to_be_bytes();
    }
}
