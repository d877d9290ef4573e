//! The maps shared with the agent, and the per-thread record of a send in flight.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    COMM_LEN, MAX_EXEC_NAMES, MAX_SOCKETS, MAX_TARGETS, SEND_SLOTS, SockInfo, Target, config,
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

/// Entry timestamps of sends in flight, one slot per thread (`tid % SEND_SLOTS`). An array:
/// a slot is one plain store at entry and one load at exit, where a hash table would cost an
/// insert and a delete per call.
#[map]
pub static SEND_STARTS: Array<SendStart> = Array::with_max_entries(SEND_SLOTS, 0);

/// Loss and activity counters; the agent sums the CPUs.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Settings the agent writes before attaching (`tracer_common::config`).
#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

/// A send between its entry and its exit. Kernel-only: the agent never sees it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SendStart {
    /// Whose slot it is: another thread with the same slot index overwrites it.
    pub pid_tgid: u64,
    pub ts_ns: u64,
    /// The syscall number, so an entry whose exit was missed (programs attached in between)
    /// is never taken for another call's.
    pub nr: u64,
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a valid map value; a racing increment on the same CPU
        // can at worst lose one count.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn setting(index: u32) -> u64 {
    CONFIG.get(index).copied().unwrap_or(0)
}
