//! Capture: loads the eBPF programs, keeps the kernel's target and socket tables filled, and
//! turns ring-buffer entries into [`CaptureEvent`]s.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tracer::capture::CaptureError> {
//! let mut capture = tracer::capture::Capture::start(&Default::default())?;
//! while let Some(batch) = capture.recv().await {
//!     for event in batch { /* … */ }
//! }
//! # Ok(()) }
//! ```

pub mod cli;
pub mod config;
pub mod counters;
mod decode;
pub mod event;
mod loader;
pub mod procfs;
mod reader;
mod tables;
mod targets;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray};
use tokio::io::{Interest, unix::AsyncFd};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::{CaptureConfig, PayloadCaps, TargetSpec};
pub use counters::CaptureCounters;
pub use event::{CaptureEvent, ConnKey, Direction, Role};

use counters::UserCounters;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "capture needs root, or the capabilities CAP_BPF and CAP_PERFMON (running as uid \
         {euid}, missing {missing}): run as root, or grant them, e.g. `setcap \
         cap_bpf,cap_perfmon,cap_sys_admin,cap_sys_ptrace,cap_dac_read_search+ep` on the binary"
    )]
    NotPrivileged { euid: u32, missing: String },
    #[error(
        "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): use a kernel built \
         with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "tracefs is not mounted and mounting it failed ({0}): mount it with `mount -t tracefs \
         nodev /sys/kernel/tracing`, or run the agent with CAP_SYS_ADMIN"
    )]
    Tracefs(std::io::Error),
    #[error(
        "tracefs has no syscall tracepoints (events/syscalls): use a kernel built with \
         CONFIG_FTRACE_SYSCALLS=y"
    )]
    NoSyscallTracepoints,
    #[error("invalid capture config: {0}")]
    Config(String),
    #[error("cannot load the eBPF object into the kernel: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {0}: the binary was built from mismatched sources, rebuild it")]
    Missing(&'static str),
    #[error("eBPF program {name} was rejected: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach to tracepoint {category}:{tracepoint}: {source}")]
    Attach {
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot watch the ring buffer (call Capture::start inside a tokio runtime): {0}")]
    Poll(std::io::Error),
}

/// A running capture. Events arrive in batches through a bounded queue; dropping the handle
/// stops the task and detaches every program.
pub struct Capture {
    events: Option<mpsc::Receiver<Vec<CaptureEvent>>>,
    kernel_counters: PerCpuArray<MapData, u64>,
    user_counters: Arc<UserCounters>,
    /// Owns the eBPF object (the programs and their links), which it attaches TLS probes
    /// with: stopping it detaches everything.
    worker: JoinHandle<()>,
    logger: Option<JoinHandle<()>>,
}

impl Capture {
    /// Loads and attaches the kernel side and starts following the configured targets,
    /// copying up to `payload_cap` of every call. Call inside a tokio runtime. Targets not
    /// running yet are waited for (and logged).
    pub fn start(config: &CaptureConfig) -> Result<Capture, CaptureError> {
        Self::start_with_caps(config, &|_| PayloadCaps::uniform(config.payload_cap))
    }

    /// As [`Capture::start`], copying of each service's calls what `caps` says.
    pub fn start_with_caps(
        config: &CaptureConfig,
        caps: &dyn Fn(&str) -> PayloadCaps,
    ) -> Result<Capture, CaptureError> {
        config.validate().map_err(CaptureError::Config)?;
        let targets = targets::Targets::new(&config.targets, caps)
            .map_err(|e| CaptureError::Config(e.to_string()))?;
        let mut loaded = loader::load(config, &targets.exec_names())?;
        let logger = start_kernel_logger(&mut loaded.ebpf);
        // SAFETY: the ring buffer owns its fd, which stays open and unchanged for as long as
        // the AsyncFd (which owns the ring buffer) lives.
        let ring = unsafe { AsyncFd::register_with_interest(loaded.ring, Interest::READABLE) }
            .map_err(|e| CaptureError::Poll(e.into_parts().1))?;
        let (tx, rx) = mpsc::channel(config.queue_batches);
        let user_counters = Arc::new(UserCounters::default());
        let mut tls = loaded.tls.then(tls::Attacher::default);
        if let Some(tls) = &mut tls
            && !targets.exec_names().is_empty()
        {
            // The kernel starts tracing these at exec, before any scan could attach the
            // library they load: attach the host's own in advance.
            tls.attach_host_libraries(&mut loaded.ebpf);
        }
        let worker = reader::Worker {
            ring,
            sink: reader::Sink {
                tables: tables::KernelTables {
                    targets: loaded.targets,
                    target_bits: loaded.target_bits,
                    sockets: loaded.sockets,
                },
                targets,
                tx,
                counters: user_counters.clone(),
                tables_cache: procfs::TableCache::default(),
                tls,
                ebpf: loaded.ebpf,
            },
            scan_every: Duration::from_millis(config.scan_interval_ms),
        };
        Ok(Capture {
            events: Some(rx),
            kernel_counters: loaded.counters,
            user_counters,
            worker: tokio::spawn(worker.run()),
            logger,
        })
    }

    /// The next batch of events; `None` once the capture task has stopped.
    pub async fn recv(&mut self) -> Option<Vec<CaptureEvent>> {
        self.events.as_mut()?.recv().await
    }

    /// Moves the event queue out, for a consumer task; the handle keeps the capture running.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<Vec<CaptureEvent>>> {
        self.events.take()
    }

    pub fn counters(&self) -> CaptureCounters {
        counters::snapshot(&self.kernel_counters, &self.user_counters)
    }

    /// How far the reader has got, for the pipeline's watermark.
    pub fn progress(&self) -> counters::CaptureProgress {
        counters::CaptureProgress(self.user_counters.clone())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.worker.abort();
        if let Some(logger) = &self.logger {
            logger.abort();
        }
    }
}

/// Forwards the kernel side's aya-log records to `log` (and so to the tracing subscriber).
fn start_kernel_logger(ebpf: &mut aya::Ebpf) -> Option<JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("kernel diagnostics unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("kernel diagnostics unavailable: {}", e.into_parts().1);
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
