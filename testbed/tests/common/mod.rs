//! A testbed started by `testbed serve` on free ports, stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use testbed::Service;
use testbed::service::{Endpoints, Scheme};
use testbed::tls::Pki;

pub struct Testbed {
    pub base_port: u16,
    pub scheme: Scheme,
    pub dir: PathBuf,
    serve: Child,
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// One testbed (and so one RabbitMQ node) at a time in this test process: brokers starting
/// side by side on two shared cores starve each other.
pub fn one_broker_at_a_time() -> MutexGuard<'static, ()> {
    static BROKER: Mutex<()> = Mutex::new(());
    BROKER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seven consecutive free loopback ports (four services and the broker's three; other tests
/// and sessions use this machine too).
/// Each call of one test process starts from its own block, so parallel tests never pick
/// the same ports before their services bind them.
pub fn free_base_port() -> u16 {
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let block = CALLS.fetch_add(1, Ordering::Relaxed);
    let n = testbed::service::PORTS_USED;
    // Below the ephemeral range (32768 up), which outgoing connections draw from: the
    // broker binds its ports only once it has started.
    let mut start = 20_000 + (std::process::id() % 600) as u16 * 16 + block * n;
    loop {
        let free = (0..n).all(|i| TcpListener::bind(("127.0.0.1", start + i)).is_ok());
        if free {
            return start;
        }
        start += 64;
        assert!(start < 32_000, "no seven free consecutive ports");
    }
}

impl Testbed {
    /// Starts the services with a request log, under `testbed serve`.
    pub fn serve(name: &str) -> Testbed {
        Self::serve_with(name, Scheme::Http)
    }

    /// Starts the services with a request log, under `testbed serve`, speaking `scheme`.
    pub fn serve_with(name: &str, scheme: Scheme) -> Testbed {
        let guard = one_broker_at_a_time();
        let dir = std::env::temp_dir().join(format!("testbed-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base_port = free_base_port();
        let serve = Command::new(env!("CARGO_BIN_EXE_testbed"))
            .args([
                "serve",
                "--base-port",
                &base_port.to_string(),
                "--time-factor",
                "0.5",
            ])
            .arg("--request-log")
            .arg(dir.join("requests.jsonl"))
            .arg("--message-log")
            .arg(dir.join("messages.jsonl"))
            .args((scheme == Scheme::Https).then_some("--tls"))
            .spawn()
            .unwrap();
        let bed = Testbed {
            base_port,
            scheme,
            dir,
            serve,
            _one_at_a_time: guard,
        };
        bed.wait_ready();
        bed
    }

    fn wait_ready(&self) {
        // The broker takes 10–30 s on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        for service in Service::ALL {
            while std::net::TcpStream::connect(("127.0.0.1", service.port(self.base_port))).is_err()
            {
                assert!(Instant::now() < deadline, "{service} did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            base_port: self.base_port,
            scheme: self.scheme,
        }
    }

    pub fn url(&self, service: Service, path: &str) -> String {
        self.endpoints().url(service, path)
    }

    /// The certificates of a testbed in TLS mode.
    pub fn pki(&self) -> Option<Pki> {
        (self.scheme == Scheme::Https).then(|| Pki::at(Pki::dir_for(self.base_port)))
    }

    /// A client of these services (trusting their CA in TLS mode).
    pub fn client(&self) -> reqwest::Client {
        testbed::net::pooled_client(self.pki().as_ref()).unwrap()
    }

    /// The service processes `testbed serve` started.
    pub fn service_pids(&self) -> Vec<u32> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.serve.id())).unwrap();
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .flat_map(|list| {
                list.split_whitespace()
                    .map(|pid| pid.parse().unwrap())
                    .collect::<Vec<u32>>()
            })
            .collect()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `testbed run --use-running` against these services.
    pub fn run(&self, args: &[&str], truth: &Path) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
            .args([
                "run",
                "--use-running",
                "--time-factor",
                "0.5",
                "--base-port",
            ])
            .arg(self.base_port.to_string())
            .arg("--truth")
            .arg(truth)
            .args((self.scheme == Scheme::Https).then_some("--tls"))
            .args(args)
            .output()
            .unwrap();
        println!("{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        out
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // SIGTERM, so `testbed serve` stops its children itself.
        unsafe { libc::kill(self.serve.id() as i32, libc::SIGTERM) };
        let _ = self.serve.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
