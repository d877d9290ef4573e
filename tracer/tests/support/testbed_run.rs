//! Running the testbed's programs from the tracer's end-to-end tests.

#![allow(dead_code)] // each test binary uses a different part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory holding the workspace's binaries (`tracer`, `testbed`, the services).
pub fn bin_dir() -> PathBuf {
    let tracer = PathBuf::from(env!("CARGO_BIN_EXE_tracer"));
    let dir = tracer.parent().expect("binary directory").to_path_buf();
    assert!(
        dir.join("testbed").exists(),
        "{} has no testbed binary: build the workspace's binaries first (`cargo build --bins`; \
         `cargo xtask test` does)",
        dir.display()
    );
    dir
}

/// Consecutive free loopback ports for the testbed's services and its broker.
pub fn free_base_port() -> u16 {
    let n = testbed::service::PORTS_USED;
    // Below the ephemeral range (32768 up), which outgoing connections draw from: the
    // broker binds its ports only once it has started.
    let mut start = 10_000 + (std::process::id() % 1_000) as u16 * 8;
    loop {
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", start + i)).is_ok()) {
            return start;
        }
        start += 40;
        assert!(start < 20_000, "no {n} free consecutive ports");
    }
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("order-tracer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// The options of one `testbed run` (it starts its own services).
pub struct Run<'a> {
    pub orders: u32,
    pub rate: f64,
    pub faults: &'a str,
    pub seed: u64,
    pub base_port: u16,
    pub dir: &'a Path,
    /// The testbed's TLS mode: its services speak HTTPS through the system's OpenSSL.
    pub tls: bool,
}

impl Run<'_> {
    pub fn truth(&self) -> PathBuf {
        self.dir.join("truth.jsonl")
    }

    pub fn request_log(&self) -> PathBuf {
        self.dir.join("requests.jsonl")
    }

    pub fn message_log(&self) -> PathBuf {
        self.dir.join("messages.jsonl")
    }

    /// Runs the testbed to completion; panics with its output when it fails.
    pub fn run(&self) {
        let output = Command::new(bin_dir().join("testbed"))
            .args([
                "run",
                "--orders",
                &self.orders.to_string(),
                "--rate",
                &self.rate.to_string(),
                "--faults",
                self.faults,
                "--seed",
                &self.seed.to_string(),
                "--base-port",
                &self.base_port.to_string(),
            ])
            .arg("--truth")
            .arg(self.truth())
            .arg("--request-log")
            .arg(self.request_log())
            .arg("--message-log")
            .arg(self.message_log())
            .args(self.tls.then_some("--tls"))
            .stdin(Stdio::null())
            .output()
            .expect("start testbed");
        assert!(
            output.status.success(),
            "testbed run failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
