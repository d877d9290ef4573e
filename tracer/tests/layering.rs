//! Dependencies point one way: the agent's stages never name the monitor side, the shared
//! helpers name nothing of the crate, and only the command wiring (`shapes`) sees both.
//! Read from the sources, so a new `use crate::…` in the wrong direction fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The agent's pipeline stages and their wiring.
const AGENT: &[&str] = &[
    "capture",
    "streams",
    "protocol",
    "http",
    "amqp",
    "orders",
    "spans",
    "sampling",
    "export",
    "pipeline_metrics",
    "agent",
];
/// The lifecycle monitor and what serves it.
const MONITOR: &[&str] = &[
    "lifecycle",
    "store",
    "metrics",
    "otlp_out",
    "api",
    "monitor",
    "receiver",
];
/// Helpers both sides use; they depend on no module of the crate.
const SHARED: &[&str] = &["clock", "process", "transport"];
/// The config file (every stage's section) and the commands that wire both sides.
const ROOT: &[&str] = &["config", "shapes"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The source files of top-level module `module`: `module.rs` and everything under `module/`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        files.push(file);
    }
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no sources for module {module}");
    files
}

/// Every top-level module named as `crate::name` (also inside `crate::{a, b::c}`).
fn modules_named(source: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let ident = |text: &str| -> String {
        text.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => named.extend(
                group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(ident),
            ),
            None => {
                named.insert(ident(rest));
            }
        }
    }
    named.remove("");
    named
}

fn violations(side: &[&str], forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for module in side {
        for file in files_of(module) {
            let source = std::fs::read_to_string(&file).unwrap();
            for name in modules_named(&source) {
                if forbidden.contains(&name.as_str()) {
                    found.push(format!("{} names crate::{name}", file.display()));
                }
            }
        }
    }
    found
}

#[test]
fn every_module_has_a_side() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    let sided: BTreeSet<&str> = [AGENT, MONITOR, SHARED, ROOT]
        .concat()
        .into_iter()
        .collect();
    assert_eq!(
        declared, sided,
        "lib.rs modules vs the sides this test knows"
    );
}

#[test]
fn the_agent_never_names_the_monitor() {
    let forbidden = [MONITOR, &["shapes"]].concat();
    let found = violations(AGENT, &forbidden);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_monitor_never_names_the_wiring() {
    let found = violations(MONITOR, &["shapes", "agent"]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn shared_helpers_depend_on_nothing_of_the_crate() {
    let every = [AGENT, MONITOR, SHARED, ROOT].concat();
    let found = violations(SHARED, &every);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_config_names_sections_not_components() {
    let found = violations(&["config"], &["agent", "monitor", "receiver", "shapes"]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn paths_are_read_as_modules() {
    let named = modules_named("use crate::a::B;\nuse crate::{b, c::d};\nlet x = crate::e::f();");
    let expected: BTreeSet<String> = ["a", "b", "c", "e"].map(String::from).into();
    assert_eq!(named, expected);
}
