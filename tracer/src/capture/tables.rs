//! The kernel's target and socket tables, kept in step with the target scan: a new target
//! goes into `TARGETS` (and its bit into `TARGET_BITS`) and its already-open TCP sockets (from
//! /proc) into `SOCKETS`; a gone one is removed with its sockets, whose connections are
//! reported closed.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::sync::Arc;

use aya::maps::{Array, HashMap, MapData, MapError};
use tracer_common::{SockInfo, Target, role, sock_flag, sock_key, target_bit};

use super::decode::role_of;
use super::event::{CaptureEvent, ConnClose, ConnKey, ConnOpen};
use super::procfs;

/// `BPF_NOEXIST`: a socket the kernel already tracks keeps its own connection id.
const BPF_NOEXIST: u64 = 1;

pub struct KernelTables {
    pub targets: HashMap<MapData, u32, Target>,
    pub target_bits: Array<MapData, u64>,
    pub sockets: HashMap<MapData, u64, SockInfo>,
}

impl KernelTables {
    /// Starts tracing `pid`: first the filter (so sockets opened from now on are seen by the
    /// kernel), then the sockets that were already open, each announced by an open event.
    pub fn add(
        &mut self,
        pid: u32,
        target: Target,
        name: &Arc<str>,
        out: &mut Vec<CaptureEvent>,
    ) -> Result<(), MapError> {
        // A process the kernel picked up at exec may be inside a TLS call already: its
        // flags stay (the window between this read and the write is the agent's only).
        let flags = self.targets.get(&pid, 0).map_or(0, |known| known.flags);
        self.targets.insert(pid, Target { flags, ..target }, 0)?;
        self.set_bit(pid, true)?;
        self.seed(pid, name, out);
        Ok(())
    }

    /// Sets (or clears) a tgid's bit in the kernel's target bitmap. The kernel sets bits at
    /// exec too, without synchronising with this read-modify-write: a bit lost that way is
    /// set again by [`KernelTables::reassert_bits`].
    fn set_bit(&mut self, pid: u32, on: bool) -> Result<(), MapError> {
        let (word, mask) = target_bit(pid);
        let bits = self.target_bits.get(&word, 0)?;
        let new = if on { bits | mask } else { bits & !mask };
        if new != bits {
            self.target_bits.set(word, new, 0)?;
        }
        Ok(())
    }

    /// Sets the bit of every process in the kernel's target table.
    pub fn reassert_bits(&mut self, pids: &[u32]) {
        for pid in pids {
            if let Err(e) = self.set_bit(*pid, true) {
                tracing::warn!("cannot mark pid {pid} in the kernel's target bitmap: {e}");
            }
        }
    }

    fn seed(&mut self, pid: u32, name: &Arc<str>, out: &mut Vec<CaptureEvent>) {
        let fds = procfs::socket_fds(pid);
        if fds.is_empty() {
            return;
        }
        let table = procfs::tcp_tables(pid);
        let by_inode: StdHashMap<u64, &procfs::TcpEntry> =
            table.iter().map(|row| (row.inode, row)).collect();
        let mine: Vec<(i32, &procfs::TcpEntry)> = fds
            .iter()
            .filter_map(|(fd, inode)| Some((*fd, *by_inode.get(inode)?)))
            .collect();
        let listening: HashSet<u16> = mine
            .iter()
            .filter(|(_, row)| row.is_listening())
            .map(|(_, row)| row.local.port())
            .collect();
        for (fd, row) in mine {
            let conn_id = crate::clock::monotonic_now_ns();
            // A listener is tracked silently, so that `accept` on it is known to be TCP.
            let info = if row.is_listening() {
                SockInfo {
                    conn_id,
                    ..SockInfo::default()
                }
            } else {
                let role = if listening.contains(&row.local.port()) {
                    role::SERVER
                } else {
                    role::CLIENT
                };
                SockInfo {
                    conn_id,
                    role,
                    flags: sock_flag::ANNOUNCED,
                    _pad: [0; 6],
                }
            };
            let key = sock_key(pid, fd as u32);
            if self.sockets.insert(key, info, BPF_NOEXIST).is_err() {
                continue;
            }
            if info.flags & sock_flag::ANNOUNCED != 0 {
                out.push(CaptureEvent::Open(ConnOpen {
                    conn: ConnKey { pid, fd, conn_id },
                    service: name.clone(),
                    role: role_of(info.role),
                    local: Some(row.local),
                    peer: Some(row.remote),
                    ts_ns: conn_id,
                }));
            }
        }
    }

    /// Stops tracing `pid`. Its process is gone (or became another program), so its sockets
    /// closed without `close` calls the kernel could see: report them closed here.
    pub fn remove(&mut self, pid: u32, name: &Arc<str>, out: &mut Vec<CaptureEvent>) {
        let _ = self.targets.remove(&pid);
        // A bit left set only costs that pid a table lookup per hooked call.
        let _ = self.set_bit(pid, false);
        let keys: Vec<u64> = self
            .sockets
            .keys()
            .filter_map(Result::ok)
            .filter(|key| (key >> 32) as u32 == pid)
            .collect();
        let now = crate::clock::monotonic_now_ns();
        for key in keys {
            if let Ok(info) = self.sockets.get(&key, 0)
                && info.flags & sock_flag::ANNOUNCED != 0
            {
                out.push(CaptureEvent::Close(ConnClose {
                    conn: ConnKey {
                        pid,
                        fd: key as u32 as i32,
                        conn_id: info.conn_id,
                    },
                    service: name.clone(),
                    ts_ns: now,
                }));
            }
            let _ = self.sockets.remove(&key);
        }
    }
}
