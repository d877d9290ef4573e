//! One HTTP/1 connection's parsing: requests one way, responses the other, gaps and lost sync
//! handled, and what they carry paired. `streams` owns the bytes and calls in here.

use bytes::Bytes;
use serde::Serialize;

use super::decoder::{CloseOutcome, Decoder, End, GapOutcome, Step};
use super::head::{Head, HeadError, HeadInfo, Limits};
use super::pair::{PairCounters, Pairing};
use super::resync::{self, Scan};
use super::{Kind, Message, RequestHead, ResponseHead};
use crate::capture::{Direction, Role};
use crate::protocol::{ConnMeta, Flow, Input, Record};

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

/// What HTTP parsing saw and dropped, for the agent's metrics. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Times a direction lost its place and looked for the next message start.
    pub resyncs: u64,
    /// Connections recognised as not HTTP (HTTP/2, other protocols, garbage) and ignored.
    pub non_http_connections: u64,
    /// Connections whose bytes were TLS records: encrypted, not parsed. Their plaintext comes
    /// from the TLS library's probes where the process's library is attached (the
    /// connection is followed again from its first plaintext).
    pub encrypted_connections: u64,
    /// Connections that switched protocol (101, CONNECT) and were ignored from then on.
    pub upgraded_connections: u64,
    /// Message heads that were not valid HTTP on an HTTP connection.
    pub parse_errors: u64,
    /// Message heads over `max_header_bytes` or `max_headers`, dropped.
    pub oversized_heads: u64,
    #[serde(flatten)]
    pub pairing: PairCounters,
}

/// What the parser needs from the stage that drives it.
pub(crate) struct Env<'a> {
    pub limits: &'a Limits,
    pub max_pending_requests: usize,
    /// Bound of a direction's reassembly buffer (and so of a resync window).
    pub max_buffered_bytes: usize,
    pub counters: &'a mut Counters,
    pub out: &'a mut Vec<Record>,
}

/// What a capture gap did to a direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterGap {
    Continue,
    /// The direction's buffered bytes cannot be continued after the gap: drop them.
    ClearBuffer,
    Done,
}

pub(crate) struct Stream {
    /// The direction carrying requests; `None` until a connection entered mid-way shows a
    /// message start.
    request_dir: Option<Direction>,
    /// Per direction (send, recv): position unknown, looking for the next message start.
    resync: [bool; 2],
    requests: Decoder<RequestHead>,
    responses: Decoder<ResponseHead>,
    pairing: Pairing,
    seen_http: bool,
    /// Bytes scanned for a message start while no HTTP had been seen.
    scanned: u64,
    /// Changes of direction of the data while no HTTP had been seen.
    turns: u8,
    last_dir: Option<Direction>,
    done: bool,
}

fn other(d: Direction) -> Direction {
    match d {
        Direction::Send => Direction::Recv,
        Direction::Recv => Direction::Send,
    }
}

fn slot(d: Direction) -> usize {
    match d {
        Direction::Send => 0,
        Direction::Recv => 1,
    }
}

impl Stream {
    pub fn new(role: Role) -> Self {
        let request_dir = match role {
            Role::Server => Some(Direction::Recv),
            Role::Client => Some(Direction::Send),
            Role::Unknown => None,
        };
        // With the role known the connection is taken to start here. It may not (sockets
        // found open when the agent started): a first head that is no message start then
        // makes the direction resync, like one of an unknown role.
        let resync = request_dir.is_none();
        Stream {
            request_dir,
            resync: [resync; 2],
            requests: Decoder::new(),
            responses: Decoder::new(),
            pairing: Pairing::default(),
            seen_http: false,
            scanned: 0,
            turns: 0,
            last_dir: None,
            done: false,
        }
    }

    /// A message start was seen: the connection is HTTP.
    pub fn claimed(&self) -> bool {
        self.seen_http
    }

    /// Looks at a chunk before it is fed, while the connection is not known to be HTTP.
    pub fn first_look(&mut self, d: Direction, payload: &[u8], env: &mut Env<'_>) -> Flow {
        if resync::is_tls_record(payload) {
            env.counters.encrypted_connections += 1;
            self.done = true;
            return Flow::Done;
        }
        if resync::is_http2_preface(payload) {
            return self.not_http(env);
        }
        if self.last_dir.is_some_and(|last| last != d) {
            self.turns = self.turns.saturating_add(1);
        }
        self.last_dir = Some(d);
        Flow::NeedMore
    }

    /// After a chunk was fed: too many turns without a message start is no HTTP.
    pub fn after_chunk(&mut self, env: &mut Env<'_>) -> Flow {
        if self.done {
            return Flow::Done;
        }
        if !self.seen_http && self.turns >= NON_HTTP_TURNS {
            return self.not_http(env);
        }
        Flow::NeedMore
    }

    fn not_http(&mut self, env: &mut Env<'_>) -> Flow {
        env.counters.non_http_connections += 1;
        self.done = true;
        Flow::Done
    }

    /// Consumes everything of `input` that is not an incomplete unit.
    pub fn run<I: Input>(
        &mut self,
        meta: &mut ConnMeta,
        d: Direction,
        input: &mut I,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) -> Flow {
        loop {
            if self.done {
                return Flow::Done;
            }
            let flow = if self.resync[slot(d)] {
                self.scan(meta, d, input, env)
            } else if self.request_dir == Some(d) {
                self.step::<RequestHead, I>(meta, d, input, ts_ns, env)
            } else {
                self.step::<ResponseHead, I>(meta, d, input, ts_ns, env)
            };
            if flow == Step1::NeedMore {
                return if self.done {
                    Flow::Done
                } else {
                    Flow::NeedMore
                };
            }
        }
    }

    fn scan<I: Input>(
        &mut self,
        meta: &mut ConnMeta,
        d: Direction,
        input: &mut I,
        env: &mut Env<'_>,
    ) -> Step1 {
        let want = self.request_dir.map(|r| {
            if r == d {
                Kind::Request
            } else {
                Kind::Response
            }
        });
        let window = RESYNC_WINDOW.min(env.max_buffered_bytes);
        match resync::find_start(input.bytes(), want, window) {
            Scan::Found { at, kind } => {
                input.skip(at);
                if self.request_dir.is_none() {
                    let request_dir = match kind {
                        Kind::Request => d,
                        Kind::Response => other(d),
                    };
                    self.request_dir = Some(request_dir);
                    meta.role = match request_dir {
                        Direction::Recv => Role::Server,
                        Direction::Send => Role::Client,
                    };
                }
                self.resync[slot(d)] = false;
                match kind {
                    Kind::Request => self.requests.reset(),
                    Kind::Response => self.responses.reset(),
                }
                Step1::Continue
            }
            Scan::NotFound { keep_from } => {
                input.skip(keep_from);
                if !self.seen_http {
                    self.scanned += keep_from as u64;
                    if self.scanned > NON_HTTP_AFTER {
                        self.not_http(env);
                    }
                }
                Step1::NeedMore
            }
        }
    }

    fn step<S: Side, I: Input>(
        &mut self,
        meta: &ConnMeta,
        d: Direction,
        input: &mut I,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) -> Step1 {
        let ctx = S::ctx(&self.pairing);
        match S::decoder(self).step(input, ts_ns, env.limits, ctx) {
            Ok(Step::NeedMore) => return Step1::NeedMore,
            Ok(Step::Head {
                msg,
                info,
                start_ns,
            }) => {
                self.seen_http = true;
                S::head(&mut self.pairing, msg, info, start_ns, env);
            }
            Ok(Step::Body(piece)) => S::body(&mut self.pairing, piece),
            Ok(Step::End(end)) => self.end::<S>(meta, d, &end, ts_ns, env),
            Err(e) => self.head_error::<S, I>(d, e, input, env),
        }
        Step1::Continue
    }

    fn end<S: Side>(
        &mut self,
        meta: &ConnMeta,
        d: Direction,
        end: &End,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) {
        if S::end(&mut self.pairing, end, ts_ns, meta, env) {
            env.counters.upgraded_connections += 1;
            self.done = true;
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
            self.not_http(env);
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

    /// Bytes the messages being assembled hold (heads as kept, body prefixes).
    pub fn held_bytes(&self) -> usize {
        self.pairing.held_bytes()
    }

    /// Drops what the connection holds, to bring the agent back under its memory budget:
    /// the messages being assembled go whole, and both directions look for the next message
    /// start. `buffered`: per direction (send, recv), whether its buffer held bytes. Returns
    /// the requests dropped, a request whose head was still coming included.
    pub fn shed(&mut self, buffered: [bool; 2], env: &mut Env<'_>) -> usize {
        let head_coming = self.request_dir.is_some_and(|d| {
            buffered[slot(d)] && !self.resync[slot(d)] && self.requests.reading_head()
        });
        for d in [Direction::Send, Direction::Recv] {
            self.lose_sync(d, env);
        }
        self.pairing.shed() + usize::from(head_coming)
    }

    /// Direction `d` no longer knows where messages start (its buffer overflowed): it scans
    /// for the next start.
    pub fn lose_sync(&mut self, d: Direction, env: &mut Env<'_>) {
        if self.resync[slot(d)] {
            return;
        }
        if self.request_dir == Some(d) {
            self.lose_sync_of::<RequestHead>(d, env);
        } else {
            self.lose_sync_of::<ResponseHead>(d, env);
        }
    }

    fn lose_sync_of<S: Side>(&mut self, d: Direction, env: &mut Env<'_>) {
        self.resync[slot(d)] = true;
        S::decoder(self).reset();
        S::lost(&mut self.pairing);
        env.counters.resyncs += 1;
    }

    /// `n` bytes of direction `d` were not captured.
    pub fn gap(
        &mut self,
        meta: &ConnMeta,
        d: Direction,
        n: u64,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) -> AfterGap {
        if self.resync[slot(d)] {
            // A start line cannot straddle missing bytes.
            return AfterGap::ClearBuffer;
        }
        let after = if self.request_dir == Some(d) {
            self.gap_of::<RequestHead>(meta, d, n, ts_ns, env)
        } else {
            self.gap_of::<ResponseHead>(meta, d, n, ts_ns, env)
        };
        if self.done { AfterGap::Done } else { after }
    }

    fn gap_of<S: Side>(
        &mut self,
        meta: &ConnMeta,
        d: Direction,
        n: u64,
        ts_ns: u64,
        env: &mut Env<'_>,
    ) -> AfterGap {
        match S::decoder(self).gap(n) {
            GapOutcome::Inside => AfterGap::Continue,
            GapOutcome::Ended(end) => {
                self.end::<S>(meta, d, &end, ts_ns, env);
                AfterGap::Continue
            }
            GapOutcome::Lost => {
                self.lose_sync_of::<S>(d, env);
                AfterGap::ClearBuffer
            }
        }
    }

    /// The connection closed: a close-delimited response ends, everything unanswered is
    /// reported as reset.
    pub fn close(&mut self, meta: &ConnMeta, ts_ns: u64, env: &mut Env<'_>) {
        if let CloseOutcome::Cut(end) = self.requests.close() {
            self.pairing.request_end(&end, ts_ns);
        }
        let pairing = &mut env.counters.pairing;
        let cut = match self.responses.close() {
            CloseOutcome::Ended(end) => {
                self.pairing
                    .response_end(&end, ts_ns, meta, env.out, pairing);
                None
            }
            CloseOutcome::Cut(end) => Some(end),
            CloseOutcome::Idle => None,
        };
        self.pairing
            .close(ts_ns, cut.as_ref(), meta, env.out, pairing);
    }

    pub fn expire(
        &mut self,
        meta: &ConnMeta,
        now_ns: u64,
        timeout_ns: u64,
        out: &mut Vec<Record>,
        c: &mut PairCounters,
    ) {
        if !self.pairing.is_idle() {
            self.pairing.expire(now_ns, timeout_ns, meta, out, c);
        }
    }
}

/// Whether the parse loop goes on.
#[derive(PartialEq, Eq)]
enum Step1 {
    Continue,
    NeedMore,
}

/// What differs between the request and the response direction: which decoder, and what
/// pairing does with their messages.
trait Side: Head {
    const KIND: Kind;
    fn decoder(stream: &mut Stream) -> &mut Decoder<Self>;
    fn ctx(pairing: &Pairing) -> Self::Ctx;
    fn head(p: &mut Pairing, msg: Message<Self>, info: HeadInfo, start_ns: u64, env: &mut Env);
    fn body(p: &mut Pairing, piece: Bytes);
    /// Returns whether the connection stopped carrying HTTP.
    fn end(p: &mut Pairing, end: &End, ts_ns: u64, meta: &ConnMeta, env: &mut Env) -> bool;
    fn lost(p: &mut Pairing);
}

impl Side for RequestHead {
    const KIND: Kind = Kind::Request;
    fn decoder(stream: &mut Stream) -> &mut Decoder<Self> {
        &mut stream.requests
    }
    fn ctx(_: &Pairing) {}
    fn head(p: &mut Pairing, msg: Message<Self>, info: HeadInfo, start_ns: u64, env: &mut Env) {
        let max = env.max_pending_requests;
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
    fn decoder(stream: &mut Stream) -> &mut Decoder<Self> {
        &mut stream.responses
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
