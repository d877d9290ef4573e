//! AMQP 0-9-1 wire primitives: frame layout, a bounds-checked reader of method arguments and
//! properties, field tables, and what a well-formed frame looks like (for detection and
//! resync in a stream entered mid-way).

use bytes::Bytes;

/// The protocol header a client sends first: `AMQP` 0 0 9 1.
pub const PREFACE: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel, payload size.
pub const FRAME_HEADER_LEN: usize = 7;
/// The largest frame believed: brokers negotiate far less (RabbitMQ: 128 KiB by default).
pub const MAX_FRAME: u32 = 16 << 20;

/// A frame's fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: u8,
    pub channel: u16,
    pub size: u32,
}

impl FrameHead {
    /// The header at the front of `bytes`, if there are enough of them and it is plausible.
    pub fn parse(bytes: &[u8]) -> Option<FrameHead> {
        let head = bytes.get(..FRAME_HEADER_LEN)?;
        let head = FrameHead {
            kind: head[0],
            channel: u16::from_be_bytes([head[1], head[2]]),
            size: u32::from_be_bytes([head[3], head[4], head[5], head[6]]),
        };
        let plausible = match head.kind {
            FRAME_METHOD => head.size >= 4,
            FRAME_HEADER => head.size >= 14 && head.channel != 0,
            FRAME_BODY => head.channel != 0,
            FRAME_HEARTBEAT => head.channel == 0 && head.size == 0,
            _ => false,
        };
        (plausible && head.size <= MAX_FRAME).then_some(head)
    }

    /// Bytes of the whole frame, header and end octet included.
    pub fn total(&self) -> usize {
        FRAME_HEADER_LEN + self.size as usize + 1
    }
}

/// Whether a complete frame at the front of `bytes` is well-formed: a plausible header, the
/// end octet where the size says, and for methods and content headers a payload that begins
/// like one. Returns its length.
pub fn complete_frame(bytes: &[u8]) -> Option<usize> {
    let head = FrameHead::parse(bytes)?;
    let total = head.total();
    if *bytes.get(total - 1)? != FRAME_END {
        return None;
    }
    let payload = &bytes[FRAME_HEADER_LEN..total - 1];
    let fits = match head.kind {
        FRAME_METHOD => {
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            super::method::is_known(class, method) && (class == 10) == (head.channel == 0)
        }
        // Class basic, weight 0.
        FRAME_HEADER => payload[..4] == [0, 60, 0, 0],
        _ => true,
    };
    fits.then_some(total)
}

/// Where, in `bytes`, two consecutive well-formed frames begin: a complete frame followed by
/// a plausible frame header. `at_boundary`: the bytes follow the end of a well-formed frame,
/// so one plausible header at the front is the second of two. Looks at starts within the
/// first `window` bytes.
pub fn find_frames(bytes: &[u8], at_boundary: bool, window: usize) -> Scan {
    if at_boundary && FrameHead::parse(bytes).is_some() {
        return Scan::Found { at: 0 };
    }
    let mut waiting = None;
    for at in 0..bytes.len().min(window) {
        let Some(len) = complete_frame(&bytes[at..]) else {
            continue;
        };
        let next = &bytes[at + len..];
        if FrameHead::parse(next).is_some() {
            return Scan::Found { at };
        }
        if next.len() < FRAME_HEADER_LEN && waiting.is_none() {
            // The second header may come with the next bytes.
            waiting = Some(at);
        }
    }
    let keep_from = waiting.unwrap_or_else(|| bytes.len().saturating_sub(window));
    Scan::NotFound { keep_from }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    Found {
        at: usize,
    },
    /// Bytes before `keep_from` can never begin the pair.
    NotFound {
        keep_from: usize,
    },
}

/// Reads method arguments and properties from a frame payload; every read is bounds-checked
/// and yields `None` past the end.
pub struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a Bytes, at: usize) -> Self {
        Reader { bytes, at }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut v = [0u8; 8];
            v.copy_from_slice(b);
            u64::from_be_bytes(v)
        })
    }

    /// A short string, as a view of the payload (no copy).
    pub fn short_str(&mut self) -> Option<Bytes> {
        let len = self.u8()? as usize;
        let start = self.at;
        self.take(len)?;
        Some(self.bytes.slice(start..start + len))
    }

    /// A long string or a field table: a 32-bit length and that many bytes, as a view.
    pub fn long_bytes(&mut self) -> Option<Bytes> {
        let len = self.u32()? as usize;
        let start = self.at;
        self.take(len)?;
        Some(self.bytes.slice(start..start + len))
    }
}

/// A value of a field table (headers), as far as rules read them: text, or an integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    Text(Bytes),
    Int(i64),
    Other,
}

/// Looks `name` up in an encoded field table (the bytes after its length). Stops at the first
/// value of a type it cannot step over.
pub fn table_get(table: &Bytes, name: &str) -> Option<FieldValue> {
    let mut r = Reader::new(table, 0);
    while r.at < table.len() {
        let key = r.short_str()?;
        let value = field_value(&mut r)?;
        if key.as_ref() == name.as_bytes() {
            return Some(value);
        }
    }
    None
}

fn field_value(r: &mut Reader<'_>) -> Option<FieldValue> {
    let kind = r.u8()?;
    // Type letters as RabbitMQ writes them (it departs from the 0-9-1 text for 's' and 'l').
    Some(match kind {
        b'S' | b'x' => FieldValue::Text(r.long_bytes()?),
        b't' | b'b' | b'B' => FieldValue::Int(i64::from(r.u8()?)),
        b's' | b'u' => FieldValue::Int(i64::from(r.u16()?)),
        b'I' => FieldValue::Int(i64::from(r.u32()? as i32)),
        b'i' => FieldValue::Int(i64::from(r.u32()?)),
        b'l' | b'L' => FieldValue::Int(r.u64()? as i64),
        b'T' => {
            r.u64()?;
            FieldValue::Other
        }
        b'f' => {
            r.u32()?;
            FieldValue::Other
        }
        b'd' => {
            r.u64()?;
            FieldValue::Other
        }
        b'D' => {
            r.u8()?;
            r.u32()?;
            FieldValue::Other
        }
        b'F' | b'A' => {
            r.long_bytes()?;
            FieldValue::Other
        }
        b'V' => FieldValue::Other,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::tests::frame;

    #[test]
    fn frames_are_recognised_by_shape() {
        let heartbeat = frame(FRAME_HEARTBEAT, 0, b"");
        let ack = frame(FRAME_METHOD, 1, &[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(complete_frame(&heartbeat), Some(8));
        assert_eq!(complete_frame(&ack), Some(ack.len()));
        // basic.ack on channel 0, an unknown method, a wrong end octet.
        assert_eq!(
            complete_frame(&frame(FRAME_METHOD, 0, &ack[7..ack.len() - 1])),
            None
        );
        assert_eq!(
            complete_frame(&frame(FRAME_METHOD, 1, &[0, 60, 0, 99])),
            None
        );
        let mut bad = ack.clone();
        *bad.last_mut().unwrap() = 0;
        assert_eq!(complete_frame(&bad), None);
        let two = [ack.clone(), heartbeat.clone()].concat();
        assert_eq!(find_frames(&two, false, 4096), Scan::Found { at: 0 });
        let noisy = [b"xyz".to_vec(), two.clone()].concat();
        assert_eq!(find_frames(&noisy, false, 4096), Scan::Found { at: 3 });
        assert_eq!(
            find_frames(&ack, false, 4096),
            Scan::NotFound { keep_from: 0 }
        );
        assert_eq!(find_frames(&heartbeat, true, 4096), Scan::Found { at: 0 });
        assert!(matches!(
            find_frames(b"GET / HTTP/1.1\r\n\r\n", false, 4096),
            Scan::NotFound { .. }
        ));
    }

    #[test]
    fn tables_give_text_and_integers() {
        let mut t = Vec::new();
        t.push(1);
        t.extend_from_slice(b"n");
        t.push(b'I');
        t.extend_from_slice(&(-5i32).to_be_bytes());
        t.push(10);
        t.extend_from_slice(b"x-order-id");
        t.push(b'S');
        t.extend_from_slice(&4u32.to_be_bytes());
        t.extend_from_slice(b"SO-1");
        let t = Bytes::from(t);
        assert_eq!(
            table_get(&t, "x-order-id"),
            Some(FieldValue::Text(Bytes::from_static(b"SO-1")))
        );
        assert_eq!(table_get(&t, "n"), Some(FieldValue::Int(-5)));
        assert_eq!(table_get(&t, "missing"), None);
        // Cut short, or an unknown type: no answer, no panic.
        assert_eq!(table_get(&t.slice(..t.len() - 2), "x-order-id"), None);
        assert_eq!(table_get(&Bytes::from_static(b"\x01n?"), "n"), None);
    }
}
