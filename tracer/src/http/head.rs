//! Message heads: httparse finds the parts, the parts something downstream reads are copied
//! out in one piece, and the head says how the body is framed.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{Input, Message, RequestHead, ResponseHead, Text};

/// Ceiling on the configurable header count: the parser's header slots live on the stack.
pub const MAX_HEADERS_CEILING: usize = 256;

/// Bounds the parsers apply to every message, and what they keep of it.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// A head (start line, headers, blank line) longer than this is dropped.
    pub max_header_bytes: usize,
    /// A head with more headers than this is dropped (at most [`MAX_HEADERS_CEILING`]).
    pub max_headers: usize,
    /// Decoded body bytes kept per message.
    pub max_body_bytes: usize,
    pub headers: HeaderFilter,
}

/// Which headers a parsed message keeps. Framing headers are read whatever it says; keeping
/// only what the rules and span attributes read saves a copy per header and the memory of
/// every request waiting for its response.
#[derive(Clone, Debug, Default)]
pub struct HeaderFilter {
    /// Lower-case names; `None` keeps every header.
    names: Option<Arc<[Box<[u8]>]>>,
}

impl HeaderFilter {
    pub const ALL: HeaderFilter = HeaderFilter { names: None };

    /// Keeps only the headers named (any case).
    pub fn only<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut names: Vec<Box<[u8]>> = names
            .into_iter()
            .map(|n| {
                n.as_ref()
                    .to_ascii_lowercase()
                    .into_bytes()
                    .into_boxed_slice()
            })
            .collect();
        names.sort();
        names.dedup();
        HeaderFilter {
            names: Some(names.into()),
        }
    }

    /// Whether a header of this name (any case) is kept.
    pub fn keeps(&self, name: &[u8]) -> bool {
        match &self.names {
            None => true,
            Some(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// HTTP/1.0-style response: the body runs until the connection closes.
    UntilClose,
}

/// What the head tells the parsers beyond its own fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadInfo {
    pub framing: Framing,
    /// 1xx other than 101: the final response is still to come.
    pub interim: bool,
    /// 101, or 2xx to CONNECT: after this message the connection no longer carries HTTP.
    pub upgrade: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Longer than `max_header_bytes`, or more headers than `max_headers`.
    TooLarge,
    /// Not an HTTP/1.x head, or a framing the RFC rejects (conflicting lengths, …).
    Invalid,
}

/// What a response's framing depends on: the request it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseCtx {
    pub request_was_head: bool,
    pub request_was_connect: bool,
}

/// A message head the [`super::decoder::Decoder`] can parse.
pub(crate) trait Head: Sized {
    type Ctx: Copy + Default;

    /// Parses a head from the front of `input`, consuming it when complete. `Ok(None)`: the
    /// head is not complete yet (and within the limits); nothing is consumed.
    #[allow(clippy::type_complexity)]
    fn parse<I: Input>(
        input: &mut I,
        limits: &Limits,
        ctx: Self::Ctx,
    ) -> Result<Option<(Message<Self>, HeadInfo)>, HeadError>;
}

/// The header facts framing needs, gathered while the headers are looked at.
#[derive(Default)]
struct FramingHeaders {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked_last: bool,
}

impl FramingHeaders {
    fn note(&mut self, name: &str, value: &[u8]) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(value)?;
            // Repeated Content-Length is tolerated only when every copy agrees (RFC 9112 §6.3).
            if self.content_length.is_some_and(|seen| seen != len) {
                return Err(HeadError::Invalid);
            }
            self.content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
        Ok(())
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let mut len: u64 = 0;
    // A list of equal values ("5, 5") is what some proxies produce; accept it as one.
    let mut first: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Invalid);
        }
        len = digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if first.is_some_and(|f| f != len) {
            return Err(HeadError::Invalid);
        }
        first = Some(len);
    }
    Ok(len)
}

fn map_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        _ => HeadError::Invalid,
    }
}

/// Where `part` (a slice of `buf`) lies in it.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Where the parts of a complete head lie in the parsed bytes, so the input can be let go.
struct Layout<S> {
    len: usize,
    /// The start line's parts (request: method and target; response: nothing).
    start: S,
    /// Where the start line's kept parts end.
    start_end: usize,
    version: u8,
    /// (name, value) of the headers the filter keeps.
    kept: Vec<(Range<usize>, Range<usize>)>,
    framing: FramingHeaders,
}

/// Runs `parse` (httparse on a request or a response) over the front of `input`, within the
/// limits, and takes the head's bytes when it is complete: what is kept is copied out in one
/// allocation, so a message waiting for its answer never holds on to a whole capture buffer.
/// httparse never sees more than `max_header_bytes`, so a huge head costs one bounded parse
/// and is reported as too large rather than rescanned as it grows.
fn parse_head<I, S, F>(
    input: &mut I,
    limits: &Limits,
    parse: F,
) -> Result<Option<(Layout<S>, Bytes)>, HeadError>
where
    I: Input,
    F: for<'b> FnOnce(
        &'b [u8],
        &mut [MaybeUninit<httparse::Header<'b>>],
    ) -> Result<httparse::Status<Layout<S>>, HeadError>,
{
    let window = input.bytes().len().min(limits.max_header_bytes);
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS_CEILING];
    let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS_CEILING)];
    let layout = match parse(&input.bytes()[..window], slots)? {
        httparse::Status::Complete(layout) => layout,
        httparse::Status::Partial if window >= limits.max_header_bytes => {
            return Err(HeadError::TooLarge);
        }
        httparse::Status::Partial => return Ok(None),
    };
    let keep = layout
        .kept
        .iter()
        .map(|(_, value)| value.end)
        .fold(layout.start_end, usize::max);
    let kept = if keep == 0 {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&input.bytes()[..keep])
    };
    input.skip(layout.len);
    Ok(Some((layout, kept)))
}

fn layout<S>(
    status: httparse::Status<usize>,
    start: S,
    start_end: usize,
    version: Option<u8>,
    headers: &[httparse::Header<'_>],
    buf: &[u8],
    filter: &HeaderFilter,
) -> Result<httparse::Status<Layout<S>>, HeadError> {
    let httparse::Status::Complete(len) = status else {
        return Ok(httparse::Status::Partial);
    };
    let mut framing = FramingHeaders::default();
    let mut kept = Vec::new();
    for h in headers {
        framing.note(h.name, h.value)?;
        if filter.keeps(h.name.as_bytes()) {
            kept.push((range_in(buf, h.name.as_bytes()), range_in(buf, h.value)));
        }
    }
    Ok(httparse::Status::Complete(Layout {
        len,
        start,
        start_end,
        version: version.unwrap_or(1),
        kept,
        framing,
    }))
}

fn message<H>(head: H, layout: &Layout<impl Sized>, kept: &Bytes) -> Message<H> {
    Message {
        head,
        version: layout.version,
        headers: layout
            .kept
            .iter()
            .map(|(name, value)| (kept.slice(name.clone()), kept.slice(value.clone())))
            .collect(),
        body: Bytes::new(),
        body_len: 0,
        body_truncated: false,
    }
}

impl Head for RequestHead {
    type Ctx = ();

    fn parse<I: Input>(
        input: &mut I,
        limits: &Limits,
        _ctx: (),
    ) -> Result<Option<(Message<Self>, HeadInfo)>, HeadError> {
        let parsed = parse_head(input, limits, |buf, slots| {
            let mut req = httparse::Request::new(&mut []);
            let status = httparse::ParserConfig::default()
                .parse_request_with_uninit_headers(&mut req, buf, slots)
                .map_err(map_error)?;
            let (Some(method), Some(path)) = (req.method, req.path) else {
                return Ok(httparse::Status::Partial);
            };
            let (method, target) = (
                range_in(buf, method.as_bytes()),
                range_in(buf, path.as_bytes()),
            );
            let end = target.end;
            let (headers, filter) = (&*req.headers, &limits.headers);
            layout(
                status,
                (method, target),
                end,
                req.version,
                headers,
                buf,
                filter,
            )
        })?;
        let Some((layout, kept)) = parsed else {
            return Ok(None);
        };
        let f = &layout.framing;
        // RFC 9112 §6.3: chunked must be the final coding of a request; any other transfer
        // coding leaves the length unknowable, which a server answers with 400.
        let framing = match (f.transfer_encoding, f.content_length) {
            (true, _) if f.chunked_last => Framing::Chunked,
            (true, _) => return Err(HeadError::Invalid),
            (false, Some(0)) | (false, None) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
        };
        let info = HeadInfo {
            framing,
            interim: false,
            upgrade: false,
        };
        // httparse handed both out as `str`: the same bytes, copied, are UTF-8.
        let text = |range: &Range<usize>| Text::from_utf8(kept.slice(range.clone()));
        let (method, target) = &layout.start;
        let (Some(method), Some(target)) = (text(method), text(target)) else {
            return Err(HeadError::Invalid);
        };
        let head = RequestHead { method, target };
        Ok(Some((message(head, &layout, &kept), info)))
    }
}

impl Head for ResponseHead {
    type Ctx = ResponseCtx;

    fn parse<I: Input>(
        input: &mut I,
        limits: &Limits,
        ctx: ResponseCtx,
    ) -> Result<Option<(Message<Self>, HeadInfo)>, HeadError> {
        let parsed = parse_head(input, limits, |buf, slots| {
            let mut resp = httparse::Response::new(&mut []);
            let status = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut resp, buf, slots)
                .map_err(map_error)?;
            let code = resp.code.unwrap_or_default();
            let (headers, filter) = (&*resp.headers, &limits.headers);
            layout(status, code, 0, resp.version, headers, buf, filter)
        })?;
        let Some((layout, kept)) = parsed else {
            return Ok(None);
        };
        let code = layout.start;
        let f = &layout.framing;
        let interim = (100..200).contains(&code) && code != 101;
        let upgrade = code == 101 || (ctx.request_was_connect && (200..300).contains(&code));
        // RFC 9112 §6.3, in its order: no body after HEAD, 1xx, 204 and 304; then
        // Transfer-Encoding, then Content-Length, else until the connection closes.
        let framing = if ctx.request_was_head
            || (100..200).contains(&code)
            || code == 204
            || code == 304
            || upgrade
        {
            Framing::Empty
        } else if f.transfer_encoding {
            if f.chunked_last {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else {
            match f.content_length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        let info = HeadInfo {
            framing,
            interim,
            upgrade,
        };
        let head = ResponseHead { status: code };
        Ok(Some((message(head, &layout, &kept), info)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 8,
        max_body_bytes: 64,
        headers: HeaderFilter::ALL,
    };

    fn request(text: &str) -> Result<Option<(Message<RequestHead>, HeadInfo)>, HeadError> {
        RequestHead::parse(&mut Bytes::copy_from_slice(text.as_bytes()), &LIMITS, ())
    }

    fn response(
        text: &str,
        ctx: ResponseCtx,
    ) -> Result<Option<(Message<ResponseHead>, HeadInfo)>, HeadError> {
        ResponseHead::parse(&mut Bytes::copy_from_slice(text.as_bytes()), &LIMITS, ctx)
    }

    #[test]
    fn request_head_is_owned_and_consumed() {
        let mut input = Bytes::from_static(
            b"POST /api/v1/orders?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
        );
        let (msg, info) = RequestHead::parse(&mut input, &LIMITS, ())
            .unwrap()
            .unwrap();
        assert_eq!(msg.head.method, "POST");
        assert_eq!(msg.head.target, "/api/v1/orders?x=1");
        assert_eq!(msg.version, 1);
        assert_eq!(msg.header("host").unwrap().as_ref(), b"a");
        assert_eq!(msg.header("content-length").unwrap().as_ref(), b"2");
        assert_eq!(info.framing, Framing::Length(2));
        assert_eq!(input.as_ref(), b"{}");
    }

    #[test]
    fn only_the_filtered_headers_are_kept_and_framing_is_read_anyway() {
        let limits = Limits {
            headers: HeaderFilter::only(["TraceParent", "x-order"]),
            ..LIMITS
        };
        let mut input = Bytes::from_static(
            b"PUT /m HTTP/1.1\r\nHost: a\r\nX-Order: SO-1\r\ncontent-length: 3\r\n\
              traceparent: 00-x\r\n\r\nabc",
        );
        let (msg, info) = RequestHead::parse(&mut input, &limits, ())
            .unwrap()
            .unwrap();
        let names: Vec<&[u8]> = msg.headers.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, [&b"X-Order"[..], b"traceparent"]);
        assert_eq!(msg.header("x-order").unwrap().as_ref(), b"SO-1");
        assert!(msg.header("host").is_none());
        assert_eq!(info.framing, Framing::Length(3));
        assert_eq!(input.as_ref(), b"abc");
    }

    #[test]
    fn partial_head_consumes_nothing() {
        let mut input = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(
            RequestHead::parse(&mut input, &LIMITS, ())
                .unwrap()
                .is_none()
        );
        assert_eq!(input.len(), 25);
    }

    #[test]
    fn request_framing() {
        let f = |t: &str| request(t).map(|r| r.unwrap().1.framing);
        assert_eq!(f("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            f("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HeadError::Invalid)
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(HeadError::Invalid)
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            f("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HeadError::Invalid)
        );
    }

    #[test]
    fn response_framing() {
        let plain = ResponseCtx::default();
        let f = |t: &str, ctx| response(t, ctx).map(|r| r.unwrap().1);
        let head = ResponseCtx {
            request_was_head: true,
            ..plain
        };
        let connect = ResponseCtx {
            request_was_connect: true,
            ..plain
        };
        let cl = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(f(cl, plain).unwrap().framing, Framing::Length(10));
        assert_eq!(f(cl, head).unwrap().framing, Framing::Empty);
        assert!(f(cl, connect).unwrap().upgrade);
        let info = f("HTTP/1.1 100 Continue\r\n\r\n", plain).unwrap();
        assert!(info.interim && info.framing == Framing::Empty);
        let info = f("HTTP/1.1 101 Switching Protocols\r\n\r\n", plain).unwrap();
        assert!(info.upgrade && !info.interim);
        for code in ["204 No Content", "304 Not Modified"] {
            let t = format!("HTTP/1.1 {code}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(f(&t, plain).unwrap().framing, Framing::Empty);
        }
        assert_eq!(
            f("HTTP/1.0 200 OK\r\n\r\n", plain).unwrap().framing,
            Framing::UntilClose
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                plain
            )
            .unwrap()
            .framing,
            Framing::Chunked
        );
    }

    #[test]
    fn limits_and_garbage() {
        let many: String = (0..9).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            request(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooLarge
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(2000));
        assert_eq!(request(&long).unwrap_err(), HeadError::TooLarge);
        assert_eq!(
            request("\u{16}\u{3}\u{1}\0\u{5}").unwrap_err(),
            HeadError::Invalid
        );
        assert_eq!(
            response("GET / HTTP/1.1\r\n\r\n", ResponseCtx::default()).unwrap_err(),
            HeadError::Invalid
        );
    }
}
