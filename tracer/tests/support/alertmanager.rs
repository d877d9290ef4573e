//! A real Alertmanager (Debian's `prometheus-alertmanager`) of a test's own: temp dir, free
//! port, no cluster listener, stopped by its PID.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::testbed_run::free_port;

/// A process a test started, stopped (SIGTERM) by its PID when dropped.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Starts `program` with stderr to `log` (stdout beside it).
pub fn spawn(program: &Path, args: &[String], log: &Path) -> Owned {
    let child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Owned(child)
}

/// Alertmanager with one null receiver; returns it and its URL.
pub fn start(dir: &Path) -> (Owned, String) {
    let port = free_port();
    std::fs::write(
        dir.join("alertmanager.yml"),
        "route:\n  receiver: 'null'\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let process = spawn(
        Path::new("prometheus-alertmanager"),
        &[
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".into(),
        ],
        &dir.join("alertmanager.log"),
    );
    (process, format!("http://127.0.0.1:{port}"))
}

/// The alerts Alertmanager lists, named `name` (empty while it is not up yet).
pub async fn alerts(client: &reqwest::Client, url: &str, name: &str) -> Vec<Value> {
    let list: Value = match client
        .get(format!(
            "{url}/api/v2/alerts?filter=alertname%3D%22{name}%22"
        ))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    list.as_array().cloned().unwrap_or_default()
}
