//! `tracer run` with the testbed config, as the contract gives it: anonymous access for
//! local callers only with the flag, and the flag refuses a non-loopback address.

mod monitor_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use monitor_common::wait_for;

const TESTBED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/testbed.toml");

fn tracer_run(args: &[&str], store: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tracer"));
    command
        .args(["run", "--config", TESTBED_CONFIG, "--store"])
        .arg(store)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn run_serves_the_api_to_local_callers_with_the_anonymous_flag() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("run.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tracer_run(&["--listen", &listen, "--allow-anonymous-loopback"], &store)
        .spawn()
        .unwrap();
    tracer::process::install_crypto_provider();
    let client = reqwest::Client::new();
    let body = wait_for(Duration::from_secs(20), "tracer run API", || async {
        let r = client
            .get(format!("http://{listen}/api/v1/detections?open=true"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<serde_json::Value>().await.ok()
    })
    .await;
    assert_eq!(body["items"], serde_json::json!([]));
    let missing = client
        .get(format!("http://{listen}/api/v1/orders/SO-none"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(store.exists(), "the store file was created");
}

#[test]
fn anonymous_flag_refuses_a_non_loopback_address_and_no_auth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("run.db");
    let refused = tracer_run(
        &["--listen", "0.0.0.0:18499", "--allow-anonymous-loopback"],
        &store,
    )
    .output()
    .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");

    let no_auth = tracer_run(&["--listen", "127.0.0.1:18499"], &store)
        .output()
        .unwrap();
    assert!(!no_auth.status.success());
    let stderr = String::from_utf8_lossy(&no_auth.stderr);
    assert!(stderr.contains("[api.auth]"), "{stderr}");
}
