//! The processes a bench phase runs: the MES stand-in (the traced service) and the agent, each
//! optionally held to one CPU, and what is read from them (CPU time, peak RSS, counters, the
//! kernel programs they own).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::load::wait_http;

/// Makes a command run on one CPU only (and its threads: they inherit the mask).
pub fn pin(cmd: &mut Command, cpu: Option<usize>) -> &mut Command {
    if let Some(cpu) = cpu {
        // SAFETY: only async-signal-safe calls between fork and exec; the set is a plain
        // value on this stack.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    cmd
}

/// A port nobody listens on now (the kernel picks it), for a service of ours to take.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The MES stand-in, the traced service of the bench.
pub struct Mes {
    child: Child,
    pub port: u16,
}

impl Mes {
    /// Starts one on a free port; `cpu` holds it (and so its runtime's worker count) to one CPU.
    /// It runs under another name: a tracer elsewhere on the machine with the testbed's
    /// default config (which traces `mes-api` by name) would otherwise trace it too.
    pub fn start(bin: &Path, work: &Path, cpu: Option<usize>) -> Result<Self> {
        let exe = work.join("bench-mes-api");
        if !exe.exists() {
            std::fs::copy(bin.join("mes-api"), &exe).context("copying mes-api")?;
        }
        let port = free_port()?;
        let log = std::fs::File::create(work.join(format!("mes-api-{port}.log")))?;
        let mut cmd = Command::new(&exe);
        // Every testbed service takes the shop's port as base; the MES listens on base + 1.
        cmd.args(["--base-port", &(port - 1).to_string()])
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = pin(&mut cmd, cpu).spawn().context("cannot start mes-api")?;
        let mes = Self { child, port };
        wait_http(&format!("http://127.0.0.1:{port}/healthz"))?;
        Ok(mes)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of every thread of the process so far, in nanoseconds (schedstat: exact,
    /// where /proc/PID/stat counts clock ticks).
    pub fn cpu_ns(&self) -> Result<u64> {
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .context("schedstat format")?;
        }
        Ok(total)
    }
}

impl Drop for Mes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent, tracing one process, exporting nowhere.
pub struct Agent {
    child: Child,
    stderr_log: PathBuf,
}

impl Agent {
    /// Starts `tracer agent` with `config` and waits until it traces a process.
    pub fn start(bin: &Path, config: &Path, work: &Path, cpu: Option<usize>) -> Result<Self> {
        let stderr_log = work.join("agent.log");
        let mut cmd = Command::new(bin.join("tracer"));
        cmd.args(["agent", "--export", "none", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_log)?);
        let child = pin(&mut cmd, cpu)
            .spawn()
            .context("cannot start the agent")?;
        let agent = Self { child, stderr_log };
        // The agent logs when it starts capturing a target's sockets.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&agent.stderr_log)?.contains("tracing pid") {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not start tracing within 30 s; see {}",
                    agent.stderr_log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name in parentheses: utime and stime are 14th and 15th.
        let after = stat.rsplit_once(')').context("stat format")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / hz)
    }

    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    /// Resident KiB of the agent's eBPF map mappings: the ring buffer, whose data pages the
    /// kernel maps twice (so a read can run past its end), a fixed cost set by
    /// `[capture] ring_buffer_bytes`.
    pub fn map_rss_kib(&self) -> Result<u64> {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid()))?;
        let mut in_map = false;
        let mut total = 0;
        for line in smaps.lines() {
            if let Some(kib) = line.strip_prefix("Rss:") {
                if in_map {
                    total += kib
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            } else if line
                .split_whitespace()
                .next()
                .is_some_and(|f| f.contains('-'))
            {
                in_map = line.ends_with("anon_inode:bpf-map");
            }
        }
        Ok(total)
    }

    /// Ids of the eBPF programs the agent holds.
    pub fn program_ids(&self) -> Vec<u32> {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid())) else {
            return Vec::new();
        };
        fds.filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("prog_id:"))
                    .and_then(|id| id.trim().parse().ok())
            })
            .collect()
    }

    /// Stops the agent (SIGINT) and reads the counters it prints on exit.
    pub fn stop(mut self) -> Result<Counters> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "the agent exited with {status}; see {}",
                self.stderr_log.display()
            );
        }
        let log = std::fs::read_to_string(&self.stderr_log)?;
        Counters::from_log(&log).with_context(|| {
            format!(
                "the agent printed no final counters; see {}",
                self.stderr_log.display()
            )
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Stopped already, or a phase failed: never leave it attached.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's counters, from the JSON line it logs on exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub exchanges: u64,
    pub spans: u64,
    pub ring_full: u64,
    pub captured_calls: u64,
}

impl Counters {
    /// Reads the last `{"event":"counters",…}` line of the agent's stderr.
    fn from_log(log: &str) -> Option<Self> {
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("\"event\":\"counters\""))?;
        let json: serde_json::Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
        let number = |pointer: &str| json.pointer(pointer).and_then(serde_json::Value::as_u64);
        Some(Self {
            exchanges: number("/streams/exchanges")?,
            spans: number("/pipeline/spans")?,
            ring_full: number("/capture/ring_full")?,
            captured_calls: number("/capture/captured_calls")?,
        })
    }
}

pub fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("order-tracer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
