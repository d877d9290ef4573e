//! Shared by the capture tests: real peer processes (capture_peer.py) and event collection.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tracer::capture::{Capture, CaptureEvent, ConnKey, Direction};

pub const REQ_SEED: u32 = 7;
pub const RESP_SEED: u32 = 13;
/// Generous bound for anything the agent does asynchronously (pickup is within 2 s).
pub const PATIENCE: Duration = Duration::from_secs(15);

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the capture tests load eBPF programs into the kernel: run them as root"
    );
}

/// The bytes capture_peer.py sends: (i * seed + seed) % 251.
pub fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| ((i * seed + seed) % 251) as u8)
        .collect()
}

/// One capture_peer.py process.
pub struct Peer {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Peer {
        Peer::spawn_with("python3", args)
    }

    /// Runs the peer script with another interpreter path (e.g. a renamed link to python3).
    pub fn spawn_with(python: &str, args: &[&str]) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/capture_peer.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs capture_peer.py");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line's words after `word`.
    pub fn expect(&mut self, word: &str) -> Vec<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("peer stdout");
        let mut words = line.split_whitespace().map(str::to_string);
        assert_eq!(words.next().as_deref(), Some(word), "peer said {line:?}");
        words.collect()
    }

    pub fn go(&mut self) {
        writeln!(self.stdin, "go").expect("peer stdin");
        self.stdin.flush().expect("peer stdin");
    }

    pub fn wait_success(&mut self) {
        let status = self.child.wait().expect("peer exits");
        assert!(status.success(), "peer {} failed: {status}", self.pid());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Receives events until `done` holds for everything received so far, or `PATIENCE` ends.
pub async fn collect_until(
    capture: &mut Capture,
    events: &mut Vec<CaptureEvent>,
    done: impl Fn(&[CaptureEvent]) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !done(events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, capture.recv()).await {
            Ok(Some(batch)) => events.extend(batch),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Runs blocking peer work on another thread while receiving events (a consumer that stops
/// reading loses events, by design), then keeps receiving until `done` holds.
pub async fn exchange<R: Send + 'static>(
    capture: &mut Capture,
    events: &mut Vec<CaptureEvent>,
    work: impl FnOnce() -> R + Send + 'static,
    done: impl Fn(&[CaptureEvent]) -> bool,
) -> R {
    let mut task = tokio::task::spawn_blocking(work);
    let result = loop {
        tokio::select! {
            result = &mut task => break result.expect("peer work panicked"),
            batch = capture.recv() => events.extend(batch.expect("capture running")),
        }
    };
    collect_until(capture, events, done).await;
    result
}

/// Receives until no batch arrives for a while.
pub async fn drain(capture: &mut Capture, events: &mut Vec<CaptureEvent>) {
    while let Ok(Some(batch)) =
        tokio::time::timeout(Duration::from_millis(300), capture.recv()).await
    {
        events.extend(batch);
    }
}

/// Waits until the capture traces `n` processes.
pub async fn wait_targets(capture: &mut Capture, events: &mut Vec<CaptureEvent>, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while capture.counters().targets < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} targets picked up",
            capture.counters().targets
        );
        if let Ok(Some(batch)) =
            tokio::time::timeout(Duration::from_millis(50), capture.recv()).await
        {
            events.extend(batch);
        }
    }
}

/// Bytes of one direction of one connection, in capture order; also checks that nothing
/// was cut (every chunk complete).
pub fn stream(events: &[CaptureEvent], conn: ConnKey, direction: Direction) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        if let CaptureEvent::Data(d) = event
            && d.conn == conn
            && d.direction == direction
        {
            assert_eq!(d.payload.len() as u64, d.len, "chunk cut at the cap");
            out.extend_from_slice(&d.payload);
        }
    }
    out
}

/// The connections `pid` opened or accepted, as announced by open events.
pub fn opens(events: &[CaptureEvent], pid: u32) -> Vec<&tracer::capture::event::ConnOpen> {
    events
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::Open(o) if o.conn.pid == pid => Some(o),
            _ => None,
        })
        .collect()
}

pub fn closed(events: &[CaptureEvent], conn: ConnKey) -> bool {
    events
        .iter()
        .any(|e| matches!(e, CaptureEvent::Close(c) if c.conn == conn))
}

pub fn pids(events: &[CaptureEvent]) -> Vec<u32> {
    let mut pids: Vec<u32> = events.iter().map(|e| e.conn().pid).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}
