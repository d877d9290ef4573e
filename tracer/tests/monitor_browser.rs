//! The built-in page in a real headless browser (Debian's `chromium`) against a running
//! monitor: the order search shows the timeline, the open detections are listed.

mod monitor_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use monitor_common::*;

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
        .expect("the browser test needs Chromium: apt-get install -y chromium")
}

/// Runs headless Chromium on `url` with `extra` (e.g. `--dump-dom`); returns stdout.
fn headless(url: &str, profile: &Path, extra: &[&str]) -> String {
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            // Lets the page's fetches finish before the DOM is dumped or the shot is taken.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_an_orders_timeline_and_the_open_detections() {
    let browser = chromium();
    let dir = tempfile::tempdir().unwrap();
    let (monitor, api) = start_monitor(config(&dir.path().join("m.db"), ""), true).await;
    let base = now_ns() - 30 * S;
    let mut spans = walk::hung_pair("SO-B-hung", "SO-B-dup", base);
    spans.extend(walk::walk("SO-B-lost", Some("priced_order_dropped"), base));
    for span in spans {
        assert!(monitor.span_sink().send(span));
    }
    let client = reqwest::Client::new();
    wait_for(Duration::from_secs(10), "three open detections", || async {
        let v: serde_json::Value =
            get_json(&client, &format!("{api}/api/v1/detections?open=true")).await?;
        (v["items"].as_array()?.len() == 2 && {
            let dup: serde_json::Value =
                get_json(&client, &format!("{api}/api/v1/orders/SO-B-dup")).await?;
            dup["status"] == "CLOSED"
        })
        .then_some(())
    })
    .await;

    let profile = dir.path().join("profile");
    let dom = headless(&format!("{api}/#SO-B-dup"), &profile, &["--dump-dom"]);
    assert!(
        dom.contains(r#"<strong id="order-shown">SO-B-dup</strong>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<span class="status" id="order-status">CLOSED</span>"#),
        "{dom}"
    );
    let timeline = dom.split(r#"<ol class="timeline">"#).nth(1).unwrap_or("");
    let timeline = timeline.split("</ol>").next().unwrap_or("");
    assert_eq!(timeline.matches("<li>").count(), 10, "{timeline}");
    assert!(
        dom.contains("possible_duplicate"),
        "the order's own detection is shown"
    );
    // The open detections table lists the stuck and the lost order, linking to them.
    let listed = headless(&format!("{api}/#detections"), &profile, &["--dump-dom"]);
    let table = listed
        .split(r#"<table id="detections">"#)
        .nth(1)
        .unwrap_or("");
    assert!(
        table.contains(r##"href="#order/SO-B-hung""##) && table.contains(">stuck<"),
        "{table}"
    );
    assert!(
        table.contains(r##"href="#order/SO-B-lost""##) && table.contains(">lost_in_transit<"),
        "{table}"
    );
    assert!(
        !dom.contains(r#"<p id="error" role="alert">4"#),
        "no API error shown"
    );

    // A screenshot, for a human to look at.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor-page.png");
    headless(
        &format!("{api}/#SO-B-dup"),
        &profile,
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot at {}",
        shot.display()
    );
    eprintln!(
        "page screenshot: {} (browser {})",
        shot.display(),
        browser.display()
    );
    monitor.shutdown();
}
