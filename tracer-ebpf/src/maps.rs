//! The maps shared with the agent, and the per-thread record of a syscall in flight.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    COMM_LEN, MAX_EXEC_NAMES, MAX_PENDING, MAX_SOCKETS, MAX_TARGETS, SockInfo, Target, config,
    counter,
};

/// Events to the agent. The agent sets the real size at load (`ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Processes to trace, by tgid; filled by the agent's target discovery.
#[map]
pub static TARGETS: HashMap<u32, Target> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Command names that make a process a target the moment it execs, before its first
/// syscall: a short-lived client (curl) would be gone before the agent's next /proc scan.
#[map]
pub static EXEC_NAMES: HashMap<[u8; COMM_LEN], Target> =
    HashMap::with_max_entries(MAX_EXEC_NAMES, 0);

/// TCP sockets of target processes, by `sock_key(tgid, fd)`. LRU so a missed close (a
/// process killed before the agent saw it, a dup'd fd) cannot fill the table for good.
#[map]
pub static SOCKETS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Arguments of a syscall between its enter and exit, by pid_tgid (one per thread). LRU:
/// a thread killed inside a blocking call never reaches the exit that would remove its entry.
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Loss and activity counters; the agent sums the CPUs.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Settings the agent writes before attaching (`tracer_common::config`).
#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

/// What the exit handler must do with the syscall's return value.
pub mod call {
    /// `read`/`write`/`recvfrom`/`sendto`: `ptr` is the buffer.
    pub const BUF: u8 = 1;
    /// `readv`/`writev`: `ptr` is the iovec array, `count` its length.
    pub const IOV: u8 = 2;
    /// `recvmsg`/`sendmsg`: `ptr` is the `user_msghdr`.
    pub const MSG: u8 = 3;
    /// `socket(AF_INET/AF_INET6, SOCK_STREAM)`: the return value is a new TCP socket.
    pub const SOCKET: u8 = 4;
    /// `accept`/`accept4`: `ptr` is the peer sockaddr the app passed (may be null).
    pub const ACCEPT: u8 = 5;
    /// `connect`: `ptr` is the peer sockaddr.
    pub const CONNECT: u8 = 6;
}

/// A traced syscall between enter and exit. Kernel-only: the agent never sees it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// CLOCK_MONOTONIC at entry.
    pub ts_ns: u64,
    pub ptr: u64,
    pub count: u64,
    /// The socket's state at entry (data calls) — a close racing on another thread cannot
    /// change which connection the bytes belong to.
    pub sock: SockInfo,
    pub fd: i32,
    pub service: u32,
    /// The syscall number at entry; the exit must match it, so an entry whose exit was
    /// missed (programs attached in between) is never paired with another call's result.
    pub nr: i32,
    /// One of `call::*`.
    pub call: u8,
    /// One of `tracer_common::direction::*`.
    pub direction: u8,
    /// For `ACCEPT`: the listening socket is a known TCP socket.
    pub listener_known: u8,
    pub _pad: u8,
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; a tracepoint program is not preempted on its CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn setting(index: u32) -> u64 {
    CONFIG.get(index).copied().unwrap_or(0)
}
