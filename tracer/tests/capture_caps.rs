//! Capture caps for real: the kernel copies only the start of each call (as the agent does
//! for services whose rules read heads, or heads and the start of bodies), and the streams
//! stage still makes every exchange of a keep-alive connection out of what was copied, stepping
//! over the bytes it did not get by the declared lengths. Third-party peers: Python's
//! `http.server` answers, curl asks.

mod capture_support;

use std::process::{Command, Stdio};

use capture_support::*;
use tracer::capture::{Capture, CaptureConfig, CaptureEvent, PayloadCaps, TargetSpec};
use tracer::http::Exchange;
use tracer::protocol::Record;
use tracer::streams::{StreamCounters, Streams, StreamsConfig};

/// Bytes copied of each call of the server: a head fits, a body does not.
const CAP: u32 = 300;

/// A keep-alive HTTP/1.1 server: `/len/N` answers N bytes of JSON with a Content-Length,
/// `/chunked/N` the same in 1000-byte chunks, each body one write after the head's.
const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        kind, n = self.path.strip("/").split("/")
        n = int(n)
        body = ('{"order":"SO-7","pad":"' + "x" * max(0, n - 25) + '"}').encode()[:n]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if kind == "chunked":
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i+1000]), body[i:i+1000]) for i in range(0, n, 1000))
            self.wfile.write(out + b"0\r\n\r\n")
        else:
            self.send_header("content-length", str(n))
            self.end_headers()
            self.wfile.write(body)
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Server, u16) {
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut line,
    )
    .expect("server prints its port");
    let port = line.trim().parse().expect("a port");
    (Server(child), port)
}

/// Feeds the captured events of the server through the streams stage.
fn exchanges(events: &[CaptureEvent]) -> (Vec<Exchange>, StreamCounters) {
    let mut streams = Streams::new(StreamsConfig::default());
    let mut out = Vec::new();
    for event in events {
        streams.on_event(event.clone(), &mut out);
    }
    let exchanges = out
        .into_iter()
        .filter_map(|record| match record {
            Record::Http(exchange) => Some(exchange),
            Record::Amqp(_) => None,
        })
        .collect();
    (exchanges, streams.counters().clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_past_the_cap_are_stepped_over_and_every_exchange_is_whole() {
    require_root();
    let (server, port) = start_server();
    let pid = server.0.id();
    let config = CaptureConfig {
        targets: vec![TargetSpec::pid("caps", pid)],
        scan_interval_ms: 200,
        ..CaptureConfig::default()
    };
    let mut capture =
        Capture::start_with_caps(&config, &|_| PayloadCaps::uniform(CAP)).expect("capture starts");
    let mut events = Vec::new();
    wait_targets(&mut capture, &mut events, 1).await;
    // One keep-alive connection: big bodies (cut at the cap), small ones (whole), and a
    // chunked one whose framing is lost inside the bytes not copied.
    let paths = [
        "/len/20000",
        "/len/40",
        "/len/9000",
        "/len/2",
        "/chunked/20000",
        "/len/60",
    ];
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("http://127.0.0.1:{port}{p}"))
        .collect();
    let closed_by_client = move |events: &[CaptureEvent]| {
        events
            .iter()
            .any(|e| matches!(e, CaptureEvent::Close(c) if c.conn.pid == pid))
    };
    exchange(
        &mut capture,
        &mut events,
        move || {
            let status = Command::new("curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-o",
                    "/dev/null",
                    "-o",
                    "/dev/null",
                ])
                .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
                .args(&urls)
                .status()
                .expect("curl runs");
            assert!(status.success(), "curl: {status}");
        },
        closed_by_client,
    )
    .await;
    drain(&mut capture, &mut events).await;
    let kernel = capture.counters();
    assert!(kernel.truncated >= 3, "{kernel:?}");
    assert!(
        events.iter().all(|e| match e {
            CaptureEvent::Data(d) => d.payload.len() <= CAP as usize,
            _ => true,
        }),
        "the kernel copied more than the cap"
    );

    let (exchanges, counters) = exchanges(&events);
    let seen: Vec<(&str, u16, u64, bool)> = exchanges
        .iter()
        .map(|e| {
            let response = e.response.as_ref().expect("answered");
            (
                e.request.head.target.as_str(),
                response.head.status,
                response.body_len,
                response.body_truncated,
            )
        })
        .collect();
    // Content-Length bodies are stepped over by their length: every exchange, in order, with
    // its true body length, cut bodies flagged as cut (never read as JSON).
    let by_length: Vec<_> = seen.iter().filter(|s| s.0.starts_with("/len/")).collect();
    assert_eq!(
        by_length,
        [
            &("/len/20000", 200, 20000, true),
            &("/len/40", 200, 40, false),
            &("/len/9000", 200, 9000, true),
            &("/len/2", 200, 2, false),
            &("/len/60", 200, 60, false),
        ],
        "{seen:?}"
    );
    // The chunked body's framing is lost in the gap: the exchange is still reported (cut),
    // and the next response is found again.
    assert!(
        seen.iter()
            .any(|s| s.0 == "/chunked/20000" && s.1 == 200 && s.3),
        "{seen:?}"
    );
    assert_eq!(counters.http.parse_errors, 0, "{counters:?}");
    assert!(counters.gaps >= 3, "{counters:?}");
    assert_eq!(counters.http.non_http_connections, 0, "{counters:?}");
}
