//! `cargo xtask bench`: the tracer's cost, measured side by side in one run, each figure
//! against its target (issue 9's table).
//!
//! Every phase runs as a pair, without then with the agent (A B), and the pairs repeat
//! (A B A B …); figures are medians over rounds. Shapes:
//! - shared: the MES stand-in, wrk and the agent share every CPU (saturation and a fixed
//!   rate): throughput, latency, the agent's CPU per exchange, completeness, kernel cost;
//! - pinned: the MES alone on CPU 0, wrk and the agent on CPU 1: the MES's own CPU time per
//!   request, which is what tracing costs the traced service, at one fixed rate both phases
//!   reach (at saturation the traced phase serves fewer requests, each paying more for the
//!   wake-ups and polls a busier server shares across requests) and at saturation;
//! - untargeted: a syscall loop in this process (never a target) with and without the agent;
//! - memory: the agent's peak RSS with many connections open;
//! - the criterion bench of the pipeline (recorded events → spans, one core).

mod kernel;
mod load;
mod procs;
mod report;

use std::path::Path;

use anyhow::{Context, Result};

use kernel::{BpfStats, ProgramStats, Syscall};
use load::{ORDER, Wrk, WrkResult};
use procs::{Agent, Counters, Mes};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 6)]
    duration: u64,
    /// Rounds of (untraced, traced) phase pairs; the figures are medians over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections at saturation.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Target request rate of the fixed-rate phases (requests/s).
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Request rate of the pinned shape's fixed-rate phases (requests/s).
    #[arg(long, default_value_t = 10_000)]
    pinned_rate: u32,
    /// Connections held open for the agent's memory figure.
    #[arg(long, default_value_t = 10_000)]
    open_connections: u32,
    /// Skip the criterion pipeline bench.
    #[arg(long)]
    skip_pipeline: bool,
}

/// The CPU the traced service gets to itself in the pinned shape, and the one wrk and the
/// agent share.
const SERVICE_CPU: usize = 0;
const LOAD_CPU: usize = 1;
/// wrk has no rate option: the fixed-rate phases use this many connections, each waiting
/// between requests.
const FIXED_CONNECTIONS: u32 = 20;

/// Untraced and traced results of one kind of phase, one entry per round.
pub struct Pair<T> {
    pub untraced: Vec<T>,
    pub traced: Vec<T>,
}

impl<T> Default for Pair<T> {
    fn default() -> Self {
        Pair {
            untraced: Vec::new(),
            traced: Vec::new(),
        }
    }
}

/// What one traced phase told about the agent.
pub struct AgentRun {
    /// CPU seconds the agent used during the load.
    pub cpu_seconds: f64,
    /// Requests wrk completed.
    pub requests: u64,
    pub counters: Counters,
    /// The agent's programs, totals since load (it is started for the phase).
    pub programs: Vec<ProgramStats>,
}

/// The pinned shape's figure: the service's CPU time per request served.
#[derive(Clone, Copy)]
pub struct ServiceCpu {
    pub requests: u64,
    pub ns_per_request: f64,
}

pub struct Results {
    pub saturation: Pair<WrkResult>,
    pub fixed: Pair<WrkResult>,
    pub pinned: Pair<ServiceCpu>,
    pub pinned_fixed: Pair<ServiceCpu>,
    pub untargeted: Pair<(f64, f64)>,
    /// Traced saturation phases.
    pub agent_runs: Vec<AgentRun>,
    pub peak_rss_kib: u64,
    /// Of the peak RSS, the ring buffer's mapping.
    pub ring_rss_kib: u64,
    pub pipeline_us_per_exchange: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::prereqs::ensure(crate::prereqs::Needs::bench())?;
    crate::prereqs::require_root("the agent loads eBPF programs")?;
    load::raise_fd_limit(args.open_connections)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(
        cpus >= 2,
        "the bench pins the service and the load to different CPUs: it needs at least 2"
    );
    crate::build(true)?;
    let bin = crate::process::target_dir().join("release");
    let work = procs::tempdir()?;
    let results = measure(&args, &bin, &work);
    let _ = std::fs::remove_dir_all(&work);
    let mut results = results?;
    if !args.skip_pipeline {
        eprintln!("bench: pipeline throughput (criterion, recorded events → spans, one core)");
        crate::process::cargo(&["bench", "-p", "tracer", "--bench", "pipeline"])?;
        results.pipeline_us_per_exchange = report::criterion_us_per_exchange();
    }
    report::print(&args, &results);
    Ok(())
}

fn measure(args: &BenchArgs, bin: &Path, work: &Path) -> Result<Results> {
    let shared = Mes::start(bin, work, None)?;
    let pinned = Mes::start(bin, work, Some(SERVICE_CPU))?;
    for mes in [&shared, &pinned] {
        load::seed_order(mes.port)?;
    }
    let url = |mes: &Mes| format!("http://127.0.0.1:{}/mes/api/work-orders/{ORDER}", mes.port);
    let (shared_url, pinned_url) = (url(&shared), url(&pinned));
    let fixed_script = rate_script(work, "fixed-rate.lua", args.rate)?;
    let pinned_script = rate_script(work, "pinned-rate.lua", args.pinned_rate)?;
    let saturation_load = Wrk {
        url: &shared_url,
        threads: 2,
        connections: args.connections,
        seconds: args.duration,
        script: None,
        cpu: None,
    };
    let fixed_load = Wrk {
        connections: FIXED_CONNECTIONS,
        script: Some(&fixed_script),
        ..saturation_load
    };
    let pinned_load = Wrk {
        url: &pinned_url,
        threads: 1,
        connections: 16,
        cpu: Some(LOAD_CPU),
        ..saturation_load
    };
    let pinned_fixed_load = Wrk {
        connections: FIXED_CONNECTIONS,
        script: Some(&pinned_script),
        ..pinned_load
    };
    let config_for = |mes: &Mes, name: &str| -> Result<std::path::PathBuf> {
        let path = work.join(name);
        std::fs::write(&path, agent_config(mes.pid()))?;
        Ok(path)
    };
    let shared_config = config_for(&shared, "shared.toml")?;
    let pinned_config = config_for(&pinned, "pinned.toml")?;

    let mut results = Results {
        saturation: Pair::default(),
        fixed: Pair::default(),
        pinned: Pair::default(),
        pinned_fixed: Pair::default(),
        untargeted: Pair::default(),
        agent_runs: Vec::new(),
        peak_rss_kib: 0,
        ring_rss_kib: 0,
        pipeline_us_per_exchange: None,
    };
    for round in 0..args.rounds {
        eprintln!("bench: round {} of {}", round + 1, args.rounds);
        results.saturation.untraced.push(saturation_load.run()?);
        // Run-time statistics only here: they add two clock reads to every program run,
        // which the other phases' figures should not carry.
        let stats = BpfStats::enable()?;
        let agent = Agent::start(bin, &shared_config, work, None)?;
        let cpu_before = agent.cpu_seconds()?;
        let traced = saturation_load.run()?;
        let cpu_seconds = agent.cpu_seconds()? - cpu_before;
        let programs = kernel::programs(&agent.program_ids());
        drop(stats);
        results.agent_runs.push(AgentRun {
            cpu_seconds,
            requests: traced.requests,
            counters: agent.stop()?,
            programs,
        });
        results.saturation.traced.push(traced);

        results.fixed.untraced.push(fixed_load.run()?);
        let agent = Agent::start(bin, &shared_config, work, None)?;
        results.fixed.traced.push(fixed_load.run()?);
        agent.stop()?;

        for (pair, load) in [
            (&mut results.pinned_fixed, &pinned_fixed_load),
            (&mut results.pinned, &pinned_load),
        ] {
            pair.untraced.push(service_cpu(&pinned, load)?);
            let agent = Agent::start(bin, &pinned_config, work, Some(LOAD_CPU))?;
            pair.traced.push(service_cpu(&pinned, load)?);
            agent.stop()?;
        }

        results.untargeted.untraced.push(untargeted()?);
        let agent = Agent::start(bin, &shared_config, work, None)?;
        results.untargeted.traced.push(untargeted()?);
        agent.stop()?;
    }

    eprintln!(
        "bench: agent memory with {} open connections",
        args.open_connections
    );
    let agent = Agent::start(bin, &shared_config, work, None)?;
    (results.peak_rss_kib, results.ring_rss_kib) =
        load::hold_connections(args.open_connections, shared.port, || {
            Ok((agent.peak_rss_kib()?, agent.map_rss_kib()?))
        })?;
    agent.stop()?;
    Ok(results)
}

/// A wrk script holding each of `FIXED_CONNECTIONS` connections to its share of `rate`
/// (wrk's delay is in whole milliseconds).
fn rate_script(work: &Path, name: &str, rate: u32) -> Result<std::path::PathBuf> {
    let path = work.join(name);
    let delay_ms = (f64::from(FIXED_CONNECTIONS) * 1000.0 / f64::from(rate)).max(1.0);
    std::fs::write(
        &path,
        format!("function delay()\n  return {delay_ms:.0}\nend\n"),
    )?;
    Ok(path)
}

/// The pinned MES's CPU time per request over one load phase.
fn service_cpu(mes: &Mes, load: &Wrk) -> Result<ServiceCpu> {
    let before = mes.cpu_ns()?;
    let result = load.run()?;
    let used = mes.cpu_ns()? - before;
    Ok(ServiceCpu {
        requests: result.requests,
        ns_per_request: used as f64 / result.requests.max(1) as f64,
    })
}

/// ns per hooked call and per unhooked call of this (untraced) process.
fn untargeted() -> Result<(f64, f64)> {
    Ok((
        kernel::syscall_ns(Syscall::HookedWrite)?,
        kernel::syscall_ns(Syscall::Unhooked)?,
    ))
}

/// The testbed's rules, tracing one MES process, exporting nowhere: the bench measures capture
/// and the pipeline, not a collector.
fn agent_config(pid: u32) -> String {
    let testbed = include_str!("../../../deploy/config/testbed.toml");
    let without_targets = strip_capture_targets(testbed);
    format!("{without_targets}\n[[capture.target]]\nservice = \"mes-api\"\npid = {pid}\n")
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

/// Figures from the same file the criterion bench writes its estimates to.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_config_traces_one_pid_and_keeps_the_rules() {
        let config = agent_config(4242);
        assert_eq!(config.matches("[[capture.target]]").count(), 1);
        assert!(config.contains("pid = 4242"));
        assert!(config.contains("name = \"mes.lookup\""));
    }
}
