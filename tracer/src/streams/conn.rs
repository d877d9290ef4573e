//! One connection: each direction's bytes reassembled and parsed (requests one way,
//! responses the other), gaps and lost sync handled, and what they carry paired.

use bytes::{Buf, Bytes, BytesMut};

use super::Env;
use crate::capture::event::DataChunk;
use crate::capture::{Direction, Role};
use crate::http::decoder::{CloseOutcome, Decoder, End, GapOutcome, Step};
use crate::http::head::{Head, HeadError, HeadInfo};
use crate::http::pair::{ConnMeta, PairCounters, Pairing};
use crate::http::resync::{self, Scan};
use crate::http::{Exchange, Input, Kind, Message, RequestHead, ResponseHead};

/// A buffer emptied with more capacity than this is freed: idle connections stay small.
const IDLE_CAPACITY: usize = 4096;
/// How far before its `HTTP/1.x` a request line found while resyncing may begin (capped by
/// `max_buffered_bytes`).
const RESYNC_WINDOW: usize = 8192;
/// A connection that carried this much without one message start is taken for non-HTTP.
/// Larger than any upload a connection entered mid-way may be in.
const NON_HTTP_AFTER: u64 = 64 << 20;
/// A connection whose data changed direction this often without one message start is taken
/// for non-HTTP: in HTTP/1 a turn of the conversation starts a message, so a connection
/// entered mid-way shows one within a turn or two.
const NON_HTTP_TURNS: u8 = 6;

pub(super) struct Conn {
    meta: ConnMeta,
    /// The direction carrying requests; `None` until a connection entered mid-way shows a
    /// message start.
    request_dir: Option<Direction>,
    send: Dir,
    recv: Dir,
    requests: Decoder<RequestHead>,
    responses: Decoder<ResponseHead>,
    pairing: Pairing,
    /// Not HTTP, or no longer (upgraded): its bytes are dropped unread.
    ignored: bool,
    seen_http: bool,
    /// Bytes scanned for a message start while no HTTP had been seen.
    scanned: u64,
    /// Changes of direction of the data while no HTTP had been seen.
    turns: u8,
    last_dir: Option<Direction>,
    last_ns: u64,
}

#[derive(Default)]
struct Dir {
    /// Bytes of an incomplete head, chunk-size line or resync window.
    buf: BytesMut,
    /// Position unknown: looking for the next message start.
    resync: bool,
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    NeedMore,
}

fn other(d: Direction) -> Direction {
    match d {
        Direction::Send => Direction::Recv,
        Direction::Recv => Direction::Send,
    }
}

impl Conn {
    pub fn new(meta: ConnMeta, ts_ns: u64) -> Self {
        let request_dir = match meta.role {
            Role::Server => Some(Direction::Recv),
            Role::Client => Some(Direction::Send),
            Role::Unknown => None,
        };
        // With the role known the connection is taken to start here. It may not (sockets
        // found open when the agent started): a first head that is no message start then
        // makes the direction resync, like one of an unknown role.
        let dir = || Dir {
            buf: BytesMut::new(),
            resync: request_dir.is_none(),
        };
        Conn {
            meta,
            request_dir,
            send: dir(),
            recv: dir(),
            requests: Decoder::new(),
            responses: Decoder::new(),
            pairing: Pairing::default(),
            ignored: false,
            seen_http: false,
            scanned: 0,
            turns: 0,
            last_dir: None,
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
        if self.ignored {
            return;
        }
        let d = chunk.direction;
        if !self.seen_http {
            let payload = &chunk.payload[..];
            if resync::is_tls_record(payload) || resync::is_http2_preface(payload) {
                self.ignore_non_http(env);
                return;
            }
            if self.last_dir.is_some_and(|last| last != d) {
                self.turns = self.turns.saturating_add(1);
            }
            self.last_dir = Some(d);
        }
        let missing = chunk.len.saturating_sub(chunk.payload.len() as u64);
        if !chunk.payload.is_empty() {
            self.feed(d, chunk.payload, chunk.ts_ns, env);
        }
        if !self.seen_http && self.turns >= NON_HTTP_TURNS && !self.ignored {
            self.ignore_non_http(env);
        }
        if missing > 0 && !self.ignored {
            self.gap(d, missing, chunk.ts_ns, env);
        }
    }

    /// Parses what it can straight from the capture; only an incomplete remainder is copied
    /// into the direction's buffer, which never holds more than `max_buffered_bytes`.
    fn feed(&mut self, d: Direction, mut payload: Bytes, ts_ns: u64, env: &mut Env<'_>) {
        let max = env.config.max_buffered_bytes;
        let mut buf = std::mem::take(&mut self.dir_mut(d).buf);
        while !payload.is_empty() && !self.ignored {
            if buf.is_empty() {
                self.run(d, &mut payload, ts_ns, env);
                if payload.len() > max {
                    self.over_budget(d, env);
                } else if !self.ignored {
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
        if self.ignored || (buf.is_empty() && buf.capacity() > IDLE_CAPACITY) {
            buf = BytesMut::new();
        }
        self.dir_mut(d).buf = buf;
    }

    fn over_budget(&mut self, d: Direction, env: &mut Env<'_>) {
        env.counters.dropped_over_budget += 1;
        if !self.dir_mut(d).resync {
            self.lose_sync(d, env);
        }
    }

    /// Consumes everything of `input` that is not an incomplete unit.
    fn run<I: Input>(&mut self, d: Direction, input: &mut I, ts_ns: u64, env: &mut Env<'_>) {
        loop {
            if self.ignored {
                let n = input.bytes().len();
                input.skip(n);
                return;
            }
            let flow = if self.dir_mut(d).resync {
                self.scan(d, input, env)
            } else if self.request_dir == Some(d) {
                self.step::<RequestHead, I>(d, input, ts_ns, env)
            } else {
                self.step::<ResponseHead, I>(d, input, ts_ns, env)
            };
            if flow == Flow::NeedMore {
                return;
            }
        }
    }

    fn scan<I: Input>(&mut self, d: Direction, input: &mut I, env: &mut Env<'_>) -> Flow {
        let want = self.request_dir.map(|r| {
            if r == d {
                Kind::Request
            } else {
                Kind::Response
            }
        });
        let window = RESYNC_WINDOW.min(env.config.max_buffered_bytes);
        match resync::find_start(input.bytes(), want, window) {
            Scan::Found { at, kind } => {
                input.skip(at);
                if self.request_dir.is_none() {
                    let request_dir = match kind {
                        Kind::Request => d,
                        Kind::Response => other(d),
                    };
                    self.request_dir = Some(request_dir);
                    self.meta.role = match request_dir {
                        Direction::Recv => Role::Server,
                        Direction::Send => Role::Client,
                    };
                }
                self.dir_mut(d).resync = false;
                match kind {
                    Kind::Request => self.requests.reset(),
                    Kind::Response => self.responses.reset(),
                }
                Flow::Continue
            }
            Scan::NotFound { keep_from } => {
                input.skip(keep_from);
                if !self.seen_http {
                    self.scanned += keep_from as u64;
                    if self.scanned > NON_HTTP_AFTER {
                        self.ignore_non_http(env);
                    }
                }
                Flow::NeedMore
            }
        }
    }

    fn step<S: Side, I: Input>(
        &mut self,
        d: Direction,
        input: &mut I,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) -> Flow {
        let ctx = S::ctx(&self.pairing);
        match S::decoder(self).step(input, ts_ns, env.limits, ctx) {
            Ok(Step::NeedMore) => return Flow::NeedMore,
            Ok(Step::Head {
                msg,
                info,
                start_ns,
            }) => {
                self.seen_http = true;
                S::head(&mut self.pairing, msg, info, start_ns, env);
            }
            Ok(Step::Body(piece)) => S::body(&mut self.pairing, piece),
            Ok(Step::End(end)) => self.end::<S>(d, &end, ts_ns, env),
            Err(e) => self.head_error::<S, I>(d, e, input, env),
        }
        Flow::Continue
    }

    fn end<S: Side>(&mut self, d: Direction, end: &End, ts_ns: u64, env: &mut Env<'_>) {
        if S::end(&mut self.pairing, end, ts_ns, &self.meta, env) {
            env.counters.upgraded_connections += 1;
            self.ignore();
        } else if end.lost_sync {
            self.lose_sync_of::<S>(d, env);
        }
    }

    fn head_error<S: Side, I: Input>(
        &mut self,
        d: Direction,
        e: HeadError,
        input: &mut I,
        env: &mut Env<'_>,
    ) {
        // Before any HTTP, bytes that do not even begin like a message are no bad head: the
        // connection was entered mid-way, or is no HTTP (which the turns will tell).
        if !self.seen_http && resync::is_http2_preface(input.bytes()) {
            self.ignore_non_http(env);
            return;
        }
        let bad_head = self.seen_http || resync::starts_like(input.bytes(), S::KIND);
        // Step past the bad head so the resync scan does not find its start line again.
        let skip = match e {
            HeadError::TooLarge => {
                env.counters.oversized_heads += u64::from(bad_head);
                env.limits.max_header_bytes
            }
            HeadError::Invalid => {
                env.counters.parse_errors += u64::from(bad_head);
                1
            }
        };
        input.skip(skip.min(input.bytes().len()));
        self.lose_sync_of::<S>(d, env);
    }

    /// Direction `d` no longer knows where messages start: it scans for the next start.
    fn lose_sync(&mut self, d: Direction, env: &mut Env<'_>) {
        if self.request_dir == Some(d) {
            self.lose_sync_of::<RequestHead>(d, env);
        } else {
            self.lose_sync_of::<ResponseHead>(d, env);
        }
    }

    fn lose_sync_of<S: Side>(&mut self, d: Direction, env: &mut Env<'_>) {
        let dir = self.dir_mut(d);
        dir.resync = true;
        S::decoder(self).reset();
        S::lost(&mut self.pairing);
        env.counters.resyncs += 1;
    }

    fn gap(&mut self, d: Direction, n: u64, ts_ns: u64, env: &mut Env<'_>) {
        let dir = self.dir_mut(d);
        if dir.resync {
            // A start line cannot straddle missing bytes.
            dir.buf.clear();
            return;
        }
        if self.request_dir == Some(d) {
            self.gap_of::<RequestHead>(d, n, ts_ns, env);
        } else {
            self.gap_of::<ResponseHead>(d, n, ts_ns, env);
        }
    }

    fn gap_of<S: Side>(&mut self, d: Direction, n: u64, ts_ns: u64, env: &mut Env<'_>) {
        match S::decoder(self).gap(n) {
            GapOutcome::Inside => {}
            GapOutcome::Ended(end) => self.end::<S>(d, &end, ts_ns, env),
            GapOutcome::Lost => {
                self.dir_mut(d).buf.clear();
                self.lose_sync_of::<S>(d, env);
            }
        }
    }

    /// The connection closed: a close-delimited response ends, everything unanswered is
    /// reported as reset.
    pub fn close(&mut self, ts_ns: u64, env: &mut Env<'_>) {
        if self.ignored {
            return;
        }
        if let CloseOutcome::Cut(end) = self.requests.close() {
            self.pairing.request_end(&end, ts_ns);
        }
        let pairing = &mut env.counters.pairing;
        let cut = match self.responses.close() {
            CloseOutcome::Ended(end) => {
                self.pairing
                    .response_end(&end, ts_ns, &self.meta, env.out, pairing);
                None
            }
            CloseOutcome::Cut(end) => Some(end),
            CloseOutcome::Idle => None,
        };
        self.pairing
            .close(ts_ns, cut.as_ref(), &self.meta, env.out, pairing);
    }

    pub fn expire(
        &mut self,
        now_ns: u64,
        timeout_ns: u64,
        out: &mut Vec<Exchange>,
        c: &mut PairCounters,
    ) {
        if !self.ignored && !self.pairing.is_idle() {
            self.pairing.expire(now_ns, timeout_ns, &self.meta, out, c);
        }
    }

    fn ignore_non_http(&mut self, env: &mut Env<'_>) {
        env.counters.non_http_connections += 1;
        self.ignore();
    }

    fn ignore(&mut self) {
        self.ignored = true;
        self.send = Dir::default();
        self.recv = Dir::default();
        self.pairing = Pairing::default();
    }
}

/// What differs between the request and the response direction: which decoder, and what
/// pairing does with their messages.
trait Side: Head {
    const KIND: Kind;
    fn decoder(conn: &mut Conn) -> &mut Decoder<Self>;
    fn ctx(pairing: &Pairing) -> Self::Ctx;
    fn head(p: &mut Pairing, msg: Message<Self>, info: HeadInfo, start_ns: u64, env: &mut Env);
    fn body(p: &mut Pairing, piece: Bytes);
    /// Returns whether the connection stopped carrying HTTP.
    fn end(p: &mut Pairing, end: &End, ts_ns: u64, meta: &ConnMeta, env: &mut Env) -> bool;
    fn lost(p: &mut Pairing);
}

impl Side for RequestHead {
    const KIND: Kind = Kind::Request;
    fn decoder(conn: &mut Conn) -> &mut Decoder<Self> {
        &mut conn.requests
    }
    fn ctx(_: &Pairing) {}
    fn head(p: &mut Pairing, msg: Message<Self>, info: HeadInfo, start_ns: u64, env: &mut Env) {
        let max = env.config.max_pending_requests;
        p.request_head(msg, info, start_ns, max, &mut env.counters.pairing);
    }
    fn body(p: &mut Pairing, piece: Bytes) {
        p.request_body(piece);
    }
    fn end(p: &mut Pairing, end: &End, ts_ns: u64, _: &ConnMeta, _: &mut Env) -> bool {
        p.request_end(end, ts_ns);
        false
    }
    fn lost(p: &mut Pairing) {
        p.requests_lost();
    }
}

impl Side for ResponseHead {
    const KIND: Kind = Kind::Response;
    fn decoder(conn: &mut Conn) -> &mut Decoder<Self> {
        &mut conn.responses
    }
    fn ctx(pairing: &Pairing) -> Self::Ctx {
        pairing.response_ctx()
    }
    fn head(p: &mut Pairing, msg: Message<Self>, info: HeadInfo, start_ns: u64, _: &mut Env) {
        p.response_head(msg, info, start_ns);
    }
    fn body(p: &mut Pairing, piece: Bytes) {
        p.response_body(piece);
    }
    fn end(p: &mut Pairing, end: &End, ts_ns: u64, meta: &ConnMeta, env: &mut Env) -> bool {
        p.response_end(end, ts_ns, meta, env.out, &mut env.counters.pairing)
    }
    fn lost(p: &mut Pairing) {
        p.responses_lost();
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
