//! The central monitor's OTLP receivers under a memory attack: many parallel 8 MiB requests
//! of empty spans (`12 00` repeated, ~130× their size once decoded) are refused before they
//! are decoded, and the process's peak RSS stays under the ceiling the README states.

mod monitor_common;

use std::time::Duration;

use monitor_common::process::{Ports, spawn_monitor, wait_healthy};
use monitor_common::*;

/// The ceiling the README's security section states.
const RSS_CEILING_MIB: u64 = 256;
const PARALLEL: usize = 16;

/// 8 MiB: one ResourceSpans holding one ScopeSpans of 4 Mi empty spans.
fn empty_spans_body() -> Vec<u8> {
    fn len_field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2];
        let mut n = payload.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(payload);
        out
    }
    let spans: Vec<u8> = std::iter::repeat_n([0x12u8, 0x00], 4 * 1024 * 1024)
        .flatten()
        .collect();
    len_field(1, &len_field(2, &spans))
}

/// Peak resident set (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_floods_of_empty_spans_are_refused_within_the_memory_ceiling() {
    tracer::process::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("monitor.toml");
    std::fs::write(&config, config_toml(&dir.path().join("m.db"), "")).unwrap();
    let ports = Ports::free();
    let client = reqwest::Client::new();
    let monitor = spawn_monitor(&config, &ports, &[]);
    wait_healthy(&client, &ports.api_url()).await;
    let body = bytes::Bytes::from(empty_spans_body());
    assert_eq!(body.len() / (1024 * 1024), 8);

    let http = (0..PARALLEL).map(|_| {
        let client = client.clone();
        let body = body.clone();
        let url = ports.traces_url();
        tokio::spawn(async move {
            // A request refused before its body is read may see the connection close while
            // it is still sending (status 0 here): refused all the same.
            match client
                .post(url)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
            {
                Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
                Err(_) => (0, true),
            }
        })
    });
    let grpc = (0..PARALLEL / 2).map(|_| {
        let body = body.clone();
        let endpoint = format!("http://{}", ports.grpc);
        tokio::spawn(async move { grpc_export(&endpoint, body).await })
    });
    let http: Vec<_> = futures_join(http.collect()).await;
    let grpc: Vec<_> = futures_join(grpc.collect()).await;
    for (status, retry) in &http {
        // Refused as too large once counted; or, while the budget is taken, told to retry.
        assert!(
            *status == 413 || (matches!(status, 0 | 503) && *retry),
            "HTTP answered {status}"
        );
    }
    assert!(http.iter().any(|(s, _)| *s == 413), "{http:?}");
    // RESOURCE_EXHAUSTED (8) or UNAVAILABLE (14), never OK.
    for code in &grpc {
        assert!(matches!(code, 8 | 14), "gRPC answered status {code}");
    }
    assert!(grpc.contains(&8), "{grpc:?}");
    let peak = peak_rss_mib(monitor.pid());
    eprintln!(
        "monitor peak RSS after {PARALLEL} + {} parallel 8 MiB floods: {peak} MiB",
        PARALLEL / 2
    );
    assert!(peak < RSS_CEILING_MIB, "peak RSS {peak} MiB");
    // Still serving.
    let healthy = walk::walk("SO-AFTER", None, now_ns() - 10 * S);
    let (status, _) =
        monitor_common::process::post_spans(&client, &ports.traces_url(), &healthy).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// One unary gRPC call of TraceService/Export with `body` as the (already encoded) message,
/// over HTTP/2 by hand: a decoded copy of 4 Mi spans would weigh a GiB in the test. A refusal
/// comes back trailers-only, so its `grpc-status` is in the headers.
async fn grpc_export(endpoint: &str, body: bytes::Bytes) -> i32 {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let response = client
        .post(format!(
            "{endpoint}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(framed)
        .send()
        .await;
    let Ok(response) = response else { return 14 };
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}
