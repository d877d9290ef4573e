//! The load: wrk (a third-party HTTP load generator) against the MES, the order it looks up,
//! and the many idle connections of the memory figure.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::procs::pin;
use crate::process::{self, output};

/// The order the bench looks up.
pub const ORDER: &str = "SO-BENCH-1";

/// One wrk run.
pub struct Wrk<'a> {
    pub url: &'a str,
    pub threads: u32,
    pub connections: u32,
    pub seconds: u64,
    /// A Lua script (the fixed-rate delay).
    pub script: Option<&'a Path>,
    pub cpu: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Wrk<'_> {
    pub fn run(&self) -> Result<WrkResult> {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "--latency",
            "-t",
            &self.threads.to_string(),
            "-c",
            &self.connections.to_string(),
            "-d",
            &format!("{}s", self.seconds),
        ]);
        if let Some(script) = self.script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(self.url);
        let text = output(pin(&mut cmd, self.cpu))?;
        parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
    }
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut result = WrkResult {
        requests: 0,
        rps: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
    };
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.rps = rest.trim().parse().ok()?;
        } else if line.contains("requests in") {
            result.requests = line.split_whitespace().next()?.parse().ok()?;
        } else if in_distribution {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("50%"), Some(v)) => result.p50_us = duration_us(v)?,
                (Some("99%"), Some(v)) => {
                    result.p99_us = duration_us(v)?;
                    in_distribution = false;
                }
                _ => {}
            }
        }
    }
    (result.requests > 0).then_some(result)
}

fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number,
        "ms" => number * 1e3,
        "s" => number * 1e6,
        "m" => number * 60e6,
        _ => return None,
    })
}

/// Priced: what the lookup finds (work orders reach the MES through the broker, which the
/// bench does not run; the lookup answers for a priced order all the same).
pub fn seed_order(port: u16) -> Result<()> {
    let body = format!("{{\"orderRef\":\"{ORDER}\",\"model\":{{\"sizeBytes\":1000}}}}");
    process::run(Command::new("curl").args([
        "-sf",
        "-o",
        "/dev/null",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        &format!("http://127.0.0.1:{port}/mes/api/pricing-requests"),
    ]))
}

pub fn wait_http(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if process::works_args("curl", &["-sf", "-o", "/dev/null", url]) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 20 s")
}

/// Opens `n` keep-alive connections to the MES, one request each, and holds them while
/// `measure` runs.
pub fn hold_connections<T>(n: u32, port: u16, measure: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut streams = Vec::with_capacity(n as usize);
    let request = format!("GET /mes/api/work-orders/{ORDER} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n");
    for _ in 0..n {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
            .context("opening bench connections")?;
        s.write_all(request.as_bytes())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf)?;
        streams.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let result = measure();
    drop(streams);
    result
}

/// The client (this process) and the MES (a child, which inherits the limit) each hold one
/// descriptor per bench connection.
pub fn raise_fd_limit(connections: u32) -> Result<()> {
    let wanted = u64::from(connections) + 1024;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("cannot read the open-files limit");
    }
    // Root may raise the hard limit too (up to fs.nr_open).
    limit.rlim_max = limit.rlim_max.max(wanted);
    limit.rlim_cur = limit.rlim_cur.max(wanted);
    // SAFETY: a valid rlimit struct, the soft limit within the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!(
            "cannot raise the open-files limit to the {wanted} that {connections} open \
             connections need: raise `ulimit -Hn` or pass a smaller --open-connections"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let text = "Running 1s test @ http://x\n  1 threads and 2 connections\n  \
                    Latency Distribution\n     50%  120.00us\n     75%  1.00ms\n     \
                    90%  2.00ms\n     99%    1.50ms\n  1234 requests in 1.00s, 1MB read\n\
                    Requests/sec:   1234.00\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 1234);
        assert_eq!((r.p50_us, r.p99_us), (120.0, 1500.0));
        assert_eq!(r.rps, 1234.0);
        assert!(parse_wrk("garbage").is_none());
    }
}
