//! TLS plaintext for real: the kernel's uprobes on the system OpenSSL, with third-party
//! peers on both sides — curl, and Python's `ssl` module (a threaded keep-alive server, a
//! client pipelining two requests per record and reading in small pieces). What the capture hands over is the plaintext, byte for byte, on the right
//! connection, both sides; the ciphertext never shows up.

mod capture_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use capture_support::*;
use tracer::capture::{Capture, CaptureConfig, CaptureEvent, ConnKey, Direction, TargetSpec};
use tracer::protocol::Record;
use tracer::streams::{Streams, StreamsConfig};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/capture_tls_peer.py");

/// A temp dir with a throwaway certificate, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("tracer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .current_dir(&dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl req: {status}");
        Dir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped by its PID when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(targets: Vec<TargetSpec>) -> CaptureConfig {
    CaptureConfig {
        targets,
        scan_interval_ms: 200,
        ..CaptureConfig::default()
    }
}

/// Per connection and direction: the plaintext (TLS events; `None` where a call was longer
/// than the capture cap) and the bytes of other events (ciphertext).
#[derive(Default, Debug)]
struct Bytes {
    plain: Vec<Option<u8>>,
    cipher: usize,
}

impl Bytes {
    /// All of it, when nothing was cut.
    fn whole(&self) -> Option<Vec<u8>> {
        self.plain.iter().copied().collect()
    }

    /// Both hold the same bytes where both were copied.
    fn agrees_with(&self, other: &Bytes) -> bool {
        self.plain.len() == other.plain.len()
            && self
                .plain
                .iter()
                .zip(&other.plain)
                .all(|(a, b)| a.is_none() || b.is_none() || a == b)
    }
}

fn per_conn(events: &[CaptureEvent]) -> BTreeMap<(ConnKey, bool), Bytes> {
    let mut out: BTreeMap<(ConnKey, bool), Bytes> = BTreeMap::new();
    for event in events {
        if let CaptureEvent::Data(d) = event {
            let slot = out
                .entry((d.conn, d.direction == Direction::Send))
                .or_default();
            if d.tls {
                slot.plain.extend(d.payload.iter().copied().map(Some));
                let cut = d.len as usize - d.payload.len();
                slot.plain.extend(std::iter::repeat_n(None, cut));
            } else {
                slot.cipher += d.payload.len();
            }
        }
    }
    out
}

async fn wait_tls_targets(capture: &mut Capture, events: &mut Vec<CaptureEvent>, n: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while capture.counters().tls_targets < n {
        assert!(
            std::time::Instant::now() < deadline,
            "TLS library of {n} targets not attached: {:?}",
            capture.counters()
        );
        if let Ok(Some(batch)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), capture.recv()).await
        {
            events.extend(batch);
        }
    }
}

/// The bodies the peer's `/len/N` answers.
fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// curl (OpenSSL) asks three things on one keep-alive connection of Python's ssl server,
/// one answer far larger than a TLS record: both sides' plaintext, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn curl_and_python_ssl_see_the_same_plaintext_on_both_sides() {
    require_root();
    let dir = Dir::new("tls-curl");
    let (cert, key) = (dir.file("cert.pem"), dir.file("key.pem"));
    let (server, mut out, _stdin) =
        python(&["server", cert.to_str().unwrap(), key.to_str().unwrap()]);
    let port: u16 = line(&mut out)
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .expect("the server's port");
    let server_pid = server.0.id();
    let mut capture = Capture::start(&config(vec![
        TargetSpec::pid("py-server", server_pid),
        TargetSpec::exe("curl", "curl"),
    ]))
    .expect("capture starts");
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, 1).await;
    wait_tls_targets(&mut capture, &mut events, 1).await;
    const SIZES: [usize; 3] = [70_000, 12, 3_000];
    let outs: Vec<PathBuf> = SIZES
        .iter()
        .map(|n| dir.file(&format!("got-{n}")))
        .collect();
    let args: Vec<String> = SIZES
        .iter()
        .zip(&outs)
        .flat_map(|(n, out)| {
            [
                "-o".to_string(),
                out.display().to_string(),
                format!("https://127.0.0.1:{port}/len/{n}"),
            ]
        })
        .collect();
    let curl_pid = exchange(
        &mut capture,
        &mut events,
        move || {
            let mut curl = Command::new("curl")
                .arg("-sfk")
                .args(&args)
                .spawn()
                .expect("curl runs");
            let pid = curl.id();
            let status = curl.wait().expect("curl exits");
            assert!(status.success(), "curl: {status}");
            pid
        },
        |events| {
            events
                .iter()
                .filter(|e| matches!(e, CaptureEvent::Close(_)))
                .count()
                >= 2
        },
    )
    .await;
    drain(&mut capture, &mut events).await;
    for (n, out) in SIZES.iter().zip(&outs) {
        assert_eq!(std::fs::read(out).expect("curl saved it"), body(*n));
    }

    let conns = per_conn(&events);
    let side = |pid: u32, send: bool| -> Vec<&Bytes> {
        conns
            .iter()
            .filter(|((k, s), _)| k.pid == pid && *s == send)
            .map(|(_, b)| b)
            .collect()
    };
    let [client_sent] = side(curl_pid, true)[..] else {
        panic!("curl's one connection: {conns:?}")
    };
    let [client_got] = side(curl_pid, false)[..] else {
        panic!("{conns:?}")
    };
    let [server_got] = side(server_pid, false)[..] else {
        panic!("the server's one connection: {conns:?}")
    };
    let [server_sent] = side(server_pid, true)[..] else {
        panic!("{conns:?}")
    };
    // What curl wrote is what the server read, and the other way round (the server writes
    // the large body in one call, copied up to the cap; curl reads it in pieces, whole).
    let sent = client_sent.whole().expect("curl's requests copied whole");
    let requests = String::from_utf8(sent.clone()).expect("plaintext requests");
    assert!(
        requests.starts_with("GET /len/70000 HTTP/1.1\r\n"),
        "{requests:?}"
    );
    assert_eq!(requests.matches("GET /len/").count(), 3, "{requests:?}");
    assert_eq!(server_got.whole(), Some(sent));
    let answers = client_got.whole().expect("curl's reads copied whole");
    assert!(server_sent.agrees_with(client_got));
    assert!(
        answers.starts_with(b"HTTP/1.0 200 OK\r\n") || answers.starts_with(b"HTTP/1.1 200 OK\r\n")
    );
    assert!(answers.ends_with(&body(3_000)));
    let big = answers
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert_eq!(&answers[big..big + 70_000], &body(70_000)[..]);
    let total: usize = SIZES.iter().sum();
    assert!(answers.len() > total, "{} bytes of answers", answers.len());
    // No ciphertext reached the agent: the handshakes ran inside the hooked calls too.
    for bytes in [client_sent, client_got, server_got, server_sent] {
        assert_eq!(bytes.cipher, 0, "{conns:?}");
    }
    let (seen, counters) = served(&events, server_pid);
    let want: Vec<(String, u16, u64)> = [12u64, 3_000, 70_000]
        .iter()
        .map(|n| (format!("/len/{n}"), 200, *n))
        .collect();
    assert_eq!(seen, want, "{counters}");
}

/// A python ssl peer.
fn python(args: &[&str]) -> (Owned, BufReader<std::process::ChildStdout>, ChildStdin) {
    let mut child = Command::new("python3")
        .arg(PEER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let stdin = child.stdin.take().expect("piped");
    (Owned(child), stdout, stdin)
}

fn line(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("peer output");
    line.trim().to_string()
}

/// Exchanges the streams stage makes of the server's events: (path, status, body length).
fn served(events: &[CaptureEvent], pid: u32) -> (Vec<(String, u16, u64)>, String) {
    let mut streams = Streams::new(StreamsConfig::default());
    let mut out = Vec::new();
    for event in events.iter().filter(|e| e.conn().pid == pid) {
        streams.on_event(event.clone(), &mut out);
    }
    let mut seen: Vec<(String, u16, u64)> = out
        .into_iter()
        .filter_map(|record| match record {
            Record::Http(e) => {
                assert!(e.tls, "an exchange of a TLS connection says so");
                let response = e.response.as_ref()?;
                Some((
                    e.request.head.target.to_string(),
                    response.head.status,
                    response.body_len,
                ))
            }
            Record::Amqp(_) => None,
        })
        .collect();
    seen.sort();
    let counters = streams.counters();
    assert_eq!(counters.http.parse_errors, 0, "{counters:?}");
    assert_eq!(counters.http.non_http_connections, 0, "{counters:?}");
    (seen, format!("{counters:?}"))
}

/// Threads, keep-alive, two requests per TLS record, answers read 100 bytes at a time, a
/// server that loads libssl only after the agent looked at it (dlopen).
#[tokio::test(flavor = "multi_thread")]
async fn python_ssl_keep_alive_threads_buffered_reads_and_late_libssl() {
    require_root();
    let dir = Dir::new("tls-python");
    let (cert, key) = (dir.file("cert.pem"), dir.file("key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // Started after the agent, found by its command line (its own temp dir).
    let target = TargetSpec {
        cmdline: Some(regex::escape(cert)),
        ..TargetSpec::exe("py-server", "python3")
    };
    // The client too: its 100-byte reads are mostly served from OpenSSL's buffer.
    let client = TargetSpec {
        cmdline: Some(r"capture_tls_peer\.py client".into()),
        ..TargetSpec::exe("py-client", "python3")
    };
    let mut capture = Capture::start(&config(vec![target, client])).expect("capture starts");
    let (server, mut out, mut stdin) = python(&["server", cert, key, "--late-ssl"]);
    assert_eq!(line(&mut out), "plain");
    let pid = server.0.id();
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, 1).await;
    // Looked at before libssl is loaded: no TLS library yet.
    let deadline = std::time::Instant::now() + PATIENCE;
    while capture.counters().tls_without_library == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            capture.counters()
        );
        drain(&mut capture, &mut events).await;
    }
    writeln!(stdin, "go").expect("server stdin");
    stdin.flush().expect("server stdin");
    let port: u16 = line(&mut out)
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .expect("the server's port");
    wait_tls_targets(&mut capture, &mut events, 1).await;

    const THREADS: u32 = 4;
    const REQUESTS: u32 = 7;
    // The client becomes a target at a scan (its command line says it is one): it waits for
    // that before its first TLS call. A process picked up inside a TLS call has that call's
    // ciphertext seen as socket bytes (the streams stage drops it when the plaintext starts).
    let (port, threads, requests) = (port.to_string(), THREADS.to_string(), REQUESTS.to_string());
    let (client_process, mut client_out, mut client_in) =
        python(&["client", &port, &threads, &requests, "--wait"]);
    assert_eq!(line(&mut client_out), "ready");
    wait_targets(&mut capture, &mut events, 2).await;
    writeln!(client_in, "go").expect("client stdin");
    client_in.flush().expect("client stdin");
    let work = move || {
        let mut client = client_process;
        let status = client.0.wait().expect("client runs");
        assert!(status.success(), "client: {status}");
        assert_eq!(line(&mut client_out), "ok");
    };
    exchange(&mut capture, &mut events, work, move |events| {
        events
            .iter()
            .filter(|e| matches!(e, CaptureEvent::Close(c) if c.conn.pid == pid))
            .count()
            >= THREADS as usize
    })
    .await;
    drain(&mut capture, &mut events).await;
    let mut want: Vec<(String, u16, u64)> = (0..THREADS)
        .flat_map(|t| (0..REQUESTS).map(move |i| 10 + 1000 * t + i))
        .map(|n| (format!("/len/{n}"), 200, u64::from(n)))
        .collect();
    want.sort();
    let (seen, counters) = served(&events, pid);
    assert_eq!(seen, want, "{counters}");
    let conns = per_conn(&events);
    assert!(conns.values().all(|b| b.cipher == 0), "{conns:?}");
    // Each connection's plaintext is the same on both sides (the client's reads of
    // OpenSSL's buffer found their socket too).
    let whole = |server: bool, send: bool| -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = conns
            .iter()
            .filter(|((k, s), _)| (k.pid == pid) == server && *s == send)
            .map(|(_, b)| b.whole().expect("copied whole"))
            .collect();
        all.sort();
        all
    };
    assert_eq!(whole(true, true).len(), THREADS as usize);
    assert_eq!(whole(true, true), whole(false, false));
    assert_eq!(whole(true, false), whole(false, true));
    assert_eq!(
        capture.counters().tls_no_socket,
        0,
        "{:?}",
        capture.counters()
    );
}
