//! The maps shared with the agent.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    COMM_LEN, MAX_EXEC_NAMES, MAX_SOCKETS, MAX_TARGETS, SockInfo, TARGET_BIT_WORDS, Target, config,
    counter, target_bit,
};

/// Events to the agent. The agent sets the real size at load (`ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Processes to trace, by tgid; filled by the agent's target discovery.
#[map]
pub static TARGETS: HashMap<u32, Target> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// One bit per tgid in `TARGETS` (`tracer_common::target_bit`), set by the agent and at exec,
/// cleared by the agent: the first filter of every hooked call of every process. A bit left set
/// for a process gone only costs that process a `TARGETS` lookup per call.
#[map]
pub static TARGET_BITS: Array<u64> = Array::with_max_entries(TARGET_BIT_WORDS, 0);

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

/// Whether `tgid` may be a target: its bit is set.
#[inline(always)]
pub fn maybe_target(tgid: u32) -> bool {
    let (word, mask) = target_bit(tgid);
    TARGET_BITS.get(word).is_some_and(|bits| bits & mask != 0)
}

/// Sets `tgid`'s bit. Not atomic: a concurrent update by the agent of the same word can undo
/// it, which the agent's next scan repairs (it sets the bit of every `TARGETS` entry).
#[inline(always)]
pub fn mark_target(tgid: u32) {
    let (word, mask) = target_bit(tgid);
    if let Some(bits) = TARGET_BITS.get_ptr_mut(word) {
        // SAFETY: a valid element of the array.
        unsafe { *bits |= mask };
    }
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
