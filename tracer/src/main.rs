//! The `tracer` binary: capture, agent, all-in-one run, and central monitor.

use std::io::IsTerminal;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "Order Tracer: one OpenTelemetry trace per order, from socket traffic, with no code in the apps"
)]
struct Cli {
    /// How log lines on stderr look: `text` for people, `json` (one object per line) for log
    /// collectors. `RUST_LOG` chooses what is logged.
    #[arg(long, global = true, env = "TRACER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print captured socket events of chosen processes as JSON lines (for humans and tests).
    Capture(tracer::capture::cli::CaptureArgs),
    /// Trace the configured services and export order spans (OTLP or stdout).
    Agent(tracer::agent::AgentArgs),
    /// All-in-one: agent + lifecycle monitor + SQLite + operator API on this host.
    Run(tracer::shapes::RunArgs),
    /// Central lifecycle monitor: receives OTLP from many agents, forwards to Jaeger.
    Monitor(tracer::shapes::MonitorArgs),
}

/// Logs on stderr. Colour only on a terminal (systemd and Kubernetes capture a pipe, where
/// escape codes are noise), and never under `NO_COLOR`.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().with_ansi(false).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(colour).init()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Capture(args) => tracer::capture::cli::run(args).await,
        Command::Agent(args) => tracer::agent::run(args).await,
        Command::Run(args) => tracer::shapes::run_all_in_one(args).await,
        Command::Monitor(args) => tracer::shapes::run_central(args).await,
    }
}
