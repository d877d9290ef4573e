//! The binary's logs as log collectors and people get them: no colour codes when stderr is a
//! file or a pipe, colour on a terminal, one JSON object per line with `--log-format json` or
//! `TRACER_LOG_FORMAT=json`; and an `OTEL_*` variable that cannot take effect is named.
//!
//! `tracer monitor` is started with its OTLP/gRPC port already taken, so it logs its start
//! (and the environment's warning) and then exits on its own.

use std::net::TcpListener;
use std::process::{Command, Output};

/// Runs `tracer monitor` (via `wrap`, e.g. under a terminal) until it gives up on the busy
/// port; returns what it printed.
fn monitor_run(extra_args: &[&str], env: &[(&str, &str)], wrap: Option<&str>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let store = dir.path().join("m.db");
    let mut args: Vec<String> = [
        "monitor",
        "--allow-anonymous-loopback",
        "--listen",
        "127.0.0.1:0",
        "--otlp-http",
        "127.0.0.1:0",
        "--otlp-grpc",
        &busy,
        "--store",
    ]
    .map(String::from)
    .to_vec();
    args.push(store.display().to_string());
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let tracer = env!("CARGO_BIN_EXE_tracer");
    let mut command = match wrap {
        // script(1) gives the child a pseudo-terminal as stdin, stdout and stderr.
        Some(script) => {
            let line = std::iter::once(tracer.to_string())
                .chain(args)
                .collect::<Vec<_>>()
                .join(" ");
            let mut c = Command::new(script);
            c.args(["-qec", &line, "/dev/null"]);
            c
        }
        None => {
            let mut c = Command::new(tracer);
            c.args(args);
            c
        }
    };
    command
        .env_remove("TRACER_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("tracer runs");
    assert!(
        !output.status.success(),
        "the busy port should stop it: {output:?}"
    );
    output
}

const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317");

#[test]
fn logs_to_a_pipe_carry_no_colour_and_name_the_ineffective_variable() {
    let out = monitor_run(&[], &[ENDPOINT], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\x1b'), "escape codes in:\n{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning in:\n{stderr}"));
    assert!(
        warning.contains("OTEL_EXPORTER_OTLP_ENDPOINT is set") && warning.contains("--forward-to"),
        "{warning}"
    );
    assert!(
        stderr.contains("lifecycle monitor started"),
        "info lines too:\n{stderr}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    for (args, env) in [
        (&["--log-format", "json"][..], vec![ENDPOINT]),
        (&[][..], vec![ENDPOINT, ("TRACER_LOG_FORMAT", "json")]),
    ] {
        let out = monitor_run(args, &env, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(
            lines.iter().any(|l| l["level"] == "WARN"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT is set"))),
            "{stderr}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == "lifecycle monitor started"
                    && l["target"].is_string()
                    && l["timestamp"].is_string()),
            "{stderr}"
        );
        // Only the process's closing error (not a log line) may be plain text.
        let plain: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with('{') && !l.trim().is_empty())
            .collect();
        assert!(
            plain
                .iter()
                .all(|l| !l.contains("INFO") && !l.contains("WARN")),
            "{plain:?}"
        );
    }
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    let Some(script) = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        panic!("script(1) from util-linux is needed to give the tracer a terminal");
    };
    let out = monitor_run(&[], &[], Some(script));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\x1b[") && text.contains("lifecycle monitor started"),
        "{text}"
    );
    let out = monitor_run(&[], &[("NO_COLOR", "1")], Some(script));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("\x1b[") && text.contains("lifecycle monitor started"),
        "{text}"
    );
}
