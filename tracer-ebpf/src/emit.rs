//! Writers of ring-buffer entries. Each reserves its entry and fills it in place (a 16 KiB
//! entry cannot live on the 512-byte BPF stack).

use aya_ebpf::helpers::generated::{bpf_ktime_get_ns, bpf_probe_read_user};
use tracer_common::{
    DataEvent, EventHeader, PAYLOAD_MAX, PAYLOAD_MEDIUM, PAYLOAD_SMALL, SockAddr, SockInfo, config,
    counter, kind,
};

use crate::maps::{EVENTS, count, setting};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Who a chunk belongs to: the fields every event of one call shares.
pub struct Origin {
    pub pid_tgid: u64,
    pub fd: i32,
    pub service: u32,
    pub sock: SockInfo,
    pub ts_ns: u64,
    /// `tracer_common::event_flag` bits.
    pub flags: u8,
    /// Most bytes to copy per chunk (the target's cap for this socket's role).
    pub cap: u64,
}

impl Origin {
    #[inline(always)]
    fn header(&self, event_kind: u8) -> EventHeader {
        EventHeader {
            kind: event_kind,
            direction: 0,
            role: self.sock.role,
            flags: self.flags,
            captured: 0,
            tgid: (self.pid_tgid >> 32) as u32,
            tid: self.pid_tgid as u32,
            fd: self.fd,
            service: self.service,
            iov_index: 0,
            _pad1: 0,
            len: 0,
            conn_id: self.sock.conn_id,
            ts_ns: self.ts_ns,
            peer: SockAddr::default(),
        }
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: no arguments, always available to tracing programs.
    unsafe { bpf_ktime_get_ns() }
}

/// An open, close or exit event.
pub fn conn_event(origin: &Origin, event_kind: u8, peer: SockAddr) {
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let mut header = origin.header(event_kind);
    header.peer = peer;
    entry.write(header);
    // The agent reads /proc for the local address while the socket still exists.
    entry.submit(BPF_RB_FORCE_WAKEUP);
    count(counter::CONN_EVENTS);
}

/// One chunk of a call's bytes. (A struct: BPF functions take at most five arguments.)
pub struct Chunk {
    pub direction: u8,
    pub iov_index: u32,
    /// User address of the chunk's first byte.
    pub src: u64,
    /// Bytes the call moved for this chunk.
    pub len: u64,
    /// How many of them are contiguous at `src` (≤ `len`).
    pub avail: u64,
}

/// One data event; copies at most `origin.cap` of the chunk's contiguous bytes into the
/// smallest entry class that holds them.
#[inline(always)]
pub fn data_event(origin: &Origin, chunk: &Chunk) {
    let want = if chunk.avail > origin.cap {
        count(counter::TRUNCATED);
        origin.cap
    } else {
        chunk.avail
    };
    if want <= PAYLOAD_SMALL as u64 {
        sized::<PAYLOAD_SMALL>(origin, chunk, want);
    } else if want <= PAYLOAD_MEDIUM as u64 {
        sized::<PAYLOAD_MEDIUM>(origin, chunk, want);
    } else {
        sized::<PAYLOAD_MAX>(origin, chunk, want);
    }
}

#[inline(always)]
fn sized<const N: usize>(origin: &Origin, chunk: &Chunk, want: u64) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent<N>>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // The verifier needs an unsigned bound right before the copy.
    let size = if want > N as u64 {
        N as u32
    } else {
        want as u32
    };
    // SAFETY: `event` points at a reserved entry of `size_of::<DataEvent<N>>()` bytes and
    // `size ≤ N` bytes are written into its payload; a bad user pointer makes the helper fail,
    // it never faults.
    let copied = unsafe {
        bpf_probe_read_user(
            (*event).payload.as_mut_ptr().cast(),
            size,
            chunk.src as *const core::ffi::c_void,
        )
    };
    let captured = if copied == 0 {
        size
    } else {
        count(counter::READ_FAILED);
        0
    };
    let mut header = origin.header(kind::DATA);
    header.direction = chunk.direction;
    header.iov_index = chunk.iov_index;
    header.len = chunk.len;
    header.captured = captured;
    // SAFETY: as above; the header is the entry's first field.
    unsafe { (*event).header = header };
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA);
    entry.submit(if pending >= setting(config::WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    });
    count(counter::DATA_EVENTS);
}
