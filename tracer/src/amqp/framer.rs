//! One direction's push parser of AMQP frames: fed bytes as they come, it yields the protocol
//! header, whole method and content-header frames, and body frames piece by piece (bodies are
//! never buffered whole). Incomplete input is `NeedMore`. Capture gaps inside a body are
//! stepped over by the sizes the frames and the content header declare.

use bytes::Bytes;

use super::wire::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEADER_LEN, FRAME_HEARTBEAT, FRAME_METHOD,
    FrameHead, PREFACE,
};
use crate::protocol::Input;

/// Frame payload overhead: header and end octet.
const OVERHEAD: u64 = FRAME_HEADER_LEN as u64 + 1;

#[derive(Debug, Default)]
pub(crate) struct Framer {
    state: State,
    /// The body this direction is sending: (channel, bytes not yet framed). Lets a gap that
    /// runs over body frames be stepped over by their sizes.
    content: Option<(u16, u64)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Start,
    /// Inside a body frame's payload.
    Body { channel: u16, remaining: u64 },
    /// Inside a frame that is not kept (too large to buffer, or cut by a gap).
    Skip { remaining: u64 },
    /// The end octet of the frame is next.
    End,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    NeedMore,
    ProtocolHeader,
    Method {
        channel: u16,
        payload: Bytes,
    },
    ContentHeader {
        channel: u16,
        payload: Bytes,
    },
    /// The next piece of a body frame's payload.
    Body {
        channel: u16,
        piece: Bytes,
    },
    Heartbeat,
    /// A method or content-header frame larger than the limit, skipped unread.
    Oversized {
        channel: u16,
    },
}

/// The bytes are no AMQP frame where one must start (or end): the direction lost its place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lost;

/// What a capture gap did to the direction.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GapEffect {
    /// `missing` body bytes of `channel`'s message were not captured; framing goes on.
    Body {
        channel: u16,
        missing: u64,
    },
    /// A method or header frame of `channel` was cut; its rest is skipped by its size.
    Frame {
        channel: u16,
    },
    Lost,
}

impl Framer {
    /// Nothing half-read: a new frame (or the protocol header) starts here.
    #[cfg(test)]
    pub fn at_frame_start(&self) -> bool {
        self.state == State::Start
    }

    /// Drops the position: after a resync the next bytes start a frame.
    pub fn reset(&mut self) {
        *self = Framer::default();
    }

    /// One step over the front of `input`. `max_frame`: largest method or header frame
    /// buffered whole.
    pub fn step<I: Input>(&mut self, input: &mut I, max_frame: usize) -> Result<Unit, Lost> {
        match self.state {
            State::Start => self.frame_start(input, max_frame),
            State::Body { channel, remaining } => {
                let n = (input.bytes().len() as u64).min(remaining);
                if n == 0 && remaining > 0 {
                    return Ok(Unit::NeedMore);
                }
                let piece = input.take(n as usize);
                self.state = match remaining - n {
                    0 => State::End,
                    rest => State::Body {
                        channel,
                        remaining: rest,
                    },
                };
                Ok(Unit::Body { channel, piece })
            }
            State::Skip { remaining } => {
                let n = (input.bytes().len() as u64).min(remaining);
                input.skip(n as usize);
                self.state = match remaining - n {
                    0 => State::End,
                    rest => State::Skip { remaining: rest },
                };
                if n == 0 {
                    return Ok(Unit::NeedMore);
                }
                self.step(input, max_frame)
            }
            State::End => match input.bytes().first() {
                None => Ok(Unit::NeedMore),
                Some(&FRAME_END) => {
                    input.skip(1);
                    self.state = State::Start;
                    self.step(input, max_frame)
                }
                Some(_) => Err(Lost),
            },
        }
    }

    fn frame_start<I: Input>(&mut self, input: &mut I, max_frame: usize) -> Result<Unit, Lost> {
        let bytes = input.bytes();
        if bytes.first() == Some(&b'A') {
            let n = bytes.len().min(PREFACE.len());
            if bytes[..n] != PREFACE[..n] {
                return Err(Lost);
            }
            if n < PREFACE.len() {
                return Ok(Unit::NeedMore);
            }
            input.skip(PREFACE.len());
            return Ok(Unit::ProtocolHeader);
        }
        if bytes.len() < FRAME_HEADER_LEN {
            return Ok(Unit::NeedMore);
        }
        let head = FrameHead::parse(bytes).ok_or(Lost)?;
        let size = u64::from(head.size);
        if head.kind == FRAME_BODY {
            input.skip(FRAME_HEADER_LEN);
            self.body_framed(head.channel, size);
            self.state = if size == 0 {
                State::End
            } else {
                State::Body {
                    channel: head.channel,
                    remaining: size,
                }
            };
            return self.step(input, max_frame);
        }
        if head.total() > max_frame.max(FRAME_HEADER_LEN + 1) {
            input.skip(FRAME_HEADER_LEN);
            self.state = State::Skip { remaining: size };
            return Ok(Unit::Oversized {
                channel: head.channel,
            });
        }
        if bytes.len() < head.total() {
            return Ok(Unit::NeedMore);
        }
        if bytes[head.total() - 1] != FRAME_END {
            return Err(Lost);
        }
        let mut frame = input.take(head.total());
        let payload = frame
            .split_off(FRAME_HEADER_LEN)
            .split_to(head.size as usize);
        Ok(match head.kind {
            FRAME_METHOD => Unit::Method {
                channel: head.channel,
                payload,
            },
            FRAME_HEADER => Unit::ContentHeader {
                channel: head.channel,
                payload,
            },
            FRAME_HEARTBEAT => Unit::Heartbeat,
            _ => return Err(Lost),
        })
    }

    /// A content header announced `size` body bytes on `channel` in this direction.
    pub fn expect_body(&mut self, channel: u16, size: u64) {
        self.content = (size > 0).then_some((channel, size));
    }

    fn body_framed(&mut self, channel: u16, size: u64) {
        if let Some((c, left)) = &mut self.content
            && *c == channel
        {
            *left = left.saturating_sub(size);
            if *left == 0 {
                self.content = None;
            }
        }
    }

    /// `n` bytes of the direction were not captured. `buffered`: the incomplete frame the
    /// caller holds (the framer has not consumed it). `frame_max`: the connection's frame size,
    /// which every body frame but a body's last fills.
    pub fn gap(&mut self, n: u64, buffered: &[u8], frame_max: u32) -> GapEffect {
        match self.state {
            State::Body { channel, remaining } => {
                if n <= remaining {
                    self.state = match remaining - n {
                        0 => State::End,
                        rest => State::Body {
                            channel,
                            remaining: rest,
                        },
                    };
                    return GapEffect::Body {
                        channel,
                        missing: n,
                    };
                }
                // Past this frame's end: the rest of the body follows in full frames.
                self.body_frames_in_gap(channel, remaining, n - remaining, frame_max)
            }
            State::Skip { remaining } if n < remaining => {
                self.state = State::Skip {
                    remaining: remaining - n,
                };
                GapEffect::Frame { channel: 0 }
            }
            State::Skip { remaining } if n == remaining => {
                self.state = State::End;
                GapEffect::Frame { channel: 0 }
            }
            State::Start => match FrameHead::parse(buffered) {
                // A method or header frame cut: its size says where the next one starts.
                Some(head) if head.kind != FRAME_BODY => {
                    let left = head.total() as u64 - buffered.len() as u64;
                    if n >= left {
                        return GapEffect::Lost;
                    }
                    self.state = State::Skip {
                        remaining: left - n - 1,
                    };
                    if left - n - 1 == 0 {
                        self.state = State::End;
                    }
                    GapEffect::Frame {
                        channel: head.channel,
                    }
                }
                _ => GapEffect::Lost,
            },
            _ => GapEffect::Lost,
        }
    }

    /// A gap that began in a body frame with `in_frame` payload bytes left and ran `beyond`
    /// bytes further: where it ends, if only the same body's frames lie in it.
    fn body_frames_in_gap(
        &mut self,
        channel: u16,
        in_frame: u64,
        beyond: u64,
        frame_max: u32,
    ) -> GapEffect {
        let Some((c, mut left)) = self.content.filter(|(c, _)| *c == channel) else {
            return GapEffect::Lost;
        };
        let per_frame = u64::from(frame_max).saturating_sub(OVERHEAD);
        // The end octet of the frame the gap began in.
        let Some(mut rest) = beyond.checked_sub(1) else {
            return GapEffect::Lost;
        };
        let mut missing = in_frame;
        while rest > 0 {
            if left == 0 || per_frame == 0 {
                return GapEffect::Lost;
            }
            let size = left.min(per_frame);
            if rest < FRAME_HEADER_LEN as u64 {
                return GapEffect::Lost;
            }
            if rest < size + OVERHEAD {
                let inside = rest - FRAME_HEADER_LEN as u64;
                left -= size;
                self.content = (left > 0).then_some((c, left));
                self.state = match size - inside {
                    0 => State::End,
                    remaining => State::Body { channel, remaining },
                };
                return GapEffect::Body {
                    channel,
                    missing: missing + inside,
                };
            }
            rest -= size + OVERHEAD;
            left -= size;
            missing += size;
        }
        self.content = (left > 0).then_some((c, left));
        self.state = State::Start;
        GapEffect::Body { channel, missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::tests::frame;

    fn drain(f: &mut Framer, input: &mut Bytes) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match f.step(input, 1024) {
                Ok(Unit::NeedMore) => return seen,
                Ok(Unit::Body { channel, piece }) => {
                    seen.push(format!("body {channel} {}", piece.len()))
                }
                Ok(unit) => seen.push(format!("{unit:?}")),
                Err(Lost) => {
                    seen.push("lost".into());
                    return seen;
                }
            }
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_or_in_body_pieces() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(FRAME_METHOD, 0, &[0, 10, 0, 41]));
        wire.extend(frame(FRAME_BODY, 3, &[7u8; 40]));
        wire.extend(frame(FRAME_HEARTBEAT, 0, b""));
        for cut in 1..wire.len() {
            let mut f = Framer::default();
            let mut pending = bytes::BytesMut::new();
            let mut body = 0;
            let mut units = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                pending.extend_from_slice(part);
                loop {
                    match f.step(&mut pending, 1024).unwrap() {
                        Unit::NeedMore => break,
                        Unit::Body { piece, .. } => body += piece.len(),
                        unit => units.push(format!("{unit:?}")),
                    }
                }
            }
            assert_eq!(body, 40, "cut at {cut}");
            assert_eq!(units.len(), 3, "cut at {cut}: {units:?}");
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn bad_ends_and_garbage_lose_the_place() {
        let mut f = Framer::default();
        let mut bad = frame(FRAME_METHOD, 0, &[0, 10, 0, 41]);
        *bad.last_mut().unwrap() = 0;
        assert_eq!(drain(&mut f, &mut Bytes::from(bad)), ["lost"]);
        let mut f = Framer::default();
        assert_eq!(
            drain(&mut f, &mut Bytes::from_static(b"AMQP\x00\x00\x08\x00")),
            ["lost"]
        );
        let mut f = Framer::default();
        assert_eq!(
            drain(&mut f, &mut Bytes::from_static(b"GET / HTTP/1.1\r\n")),
            ["lost"]
        );
    }

    #[test]
    fn oversized_frames_are_skipped_by_their_size() {
        let mut wire = frame(FRAME_METHOD, 1, &[0u8; 2000]);
        wire.extend(frame(FRAME_HEARTBEAT, 0, b""));
        let mut f = Framer::default();
        assert_eq!(
            drain(&mut f, &mut Bytes::from(wire)),
            ["Oversized { channel: 1 }", "Heartbeat"]
        );
    }

    #[test]
    fn a_gap_over_body_frames_lands_where_their_sizes_say() {
        // frame_max 100: body frames of 92 bytes; a 300-byte body in four frames.
        let mut f = Framer::default();
        f.expect_body(1, 300);
        let first = frame(FRAME_BODY, 1, &[1u8; 92]);
        let mut input = Bytes::copy_from_slice(&first[..50]);
        assert_eq!(drain(&mut f, &mut input), ["body 1 43"]);
        // The rest of frame 1 (49 payload + end), all of frame 2 (100), 10 bytes of frame 3.
        let gap = 49 + 1 + 100 + 10;
        assert_eq!(
            f.gap(gap, &[], 100),
            GapEffect::Body {
                channel: 1,
                missing: 49 + 92 + 3
            }
        );
        let mut rest = Bytes::from(
            [
                vec![2u8; 89],
                vec![FRAME_END],
                frame(FRAME_BODY, 1, &[3u8; 24]),
            ]
            .concat(),
        );
        assert_eq!(drain(&mut f, &mut rest), ["body 1 89", "body 1 24"]);
        assert!(f.at_frame_start());
        // A gap beyond the body's last frame cannot be placed.
        let mut f = Framer::default();
        f.expect_body(1, 10);
        let mut input = Bytes::copy_from_slice(&frame(FRAME_BODY, 1, &[1u8; 10])[..9]);
        drain(&mut f, &mut input);
        assert_eq!(f.gap(50, &[], 100), GapEffect::Lost);
    }

    #[test]
    fn a_gap_in_a_method_frame_skips_its_rest() {
        let method = frame(FRAME_METHOD, 2, &[0u8; 40]);
        let mut f = Framer::default();
        assert_eq!(
            f.gap(10, &method[..20], 131_072),
            GapEffect::Frame { channel: 2 }
        );
        let mut rest = Bytes::from([&method[30..], &frame(FRAME_HEARTBEAT, 0, b"")].concat());
        assert_eq!(drain(&mut f, &mut rest), ["Heartbeat"]);
        assert_eq!(Framer::default().gap(5, &[], 131_072), GapEffect::Lost);
    }
}
