//! Loss and activity counters: the kernel's per-CPU array summed, plus the agent's own.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{MapData, PerCpuArray};
use serde::Serialize;
use tracer_common::counter;

/// A snapshot; every field only grows, except `targets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CaptureCounters {
    /// Events lost, all causes: `ring_full + queue_full`.
    pub drops: u64,
    /// Kernel events that found the ring buffer full (agent too slow or ring too small).
    pub ring_full: u64,
    /// Events dropped because the consumer of `Capture` did not keep up.
    pub queue_full: u64,
    /// Data chunks longer than the payload cap (prefix kept, true length reported).
    pub truncated: u64,
    /// Vectored calls with more buffers than are copied (bytes counted, not copied).
    pub iovecs_cut: u64,
    /// User buffers the kernel could not read (event sent without payload).
    pub read_failed: u64,
    /// Sockets not tracked because the kernel's socket table was full.
    pub sockets_full: u64,
    /// Ring-buffer entries the agent could not decode.
    pub decode_errors: u64,
    pub data_events: u64,
    pub conn_events: u64,
    /// Reads and writes captured (a vectored call is one call, and one event per buffer).
    pub captured_calls: u64,
    /// Processes traced right now.
    pub targets: u64,
    /// TLS reads and writes captured as plaintext.
    pub tls_calls: u64,
    /// TLS reads and writes not captured: their socket was not known.
    pub tls_no_socket: u64,
    /// TLS library files the probes are attached to now.
    pub tls_libraries: u64,
    /// Targets whose TLS library is attached now.
    pub tls_targets: u64,
    /// Targets seen mapping no TLS library the tracer reads (each counted once; TLS they
    /// speak through another library stays encrypted).
    pub tls_without_library: u64,
    /// TLS library files lacking the calls, unreadable, or refused by the kernel.
    pub tls_unusable_libraries: u64,
}

/// The agent-side counters, shared by the reader task and the handle.
#[derive(Debug, Default)]
pub struct UserCounters {
    pub queue_full: AtomicU64,
    pub decode_errors: AtomicU64,
    pub targets: AtomicU64,
    pub tls_libraries: AtomicU64,
    pub tls_targets: AtomicU64,
    pub tls_without_library: AtomicU64,
    pub tls_unusable_libraries: AtomicU64,
    /// CLOCK_MONOTONIC ns when the reader last emptied the ring and queued what it read.
    pub drained_at: AtomicU64,
}

/// How far the capture has read: every event the kernel stamped before `drained_at_ns` is
/// queued for the pipeline (or counted as dropped).
#[derive(Clone, Debug)]
pub struct CaptureProgress(pub(super) std::sync::Arc<UserCounters>);

impl CaptureProgress {
    pub fn drained_at_ns(&self) -> u64 {
        self.0.drained_at.load(Ordering::Acquire)
    }
}

impl UserCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub fn snapshot(kernel: &PerCpuArray<MapData, u64>, user: &UserCounters) -> CaptureCounters {
    let sum = |index: u32| -> u64 {
        kernel
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    };
    let ring_full = sum(counter::RING_FULL);
    let queue_full = user.queue_full.load(Ordering::Relaxed);
    CaptureCounters {
        drops: ring_full + queue_full,
        ring_full,
        queue_full,
        truncated: sum(counter::TRUNCATED),
        iovecs_cut: sum(counter::IOVECS_CUT),
        read_failed: sum(counter::READ_FAILED),
        sockets_full: sum(counter::SOCKETS_FULL),
        decode_errors: user.decode_errors.load(Ordering::Relaxed),
        data_events: sum(counter::DATA_EVENTS),
        conn_events: sum(counter::CONN_EVENTS),
        captured_calls: sum(counter::CALLS),
        targets: user.targets.load(Ordering::Relaxed),
        tls_calls: sum(counter::TLS_CALLS),
        tls_no_socket: sum(counter::TLS_NO_SOCKET),
        tls_libraries: user.tls_libraries.load(Ordering::Relaxed),
        tls_targets: user.tls_targets.load(Ordering::Relaxed),
        tls_without_library: user.tls_without_library.load(Ordering::Relaxed),
        tls_unusable_libraries: user.tls_unusable_libraries.load(Ordering::Relaxed),
    }
}
