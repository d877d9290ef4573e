//! Ring-buffer entries → [`CaptureEvent`]s. Pure: the local address of an open event is
//! filled in later, from /proc.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use tracer_common::{AF_INET, AF_INET6, EventHeader, SockAddr, direction, event_flag, kind, role};

use super::event::{CaptureEvent, ConnClose, ConnKey, ConnOpen, DataChunk, Direction, Role};

const HEADER: usize = std::mem::size_of::<EventHeader>();

/// An entry this agent cannot read: its kernel side is from another build, or memory is
/// corrupt. Counted, never fatal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("entry of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("entry claims {captured} payload bytes but holds {available}")]
    Captured { captured: u32, available: usize },
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown direction {0}")]
    Direction(u8),
    #[error("service index {0} is not in the service table")]
    Service(u32),
}

/// A decoded entry: an event for the consumer, or news for the agent itself.
#[derive(Debug)]
pub enum Decoded {
    Event(CaptureEvent),
    /// This target process (pid, service index) exited.
    Exit(u32, u32),
}

pub fn decode(entry: &[u8], services: &[Arc<str>]) -> Result<Decoded, DecodeError> {
    let header = read_header(entry)?;
    if header.kind == kind::EXIT {
        return Ok(Decoded::Exit(header.tgid, header.service));
    }
    decode_event(entry, &header, services).map(Decoded::Event)
}

fn decode_event(
    entry: &[u8],
    header: &EventHeader,
    services: &[Arc<str>],
) -> Result<CaptureEvent, DecodeError> {
    let service = services
        .get(header.service as usize)
        .cloned()
        .ok_or(DecodeError::Service(header.service))?;
    let conn = ConnKey {
        pid: header.tgid,
        fd: header.fd,
        conn_id: header.conn_id,
    };
    match header.kind {
        kind::OPEN => Ok(CaptureEvent::Open(ConnOpen {
            conn,
            service,
            role: role_of(header.role),
            local: None,
            peer: socket_addr(&header.peer),
            ts_ns: header.ts_ns,
        })),
        kind::CLOSE => Ok(CaptureEvent::Close(ConnClose {
            conn,
            service,
            ts_ns: header.ts_ns,
        })),
        kind::DATA => {
            let available = entry.len() - HEADER;
            let captured = header.captured as usize;
            if captured > available {
                return Err(DecodeError::Captured {
                    captured: header.captured,
                    available,
                });
            }
            let direction = match header.direction {
                direction::SEND => Direction::Send,
                direction::RECV => Direction::Recv,
                other => return Err(DecodeError::Direction(other)),
            };
            Ok(CaptureEvent::Data(DataChunk {
                conn,
                service,
                tid: header.tid,
                direction,
                ts_ns: header.ts_ns,
                len: header.len.max(captured as u64),
                payload: Bytes::copy_from_slice(&entry[HEADER..HEADER + captured]),
                tls: header.flags & event_flag::TLS != 0,
            }))
        }
        other => Err(DecodeError::Kind(other)),
    }
}

fn read_header(entry: &[u8]) -> Result<EventHeader, DecodeError> {
    if entry.len() < HEADER {
        return Err(DecodeError::Short(entry.len()));
    }
    // SAFETY: `entry` holds at least `HEADER` bytes, and every bit pattern is a valid
    // `EventHeader` (plain integers, padding spelled out); read_unaligned copes with any
    // alignment.
    Ok(unsafe { std::ptr::read_unaligned(entry.as_ptr().cast::<EventHeader>()) })
}

pub fn role_of(raw: u8) -> Role {
    match raw {
        role::SERVER => Role::Server,
        role::CLIENT => Role::Client,
        _ => Role::Unknown,
    }
}

/// The kernel's address, with IPv4-mapped IPv6 shown as IPv4 (a dual-stack server sees
/// IPv4 clients that way); `None` when the kernel did not see one.
pub fn socket_addr(addr: &SockAddr) -> Option<SocketAddr> {
    let ip = match addr.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(
            addr.addr[0],
            addr.addr[1],
            addr.addr[2],
            addr.addr[3],
        )),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(addr.addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip.to_canonical(), addr.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(entry: &[u8], services: &[Arc<str>]) -> Result<CaptureEvent, DecodeError> {
        match super::decode(entry, services)? {
            Decoded::Event(event) => Ok(event),
            Decoded::Exit(pid, _) => panic!("exit of {pid}"),
        }
    }

    fn entry(header: EventHeader, payload: &[u8]) -> Vec<u8> {
        // SAFETY: EventHeader is plain old data.
        let raw = unsafe {
            std::slice::from_raw_parts((&header as *const EventHeader).cast::<u8>(), HEADER)
        };
        [raw, payload].concat()
    }

    fn services() -> Vec<Arc<str>> {
        vec![Arc::from("shop-api")]
    }

    #[test]
    fn data_event_keeps_prefix_and_true_length() {
        let header = EventHeader {
            kind: kind::DATA,
            direction: direction::SEND,
            captured: 3,
            tgid: 7,
            tid: 8,
            fd: 5,
            len: 10,
            conn_id: 99,
            ts_ns: 1234,
            ..EventHeader::default()
        };
        // The entry is a size class: bytes after `captured` are not payload.
        let CaptureEvent::Data(d) = decode(&entry(header, b"abcXXXX"), &services()).unwrap() else {
            panic!("not data")
        };
        assert_eq!(&d.payload[..], b"abc");
        assert_eq!(d.len, 10);
        assert_eq!(d.direction, Direction::Send);
        assert_eq!(
            d.conn,
            ConnKey {
                pid: 7,
                fd: 5,
                conn_id: 99
            }
        );
        assert_eq!(&*d.service, "shop-api");
    }

    #[test]
    fn open_event_addresses() {
        let mut peer = SockAddr {
            port: 443,
            family: AF_INET6,
            ..SockAddr::default()
        };
        peer.addr[15] = 1;
        let header = EventHeader {
            kind: kind::OPEN,
            role: role::CLIENT,
            peer,
            ..EventHeader::default()
        };
        let CaptureEvent::Open(o) = decode(&entry(header, &[]), &services()).unwrap() else {
            panic!("not open")
        };
        assert_eq!(o.peer, Some("[::1]:443".parse().unwrap()));
        assert_eq!(o.role, Role::Client);
        let mapped = SockAddr {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
            port: 80,
            family: AF_INET6,
            _pad: 0,
        };
        assert_eq!(socket_addr(&mapped), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(socket_addr(&SockAddr::default()), None);
    }

    #[test]
    fn exit_is_for_the_agent() {
        let header = EventHeader {
            kind: kind::EXIT,
            tgid: 42,
            ..EventHeader::default()
        };
        assert!(matches!(
            super::decode(&entry(header, &[]), &services()),
            Ok(Decoded::Exit(42, 0))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(
            decode(&[1, 2, 3], &services()).unwrap_err(),
            DecodeError::Short(3)
        );
        let lying = EventHeader {
            kind: kind::DATA,
            direction: direction::RECV,
            captured: 100,
            ..EventHeader::default()
        };
        assert!(matches!(
            decode(&entry(lying, b"short"), &services()),
            Err(DecodeError::Captured { .. })
        ));
        let bad_service = EventHeader {
            kind: kind::CLOSE,
            service: 9,
            ..EventHeader::default()
        };
        assert_eq!(
            decode(&entry(bad_service, &[]), &services()).unwrap_err(),
            DecodeError::Service(9)
        );
        for garbage in 0..=255u8 {
            let bytes = vec![garbage; HEADER + 16];
            let _ = super::decode(&bytes, &services());
        }
    }
}
