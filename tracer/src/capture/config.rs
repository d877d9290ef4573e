//! `[capture]`: which processes to trace and how much of each syscall to copy.

use serde::{Deserialize, Serialize};
use tracer_common::PAYLOAD_MAX;

/// Smallest ring buffer accepted: it must hold a few of the largest entries.
const MIN_RING_BYTES: u32 = 64 * 1024;
/// Largest ring buffer accepted (the kernel's limit is higher; this is memory sense).
const MAX_RING_BYTES: u32 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Processes to trace, each mapped to a service name (`[[capture.target]]`).
    #[serde(rename = "target")]
    pub targets: Vec<TargetSpec>,
    /// Most bytes copied from each read/write (each iovec of a vectored call), at most
    /// 16384. Longer calls keep this prefix; the true length is still reported, and the
    /// bytes not copied are stepped over by the message framing. `tracer capture` copies
    /// this much; the agent copies less where the rules need less (`head_bytes`,
    /// `body_bytes`).
    pub payload_cap: u32,
    /// Bytes of each read/write the agent copies for message heads. A head longer than this
    /// within one call is lost (counted as a resync).
    pub head_bytes: u32,
    /// Bytes added to `head_bytes` on the sockets of services whose rules read a JSON field
    /// of a body, so the start of each body is seen. Capped by `payload_cap`.
    pub body_bytes: u32,
    /// Kernel→agent ring buffer size in bytes: a power of two, 64 KiB … 1 GiB. When the
    /// agent falls behind, events that do not fit are dropped and counted (`ring_full`).
    /// The agent's RSS shows it twice: the kernel maps its pages twice.
    pub ring_buffer_bytes: u32,
    /// How often /proc is scanned for new, restarted and exited targets.
    pub scan_interval_ms: u64,
    /// Batches of events (each at most 1024 events or about 1 MiB of payload) queued for
    /// the consumer; a slow consumer loses (and counts) whole batches instead of the queue
    /// growing.
    pub queue_batches: usize,
    /// Read TLS plaintext: uprobes on the TLS library each target maps (OpenSSL's
    /// `libssl.so*`, or an executable that has it built in). Its sockets' ciphertext is then
    /// not copied. Off: TLS connections are seen encrypted, and ignored.
    pub tls: bool,
    /// Emit the kernel side's per-event diagnostics (aya-log, shown at `RUST_LOG=debug`).
    pub kernel_debug: bool,
}

/// One traced program. Every matcher given must match (`exe = "python3"` plus a `cmdline`
/// pattern picks one script among many interpreters); at least one is required.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Service name on every event of this process (`shop-api`, …).
    pub service: String,
    /// Basename of the executable (`/proc/<pid>/exe`), e.g. `shop-api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Kernel command name (`/proc/<pid>/comm`, at most 15 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Regular expression searched in the command line (arguments joined by spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// One process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            targets: ["shop-api", "mes-api", "crm-api"]
                .into_iter()
                .map(|name| TargetSpec::exe(name, name))
                .collect(),
            payload_cap: PAYLOAD_MAX as u32,
            head_bytes: 4096,
            body_bytes: 1024,
            ring_buffer_bytes: 4 << 20,
            scan_interval_ms: 1000,
            queue_batches: 256,
            tls: true,
            kernel_debug: false,
        }
    }
}

impl TargetSpec {
    /// Matches a process by executable basename.
    pub fn exe(service: &str, exe: &str) -> Self {
        TargetSpec {
            service: service.to_string(),
            exe: Some(exe.to_string()),
            comm: None,
            cmdline: None,
            pid: None,
        }
    }

    /// Matches one process id.
    pub fn pid(service: &str, pid: u32) -> Self {
        TargetSpec {
            service: service.to_string(),
            exe: None,
            comm: None,
            cmdline: None,
            pid: Some(pid),
        }
    }

    /// How the target is chosen, for messages ("exe=shop-api").
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(exe) = &self.exe {
            parts.push(format!("exe={exe}"));
        }
        if let Some(comm) = &self.comm {
            parts.push(format!("comm={comm}"));
        }
        if let Some(cmdline) = &self.cmdline {
            parts.push(format!("cmdline=/{cmdline}/"));
        }
        if let Some(pid) = self.pid {
            parts.push(format!("pid={pid}"));
        }
        parts.join(" ")
    }

    fn validate(&self) -> Result<(), String> {
        if self.service.trim().is_empty() {
            return Err("capture.target: `service` must not be empty".into());
        }
        if self.exe.is_none() && self.comm.is_none() && self.cmdline.is_none() && self.pid.is_none()
        {
            return Err(format!(
                "capture.target {:?}: give at least one of exe, comm, cmdline, pid",
                self.service
            ));
        }
        if let Some(pattern) = &self.cmdline {
            regex::Regex::new(pattern).map_err(|e| {
                format!(
                    "capture.target {:?}: cmdline is not a valid regex: {e}",
                    self.service
                )
            })?;
        }
        if self.pid == Some(0) {
            return Err(format!(
                "capture.target {:?}: pid 0 is not a process",
                self.service
            ));
        }
        Ok(())
    }
}

/// Bytes copied per read/write on one service's sockets, by the process's side of the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadCaps {
    /// Connections the process accepted.
    pub server: u32,
    /// Connections the process made.
    pub client: u32,
}

impl PayloadCaps {
    pub fn uniform(cap: u32) -> Self {
        PayloadCaps {
            server: cap,
            client: cap,
        }
    }
}

impl CaptureConfig {
    /// What the agent copies of each call on a socket whose exchanges the rules read bodies
    /// of, or only heads of.
    pub fn cap_for(&self, reads_body: bool) -> u32 {
        let wanted = if reads_body {
            self.head_bytes.saturating_add(self.body_bytes)
        } else {
            self.head_bytes
        };
        wanted.min(self.payload_cap)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("payload_cap", self.payload_cap),
            ("head_bytes", self.head_bytes),
        ] {
            if value == 0 || value as usize > PAYLOAD_MAX {
                return Err(format!(
                    "capture.{name} = {value}: must be between 1 and {PAYLOAD_MAX}"
                ));
            }
        }
        if self.body_bytes as usize > PAYLOAD_MAX {
            return Err(format!(
                "capture.body_bytes = {}: must be at most {PAYLOAD_MAX}",
                self.body_bytes
            ));
        }
        let ring = self.ring_buffer_bytes;
        if !ring.is_power_of_two() || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&ring) {
            return Err(format!(
                "capture.ring_buffer_bytes = {ring}: must be a power of two between \
                 {MIN_RING_BYTES} and {MAX_RING_BYTES} (e.g. 16777216 for 16 MiB)"
            ));
        }
        if self.scan_interval_ms == 0 || self.scan_interval_ms > 1000 {
            return Err(format!(
                "capture.scan_interval_ms = {}: must be between 1 and 1000 (new processes \
                 must be picked up within 2 s)",
                self.scan_interval_ms
            ));
        }
        if self.queue_batches == 0 {
            return Err("capture.queue_batches must be at least 1".into());
        }
        self.targets.iter().try_for_each(TargetSpec::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CaptureConfig, String> {
        let config: CaptureConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map(|()| config)
    }

    #[test]
    fn defaults_trace_the_three_apis_and_are_valid() {
        let config = parse("").unwrap();
        let services: Vec<_> = config.targets.iter().map(|t| t.service.as_str()).collect();
        assert_eq!(services, ["shop-api", "mes-api", "crm-api"]);
        assert_eq!(config.payload_cap, 16384);
    }

    #[test]
    fn caps_follow_what_the_rules_read_and_never_pass_the_ceiling() {
        let config = parse("head_bytes = 2048\nbody_bytes = 1024").unwrap();
        assert_eq!(config.cap_for(false), 2048);
        assert_eq!(config.cap_for(true), 3072);
        let low = parse("payload_cap = 2500\nhead_bytes = 2048\nbody_bytes = 1024").unwrap();
        assert_eq!(low.cap_for(true), 2500);
        assert_eq!(low.cap_for(false), 2048);
    }

    #[test]
    fn targets_parse_with_every_matcher() {
        let config = parse(
            "[[target]]\nservice = \"x\"\nexe = \"python3\"\ncmdline = \"shop\\\\.py\"\n\
             [[target]]\nservice = \"y\"\npid = 42\n",
        )
        .unwrap();
        assert_eq!(
            config.targets[0].describe(),
            "exe=python3 cmdline=/shop\\.py/"
        );
        assert_eq!(config.targets[1].pid, Some(42));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (text, needle) in [
            ("payload_cap = 0", "payload_cap"),
            ("payload_cap = 16385", "payload_cap"),
            ("head_bytes = 0", "head_bytes"),
            ("body_bytes = 20000", "body_bytes"),
            ("ring_buffer_bytes = 100000", "power of two"),
            ("ring_buffer_bytes = 4096", "ring_buffer_bytes"),
            ("scan_interval_ms = 5000", "2 s"),
            ("[[target]]\nservice = \"x\"", "at least one of"),
            ("[[target]]\nservice = \"\"\nexe = \"a\"", "service"),
            ("[[target]]\nservice = \"x\"\ncmdline = \"(\"", "regex"),
            ("[[target]]\nservice = \"x\"\nexe = \"a\"\nport = 1", "port"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?} → {err}");
        }
    }
}
