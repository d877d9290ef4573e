//! TLS plaintext: finding each target's TLS library and attaching the kernel's uprobes to it.
//!
//! A library is found in the target's `/proc/<pid>/maps` (a `libssl.so*`, or the executable
//! itself when it exports OpenSSL's calls, statically linked) and attached once per file
//! (device + inode), for every process that maps it; the links are released when the last
//! target mapping it is gone. Targets are looked at again at every scan, so a library loaded
//! later (`dlopen`) is picked up then. Another TLS library is one more [`Library`] entry.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use aya::Ebpf;
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeLink, UProbeScope};

use super::counters::UserCounters;

/// One probe of a library: the function, the program at its entry and the one at its return.
struct Probe {
    symbol: &'static str,
    entry: &'static str,
    ret: Option<&'static str>,
}

/// A TLS library the kernel side has programs for.
struct Library {
    name: &'static str,
    /// Whether a mapped file's name is this library's (the executable is always looked at).
    file_name: fn(&str) -> bool,
    probes: &'static [Probe],
    /// At least one of these must be present for the library to be worth attaching.
    data_symbols: &'static [&'static str],
}

const fn probe(symbol: &'static str, entry: &'static str, ret: Option<&'static str>) -> Probe {
    Probe { symbol, entry, ret }
}

/// OpenSSL 1.1 and 3.x, and BoringSSL-compatible builds (which lack the `_ex` calls).
const LIBRARIES: &[Library] = &[Library {
    name: "OpenSSL",
    file_name: |name| name.starts_with("libssl.so"),
    probes: &[
        probe("SSL_write", "ssl_write", Some("ssl_data_return")),
        probe("SSL_write_ex", "ssl_write_ex", Some("ssl_data_return")),
        probe("SSL_read", "ssl_read", Some("ssl_data_return")),
        probe("SSL_read_ex", "ssl_read_ex", Some("ssl_data_return")),
        probe(
            "SSL_do_handshake",
            "ssl_handshake",
            Some("ssl_handshake_return"),
        ),
        probe("SSL_connect", "ssl_handshake", Some("ssl_handshake_return")),
        probe("SSL_accept", "ssl_handshake", Some("ssl_handshake_return")),
        probe("SSL_set_fd", "ssl_set_fd", None),
        probe("SSL_free", "ssl_free", None),
    ],
    data_symbols: &["SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"],
}];

/// Every program name the libraries use, loaded at start.
pub fn programs() -> impl Iterator<Item = &'static str> {
    let mut names: Vec<&'static str> = LIBRARIES
        .iter()
        .flat_map(|l| l.probes.iter())
        .flat_map(|p| std::iter::once(p.entry).chain(p.ret))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter()
}

/// A file as the kernel identifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

/// A file a process maps that may hold a TLS library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub id: FileId,
    /// As the process sees it (its mount namespace).
    pub path: String,
    pub executable: bool,
}

/// What the attach layer counted; the gauges are computed at [`Attacher::publish`].
#[derive(Debug, Default)]
struct Counts {
    without_library: u64,
    unusable_libraries: u64,
}

enum FileState {
    Attached {
        library: &'static str,
        users: HashSet<u32>,
        /// Dropped with the state: detaches the probes.
        _links: Vec<UProbeLink>,
    },
    /// No TLS library (an executable without the calls), or one that could not be attached:
    /// not looked at again while some process maps it.
    Unusable,
}

/// The user that keeps the host's own libraries attached for the agent's life.
const HOST: u32 = 0;

/// Directories the dynamic linker loads the host's libraries from.
const HOST_LIBRARY_DIRS: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
];

#[derive(Default)]
pub struct Attacher {
    files: HashMap<FileId, FileState>,
    /// Target pid → the candidate files it maps (attached or not).
    mapped: HashMap<u32, Vec<FileId>>,
    /// Targets already said to have no TLS library.
    said_none: HashSet<u32>,
    counts: Counts,
}

impl Attacher {
    /// Copies the counters into the capture's.
    pub fn publish(&self, counters: &UserCounters) {
        let attached = |id: &FileId| matches!(self.files.get(id), Some(FileState::Attached { .. }));
        let libraries = self.files.keys().filter(|id| attached(id)).count();
        let targets = self
            .mapped
            .iter()
            .filter(|(pid, files)| **pid != HOST && files.iter().any(attached))
            .count();
        for (counter, value) in [
            (&counters.tls_libraries, libraries as u64),
            (&counters.tls_targets, targets as u64),
            (&counters.tls_without_library, self.counts.without_library),
            (
                &counters.tls_unusable_libraries,
                self.counts.unusable_libraries,
            ),
        ] {
            counter.store(value, Ordering::Relaxed);
        }
    }

    /// Attaches the TLS libraries in the host's library directories, for processes the
    /// kernel starts tracing at exec (a short-lived client would be gone before the scan).
    pub fn attach_host_libraries(&mut self, ebpf: &mut Ebpf) {
        let mut files = Vec::new();
        for dir in HOST_LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if !LIBRARIES.iter().any(|l| (l.file_name)(name)) {
                    continue;
                }
                let path = entry.path();
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let id = FileId {
                    dev: dev_id(
                        libc::major(meta.dev()).into(),
                        libc::minor(meta.dev()).into(),
                    ),
                    inode: meta.ino(),
                };
                if meta.is_file() && !files.iter().any(|(known, _)| *known == id) {
                    files.push((id, path));
                }
            }
        }
        for (id, path) in files {
            let file = Mapped {
                id,
                path: path.to_string_lossy().into_owned(),
                executable: false,
            };
            self.use_file(ebpf, &path, &file, HOST, "host");
            self.mapped.entry(HOST).or_default().push(id);
        }
    }

    /// Looks at a target's mappings and attaches the TLS libraries it maps for the first time.
    pub fn scan(&mut self, ebpf: &mut Ebpf, pid: u32, service: &str) {
        let Some(maps) = mapped_files(pid) else {
            return;
        };
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut any = false;
        for file in &maps {
            let path = root.join(file.path.trim_start_matches('/'));
            any |= self.use_file(ebpf, &path, file, pid, service);
        }
        if any {
            self.said_none.remove(&pid);
        } else if self.said_none.insert(pid) {
            self.counts.without_library += 1;
            tracing::info!(
                "pid {pid} ({service}) maps no TLS library the tracer reads (libssl): TLS it \
                 speaks stays encrypted; looked at again at every scan (dlopen)"
            );
        }
        let now: Vec<FileId> = maps.iter().map(|m| m.id).collect();
        let old = self.mapped.insert(pid, now).unwrap_or_default();
        self.release(pid, &old);
    }

    /// A target is gone: its files lose a user, and those left with none are detached.
    pub fn forget(&mut self, pid: u32) {
        self.said_none.remove(&pid);
        if let Some(old) = self.mapped.remove(&pid) {
            self.release(pid, &old);
        }
    }

    /// `pid` maps `file`: attached the first time any process does. Whether it is an
    /// attached TLS library.
    fn use_file(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        file: &Mapped,
        pid: u32,
        service: &str,
    ) -> bool {
        let counts = &mut self.counts;
        let state = self
            .files
            .entry(file.id)
            .or_insert_with(|| attach(ebpf, path, file, counts));
        let FileState::Attached { library, users, .. } = state else {
            return false;
        };
        if users.insert(pid) {
            if pid == HOST {
                tracing::info!(
                    "TLS plaintext of targets started by name: {library} in {} attached",
                    file.path
                );
            } else {
                tracing::info!(
                    "pid {pid} ({service}): TLS plaintext through {library} in {}",
                    file.path
                );
            }
        }
        true
    }

    /// Files of `old` that `pid` no longer maps lose it as a user; a file nobody maps is
    /// forgotten (detached if it was attached: its inode may later be another file).
    fn release(&mut self, pid: u32, old: &[FileId]) {
        let still = self.mapped.get(&pid).cloned().unwrap_or_default();
        for id in old.iter().filter(|id| !still.contains(id)) {
            if let Some(FileState::Attached { users, .. }) = self.files.get_mut(id) {
                users.remove(&pid);
            }
        }
        let mapped: HashSet<FileId> = self.mapped.values().flatten().copied().collect();
        self.files.retain(|id, state| match state {
            FileState::Attached { users, .. } => !users.is_empty(),
            FileState::Unusable => mapped.contains(id),
        });
    }
}

/// Attaches every probe of the library `file` is, if it is one.
fn attach(ebpf: &mut Ebpf, path: &Path, file: &Mapped, counts: &mut Counts) -> FileState {
    let name = Path::new(&file.path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let Some(library) = LIBRARIES
        .iter()
        .find(|l| file.executable || (l.file_name)(name))
    else {
        return FileState::Unusable;
    };
    let symbols = match defined_symbols(path, library) {
        Ok(symbols) => symbols,
        Err(e) => {
            if !file.executable {
                counts.unusable_libraries += 1;
                tracing::warn!("cannot read {} for its TLS calls: {e}", file.path);
            }
            return FileState::Unusable;
        }
    };
    if !library.data_symbols.iter().any(|s| symbols.contains_key(s)) {
        if !file.executable {
            counts.unusable_libraries += 1;
            tracing::warn!(
                "{} exports none of {}: its TLS traffic stays encrypted",
                file.path,
                library.data_symbols.join(", ")
            );
        }
        return FileState::Unusable;
    }
    let mut links = Vec::new();
    for probe in library.probes {
        let Some(&offset) = symbols.get(probe.symbol) else {
            continue;
        };
        for program in std::iter::once(probe.entry).chain(probe.ret) {
            match attach_one(ebpf, program, path, offset) {
                Ok(link) => links.push(link),
                Err(e) => {
                    counts.unusable_libraries += 1;
                    tracing::warn!(
                        "cannot attach {program} to {} in {}: {e}; its TLS traffic stays encrypted",
                        probe.symbol,
                        file.path
                    );
                    return FileState::Unusable;
                }
            }
        }
    }
    FileState::Attached {
        library: library.name,
        _links: links,
        users: HashSet::new(),
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    program: &str,
    path: &Path,
    offset: u64,
) -> Result<UProbeLink, String> {
    let uprobe: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or("the eBPF object lacks the program: rebuild the tracer")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    let id = uprobe
        .attach(offset, path, UProbeScope::AllProcesses)
        .map_err(|e| e.to_string())?;
    uprobe.take_link(id).map_err(|e| e.to_string())
}

/// File offsets of the library's functions `path` defines (not those it imports).
fn defined_symbols(path: &Path, library: &Library) -> Result<HashMap<&'static str, u64>, String> {
    use object::{Object, ObjectSection, ObjectSymbol};
    // Read as needed rather than whole: an executable may be large.
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let data = object::ReadCache::new(file);
    let elf = object::File::parse(&data).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let Some(probe) = library.probes.iter().find(|p| p.symbol == name) else {
            continue;
        };
        let Some(section) = symbol
            .section_index()
            .and_then(|i| elf.section_by_index(i).ok())
        else {
            continue;
        };
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        out.insert(
            probe.symbol,
            symbol.address() - section.address() + file_offset,
        );
    }
    Ok(out)
}

/// The files a process maps that may be a TLS library: its `libssl*` and its executable.
fn mapped_files(pid: u32) -> Option<Vec<Mapped>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    Some(parse_maps(&maps, exe.as_deref()))
}

pub fn parse_maps(maps: &str, exe: Option<&Path>) -> Vec<Mapped> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_range), Some(_perms), Some(_offset), Some(dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = fields.collect::<Vec<_>>().join(" ");
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let Some(id) = file_id(dev, inode) else {
            continue;
        };
        if out.iter().any(|m| m.id == id) {
            continue;
        }
        let executable = exe.is_some_and(|exe| Path::new(&path) == exe);
        let name = path.rsplit('/').next().unwrap_or("");
        if executable || LIBRARIES.iter().any(|l| (l.file_name)(name)) {
            out.push(Mapped {
                id,
                path,
                executable,
            });
        }
    }
    out
}

/// `major:minor` (hex) and the inode of a maps line; the device as the kernel's `dev_t`.
fn file_id(dev: &str, inode: &str) -> Option<FileId> {
    let (major, minor) = dev.split_once(':')?;
    let major = u64::from_str_radix(major, 16).ok()?;
    let minor = u64::from_str_radix(minor, 16).ok()?;
    let inode = inode.parse().ok()?;
    (inode != 0).then_some(FileId {
        dev: dev_id(major, minor),
        inode,
    })
}

/// A device number as the kernel writes it (`MKDEV`), the same from maps and from `stat`.
fn dev_id(major: u64, minor: u64) -> u64 {
    (major << 20) | minor
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a2c000 r--p 00000000 fe:01 1311 /usr/bin/python3.11
7f1c2a000000-7f1c2a021000 r--p 00000000 00:00 0 
7f1c2b200000-7f1c2b21e000 r--p 00000000 fe:01 2210 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b21e000-7f1c2b27a000 r-xp 0001e000 fe:01 2210 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b300000-7f1c2b310000 r-xp 00000000 fe:01 2300 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1c2b400000-7f1c2b410000 r-xp 00000000 fe:01 2400 /opt/app/lib/libssl.so.1.1 (deleted)
7f1c2b500000-7f1c2b510000 r-xp 00000000 103:02 77 /srv/my app/libssl.so.1.1
7ffd1e1f0000-7ffd1e211000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn maps_yield_each_tls_library_once_and_the_executable() {
        let found = parse_maps(MAPS, Some(Path::new("/usr/bin/python3.11")));
        let paths: Vec<(&str, bool)> = found
            .iter()
            .map(|m| (m.path.as_str(), m.executable))
            .collect();
        assert_eq!(
            paths,
            [
                ("/usr/bin/python3.11", true),
                ("/usr/lib/x86_64-linux-gnu/libssl.so.3", false),
                ("/srv/my app/libssl.so.1.1", false),
            ]
        );
        assert_eq!(
            found[1].id,
            FileId {
                dev: dev_id(0xfe, 1),
                inode: 2210
            }
        );
        assert_eq!(found[2].id.dev, dev_id(0x103, 2));
    }

    #[test]
    fn the_host_libssl_defines_the_calls() {
        let Some(path) = HOST_LIBRARY_DIRS
            .iter()
            .map(|dir| Path::new(dir).join("libssl.so.3"))
            .find(|p| p.exists())
        else {
            return; // no OpenSSL 3 on this host
        };
        let symbols = defined_symbols(&path, &LIBRARIES[0]).expect("an ELF library");
        for symbol in ["SSL_read", "SSL_write", "SSL_set_fd", "SSL_free"] {
            assert!(symbols.contains_key(symbol), "{symbol} in {symbols:?}");
        }
        // curl imports them, defines none.
        if let Ok(curl) = which("curl") {
            assert!(defined_symbols(&curl, &LIBRARIES[0]).unwrap().is_empty());
        }
    }

    fn which(program: &str) -> Result<PathBuf, ()> {
        std::env::var("PATH")
            .map_err(|_| ())?
            .split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|p| p.exists())
            .ok_or(())
    }
}
