//! The bench's table: one row per figure, beside its target.

use super::{BenchArgs, Pair, Results, read_json};
use crate::process::target_dir;

/// Names of the agent's syscall hooks (the rest are the process lifecycle tracepoints).
fn is_syscall_hook(name: &str) -> bool {
    name.starts_with("exit_") || name.starts_with("enter_")
}

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|v| v.is_finite()).collect();
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

fn medians<T>(pair: &Pair<T>, f: impl Fn(&T) -> f64) -> (f64, f64) {
    (
        median(pair.untraced.iter().map(&f)),
        median(pair.traced.iter().map(&f)),
    )
}

/// `met` / `missed` beside a target.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The target column of a row that has a target only in some shapes: empty in the others.
fn target_cell(applies: bool, bound: &str, met: bool) -> String {
    if applies {
        format!("{bound} — {}", verdict(met))
    } else {
        String::new()
    }
}

pub fn print(args: &BenchArgs, r: &Results) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Order Tracer bench — {cpus} CPUs, kernel {}, {} rounds × {} s per phase, medians",
        kernel_release(),
        args.rounds,
        args.duration
    );
    println!();
    println!("| measure | untraced | traced | added / ratio | target |");
    println!("|---|---|---|---|---|");

    for (shape, pair, target) in [
        (
            format!("fixed {} req/s", args.pinned_rate),
            &r.pinned_fixed,
            true,
        ),
        ("saturation".to_string(), &r.pinned, false),
    ] {
        let (u, t) = medians(pair, |c| c.ns_per_request / 1000.0);
        let target = target_cell(target, "≤ +1.5 µs", t - u <= 1.5);
        println!(
            "| service CPU per request, MES alone on one CPU, {shape} (µs) | {u:.2} | {t:.2} | +{:.2} µs | {target} |",
            t - u
        );
        let (u, t) = medians(pair, |c| c.requests as f64 / args.duration as f64);
        println!(
            "| pinned shape, {shape}: served (req/s) | {u:.0} | {t:.0} | {:.3} | |",
            t / u
        );
    }
    let kernel_ns = median(r.agent_runs.iter().map(|run| {
        let hooks: u64 = run
            .programs
            .iter()
            .filter(|p| is_syscall_hook(&p.name))
            .map(|p| p.run_ns)
            .sum();
        hooks as f64 / run.counters.captured_calls.max(1) as f64
    }));
    println!(
        "| kernel programs per captured call (bpf_stats: all hook run time ÷ captured calls, ns) | | {kernel_ns:.0} | | ≤ 250 ns — {} |",
        verdict(kernel_ns <= 250.0)
    );
    let (u, t) = medians(&r.untargeted, |(hooked, _)| *hooked);
    println!(
        "| untargeted process, a hooked call (`write`, ns) | {u:.0} | {t:.0} | +{:.0} ns | ≤ 30 ns — {} |",
        t - u,
        verdict(t - u <= 30.0)
    );
    let (u, t) = medians(&r.untargeted, |(_, unhooked)| *unhooked);
    println!(
        "| untargeted process, an unhooked call (`getppid`, ns) | {u:.0} | {t:.0} | +{:.0} ns | ≤ 30 ns — {} |",
        t - u,
        verdict(t - u <= 30.0)
    );
    match r.pipeline_us_per_exchange {
        Some(us) => println!(
            "| pipeline events → spans, one core (criterion, µs per exchange) | | {us:.2} | | ≤ 2.5 µs — {} |",
            verdict(us <= 2.5)
        ),
        None => {
            println!("| pipeline events → spans, one core (criterion) | | not run | | ≤ 2.5 µs |")
        }
    }
    let cpu_per_100k = median(
        r.agent_runs
            .iter()
            .map(|run| run.cpu_seconds / (run.requests as f64 / 100_000.0)),
    );
    println!(
        "| agent CPU-s per 100k exchanges (saturation) | | {cpu_per_100k:.3} | | ≤ 0.3 — {} |",
        verdict(cpu_per_100k <= 0.3)
    );
    let (u, t) = medians(&r.saturation, |w| w.rps);
    println!(
        "| saturation throughput, everything sharing the CPUs (req/s, {} conns) | {u:.0} | {t:.0} | {:.3} | ≥ 0.85 — {} |",
        args.connections,
        t / u,
        verdict(t / u >= 0.85)
    );
    for (label, pair) in [("saturation", &r.saturation), ("fixed rate", &r.fixed)] {
        for (pct, f) in [
            ("p50", (|w: &WrkRow| w.p50_us) as fn(&WrkRow) -> f64),
            ("p99", |w: &WrkRow| w.p99_us),
        ] {
            let (u, t) = medians(pair, f);
            let target = target_cell(
                label == "fixed rate" && pct == "p99",
                "≤ +50 µs",
                t - u <= 50.0,
            );
            println!(
                "| {label} {pct} latency (µs) | {u:.0} | {t:.0} | {:+.0} µs | {target} |",
                t - u
            );
        }
    }
    let (u, t) = medians(&r.fixed, |w| w.rps);
    println!(
        "| fixed-rate phases ran at (req/s) | {u:.0} | {t:.0} | | {} |",
        args.rate
    );
    let rss_mib = r.peak_rss_kib as f64 / 1024.0;
    let ring_mib = r.ring_rss_kib as f64 / 1024.0;
    println!(
        "| agent peak RSS, {} open connections (MiB) | | {rss_mib:.1} | | ≤ 48 — {} |",
        args.open_connections,
        verdict(rss_mib <= 48.0)
    );
    println!(
        "| of which the ring buffer's mapping (its pages mapped twice, MiB) / the rest | | {ring_mib:.1} / {:.1} | | |",
        rss_mib - ring_mib
    );
    for (i, run) in r.agent_runs.iter().enumerate() {
        let c = &run.counters;
        let complete = c.ring_full == 0 && c.exchanges >= run.requests && c.spans >= c.exchanges;
        println!(
            "| completeness, round {}: wrk requests → exchanges / spans / ring drops | {} | {} / {} / {} | | 0 drops, every exchange a span — {} |",
            i + 1,
            run.requests,
            c.exchanges,
            c.spans,
            c.ring_full,
            verdict(complete)
        );
    }
    println!();
    print_programs(r);
}

type WrkRow = super::WrkResult;

/// Per-program run times of the traced saturation phases (bpf_stats includes its own two
/// clock reads per run).
fn print_programs(r: &Results) {
    let Some(first) = r.agent_runs.first() else {
        return;
    };
    println!("| kernel program (traced saturation) | runs per request | ns per run (median) |");
    println!("|---|---|---|");
    for program in &first.programs {
        let per_run = median(r.agent_runs.iter().filter_map(|run| {
            let p = run.programs.iter().find(|p| p.name == program.name)?;
            (p.runs > 0).then(|| p.run_ns as f64 / p.runs as f64)
        }));
        let runs = median(r.agent_runs.iter().filter_map(|run| {
            let p = run.programs.iter().find(|p| p.name == program.name)?;
            Some(p.runs as f64 / run.requests.max(1) as f64)
        }));
        if runs > 0.0 {
            println!("| {} | {runs:.2} | {per_run:.0} |", program.name);
        }
    }
    println!();
}

/// µs per exchange of criterion's `pipeline/events→spans`, from its estimate files.
pub fn criterion_us_per_exchange() -> Option<f64> {
    let dir = target_dir().join("criterion/pipeline/events→spans");
    let estimates = read_json(&dir.join("new/estimates.json")).ok()?;
    let benchmark = read_json(&dir.join("new/benchmark.json")).ok()?;
    let ns = estimates.pointer("/mean/point_estimate")?.as_f64()?;
    let exchanges = benchmark.pointer("/throughput/Elements")?.as_f64()?;
    Some(ns / exchanges / 1000.0)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ignore_missing_figures() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
        assert_eq!(median([f64::NAN, 5.0].into_iter()), 5.0);
    }
}
