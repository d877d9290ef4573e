//! End to end, as root: `tracer run` is killed (`kill -9`) about 8 s into a faulted testbed
//! run and restarted on the same store while the run goes on. Everything it had saved comes
//! back, nothing twice, and its blind time makes no detection: every detection is one the
//! truth file has. Faults whose evidence fell into the downtime may be missed (the monitor
//! could not see them, and counts the gap); those of orders first seen after the restart
//! are all found.

mod monitor_common;
#[path = "support/testbed_run.rs"]
mod testbed_run;
#[path = "support/tracer_run.rs"]
mod tracer_run;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use monitor_common::{get_json, get_metrics, parse_time};
use testbed_run::{Run, free_base_port, free_port, scratch};
use tracer_run::{TracerRun, config, longest_limit};

/// What the API shows of one order: status, first seen, detections by id.
#[derive(Debug, PartialEq)]
struct Seen {
    status: Option<String>,
    first_seen: u64,
    detections: BTreeMap<String, (String, String, String)>,
}

/// The orders the API lists (this run's and any other testbed's beside it).
async fn listed(client: &reqwest::Client, api: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut offset = 0;
    loop {
        let page = get_json(
            client,
            &format!("{api}/api/v1/orders?limit=500&offset={offset}"),
        )
        .await
        .expect("orders list");
        for order in page["items"].as_array().unwrap() {
            let id = order["order_id"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "{id} listed twice");
        }
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => return ids,
        }
    }
}

async fn seen(client: &reqwest::Client, api: &str, id: &str) -> Option<Seen> {
    let order = get_json(client, &format!("{api}/api/v1/orders/{id}")).await?;
    let mut detections = BTreeMap::new();
    for d in order["detections"].as_array()? {
        let field = |k: &str| d[k].as_str().unwrap().to_string();
        let entry = (field("kind"), field("step"), field("service"));
        assert!(
            detections.insert(field("id"), entry).is_none(),
            "{id}: detection {} twice",
            field("id")
        );
    }
    Some(Seen {
        status: order["status"].as_str().map(str::to_string),
        first_seen: parse_time(order["first_seen"].as_str().unwrap()),
        detections,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_and_restart_lose_nothing_saved_and_invent_nothing() {
    let dir = scratch("e2e-restart");
    let base_port = free_base_port();
    let (text, config) = config(&dir, None, base_port, None);
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, text).unwrap();
    let first_port = free_port();
    let first = TracerRun::start(
        &config_path,
        &format!("127.0.0.1:{first_port}"),
        &dir,
        "first.log",
    );
    let run = Run {
        orders: 120,
        rate: 5.0,
        faults: "all=0.05",
        seed: 11,
        base_port,
        dir: &dir,
        tls: false,
    };
    tracer::process::install_crypto_provider();
    let client = reqwest::Client::new();
    let (before, second) = std::thread::scope(|scope| {
        let testbed = scope.spawn(|| run.run());
        let (before, second) = tokio::task::block_in_place(|| {
            // Until about 8 s into the orders (the broker takes a while to start).
            let api = format!("http://127.0.0.1:{first_port}");
            let handle = tokio::runtime::Handle::current();
            let deadline = std::time::Instant::now() + Duration::from_secs(90);
            let mut ids = handle.block_on(listed(&client, &api));
            while ids.len() < 40 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                ids = handle.block_on(listed(&client, &api));
            }
            let before: BTreeMap<String, Seen> = ids
                .into_iter()
                .filter_map(|id| Some((id.clone(), handle.block_on(seen(&client, &api, &id))?)))
                .collect();
            first.kill_hard();
            std::thread::sleep(Duration::from_secs(2));
            let port = free_port();
            let second = TracerRun::start(
                &config_path,
                &format!("127.0.0.1:{port}"),
                &dir,
                "second.log",
            );
            (before, (second, port, monitor_common::now_ns()))
        });
        testbed.join().expect("testbed run");
        (before, second)
    });
    let (second, port, watching_again) = second;
    let api = format!("http://127.0.0.1:{port}");
    tokio::time::sleep(longest_limit(&config)).await;

    assert!(!before.is_empty(), "nothing was saved before the kill");
    for (id, was) in &before {
        let now = seen(&client, &api, id)
            .await
            .unwrap_or_else(|| panic!("{id} lost"));
        assert!(
            now.status.is_some() || was.status.is_none(),
            "{id} lost its status {:?}",
            was.status
        );
        for (detection, what) in &was.detections {
            assert_eq!(
                now.detections.get(detection),
                Some(what),
                "{id}: detection {detection} lost or changed"
            );
        }
    }

    // Every detection on this run's orders is one of the truth's faults.
    let truth = std::fs::read_to_string(run.truth()).unwrap();
    let mut wanted: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    let mut got = BTreeSet::new();
    let mut seen_whole = BTreeSet::new();
    for line in truth.lines().filter(|l| !l.trim().is_empty()) {
        let order: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = order["order_id"].as_str().unwrap().to_string();
        for fault in order["faults"].as_array().unwrap() {
            let field = |k: &str| fault[k].as_str().unwrap().to_string();
            wanted.insert((
                id.clone(),
                field("detection"),
                field("step"),
                field("service"),
            ));
        }
        let Some(now) = seen(&client, &api, &id).await else {
            continue;
        };
        // First seen once the monitor watched again: nothing of its walk was missed.
        if now.first_seen > watching_again + 1_000_000_000 {
            seen_whole.insert(id.clone());
        }
        for (kind, step, service) in now.detections.into_values() {
            got.insert((id.clone(), kind, step, service));
        }
    }
    // A hand-over whose receiver was out of sight since the restart (a consumer connection
    // opened before it) cannot tell lost from stuck: `stuck` at the same step stands in.
    let got: BTreeSet<_> = got
        .into_iter()
        .map(|(id, kind, step, service)| {
            let lost = (
                id.clone(),
                "lost_in_transit".to_string(),
                step.clone(),
                service.clone(),
            );
            if kind == "stuck" && wanted.contains(&lost) {
                lost
            } else {
                (id, kind, step, service)
            }
        })
        .collect();
    let false_ones: Vec<_> = got.difference(&wanted).collect();
    let missed: Vec<_> = wanted.difference(&got).collect();
    assert!(
        false_ones.is_empty(),
        "{} false detections after the restart: {false_ones:?}\n--- second run's log tail:\n{}",
        false_ones.len(),
        second.log_tail(30)
    );
    let missed_in_sight: Vec<_> = missed
        .iter()
        .filter(|m| seen_whole.contains(&m.0))
        .collect();
    assert!(
        missed_in_sight.is_empty(),
        "faults of orders seen whole after the restart were missed: {missed_in_sight:?}"
    );
    let in_sight = wanted.iter().filter(|w| seen_whole.contains(&w.0)).count();
    assert!(
        in_sight >= 10,
        "too few faulted orders ran after the restart to tell ({in_sight})"
    );
    eprintln!(
        "{} of {} faults found ({in_sight} of orders seen whole after the restart); missed, their evidence in the downtime: {}",
        got.len(),
        wanted.len(),
        missed.len()
    );
    let metrics = get_metrics(&client, &api).await;
    assert!(
        metrics.contains("order_tracer_evidence_gaps_total{cause=\"monitor_down\"} 1"),
        "the downtime is not counted as a gap:\n{metrics}"
    );
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}
