//! `cargo xtask demo`: the whole thing on the embedded default, on this machine.
//!
//! Builds, starts `tracer run` (agent + monitor + SQLite), starts the testbed's services,
//! drives orders with faults through them, shows progress, then the result: orders per
//! status, every detection with the step and service at fault (checked against the truth
//! the testbed wrote), the page's address, and how to open an order's trace in Jaeger.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::{output, workspace_root};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Orders to drive through the testbed.
    #[arg(long, default_value_t = 200)]
    orders: u32,
    /// New orders per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Fault rates, as `testbed run --faults` takes them (`all=0.05` faults 80 % of orders,
    /// spread over every kind).
    #[arg(long, default_value = "all=0.05")]
    faults: String,
    /// Seed of the testbed's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Address of the operator API and page.
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: String,
    /// First of the four ports of the testbed's services.
    #[arg(long, default_value_t = 18080)]
    base_port: u16,
    /// Send the spans to this OTLP/gRPC endpoint (a Jaeger or Collector), e.g.
    /// `http://127.0.0.1:4317`. Without it spans stay in the agent (the monitor sees them).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Jaeger's UI, for the console's trace links; default: port 16686 of the
    /// `--otlp-endpoint` host (Jaeger all-in-one's).
    #[arg(long)]
    jaeger_url: Option<String>,
    /// Stop after this many seconds of showing the result (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// The testbed's Shop, MES and CRM serve HTTPS and call each other over HTTPS (the
    /// system's OpenSSL, a throwaway CA), and the driver speaks HTTPS: the agent reads the
    /// plaintext at OpenSSL's calls. The RabbitMQ hop stays plain AMQP.
    #[arg(long)]
    tls: bool,
}

/// Jaeger's UI: `--jaeger-url`, or port 16686 of the `--otlp-endpoint` host.
fn jaeger_url(args: &DemoArgs) -> Option<String> {
    args.jaeger_url.clone().or_else(|| {
        let endpoint = args.otlp_endpoint.as_deref()?;
        let (scheme, rest) = endpoint.split_once("://")?;
        let host = rest.split(['/', ':']).next()?;
        Some(format!("{scheme}://{host}:16686"))
    })
}

const SETTLE: Duration = Duration::from_secs(14);

pub fn run(args: DemoArgs) -> Result<()> {
    crate::prereqs::ensure(crate::prereqs::Needs::demo())?;
    crate::prereqs::require_root("the agent loads eBPF programs")?;
    crate::build(true)?;
    let bin = crate::process::target_dir().join("release");
    let work = workspace_root().join("target/demo");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let api = format!("http://{}", args.listen);

    step("starting tracer run (agent + lifecycle monitor + SQLite)");
    let mut tracer = Command::new(bin.join("tracer"));
    tracer
        .args([
            "run",
            "--allow-anonymous-loopback",
            "--listen",
            &args.listen,
        ])
        .arg("--store")
        .arg(work.join("orders.db"))
        .env("RUST_LOG", "info");
    if let Some(url) = &jaeger_url(&args) {
        tracer.args(["--jaeger-url", url]);
    }
    match &args.otlp_endpoint {
        Some(endpoint) => tracer
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        None => tracer.env("OTEL_TRACES_EXPORTER", "none"),
    };
    let tracer = Guard::spawn(tracer, &work.join("tracer.log"))?;
    wait_for_log(&tracer, "waiting for target", 3)?;

    let over = if args.tls { "HTTPS" } else { "HTTP" };
    step(&format!(
        "starting the testbed's Shop, MES, CRM ({over}) and RabbitMQ broker (10–30 s)"
    ));
    let mut serve = Command::new(bin.join("testbed"));
    serve.args(["serve", "--base-port", &args.base_port.to_string()]);
    if args.tls {
        serve.arg("--tls");
    }
    let _serve = Guard::spawn(serve, &work.join("testbed-serve.log"))?;
    wait_for_log(&tracer, "tracing pid", 3)?;

    step(&format!(
        "driving {} orders at {}/s with faults {}",
        args.orders, args.rate, args.faults
    ));
    let truth = work.join("truth.jsonl");
    let mut drive = Command::new(bin.join("testbed"));
    drive
        .args([
            "run",
            "--use-running",
            "--base-port",
            &args.base_port.to_string(),
        ])
        .args(["--orders", &args.orders.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--faults", &args.faults])
        .args(["--seed", &args.seed.to_string()])
        .arg("--truth")
        .arg(&truth);
    if args.tls {
        drive.arg("--tls");
    }
    let mut driver = Guard::spawn(drive, &work.join("testbed-run.log"))?;
    while driver.child.try_wait()?.is_none() {
        progress(&api, "orders running");
        std::thread::sleep(Duration::from_secs(1));
    }
    if !driver.child.wait()?.success() {
        bail!(
            "the testbed's driver failed; see {}",
            work.join("testbed-run.log").display()
        );
    }
    // Stuck and lost orders show once their limits pass.
    let settled = Instant::now() + SETTLE;
    while Instant::now() < settled {
        progress(&api, "waiting for the stuck limits");
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!();

    report(&api, &truth, &args)?;
    match args.duration {
        Some(seconds) => std::thread::sleep(Duration::from_secs(seconds)),
        None => {
            println!("Running until Ctrl-C.");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("demo: {what}");
}

/// One line, rewritten in place: orders per status and open detections.
fn progress(api: &str, phase: &str) {
    let Ok(per_status) = orders_per_status(api) else {
        return;
    };
    let total: u64 = per_status.values().sum();
    let open = detections(api, true).map(|d| d.len()).unwrap_or(0);
    let compact: Vec<String> = per_status
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{}={n}", short(s)))
        .collect();
    eprint!(
        "\r\x1b[K{phase}: {total} orders seen, {open} open detections | {}",
        compact.join(" ")
    );
}

fn short(status: &str) -> String {
    status
        .split('_')
        .map(|w| w.chars().take(4).collect::<String>())
        .collect::<Vec<_>>()
        .join("_")
}

fn report(api: &str, truth: &Path, args: &DemoArgs) -> Result<()> {
    let per_status = orders_per_status(api)?;
    println!();
    println!("Orders per current status");
    println!("| status | orders |");
    println!("|---|---|");
    for status in lifecycle_order() {
        println!(
            "| {status} | {} |",
            per_status.get(&status).copied().unwrap_or(0)
        );
    }

    let all = detections(api, false)?;
    println!();
    println!(
        "Detections (every stuck, lost, failed, skipped, backwards, vanished or duplicate order)"
    );
    println!("| order | kind | step not reached | service at fault | since | resolved |");
    println!("|---|---|---|---|---|---|");
    for d in &all {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            text(d, "order_id"),
            text(d, "kind"),
            text(d, "step"),
            text(d, "service"),
            text(d, "at"),
            d["resolved_at"].as_str().unwrap_or("open"),
        );
    }

    let injected = injected_faults(truth)?;
    let found: Vec<(String, String, String, String)> = all
        .iter()
        .map(|d| {
            (
                text(d, "order_id"),
                text(d, "kind"),
                text(d, "step"),
                text(d, "service"),
            )
        })
        .collect();
    let matched = injected.iter().filter(|f| found.contains(f)).count();
    let false_alarms = found.iter().filter(|f| !injected.contains(f)).count();
    println!();
    println!(
        "Against the testbed's truth: {matched} of {} injected faults found with the right kind, \
         step and service; {false_alarms} detections on orders without that fault.",
        injected.len()
    );
    println!();
    println!(
        "Operator page:  {api}/   (API: {api}/api/v1/detections?open=true, metrics: {api}/metrics)"
    );
    if let Some(order) = all.first().map(|d| text(d, "order_id")) {
        let trace_id = trace_id(&order);
        match &args.otlp_endpoint {
            Some(endpoint) => println!(
                "Jaeger:         spans went to {endpoint}; order {order} is trace {trace_id} \
                 ({}/trace/{trace_id}; the page links every order's trace)",
                jaeger_url(args).as_deref().unwrap_or("http://JAEGER:16686")
            ),
            None => println!(
                "Jaeger:         rerun with --otlp-endpoint http://JAEGER:4317 (or set \
                 OTEL_EXPORTER_OTLP_ENDPOINT) and open http://JAEGER:16686/trace/{trace_id} \
                 for order {order}"
            ),
        }
    }
    println!(
        "Logs and the SQLite store: {}",
        workspace_root().join("target/demo").display()
    );
    Ok(())
}

/// The statuses in the order of the embedded config's lifecycle (`[[lifecycle.statuses]]`).
fn lifecycle_order() -> Vec<String> {
    let config = include_str!("../../deploy/config/testbed.toml");
    let mut statuses = Vec::new();
    let mut in_status = false;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            in_status = line == "[[lifecycle.statuses]]";
        } else if in_status && let Some(name) = line.strip_prefix("name = ") {
            statuses.push(name.trim_matches('"').to_string());
        }
    }
    statuses
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or("-").to_string()
}

/// The documented trace-id function (README): first 16 bytes of SHA-256 of the domain and id.
fn trace_id(order: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("order-tracer/trace/v1:{order}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn injected_faults(truth: &Path) -> Result<Vec<(String, String, String, String)>> {
    let lines = std::fs::read_to_string(truth)
        .with_context(|| format!("cannot read the truth file {}", truth.display()))?;
    let mut faults = Vec::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let order: Value = serde_json::from_str(line)?;
        for fault in order["faults"].as_array().into_iter().flatten() {
            faults.push((
                text(&order, "order_id"),
                text(fault, "detection"),
                text(fault, "step"),
                text(fault, "service"),
            ));
        }
    }
    Ok(faults)
}

/// `order_tracer_orders{status="…"} N` from the monitor's `/metrics`.
fn orders_per_status(api: &str) -> Result<BTreeMap<String, u64>> {
    let page = curl(&format!("{api}/metrics"))?;
    let mut counts = BTreeMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("order_tracer_orders{status=\"") else {
            continue;
        };
        let Some((status, value)) = rest.split_once("\"} ") else {
            continue;
        };
        counts.insert(status.to_string(), value.trim().parse::<f64>()? as u64);
    }
    Ok(counts)
}

/// Every detection (or only the open ones), following the API's paging.
fn detections(api: &str, open_only: bool) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let open = if open_only { "open=true&" } else { "" };
        let page: Value = serde_json::from_str(&curl(&format!(
            "{api}/api/v1/detections?{open}limit=500&offset={offset}"
        ))?)?;
        all.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => return Ok(all),
        }
    }
}

fn curl(url: &str) -> Result<String> {
    output(Command::new("curl").args(["-sf", "--max-time", "5", url]))
}

fn wait_for_log(process: &Guard, needle: &str, times: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        if log.matches(needle).count() >= times {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "waited 60 s for {needle:?} in {}:\n{log}",
                process.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process with its output in a log file, interrupted (then killed) when dropped.
struct Guard {
    child: Child,
    log: PathBuf,
}

impl Guard {
    fn spawn(mut cmd: Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGINT lets it shut down cleanly.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
