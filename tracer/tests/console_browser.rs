//! The operator console in a real headless Chromium, driven over WebDriver (Debian's
//! `chromium-driver`) against a running monitor fed a faulted run (every fault row of the
//! testbed plus healthy orders): the board's numbers are the API's, a click on a status lists
//! its orders, the order view draws its bars and links the trace in Jaeger, the detections
//! filter. A screenshot of each view is written under the target directory.

mod monitor_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use monitor_common::*;
use serde_json::{Value, json};

const JAEGER: &str = "http://jaeger.example:16686";

/// chromedriver, started by this test on a free port and stopped by its PID.
struct Driver {
    child: Child,
    url: String,
    client: reqwest::Client,
    session: String,
}

impl Driver {
    async fn start(profile: &Path) -> Self {
        let port = process::free_port().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the console test needs chromedriver: apt-get install -y chromium-driver");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for(Duration::from_secs(20), "chromedriver", || async {
            client.get(format!("{url}/status")).send().await.ok()?;
            Some(())
        })
        .await;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--window-size=1366,900",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let created: Value = client
            .post(format!("{url}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium(), "args": args},
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        Self {
            child,
            url,
            client,
            session,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let request = self.client.request(method.clone(), &url);
        let request = if method == reqwest::Method::GET {
            request
        } else {
            request.json(&body)
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(answer["value"].get("error").is_none(), "{path}: {answer}");
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Runs `script` (a function body) in the page; its return value.
    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Waits until `script` returns something other than null/false.
    async fn until(&self, what: &str, script: &str) -> Value {
        wait_for(Duration::from_secs(15), what, || async {
            let value = self.eval(script).await;
            (!value.is_null() && value != Value::Bool(false)).then_some(value)
        })
        .await
    }

    async fn click(&self, css: &str) {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.len() > 10_000, "a blank screenshot?");
        std::fs::write(path, bytes).unwrap();
        eprintln!("console screenshot: {}", path.display());
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn chromium() -> String {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("the console test needs Chromium: apt-get install -y chromium")
        .to_string()
}

fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_agrees_with_the_api_and_is_usable() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &dir.path().join("m.db"),
        &format!("jaeger_url = \"{JAEGER}\""),
    );
    let (monitor, api) = start_monitor(config, true).await;
    let (spans, truth) = fault_run("SO-C", now_ns() - 30 * S);
    replay(spans, &monitor.span_sink()).await;
    let client = reqwest::Client::new();
    let faults = truth
        .lines()
        .filter(|l| l.contains("\"detection\""))
        .count();
    // Every injected fault detected: the state the console shows is settled.
    wait_for(Duration::from_secs(30), "every fault detected", || async {
        let v = get_json(&client, &format!("{api}/api/v1/detections?limit=100")).await?;
        (v["items"].as_array()?.len() >= faults).then_some(())
    })
    .await;

    let driver = Driver::start(&dir.path().join("profile")).await;
    let shots = shots_dir();

    // Board: each column's numbers are the API's.
    driver.open(&format!("{api}/#board")).await;
    let read_board = "const c = [...document.querySelectorAll('#board .column')]; \
        return c.length === 10 ? c.map(b => [b.dataset.status, Number(b.querySelector('[data-count]').textContent), \
        (b.querySelector('[data-over]') || {textContent: ''}).textContent]) : null;";
    driver.until("the board", read_board).await;
    let board = get_json(&client, &format!("{api}/api/v1/board"))
        .await
        .unwrap();
    let expected: Vec<Value> = board["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let over = c["over_limit"].as_u64().unwrap();
            let label = match (c["stuck_after_secs"].is_null(), over) {
                (true, _) => String::new(),
                (false, 0) => "none late".into(),
                (false, n) => format!("{n} over limit"),
            };
            json!([c["status"], c["orders"], label])
        })
        .collect();
    let shown = driver.eval(read_board).await;
    assert_eq!(shown, Value::Array(expected.clone()), "board vs API");
    let total: u64 = board["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["orders"].as_u64().unwrap())
        .sum();
    assert!(total >= 10, "a faulted run leaves orders on the board");

    // A click on the fullest non-final status lists its orders, longest waiting first.
    let busiest = board["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["stuck_after_secs"].is_null())
        .max_by_key(|c| c["orders"].as_u64())
        .unwrap();
    let status = busiest["status"].as_str().unwrap();
    assert!(busiest["orders"].as_u64().unwrap() > 0);
    driver
        .click(&format!("#board .column[data-status=\"{status}\"]"))
        .await;
    let listed = driver
        .until(
            "the status's orders",
            "const r = [...document.querySelectorAll('#status-table tbody tr td:first-child a')]; \
             return r.length ? r.map(a => a.textContent) : null;",
        )
        .await;
    let orders = get_json(
        &client,
        &format!("{api}/api/v1/orders?waiting=true&status={status}"),
    )
    .await
    .unwrap();
    let ids: Vec<Value> = orders["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].clone())
        .collect();
    assert_eq!(listed, Value::Array(ids.clone()));
    assert_eq!(ids.len() as u64, busiest["orders"].as_u64().unwrap());
    assert_eq!(
        driver.eval("return location.hash;").await,
        json!(format!("#board/{status}")),
        "the place is in the URL"
    );
    driver.screenshot(&shots.join("board.png")).await;

    // The refresh keeps the operator's place: still the same status listed after it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        driver
            .eval("return document.getElementById('status-shown').textContent;")
            .await,
        json!(status)
    );

    // Order view: a bar per status, the detections, the Jaeger link.
    let stuck_order = orders["items"][0]["order_id"].as_str().unwrap().to_string();
    let order = get_json(&client, &format!("{api}/api/v1/orders/{stuck_order}"))
        .await
        .unwrap();
    driver
        .click(&format!("#status-table a[href=\"#order/{stuck_order}\"]"))
        .await;
    let bars = driver
        .until(
            "the order's bars",
            "const b = document.querySelectorAll('ol.timeline li .bar'); return b.length || null;",
        )
        .await;
    assert_eq!(bars, json!(order["history"].as_array().unwrap().len()));
    let link = driver
        .eval("const a = document.getElementById('trace-link'); return a && a.href;")
        .await;
    assert_eq!(
        link,
        json!(format!(
            "{JAEGER}/trace/{}",
            order["trace_id"].as_str().unwrap()
        ))
    );
    assert_eq!(
        driver
            .eval("return document.getElementById('order-status').textContent;")
            .await,
        order["status"]
    );
    // The screenshot shows an order that went far: a bar per status it passed.
    let furthest = board["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|c| !c["stuck_after_secs"].is_null() && c["orders"].as_u64() > Some(0))
        .unwrap();
    let far = get_json(
        &client,
        &format!(
            "{api}/api/v1/orders?waiting=true&status={}",
            furthest["status"].as_str().unwrap()
        ),
    )
    .await
    .unwrap();
    let far_id = far["items"][0]["order_id"].as_str().unwrap();
    let far_order = get_json(&client, &format!("{api}/api/v1/orders/{far_id}"))
        .await
        .unwrap();
    driver.open(&format!("{api}/#order/{far_id}")).await;
    let expected = far_order["history"].as_array().unwrap().len();
    driver
        .until(
            "the far order's bars",
            &format!(
                "return document.getElementById('order-shown')?.textContent === '{far_id}' && \
                 document.querySelectorAll('ol.timeline li .bar').length === {expected} || null;"
            ),
        )
        .await;
    driver.screenshot(&shots.join("order.png")).await;

    // Dwell times: a row of bars per non-final status.
    driver.open(&format!("{api}/#dwell")).await;
    driver
        .until(
            "the dwell bars",
            "return document.querySelectorAll('#dwell .bars').length === 9 || null;",
        )
        .await;
    driver.screenshot(&shots.join("dwell.png")).await;

    // Detections, filtered by keyboard-reachable controls: only the kind chosen.
    driver.open(&format!("{api}/#detections")).await;
    driver
        .until(
            "the detections",
            "return document.querySelectorAll('#detections tbody tr').length || null;",
        )
        .await;
    driver
        .eval("const k = document.getElementById('kind'); k.value = 'stuck'; k.dispatchEvent(new Event('change', {bubbles: true})); return true;")
        .await;
    let kinds = driver
        .until(
            "only stuck ones",
            "const k = [...document.querySelectorAll('#detections tbody .kind')].map(s => s.textContent); \
             return k.length && k.every(x => x === 'stuck') ? k.length : null;",
        )
        .await;
    let stuck = get_json(
        &client,
        &format!("{api}/api/v1/detections?kind=stuck&open=true&limit=25"),
    )
    .await
    .unwrap();
    assert_eq!(kinds, json!(stuck["items"].as_array().unwrap().len()));
    driver.screenshot(&shots.join("detections.png")).await;

    // The keyboard moves between views.
    driver
        .eval("document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'b', bubbles: true})); return true;")
        .await;
    driver
        .until(
            "the board by keyboard",
            "return !document.getElementById('view-board').hidden || null;",
        )
        .await;
    drop(driver);
    monitor.shutdown();
}
