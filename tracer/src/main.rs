//! The `tracer` binary: capture, agent, all-in-one run, and central monitor.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "Order Tracer: one OpenTelemetry trace per order, from socket traffic, with no code in the apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Capture(args) => tracer::capture::cli::run(args).await,
        Command::Agent(args) => tracer::agent::run(args).await,
        Command::Run(args) => tracer::shapes::run_all_in_one(args).await,
        Command::Monitor(args) => tracer::shapes::run_central(args).await,
    }
}
