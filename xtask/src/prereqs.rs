//! Prerequisites, installed by the build itself: a fresh machine (and CI) starts without
//! bpf-linker, the nightly's rust-src, or the Debian tools the tests and benchmarks drive.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process::{output, run, works};

/// What a command needs.
pub struct Needs {
    /// The eBPF toolchain: nightly with rust-src, and bpf-linker.
    ebpf: bool,
    /// Debian packages, each with the program (a name on PATH, or an absolute path) that
    /// tells whether it is there.
    debian: &'static [(&'static str, &'static str)],
}

/// The testbed's broker; the program is not on PATH (Debian keeps it under /usr/lib).
const RABBITMQ: (&str, &str) = ("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server");
/// A third-party AMQP client for the tests (Debian's Python, not another one on PATH).
const PIKA: (&str, &str) = (
    "python3-pika",
    "/usr/lib/python3/dist-packages/pika/__init__.py",
);
/// The testbed's services link the system's OpenSSL (its TLS mode); openssl-sys finds it
/// with pkg-config. Every command that builds needs them.
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    ("pkg-config", "pkg-config"),
];
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("python3", "python3"),
    ("curl", "curl"),
    ("chromium", "chromium"),
    // WebDriver for the console's browser test.
    ("chromium-driver", "chromedriver"),
    // promtool checks and unit-tests the alert rules; a real Prometheus and Alertmanager
    // run them end to end.
    ("prometheus", "promtool"),
    ("prometheus-alertmanager", "prometheus-alertmanager"),
    RABBITMQ,
    PIKA,
];
const DEMO_PACKAGES: &[(&str, &str)] = &[("curl", "curl"), RABBITMQ];
const BENCH_PACKAGES: &[(&str, &str)] = &[("wrk", "wrk"), ("curl", "curl")];
/// libfuzzer-sys compiles libFuzzer (C++).
const FUZZ_PACKAGES: &[(&str, &str)] = &[("g++", "g++")];
const ALL_PACKAGES: &[(&str, &str)] = &[
    ("python3", "python3"),
    ("curl", "curl"),
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
    ("prometheus", "promtool"),
    ("prometheus-alertmanager", "prometheus-alertmanager"),
    ("wrk", "wrk"),
    RABBITMQ,
    PIKA,
    ("g++", "g++"),
];

impl Needs {
    pub fn build() -> Self {
        Self {
            ebpf: true,
            debian: &[],
        }
    }
    pub fn test() -> Self {
        Self {
            ebpf: true,
            debian: TEST_PACKAGES,
        }
    }
    pub fn demo() -> Self {
        Self {
            ebpf: true,
            debian: DEMO_PACKAGES,
        }
    }
    pub fn bench() -> Self {
        Self {
            ebpf: true,
            debian: BENCH_PACKAGES,
        }
    }
    pub fn fuzz() -> Self {
        Self {
            ebpf: true,
            debian: FUZZ_PACKAGES,
        }
    }
    pub fn all() -> Self {
        Self {
            ebpf: true,
            debian: ALL_PACKAGES,
        }
    }
}

pub fn ensure(needs: Needs) -> Result<()> {
    if needs.ebpf {
        ensure_rust_src()?;
        ensure_bpf_linker()?;
    }
    ensure_debian(BUILD_PACKAGES)?;
    ensure_debian(needs.debian)
}

pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run this as root: {why} (e.g. `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the eBPF side builds with the nightly toolchain: install it with `rustup toolchain install nightly`")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain (eBPF builds core from source)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker links the eBPF object. It must use the nightly's own LLVM (Debian's LLVM is too
/// old), so it is built against the libLLVM shipped in the nightly sysroot.
fn ensure_bpf_linker() -> Result<()> {
    if works("bpf-linker", "--version") {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let libdir = sysroot.join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("cannot list {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in the nightly sysroot {}: bpf-linker cannot be built",
                libdir.display()
            )
        })?;
    let llvm_major = lib
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join("bpf-linker-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so".to_string(), lib.clone()] {
        let path = prefix_lib.join(&link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(libdir.join(&lib), &path)
            .with_context(|| format!("cannot link {}", path.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker against the nightly's LLVM {llvm_major} (about a minute)"
    );
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            "^0.13",
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix))
}

fn ensure_debian(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, program)| !on_path(program))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    require_root(&format!("installing Debian packages {missing:?}"))?;
    eprintln!("xtask: installing Debian packages {missing:?}");
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn on_path(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
