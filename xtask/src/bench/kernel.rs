//! The kernel side's own cost: the eBPF programs' run time (`bpf_stats`), and what a syscall
//! of a process the agent does not trace costs with the agent attached.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};

/// Keeps the kernel's per-program run-time statistics on while it lives (they cost every
/// eBPF program on the machine two clock reads per run, so they are on only for the bench).
pub struct BpfStats {
    _enabled: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("cannot enable bpf_stats (BPF_ENABLE_STATS needs CAP_SYS_ADMIN)")?;
        Ok(BpfStats { _enabled: enabled })
    }
}

/// One program's totals since it was loaded.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// The totals of the programs with these ids (the agent's), by name.
pub fn programs(ids: &[u32]) -> Vec<ProgramStats> {
    let mut out: Vec<ProgramStats> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| ProgramStats {
            name: p.name_as_str().unwrap_or("?").to_string(),
            runs: p.run_count(),
            run_ns: p.run_time().as_nanos() as u64,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A syscall the untargeted-cost loop makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    /// `write` of one byte to /dev/null: a call the agent hooks (its program runs and finds
    /// the caller untraced).
    HookedWrite,
    /// `getppid`: a call the agent does not hook.
    Unhooked,
}

/// CPU nanoseconds per call of this thread, the least over many short batches: a batch that
/// another process or the hypervisor interrupted only ever reads higher.
pub fn syscall_ns(call: Syscall) -> Result<f64> {
    const CALLS: u32 = 20_000;
    const BATCHES: u32 = 60;
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&devnull);
    let byte = [0u8; 1];
    let mut best = f64::INFINITY;
    for _ in 0..BATCHES {
        let start = thread_cpu_ns();
        for _ in 0..CALLS {
            // SAFETY: plain syscalls on a valid fd and buffer.
            unsafe {
                match call {
                    Syscall::HookedWrite => {
                        libc::write(fd, byte.as_ptr().cast(), 1);
                    }
                    Syscall::Unhooked => {
                        libc::syscall(libc::SYS_getppid);
                    }
                }
            }
        }
        best = best.min((thread_cpu_ns() - start) as f64 / f64::from(CALLS));
    }
    Ok(best)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid, writable timespec; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
