//! `tracer capture` as other tools use it: JSON lines on stdout, counters at exit.

mod capture_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use capture_support::*;
use serde_json::Value;

#[test]
fn json_lines_show_a_client_exchange_and_counters_at_exit() {
    require_root();
    let mut server = Peer::spawn(&["server", "4", "send", "300", "700", "0"]);
    let port = server.expect("port")[0].clone();
    let mut client = Peer::spawn(&["client", "4", "send", &port, "300", "700", "0"]);
    client.expect("ready");
    let pid = client.pid().to_string();
    let mut tracer = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["capture", "--pid", &pid, "--service", "cli-test"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracer runs");
    // The agent says on stderr when it traces the process.
    let stderr = BufReader::new(tracer.stderr.take().unwrap());
    let (said, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let needle = format!("tracing pid {pid} as cli-test");
    loop {
        let line = heard
            .recv_timeout(PATIENCE)
            .expect("tracer picks up the client");
        if line.contains(&needle) {
            break;
        }
    }
    let (lines_tx, lines) = mpsc::channel();
    let stdout = BufReader::new(tracer.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    server.go();
    client.go();
    let local_port: u16 = client.expect("local")[0].parse().unwrap();
    client.expect("done");
    server.expect("done");

    let mut events: Vec<Value> = Vec::new();
    while !events.iter().any(|e| e["kind"] == "close") {
        let line = lines.recv_timeout(PATIENCE).expect("a close line");
        events.push(serde_json::from_str(&line).expect("each line is JSON"));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let last = lines.recv_timeout(PATIENCE).expect("counters line at exit");
    let counters: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(counters["kind"], "counters", "{last}");
    assert_eq!(counters["drops"], 0, "{last}");
    assert!(counters["data_events"].as_u64().unwrap() >= 2, "{last}");
    let status = tracer.wait().unwrap();
    assert!(status.success(), "{status}");

    let peer = format!("127.0.0.1:{port}");
    let open = &events[0];
    assert_eq!(open["kind"], "open");
    assert_eq!(open["pid"], client.pid());
    assert_eq!(open["service"], "cli-test");
    assert_eq!(open["role"], "client");
    assert_eq!(open["peer"], peer.as_str());
    let conn = open["conn"].clone();
    assert!(conn.as_u64().is_some());
    if !open["local"].is_null() {
        assert_eq!(open["local"], format!("127.0.0.1:{local_port}").as_str());
    }
    assert!(open["ts_ns"].as_u64().is_some());
    let data: Vec<&Value> = events.iter().filter(|e| e["kind"] == "data").collect();
    let total = |direction: &str| -> u64 {
        data.iter()
            .filter(|e| e["direction"] == direction)
            .map(|e| {
                assert_eq!(e["conn"], conn);
                assert_eq!(e["role"], "client");
                assert_eq!(e["peer"], peer.as_str());
                assert_eq!(e["len"], e["captured"]);
                assert!(e["payload"].is_string());
                e["captured"].as_u64().unwrap()
            })
            .sum()
    };
    assert_eq!(total("send"), 300);
    assert_eq!(total("recv"), 700);
    let close = events.last().unwrap();
    assert_eq!(close["conn"], conn);
    assert_eq!(close["role"], "client");
}

/// Runs `tracer capture` through `wrapper`, kills it once `until` shows on stderr (or it
/// exits), and returns (stderr, exit success).
fn tracer_stderr(wrapper: &[&str], until: &str) -> (String, bool) {
    let mut child = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrapper runs");
    let mut seen = String::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(until) {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
    }
    let status = child.wait().unwrap();
    (seen, status.success())
}

#[test]
fn without_privileges_the_error_says_what_to_do() {
    require_root();
    let (stderr, ok) = tracer_stderr(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            env!("CARGO_BIN_EXE_tracer"),
            "capture",
            "--pid",
            "1",
        ],
        "never printed",
    );
    assert!(!ok);
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("run as root"),
        "{stderr}"
    );
}

#[test]
fn tracefs_is_mounted_when_missing() {
    require_root();
    // A private mount namespace: the machine's own tracefs stays mounted.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         test -e /sys/kernel/tracing/events && exit 3; exec {} capture --pid 4194303",
        env!("CARGO_BIN_EXE_tracer")
    );
    let (stderr, ok) = tracer_stderr(
        &["unshare", "-m", "sh", "-c", &script],
        "waiting for target",
    );
    assert!(stderr.contains("mounted tracefs"), "{stderr}");
    assert!(
        stderr.contains("waiting for target pid-4194303"),
        "{stderr}"
    );
    assert!(ok, "{stderr}");
}
