//! `tracer capture`: prints captured events as JSON lines, one object per event:
//! `kind` (open|data|close), `pid`, `fd`, `service`, `conn`, `role` (server|client|unknown),
//! `local`, `peer` (ip:port or null), `ts_ns`; data events add `direction` (send|recv),
//! `len` (bytes the syscall moved), `captured` (bytes copied) and `payload` (the copied
//! bytes as UTF-8, other bytes as `\xNN`, cut at `--show-bytes`). Counters are printed as a
//! `"kind":"counters"` line on SIGUSR1 and at exit (SIGINT/SIGTERM).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use super::{Capture, CaptureConfig, CaptureEvent, ConnKey, Direction, Role, TargetSpec};

/// Connections remembered for labelling data lines; beyond this the table starts over.
const MAX_CONNS: usize = 65536;

#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Trace processes whose executable (or argv[0]) basename is NAME.
    #[arg(long, value_name = "NAME", conflicts_with = "pid")]
    pub exe: Option<String>,
    /// Trace one process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Service name on the events (default: the exe name, or `pid-<PID>`).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Bytes copied per syscall (1…16384).
    #[arg(long, value_name = "BYTES")]
    pub payload_cap: Option<u32>,
    /// Ring buffer size: a power of two, at least 65536.
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,
    /// Config file whose `[capture]` section is used (targets too, unless --exe/--pid).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Payload bytes shown per data line; `captured` still gives the full count.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub show_bytes: usize,
}

impl CaptureArgs {
    fn capture_config(&self) -> anyhow::Result<CaptureConfig> {
        let mut config = match &self.config {
            Some(path) => crate::config::Config::load(path)?.capture,
            None => CaptureConfig::default(),
        };
        let default_service = |fallback: String| self.service.clone().unwrap_or(fallback);
        if let Some(exe) = &self.exe {
            config.targets = vec![TargetSpec::exe(&default_service(exe.clone()), exe)];
        } else if let Some(pid) = self.pid {
            config.targets = vec![TargetSpec::pid(&default_service(format!("pid-{pid}")), pid)];
        }
        if let Some(cap) = self.payload_cap {
            config.payload_cap = cap;
        }
        if let Some(bytes) = self.ring_buffer_bytes {
            config.ring_buffer_bytes = bytes;
        }
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

pub async fn run(args: CaptureArgs) -> anyhow::Result<()> {
    let config = args.capture_config()?;
    let mut capture = Capture::start(&config)?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut printer = Printer {
        conns: HashMap::new(),
        show_bytes: args.show_bytes,
    };
    let stdout = std::io::stdout();
    let result = loop {
        let lines: Vec<Value> = tokio::select! {
            batch = capture.recv() => match batch {
                Some(batch) => batch.iter().map(|e| printer.line(e)).collect(),
                None => break Err(anyhow::anyhow!("the capture task stopped")),
            },
            _ = usr1.recv() => vec![counters_line(&capture)],
            _ = int.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
        };
        let mut out = stdout.lock();
        let written = lines
            .iter()
            .try_for_each(|line| writeln!(out, "{line}"))
            .and_then(|()| out.flush());
        if written.is_err() {
            // The reader went away (a closed pipe): nothing left to show.
            break Ok(());
        }
    };
    let mut out = stdout.lock();
    let _ = writeln!(out, "{}", counters_line(&capture));
    let _ = out.flush();
    result
}

fn counters_line(capture: &Capture) -> Value {
    let mut value = serde_json::to_value(capture.counters()).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("kind".into(), "counters".into());
    }
    value
}

struct ConnLabel {
    role: Role,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

struct Printer {
    conns: HashMap<ConnKey, ConnLabel>,
    show_bytes: usize,
}

impl Printer {
    fn line(&mut self, event: &CaptureEvent) -> Value {
        match event {
            CaptureEvent::Open(open) => {
                if self.conns.len() >= MAX_CONNS {
                    self.conns.clear();
                }
                let label = ConnLabel {
                    role: open.role,
                    local: open.local,
                    peer: open.peer,
                };
                let line = base("open", open.conn, &open.service, Some(&label), open.ts_ns);
                self.conns.insert(open.conn, label);
                line
            }
            CaptureEvent::Close(close) => {
                let label = self.conns.remove(&close.conn);
                base(
                    "close",
                    close.conn,
                    &close.service,
                    label.as_ref(),
                    close.ts_ns,
                )
            }
            CaptureEvent::Data(data) => {
                let label = self.conns.get(&data.conn);
                let mut line = base("data", data.conn, &data.service, label, data.ts_ns);
                let shown = &data.payload[..data.payload.len().min(self.show_bytes)];
                line["direction"] = match data.direction {
                    Direction::Send => "send",
                    Direction::Recv => "recv",
                }
                .into();
                line["len"] = data.len.into();
                line["captured"] = data.payload.len().into();
                if data.tls {
                    line["tls"] = true.into();
                }
                line["payload"] = escape(shown).into();
                line
            }
        }
    }
}

fn base(kind: &str, conn: ConnKey, service: &str, label: Option<&ConnLabel>, ts_ns: u64) -> Value {
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    json!({
        "kind": kind,
        "pid": conn.pid,
        "fd": conn.fd,
        "service": service,
        "conn": conn.conn_id,
        "role": match label.map(|l| l.role) {
            Some(Role::Server) => "server",
            Some(Role::Client) => "client",
            Some(Role::Unknown) | None => "unknown",
        },
        "local": addr(label.and_then(|l| l.local)),
        "peer": addr(label.and_then(|l| l.peer)),
        "ts_ns": ts_ns,
    })
}

/// Valid UTF-8 as is; every other byte as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_text_and_marks_bytes() {
        assert_eq!(escape(b"GET / HTTP/1.1\r\n"), "GET / HTTP/1.1\r\n");
        assert_eq!(escape("é".as_bytes()), "é");
        assert_eq!(escape(&[b'a', 0xff, b'b']), "a\\xffb");
        // A multi-byte character cut by the screen limit is shown as bytes.
        assert_eq!(escape(&"é".as_bytes()[..1]), "\\xc3");
    }

    #[test]
    fn args_override_the_config() {
        let args = CaptureArgs {
            exe: Some("curl".into()),
            pid: None,
            service: None,
            payload_cap: Some(100),
            ring_buffer_bytes: None,
            config: None,
            show_bytes: 4096,
        };
        let config = args.capture_config().unwrap();
        assert_eq!(config.targets, [TargetSpec::exe("curl", "curl")]);
        assert_eq!(config.payload_cap, 100);
        let bad = CaptureArgs {
            payload_cap: Some(0),
            ..args
        };
        assert!(bad.capture_config().is_err());
    }
}
