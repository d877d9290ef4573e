//! Where a message starts, in a stream entered mid-way (agent started late, bytes lost to a
//! capture gap): the next request line `METHOD SP target SP HTTP/1.x` or status line
//! `HTTP/1.x SP 3DIGIT`. Both contain `HTTP/1.`, so the scan looks for that and checks the
//! line around it; the byte before a message start may be anything (a body's last byte).

use memchr::memmem;

use super::Kind;

/// Methods a request line found mid-stream may start with. Extension methods are only
/// recognised at a known message boundary.
const METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT",
];

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A message of `kind` starts at `at`.
    Found { at: usize, kind: Kind },
    /// No start yet; bytes before `keep_from` can never be part of one.
    NotFound { keep_from: usize },
}

/// Finds the first message start in `bytes` (of kind `want`, or either). `max_line` bounds
/// how far before `HTTP/1.` a request line may begin, and so what must be kept to find a
/// start split across reads.
pub(crate) fn find_start(bytes: &[u8], want: Option<Kind>, max_line: usize) -> Scan {
    for i in memmem::find_iter(bytes, b"HTTP/1.") {
        if want != Some(Kind::Request) && is_status_line(&bytes[i..]) {
            return Scan::Found {
                at: i,
                kind: Kind::Response,
            };
        }
        if want != Some(Kind::Response)
            && let Some(at) = request_line_start(bytes, i, max_line)
        {
            return Scan::Found {
                at,
                kind: Kind::Request,
            };
        }
    }
    Scan::NotFound {
        keep_from: bytes.len().saturating_sub(max_line),
    }
}

fn is_status_line(line: &[u8]) -> bool {
    // "HTTP/1.1 200" and what follows the code: SP reason, or the line end.
    line.len() > 12
        && matches!(line[7], b'0' | b'1')
        && line[8] == b' '
        && line[9..12].iter().all(u8::is_ascii_digit)
        && matches!(line[12], b' ' | b'\r' | b'\n')
}

/// With `HTTP/1.` at `version`: where the request line ending in that version begins.
fn request_line_start(bytes: &[u8], version: usize, max_line: usize) -> Option<usize> {
    let after = bytes.get(version + 7..version + 9)?;
    if !matches!(after[0], b'0' | b'1') || !matches!(after[1], b'\r' | b'\n') {
        return None;
    }
    let target_end = version.checked_sub(1)?;
    if bytes[target_end] != b' ' {
        return None;
    }
    let floor = target_end.saturating_sub(max_line);
    let target_start = bytes[floor..target_end]
        .iter()
        .rposition(|&b| !(0x21..0x7f).contains(&b))
        .map(|p| floor + p + 1)?;
    if target_start == target_end || bytes[target_start - 1] != b' ' {
        return None;
    }
    let before = &bytes[..target_start - 1];
    METHODS
        .iter()
        .find(|m| before.ends_with(m))
        .map(|m| before.len() - m.len())
}

/// Whether bytes at a known message boundary begin the way a message of `kind` does, as
/// far as they go: a token and a space, or `HTTP/`. Tells a broken HTTP head from traffic
/// that is no HTTP at all.
pub(crate) fn starts_like(bytes: &[u8], kind: Kind) -> bool {
    match kind {
        Kind::Response => {
            let n = bytes.len().min(5);
            bytes[..n] == b"HTTP/"[..n]
        }
        Kind::Request => {
            let method_len = bytes.iter().take(24).take_while(|&&b| is_tchar(b)).count();
            match bytes.get(method_len) {
                None => method_len == bytes.len(),
                Some(&b) => method_len > 0 && b == b' ',
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The HTTP/2 connection preface (prior knowledge, as gRPC uses): a start line httparse
/// rejects, on a connection that will never carry HTTP/1.
pub(crate) fn is_http2_preface(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PRI * HTTP/2")
}

/// A TLS record header: content type 20..=23, protocol version 3.x, and a length no record
/// exceeds (2^14 plus expansion).
pub(crate) fn is_tls_record(bytes: &[u8]) -> bool {
    match bytes {
        [0x14..=0x17, 0x03, 0x00..=0x04, hi, lo, ..] => u16::from_be_bytes([*hi, *lo]) <= 0x4800,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8], want: Option<Kind>) -> Scan {
        find_start(bytes, want, 64)
    }

    #[test]
    fn finds_starts_after_any_body_byte() {
        assert_eq!(
            scan(b"\"a\":1}POST /x HTTP/1.1\r\nHost: a\r\n", None),
            Scan::Found {
                at: 6,
                kind: Kind::Request
            }
        );
        assert_eq!(
            scan(b"xx}HTTP/1.1 204 No Content\r\n", None),
            Scan::Found {
                at: 3,
                kind: Kind::Response
            }
        );
        assert_eq!(
            scan(b"HTTP/1.0 200\r\n", Some(Kind::Response)),
            Scan::Found {
                at: 0,
                kind: Kind::Response
            }
        );
    }

    #[test]
    fn respects_the_wanted_kind_and_rejects_lookalikes() {
        let resp = b"zzHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            scan(resp, Some(Kind::Request)),
            Scan::NotFound { .. }
        ));
        for text in [
            &b"XGET /a HTTP/2.0\r\n"[..],
            b"FETCH /a HTTP/1.1\r\n",
            b"GET  HTTP/1.1\r\n",
            b"GET /a HTTP/1.1 trailing",
            b"HTTP/1.1 2000",
        ] {
            assert!(
                matches!(scan(text, None), Scan::NotFound { .. }),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn not_found_keeps_a_bounded_tail() {
        let mut bytes = vec![b'a'; 1000];
        bytes.extend_from_slice(b"GET /a HTTP/1");
        assert_eq!(scan(&bytes, None), Scan::NotFound { keep_from: 949 });
        assert_eq!(scan(b"abc", None), Scan::NotFound { keep_from: 0 });
    }

    #[test]
    fn start_shapes() {
        assert!(starts_like(b"GET / HTTP/1.1", Kind::Request));
        assert!(starts_like(b"PROPFIND /", Kind::Request));
        assert!(starts_like(b"GE", Kind::Request));
        assert!(!starts_like(b"\x16\x03\x01\x02\x00", Kind::Request));
        assert!(!starts_like(b"{\"a\":1}", Kind::Request));
        assert!(starts_like(b"HTTP/1.1 200 OK", Kind::Response));
        assert!(starts_like(b"HT", Kind::Response));
        assert!(!starts_like(b"SSH-2.0-OpenSSH", Kind::Response));
        assert!(is_tls_record(b"\x16\x03\x01\x02\x00"));
        assert!(is_http2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!is_http2_preface(b"POST / HTTP/1.1\r\n"));
        assert!(!is_http2_preface(b"P"));
        assert!(!is_tls_record(b"GET /"));
    }
}
