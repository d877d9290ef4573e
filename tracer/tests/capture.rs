//! The kernel capture for real: eBPF loaded into the running kernel (as root), real client
//! and server processes exchanging known bytes through every traced syscall family.

mod capture_support;

use std::net::SocketAddr;

use capture_support::*;
use tracer::capture::{
    Capture, CaptureConfig, CaptureEvent, Direction, Role, TargetSpec, event::ConnOpen,
};

const REQ: usize = 3000;
const RESP: usize = 12000;

struct Pair {
    server: Peer,
    client: Peer,
    port: u16,
    family: &'static str,
    method: &'static str,
}

fn pair(family: &'static str, method: &'static str, sizes: (usize, usize), early: bool) -> Pair {
    let (req, resp) = (sizes.0.to_string(), sizes.1.to_string());
    let early_flag = if early { "1" } else { "0" };
    let mut server = Peer::spawn(&["server", family, method, &req, &resp, early_flag]);
    let port: u16 = server.expect("port")[0].parse().unwrap();
    let mut client = Peer::spawn(&[
        "client",
        family,
        method,
        &port.to_string(),
        &req,
        &resp,
        early_flag,
    ]);
    client.expect("ready");
    Pair {
        server,
        client,
        port,
        family,
        method,
    }
}

impl Pair {
    fn host(&self) -> &'static str {
        if self.family == "4" {
            "127.0.0.1"
        } else {
            "::1"
        }
    }

    fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host().parse().unwrap(), self.port)
    }

    /// Lets both sides run; returns the client's local port.
    fn run(&mut self) -> u16 {
        self.server.go();
        self.client.go();
        let local = self.client.expect("local")[0].parse().unwrap();
        self.client.expect("done");
        self.server.expect("done");
        self.client.wait_success();
        self.server.wait_success();
        local
    }
}

fn config(pids: &[u32]) -> CaptureConfig {
    CaptureConfig {
        targets: pids
            .iter()
            .map(|pid| TargetSpec::pid("test", *pid))
            .collect(),
        scan_interval_ms: 200,
        ..CaptureConfig::default()
    }
}

fn only_open<'a>(events: &'a [CaptureEvent], pid: u32, what: &str) -> &'a ConnOpen {
    let opens = opens(events, pid);
    assert_eq!(
        opens.len(),
        1,
        "{what}: expected one open event, got {opens:?}"
    );
    opens[0]
}

/// Checks one finished exchange: roles, addresses, both directions byte for byte, closes.
fn check_pair(events: &[CaptureEvent], p: &Pair, client_port: u16, sizes: (usize, usize)) {
    let what = format!("IPv{} {}", p.family, p.method);
    let client_addr = SocketAddr::new(p.host().parse().unwrap(), client_port);
    let client = only_open(events, p.client.pid(), &what);
    assert_eq!(client.role, Role::Client, "{what}");
    assert_eq!(client.peer, Some(p.server_addr()), "{what}: client's peer");
    if let Some(local) = client.local {
        assert_eq!(local, client_addr, "{what}: client's local address");
    }
    let server = only_open(events, p.server.pid(), &what);
    assert_eq!(server.role, Role::Server, "{what}");
    assert_eq!(server.peer, Some(client_addr), "{what}: server's peer");
    if let Some(local) = server.local {
        assert_eq!(local, p.server_addr(), "{what}: server's local address");
    }
    let request = pattern(sizes.0, REQ_SEED);
    let response = pattern(sizes.1, RESP_SEED);
    assert!(
        stream(events, client.conn, Direction::Send) == request,
        "{what}: client sent"
    );
    assert!(
        stream(events, server.conn, Direction::Recv) == request,
        "{what}: server received"
    );
    assert!(
        stream(events, server.conn, Direction::Send) == response,
        "{what}: server sent"
    );
    assert!(
        stream(events, client.conn, Direction::Recv) == response,
        "{what}: client received"
    );
    assert!(closed(events, client.conn), "{what}: client close");
    assert!(closed(events, server.conn), "{what}: server close");
}

fn all_closed(pids: &[u32]) -> impl Fn(&[CaptureEvent]) -> bool + '_ {
    move |events| {
        pids.iter().all(|pid| {
            events
                .iter()
                .any(|e| matches!(e, CaptureEvent::Close(c) if c.conn.pid == *pid))
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_syscall_family_both_sides_ipv4_and_ipv6() {
    require_root();
    let mut pairs: Vec<Pair> = ["4", "6"]
        .into_iter()
        .flat_map(|family| {
            ["rw", "send", "msg", "vec"].map(|method| pair(family, method, (REQ, RESP), false))
        })
        .collect();
    let mut bystanders = pair("4", "rw", (REQ, RESP), false);
    let pids: Vec<u32> = pairs
        .iter()
        .flat_map(|p| [p.server.pid(), p.client.pid()])
        .collect();
    let mut capture = Capture::start(&config(&pids)).expect("capture starts");
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, pids.len() as u64).await;

    let (pairs, ports, bystanders) = exchange(
        &mut capture,
        &mut events,
        move || {
            let ports: Vec<u16> = pairs.iter_mut().map(Pair::run).collect();
            bystanders.run();
            (pairs, ports, bystanders)
        },
        all_closed(&pids),
    )
    .await;
    for (p, port) in pairs.iter().zip(ports) {
        check_pair(&events, p, port, (REQ, RESP));
    }
    let seen = capture_support::pids(&events);
    for bystander in [bystanders.server.pid(), bystanders.client.pid()] {
        assert!(
            !seen.contains(&bystander),
            "untargeted pid {bystander} produced events"
        );
    }
    let counters = capture.counters();
    assert_eq!(counters.drops, 0, "{counters:?}");
    assert_eq!(counters.decode_errors, 0, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_open_before_the_agent_are_seeded_with_roles() {
    require_root();
    let mut p = pair("6", "send", (REQ, RESP), true);
    let pids = [p.server.pid(), p.client.pid()];
    let client_port: u16 = p.client.expect("local")[0].parse().unwrap();
    let mut capture = Capture::start(&config(&pids)).expect("capture starts");
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, 2).await;
    let p = exchange(
        &mut capture,
        &mut events,
        move || {
            p.server.go();
            p.client.go();
            p.client.expect("done");
            p.server.expect("done");
            p
        },
        all_closed(&pids),
    )
    .await;
    // Seeded opens carry the local address read from /proc, always.
    let client = only_open(&events, p.client.pid(), "seeded client");
    assert_eq!(client.local.map(|a| a.port()), Some(client_port));
    let server = only_open(&events, p.server.pid(), "seeded server");
    assert_eq!(server.local, Some(p.server_addr()));
    check_pair(&events, &p, client_port, (REQ, RESP));
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_started_later_and_restarted_are_followed() {
    require_root();
    let tag = format!("tag-late-{}", std::process::id());
    let mut capture = Capture::start(&CaptureConfig {
        targets: vec![TargetSpec {
            service: "late".into(),
            exe: None,
            comm: None,
            cmdline: Some(format!("capture_peer\\.py flood .* {tag}$")),
            pid: None,
        }],
        scan_interval_ms: 200,
        ..CaptureConfig::default()
    })
    .expect("capture starts while no target runs");
    let mut events = Vec::new();
    let mut pids = Vec::new();
    for round in 0..2 {
        let mut sink = Peer::spawn(&["sink"]);
        let port = sink.expect("port")[0].clone();
        let mut flood = Peer::spawn(&["flood", &port, "3", &tag]);
        flood.expect("ready");
        wait_targets(&mut capture, &mut events, 1).await;
        let pid = flood.pid();
        pids.push(pid);
        exchange(
            &mut capture,
            &mut events,
            move || {
                flood.go();
                flood.expect("done");
                flood.wait_success();
            },
            all_closed(&[pid]),
        )
        .await;
        let open = only_open(&events, pid, &format!("round {round}"));
        assert_eq!(&*open.service, "late");
        assert_eq!(
            stream(&events, open.conn, Direction::Send),
            b"xxxEND-OF-FLOOD"
        );
        // The exited process is dropped before the next one starts.
        while capture.counters().targets != 0 {
            drain(&mut capture, &mut events).await;
        }
        assert_eq!(sink.expect("done"), Vec::<String>::new());
    }
    assert_ne!(pids[0], pids[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_over_the_cap_keeps_an_exact_prefix_and_the_true_length() {
    require_root();
    let mut p = pair("4", "rw", (5000, 10), false);
    let pids = [p.client.pid()];
    let mut capture = Capture::start(&CaptureConfig {
        payload_cap: 100,
        ..config(&pids)
    })
    .expect("capture starts");
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, 1).await;
    exchange(
        &mut capture,
        &mut events,
        move || p.run(),
        all_closed(&pids),
    )
    .await;
    let open = only_open(&events, pids[0], "capped client");
    let sends: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::Data(d) if d.conn == open.conn && d.direction == Direction::Send => {
                Some(d)
            }
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "one write of 5000 bytes");
    assert_eq!(sends[0].len, 5000);
    assert_eq!(&sends[0].payload[..], &pattern(5000, REQ_SEED)[..100]);
    assert!(
        capture.counters().truncated >= 1,
        "{:?}",
        capture.counters()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_with_more_buffers_than_copied_still_accounts_for_every_byte() {
    require_root();
    let mut sink = Peer::spawn(&["sink"]);
    let port = sink.expect("port")[0].clone();
    let mut peer = Peer::spawn(&["buffers", &port, "11"]);
    peer.expect("ready");
    let pid = peer.pid();
    let mut capture = Capture::start(&config(&[pid])).expect("capture starts");
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, 1).await;
    exchange(
        &mut capture,
        &mut events,
        move || {
            peer.go();
            peer.expect("done");
        },
        all_closed(&[pid]),
    )
    .await;
    let chunks: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::Data(d) if d.conn.pid == pid => Some(d),
            _ => None,
        })
        .collect();
    // One event for the call: the first buffers' bytes in order, the rest counted in `len`.
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    let copied: String = (0..tracer_common::MAX_IOVECS)
        .map(|i| format!("{i}").repeat(10))
        .collect();
    assert_eq!(&chunks[0].payload[..], copied.as_bytes());
    assert_eq!(chunks[0].len, 110);
    assert_eq!(capture.counters().iovecs_cut, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooded_tiny_ring_counts_drops_and_keeps_going() {
    require_root();
    let mut sinks = [Peer::spawn(&["sink"]), Peer::spawn(&["sink"])];
    let ports: Vec<String> = sinks
        .iter_mut()
        .map(|s| s.expect("port")[0].clone())
        .collect();
    let mut flood = Peer::spawn(&["flood", &ports[0], "200000"]);
    let mut after = Peer::spawn(&["flood", &ports[1], "0"]);
    flood.expect("ready");
    after.expect("ready");
    let mut capture = Capture::start(&CaptureConfig {
        ring_buffer_bytes: 64 * 1024,
        ..config(&[flood.pid(), after.pid()])
    })
    .expect("capture starts");
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, 2).await;
    // Nobody reads the capture while the flood runs: the traced program must still finish.
    flood.go();
    flood.expect("done");
    flood.wait_success();
    let counters = capture.counters();
    assert!(counters.ring_full > 0, "{counters:?}");
    assert_eq!(counters.drops, counters.ring_full + counters.queue_full);
    // Drain, then the capture still delivers a new connection's bytes.
    drain(&mut capture, &mut events).await;
    let pid = after.pid();
    exchange(
        &mut capture,
        &mut events,
        move || {
            after.go();
            after.expect("done");
        },
        all_closed(&[pid]),
    )
    .await;
    let open = only_open(&events, pid, "after the flood");
    assert_eq!(stream(&events, open.conn, Direction::Send), b"END-OF-FLOOD");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_lived_program_is_traced_from_its_first_syscall() {
    require_root();
    // A program name no other process has: a link to python3 (the kernel names a process
    // after the file it executed).
    let dir = tempfile::tempdir().unwrap();
    let name = format!("capx{}", std::process::id() % 100_000);
    let python = std::fs::canonicalize(which_python()).unwrap();
    let link = dir.path().join(&name);
    std::os::unix::fs::symlink(&python, &link).unwrap();
    let mut capture = Capture::start(&CaptureConfig {
        targets: vec![TargetSpec::exe("short", &name)],
        ..CaptureConfig::default()
    })
    .expect("capture starts");
    let mut sink = Peer::spawn(&["sink"]);
    let port = sink.expect("port")[0].clone();
    let mut events = Vec::new();
    // Told to go before it even starts: it connects, sends and exits at once, far faster
    // than the one-second /proc scan.
    let mut short = Peer::spawn_with(link.to_str().unwrap(), &["flood", &port, "3"]);
    short.go();
    let pid = short.pid();
    exchange(
        &mut capture,
        &mut events,
        move || {
            short.expect("ready");
            short.expect("done");
            short.wait_success();
        },
        all_closed(&[pid]),
    )
    .await;
    let open = only_open(&events, pid, "short-lived");
    assert_eq!(open.role, Role::Client);
    assert_eq!(&*open.service, "short");
    assert_eq!(
        stream(&events, open.conn, Direction::Send),
        b"xxxEND-OF-FLOOD"
    );
}

/// The interpreter itself (`python3` on PATH may be a wrapper script).
fn which_python() -> std::path::PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().into()
}
