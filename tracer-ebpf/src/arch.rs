//! Where a syscall's arguments are in the task's saved user registers. They are still there
//! when the call returns (the return value goes to `ax`), so one hook at the exit sees the
//! whole call; the exit tracepoints' own records carry only the return value.

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!(
    "tracer-ebpf reads x86_64 syscall registers; other architectures need their register \
     layout in arch.rs"
);

use aya_ebpf::bindings::pt_regs;
use aya_ebpf::helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs};

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
}
