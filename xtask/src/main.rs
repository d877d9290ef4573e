//! `cargo xtask`: the project's commands — prerequisites, build, test, demo, bench.
//!
//! Every command installs what it needs first (idempotent, quick when already there), so a
//! fresh machine needs nothing but this repository and the Rust toolchains it came with.

mod bench;
mod demo;
mod fuzz;
mod prereqs;
mod process;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Order Tracer's build, test, demo and bench commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install missing prerequisites: nightly rust-src, bpf-linker, Debian packages.
    Prereqs,
    /// Build the eBPF object and the agent (embedding it), and the testbed.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the whole thing on the embedded default: testbed + agent + monitor + faults.
    Demo(demo::DemoArgs),
    /// Measure overhead on the traced service, agent cost, pipeline throughput, completeness.
    Bench(bench::BenchArgs),
    /// Run each fuzz target (fuzz/) for a bounded time over its seed corpus.
    Fuzz(fuzz::FuzzArgs),
    /// Run every test, the kernel ones included (needs root).
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    if let Some(code) = fuzz::as_rustc_wrapper() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Prereqs => prereqs::ensure(prereqs::Needs::all()),
        Command::Build { release } => {
            prereqs::ensure(prereqs::Needs::build())?;
            build(release)
        }
        Command::Test { cargo_args } => test(&cargo_args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run_targets(args),
    }
}

/// Builds the default members' binaries: `tracer` (with the eBPF object) and the testbed.
pub(crate) fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "--bins"];
    if release {
        args.push("--release");
    }
    process::cargo(&args)
}

fn test(cargo_args: &[String]) -> Result<()> {
    prereqs::ensure(prereqs::Needs::test())?;
    prereqs::require_root("the kernel tests load eBPF programs")?;
    // Integration tests start the testbed's and the tracer's binaries: build them first.
    build(false)?;
    let mut args: Vec<&str> = vec!["test", "--all-targets"];
    if !cargo_args.is_empty() {
        args.push("--");
        args.extend(cargo_args.iter().map(String::as_str));
    }
    process::cargo(&args)?;
    // Doc tests are not part of --all-targets.
    process::cargo(&["test", "--doc"])
}
