//! What the syscall hooks need to know about the machine: syscall numbers and where the
//! arguments are in the task's saved user registers. The arguments are still there when the
//! call returns (the return value goes to `ax`), so one hook at the exit sees the whole call.

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!(
    "tracer-ebpf reads x86_64 syscall registers; other architectures need their syscall \
     numbers and register layout in arch.rs"
);

use aya_ebpf::bindings::pt_regs;
use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};

pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SOCKET: u64 = 41;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
}

/// The code segment of 64-bit user mode: a 32-bit (compat) caller numbers its syscalls
/// differently, and is never captured.
const USER_CS_64: u64 = 0x33;

/// The saved user registers of the current syscall. Reads are plain loads the verifier checks
/// against the kernel's BTF of `struct pt_regs`.
#[derive(Clone, Copy)]
pub struct Regs(*const pt_regs);

impl Regs {
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: both helpers take no user input; the task pointer is the running task's,
        // BTF-typed, and `bpf_task_pt_regs` returns its saved user registers.
        Regs(unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs)
    }

    /// The call's return value (at exit).
    #[inline(always)]
    pub fn ret(&self) -> i64 {
        // SAFETY: as in `arg`.
        unsafe { (*self.0).rax as i64 }
    }

    /// The `i`-th syscall argument (0-based, at most 3 used here).
    #[inline(always)]
    pub fn arg(&self, i: usize) -> u64 {
        // SAFETY: a BTF-typed pointer to the task's saved registers; the verifier turns each
        // field load into a checked kernel read.
        unsafe {
            match i {
                0 => (*self.0).rdi,
                1 => (*self.0).rsi,
                2 => (*self.0).rdx,
                _ => (*self.0).r10,
            }
        }
    }

    /// The syscall number, valid at exit too.
    #[inline(always)]
    pub fn syscall_nr(&self) -> u64 {
        // SAFETY: as in `arg`.
        unsafe { (*self.0).orig_rax }
    }

    #[inline(always)]
    pub fn is_64_bit(&self) -> bool {
        // SAFETY: as in `arg`.
        unsafe { (*self.0).cs == USER_CS_64 }
    }
}
