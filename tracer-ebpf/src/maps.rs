//! The maps shared with the agent.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    COMM_LEN, MAX_EXEC_NAMES, MAX_SOCKETS, MAX_TARGETS, SockInfo, Target, config, counter,
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

/// Loss and activity counters; the agent sums the CPUs.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Settings the agent writes before attaching (`tracer_common::config`).
#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

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
