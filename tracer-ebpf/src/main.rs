//! Order Tracer's kernel side: syscall tracepoints that copy the TCP payloads of target
//! processes into a ring buffer (`syscalls`), and the process lifecycle tracepoints that keep
//! the target table current.
//!
//! Each program is a thin entry calling a `try_…` function; an error (a failed context read)
//! only means the call is not captured.
#![no_std]
#![no_main]

mod arch;
mod emit;
mod maps;
mod syscalls;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    SockAddr, SockInfo,
    direction::{RECV, SEND},
    kind,
};

use crate::{
    emit::{Origin, conn_event, now_ns},
    maps::{EXEC_NAMES, TARGETS, mark_target},
    syscalls::{Shape, try_exit_data},
};

/// A program on syscall tracepoints, calling its handler with the context.
macro_rules! syscall_hook {
    ($name:ident, $handler:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let handler: fn(&TracePointContext) -> Result<(), i64> = $handler;
            status(handler(&ctx))
        }
    };
}

syscall_hook!(exit_recv_buf, |ctx| try_exit_data(
    ctx,
    RECV,
    Shape::Buf,
    None
));
syscall_hook!(exit_recvfrom, |ctx| try_exit_data(
    ctx,
    RECV,
    Shape::Buf,
    Some(3)
));
syscall_hook!(exit_send_buf, |ctx| try_exit_data(
    ctx,
    SEND,
    Shape::Buf,
    None
));
syscall_hook!(exit_recv_iov, |ctx| try_exit_data(
    ctx,
    RECV,
    Shape::Iov,
    None
));
syscall_hook!(exit_send_iov, |ctx| try_exit_data(
    ctx,
    SEND,
    Shape::Iov,
    None
));
syscall_hook!(exit_recvmsg, |ctx| try_exit_data(
    ctx,
    RECV,
    Shape::Msg,
    Some(2)
));
syscall_hook!(exit_sendmsg, |ctx| try_exit_data(
    ctx,
    SEND,
    Shape::Msg,
    None
));
syscall_hook!(exit_socket, syscalls::try_exit_socket);
syscall_hook!(exit_accept, syscalls::try_exit_accept);
syscall_hook!(exit_connect, syscalls::try_exit_connect);
syscall_hook!(enter_close, syscalls::try_enter_close);

#[tracepoint]
pub fn sched_exec(ctx: TracePointContext) -> u32 {
    status(try_sched_exec(&ctx))
}

#[tracepoint]
pub fn sched_exit(ctx: TracePointContext) -> u32 {
    status(try_sched_exit(&ctx))
}

#[inline(always)]
fn status(result: Result<(), i64>) -> u32 {
    match result {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// `sched:sched_process_exec`: the new program's command name is already set.
fn try_sched_exec(_ctx: &TracePointContext) -> Result<(), i64> {
    let comm = bpf_get_current_comm().map_err(i64::from)?;
    // SAFETY: the value is copied out at once.
    if let Some(target) = unsafe { EXEC_NAMES.get(comm) }.copied() {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        TARGETS.insert(tgid, target, 0).map_err(i64::from)?;
        mark_target(tgid);
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
    // SAFETY: the value is copied out at once.
    let Some(target) = (unsafe { TARGETS.get(tgid) }).copied() else {
        return Ok(());
    };
    let _ = TARGETS.remove(tgid);
    let origin = Origin {
        pid_tgid,
        fd: -1,
        service: target.service,
        sock: SockInfo::default(),
        ts_ns: now_ns(),
        flags: 0,
        cap: 0,
    };
    conn_event(&origin, kind::EXIT, SockAddr::default());
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
