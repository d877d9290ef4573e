//! The syscall hooks: programs at the exit of the dozen calls that move socket bytes or change
//! the socket table, and one at the entry of `close`. Everything is decided at exit from the
//! registers the call was made with, when the kernel has filled (recv) or consumed (send) the
//! bytes: one hook per call is half the cost of an entry and an exit, for the traced processes
//! and for every other process (each hooked call of any process runs a program). Each program
//! first asks whether the caller is a target, and other processes pay for nothing else.
//! `close` is handled at entry, before another thread can be given the same fd number.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user};
use aya_ebpf::{EbpfContext, programs::TracePointContext};
use aya_log_ebpf::debug;
use tracer_common::{
    AF_INET, AF_INET6, MAX_IOVECS, SockAddr, SockInfo, Target, config, counter, kind, role,
    sock_flag, sock_key, target_flag,
};

use crate::arch::Regs;
use crate::emit::{Buffers, Origin, conn_event, data_event, now_ns};
use crate::maps::{SOCKETS, TARGETS, count, maybe_target, setting};

const MSG_PEEK: u64 = 2;
const SOCK_STREAM: u64 = 1;
/// `SOCK_NONBLOCK`/`SOCK_CLOEXEC` share the type argument; the type is the low bits.
const SOCK_TYPE_MASK: u64 = 0xf;
const EINPROGRESS: i64 = 115;

/// A field of the tracepoint's record, read straight from the context (no helper call):
/// `sys_exit_*` records hold the return value at 16, `sys_enter_*` the arguments from 16 on.
#[inline(always)]
fn record<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the verifier allows aligned reads within the record, which is at least 24
    // bytes for every syscall tracepoint.
    unsafe { *(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// How a data call passes its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `read`/`write`/`recvfrom`/`sendto`: (fd, buf, len).
    Buf,
    /// `readv`/`writev`: (fd, iov, iovcnt).
    Iov,
    /// `recvmsg`/`sendmsg`: (fd, msghdr).
    Msg,
}

/// The calling thread, when its process is a target: the first, cheapest filter, and all
/// that other processes pay.
#[derive(Clone, Copy)]
pub struct Caller {
    pub pid_tgid: u64,
    pub target: Target,
}

impl Caller {
    #[inline(always)]
    pub fn tgid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }
}

#[inline(always)]
pub fn caller() -> Option<Caller> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !maybe_target(tgid) {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let target = unsafe { TARGETS.get(tgid) }.copied()?;
    Some(Caller { pid_tgid, target })
}

#[inline(always)]
pub fn socket(tgid: u32, fd: u64) -> Option<SockInfo> {
    // SAFETY: the value is copied out at once.
    unsafe { SOCKETS.get(sock_key(tgid, fd as u32)) }.copied()
}

#[inline(always)]
fn track(tgid: u32, fd: i32, info: &SockInfo) -> bool {
    let ok = SOCKETS.insert(sock_key(tgid, fd as u32), info, 0).is_ok();
    if !ok {
        count(counter::SOCKETS_FULL);
    }
    ok
}

/// Close is handled at entry: the fd is released whatever `close` returns, and another
/// thread may get the same number before this call's exit.
pub fn try_enter_close(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    let fd: u64 = record(ctx, 16);
    let tgid = caller.tgid();
    let Some(sock) = socket(tgid, fd) else {
        return Ok(());
    };
    let _ = SOCKETS.remove(sock_key(tgid, fd as u32));
    if sock.flags & sock_flag::ANNOUNCED != 0 {
        let origin = origin(&caller, fd as i32, sock, now_ns());
        conn_event(&origin, kind::CLOSE, SockAddr::default());
    }
    Ok(())
}

/// The exit of a data call: `dir` is `tracer_common::direction`, `peek_flags` the position of
/// a receive's flags argument (a peeking read leaves the bytes queued; the next read captures
/// them once).
#[inline(always)]
pub fn try_exit_data(
    ctx: &TracePointContext,
    dir: u8,
    shape: Shape,
    peek_flags: Option<usize>,
) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    let ret: i64 = record(ctx, 16);
    if ret <= 0 {
        return Ok(());
    }
    let regs = Regs::current();
    let fd = regs.arg(0);
    let Some(sock) = socket(caller.tgid(), fd) else {
        return Ok(());
    };
    if let Some(i) = peek_flags
        && regs.arg(i) & MSG_PEEK != 0
    {
        return Ok(());
    }
    // Inside a TLS call, or on a socket known to carry TLS: ciphertext, which the TLS
    // probes replace by the plaintext.
    if caller.target.flags & target_flag::TLS_CALLS != 0
        && crate::tls::inside_tls_call(&caller, fd as i32, sock)
    {
        return Ok(());
    }
    if sock.flags & sock_flag::TLS != 0 {
        return Ok(());
    }
    count(counter::CALLS);
    // Stamped at return: when a receive's bytes arrived, when a send's were handed over.
    let origin = origin(&caller, fd as i32, sock, now_ns());
    let mut bufs = Buffers {
        direction: dir,
        iov: [[regs.arg(1), ret as u64]; MAX_IOVECS],
        count: 1,
        total: ret as u64,
    };
    match shape {
        Shape::Buf => {}
        Shape::Iov => read_iovecs(&mut bufs, regs.arg(1), regs.arg(2))?,
        Shape::Msg => {
            // user_msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: user memory read through the helper; a bad pointer returns an error.
            let [iov, iovlen] =
                unsafe { bpf_probe_read_user((regs.arg(1) + 16) as *const [u64; 2]) }
                    .inspect_err(|_| count(counter::READ_FAILED))?;
            read_iovecs(&mut bufs, iov, iovlen)?;
        }
    }
    data_event(&origin, &bufs);
    Ok(())
}

/// The first `MAX_IOVECS` entries of a vectored call's iovec array, in one read.
#[inline(always)]
fn read_iovecs(bufs: &mut Buffers, iov: u64, iovcnt: u64) -> Result<(), i64> {
    let n = if iovcnt > MAX_IOVECS as u64 {
        MAX_IOVECS
    } else {
        iovcnt as usize
    };
    if n == 0 {
        return Ok(());
    }
    // SAFETY: at most `MAX_IOVECS` entries into an array of that many; a bad user pointer
    // makes the helper fail.
    let failed = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            bufs.iov.as_mut_ptr().cast(),
            (n * 16) as u32,
            iov as *const core::ffi::c_void,
        )
    } != 0;
    if failed {
        count(counter::READ_FAILED);
        return Err(-14);
    }
    bufs.count = n;
    Ok(())
}

#[inline(always)]
pub fn origin(caller: &Caller, fd: i32, sock: SockInfo, ts_ns: u64) -> Origin {
    let t = &caller.target;
    let cap = match sock.role {
        role::SERVER => t.server_cap,
        role::CLIENT => t.client_cap,
        _ if t.server_cap > t.client_cap => t.server_cap,
        _ => t.client_cap,
    };
    Origin {
        pid_tgid: caller.pid_tgid,
        fd,
        service: t.service,
        sock,
        ts_ns,
        flags: 0,
        cap: u64::from(cap),
    }
}

/// `socket(AF_INET/AF_INET6, SOCK_STREAM)`: a TCP socket, role unknown until it connects or
/// is accepted from.
pub fn try_exit_socket(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    let ret: i64 = record(ctx, 16);
    if ret < 0 {
        return Ok(());
    }
    let regs = Regs::current();
    let family = regs.arg(0);
    let sock_type = regs.arg(1) & SOCK_TYPE_MASK;
    if (family != AF_INET as u64 && family != AF_INET6 as u64) || sock_type != SOCK_STREAM {
        return Ok(());
    }
    let info = SockInfo {
        conn_id: now_ns(),
        ..SockInfo::default()
    };
    track(caller.tgid(), ret as i32, &info);
    Ok(())
}

/// `accept(fd, addr, addrlen)` and `accept4(…, flags)`: a new server-side connection.
pub fn try_exit_accept(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    let ret: i64 = record(ctx, 16);
    if ret < 0 {
        return Ok(());
    }
    let fd = ret as i32;
    let regs = Regs::current();
    let tgid = caller.tgid();
    let listener_known = socket(tgid, regs.arg(0)).is_some();
    let peer = read_sockaddr(regs.arg(1));
    let inet = peer.family == AF_INET || peer.family == AF_INET6;
    if !listener_known && !inet {
        return Ok(());
    }
    let ts_ns = now_ns();
    let sock = SockInfo {
        conn_id: ts_ns,
        role: role::SERVER,
        flags: sock_flag::ANNOUNCED,
        _pad: [0; 6],
    };
    if track(tgid, fd, &sock) {
        announce(&origin(&caller, fd, sock, ts_ns), peer);
    }
    Ok(())
}

/// `connect(fd, addr, len)` on a TCP socket: a new client-side connection (a non-blocking
/// connect still in progress counts: its bytes follow).
pub fn try_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    let ret: i64 = record(ctx, 16);
    if ret != 0 && ret != -EINPROGRESS {
        return Ok(());
    }
    let regs = Regs::current();
    let fd = regs.arg(0);
    let tgid = caller.tgid();
    let Some(mut sock) = socket(tgid, fd) else {
        return Ok(());
    };
    if sock.flags & sock_flag::ANNOUNCED != 0 {
        return Ok(());
    }
    sock.role = role::CLIENT;
    sock.flags |= sock_flag::ANNOUNCED;
    if track(tgid, fd as i32, &sock) {
        announce(
            &origin(&caller, fd as i32, sock, now_ns()),
            read_sockaddr(regs.arg(1)),
        );
    }
    Ok(())
}

fn announce(origin: &Origin, peer: SockAddr) {
    conn_event(origin, kind::OPEN, peer);
    if setting(config::VERBOSE) != 0 {
        // aya-log writes to its own ring buffer; its context argument is not read.
        debug!(
            &(),
            "open tgid={} fd={} role={} peer_port={}",
            (origin.pid_tgid >> 32) as u32,
            origin.fd,
            origin.sock.role,
            peer.port
        );
    }
}

/// The peer of `accept`/`connect` from the sockaddr the app passed; zeroes when absent.
fn read_sockaddr(ptr: u64) -> SockAddr {
    let mut out = SockAddr::default();
    if ptr == 0 {
        return out;
    }
    // sockaddr_in: family(2) port(2, big endian) addr(4); sockaddr_in6: family(2) port(2)
    // flowinfo(4) addr(16).
    // SAFETY: user memory read through the helper; a bad pointer returns an error.
    let Ok(head) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }) else {
        return out;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    out.port = u16::from_be_bytes([head[2], head[3]]);
    if family == AF_INET {
        out.family = family;
        out.addr[..4].copy_from_slice(&head[4..8]);
    } else if family == AF_INET6 {
        // SAFETY: as above.
        if let Ok(addr) = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) } {
            out.family = family;
            out.addr = addr;
        }
    }
    out
}
