//! `cargo xtask fuzz`: builds the fuzz targets (`fuzz/`, cargo-fuzz's layout) with libFuzzer's
//! coverage instrumentation and runs each for a bounded time over its committed seed corpus.
//!
//! Only the workspace's own crates are instrumented (cargo's `RUSTC_WORKSPACE_WRAPPER`, with
//! this binary as the wrapper): the dependencies are the test build's, already compiled, so
//! the build takes seconds after `cargo xtask test` rather than minutes, and the stable
//! toolchain is enough (no sanitizer: the code under test is safe Rust; what is looked for is
//! panics, overflows, unbounded loops). `cargo +nightly fuzz run TARGET` works too, with
//! cargo-fuzz installed and AddressSanitizer, for longer sessions.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process::{run, workspace_root};

/// Every target, in `fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 5] = [
    "http_streams",
    "amqp_streams",
    "otlp_receiver",
    "rules_json",
    "config",
];

/// Set on the wrapper's environment: this process is running as rustc's wrapper.
const WRAPPER_ENV: &str = "ORDER_TRACER_FUZZ_WRAPPER";

/// libFuzzer's coverage: inline 8-bit counters, the PC table and comparisons, as cargo-fuzz
/// sets them; `fuzzing` lets code tell.
const COVERAGE_FLAGS: [&str; 7] = [
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
];

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Run only these targets (default: all).
    #[arg(long = "target")]
    pub targets: Vec<String>,
}

/// When cargo runs this binary as rustc's wrapper: adds the coverage flags to the workspace's
/// crates (not to build scripts, not to the eBPF object) and runs rustc. `None` otherwise.
pub fn as_rustc_wrapper() -> Option<i32> {
    std::env::var_os(WRAPPER_ENV)?;
    let mut args = std::env::args_os().skip(1);
    let rustc = args.next()?;
    let args: Vec<_> = args.collect();
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let build_script = text
        .windows(2)
        .any(|w| w[0] == "--crate-name" && w[1].starts_with("build_script"));
    let bpf = text
        .iter()
        .any(|a| a.contains("bpfel") || a.contains("bpfeb"));
    let probe = text.iter().any(|a| a == "-vV" || a == "-");
    let mut command = Command::new(rustc);
    command.args(&args);
    if !(build_script || bpf || probe) {
        command.args(COVERAGE_FLAGS);
    }
    Some(command.status().map_or(101, |s| s.code().unwrap_or(101)))
}

fn eprint_target(target: &str, seconds: u64) {
    eprintln!("fuzz: {target} for {seconds} s");
}

/// The eBPF object of the test build, reused so the instrumented build does not make its own.
fn built_ebpf_object(target_dir: &std::path::Path) -> Option<PathBuf> {
    let build = target_dir.join("debug").join("build");
    std::fs::read_dir(build)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tracer-"))
        .map(|e| e.path().join("out").join("tracer"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

pub fn run_targets(args: FuzzArgs) -> Result<()> {
    crate::prereqs::ensure(crate::prereqs::Needs::fuzz())?;
    let root = workspace_root();
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t}; the targets are {}", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let me = std::env::current_exe().context("where is the xtask binary?")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "-p", "tracer-fuzz", "--bins"])
        .current_dir(&root)
        .env("RUSTC_WORKSPACE_WRAPPER", &me)
        .env(WRAPPER_ENV, "1");
    if let Some(object) = built_ebpf_object(&target_dir) {
        build.env("TRACER_EBPF_OBJECT", object);
    }
    run(&mut build)?;
    let scratch = target_dir.join("fuzz-corpus");
    for target in targets {
        eprint_target(target, args.seconds);
        // New inputs go to a scratch corpus; the committed seeds stay as they are.
        let found = scratch.join(target);
        std::fs::create_dir_all(&found)?;
        let seeds = root.join("fuzz").join("corpus").join(target);
        let artifacts = target_dir.join("fuzz-artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        run(Command::new(target_dir.join("debug").join(target))
            .arg(&found)
            .arg(&seeds)
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-max_len=65536")
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .current_dir(&root))
        .with_context(|| {
            format!(
                "fuzz target {target} found a failure: the input is in {} — add it as a regression test",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}
