//! What every protocol module (`http`, `amqp`) shares with the stages around it: the bytes
//! `streams` hands a protocol ([`Input`]), the connection facts it stamps on what it finds
//! ([`ConnMeta`]), and the protocol-neutral [`Record`]s it yields for `orders` and `spans`.
//!
//! Each protocol is a push parser of one connection's two directions: fed bytes as they come,
//! it consumes every complete unit and leaves an incomplete one in the input (`NeedMore`, never
//! an error); it is told of capture gaps, of its buffer overflowing, of the close and of the
//! clock. `streams` picks the protocol that claims a connection and owns its buffers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::capture::{ConnKey, Role};

/// One finished unit of a conversation, whatever carried it: an HTTP call with its answer,
/// or a broker message with its settlement. The order rules match either kind.
#[derive(Clone, Debug)]
pub enum Record {
    Http(crate::http::Exchange),
    Amqp(crate::amqp::Transfer),
}

impl Record {
    pub fn service(&self) -> &Arc<str> {
        match self {
            Record::Http(e) => &e.service,
            Record::Amqp(t) => &t.meta.service,
        }
    }
}

/// The connection facts every record of it carries.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub conn: ConnKey,
    pub service: Arc<str>,
    /// `Server`: the traced process accepted the connection; `Client`: it connected.
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

/// Contiguous bytes a parser reads from the front of: a captured payload (`Bytes`) or a
/// connection's reassembly buffer (`BytesMut`). `take` hands out a shared view, so heads and
/// kept body prefixes cost no copy when they sit inside one capture.
pub(crate) trait Input {
    fn bytes(&self) -> &[u8];
    fn take(&mut self, n: usize) -> Bytes;
    fn skip(&mut self, n: usize);
}

impl Input for Bytes {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn take(&mut self, n: usize) -> Bytes {
        self.split_to(n)
    }
    fn skip(&mut self, n: usize) {
        self.advance(n)
    }
}

impl Input for BytesMut {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn take(&mut self, n: usize) -> Bytes {
        self.split_to(n).freeze()
    }
    fn skip(&mut self, n: usize) {
        self.advance(n)
    }
}

/// What a protocol's parser tells `streams` after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Everything usable was consumed; the rest of the input is an incomplete unit.
    NeedMore,
    /// The connection no longer carries this protocol (upgraded, or never did): its bytes
    /// are to be dropped unread from now on.
    Done,
}

/// A kept body prefix, assembled from a parser's pieces: one piece stays a shared view of
/// the capture, more are copied together (up to the caller's bound).
#[derive(Debug, Default)]
pub(crate) enum BodyAcc {
    #[default]
    Empty,
    Shared(Bytes),
    Owned(BytesMut),
}

impl BodyAcc {
    pub fn push(&mut self, piece: Bytes) {
        *self = match std::mem::take(self) {
            BodyAcc::Empty => BodyAcc::Shared(piece),
            BodyAcc::Shared(first) => {
                let mut all = BytesMut::with_capacity(first.len() + piece.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&piece);
                BodyAcc::Owned(all)
            }
            BodyAcc::Owned(mut all) => {
                all.extend_from_slice(&piece);
                BodyAcc::Owned(all)
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            BodyAcc::Empty => 0,
            BodyAcc::Shared(b) => b.len(),
            BodyAcc::Owned(b) => b.len(),
        }
    }

    pub fn finish(self) -> Bytes {
        match self {
            BodyAcc::Empty => Bytes::new(),
            BodyAcc::Shared(b) => b,
            BodyAcc::Owned(b) => b.freeze(),
        }
    }
}
