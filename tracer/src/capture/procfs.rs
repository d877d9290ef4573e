//! What /proc tells about processes and their TCP sockets: the target scan reads process
//! identities, the seeding of already-open sockets and the local-address lookup read the
//! per-process TCP tables (`/proc/<pid>/net/tcp{,6}`, the process's own network namespace).

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// `st` of a listening socket in /proc/net/tcp.
const TCP_LISTEN: u8 = 0x0A;

/// A process as the target matcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    /// Basename of `/proc/<pid>/exe`; `None` for kernel threads and unreadable processes.
    pub exe: Option<String>,
    pub comm: String,
    /// Arguments joined by single spaces.
    pub cmdline: String,
    /// Start time in clock ticks since boot: tells a restarted process from a reused pid.
    pub start_time: u64,
}

/// One row of a TCP table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

impl TcpEntry {
    pub fn is_listening(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

/// Every process whose identity could be read (processes exiting mid-scan are skipped).
pub fn processes() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(process)
        .collect()
}

pub fn process(pid: u32) -> Option<ProcInfo> {
    let base = format!("/proc/{pid}");
    let stat = fs::read_to_string(format!("{base}/stat")).ok()?;
    let comm = fs::read_to_string(format!("{base}/comm")).ok()?;
    let cmdline = fs::read(format!("{base}/cmdline")).ok()?;
    let exe = fs::read_link(format!("{base}/exe"))
        .ok()
        .and_then(|path| exe_name(&path));
    Some(ProcInfo {
        pid,
        exe,
        comm: comm.trim_end_matches('\n').to_string(),
        cmdline: join_cmdline(&cmdline),
        start_time: start_time(&stat)?,
    })
}

fn exe_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    // A binary replaced on disk while running (an upgrade) still is that program.
    Some(name.strip_suffix(" (deleted)").unwrap_or(name).to_string())
}

fn join_cmdline(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.trim_end_matches('\0').replace('\0', " ")
}

/// Field 22 of /proc/<pid>/stat; the command (field 2) may contain spaces and parentheses,
/// so fields are counted after its last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `(fd, socket inode)` for every socket the process has open.
pub fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd = entry.file_name().to_str()?.parse().ok()?;
        let inode = socket_inode(&fs::read_link(entry.path()).ok()?)?;
        Some((fd, inode))
    })
    .collect()
}

/// The socket inode behind one fd, if it is a socket.
pub fn fd_inode(pid: u32, fd: i32) -> Option<u64> {
    socket_inode(&fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?)
}

fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// IPv4 and IPv6 TCP tables of the process's network namespace.
pub fn tcp_tables(pid: u32) -> Vec<TcpEntry> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|name| fs::read_to_string(format!("/proc/{pid}/net/{name}")).ok())
        .flat_map(|text| parse_tcp_table(&text))
        .collect()
}

/// Rows of /proc/net/tcp or tcp6; malformed rows are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines().skip(1).filter_map(parse_tcp_row).collect()
}

fn parse_tcp_row(line: &str) -> Option<TcpEntry> {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let fields: Vec<&str> = line.split_whitespace().collect();
    Some(TcpEntry {
        local: parse_endpoint(fields.get(1)?)?,
        remote: parse_endpoint(fields.get(2)?)?,
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6). The kernel prints each 32-bit
/// word of the network-order address as a host-order integer.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

/// TCP tables read at most once per pid while one batch of events is resolved.
#[derive(Default)]
pub struct TableCache {
    tables: HashMap<u32, Vec<TcpEntry>>,
}

impl TableCache {
    pub fn table(&mut self, pid: u32) -> &[TcpEntry] {
        self.tables.entry(pid).or_insert_with(|| tcp_tables(pid))
    }

    /// The local address of `fd`: by its socket inode, else (socket already closed) by the
    /// one row whose remote end is `peer`.
    pub fn local_addr(
        &mut self,
        pid: u32,
        fd: i32,
        peer: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let inode = fd_inode(pid, fd);
        let table = self.table(pid);
        if let Some(inode) = inode
            && let Some(row) = table.iter().find(|row| row.inode == inode)
        {
            return Some(row.local);
        }
        let peer = peer?;
        let mut rows = table.iter().filter(|row| row.remote == peer);
        match (rows.next(), rows.next()) {
            (Some(row), None) => Some(row.local),
            _ => None,
        }
    }

    pub fn clear(&mut self) {
        self.tables.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2346 1 0000000000000000 20 4 30 10 -1
   2: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn ipv4_rows_parse() {
        let rows = parse_tcp_table(TCP4);
        assert_eq!(rows.len(), 2, "the garbage row is skipped");
        assert!(rows[0].is_listening());
        assert_eq!(rows[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(rows[1].remote, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(rows[1].local.port(), 0xD2F0);
        assert_eq!(rows[1].inode, 2346);
    }

    #[test]
    fn ipv6_rows_parse_and_mapped_v4_is_canonical() {
        let rows = parse_tcp_table(TCP6);
        assert_eq!(rows[0].local, "[::1]:8081".parse().unwrap());
        assert_eq!(rows[1].local, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(rows[1].remote, "127.0.0.1:49152".parse().unwrap());
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("42 (x"), None);
    }

    #[test]
    fn cmdline_and_exe_names() {
        assert_eq!(
            join_cmdline(b"python3\0-m\0http.server\0"),
            "python3 -m http.server"
        );
        assert_eq!(
            exe_name(Path::new("/usr/bin/shop-api (deleted)")).as_deref(),
            Some("shop-api")
        );
        assert_eq!(socket_inode(Path::new("socket:[123]")), Some(123));
        assert_eq!(socket_inode(Path::new("pipe:[123]")), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = process(std::process::id()).unwrap();
        assert!(me.exe.is_some());
        assert!(me.start_time > 0);
    }
}
