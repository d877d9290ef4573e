//! `cargo xtask bench`: the tracer's cost, measured side by side in one run.
//!
//! - Overhead on the traced service: the MES stand-in under `wrk` (keep-alive), at saturation
//!   and at a fixed rate, alternately without and with the agent attached.
//! - Agent cost: the agent's CPU seconds per 100k exchanges, and its peak RSS while 10k
//!   connections are open to the traced service.
//! - Completeness: ring-buffer drops and exchanges vs. spans at saturation.
//! - Pipeline throughput: the criterion bench (recorded events → spans, one core).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{self, output, workspace_root};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Rounds of (untraced, traced) phases; the figures are medians over rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// wrk connections at saturation.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Target request rate of the fixed-rate phases (requests/s).
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Connections held open for the agent's memory figure.
    #[arg(long, default_value_t = 10_000)]
    open_connections: u32,
    /// Skip the criterion pipeline bench.
    #[arg(long)]
    skip_pipeline: bool,
}

const MES_PORT: u16 = 19081;
const ORDER: &str = "SO-BENCH-1";

pub fn run(args: BenchArgs) -> Result<()> {
    crate::prereqs::ensure(crate::prereqs::Needs::bench())?;
    crate::prereqs::require_root("the agent loads eBPF programs")?;
    raise_fd_limit(args.open_connections)?;
    crate::build(true)?;
    let bin = workspace_root().join("target/release");
    let work = tempdir()?;
    let config = work.join("bench.toml");
    std::fs::write(&config, agent_config())?;

    let mut mes = Mes::start(&bin, &work)?;
    seed_order()?;

    let url = format!("http://127.0.0.1:{MES_PORT}/mes/api/work-orders/{ORDER}");
    let fixed_script = work.join("fixed-rate.lua");
    // wrk has no rate option: each connection waits `delay` ms between requests.
    let fixed_connections = 20u32;
    let delay_ms = (fixed_connections as f64 * 1000.0 / args.rate as f64).max(1.0);
    std::fs::write(
        &fixed_script,
        format!("function delay()\n  return {delay_ms:.0}\nend\n"),
    )?;

    let mut saturation = Pair::default();
    let mut fixed = Pair::default();
    let mut agent_runs = Vec::new();
    for round in 0..args.rounds {
        eprintln!("bench: round {} of {}", round + 1, args.rounds);
        saturation
            .untraced
            .push(wrk(&url, args.connections, args.duration, None)?);
        fixed.untraced.push(wrk(
            &url,
            fixed_connections,
            args.duration,
            Some(&fixed_script),
        )?);

        let agent = Agent::start(&bin, &config, &work)?;
        let cpu_before = agent.cpu_seconds()?;
        let traced = wrk(&url, args.connections, args.duration, None)?;
        let cpu_after = agent.cpu_seconds()?;
        fixed.traced.push(wrk(
            &url,
            fixed_connections,
            args.duration,
            Some(&fixed_script),
        )?);
        let counters = agent.stop()?;
        agent_runs.push(AgentRun {
            cpu_seconds: cpu_after - cpu_before,
            saturation_requests: traced.requests,
            requests: traced.requests + fixed.traced.last().map_or(0, |r| r.requests),
            counters,
        });
        saturation.traced.push(traced);
    }

    let agent = Agent::start(&bin, &config, &work)?;
    let rss = hold_connections(args.open_connections, &agent)?;
    agent.stop()?;
    mes.stop();

    report(&args, &saturation, &fixed, &agent_runs, rss);
    if !args.skip_pipeline {
        eprintln!("bench: pipeline throughput (criterion, recorded events → spans, one core)");
        process::cargo(&["bench", "-p", "tracer", "--bench", "pipeline"])?;
    }
    Ok(())
}

fn agent_config() -> String {
    // The testbed's rules, tracing only the MES, exporting nowhere: the bench measures capture
    // and the pipeline, not a collector.
    let testbed = include_str!("../../deploy/config/testbed.toml");
    let without_targets = strip_capture_targets(testbed);
    format!("{without_targets}\n[[capture.target]]\nservice = \"mes-api\"\nexe = \"mes-api\"\n")
}

/// Removes the `[[capture.target]]` tables of a config, keeping everything else.
fn strip_capture_targets(config: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in config.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            skipping = trimmed.starts_with("[[capture.target]]");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[derive(Default)]
struct Pair {
    untraced: Vec<WrkResult>,
    traced: Vec<WrkResult>,
}

struct AgentRun {
    /// CPU the agent used during the saturation phase.
    cpu_seconds: f64,
    saturation_requests: u64,
    /// Requests of both traced phases (the agent ran through both).
    requests: u64,
    counters: Counters,
}

#[derive(Clone, Copy, Debug)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn wrk(url: &str, connections: u32, seconds: u64, script: Option<&Path>) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "--latency",
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
    ]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url);
    let text = output(&mut cmd)?;
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
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

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn report(args: &BenchArgs, saturation: &Pair, fixed: &Pair, runs: &[AgentRun], peak_rss_kib: u64) {
    let m = |rs: &[WrkResult], f: fn(&WrkResult) -> f64| median(rs.iter().map(f));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Order Tracer bench — {cpus} CPUs, kernel {}, {} rounds × {} s per phase, medians",
        kernel_release(),
        args.rounds,
        args.duration
    );
    println!();
    println!("| measure | untraced | traced | ratio | target |");
    println!("|---|---|---|---|---|");
    let sat_u = m(&saturation.untraced, |r| r.rps);
    let sat_t = m(&saturation.traced, |r| r.rps);
    println!(
        "| saturation throughput (req/s, {} conns) | {sat_u:.0} | {sat_t:.0} | {:.3} | ≥ 0.98 |",
        args.connections,
        sat_t / sat_u
    );
    for (label, pair, target) in [
        ("saturation", saturation, ""),
        ("fixed rate", fixed, "p99 added ≤ 50 µs"),
    ] {
        for (pct, f) in [
            ("p50", (|r: &WrkResult| r.p50_us) as fn(&WrkResult) -> f64),
            ("p99", |r: &WrkResult| r.p99_us),
        ] {
            let u = m(&pair.untraced, f);
            let t = m(&pair.traced, f);
            let target = if pct == "p99" { target } else { "" };
            println!(
                "| {label} {pct} latency (µs) | {u:.0} | {t:.0} | {:.3} (+{:.0} µs) | {target} |",
                t / u,
                t - u
            );
        }
    }
    let fixed_rps = m(&fixed.traced, |r| r.rps);
    println!(
        "| fixed-rate phases ran at (req/s) | {:.0} | {fixed_rps:.0} | | {} |",
        m(&fixed.untraced, |r| r.rps),
        args.rate
    );
    let cpu_per_100k = median(
        runs.iter()
            .map(|r| r.cpu_seconds / (r.saturation_requests as f64 / 100_000.0)),
    );
    println!("| agent CPU-s per 100k exchanges | | {cpu_per_100k:.3} | | ≤ 0.5 |");
    println!(
        "| agent peak RSS, {} open connections (MiB) | | {:.1} | | ≤ 64 |",
        args.open_connections,
        peak_rss_kib as f64 / 1024.0
    );
    for (i, run) in runs.iter().enumerate() {
        println!(
            "| completeness, round {}: wrk requests → exchanges / spans / ring drops | {} | {} / {} / {} | | drops = 0, all spans |",
            i + 1,
            run.requests,
            run.counters.exchanges,
            run.counters.spans,
            run.counters.ring_full
        );
    }
    println!();
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The MES stand-in, the traced service of the bench.
struct Mes {
    child: Child,
}

impl Mes {
    fn start(bin: &Path, work: &Path) -> Result<Self> {
        let log = std::fs::File::create(work.join("mes-api.log"))?;
        let child = Command::new(bin.join("mes-api"))
            // Every testbed service takes the shop's port as base; the MES listens on base + 1.
            .args(["--base-port", &(MES_PORT - 1).to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start mes-api")?;
        wait_http(&format!("http://127.0.0.1:{MES_PORT}/healthz"))?;
        Ok(Self { child })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The order the bench looks up: priced, then queued as a work order, as the MES knows it.
fn seed_order() -> Result<()> {
    for (path, body) in [
        (
            "pricing-requests",
            format!("{{\"orderRef\":\"{ORDER}\",\"model\":{{\"sizeBytes\":1000}}}}"),
        ),
        (
            "work-orders",
            format!("{{\"workOrder\":{{\"orderRef\":\"{ORDER}\"}}}}"),
        ),
    ] {
        process::run(Command::new("curl").args([
            "-sf",
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            &format!("http://127.0.0.1:{MES_PORT}/mes/api/{path}"),
        ]))?;
    }
    Ok(())
}

fn wait_http(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if process::works_args("curl", &["-sf", "-o", "/dev/null", url]) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 20 s")
}

/// The agent, tracing the MES, exporting nowhere.
struct Agent {
    child: Child,
    stderr_log: PathBuf,
}

impl Agent {
    fn start(bin: &Path, config: &Path, work: &Path) -> Result<Self> {
        let stderr_log = work.join("agent.log");
        let child = Command::new(bin.join("tracer"))
            .args(["agent", "--export", "none", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_log)?)
            .spawn()
            .context("cannot start the agent")?;
        // The agent logs when it starts capturing a target's sockets.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&stderr_log)?.contains("tracing pid") {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not start tracing mes-api within 30 s; see {}",
                    stderr_log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { child, stderr_log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name in parentheses: utime and stime are 14th and 15th.
        let after = stat.rsplit_once(')').context("stat format")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / hz)
    }

    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    /// Stops the agent (SIGINT) and reads the counters it prints on exit.
    fn stop(mut self) -> Result<Counters> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "the agent exited with {status}; see {}",
                self.stderr_log.display()
            );
        }
        let log = std::fs::read_to_string(&self.stderr_log)?;
        Counters::from_log(&log).with_context(|| {
            format!(
                "the agent printed no final counters; see {}",
                self.stderr_log.display()
            )
        })
    }
}

/// Opens `n` keep-alive connections to the MES, one request each, and holds them while the
/// agent's peak RSS is read.
fn hold_connections(n: u32, agent: &Agent) -> Result<u64> {
    let mut streams = Vec::with_capacity(n as usize);
    let request = format!("GET /mes/api/work-orders/{ORDER} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n");
    for _ in 0..n {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", MES_PORT))
            .context("opening bench connections")?;
        s.write_all(request.as_bytes())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf)?;
        streams.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss = agent.peak_rss_kib()?;
    drop(streams);
    Ok(rss)
}

/// The client (this process) and the MES (a child, which inherits the limit) each hold one
/// descriptor per bench connection.
fn raise_fd_limit(connections: u32) -> Result<()> {
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

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("order-tracer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The agent's pipeline counters, from the JSON line it logs on exit.
#[derive(Debug, Default)]
struct Counters {
    exchanges: u64,
    spans: u64,
    ring_full: u64,
}

impl Counters {
    /// Reads the last `{"event":"counters",…}` line of the agent's stderr.
    fn from_log(log: &str) -> Option<Self> {
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("\"event\":\"counters\""))?;
        let json: serde_json::Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
        let number = |pointer: &str| json.pointer(pointer).and_then(serde_json::Value::as_u64);
        Some(Self {
            exchanges: number("/streams/exchanges")?,
            spans: number("/pipeline/spans")?,
            ring_full: number("/capture/ring_full")?,
        })
    }
}
