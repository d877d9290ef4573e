//! One direction's push parser: fed bytes as they come, it reports a head, kept body pieces
//! and the end of each message, in httparse's manner (incomplete input is `NeedMore`, never an
//! error). Capture gaps and the connection's close are reported to it too.

use std::marker::PhantomData;

use bytes::Bytes;

use super::body::{BodyDecoder, BodyStep, GapEffect};
use super::head::{Head, HeadError, HeadInfo, Limits};
use super::{Input, Message};

#[derive(Debug)]
pub(crate) struct Decoder<H> {
    state: State,
    /// Timestamp of the chunk that carried the first byte of the head being read.
    start_ns: Option<u64>,
    _head: PhantomData<fn() -> H>,
}

#[derive(Debug)]
enum State {
    Head,
    Body(BodyDecoder),
}

#[derive(Debug)]
pub(crate) enum Step<H> {
    /// Everything usable was consumed; the rest (if any) is an incomplete head or chunk line.
    NeedMore,
    /// A head was parsed; its body (possibly empty) follows, then [`Step::End`].
    Head {
        msg: Message<H>,
        info: HeadInfo,
        start_ns: u64,
    },
    /// The next piece of the kept body prefix.
    Body(Bytes),
    End(End),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct End {
    pub body_len: u64,
    pub truncated: bool,
    /// The message ended, but where the next one starts is unknown: the caller must resync.
    pub lost_sync: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GapOutcome {
    /// Inside a body of known framing: parsing goes on after the gap.
    Inside,
    /// The open message ended in the gap.
    Ended(End),
    /// The gap hit a head (or a message boundary): the caller must resync.
    Lost,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CloseOutcome {
    /// Between messages.
    Idle,
    /// A close-delimited body ended with the connection.
    Ended(End),
    /// A message was open and is incomplete.
    Cut(End),
}

impl<H: Head> Decoder<H> {
    pub fn new() -> Self {
        Decoder {
            state: State::Head,
            start_ns: None,
            _head: PhantomData,
        }
    }

    /// Between messages or in a head: what is buffered, if anything, is a head's start.
    pub fn reading_head(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// Drops any open message: the next bytes are a message start.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.start_ns = None;
    }

    /// One step over the front of `input` (bytes stamped `ts_ns`). Errors are about a head
    /// only; its bytes are left in the input, and the decoder is ready for a message start.
    pub fn step<I: Input>(
        &mut self,
        input: &mut I,
        ts_ns: u64,
        limits: &Limits,
        ctx: H::Ctx,
    ) -> Result<Step<H>, HeadError> {
        match &mut self.state {
            State::Head => {
                // Stray line ends between messages (some clients add CRLF after a body) are
                // no message start.
                let stray = input
                    .bytes()
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                input.skip(stray);
                if input.bytes().is_empty() {
                    return Ok(Step::NeedMore);
                }
                let start_ns = *self.start_ns.get_or_insert(ts_ns);
                match H::parse(input, limits, ctx) {
                    Ok(None) => Ok(Step::NeedMore),
                    Ok(Some((msg, info))) => {
                        self.start_ns = None;
                        self.state =
                            State::Body(BodyDecoder::new(info.framing, limits.max_body_bytes));
                        Ok(Step::Head {
                            msg,
                            info,
                            start_ns,
                        })
                    }
                    Err(e) => {
                        self.start_ns = None;
                        Err(e)
                    }
                }
            }
            State::Body(body) => {
                let lost_sync = match body.step(input, limits) {
                    Ok(BodyStep::NeedMore) => return Ok(Step::NeedMore),
                    Ok(BodyStep::Data(data)) => return Ok(Step::Body(data)),
                    Ok(BodyStep::Done) => false,
                    Err(_) => true,
                };
                let end = end_of(body, lost_sync);
                self.state = State::Head;
                Ok(Step::End(end))
            }
        }
    }

    /// `n` bytes of the stream were not captured.
    pub fn gap(&mut self, n: u64) -> GapOutcome {
        match &mut self.state {
            State::Head => {
                self.start_ns = None;
                GapOutcome::Lost
            }
            State::Body(body) => {
                let lost_sync = match body.gap(n) {
                    GapEffect::Inside => return GapOutcome::Inside,
                    GapEffect::Ends => false,
                    GapEffect::Lost => true,
                };
                let end = end_of(body, lost_sync);
                self.state = State::Head;
                GapOutcome::Ended(end)
            }
        }
    }

    /// The connection closed.
    pub fn close(&mut self) -> CloseOutcome {
        let outcome = match &self.state {
            State::Head => CloseOutcome::Idle,
            State::Body(body) if body.until_close() => CloseOutcome::Ended(end_of(body, false)),
            State::Body(body) => CloseOutcome::Cut(End {
                truncated: true,
                ..end_of(body, false)
            }),
        };
        self.reset();
        outcome
    }
}

fn end_of(body: &BodyDecoder, lost_sync: bool) -> End {
    End {
        body_len: body.len(),
        truncated: body.truncated(),
        lost_sync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeaderFilter;
    use crate::http::head::ResponseCtx;
    use crate::http::{RequestHead, ResponseHead};

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 16,
        max_body_bytes: 1024,
        headers: HeaderFilter::ALL,
    };

    fn drain<H: Head>(d: &mut Decoder<H>, input: &mut Bytes, ctx: H::Ctx) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match d.step(input, 7, &LIMITS, ctx).unwrap() {
                Step::NeedMore => return seen,
                Step::Head { info, .. } => seen.push(format!("head {:?}", info.framing)),
                Step::Body(b) => seen.push(format!("body {}", String::from_utf8_lossy(&b))),
                Step::End(e) => seen.push(format!("end {} {}", e.body_len, e.truncated)),
            }
        }
    }

    #[test]
    fn pipelined_requests_in_one_read() {
        let mut input = Bytes::from_static(
            b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\r\nGET /b HTTP/1.1\r\n\r\nGET /c HT",
        );
        let mut d = Decoder::<RequestHead>::new();
        assert_eq!(
            drain(&mut d, &mut input, ()),
            [
                "head Length(2)",
                "body {}",
                "end 2 false",
                "head Empty",
                "end 0 false"
            ]
        );
        assert_eq!(input.as_ref(), b"GET /c HT");
    }

    #[test]
    fn close_ends_a_close_delimited_body_and_cuts_others() {
        let mut d = Decoder::<ResponseHead>::new();
        let mut input = Bytes::from_static(b"HTTP/1.0 200 OK\r\n\r\nabc");
        drain(&mut d, &mut input, ResponseCtx::default());
        assert_eq!(
            d.close(),
            CloseOutcome::Ended(End {
                body_len: 3,
                truncated: false,
                lost_sync: false
            })
        );
        let mut input = Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc");
        drain(&mut d, &mut input, ResponseCtx::default());
        assert!(matches!(
            d.close(),
            CloseOutcome::Cut(End {
                truncated: true,
                ..
            })
        ));
        assert_eq!(d.close(), CloseOutcome::Idle);
    }

    /// Feeds `bytes` in pieces the way the streams stage does (leftovers carried over), with
    /// resync by skipping a byte after a head error. Returns the steps seen.
    fn feed_pieces<H: Head>(bytes: &[u8], cuts: &[usize], ctx: H::Ctx) -> usize {
        let mut d = Decoder::<H>::new();
        let mut pending = bytes::BytesMut::new();
        let mut steps = 0;
        let mut rest = bytes;
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*cut).min(rest.len()));
            rest = tail;
            pending.extend_from_slice(piece);
            loop {
                let before = pending.len();
                match d.step(&mut pending, 1, &LIMITS, ctx) {
                    Ok(Step::NeedMore) => break,
                    Ok(Step::Head { .. } | Step::Body(_)) => assert!(pending.len() < before),
                    Ok(Step::End(_)) => {}
                    Err(_) => {
                        assert!(!pending.is_empty(), "the bad head is left in the input");
                        bytes::Buf::advance(&mut pending, 1);
                        d.reset();
                    }
                }
                steps += 1;
                assert!(steps <= 4 * bytes.len() + 4, "no progress");
            }
            assert!(pending.len() <= LIMITS.max_header_bytes + 4096);
        }
        steps
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_and_splits_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            prefix in proptest::sample::select(vec![
                &b""[..],
                b"GET / HTTP/1.1\r\n",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\n",
            ]),
            cuts in proptest::collection::vec(1..300usize, 1..10),
        ) {
            let all = [prefix, &bytes[..]].concat();
            feed_pieces::<RequestHead>(&all, &cuts, ());
            feed_pieces::<ResponseHead>(&all, &cuts, ResponseCtx::default());
        }
    }

    #[test]
    fn gap_in_head_is_lost_gap_in_body_is_skipped() {
        let mut d = Decoder::<RequestHead>::new();
        assert_eq!(d.gap(5), GapOutcome::Lost);
        let mut input = Bytes::from_static(b"PUT /m HTTP/1.1\r\nContent-Length: 10\r\n\r\nab");
        drain(&mut d, &mut input, ());
        assert_eq!(d.gap(3), GapOutcome::Inside);
        assert!(matches!(
            d.gap(5),
            GapOutcome::Ended(End {
                body_len: 10,
                truncated: true,
                lost_sync: false
            })
        ));
    }
}
