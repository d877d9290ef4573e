//! The load driver: `testbed serve` starts the services and waits; `testbed run` starts them
//! (unless `--use-running`), walks orders through them with faults, writes the truth file,
//! prints a summary and, with `--check`, compares the truth with the services' state.

mod check;
mod procs;
mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

pub use check::{ServiceStates, expected_states, observe};
pub use walk::{WalkOutcome, Walker};

use crate::faults::FaultSpec;
use crate::net::pooled_client;
use crate::service::{DEFAULT_BASE_PORT, Endpoints, Scheme};
use crate::timings::Timings;
use crate::tls::Pki;
use crate::truth::{TruthRecord, write_truth};
use procs::{Launch, Services, wait_ready};

/// How long the services get to come up (the broker takes 10–30 s).
const STARTUP: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(
    name = "testbed",
    about = "Shop, MES and CRM on loopback, with a load driver and fault injection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the four services and wait (Ctrl-C or SIGTERM stops them).
    Serve(Common),
    /// Walk orders through the services and write what really happened.
    Run(RunArgs),
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// Base port: shop on it, MES +1, CRM +2, queue +3, the queue's broker +4..+6.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
    base_port: u16,
    /// Every traced service appends one JSON line per side of each exchange here
    /// (truncated when the services start).
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Every traced service appends one JSON line per message it publishes or consumes
    /// through the broker here (truncated when the services start).
    #[arg(long)]
    message_log: Option<PathBuf>,
    /// Scales think times and fault timeouts (see testbed/README.md).
    #[arg(long, default_value_t = 1.0)]
    time_factor: f64,
    /// Every service serves HTTPS and calls the others over HTTPS (the system's OpenSSL),
    /// with a throwaway CA made at start; the driver speaks HTTPS too. With `--use-running`,
    /// the CA of the running services is used.
    #[arg(long)]
    tls: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Orders to walk.
    #[arg(long, default_value_t = 100)]
    orders: u64,
    /// New orders per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Fault rates: `kind=rate,…`, `all=rate`, or `none`.
    #[arg(long, default_value = "none")]
    faults: FaultSpec,
    /// Write the truth file (JSON lines) here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Seed of every random choice (faults, sizes, think times); random if absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Drive services that are already running (e.g. under `testbed serve`).
    #[arg(long)]
    use_running: bool,
    /// Afterwards, ask every service about every order and compare with the truth.
    #[arg(long)]
    check: bool,
}

impl Common {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.time_factor > 0.0 && self.time_factor.is_finite(),
            "--time-factor must be a positive number"
        );
        anyhow::ensure!(
            self.base_port <= u16::MAX - crate::service::PORTS_USED,
            "--base-port leaves no room for the seven ports"
        );
        Ok(())
    }

    fn launch<'a>(&'a self, tls: Option<&'a Pki>) -> Launch<'a> {
        Launch {
            base_port: self.base_port,
            request_log: self.request_log.as_deref(),
            message_log: self.message_log.as_deref(),
            time_factor: self.time_factor,
            tls_dir: tls.map(Pki::dir),
        }
    }

    fn endpoints(&self) -> Endpoints {
        Endpoints {
            base_port: self.base_port,
            scheme: if self.tls {
                Scheme::Https
            } else {
                Scheme::Http
            },
        }
    }
}

/// The certificates of a TLS run: made here (and removed at the end) when this process starts
/// the services, else those of the running services.
struct RunPki {
    pki: Pki,
    made_here: bool,
}

impl RunPki {
    fn new(common: &Common, use_running: bool) -> anyhow::Result<Option<Self>> {
        if !common.tls {
            return Ok(None);
        }
        let dir = Pki::dir_for(common.base_port);
        let pki = if use_running {
            Pki::at(dir)
        } else {
            Pki::generate(dir)?
        };
        Ok(Some(RunPki {
            pki,
            made_here: !use_running,
        }))
    }
}

impl Drop for RunPki {
    fn drop(&mut self) {
        if self.made_here {
            self.pki.remove();
        }
    }
}

/// `main` of the `testbed` executable.
pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let (common, run) = match cli.command {
        Command::Serve(common) => (common, None),
        Command::Run(run) => (run.common.clone(), Some(run)),
    };
    common.validate()?;
    if let Some(run) = &run {
        anyhow::ensure!(
            run.rate > 0.0 && run.rate.is_finite(),
            "--rate must be a positive number"
        );
    }
    let use_running = run.as_ref().is_some_and(|run| run.use_running);
    let pki = RunPki::new(&common, use_running)?;
    let pki = pki.as_ref().map(|p| &p.pki);
    let endpoints = common.endpoints();
    // Spawned here, on the main thread, which lives until the children are reaped.
    let mut services = if use_running {
        None
    } else {
        Some(Services::spawn(&common.launch(pki))?)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let client = pooled_client(pki)?;
        wait_ready(&client, endpoints, services.as_mut(), STARTUP).await?;
        let work = async {
            match &run {
                Some(run) => drive(&client, endpoints, run).await,
                None => {
                    println!(
                        "testbed: services up on {}://127.0.0.1:{}..{}",
                        endpoints.scheme.as_str(),
                        common.base_port,
                        common.base_port + 3
                    );
                    if let Some(pki) = pki {
                        println!("testbed: their CA is {}", pki.ca().display());
                    }
                    std::future::pending().await
                }
            }
        };
        tokio::select! {
            r = work => r,
            signal = interrupted() => {
                eprintln!("testbed: {signal}, stopping the services");
                Ok(ExitCode::from(130))
            }
        }
    });
    if let Some(services) = &mut services {
        services.stop();
    }
    result
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "interrupted",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}

async fn drive(
    client: &reqwest::Client,
    endpoints: Endpoints,
    run: &RunArgs,
) -> anyhow::Result<ExitCode> {
    let seed = run.seed.unwrap_or_else(rand::random);
    let timings = Timings::new(run.common.time_factor);
    let walker = Arc::new(Walker::new(
        client.clone(),
        endpoints,
        timings,
        seed,
        run.faults.clone(),
    ));
    let started = Instant::now();
    let t0 = tokio::time::Instant::now();
    let mut walks = Vec::new();
    for index in 0..run.orders {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(index as f64 / run.rate)).await;
        let walker = walker.clone();
        walks.push(tokio::spawn(async move { walker.walk(index).await }));
    }
    let mut records: Vec<TruthRecord> = Vec::new();
    let mut errors = Vec::new();
    for walk in walks {
        let outcome = walk.await.context("an order's walk panicked")?;
        records.extend(outcome.records);
        errors.extend(outcome.error);
    }
    // Calls the services make after answering (pricing, publishing) end well within this.
    tokio::time::sleep(timings.think_max()).await;
    let elapsed = started.elapsed();
    if let Some(path) = &run.truth {
        write_truth(path, &records)?;
    }
    print_summary(run, seed, &records, elapsed);
    for e in &errors {
        eprintln!("walk error: {e}");
    }
    let mut ok = errors.is_empty();
    if run.check {
        let mismatches = check::check(client, endpoints, &records).await;
        for m in &mismatches {
            eprintln!("check: {m}");
        }
        println!(
            "check: {} of {} orders match all three services",
            records.len() - mismatches.len(),
            records.len()
        );
        ok &= mismatches.is_empty();
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_summary(run: &RunArgs, seed: u64, records: &[TruthRecord], elapsed: Duration) {
    let mut by_status: BTreeMap<_, usize> = BTreeMap::new();
    let mut by_fault: BTreeMap<_, usize> = BTreeMap::new();
    for r in records {
        *by_status.entry(r.final_status).or_default() += 1;
        for f in &r.faults {
            *by_fault.entry(f.kind).or_default() += 1;
        }
    }
    println!(
        "testbed run: {} orders walked ({} records) in {:.1} s, seed {seed}",
        run.orders,
        records.len(),
        elapsed.as_secs_f64()
    );
    println!("final status:");
    for (status, n) in &by_status {
        let name = status.map_or("none", |s| s.as_str());
        println!("  {name:<24} {n}");
    }
    println!("faults:");
    if by_fault.is_empty() {
        println!("  none");
    }
    for (kind, n) in &by_fault {
        println!("  {:<24} {n}", kind.as_str());
    }
}
