//! Pairing: requests queue up in order (keep-alive, pipelining) and each final response
//! answers the oldest; together they make one [`Exchange`]. Also where messages are
//! assembled from the decoder's head, body pieces and end.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::Serialize;

use super::decoder::End;
use super::head::{Framing, HeadInfo, ResponseCtx};
use super::{Exchange, Message, Outcome, RequestHead, ResponseHead};
use crate::protocol::{BodyAcc, ConnMeta, Record};

impl ConnMeta {
    fn exchange(
        &self,
        request: Message<RequestHead>,
        response: Option<Message<ResponseHead>>,
        start_ns: u64,
        end_ns: u64,
        outcome: Outcome,
    ) -> Record {
        Record::Http(Exchange {
            conn: self.conn,
            service: self.service.clone(),
            role: self.role,
            local: self.local,
            peer: self.peer,
            tls: self.tls,
            request,
            response,
            start_ns,
            end_ns: end_ns.max(start_ns),
            outcome,
        })
    }
}

/// What pairing did, for the agent's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairCounters {
    /// Exchanges handed on, whatever their outcome.
    pub exchanges: u64,
    /// Exchanges whose connection closed before a complete response.
    pub resets: u64,
    /// Exchanges given up without a response after the response timeout.
    pub timeouts: u64,
    /// Responses with no request to pair with (the request was lost to a gap or a drop).
    pub unpaired_responses: u64,
    /// Requests dropped because responses were lost: which response was theirs is unknown.
    pub unanswered_requests: u64,
    /// Requests dropped because the connection had `max_pending_requests` waiting already.
    pub pending_overflow: u64,
}

/// A message whose head is parsed and whose body is still coming.
#[derive(Debug)]
struct Assembling<H> {
    msg: Message<H>,
    body: BodyAcc,
    info: HeadInfo,
    start_ns: u64,
    /// When its last byte came; `None` while the body is still coming.
    end_ns: Option<u64>,
}

/// What a parsed head holds beyond its headers.
pub(crate) trait HeadBytes {
    fn head_bytes(&self) -> usize;
}

impl HeadBytes for RequestHead {
    fn head_bytes(&self) -> usize {
        self.method.len() + self.target.len()
    }
}

impl HeadBytes for ResponseHead {
    fn head_bytes(&self) -> usize {
        0
    }
}

impl<H: HeadBytes> Assembling<H> {
    /// The bytes the message holds: its head as kept and its body prefix so far.
    fn held_bytes(&self) -> usize {
        let headers: usize = self
            .msg
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        self.msg.head.head_bytes() + headers + self.body.len()
    }
}

impl<H> Assembling<H> {
    fn new(msg: Message<H>, info: HeadInfo, start_ns: u64) -> Self {
        Assembling {
            msg,
            body: BodyAcc::Empty,
            info,
            start_ns,
            end_ns: None,
        }
    }

    fn end(&mut self, end: &End, ts_ns: u64) {
        self.msg.body_len = end.body_len;
        self.msg.body_truncated = end.truncated;
        self.end_ns = Some(ts_ns);
    }

    /// The message as far as it came: an unfinished body counts as truncated, and a
    /// truncated body is not kept.
    fn finish(self) -> Message<H> {
        let mut msg = self.msg;
        let body = self.body.finish();
        if self.end_ns.is_none() {
            msg.body_len = match self.info.framing {
                Framing::Length(n) => n,
                _ => body.len() as u64,
            };
            msg.body_truncated = true;
        }
        if !msg.body_truncated {
            msg.body = body;
        }
        msg
    }
}

/// One connection's requests waiting for responses, and the response being read.
#[derive(Debug, Default)]
pub(crate) struct Pairing {
    pending: VecDeque<Assembling<RequestHead>>,
    /// The newest pending request is still receiving its body.
    request_open: bool,
    response: Option<Assembling<ResponseHead>>,
    /// Requests were lost: a response that started before the oldest waiting request
    /// answered one of them.
    requests_lost: bool,
    /// Responses were lost: the next one answers the newest request that started before it.
    responses_lost: bool,
}

impl Pairing {
    /// Nothing waits and nothing is being read.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.response.is_none()
    }

    /// Bytes the waiting requests and the response being read hold.
    pub fn held_bytes(&self) -> usize {
        let pending: usize = self.pending.iter().map(Assembling::held_bytes).sum();
        pending + self.response.as_ref().map_or(0, Assembling::held_bytes)
    }

    /// Drops every waiting request and the response being read (the agent is over its
    /// memory budget); returns how many requests were dropped. A response that answers one
    /// of them is then unpaired, as after lost requests.
    pub fn shed(&mut self) -> usize {
        let dropped = self.pending.len();
        self.pending.clear();
        self.response = None;
        self.request_open = false;
        self.requests_lost = dropped > 0 || self.requests_lost;
        dropped
    }

    /// What the next response's framing depends on.
    pub fn response_ctx(&self) -> ResponseCtx {
        self.pending
            .front()
            .map(|r| ResponseCtx {
                request_was_head: r.msg.head.method == "HEAD",
                request_was_connect: r.msg.head.method == "CONNECT",
            })
            .unwrap_or_default()
    }

    pub fn request_head(
        &mut self,
        msg: Message<RequestHead>,
        info: HeadInfo,
        start_ns: u64,
        max_pending: usize,
        c: &mut PairCounters,
    ) {
        if self.pending.len() >= max_pending {
            c.pending_overflow += 1;
            self.requests_lost = true;
            self.request_open = false;
            return;
        }
        self.pending.push_back(Assembling::new(msg, info, start_ns));
        self.request_open = true;
    }

    pub fn request_body(&mut self, piece: Bytes) {
        if self.request_open
            && let Some(r) = self.pending.back_mut()
        {
            r.body.push(piece);
        }
    }

    pub fn request_end(&mut self, end: &End, ts_ns: u64) {
        if self.request_open
            && let Some(r) = self.pending.back_mut()
        {
            r.end(end, ts_ns);
        }
        self.request_open = false;
    }

    /// The request direction lost sync: requests in the lost bytes are unknown.
    pub fn requests_lost(&mut self) {
        self.requests_lost = true;
        self.request_open = false;
    }

    pub fn response_head(&mut self, msg: Message<ResponseHead>, info: HeadInfo, start_ns: u64) {
        self.response = Some(Assembling::new(msg, info, start_ns));
    }

    pub fn response_body(&mut self, piece: Bytes) {
        if let Some(r) = &mut self.response {
            r.body.push(piece);
        }
    }

    /// The response direction lost sync: the response being read, and maybe others, are gone.
    pub fn responses_lost(&mut self) {
        self.response = None;
        self.responses_lost = true;
    }

    /// A response ended: pairs it (a final one) with its request. Returns whether it
    /// switched the connection to another protocol (101, CONNECT).
    pub fn response_end(
        &mut self,
        end: &End,
        ts_ns: u64,
        meta: &ConnMeta,
        out: &mut Vec<Record>,
        c: &mut PairCounters,
    ) -> bool {
        let Some(mut response) = self.response.take() else {
            return false;
        };
        // An interim response (100 Continue) leaves its request waiting for the final one.
        if response.info.interim {
            return false;
        }
        let upgrade = response.info.upgrade;
        response.end(end, ts_ns);
        let response_start = response.start_ns;
        let Some(request) = self.request_for(response_start, c) else {
            c.unpaired_responses += 1;
            return upgrade;
        };
        let start_ns = request.start_ns;
        c.exchanges += 1;
        out.push(meta.exchange(
            request.finish(),
            Some(response.finish()),
            start_ns,
            ts_ns,
            Outcome::Complete,
        ));
        upgrade
    }

    /// The request a response that started at `response_start` answers.
    fn request_for(
        &mut self,
        response_start: u64,
        c: &mut PairCounters,
    ) -> Option<Assembling<RequestHead>> {
        if std::mem::take(&mut self.responses_lost) {
            let answered = self
                .pending
                .iter()
                .rposition(|r| r.start_ns <= response_start)?;
            c.unanswered_requests += answered as u64;
            self.pending.drain(..answered);
        }
        if self.requests_lost {
            if self.pending.front()?.start_ns > response_start {
                return None;
            }
            self.requests_lost = false;
        }
        let request = self.pending.pop_front()?;
        if self.pending.is_empty() {
            // An early answer (413 while the upload goes on): the rest of that body is moot.
            self.request_open = false;
        }
        Some(request)
    }

    /// The connection closed. `cut`: the response being read ended incomplete.
    pub fn close(
        &mut self,
        ts_ns: u64,
        cut: Option<&End>,
        meta: &ConnMeta,
        out: &mut Vec<Record>,
        c: &mut PairCounters,
    ) {
        let mut partial = self.response.take().filter(|r| !r.info.interim);
        if let (Some(r), Some(end)) = (&mut partial, cut) {
            r.end(end, ts_ns);
        }
        if partial.is_some() && self.pending.is_empty() {
            c.unpaired_responses += 1;
        }
        for request in self.pending.drain(..) {
            let start_ns = request.start_ns;
            c.exchanges += 1;
            c.resets += 1;
            out.push(meta.exchange(
                request.finish(),
                partial.take().map(Assembling::finish),
                start_ns,
                ts_ns,
                Outcome::Reset,
            ));
        }
        self.request_open = false;
    }

    /// Gives up on requests that had no response for `timeout_ns` after their last byte.
    pub fn expire(
        &mut self,
        now_ns: u64,
        timeout_ns: u64,
        meta: &ConnMeta,
        out: &mut Vec<Record>,
        c: &mut PairCounters,
    ) {
        if self.response.is_some() {
            return;
        }
        while let Some(end_ns) = self.pending.front().and_then(|r| r.end_ns) {
            if end_ns.saturating_add(timeout_ns) > now_ns {
                break;
            }
            let Some(request) = self.pending.pop_front() else {
                break;
            };
            let start_ns = request.start_ns;
            c.exchanges += 1;
            c.timeouts += 1;
            out.push(meta.exchange(request.finish(), None, start_ns, now_ns, Outcome::Timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{ConnKey, Role};
    use crate::http::Text;
    use std::sync::Arc;

    fn http(records: Vec<Record>) -> Vec<Exchange> {
        records
            .into_iter()
            .map(|r| match r {
                Record::Http(e) => e,
                other => panic!("not an HTTP record: {other:?}"),
            })
            .collect()
    }

    fn meta() -> ConnMeta {
        ConnMeta {
            conn: ConnKey {
                pid: 1,
                fd: 3,
                conn_id: 9,
            },
            service: Arc::from("mes-api"),
            role: Role::Server,
            local: None,
            peer: None,
            tls: false,
        }
    }

    fn info(framing: Framing) -> HeadInfo {
        HeadInfo {
            framing,
            interim: false,
            upgrade: false,
        }
    }

    const END: End = End {
        body_len: 0,
        truncated: false,
        lost_sync: false,
    };

    /// A complete request for `target` whose first byte came at `ts`.
    fn request(p: &mut Pairing, target: &str, ts: u64, c: &mut PairCounters) {
        let head = RequestHead {
            method: Text::from_static("GET"),
            target: target.into(),
        };
        p.request_head(Message::bare(head), info(Framing::Empty), ts, 8, c);
        p.request_end(&END, ts);
    }

    /// A complete 200 response whose first byte came at `ts`; the targets it got paired with.
    fn respond(p: &mut Pairing, ts: u64, c: &mut PairCounters) -> Vec<String> {
        let mut out = Vec::new();
        let head = ResponseHead { status: 200 };
        p.response_head(Message::bare(head), info(Framing::Empty), ts);
        p.response_end(&END, ts, &meta(), &mut out, c);
        http(out)
            .into_iter()
            .map(|e| e.request.head.target.to_string())
            .collect()
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let (mut p, mut c) = (Pairing::default(), PairCounters::default());
        request(&mut p, "/a", 1, &mut c);
        request(&mut p, "/b", 2, &mut c);
        assert_eq!(respond(&mut p, 3, &mut c), ["/a"]);
        assert_eq!(respond(&mut p, 4, &mut c), ["/b"]);
        assert!(p.is_idle());
        assert_eq!(respond(&mut p, 5, &mut c), Vec::<String>::new());
        assert_eq!((c.exchanges, c.unpaired_responses), (2, 1));
    }

    #[test]
    fn after_lost_responses_the_next_answers_the_newest_request_before_it() {
        let (mut p, mut c) = (Pairing::default(), PairCounters::default());
        request(&mut p, "/a", 1, &mut c);
        request(&mut p, "/b", 2, &mut c);
        request(&mut p, "/c", 9, &mut c);
        p.responses_lost();
        assert_eq!(respond(&mut p, 5, &mut c), ["/b"]);
        assert_eq!(c.unanswered_requests, 1);
        assert_eq!(respond(&mut p, 10, &mut c), ["/c"]);
    }

    #[test]
    fn after_lost_requests_an_older_response_is_not_paired() {
        let (mut p, mut c) = (Pairing::default(), PairCounters::default());
        p.requests_lost();
        request(&mut p, "/b", 5, &mut c);
        assert_eq!(respond(&mut p, 3, &mut c), Vec::<String>::new());
        assert_eq!(respond(&mut p, 6, &mut c), ["/b"]);
        assert_eq!(c.unpaired_responses, 1);
    }

    #[test]
    fn interim_responses_leave_the_request_waiting() {
        let (mut p, mut c) = (Pairing::default(), PairCounters::default());
        request(&mut p, "/upload", 1, &mut c);
        let mut out = Vec::new();
        let interim = HeadInfo {
            interim: true,
            ..info(Framing::Empty)
        };
        p.response_head(Message::bare(ResponseHead { status: 100 }), interim, 2);
        p.response_end(&END, 2, &meta(), &mut out, &mut c);
        assert!(out.is_empty());
        assert_eq!(respond(&mut p, 3, &mut c), ["/upload"]);
    }

    #[test]
    fn timeouts_count_from_the_request_end() {
        let (mut p, mut c) = (Pairing::default(), PairCounters::default());
        let head = RequestHead {
            method: Text::from_static("PUT"),
            target: "/slow".into(),
        };
        p.request_head(Message::bare(head), info(Framing::Length(10)), 1, 8, &mut c);
        let mut out = Vec::new();
        // Still uploading: nothing to time out yet.
        p.expire(1_000, 10, &meta(), &mut out, &mut c);
        assert!(out.is_empty());
        p.request_end(&END, 1_000);
        p.expire(1_009, 10, &meta(), &mut out, &mut c);
        assert!(out.is_empty());
        p.expire(1_010, 10, &meta(), &mut out, &mut c);
        let out = http(out);
        assert_eq!(
            (out.len(), out[0].outcome, out[0].end_ns),
            (1, Outcome::Timeout, 1_010)
        );
        assert_eq!(c.timeouts, 1);
    }
}
