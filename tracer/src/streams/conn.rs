//! One connection: each direction's bytes reassembled within a bound, and handed to the
//! protocol that claims the connection. Until one does, HTTP parses (it is what most
//! connections carry, and it judges for itself when bytes are no HTTP).

use bytes::{Buf, Bytes, BytesMut};

use super::Env;
use crate::capture::Direction;
use crate::capture::event::DataChunk;
use crate::http;
use crate::protocol::{ConnMeta, Flow, Input};

/// A buffer emptied with more capacity than this is freed: idle connections stay small.
const IDLE_CAPACITY: usize = 4096;

pub(super) struct Conn {
    meta: ConnMeta,
    send: Dir,
    recv: Dir,
    protocol: Protocol,
    last_ns: u64,
}

/// The protocol a connection carries, as far as is known. Not boxed: a followed connection
/// costs its parser's state anyway, and boxing would add an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Protocol {
    Http(http::stream::Stream),
    /// No protocol we parse (or no longer, after an upgrade): bytes are dropped unread.
    Ignored,
}

#[derive(Default)]
struct Dir {
    /// Bytes of an incomplete unit (head, chunk-size line, frame) or a resync window.
    buf: BytesMut,
}

impl Conn {
    pub fn new(meta: ConnMeta, ts_ns: u64) -> Self {
        Conn {
            protocol: Protocol::Http(http::stream::Stream::new(meta.role)),
            meta,
            send: Dir::default(),
            recv: Dir::default(),
            last_ns: ts_ns,
        }
    }

    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    pub fn buffered_bytes(&self) -> usize {
        self.send.buf.len() + self.recv.buf.len()
    }

    #[cfg(test)]
    pub fn max_dir_buffered(&self) -> usize {
        self.send.buf.len().max(self.recv.buf.len())
    }

    fn dir_mut(&mut self, d: Direction) -> &mut Dir {
        match d {
            Direction::Send => &mut self.send,
            Direction::Recv => &mut self.recv,
        }
    }

    pub fn on_data(&mut self, chunk: DataChunk, env: &mut Env<'_>) {
        self.last_ns = self.last_ns.max(chunk.ts_ns);
        let d = chunk.direction;
        if let Protocol::Http(stream) = &mut self.protocol
            && !stream.claimed()
            && stream.first_look(d, &chunk.payload, &mut env.http()) == Flow::Done
        {
            self.ignore();
        }
        if matches!(self.protocol, Protocol::Ignored) {
            return;
        }
        let missing = chunk.len.saturating_sub(chunk.payload.len() as u64);
        if !chunk.payload.is_empty() {
            self.feed(d, chunk.payload, chunk.ts_ns, env);
        }
        if let Protocol::Http(stream) = &mut self.protocol
            && stream.after_chunk(&mut env.http()) == Flow::Done
        {
            self.ignore();
        }
        if missing > 0 {
            self.gap(d, missing, chunk.ts_ns, env);
        }
    }

    /// Parses what it can straight from the capture; only an incomplete remainder is copied
    /// into the direction's buffer, which never holds more than `max_buffered_bytes`.
    fn feed(&mut self, d: Direction, mut payload: Bytes, ts_ns: u64, env: &mut Env<'_>) {
        let max = env.config.max_buffered_bytes;
        let mut buf = std::mem::take(&mut self.dir_mut(d).buf);
        while !payload.is_empty() && !self.is_ignored() {
            if buf.is_empty() {
                self.run(d, &mut payload, ts_ns, env);
                if payload.len() > max {
                    self.over_budget(d, env);
                } else if !self.is_ignored() {
                    buf.extend_from_slice(&payload);
                }
                break;
            }
            let room = max - buf.len().min(max);
            if room == 0 {
                buf.clear();
                self.over_budget(d, env);
                continue;
            }
            let n = room.min(payload.len());
            buf.extend_from_slice(&payload[..n]);
            payload.advance(n);
            self.run(d, &mut buf, ts_ns, env);
        }
        if self.is_ignored() || (buf.is_empty() && buf.capacity() > IDLE_CAPACITY) {
            buf = BytesMut::new();
        }
        self.dir_mut(d).buf = buf;
    }

    fn is_ignored(&self) -> bool {
        matches!(self.protocol, Protocol::Ignored)
    }

    /// Consumes everything of `input` that is not an incomplete unit.
    fn run<I: Input>(&mut self, d: Direction, input: &mut I, ts_ns: u64, env: &mut Env<'_>) {
        let flow = match &mut self.protocol {
            Protocol::Http(stream) => stream.run(&mut self.meta, d, input, ts_ns, &mut env.http()),
            Protocol::Ignored => Flow::Done,
        };
        if flow == Flow::Done {
            let n = input.bytes().len();
            input.skip(n);
            self.ignore();
        }
    }

    fn over_budget(&mut self, d: Direction, env: &mut Env<'_>) {
        env.counters.dropped_over_budget += 1;
        if let Protocol::Http(stream) = &mut self.protocol {
            stream.lose_sync(d, &mut env.http());
        }
    }

    fn gap(&mut self, d: Direction, n: u64, ts_ns: u64, env: &mut Env<'_>) {
        let after = match &mut self.protocol {
            Protocol::Http(stream) => stream.gap(&self.meta, d, n, ts_ns, &mut env.http()),
            Protocol::Ignored => return,
        };
        match after {
            http::stream::AfterGap::Continue => {}
            http::stream::AfterGap::ClearBuffer => self.dir_mut(d).buf.clear(),
            http::stream::AfterGap::Done => self.ignore(),
        }
    }

    /// The connection closed: what is open ends as the protocol says.
    pub fn close(&mut self, ts_ns: u64, env: &mut Env<'_>) {
        if let Protocol::Http(stream) = &mut self.protocol {
            stream.close(&self.meta, ts_ns, &mut env.http());
        }
    }

    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, env: &mut Env<'_>) {
        if let Protocol::Http(stream) = &mut self.protocol {
            let http = env.http();
            stream.expire(
                &self.meta,
                now_ns,
                timeout_ns,
                http.out,
                &mut http.counters.pairing,
            );
        }
    }

    fn ignore(&mut self) {
        self.protocol = Protocol::Ignored;
        self.send = Dir::default();
        self.recv = Dir::default();
    }
}

#[cfg(test)]
mod tests {
    /// Tens of thousands of connections sit idle most of the time: what each costs then is
    /// this struct (buffers are freed when emptied).
    #[test]
    fn an_idle_connection_stays_small() {
        assert!(std::mem::size_of::<super::Conn>() <= 640);
    }
}
