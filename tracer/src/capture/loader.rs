//! Loading the eBPF object into the kernel: privilege and kernel checks with errors that say
//! what to do, tracefs mounted when missing, settings written, every hook attached.

use std::path::Path;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use tracer_common::{COMM_LEN, SockInfo, Target, config};

use super::CaptureError;
use super::config::CaptureConfig;

/// The kernel side, built by `build.rs` and shipped inside the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_LEGACY: &str = "/sys/kernel/debug/tracing";
const BTF: &str = "/sys/kernel/btf/vmlinux";

/// Which program handles which tracepoints. The syscall hooks come last, once the lifecycle
/// ones keep the target table right.
const ATTACH: &[(&str, &str, &[&str])] = &[
    ("sched_exit", "sched", &["sched_process_exit"]),
    ("sched_exec", "sched", &["sched_process_exec"]),
    ("exit_recv_buf", "syscalls", &["sys_exit_read"]),
    ("exit_recvfrom", "syscalls", &["sys_exit_recvfrom"]),
    (
        "exit_send_buf",
        "syscalls",
        &["sys_exit_write", "sys_exit_sendto"],
    ),
    ("exit_recv_iov", "syscalls", &["sys_exit_readv"]),
    ("exit_send_iov", "syscalls", &["sys_exit_writev"]),
    ("exit_recvmsg", "syscalls", &["sys_exit_recvmsg"]),
    ("exit_sendmsg", "syscalls", &["sys_exit_sendmsg"]),
    ("exit_socket", "syscalls", &["sys_exit_socket"]),
    (
        "exit_accept",
        "syscalls",
        &["sys_exit_accept", "sys_exit_accept4"],
    ),
    ("exit_connect", "syscalls", &["sys_exit_connect"]),
    ("enter_close", "syscalls", &["sys_enter_close"]),
];

/// The loaded, attached object and the maps the agent works with.
pub struct Loaded {
    /// Owns the programs and their links: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    pub targets: HashMap<MapData, u32, Target>,
    pub target_bits: Array<MapData, u64>,
    pub sockets: HashMap<MapData, u64, SockInfo>,
    pub counters: PerCpuArray<MapData, u64>,
    /// The TLS probes are loaded and may be attached (`[capture] tls`, and the kernel took
    /// them).
    pub tls: bool,
}

/// `exec_names`: command names the kernel starts tracing by itself at `exec`, with their
/// target entry.
pub fn load(
    settings: &CaptureConfig,
    exec_names: &[([u8; COMM_LEN], Target)],
) -> Result<Loaded, CaptureError> {
    check_privileges()?;
    if !Path::new(BTF).exists() {
        return Err(CaptureError::NoBtf);
    }
    ensure_tracefs()?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("EVENTS", settings.ring_buffer_bytes)
        .load(EBPF_OBJECT)
        .map_err(CaptureError::Load)?;
    let mut config_map: Array<_, u64> =
        Array::try_from(take(&mut ebpf, "CONFIG")?).map_err(|source| CaptureError::Map {
            name: "CONFIG",
            source,
        })?;
    for (index, value) in [
        (config::VERBOSE, u64::from(settings.kernel_debug)),
        // A quarter full: early enough that the ring never fills between polls.
        (
            config::WAKEUP_BYTES,
            u64::from(settings.ring_buffer_bytes / 4),
        ),
    ] {
        config_map
            .set(index, value, 0)
            .map_err(|source| CaptureError::Map {
                name: "CONFIG",
                source,
            })?;
    }
    let mut names: HashMap<_, [u8; COMM_LEN], Target> =
        HashMap::try_from(take(&mut ebpf, "EXEC_NAMES")?).map_err(|source| CaptureError::Map {
            name: "EXEC_NAMES",
            source,
        })?;
    for (comm, target) in exec_names {
        names
            .insert(comm, target, 0)
            .map_err(|source| CaptureError::Map {
                name: "EXEC_NAMES",
                source,
            })?;
    }
    let ring =
        RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| CaptureError::Map {
            name: "EVENTS",
            source,
        })?;
    let targets =
        HashMap::try_from(take(&mut ebpf, "TARGETS")?).map_err(|source| CaptureError::Map {
            name: "TARGETS",
            source,
        })?;
    let target_bits =
        Array::try_from(take(&mut ebpf, "TARGET_BITS")?).map_err(|source| CaptureError::Map {
            name: "TARGET_BITS",
            source,
        })?;
    let sockets =
        HashMap::try_from(take(&mut ebpf, "SOCKETS")?).map_err(|source| CaptureError::Map {
            name: "SOCKETS",
            source,
        })?;
    let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(|source| {
        CaptureError::Map {
            name: "COUNTERS",
            source,
        }
    })?;
    attach(&mut ebpf)?;
    let tls = settings.tls && load_tls(&mut ebpf);
    Ok(Loaded {
        ebpf,
        ring,
        targets,
        target_bits,
        sockets,
        counters,
        tls,
    })
}

/// Loads the TLS probes (attached later, per library file). A kernel that refuses them costs
/// the plaintext of TLS, not the agent.
fn load_tls(ebpf: &mut Ebpf) -> bool {
    for name in super::tls::programs() {
        let loaded = match ebpf.program_mut(name) {
            Some(program) => <&mut UProbe>::try_from(program)
                .map_err(|e| e.to_string())
                .and_then(|p| p.load().map_err(|e| e.to_string())),
            None => Err("missing from the eBPF object".to_string()),
        };
        if let Err(e) = loaded {
            tracing::warn!(
                "TLS plaintext is not captured: the kernel refused uprobe program {name}: {e}"
            );
            return false;
        }
    }
    true
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
    ebpf.take_map(name).ok_or(CaptureError::Missing(name))
}

fn attach(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    for (name, category, tracepoints) in ATTACH {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(CaptureError::Missing(name))?
            .try_into()
            .map_err(|source| CaptureError::Program { name, source })?;
        program
            .load()
            .map_err(|source| CaptureError::Program { name, source })?;
        for tracepoint in *tracepoints {
            program
                .attach(category, tracepoint)
                .map_err(|source| CaptureError::Attach {
                    category,
                    tracepoint,
                    source,
                })?;
        }
    }
    Ok(())
}

/// Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN covers both on any kernel).
fn check_privileges() -> Result<(), CaptureError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    Err(CaptureError::NotPrivileged {
        // SAFETY: geteuid has no preconditions.
        euid: unsafe { libc::geteuid() },
        missing: missing.join(", "),
    })
}

/// Syscall tracepoints are attached through tracefs; a fresh machine may not mount it.
fn ensure_tracefs() -> Result<(), CaptureError> {
    let has_events = |root: &str| Path::new(root).join("events/syscalls").is_dir();
    if has_events(TRACEFS) || has_events(TRACEFS_LEGACY) {
        return Ok(());
    }
    let mounted = Path::new(TRACEFS).join("events").is_dir();
    if !mounted {
        let target = std::ffi::CString::new(TRACEFS).expect("no NUL in a constant");
        let fstype = c"tracefs";
        // SAFETY: all pointers are valid NUL-terminated strings; no mount data.
        let rc = unsafe {
            libc::mount(
                c"nodev".as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(CaptureError::Tracefs(std::io::Error::last_os_error()));
        }
        tracing::info!("mounted tracefs at {TRACEFS}");
    }
    if has_events(TRACEFS) {
        Ok(())
    } else {
        Err(CaptureError::NoSyscallTracepoints)
    }
}
