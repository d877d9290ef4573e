//! Order Tracer's kernel side: syscall tracepoints that copy the TCP payloads of target
//! processes into a ring buffer.
//!
//! Enter handlers filter (tgid in `TARGETS`, fd in `SOCKETS`) and remember the arguments per
//! thread; one exit handler, attached to every exit tracepoint, acts on the return value:
//! bytes are copied at exit, when the kernel has filled (recv) or consumed (send) them.
#![no_std]
#![no_main]

mod emit;
mod maps;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use tracer_common::{
    AF_INET, AF_INET6, MAX_IOVECS, SockAddr, SockInfo, config, counter, direction, kind, role,
    sock_flag, sock_key,
};

use crate::{
    emit::{Chunk, Origin, conn_event, data_event, now_ns},
    maps::{EXEC_NAMES, PENDING, Pending, SOCKETS, TARGETS, call, count, setting},
};

const MSG_PEEK: u64 = 2;
const SOCK_STREAM: u64 = 1;
/// `SOCK_NONBLOCK`/`SOCK_CLOEXEC` share the type argument; the type is the low bits.
const SOCK_TYPE_MASK: u64 = 0xf;
const EINPROGRESS: i64 = 115;

/// Runs a handler; its error (a failed context read) only means this call is not captured.
macro_rules! entry {
    ($name:ident, $body:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let handler: fn(&TracePointContext) -> Result<(), i64> = $body;
            match handler(&ctx) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
    };
}

/// A data call's entry: which call, which direction, and the position of its flags argument
/// (receives only). `read` has none: a fourth slot would lie past its record.
macro_rules! data_entry {
    ($name:ident, $call:expr, $dir:expr, $peek_flags:expr) => {
        entry!($name, |ctx| enter_data(ctx, $call, $dir, $peek_flags));
    };
}

data_entry!(enter_read, call::BUF, direction::RECV, None);
data_entry!(enter_recvfrom, call::BUF, direction::RECV, Some(3));
data_entry!(enter_send_buf, call::BUF, direction::SEND, None);
data_entry!(enter_recv_iov, call::IOV, direction::RECV, None);
data_entry!(enter_send_iov, call::IOV, direction::SEND, None);
data_entry!(enter_recv_msg, call::MSG, direction::RECV, Some(2));
data_entry!(enter_send_msg, call::MSG, direction::SEND, None);
entry!(enter_socket, try_enter_socket);
entry!(enter_accept, try_enter_accept);
entry!(enter_connect, try_enter_connect);
entry!(enter_close, try_enter_close);
entry!(sys_exit, try_sys_exit);
entry!(sched_exec, try_sched_exec);
entry!(sched_exit, try_sched_exit);

/// The `i`-th syscall argument of a `sys_enter_*` tracepoint (or the return value of a
/// `sys_exit_*` one, at `i = 0`): 8-byte slots after the 16-byte common header.
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> Result<u64, i64> {
    // SAFETY: offsets within the syscall tracepoint record (see its `format` file).
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.map_err(i64::from)
}

#[inline(always)]
fn target_service(tgid: u32) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    unsafe { TARGETS.get(tgid) }.map(|t| t.service)
}

#[inline(always)]
fn socket(tgid: u32, fd: i32) -> Option<SockInfo> {
    // SAFETY: the value is copied out at once.
    unsafe { SOCKETS.get(sock_key(tgid, fd as u32)) }.copied()
}

#[inline(always)]
fn remember(pid_tgid: u64, pending: &Pending) -> Result<(), i64> {
    PENDING.insert(pid_tgid, pending, 0).map_err(|e| {
        count(counter::PENDING_FULL);
        i64::from(e)
    })
}

#[inline(always)]
fn track(tgid: u32, fd: i32, info: &SockInfo) -> bool {
    let ok = SOCKETS.insert(sock_key(tgid, fd as u32), info, 0).is_ok();
    if !ok {
        count(counter::SOCKETS_FULL);
    }
    ok
}

/// A call of a target process whose first argument is a file descriptor.
#[derive(Clone, Copy)]
struct FdCall {
    pid_tgid: u64,
    tgid: u32,
    service: u32,
    fd: i32,
}

/// The call, when the calling process is a target (the first, cheapest filter).
#[inline(always)]
fn traced_fd_call(ctx: &TracePointContext) -> Result<Option<FdCall>, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(service) = target_service(tgid) else {
        return Ok(None);
    };
    let fd = arg(ctx, 0)? as i32;
    Ok(Some(FdCall {
        pid_tgid,
        tgid,
        service,
        fd,
    }))
}

/// The call and its socket, when the process is a target and the fd a traced TCP socket.
#[inline(always)]
fn traced_socket(ctx: &TracePointContext) -> Result<Option<(FdCall, SockInfo)>, i64> {
    let Some(caller) = traced_fd_call(ctx)? else {
        return Ok(None);
    };
    Ok(socket(caller.tgid, caller.fd).map(|sock| (caller, sock)))
}

fn pending(ctx: &TracePointContext, call: u8, fd: i32, service: u32) -> Result<Pending, i64> {
    Ok(Pending {
        ts_ns: now_ns(),
        ptr: 0,
        count: 0,
        sock: SockInfo::default(),
        fd,
        service,
        call,
        direction: direction::NONE,
        listener_known: 0,
        nr: syscall_nr(ctx)?,
        _pad: 0,
    })
}

/// `__syscall_nr`, at the same offset in enter and exit records.
#[inline(always)]
fn syscall_nr(ctx: &TracePointContext) -> Result<i32, i64> {
    // SAFETY: offset within the syscall tracepoint record.
    unsafe { ctx.read_at::<i32>(8) }.map_err(i64::from)
}

/// `read`, `write`, `recvfrom`, `sendto` (fd, buf, len), `readv`, `writev` (fd, iov, iovcnt),
/// `recvmsg`, `sendmsg` (fd, msg). `peek_flags` is the flags argument of the receive calls:
/// a `MSG_PEEK` read leaves the bytes queued, so the next read captures them once.
#[inline(always)]
fn enter_data(
    ctx: &TracePointContext,
    call: u8,
    dir: u8,
    peek_flags: Option<usize>,
) -> Result<(), i64> {
    let Some((caller, sock)) = traced_socket(ctx)? else {
        return Ok(());
    };
    if let Some(i) = peek_flags
        && arg(ctx, i)? & MSG_PEEK != 0
    {
        return Ok(());
    }
    let mut p = pending(ctx, call, caller.fd, caller.service)?;
    p.ptr = arg(ctx, 1)?;
    p.count = arg(ctx, 2)?;
    p.sock = sock;
    p.direction = dir;
    remember(caller.pid_tgid, &p)
}

fn try_enter_socket(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(service) = target_service((pid_tgid >> 32) as u32) else {
        return Ok(());
    };
    let family = arg(ctx, 0)?;
    let kind = arg(ctx, 1)? & SOCK_TYPE_MASK;
    if (family != AF_INET as u64 && family != AF_INET6 as u64) || kind != SOCK_STREAM {
        return Ok(());
    }
    remember(pid_tgid, &pending(ctx, call::SOCKET, -1, service)?)
}

/// `accept(fd, addr, addrlen)` and `accept4(…, flags)`.
fn try_enter_accept(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(caller) = traced_fd_call(ctx)? else {
        return Ok(());
    };
    let mut p = pending(ctx, call::ACCEPT, caller.fd, caller.service)?;
    p.ptr = arg(ctx, 1)?;
    p.listener_known = socket(caller.tgid, caller.fd).is_some() as u8;
    remember(caller.pid_tgid, &p)
}

fn try_enter_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((caller, sock)) = traced_socket(ctx)? else {
        return Ok(());
    };
    let mut p = pending(ctx, call::CONNECT, caller.fd, caller.service)?;
    p.ptr = arg(ctx, 1)?;
    p.sock = sock;
    remember(caller.pid_tgid, &p)
}

/// Close is handled at entry: the fd is released whatever `close` returns.
fn try_enter_close(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((caller, sock)) = traced_socket(ctx)? else {
        return Ok(());
    };
    let FdCall {
        pid_tgid,
        tgid,
        service,
        fd,
    } = caller;
    let _ = SOCKETS.remove(sock_key(tgid, fd as u32));
    if sock.flags & sock_flag::ANNOUNCED != 0 {
        let origin = Origin {
            tgid,
            tid: pid_tgid as u32,
            fd,
            service,
            sock,
            ts_ns: now_ns(),
        };
        conn_event(&origin, kind::CLOSE, SockAddr::default());
        if setting(config::VERBOSE) != 0 {
            debug!(ctx, "close tgid={} fd={} conn={}", tgid, fd, sock.conn_id);
        }
    }
    Ok(())
}

fn try_sys_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once; only this thread writes its key.
    let Some(p) = (unsafe { PENDING.get(pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = PENDING.remove(pid_tgid);
    if p.nr != syscall_nr(ctx)? {
        return Ok(());
    }
    let ret = arg(ctx, 0)? as i64;
    if ret < 0 && !(p.call == call::CONNECT && ret == -EINPROGRESS) {
        return Ok(());
    }
    let tgid = (pid_tgid >> 32) as u32;
    if ret > 0 && p.direction != direction::NONE && setting(config::VERBOSE) != 0 {
        debug!(
            ctx,
            "data tgid={} fd={} dir={} bytes={}", tgid, p.fd, p.direction, ret
        );
    }
    let mut origin = Origin::of_call(pid_tgid, &p);
    if p.direction == direction::RECV {
        // Bytes arrive when a receive returns; a blocking read may wait long before that.
        origin.ts_ns = now_ns();
    }
    match p.call {
        call::BUF if ret > 0 => {
            let chunk = Chunk {
                direction: p.direction,
                iov_index: 0,
                src: p.ptr,
                len: ret as u64,
                avail: ret as u64,
            };
            data_event(&origin, &chunk);
        }
        call::IOV if ret > 0 => iovecs(&origin, p.direction, p.ptr, p.count, ret as u64),
        call::MSG if ret > 0 => {
            // user_msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: user memory read through the helper; a bad pointer returns an error.
            let iov = unsafe { bpf_probe_read_user((p.ptr + 16) as *const u64) };
            let iovlen = unsafe { bpf_probe_read_user((p.ptr + 24) as *const u64) };
            match (iov, iovlen) {
                (Ok(iov), Ok(iovlen)) => iovecs(&origin, p.direction, iov, iovlen, ret as u64),
                _ => count(counter::READ_FAILED),
            }
        }
        call::SOCKET => {
            let info = SockInfo {
                conn_id: now_ns(),
                ..SockInfo::default()
            };
            track(tgid, ret as i32, &info);
        }
        call::ACCEPT => {
            let peer = read_sockaddr(p.ptr);
            let inet = peer.family == AF_INET || peer.family == AF_INET6;
            if p.listener_known == 0 && !inet {
                return Ok(());
            }
            origin.fd = ret as i32;
            origin.ts_ns = now_ns();
            origin.sock = SockInfo {
                conn_id: origin.ts_ns,
                role: role::SERVER,
                flags: sock_flag::ANNOUNCED,
                _pad: [0; 6],
            };
            if track(tgid, origin.fd, &origin.sock) {
                open(ctx, &origin, peer);
            }
        }
        call::CONNECT => {
            if p.sock.flags & sock_flag::ANNOUNCED != 0 {
                return Ok(());
            }
            origin.sock.role = role::CLIENT;
            origin.sock.flags |= sock_flag::ANNOUNCED;
            if track(tgid, p.fd, &origin.sock) {
                open(ctx, &origin, read_sockaddr(p.ptr));
            }
        }
        _ => {}
    }
    Ok(())
}

/// `sched:sched_process_exec`: the new program's command name is already set.
fn try_sched_exec(_ctx: &TracePointContext) -> Result<(), i64> {
    let comm = bpf_get_current_comm().map_err(i64::from)?;
    // SAFETY: the value is copied out at once.
    if let Some(target) = unsafe { EXEC_NAMES.get(comm) }.copied() {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        TARGETS.insert(tgid, target, 0).map_err(i64::from)?;
    }
    Ok(())
}

/// `sched:sched_process_exit` with `group_dead` (offset 32): the process is gone, its fds
/// closed without `close` calls; the agent forgets its sockets when it sees the event.
fn try_sched_exit(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offset within the sched_process_exit record (see its `format` file).
    let group_dead: u8 = unsafe { ctx.read_at(32) }.map_err(i64::from)?;
    if group_dead == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(service) = target_service(tgid) else {
        return Ok(());
    };
    let _ = TARGETS.remove(tgid);
    let origin = Origin {
        tgid,
        tid: pid_tgid as u32,
        fd: -1,
        service,
        sock: SockInfo::default(),
        ts_ns: now_ns(),
    };
    conn_event(&origin, kind::EXIT, SockAddr::default());
    Ok(())
}

fn open(ctx: &TracePointContext, origin: &Origin, peer: SockAddr) {
    conn_event(origin, kind::OPEN, peer);
    if setting(config::VERBOSE) != 0 {
        debug!(
            ctx,
            "open tgid={} fd={} role={} peer_port={}",
            origin.tgid,
            origin.fd,
            origin.sock.role,
            peer.port
        );
    }
}

/// One data event per iovec for the first `MAX_IOVECS`, each copied from its own base;
/// `total` (the syscall's return value) is spread over them in order, and the last one
/// carries whatever is left so the lengths always add up to `total`.
fn iovecs(origin: &Origin, dir: u8, iov_ptr: u64, iov_count: u64, total: u64) {
    let mut remaining = total;
    for i in 0..MAX_IOVECS {
        if i as u64 >= iov_count || remaining == 0 {
            break;
        }
        // SAFETY: user memory read through the helper; a bad pointer returns an error.
        let Ok(iov) =
            (unsafe { bpf_probe_read_user((iov_ptr + 16 * i as u64) as *const [u64; 2]) })
        else {
            count(counter::READ_FAILED);
            return;
        };
        let here = if iov[1] < remaining {
            iov[1]
        } else {
            remaining
        };
        let last = i == MAX_IOVECS - 1 || i as u64 + 1 == iov_count;
        let len = if last { remaining } else { here };
        if len == 0 {
            continue;
        }
        if len > here {
            count(counter::IOVECS_CUT);
        }
        let chunk = Chunk {
            direction: dir,
            iov_index: i as u32,
            src: iov[0],
            len,
            avail: here,
        };
        data_event(origin, &chunk);
        remaining -= len;
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
