//! Which running processes are targets: config matchers applied to each /proc scan, and
//! what changed since the previous scan (new, restarted, exited).

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use tracer_common::{COMM_LEN, Target};

use super::config::{PayloadCaps, TargetSpec};
use super::procfs::ProcInfo;

struct Matcher {
    /// Index into `Targets::services`.
    service: u32,
    exe: Option<String>,
    comm: Option<String>,
    cmdline: Option<Regex>,
    pid: Option<u32>,
    describe: String,
    /// "waiting for" was said and nothing matched since.
    waiting_said: bool,
}

impl Matcher {
    fn matches(&self, p: &ProcInfo) -> bool {
        self.pid.is_none_or(|pid| pid == p.pid)
            && self.comm.as_ref().is_none_or(|comm| *comm == p.comm)
            && self.exe.as_ref().is_none_or(|exe| exe_matches(exe, p))
            && self
                .cmdline
                .as_ref()
                .is_none_or(|re| re.is_match(&p.cmdline))
    }
}

/// The executable's basename, or the basename of argv[0]: `python3` is a symlink to
/// `python3.13`, and users name the program as they start it.
fn exe_matches(exe: &str, p: &ProcInfo) -> bool {
    p.exe.as_deref() == Some(exe)
        || p.cmdline
            .split(' ')
            .next()
            .and_then(|argv0| argv0.rsplit('/').next())
            == Some(exe)
}

/// Caps are validated to at most `PAYLOAD_MAX`, which fits the kernel's u16.
fn kernel_cap(cap: u32) -> u16 {
    cap.min(tracer_common::PAYLOAD_MAX as u32) as u16
}

fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let bytes = name.as_bytes();
    let n = bytes.len().min(COMM_LEN - 1);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// What a scan changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `(pid, service index)` to start tracing.
    pub added: Vec<(u32, u32)>,
    /// `(pid, service index)` to stop tracing (exited, or the pid now runs something else).
    pub removed: Vec<(u32, u32)>,
}

#[derive(Clone, Copy)]
struct Tracked {
    start_time: u64,
    service: u32,
}

pub struct Targets {
    matchers: Vec<Matcher>,
    services: Vec<Arc<str>>,
    /// The kernel's entry for each service (by index): the index and the service's caps.
    entries: Vec<Target>,
    tracked: HashMap<u32, Tracked>,
    /// The agent never traces itself: its own output would feed its capture forever.
    own_pid: u32,
}

impl Targets {
    /// `specs` must be validated (`CaptureConfig::validate`); `caps` says how much of each
    /// service's calls the kernel copies.
    pub fn new(
        specs: &[TargetSpec],
        caps: &dyn Fn(&str) -> PayloadCaps,
    ) -> Result<Self, regex::Error> {
        let mut services: Vec<Arc<str>> = Vec::new();
        let mut matchers = Vec::new();
        for spec in specs {
            let service = match services.iter().position(|s| **s == *spec.service) {
                Some(i) => i,
                None => {
                    services.push(Arc::from(spec.service.as_str()));
                    services.len() - 1
                }
            };
            matchers.push(Matcher {
                service: service as u32,
                exe: spec.exe.clone(),
                comm: spec.comm.clone(),
                cmdline: spec.cmdline.as_deref().map(Regex::new).transpose()?,
                pid: spec.pid,
                describe: spec.describe(),
                waiting_said: false,
            });
        }
        let entries = services
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let caps = caps(name);
                Target {
                    service: index as u32,
                    server_cap: kernel_cap(caps.server),
                    client_cap: kernel_cap(caps.client),
                    ..Target::default()
                }
            })
            .collect();
        Ok(Targets {
            matchers,
            services,
            entries,
            tracked: HashMap::new(),
            own_pid: std::process::id(),
        })
    }

    /// Service names; a kernel event's `service` field indexes this table.
    pub fn services(&self) -> &[Arc<str>] {
        &self.services
    }

    /// The kernel's target entry for a service index.
    pub fn entry(&self, service: u32) -> Target {
        self.entries
            .get(service as usize)
            .copied()
            .unwrap_or_default()
    }

    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// `(pid, service index)` of every traced process.
    pub fn tracked_pids(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.tracked.iter().map(|(pid, t)| (*pid, t.service))
    }

    /// Forgets a process that exited (the kernel said so before the next scan could).
    pub fn forget(&mut self, pid: u32) -> Option<u32> {
        self.tracked.remove(&pid).map(|t| t.service)
    }

    pub fn is_tracked(&self, pid: u32) -> bool {
        self.tracked.contains_key(&pid)
    }

    /// `(comm, entry)` for targets chosen by name alone, which the kernel can start tracing
    /// at `exec`: a comm is the program's basename cut to 15 bytes.
    pub fn exec_names(&self) -> Vec<([u8; COMM_LEN], Target)> {
        self.matchers
            .iter()
            .filter(|m| m.cmdline.is_none() && m.pid.is_none())
            .filter_map(|m| match (&m.exe, &m.comm) {
                (Some(name), None) | (None, Some(name)) => {
                    Some((comm_key(name), self.entry(m.service)))
                }
                (Some(exe), Some(comm)) if comm_key(exe) == comm_key(comm) => {
                    Some((comm_key(comm), self.entry(m.service)))
                }
                _ => None,
            })
            .collect()
    }

    fn service_of(&self, p: &ProcInfo) -> Option<u32> {
        if p.pid == self.own_pid {
            return None;
        }
        self.matchers
            .iter()
            .find(|m| m.matches(p))
            .map(|m| m.service)
    }

    /// Compares one full scan of /proc with what is traced, and says (once each) which
    /// targets have no process yet.
    pub fn update(&mut self, procs: &[ProcInfo]) -> Changes {
        let mut now: HashMap<u32, Tracked> = HashMap::new();
        for p in procs {
            if let Some(service) = self.service_of(p) {
                now.insert(
                    p.pid,
                    Tracked {
                        start_time: p.start_time,
                        service,
                    },
                );
            }
        }
        let mut changes = Changes::default();
        for (&pid, old) in &self.tracked {
            let same = now
                .get(&pid)
                .is_some_and(|new| new.start_time == old.start_time && new.service == old.service);
            if !same {
                changes.removed.push((pid, old.service));
            }
        }
        for (&pid, new) in &now {
            let same = self
                .tracked
                .get(&pid)
                .is_some_and(|old| old.start_time == new.start_time && old.service == new.service);
            if !same {
                changes.added.push((pid, new.service));
            }
        }
        changes.added.sort_unstable();
        changes.removed.sort_unstable();
        self.tracked = now;
        self.say_waiting(procs);
        changes
    }

    fn say_waiting(&mut self, procs: &[ProcInfo]) {
        for i in 0..self.matchers.len() {
            let found = procs
                .iter()
                .any(|p| p.pid != self.own_pid && self.matchers[i].matches(p));
            let m = &mut self.matchers[i];
            if found {
                m.waiting_said = false;
            } else if !m.waiting_said {
                m.waiting_said = true;
                tracing::info!(
                    "waiting for target {} ({}): no such process runs yet",
                    self.services[m.service as usize],
                    m.describe
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, exe: &str, cmdline: &str, start_time: u64) -> ProcInfo {
        ProcInfo {
            pid,
            exe: Some(exe.to_string()),
            comm: exe.chars().take(15).collect(),
            cmdline: cmdline.to_string(),
            start_time,
        }
    }

    fn uniform(_: &str) -> PayloadCaps {
        PayloadCaps::uniform(100)
    }

    #[test]
    fn each_service_gets_its_own_caps() {
        let caps = |service: &str| PayloadCaps {
            server: if service == "a" { 10 } else { 20 },
            client: 30,
        };
        let targets = Targets::new(
            &[TargetSpec::exe("a", "a"), TargetSpec::exe("b", "b")],
            &caps,
        )
        .unwrap();
        let entry = |i| targets.entry(i);
        assert_eq!((entry(0).server_cap, entry(0).client_cap), (10, 30));
        assert_eq!((entry(1).service, entry(1).server_cap), (1, 20));
    }

    fn spec(service: &str) -> TargetSpec {
        TargetSpec {
            service: service.to_string(),
            exe: None,
            comm: None,
            cmdline: None,
            pid: None,
        }
    }

    #[test]
    fn new_restarted_and_exited_processes() {
        let mut targets =
            Targets::new(&[TargetSpec::exe("shop-api", "shop-api")], &uniform).unwrap();
        let first = targets.update(&[
            proc(10, "shop-api", "shop-api", 1),
            proc(11, "bash", "bash", 1),
        ]);
        assert_eq!(first.added, [(10, 0)]);
        assert!(first.removed.is_empty());
        assert_eq!(
            targets.update(&[proc(10, "shop-api", "shop-api", 1)]),
            Changes::default()
        );
        // Restarted under a new pid.
        let restarted = targets.update(&[proc(12, "shop-api", "shop-api", 5)]);
        assert_eq!(restarted.added, [(12, 0)]);
        assert_eq!(restarted.removed, [(10, 0)]);
        // Same pid, new process (pid reuse): stop, then start again.
        let reused = targets.update(&[proc(12, "shop-api", "shop-api", 9)]);
        assert_eq!(reused.added, [(12, 0)]);
        assert_eq!(reused.removed, [(12, 0)]);
        assert_eq!(targets.update(&[]).removed, [(12, 0)]);
        assert_eq!(targets.tracked(), 0);
    }

    #[test]
    fn matchers_combine_and_services_share_indexes() {
        let mut by_script = spec("mes-api");
        by_script.exe = Some("python3".into());
        by_script.cmdline = Some(r"mes\.py".into());
        let mut by_pid = spec("shop-api");
        by_pid.pid = Some(77);
        let mut by_comm = spec("mes-api");
        by_comm.comm = Some("mesd".into());
        let mut targets = Targets::new(&[by_script, by_pid, by_comm], &uniform).unwrap();
        assert_eq!(targets.services().len(), 2);
        let changes = targets.update(&[
            proc(1, "python3.13", "/usr/bin/python3 mes.py --port 1", 1),
            proc(2, "python3.13", "python3 other.py", 1),
            proc(77, "anything", "anything", 1),
            proc(78, "mesd", "mesd", 1),
        ]);
        assert_eq!(changes.added, [(1, 0), (77, 1), (78, 0)]);
    }

    #[test]
    fn exec_names_only_for_name_matchers() {
        let mut scripted = TargetSpec::exe("a", "python3");
        scripted.cmdline = Some("x".into());
        let long = TargetSpec::exe("b", "a-very-long-program-name");
        let targets = Targets::new(&[scripted, long, TargetSpec::pid("c", 5)], &uniform).unwrap();
        let names = targets.exec_names();
        assert_eq!(names.len(), 1);
        assert_eq!(&names[0].0, b"a-very-long-pro\0");
        assert_eq!(names[0].1.service, 1);
    }

    #[test]
    fn the_agent_never_targets_itself() {
        let me = std::process::id();
        let mut targets = Targets::new(&[TargetSpec::pid("x", me)], &uniform).unwrap();
        assert!(
            targets
                .update(&[proc(me, "tracer", "tracer", 1)])
                .added
                .is_empty()
        );
    }
}
