//! Running the testbed's programs from the tracer's end-to-end tests.

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

/// Four consecutive free loopback ports for the testbed's services.
pub fn free_base_port() -> u16 {
    let mut start = 30_000 + (std::process::id() % 1_000) as u16 * 8;
    loop {
        if (0..4).all(|i| TcpListener::bind(("127.0.0.1", start + i)).is_ok()) {
            return start;
        }
        start += 40;
        assert!(start < 60_000, "no four free consecutive ports");
    }
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
}

impl Run<'_> {
    pub fn truth(&self) -> PathBuf {
        self.dir.join("truth.jsonl")
    }

    pub fn request_log(&self) -> PathBuf {
        self.dir.join("requests.jsonl")
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
