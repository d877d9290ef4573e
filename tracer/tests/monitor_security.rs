//! The API as an attacker meets it: tokens not yet valid, the scheme's spelling, what a
//! refusal tells, DNS rebinding against the anonymous demo mode, and an audit log that holds
//! (decoded the way the handler decodes, append-only, fail closed, bounded for refusals).

mod monitor_common;

use std::time::Duration;

use monitor_common::idp::*;
use monitor_common::*;

async fn audit_rows(store: &std::path::Path) -> Vec<(String, String, Option<String>, String)> {
    let conn = rusqlite::Connection::open(store).unwrap();
    let mut stmt = conn
        .prepare("SELECT who, action, order_id, result FROM audit ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_not_yet_valid_are_refused_and_refusals_say_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (idp, jwks) = Idp::new(dir.path());
    let (monitor, api) =
        start_monitor(config(&dir.path().join("m.db"), &auth_toml(&jwks)), false).await;
    let client = reqwest::Client::new();
    let url = format!("{api}/api/v1/detections");
    let now = (now_ns() / S) as i64;
    let early = idp.sign(serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now,
        "nbf": now + 600, "exp": now + 1200, "roles": [ROLE],
    }));
    let expired = idp.token(AUDIENCE, &[ROLE], -600);
    let foreign = idp.token("another-audience", &[ROLE], 300);
    for (what, token) in [
        ("nbf in the future", early),
        ("expired", expired),
        ("wrong audience", foreign),
    ] {
        let refused = client.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{what}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "unauthorized"}),
            "{what}: no details to the client"
        );
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let ok = client
            .get(&url)
            .header("authorization", format!("{scheme} {STATIC_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{scheme}");
    }
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_mode_answers_only_requests_to_a_loopback_name() {
    let dir = tempfile::tempdir().unwrap();
    let (monitor, api) = start_monitor(config(&dir.path().join("m.db"), ""), true).await;
    let port = api.rsplit(':').next().unwrap();
    let client = reqwest::Client::new();
    let url = format!("{api}/api/v1/detections");
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let ok = client.get(&url).header("host", &host).send().await.unwrap();
        assert_eq!(ok.status(), 200, "Host: {host}");
    }
    // A web page on attacker.example whose name was re-bound to 127.0.0.1 (DNS rebinding).
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".into(),
        format!("127.0.0.1.attacker.example:{port}"),
    ] {
        let refused = client.get(&url).header("host", &host).send().await.unwrap();
        assert_eq!(refused.status(), 403, "Host: {host}");
    }
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_names_the_order_the_handler_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("m.db");
    let (monitor, api) = start_monitor(config(&store, ""), true).await;
    let client = reqwest::Client::new();
    for path in [
        "/api/v1/detections?order%5Fid=SO-AUD-1",
        "/api/v1/detections?%6Frder_id=SO-AUD-2",
        "/api/v1/orders/SO%2DAUD%2D3",
    ] {
        let r = client.get(format!("{api}{path}")).send().await.unwrap();
        assert!(
            r.status().is_success() || r.status() == 404,
            "{path}: {}",
            r.status()
        );
    }
    let orders: Vec<_> = audit_rows(&store).await.into_iter().map(|r| r.2).collect();
    for want in ["SO-AUD-1", "SO-AUD-2", "SO-AUD-3"] {
        assert!(
            orders.contains(&Some(want.to_string())),
            "{want} in {orders:?}"
        );
    }
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_are_neither_deleted_nor_changed_and_a_failed_write_refuses_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("m.db");
    let (monitor, api) = start_monitor(config(&store, ""), true).await;
    let client = reqwest::Client::new();
    let url = format!("{api}/api/v1/detections");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let conn = rusqlite::Connection::open(&store).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    for sql in ["DELETE FROM audit", "UPDATE audit SET who = 'nobody'"] {
        let err = conn.execute(sql, []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(audit_rows(&store).await.len(), 1);

    // The store cannot take the audit record: the answer is refused, not sent unlogged.
    conn.execute_batch(
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;",
    )
    .unwrap();
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.unwrap();
    assert!(
        !body.contains("items"),
        "no data without an audit record: {body}"
    );
    conn.execute_batch("DROP TRIGGER no_audit").unwrap();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    monitor.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_malformed_requests_are_audited_bounded_in_size_and_rate() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("m.db");
    let (monitor, api) = start_monitor(config(&store, "[api.auth]\nstatic_tokens = [{ name = \"ci\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }]\n"), false).await;
    let client = reqwest::Client::new();
    // 401 with a 60 KB path.
    let long = "x".repeat(60_000);
    let r = client
        .get(format!("{api}/api/v1/orders/{long}"))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 414), "{}", r.status());
    // 431: a header block larger than the API takes.
    let r = client
        .get(format!("{api}/api/v1/detections"))
        .header("x-filler", "y".repeat(70_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    // 414: a target longer than the API takes.
    let r = client
        .get(format!("{api}/api/v1/detections?q={}", "z".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
    // A flood of refusals.
    for _ in 0..300 {
        let r = client
            .get(format!("{api}/api/v1/detections"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // What went over the rate is counted in one record, within a second or so.
    let rows = wait_for(
        Duration::from_secs(5),
        "the count of unrecorded refusals",
        || async {
            let rows = audit_rows(&store).await;
            rows.iter()
                .any(|r| r.1.contains("not recorded"))
                .then_some(rows)
        },
    )
    .await;
    for status in ["414", "431"] {
        assert!(
            rows.iter().any(|r| r.3 == status),
            "{status} audited: {rows:?}"
        );
    }
    assert!(
        rows.iter().all(|r| r.1.chars().count() <= 300),
        "actions capped in size"
    );
    assert!(
        rows.len() < 200,
        "refusals capped in rate: {} rows",
        rows.len()
    );
    monitor.shutdown();
}

#[test]
fn plain_http_to_other_hosts_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("m.db");
    let refused = |extra: &str, args: &[&str]| {
        let config = dir.path().join("monitor.toml");
        std::fs::write(&config, config_toml(&store, extra)).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(["monitor", "--allow-anonymous-loopback", "--config"])
            .arg(&config)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--otlp-grpc",
                "127.0.0.1:0",
                "--otlp-http",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{extra} {args:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let jwks = "[api.auth.oidc]\nissuer = \"https://idp.example\"\naudience = \"a\"\nrequired_role = \"r\"\njwks_url = \"http://idp.example/certs\"\n";
    for (extra, args, what) in [
        (
            "alert_webhook = \"http://relay.example/hook\"\n",
            &[][..],
            "alert_webhook",
        ),
        (
            "audit_otlp_logs = \"HTTP://logs.example/v1/logs\"\n",
            &[],
            "audit_otlp_logs",
        ),
        (jwks, &[], "jwks_url"),
        (
            "",
            &["--forward-to", "http://jaeger.example:4318/v1/traces"],
            "--forward-to",
        ),
    ] {
        let stderr = refused(extra, args);
        assert!(
            stderr.contains(what) && stderr.contains("[api] insecure = true"),
            "{what}: {stderr}"
        );
    }
}
