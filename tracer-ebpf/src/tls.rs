//! The TLS library hooks: uprobes at the entry of OpenSSL's read, write and handshake calls
//! and uretprobes at their return. The plaintext of a read or write is copied at its return,
//! exactly as a socket call's bytes are, into a data event flagged TLS.
//!
//! Which connection a call is on comes from the socket syscall OpenSSL makes inside it, on
//! the same thread: the syscall hooks of a process that has called the TLS library
//! (`target_flag::TLS_CALLS`) see the call in flight (`SSL_CALLS`), record its fd, and
//! remember the socket as carrying TLS, whose ciphertext they no longer copy. A read served
//! from OpenSSL's own buffer makes no syscall: the fd last seen for that `SSL*`
//! (`SSL_FDS`, seeded by `SSL_set_fd` too) answers then.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user};
use aya_ebpf::programs::{ProbeContext, RetProbeContext};
use tracer_common::{
    MAX_IOVECS, SockInfo, SslCall, SslKey, counter, direction, event_flag, sock_flag, sock_key,
    target_flag,
};

use crate::emit::{Buffers, data_event, now_ns};
use crate::maps::{SOCKETS, SSL_CALLS, SSL_FDS, TARGETS, count};
use crate::syscalls::{Caller, caller, origin, socket};

/// `BPF_NOEXIST`: a handshake started inside another call keeps that call's entry.
const BPF_NOEXIST: u64 = 1;

/// Which OpenSSL call a probe is on.
#[derive(Clone, Copy)]
pub enum Call {
    /// `SSL_read(ssl, buf, num)` / `SSL_write(ssl, buf, num)`: the bytes are the return value.
    Plain(u8),
    /// `SSL_read_ex(ssl, buf, num, &n)` / `SSL_write_ex(…)`: success is 1, the bytes in `*n`.
    Ex(u8),
    /// `SSL_do_handshake`/`SSL_connect`/`SSL_accept`: no plaintext, but the handshake's
    /// ciphertext is marked as TLS all the same.
    Handshake,
}

/// At a call's entry: remember it for the socket syscalls inside it and for its return.
pub fn try_enter(ctx: &ProbeContext, call: Call) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    if caller.target.flags & target_flag::TLS_CALLS == 0
        && let Some(target) = TARGETS.get_ptr_mut(caller.tgid())
    {
        // SAFETY: a valid entry of the map. Set before the socket calls inside this call,
        // which read it to know they must look for it.
        unsafe { (*target).flags |= target_flag::TLS_CALLS };
    }
    let arg = |n: usize| ctx.arg::<u64>(n).unwrap_or(0);
    let (dir, moved) = match call {
        Call::Plain(dir) => (dir, 0),
        Call::Ex(dir) => (dir, arg(3)),
        Call::Handshake => (direction::NONE, 0),
    };
    let entry = SslCall {
        ssl: arg(0),
        buf: arg(1),
        moved,
        fd: -1,
        direction: dir,
        _pad: [0; 3],
    };
    let flags = if dir == direction::NONE {
        BPF_NOEXIST
    } else {
        0
    };
    let _ = SSL_CALLS.insert(caller.pid_tgid, entry, flags);
    Ok(())
}

/// At the return of a read or write: its plaintext, on the socket the call used.
pub fn try_return_data(ctx: &RetProbeContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(call) = (unsafe { SSL_CALLS.get(pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = SSL_CALLS.remove(pid_tgid);
    if call.direction == direction::NONE {
        return Ok(());
    }
    // OpenSSL's calls return `int`.
    let ret = i64::from(ctx.ret::<i32>());
    let moved = if call.moved != 0 {
        if ret != 1 {
            return Ok(());
        }
        // SAFETY: user memory read through the helper; a bad pointer returns an error.
        unsafe { bpf_probe_read_user(call.moved as *const u64) }
            .inspect_err(|_| count(counter::READ_FAILED))?
    } else if ret > 0 {
        ret as u64
    } else {
        return Ok(());
    };
    let Some(caller) = caller() else {
        return Ok(());
    };
    let tgid = caller.tgid();
    let fd = if call.fd >= 0 {
        call.fd
    } else {
        // SAFETY: the value is copied out at once.
        match unsafe { SSL_FDS.get(ssl_key(tgid, call.ssl)) }.copied() {
            Some(fd) => fd,
            None => {
                count(counter::TLS_NO_SOCKET);
                return Ok(());
            }
        }
    };
    let Some(sock) = socket(tgid, fd as u64) else {
        count(counter::TLS_NO_SOCKET);
        return Ok(());
    };
    let sock = mark_tls(tgid, fd, sock);
    count(counter::TLS_CALLS);
    let mut origin = origin(&caller, fd, sock, now_ns());
    origin.flags = event_flag::TLS;
    let bufs = Buffers {
        direction: call.direction,
        iov: [[call.buf, moved]; MAX_IOVECS],
        count: 1,
        total: moved,
    };
    data_event(&origin, &bufs);
    Ok(())
}

/// At a handshake's return: forget it (a read or write it ran inside keeps its entry).
pub fn try_return_handshake() -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    if let Some(call) = unsafe { SSL_CALLS.get(pid_tgid) }.copied()
        && call.direction == direction::NONE
    {
        let _ = SSL_CALLS.remove(pid_tgid);
    }
    Ok(())
}

/// `SSL_set_fd(ssl, fd)`: the socket of that `SSL*`, before any call on it.
pub fn try_set_fd(ctx: &ProbeContext) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    let ssl = ctx.arg::<u64>(0).unwrap_or(0);
    let fd = ctx.arg::<i64>(1).unwrap_or(-1);
    if fd >= 0 {
        let _ = SSL_FDS.insert(ssl_key(caller.tgid(), ssl), fd as i32, 0);
    }
    Ok(())
}

/// `SSL_free(ssl)`: the pointer may be reused for another connection.
pub fn try_free(ctx: &ProbeContext) -> Result<(), i64> {
    let Some(caller) = caller() else {
        return Ok(());
    };
    let ssl = ctx.arg::<u64>(0).unwrap_or(0);
    let _ = SSL_FDS.remove(ssl_key(caller.tgid(), ssl));
    Ok(())
}

/// Called by the syscall hooks for a data call on a tracked socket: when a TLS call is in
/// flight on this thread, the call is its ciphertext. Records the fd for the TLS call and
/// returns true (the syscall's bytes are not copied).
#[inline(always)]
pub fn inside_tls_call(caller: &Caller, fd: i32, sock: SockInfo) -> bool {
    let Some(call) = SSL_CALLS.get_ptr_mut(caller.pid_tgid) else {
        return false;
    };
    let tgid = caller.tgid();
    // SAFETY: a valid entry of the map, this thread's own.
    unsafe {
        if (*call).fd != fd {
            (*call).fd = fd;
            let _ = SSL_FDS.insert(ssl_key(tgid, (*call).ssl), fd, 0);
        }
    }
    mark_tls(tgid, fd, sock);
    true
}

/// The socket, remembered as carrying TLS.
#[inline(always)]
fn mark_tls(tgid: u32, fd: i32, mut sock: SockInfo) -> SockInfo {
    if sock.flags & sock_flag::TLS == 0 {
        sock.flags |= sock_flag::TLS;
        let _ = SOCKETS.insert(sock_key(tgid, fd as u32), sock, 0);
    }
    sock
}

#[inline(always)]
fn ssl_key(tgid: u32, ssl: u64) -> SslKey {
    SslKey { ssl, tgid, _pad: 0 }
}
