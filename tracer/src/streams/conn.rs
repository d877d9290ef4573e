//! One connection: each direction's bytes reassembled within a bound, and handed to the
//! protocol that claims the connection. Until one does, HTTP parses (it is what most
//! connections carry, and it judges for itself when bytes are no HTTP), and each chunk is
//! shown to AMQP's detection first: its protocol header, or two consecutive frames.

use bytes::{Buf, Bytes, BytesMut};

use super::Env;
use crate::capture::Direction;
use crate::capture::event::DataChunk;
use crate::protocol::{ConnMeta, Flow, Input};
use crate::{amqp, http};

/// A buffer emptied with more capacity than this is freed: idle connections stay small.
const IDLE_CAPACITY: usize = 4096;

pub(super) struct Conn {
    meta: ConnMeta,
    send: Dir,
    recv: Dir,
    protocol: Protocol,
    /// Per direction (send, recv), while unclaimed: the last chunk ended where a well-formed
    /// AMQP frame ended.
    amqp_boundary: [bool; 2],
    last_ns: u64,
    /// What [`Conn::held_bytes`] was when the stage last added it to its total.
    pub accounted: usize,
}

/// What [`Conn::shed`] dropped besides bytes.
#[derive(Debug, Default)]
pub(super) struct Shed {
    /// HTTP requests (a head still coming counts as one).
    pub requests: usize,
    /// AMQP messages being assembled or waiting for their settlement.
    pub messages: usize,
}

/// How long records may wait for their end, per protocol.
pub(super) struct Timeouts {
    pub response_ns: u64,
    pub ack_ns: u64,
}

/// The protocol a connection carries, as far as is known. Not boxed: a followed connection
/// costs its parser's state anyway, and boxing would add an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Protocol {
    Http(http::stream::Stream),
    Amqp(amqp::stream::Stream),
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
            amqp_boundary: [false; 2],
            last_ns: ts_ns,
            accounted: 0,
        }
    }

    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    pub fn buffered_bytes(&self) -> usize {
        self.send.buf.len() + self.recv.buf.len()
    }

    /// What the connection holds against `[streams] max_total_bytes`: its buffers (their
    /// allocation, partial frames included), the HTTP messages being assembled, and the
    /// AMQP messages being assembled or waiting for their settlement.
    pub fn held_bytes(&self) -> usize {
        let messages = match &self.protocol {
            Protocol::Http(stream) => stream.held_bytes(),
            Protocol::Amqp(stream) => stream.held_bytes(),
            Protocol::Ignored => 0,
        };
        self.send.buf.capacity() + self.recv.buf.capacity() + messages
    }

    /// Drops everything the connection holds (the stage is over its byte budget): buffers and
    /// messages being assembled or waiting, whole; a direction whose buffer held part of a
    /// unit then looks for the next message start.
    pub fn shed(&mut self, env: &mut Env<'_>) -> Shed {
        let buffered = [!self.send.buf.is_empty(), !self.recv.buf.is_empty()];
        self.send = Dir::default();
        self.recv = Dir::default();
        match &mut self.protocol {
            Protocol::Http(stream) => Shed {
                requests: stream.shed(buffered, &mut env.http()),
                messages: 0,
            },
            Protocol::Amqp(stream) => Shed {
                requests: 0,
                messages: stream.shed(&self.meta, buffered, &mut env.amqp()),
            },
            Protocol::Ignored => Shed::default(),
        }
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
        if chunk.tls != self.meta.tls {
            if !chunk.tls {
                // Ciphertext of a connection read through its TLS library.
                return;
            }
            self.start_plaintext();
        }
        self.last_ns = self.last_ns.max(chunk.ts_ns);
        let d = chunk.direction;
        let missing = chunk.len.saturating_sub(chunk.payload.len() as u64);
        let mut payload = chunk.payload;
        if let Protocol::Http(stream) = &mut self.protocol
            && !stream.claimed()
        {
            let boundary = &mut self.amqp_boundary[usize::from(d == Direction::Recv)];
            match amqp::detect(&payload, *boundary) {
                amqp::Detect::Claim { at, preface } => {
                    payload.advance(at);
                    self.claim_amqp(d, preface, env);
                }
                amqp::Detect::No { boundary: ends } => {
                    *boundary = ends;
                    if stream.first_look(d, &payload, &mut env.http()) == Flow::Done {
                        self.ignore();
                    }
                }
            }
        }
        if matches!(self.protocol, Protocol::Ignored) {
            return;
        }
        if !payload.is_empty() {
            self.feed(d, payload, chunk.ts_ns, env);
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

    /// AMQP claims the connection: what HTTP held is dropped, the frames start here.
    fn claim_amqp(&mut self, d: Direction, preface: bool, env: &mut Env<'_>) {
        self.send = Dir::default();
        self.recv = Dir::default();
        let preface_from = preface.then_some(d);
        let mut stream = amqp::stream::Stream::new(&mut self.meta, preface_from, &mut env.amqp());
        if !preface {
            // Entered mid-way: the other direction's position is unknown.
            let other = match d {
                Direction::Send => Direction::Recv,
                Direction::Recv => Direction::Send,
            };
            stream.lose_sync(other, &mut env.amqp());
        }
        self.protocol = Protocol::Amqp(stream);
    }

    /// The TLS library's plaintext starts: what was seen of the socket was ciphertext (a
    /// handshake, or records from before the library was attached), and is dropped.
    fn start_plaintext(&mut self) {
        self.meta.tls = true;
        self.send = Dir::default();
        self.recv = Dir::default();
        self.amqp_boundary = [false; 2];
        self.protocol = Protocol::Http(http::stream::Stream::new(self.meta.role));
    }

    fn is_ignored(&self) -> bool {
        matches!(self.protocol, Protocol::Ignored)
    }

    /// Consumes everything of `input` that is not an incomplete unit.
    fn run<I: Input>(&mut self, d: Direction, input: &mut I, ts_ns: u64, env: &mut Env<'_>) {
        let flow = match &mut self.protocol {
            Protocol::Http(stream) => stream.run(&mut self.meta, d, input, ts_ns, &mut env.http()),
            Protocol::Amqp(stream) => {
                stream.run(&mut self.meta, d, input, ts_ns, &mut env.amqp());
                Flow::NeedMore
            }
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
        match &mut self.protocol {
            Protocol::Http(stream) => stream.lose_sync(d, &mut env.http()),
            Protocol::Amqp(stream) => stream.lose_sync(d, &mut env.amqp()),
            Protocol::Ignored => {}
        }
    }

    fn gap(&mut self, d: Direction, n: u64, ts_ns: u64, env: &mut Env<'_>) {
        let after = match &mut self.protocol {
            Protocol::Http(stream) => stream.gap(&self.meta, d, n, ts_ns, &mut env.http()),
            Protocol::Amqp(stream) => {
                let dir = match d {
                    Direction::Send => &mut self.send,
                    Direction::Recv => &mut self.recv,
                };
                if stream.gap(&self.meta, d, n, &dir.buf, ts_ns, &mut env.amqp()) {
                    dir.buf.clear();
                }
                return;
            }
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
        match &mut self.protocol {
            Protocol::Http(stream) => stream.close(&self.meta, ts_ns, &mut env.http()),
            Protocol::Amqp(stream) => stream.close(&self.meta, ts_ns, &mut env.amqp()),
            Protocol::Ignored => {}
        }
    }

    pub fn expire(&mut self, now_ns: u64, timeouts: &Timeouts, env: &mut Env<'_>) {
        match &mut self.protocol {
            Protocol::Http(stream) => {
                let http = env.http();
                stream.expire(
                    &self.meta,
                    now_ns,
                    timeouts.response_ns,
                    http.out,
                    &mut http.counters.pairing,
                );
            }
            Protocol::Amqp(stream) => {
                stream.expire(&self.meta, now_ns, timeouts.ack_ns, &mut env.amqp())
            }
            Protocol::Ignored => {}
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
