//! What the capture stage hands the rest of the agent: decoded, owned kernel events.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

/// Identifies one TCP connection as seen by one process, for the socket's whole life.
/// A reused fd number gets a new `conn_id`, so keys never collide across reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub pid: u32,
    pub fd: i32,
    pub conn_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The process accepted the connection.
    Server,
    /// The process connected.
    Client,
    /// Seen from the middle (agent started late) and not resolvable from /proc.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Send,
    Recv,
}

#[derive(Clone, Debug)]
pub enum CaptureEvent {
    Open(ConnOpen),
    Data(DataChunk),
    Close(ConnClose),
}

#[derive(Clone, Debug)]
pub struct ConnOpen {
    pub conn: ConnKey,
    /// Service name the target maps to (`shop-api`, `mes-api`, …).
    pub service: Arc<str>,
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

#[derive(Clone, Debug)]
pub struct DataChunk {
    pub conn: ConnKey,
    pub service: Arc<str>,
    pub tid: u32,
    pub direction: Direction,
    /// CLOCK_MONOTONIC nanoseconds: at syscall entry for sends, at return for receives
    /// (a blocking read may wait long before its bytes arrive).
    pub ts_ns: u64,
    /// Bytes the syscall moved for this chunk; `payload.len() < len` means the capture was
    /// truncated at the cap and `len - payload.len()` bytes are missing from the stream.
    pub len: u64,
    pub payload: Bytes,
    /// TLS plaintext, read from the TLS library rather than the socket.
    pub tls: bool,
}

#[derive(Clone, Debug)]
pub struct ConnClose {
    pub conn: ConnKey,
    pub service: Arc<str>,
    pub ts_ns: u64,
}

impl CaptureEvent {
    /// CLOCK_MONOTONIC ns the kernel stamped the event with.
    pub fn ts_ns(&self) -> u64 {
        match self {
            CaptureEvent::Open(o) => o.ts_ns,
            CaptureEvent::Data(d) => d.ts_ns,
            CaptureEvent::Close(c) => c.ts_ns,
        }
    }

    pub fn conn(&self) -> ConnKey {
        match self {
            CaptureEvent::Open(o) => o.conn,
            CaptureEvent::Data(d) => d.conn,
            CaptureEvent::Close(c) => c.conn,
        }
    }
}
