//! Types shared by the eBPF programs and the agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding so both sides agree byte for byte;
//! the compile-time size checks at the bottom fail the build if a field is added carelessly.
#![no_std]

/// Ring buffer entry classes. `bpf_ringbuf_reserve` needs a constant size, so the kernel
/// picks the smallest class that fits the bytes it will copy; small requests then cost a
/// small reservation instead of a full one.
pub const PAYLOAD_TINY: usize = 256;
pub const PAYLOAD_SMALL: usize = 512;
pub const PAYLOAD_MEDIUM: usize = 4096;
/// Holds a head plus the start of a body at the default caps (4 KiB + 1 KiB), which would
/// otherwise take a `PAYLOAD_MAX` entry, three quarters of it empty, for every large read.
pub const PAYLOAD_LARGE: usize = 8192;
/// Upper bound of one captured chunk. The per-service caps (`Target`) may be lower, never
/// higher.
pub const PAYLOAD_MAX: usize = 16384;

/// How many iovec entries of one `readv`/`writev`/`sendmsg`/`recvmsg` are copied, one after
/// the other into the call's one data event; bytes in later entries are counted in `len`,
/// not copied.
pub const MAX_IOVECS: usize = 8;

/// How often the agent reads the ring buffer without being woken: the latency bound of
/// data events that did not wake it (waking the reader per event costs more than the event).
pub const POLL_INTERVAL_MS: u64 = 10;

/// Capacity of the kernel's socket table (LRU: the oldest idle sockets are evicted first).
pub const MAX_SOCKETS: u32 = 65536;
/// Capacity of the kernel's target table (processes traced at once).
pub const MAX_TARGETS: u32 = 1024;
/// Words of the kernel's target bitmap: one bit per possible tgid (Linux's `PID_MAX_LIMIT`
/// on 64-bit, 2^22), 512 KiB. The bitmap answers "is this a target?" for every hooked call of
/// every process with one array load; the target table is only read for set bits.
pub const TARGET_BIT_WORDS: u32 = (1 << 22) / 64;
/// Capacity of the table of TLS calls in flight, by thread.
pub const MAX_SSL_CALLS: u32 = 16384;
/// Capacity of the table of TLS objects' sockets (LRU: a missed `SSL_free` is evicted).
pub const MAX_SSL_FDS: u32 = 65536;
/// Capacity of the table of command names the kernel itself starts tracing at `exec`.
pub const MAX_EXEC_NAMES: u32 = 64;
/// Length of a kernel command name (`comm`), NUL padding included.
pub const COMM_LEN: usize = 16;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `EventHeader::kind`.
pub mod kind {
    pub const OPEN: u8 = 1;
    pub const DATA: u8 = 2;
    pub const CLOSE: u8 = 3;
    /// The last thread of a target process exited (no payload, no connection).
    pub const EXIT: u8 = 4;
}

/// `EventHeader::direction`.
pub mod direction {
    pub const NONE: u8 = 0;
    pub const SEND: u8 = 1;
    pub const RECV: u8 = 2;
}

/// `EventHeader::role` and `SockInfo::role`.
pub mod role {
    /// A TCP socket whose role is not known yet (created by `socket()`, not yet connected).
    pub const UNKNOWN: u8 = 0;
    /// Returned by `accept`: this process is the server of the connection.
    pub const SERVER: u8 = 1;
    /// Passed to `connect`: this process is the client.
    pub const CLIENT: u8 = 2;
}

/// `SockInfo::flags`.
pub mod sock_flag {
    /// An open event was emitted (by the kernel or, for seeded sockets, the agent), so the
    /// close must be reported too. Listening and never-connected sockets stay silent.
    pub const ANNOUNCED: u8 = 1;
    /// The socket carries TLS read through the TLS library's probes: its ciphertext from the
    /// socket calls is not copied.
    pub const TLS: u8 = 2;
}

/// `Target::flags`.
pub mod target_flag {
    /// The process has called the TLS library since it became a target (set by the TLS
    /// probes' entry): only then does a socket call ask whether it runs inside a TLS call of
    /// its thread. Other targets are spared that lookup on every call.
    pub const TLS_CALLS: u8 = 1;
}

/// `EventHeader::flags`.
pub mod event_flag {
    /// The payload is TLS plaintext, read from the TLS library rather than the socket.
    pub const TLS: u8 = 1;
}

/// Indexes into the per-CPU `COUNTERS` array. The agent sums the CPUs.
pub mod counter {
    /// Events the kernel could not reserve ring-buffer space for (ring full).
    pub const RING_FULL: u32 = 0;
    /// Data chunks whose bytes exceeded the payload cap (prefix kept, rest dropped).
    pub const TRUNCATED: u32 = 1;
    /// Data events written.
    pub const DATA_EVENTS: u32 = 2;
    /// Open/close/exit events written.
    pub const CONN_EVENTS: u32 = 3;
    /// `bpf_probe_read_user` failures (page not present, bad pointer): the event is sent
    /// with `captured = 0`.
    pub const READ_FAILED: u32 = 4;
    /// Socket table full: a new connection could not be tracked.
    pub const SOCKETS_FULL: u32 = 5;
    /// Calls whose bytes within the cap were not all copied: more iovecs than `MAX_IOVECS`,
    /// or a buffer the kernel could not read. The rest is counted in `len`, not copied.
    pub const IOVECS_CUT: u32 = 6;
    /// Reads and writes of traced sockets captured (one per call, however many data events
    /// its buffers make): what the kernel's cost per captured call is measured against.
    pub const CALLS: u32 = 7;
    /// TLS reads and writes captured (plaintext, from the TLS library's probes).
    pub const TLS_CALLS: u32 = 8;
    /// TLS reads and writes whose socket was not known (no socket call inside, no socket
    /// remembered for the TLS object, or not a traced TCP socket): not captured.
    pub const TLS_NO_SOCKET: u32 = 9;
    pub const COUNT: u32 = 10;
}

/// Indexes into the `CONFIG` array the agent writes before attaching.
pub mod config {
    /// Non-zero: emit aya-log diagnostics when connections open and close.
    pub const VERBOSE: u32 = 1;
    /// Unread ring-buffer bytes at which a data event wakes the agent; below it the agent
    /// finds the event on its next poll (`POLL_INTERVAL_MS`). Open/close always wake it.
    pub const WAKEUP_BYTES: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// A socket address as the kernel saw it: IPv4 lives in the first 4 bytes of `addr`, IPv6
/// fills all 16. `family` is `AF_INET` (2), `AF_INET6` (10) or 0 when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// The head of every ring-buffer entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// One of `kind::*`.
    pub kind: u8,
    /// One of `direction::*` (data events).
    pub direction: u8,
    /// One of `role::*`.
    pub role: u8,
    /// `event_flag::*` bits.
    pub flags: u8,
    /// Bytes of payload that follow the header (data events; ≤ the entry's class size).
    pub captured: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// The target's `Target::service`, so the agent needs no pid lookup per event.
    pub service: u32,
    pub _pad1: u64,
    /// Bytes the call moved (data) — may exceed `captured`, the copied prefix.
    pub len: u64,
    /// Unique for the socket's life in this process: a reused fd number gets a new id.
    pub conn_id: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC): at entry for sends and connect, at exit for
    /// receives and accept (when the bytes or the connection actually arrived), at entry for
    /// close.
    pub ts_ns: u64,
    /// Peer address, when the kernel saw it (open events from accept/connect).
    pub peer: SockAddr,
}

/// A data event: header plus a payload prefix. `N` is one of the `PAYLOAD_*` classes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent<const N: usize> {
    pub header: EventHeader,
    pub payload: [u8; N],
}

/// What the kernel remembers per traced TCP socket, keyed by `sock_key(tgid, fd)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockInfo {
    pub conn_id: u64,
    /// One of `role::*`.
    pub role: u8,
    /// `sock_flag::*` bits.
    pub flags: u8,
    pub _pad: [u8; 6],
}

/// Per-process target entry, keyed by tgid. `service` indexes the agent's service table.
/// The caps are the bytes of each read/write copied, by the socket's role: the agent derives
/// them from what the service's rules read (heads only, or heads and the start of bodies).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub service: u32,
    /// On connections this process accepted (≤ `PAYLOAD_MAX`).
    pub server_cap: u16,
    /// On connections this process made (≤ `PAYLOAD_MAX`); connections of unknown role get
    /// the larger of the two.
    pub client_cap: u16,
    /// `target_flag` bits, set by the kernel; the agent keeps those it finds.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// A TLS read, write or handshake in flight on one thread (keyed by pid_tgid), from its
/// entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslCall {
    /// The TLS object (`SSL*`).
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// Where the `_ex` calls store the bytes moved; 0 when the return value says it.
    pub moved: u64,
    /// The socket a socket call inside this call used; -1 until one did.
    pub fd: i32,
    /// One of `direction::*`; `NONE` for a handshake.
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// Key of the TLS object → socket table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Where a tgid's bit is in the target bitmap: (word index, bit mask). Tgids past the bitmap
/// fold onto it, which only costs a target-table lookup.
#[inline(always)]
pub const fn target_bit(tgid: u32) -> (u32, u64) {
    ((tgid / 64) % TARGET_BIT_WORDS, 1 << (tgid % 64))
}

/// Key of the socket table: one u64 so the kernel does one lookup per syscall.
#[inline(always)]
pub const fn sock_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

const _: () = assert!(core::mem::size_of::<SockAddr>() == 24);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 80);
const _: () = assert!(core::mem::size_of::<DataEvent<PAYLOAD_MAX>>() == 80 + PAYLOAD_MAX);
const _: () = assert!(core::mem::size_of::<SockInfo>() == 16);
const _: () = assert!(core::mem::size_of::<Target>() == 12);
const _: () = assert!(core::mem::size_of::<SslCall>() == 32);
const _: () = assert!(core::mem::size_of::<SslKey>() == 16);
const _: () = assert!(
    PAYLOAD_TINY < PAYLOAD_SMALL
        && PAYLOAD_SMALL < PAYLOAD_MEDIUM
        && PAYLOAD_MEDIUM < PAYLOAD_LARGE
        && PAYLOAD_LARGE < PAYLOAD_MAX
);
const _: () = assert!(PAYLOAD_MAX <= u16::MAX as usize);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and arrays of integers, and have
    // their padding spelled out as fields, so every bit pattern is valid.
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for Target {}
}
