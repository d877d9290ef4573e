//! The four service processes a `serve` or `run` starts, and their end.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::service::{Endpoints, Service};

/// The running service processes; killed (and reaped) on drop.
pub struct Services {
    children: Vec<(Service, Child)>,
}

/// How the services are started.
pub struct Launch<'a> {
    pub base_port: u16,
    pub request_log: Option<&'a Path>,
    pub message_log: Option<&'a Path>,
    pub time_factor: f64,
    /// The certificates to serve HTTPS with, in TLS mode.
    pub tls_dir: Option<&'a Path>,
}

fn sibling_exe(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the testbed executable")?;
    let path = me.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found next to {}: build all testbed binaries (cargo build -p testbed)",
            name,
            me.display()
        );
    }
    Ok(path)
}

impl Services {
    /// Starts the four services. Call it from the main thread: each child is told to die
    /// with the thread that started it, so even a killed driver leaves no orphans.
    pub fn spawn(launch: &Launch) -> anyhow::Result<Self> {
        for log in [launch.request_log, launch.message_log]
            .into_iter()
            .flatten()
        {
            // A fresh log per run: the tracer's tests compare it with one run's spans.
            std::fs::File::create(log)
                .with_context(|| format!("cannot create log {}", log.display()))?;
        }
        let mut services = Services {
            children: Vec::new(),
        };
        for service in Service::ALL {
            let mut cmd = Command::new(sibling_exe(service.as_str())?);
            cmd.arg("--base-port")
                .arg(launch.base_port.to_string())
                .arg("--time-factor")
                .arg(launch.time_factor.to_string());
            // The queue is infrastructure, not traced: it has no request log.
            if let Some(log) = launch.request_log.filter(|_| service != Service::Queue) {
                cmd.arg("--request-log").arg(log);
            }
            if let Some(log) = launch.message_log.filter(|_| service != Service::Queue) {
                cmd.arg("--message-log").arg(log);
            }
            if let Some(dir) = launch.tls_dir {
                cmd.arg("--tls-dir").arg(dir);
            }
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {service}"))?;
            services.children.push((service, child));
        }
        Ok(services)
    }

    /// Fails if a service process has exited (e.g. its port was taken).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (service, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{service} exited ({status}); is its port taken by another testbed? \
                     Stop it, pass --use-running, or pick another --base-port"
                );
            }
        }
        Ok(())
    }

    /// Stops every service: SIGTERM (the queue stops its broker then), SIGKILL after a
    /// while; reaps them.
    pub fn stop(&mut self) {
        for (_, child) in &mut self.children {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline
            && self
                .children
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until every service answers `GET /healthz` (and, if we started them, is alive).
pub async fn wait_ready(
    client: &reqwest::Client,
    endpoints: Endpoints,
    mut services: Option<&mut Services>,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    for service in Service::ALL {
        let url = endpoints.url(service, "/healthz");
        loop {
            if let Some(services) = services.as_deref_mut() {
                services.check_alive()?;
            }
            let ok = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{service} does not answer on {url}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
