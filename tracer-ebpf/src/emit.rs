//! Writers of ring-buffer entries. Each reserves its entry and fills it in place (a 16 KiB
//! entry cannot live on the 512-byte BPF stack).

use aya_ebpf::helpers::generated::{bpf_ktime_get_ns, bpf_probe_read_user};
use aya_ebpf::maps::ring_buf::RingBufEntry;
use tracer_common::{
    DataEvent, EventHeader, MAX_IOVECS, PAYLOAD_LARGE, PAYLOAD_MAX, PAYLOAD_MEDIUM, PAYLOAD_SMALL,
    PAYLOAD_TINY, SockAddr, SockInfo, config, counter, kind,
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
    /// Writes the fields every event has into a reserved entry's header; the caller sets the
    /// rest. Field by field: building the header on the stack and copying it costs a memset
    /// call and a second copy per event.
    #[inline(always)]
    fn write_header(&self, header: *mut EventHeader, event_kind: u8) {
        // SAFETY: `header` points into a reserved ring-buffer entry large enough for it.
        unsafe {
            (*header).kind = event_kind;
            (*header).direction = 0;
            (*header).role = self.sock.role;
            (*header).flags = self.flags;
            (*header).captured = 0;
            (*header).tgid = (self.pid_tgid >> 32) as u32;
            (*header).tid = self.pid_tgid as u32;
            (*header).fd = self.fd;
            (*header).service = self.service;
            (*header)._pad1 = 0;
            (*header).len = 0;
            (*header).conn_id = self.sock.conn_id;
            (*header).ts_ns = self.ts_ns;
            let peer = core::ptr::addr_of_mut!((*header).peer).cast::<u64>();
            for i in 0..3 {
                core::ptr::write_volatile(peer.add(i), 0);
            }
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
    let header = entry.as_mut_ptr();
    origin.write_header(header, event_kind);
    // SAFETY: as in `write_header`.
    unsafe { (*header).peer = peer };
    // The agent reads /proc for the local address while the socket still exists.
    entry.submit(BPF_RB_FORCE_WAKEUP);
    count(counter::CONN_EVENTS);
}

/// The buffers of one call, as the app passed them (a plain buffer is one; a vectored call
/// up to `MAX_IOVECS`), and how many bytes the call moved through them.
pub struct Buffers {
    pub direction: u8,
    /// `[base, len]` pairs, as in `struct iovec`; only the first `count` are read.
    pub iov: [[u64; 2]; MAX_IOVECS],
    pub count: usize,
    /// The call's return value: the first `total` bytes of the buffers, in order.
    pub total: u64,
}

/// One data event for the whole call: the start of its bytes, copied buffer after buffer, up
/// to `origin.cap`; `len` says how many the call moved. (One event per call rather than per
/// buffer: the ring operations, not the copies, are most of an event's cost.) The entry is
/// the smallest size class that holds the copy: the ring's room is counted in entries' full
/// sizes, whatever they hold.
#[inline(always)]
pub fn data_event(origin: &Origin, bufs: &Buffers) {
    let want = if bufs.total > origin.cap {
        count(counter::TRUNCATED);
        origin.cap
    } else {
        bufs.total
    };
    if bufs.count == 1 {
        if want <= PAYLOAD_TINY as u64 {
            single::<PAYLOAD_TINY>(origin, bufs, want);
        } else if want <= PAYLOAD_SMALL as u64 {
            single::<PAYLOAD_SMALL>(origin, bufs, want);
        } else if want <= PAYLOAD_MEDIUM as u64 {
            single::<PAYLOAD_MEDIUM>(origin, bufs, want);
        } else if want <= PAYLOAD_LARGE as u64 {
            single::<PAYLOAD_LARGE>(origin, bufs, want);
        } else {
            single::<PAYLOAD_MAX>(origin, bufs, want);
        }
    } else if want <= PAYLOAD_TINY as u64 {
        sized::<PAYLOAD_TINY, { 2 * PAYLOAD_TINY }>(origin, bufs, want);
    } else if want <= PAYLOAD_SMALL as u64 {
        sized::<PAYLOAD_SMALL, { 2 * PAYLOAD_SMALL }>(origin, bufs, want);
    } else if want <= PAYLOAD_MEDIUM as u64 {
        sized::<PAYLOAD_MEDIUM, { 2 * PAYLOAD_MEDIUM }>(origin, bufs, want);
    } else if want <= PAYLOAD_LARGE as u64 {
        sized::<PAYLOAD_LARGE, { 2 * PAYLOAD_LARGE }>(origin, bufs, want);
    } else {
        sized::<PAYLOAD_MAX, { 2 * PAYLOAD_MAX }>(origin, bufs, want);
    }
}

/// A one-buffer call into an entry of class `N`: its one copy starts at the payload's start,
/// so the payload needs no slack.
#[inline(always)]
fn single<const N: usize>(origin: &Origin, bufs: &Buffers, want: u64) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent<N>>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the entry's payload holds `N` bytes from its start.
    let copied =
        match unsafe { copy_user::<N>((*event).payload.as_mut_ptr(), want, bufs.iov[0][0]) } {
            Some(size) => u64::from(size),
            None => {
                count(counter::IOVECS_CUT);
                0
            }
        };
    submit(origin, bufs, entry, copied);
}

/// Copies into an entry of class `N` whose payload area is `SLACK = 2N` bytes: each copy
/// starts below `N` and is at most `N` long, bounds the verifier can check one by one (it
/// cannot see that the copies together stay within `want ≤ N`).
#[inline(always)]
fn sized<const N: usize, const SLACK: usize>(origin: &Origin, bufs: &Buffers, want: u64) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent<SLACK>>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    let mut copied: u64 = 0;
    for i in 0..MAX_IOVECS {
        if i >= bufs.count || copied >= want || copied >= N as u64 {
            break;
        }
        let [base, len] = bufs.iov[i];
        let left = want - copied;
        let size = if len < left { len } else { left };
        // SAFETY: `copied < N` and the payload holds `SLACK = 2N` bytes, so `N` fit from
        // `copied` on.
        let Some(size) = (unsafe {
            copy_user::<N>(
                (*event).payload.as_mut_ptr().add(copied as usize),
                size,
                base,
            )
        }) else {
            break;
        };
        copied += u64::from(size);
    }
    if copied < want {
        // Bytes past the last buffer copied (more buffers than `MAX_IOVECS`, or a failed
        // read) are counted in `len`, not copied.
        count(counter::IOVECS_CUT);
    }
    submit(origin, bufs, entry, copied);
}

/// Copies up to `N` of `size` bytes from user address `src` to `dst`; the bytes copied, or
/// `None` (counted) when the user memory could not be read.
///
/// # Safety
/// `dst` must have room for `N` bytes.
#[inline(always)]
unsafe fn copy_user<const N: usize>(dst: *mut u8, size: u64, src: u64) -> Option<u32> {
    // The verifier needs an unsigned bound right before the copy; it cannot see the caller's,
    // and LLVM would drop a second one it can prove redundant unless the value comes back
    // through memory.
    // SAFETY: a read of a local.
    let size = unsafe { core::ptr::read_volatile(&size) };
    let size = if size > N as u64 {
        N as u32
    } else {
        size as u32
    };
    // SAFETY: `dst` has room for `N ≥ size` bytes (the caller's promise); a bad user pointer
    // makes the helper fail, it never faults.
    let failed =
        unsafe { bpf_probe_read_user(dst.cast(), size, src as *const core::ffi::c_void) } != 0;
    if failed {
        count(counter::READ_FAILED);
        None
    } else {
        Some(size)
    }
}

/// Fills a data entry's header once its payload is copied, and hands it to the agent.
#[inline(always)]
fn submit<const K: usize>(
    origin: &Origin,
    bufs: &Buffers,
    mut entry: RingBufEntry<DataEvent<K>>,
    copied: u64,
) {
    // SAFETY: the header is the reserved entry's first field.
    let header = unsafe { core::ptr::addr_of_mut!((*entry.as_mut_ptr()).header) };
    origin.write_header(header, kind::DATA);
    // SAFETY: as above.
    unsafe {
        (*header).direction = bufs.direction;
        (*header).len = bufs.total;
        (*header).captured = copied as u32;
    }
    count(counter::DATA_EVENTS);
    entry.submit(wakeup());
}

/// Wakes the agent only once a good part of the ring is waiting: a wake-up per event would
/// cost the traced process an interrupt each.
#[inline(always)]
fn wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= setting(config::WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
