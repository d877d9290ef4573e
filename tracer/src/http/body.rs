//! Bodies: Content-Length, chunked (extensions, trailers) and close-delimited, decoded as the
//! bytes come. A body that can be had whole within the limit is handed out; the rest is only
//! counted, never copied (a cut JSON body has no fields to read). Gaps (bytes the capture did
//! not copy) are stepped over wherever the framing says where the body goes on.

use bytes::Bytes;

use super::Input;
use super::head::{Framing, Limits};

/// A chunk-size line longer than this (extensions included) is not one: framing is lost.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
    /// Decoded length: declared (Content-Length), or summed so far (chunked, until close).
    len: u64,
    kept: usize,
    /// The body may still be had whole within the limit: its pieces are handed out.
    keeping: bool,
    gap_seen: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    ChunkEnd {
        cr_seen: bool,
    },
    Trailers,
    UntilClose,
    Done,
}

#[derive(Debug)]
pub(crate) enum BodyStep {
    NeedMore,
    /// Decoded body bytes within the kept prefix.
    Data(Bytes),
    Done,
}

/// The bytes do not follow the framing (bad chunk line, oversized trailers): where the next
/// message starts is unknown.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FramingLost;

/// What a gap in the capture did to the body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GapEffect {
    /// The body goes on after the gap; framing is intact.
    Inside,
    /// The gap ended exactly where the body ends.
    Ends,
    /// The gap covers the body's end and more: where the next message starts is unknown.
    Lost,
}

impl BodyDecoder {
    /// `max_body_bytes`: the longest body handed out.
    pub fn new(framing: Framing, max_body_bytes: usize) -> Self {
        let (state, len) = match framing {
            Framing::Empty => (State::Done, 0),
            Framing::Length(n) => (State::Length { remaining: n }, n),
            Framing::Chunked => (State::ChunkSize, 0),
            Framing::UntilClose => (State::UntilClose, 0),
        };
        BodyDecoder {
            state,
            len,
            kept: 0,
            keeping: len <= max_body_bytes as u64,
            gap_seen: false,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Some of the body was not captured, or not kept: none of it is usable.
    pub fn truncated(&self) -> bool {
        self.gap_seen || !self.keeping || self.len > self.kept as u64
    }

    /// The body ends only when the connection does.
    pub fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Decodes from the front of `input` until a kept piece, the end, or the input runs out.
    pub fn step<I: Input>(
        &mut self,
        input: &mut I,
        limits: &Limits,
    ) -> Result<BodyStep, FramingLost> {
        loop {
            match self.state {
                State::Done => return Ok(BodyStep::Done),
                State::Length { remaining } | State::ChunkData { remaining } => {
                    if remaining == 0 {
                        self.state = match self.state {
                            State::Length { .. } => State::Done,
                            _ => State::ChunkEnd { cr_seen: false },
                        };
                        continue;
                    }
                    let (n, data) = self.consume(input, remaining, limits);
                    if n == 0 {
                        return Ok(BodyStep::NeedMore);
                    }
                    let left = remaining - n as u64;
                    self.state = match self.state {
                        State::Length { .. } => State::Length { remaining: left },
                        _ => State::ChunkData { remaining: left },
                    };
                    if let Some(data) = data {
                        return Ok(BodyStep::Data(data));
                    }
                }
                State::UntilClose => {
                    let (n, data) = self.consume(input, u64::MAX, limits);
                    self.len += n as u64;
                    match data {
                        Some(data) => return Ok(BodyStep::Data(data)),
                        None if n == 0 => return Ok(BodyStep::NeedMore),
                        None => {}
                    }
                }
                State::ChunkSize => {
                    let bytes = input.bytes();
                    match httparse::parse_chunk_size(bytes) {
                        Ok(httparse::Status::Complete((n, size))) => {
                            input.skip(n);
                            self.len = self.len.saturating_add(size);
                            self.state = if size == 0 {
                                State::Trailers
                            } else {
                                State::ChunkData { remaining: size }
                            };
                        }
                        Ok(httparse::Status::Partial) if bytes.len() <= MAX_CHUNK_LINE => {
                            return Ok(BodyStep::NeedMore);
                        }
                        _ => return Err(self.lose()),
                    }
                }
                State::ChunkEnd { cr_seen } => match input.bytes().first() {
                    None => return Ok(BodyStep::NeedMore),
                    Some(b'\r') if !cr_seen => {
                        input.skip(1);
                        self.state = State::ChunkEnd { cr_seen: true };
                    }
                    Some(b'\n') => {
                        input.skip(1);
                        self.state = State::ChunkSize;
                    }
                    Some(_) => return Err(self.lose()),
                },
                State::Trailers => return self.trailers(input, limits),
            }
        }
    }

    /// Hands out the next `remaining` input bytes while the body may still be had whole, and
    /// skips them otherwise. Returns the bytes consumed.
    fn consume<I: Input>(
        &mut self,
        input: &mut I,
        remaining: u64,
        limits: &Limits,
    ) -> (usize, Option<Bytes>) {
        let n = (input.bytes().len() as u64).min(remaining) as usize;
        if self.keeping && self.kept + n > limits.max_body_bytes {
            self.keeping = false;
        }
        if !self.keeping || n == 0 {
            input.skip(n);
            return (n, None);
        }
        self.kept += n;
        (n, Some(input.take(n)))
    }

    fn trailers<I: Input>(
        &mut self,
        input: &mut I,
        limits: &Limits,
    ) -> Result<BodyStep, FramingLost> {
        let bytes = input.bytes();
        // Nearly every chunked body ends without trailers: skip the header parser then.
        for end in [&b"\r\n"[..], b"\n"] {
            if bytes.starts_with(end) {
                input.skip(end.len());
                self.state = State::Done;
                return Ok(BodyStep::Done);
            }
        }
        if bytes.len() < 2 {
            return Ok(BodyStep::NeedMore);
        }
        let window = &bytes[..bytes.len().min(limits.max_header_bytes)];
        let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
        match httparse::parse_headers(window, &mut slots) {
            Ok(httparse::Status::Complete((n, _))) => {
                input.skip(n);
                self.state = State::Done;
                Ok(BodyStep::Done)
            }
            Ok(httparse::Status::Partial) if window.len() < limits.max_header_bytes => {
                Ok(BodyStep::NeedMore)
            }
            _ => Err(self.lose()),
        }
    }

    fn lose(&mut self) -> FramingLost {
        self.state = State::Done;
        self.gap_seen = true;
        FramingLost
    }

    /// Steps over `n` bytes the capture did not copy.
    pub fn gap(&mut self, n: u64) -> GapEffect {
        self.gap_seen = true;
        self.keeping = false;
        let (state, effect) = match self.state {
            State::Length { remaining } if n < remaining => (
                State::Length {
                    remaining: remaining - n,
                },
                GapEffect::Inside,
            ),
            State::Length { remaining } if n == remaining => (State::Done, GapEffect::Ends),
            State::ChunkData { remaining } if n < remaining => (
                State::ChunkData {
                    remaining: remaining - n,
                },
                GapEffect::Inside,
            ),
            // Past the data, the next two bytes are the chunk's CRLF.
            State::ChunkData { remaining } => match n - remaining {
                0 => (State::ChunkEnd { cr_seen: false }, GapEffect::Inside),
                1 => (State::ChunkEnd { cr_seen: true }, GapEffect::Inside),
                2 => (State::ChunkSize, GapEffect::Inside),
                _ => (State::Done, GapEffect::Lost),
            },
            State::ChunkEnd { cr_seen } => match (n, cr_seen) {
                (1, false) => (State::ChunkEnd { cr_seen: true }, GapEffect::Inside),
                (2, false) | (1, true) => (State::ChunkSize, GapEffect::Inside),
                _ => (State::Done, GapEffect::Lost),
            },
            State::UntilClose => {
                self.len = self.len.saturating_add(n);
                (State::UntilClose, GapEffect::Inside)
            }
            State::Length { .. } | State::ChunkSize | State::Trailers | State::Done => {
                (State::Done, GapEffect::Lost)
            }
        };
        self.state = state;
        effect
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeaderFilter;

    const LIMITS: Limits = Limits {
        max_header_bytes: 256,
        max_headers: 8,
        max_body_bytes: 8,
        headers: HeaderFilter::ALL,
    };

    /// Feeds `parts` one after another (leftovers carried over, as the streams stage does)
    /// and returns the kept bytes, whether the body ended, and the bytes left after it.
    fn decode(framing: Framing, parts: &[&[u8]]) -> (Vec<u8>, bool, Vec<u8>, BodyDecoder) {
        let mut d = BodyDecoder::new(framing, LIMITS.max_body_bytes);
        let mut kept = Vec::new();
        let mut pending = bytes::BytesMut::new();
        let mut done = false;
        for part in parts {
            pending.extend_from_slice(part);
            if done {
                continue;
            }
            loop {
                match d.step(&mut pending, &LIMITS).unwrap() {
                    BodyStep::NeedMore => break,
                    BodyStep::Data(b) => kept.extend_from_slice(&b),
                    BodyStep::Done => {
                        done = true;
                        break;
                    }
                }
            }
        }
        (kept, done, pending.to_vec(), d)
    }

    #[test]
    fn content_length_bodies_are_kept_whole_or_not_at_all() {
        let (kept, done, rest, d) = decode(Framing::Length(8), &[b"0123", b"4567GET"]);
        assert_eq!(kept, b"01234567");
        assert!(done && !d.truncated() && d.len() == 8);
        assert_eq!(rest, b"GET");
        let (kept, done, rest, d) = decode(Framing::Length(10), &[b"0123", b"456789GET"]);
        assert_eq!(kept, b"");
        assert!(done && d.truncated() && d.len() == 10);
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn a_chunked_body_over_the_limit_is_truncated() {
        let (kept, done, _, d) = decode(
            Framing::Chunked,
            &[b"5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n"],
        );
        assert!(done && d.truncated() && d.len() == 10);
        assert!(kept.len() <= LIMITS.max_body_bytes);
    }

    #[test]
    fn chunked_with_extensions_and_trailers_split_everywhere() {
        let wire: &[u8] = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for cut in 0..wire.len() {
            let (kept, done, rest, d) = decode(Framing::Chunked, &[&wire[..cut], &wire[cut..]]);
            assert_eq!(kept, b"abcde", "cut {cut}");
            assert!(done && !d.truncated() && d.len() == 5, "cut {cut}");
            assert_eq!(rest, b"NEXT", "cut {cut}");
        }
    }

    #[test]
    fn bad_chunk_line_loses_framing() {
        let mut d = BodyDecoder::new(Framing::Chunked, LIMITS.max_body_bytes);
        let mut input = Bytes::from_static(b"zz\r\n");
        assert_eq!(d.step(&mut input, &LIMITS).unwrap_err(), FramingLost);
        let mut d = BodyDecoder::new(Framing::Chunked, LIMITS.max_body_bytes);
        let mut input = Bytes::from(vec![b'1'; MAX_CHUNK_LINE + 1]);
        assert!(d.step(&mut input, &LIMITS).is_err());
    }

    #[test]
    fn gaps_inside_known_framing_are_stepped_over() {
        let mut d = BodyDecoder::new(Framing::Length(10), LIMITS.max_body_bytes);
        assert_eq!(d.gap(4), GapEffect::Inside);
        assert_eq!(d.gap(6), GapEffect::Ends);
        assert!(d.truncated());
        let mut d = BodyDecoder::new(Framing::Length(10), LIMITS.max_body_bytes);
        assert_eq!(d.gap(11), GapEffect::Lost);

        // A chunk of 5 whose last 3 data bytes and CRLF were not captured.
        let (_, _, _, mut d) = decode(Framing::Chunked, &[b"5\r\nab"]);
        assert_eq!(d.gap(5), GapEffect::Inside);
        let mut rest = Bytes::from_static(b"0\r\n\r\n");
        assert!(matches!(d.step(&mut rest, &LIMITS), Ok(BodyStep::Done)));
        assert_eq!(d.len(), 5);

        let mut d = BodyDecoder::new(Framing::Chunked, LIMITS.max_body_bytes);
        assert_eq!(d.gap(1), GapEffect::Lost);
        let mut d = BodyDecoder::new(Framing::UntilClose, LIMITS.max_body_bytes);
        assert_eq!(d.gap(100), GapEffect::Inside);
        assert!(d.until_close() && d.len() == 100);
    }
}
