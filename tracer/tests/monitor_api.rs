//! The operator API against a running monitor: authentication (OIDC tokens from a real
//! Ed25519 key, static tokens), the audit log (store and OTLP logs), detections against a
//! truth file, Alertmanager notifications, TLS, and the alert rules' metric names.

mod monitor_common;

use std::time::Duration;

use monitor_common::idp::*;
use monitor_common::*;
use prost::Message;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_authenticated_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (idp, jwks) = Idp::new(dir.path());
    let (capture, capture_addr) = Capture::start().await;
    let extra = format!(
        "audit_otlp_logs = \"http://{capture_addr}/v1/logs\"\n{}",
        auth_toml(&jwks)
    );
    let (monitor, api) = start_monitor(config(&dir.path().join("m.db"), &extra), false).await;
    for span in walk::walk("SO-A1", None, now_ns() - 10 * S) {
        monitor.span_sink().send(span);
    }
    let client = reqwest::Client::new();
    let order_url = format!("{api}/api/v1/orders/SO-A1");
    wait_for(Duration::from_secs(10), "order SO-A1 closed", || async {
        let r = client
            .get(&order_url)
            .bearer_auth(STATIC_TOKEN)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["status"] == "CLOSED").then_some(())
    })
    .await;

    let cases = [
        ("valid", Some(idp.token(AUDIENCE, &[ROLE], 300)), 200),
        ("missing", None, 401),
        ("expired", Some(idp.token(AUDIENCE, &[ROLE], -600)), 401),
        (
            "wrong audience",
            Some(idp.token("another-app", &[ROLE], 300)),
            401,
        ),
        (
            "wrong role",
            Some(idp.token(AUDIENCE, &["viewer"], 300)),
            403,
        ),
        ("garbage", Some("not.a.jwt".to_string()), 401),
    ];
    for (what, token, want) in &cases {
        let mut request = client.get(&order_url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), *want, "{what} token");
        if *want == 200 {
            let order: serde_json::Value = response.json().await.unwrap();
            assert_eq!(order["order_id"], "SO-A1");
            let history = order["history"].as_array().unwrap();
            assert_eq!(history.len(), 10);
            assert_eq!(history[0]["status"], "INITIATED");
            assert_eq!(history[0]["service"], "shop-api");
            assert!(history[0]["at"].as_str().unwrap().ends_with('Z'));
            assert_eq!(order["detections"], serde_json::json!([]));
        }
    }
    // The page and /metrics are guarded too.
    assert_eq!(
        client.get(format!("{api}/")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        client
            .get(format!("{api}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let metrics = client
        .get(format!("{api}/metrics"))
        .bearer_auth(STATIC_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("order_tracer_orders{status=\"CLOSED\"}")
    );

    let audit: serde_json::Value = client
        .get(format!("{api}/api/v1/audit?limit=100"))
        .bearer_auth(STATIC_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["items"].as_array().unwrap();
    let on_order: Vec<_> = entries
        .iter()
        .filter(|e| e["order_id"] == "SO-A1" && e["action"] == "GET /api/v1/orders/{id}")
        .collect();
    // Every case above, plus the polling with the static token.
    for (_, _, want) in &cases {
        assert!(
            on_order
                .iter()
                .any(|e| e["result"].as_str().and_then(|r| r.parse::<u16>().ok()) == Some(*want)),
            "no audit entry with result {want}: {on_order:?}"
        );
    }
    assert!(
        on_order
            .iter()
            .any(|e| e["who"] == "oidc:alice" && e["result"] == "200")
    );
    assert!(on_order.iter().any(|e| e["who"] == "token:ci"));
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "GET /" && e["result"] == "401")
    );

    // The same records went out as OTLP logs.
    let logs = wait_for(Duration::from_secs(10), "audit OTLP logs", || async {
        let records: Vec<_> = capture
            .bodies("/v1/logs")
            .iter()
            .flat_map(|b| {
                let request = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest::decode(b.clone()).unwrap();
                request.resource_logs.into_iter().flat_map(|r| r.scope_logs).flat_map(|s| s.log_records)
            })
            .collect();
        (records.len() >= cases.len()).then_some(records)
    })
    .await;
    let forbidden = logs.iter().any(|r| {
        r.attributes
            .iter()
            .any(|kv| kv.key == "audit.result" && format!("{:?}", kv.value).contains("\"403\""))
    });
    assert!(forbidden, "the 403 is in the exported audit log");
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_keys_come_from_a_jwks_url() {
    let dir = tempfile::tempdir().unwrap();
    let (idp, jwks) = Idp::new(dir.path());
    let keys = std::fs::read_to_string(&jwks).unwrap();
    let app = axum::Router::new().route("/certs", axum::routing::get(move || async move { keys }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let extra = auth_toml(&jwks).replace(
        &format!("jwks_file = {:?}", jwks.display().to_string()),
        &format!("jwks_url = \"http://{idp_addr}/certs\""),
    );
    assert!(extra.contains("jwks_url"));
    let (monitor, api) = start_monitor(config(&dir.path().join("m.db"), &extra), false).await;
    let client = reqwest::Client::new();
    let url = format!("{api}/api/v1/detections");
    let ok = client
        .get(&url)
        .bearer_auth(idp.token(AUDIENCE, &[ROLE], 300))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let forbidden = client
        .get(&url)
        .bearer_auth(idp.token(AUDIENCE, &[], 300))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_equal_the_truth_and_alert_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let (capture, capture_addr) = Capture::start().await;
    let extra = format!("alert_webhook = \"http://{capture_addr}/alerts\"\n");
    let config = config(&dir.path().join("m.db"), &extra);
    let limits = config.lifecycle.clone();
    let (monitor, api) = start_monitor(config, true).await;
    let (spans, truth) = fault_run("SO-T", now_ns());
    replay(spans, &monitor.span_sink()).await;
    let client = reqwest::Client::new();
    // Every fault order has its detection once the longest limit has passed.
    let expected = truth
        .lines()
        .filter(|l| l.contains("\"detection\""))
        .count();
    let waited = tokio::time::timeout(
        Duration::from_secs(20),
        wait_for(Duration::from_secs(20), "all detections", || async {
            let v: serde_json::Value =
                get_json(&client, &format!("{api}/api/v1/detections?limit=100")).await?;
            (v["items"].as_array()?.len() >= expected).then_some(())
        }),
    )
    .await;
    if waited.is_err() {
        let problems = compare_with_truth(&client, &api, None, &truth, &limits).await;
        panic!("{problems:#?}");
    }
    // Let anything spurious show up too before comparing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let problems = compare_with_truth(&client, &api, None, &truth, &limits).await;
    assert!(problems.is_empty(), "{problems:#?}");

    // Open detections: newest first, paged.
    let first: serde_json::Value = get_json(
        &client,
        &format!("{api}/api/v1/detections?open=true&limit=5"),
    )
    .await
    .unwrap();
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(first["next_offset"], 5);
    let times: Vec<&str> = items.iter().map(|d| d["at"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    assert!(items.iter().all(|d| d["resolved_at"].is_null()));
    let stuck: serde_json::Value = get_json(&client, &format!("{api}/api/v1/stuck"))
        .await
        .unwrap();
    assert_eq!(stuck["items"].as_array().unwrap().len(), 4, "{stuck}");
    let lost: serde_json::Value = get_json(&client, &format!("{api}/api/v1/lost"))
        .await
        .unwrap();
    assert_eq!(lost["items"].as_array().unwrap().len(), 3);
    let closed = get_json(
        &client,
        &format!("{api}/api/v1/orders?status=CLOSED&limit=2"),
    )
    .await
    .unwrap();
    let items = closed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|o| o["status"] == "CLOSED"));
    assert_eq!(
        closed["next_offset"], 2,
        "more closed orders follow: {closed}"
    );
    let bad = client
        .get(format!("{api}/api/v1/detections?kind=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // One "firing" per detection; "resolved" for those the order moved past (the skip and
    // the duplicate, whose orders closed).
    let alerts = wait_for(Duration::from_secs(10), "alerts delivered", || async {
        let alerts = capture.alerts();
        (alerts.len() >= expected + 2).then_some(alerts)
    })
    .await;
    let firing: Vec<_> = alerts
        .iter()
        .filter(|(s, _)| s == "firing")
        .map(|(_, id)| id.clone())
        .collect();
    let mut unique = firing.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(firing.len(), expected);
    assert_eq!(unique.len(), expected, "no detection alerted twice");
    assert_eq!(alerts.iter().filter(|(s, _)| s == "resolved").count(), 2);
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_speaks_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ca, ca_key, csr, cert, key, ext) = (
        path("ca.pem"),
        path("ca.key"),
        path("leaf.csr"),
        path("cert.pem"),
        path("key.pem"),
        path("ext.cnf"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-subj",
                "/CN=test-ca",
                "-days",
                "1",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=localhost", "-keyout", &key, "-out", &csr],
        ]
        .concat(),
    );
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n[api.auth]\nstatic_tokens = [{{ name = \"ci\", sha256 = \"{}\" }}]\n",
        cert,
        key,
        hex::encode(Sha256::digest(STATIC_TOKEN.as_bytes()))
    );
    let (monitor, api) = start_monitor(config(&dir.path().join("m.db"), &extra), false).await;
    let https = api.replace("http://", "https://");
    tracer::process::install_crypto_provider();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let url = format!("{https}/api/v1/detections");
    let response = wait_for(Duration::from_secs(5), "TLS listener", || async {
        client
            .get(&url)
            .bearer_auth(STATIC_TOKEN)
            .send()
            .await
            .map_err(|e| eprintln!("TLS request: {e:?}"))
            .ok()
    })
    .await;
    assert_eq!(response.status(), 200);
    // Plain HTTP gets no API answer.
    let plain = reqwest::Client::new()
        .get(format!("{api}/api/v1/detections"))
        .bearer_auth(STATIC_TOKEN)
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    monitor.shutdown();
}

#[test]
fn alert_rules_only_use_metrics_the_monitor_exposes() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/alerts/order-tracer.rules.yml"
    ))
    .unwrap();
    let metrics = tracer::metrics::Metrics::new();
    metrics.pipeline().add_drops("ring_full", 1);
    // Families appear in the exposition once they have a series.
    let detection = tracer::lifecycle::Detection {
        id: "d".into(),
        order_id: "o".into(),
        kind: tracer::lifecycle::DetectionKind::Stuck,
        step: "CLOSED".into(),
        service: "crm-api".into(),
        at: 0,
        resolved_at: None,
    };
    metrics.observe(&[tracer::lifecycle::Event::Raised(detection)]);
    metrics.count_drop("monitor_queue_full");
    let exposed = metrics.encode();
    let names = regex::Regex::new(r"order_tracer_[a-z_]+").unwrap();
    let mut checked = 0;
    for name in names.find_iter(&rules) {
        let name = name.as_str();
        assert!(
            exposed.lines().any(|l| l.starts_with("# TYPE ") && {
                let family = l.split_whitespace().nth(2).unwrap_or("");
                name == family || name.strip_suffix("_total") == Some(family)
            }),
            "alert rules use {name}, which /metrics does not expose"
        );
        checked += 1;
    }
    assert!(checked >= 8);
}
