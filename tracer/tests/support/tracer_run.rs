//! `tracer run` over the testbed, for the end-to-end tests: its config and the process.

#![allow(dead_code)] // each test binary uses a different part of it

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::testbed_run::bin_dir;

const TESTBED_CONFIG: &str = include_str!("../../../deploy/config/testbed.toml");

/// The testbed config with this test's store, webhook (if any) and the spans exported to
/// `otlp` over gRPC (none without it), tracing only the services of the testbed on
/// `base_port`: other testbeds on the machine would add their orders to the counts compared.
pub fn config(
    dir: &std::path::Path,
    webhook: Option<&str>,
    base_port: u16,
    otlp: Option<&str>,
) -> (String, tracer::config::Config) {
    let mut value: toml::Table = toml::from_str(TESTBED_CONFIG).unwrap();
    for target in value["capture"]["target"].as_array_mut().unwrap() {
        target.as_table_mut().unwrap().insert(
            "cmdline".into(),
            format!("--base-port {base_port}( |$)").into(),
        );
    }
    let set = |value: &mut toml::Table, table: &str, key: &str, v: toml::Value| {
        value
            .entry(table)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap()
            .insert(key.to_string(), v);
    };
    set(
        &mut value,
        "store",
        "path",
        dir.join("orders.db").display().to_string().into(),
    );
    if let Some(webhook) = webhook {
        set(&mut value, "api", "alert_webhook", webhook.into());
    }
    match otlp {
        Some(endpoint) => {
            set(&mut value, "export", "kind", "otlp-grpc".into());
            set(&mut value, "export", "endpoint", endpoint.into());
        }
        None => set(&mut value, "export", "kind", "none".into()),
    }
    let text = toml::to_string(&value).unwrap();
    let parsed = tracer::config::Config::parse(&text, "test").unwrap();
    (text, parsed)
}

/// How long every detection may take: the longest stuck limit, the reorder wait and 5 s.
pub fn longest_limit(config: &tracer::config::Config) -> Duration {
    let longest = config
        .lifecycle
        .statuses
        .iter()
        .filter_map(|s| s.stuck_after_secs)
        .fold(0.0, f64::max);
    Duration::from_secs_f64(longest + config.lifecycle.reorder_secs + 5.0)
}

pub struct TracerRun {
    child: Child,
    log: std::path::PathBuf,
}

impl TracerRun {
    /// Starts `tracer run` and waits until it follows the testbed's three services (running
    /// or waited for). `log_name` is its stderr's file in `dir`.
    pub fn start(
        config: &std::path::Path,
        listen: &str,
        dir: &std::path::Path,
        log_name: &str,
    ) -> Self {
        let log = dir.join(log_name);
        let child = Command::new(bin_dir().join("tracer"))
            .args([
                "run",
                "--allow-anonymous-loopback",
                "--listen",
                listen,
                "--config",
            ])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tracer run");
        let run = TracerRun { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = run.log_text();
            if text.matches("waiting for target").count() + text.matches("tracing pid").count() >= 3
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tracer run did not attach:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        run
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let mut tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// `kill -9`: no shutdown, no last save.
    pub fn kill_hard(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for TracerRun {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child (a no-op once it has been reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
