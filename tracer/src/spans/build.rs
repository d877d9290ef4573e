//! Building the [`SpanRecord`] of one exchange from what the order rules found.

use std::net::{IpAddr, SocketAddr};

use regex::RegexSet;

use super::ids::{IdCache, OrderIds};
use super::{AttrValue, Attributes, SpanKind, SpanLink, SpanRecord, SpanStatus};
use crate::amqp::Transfer;
use crate::capture::Role;
use crate::http::{Exchange, Outcome};
use crate::orders::{CallSide, Classification, RuleSet, Unmatched};
use crate::protocol::Record;

/// Longest `url.path` exported; the rest is cut (paths are attacker-controlled input).
const MAX_URL_PATH: usize = 512;
/// The W3C trace context header a span links to.
const TRACEPARENT: &str = "traceparent";
/// What a redacted path segment becomes.
pub const REDACTED: &str = "{redacted}";
/// On the spans of exchanges and messages read decrypted (OTel's TLS conventions): the
/// tracer saw them through the TLS library's probes.
pub const TLS_ATTRIBUTE: &str = "tls.protocol.name";

/// Path segments that look like personal data by default: e-mail addresses, and digit runs
/// of 9 or more (phone, card and account numbers).
pub const DEFAULT_REDACT_PATTERNS: [&str; 2] = [r"^[^@/\s]+@[^@/\s]+$", r"[0-9]{9,}"];

/// Replaces path segments that match any configured pattern with `{redacted}`.
#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: RegexSet,
}

impl Redactor {
    /// Patterns are regular expressions matched against each percent-decoded path segment.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        RegexSet::new(patterns.iter().map(AsRef::as_ref))
            .map(|patterns| Self { patterns })
            .map_err(|e| format!("a path redaction pattern is not a valid regular expression: {e}"))
    }

    /// The path of `target` (no query: queries are never exported) with personal-looking
    /// segments replaced. `keep` (the order id) is never redacted: it is exported anyway.
    pub fn path(&self, target: &str, keep: Option<&str>) -> String {
        self.path_with(target, keep, |_| false)
    }

    /// As [`Redactor::path`], skipping segments `literal(index)` says are fixed text of the
    /// matching rule's template (index 0 = the first segment after the leading '/').
    pub fn path_with(
        &self,
        target: &str,
        keep: Option<&str>,
        literal: impl Fn(usize) -> bool,
    ) -> String {
        let path = crate::orders::request_path(target);
        let mut out = String::with_capacity(path.len().min(MAX_URL_PATH));
        let mut start = 0;
        let ends = memchr::memchr_iter(b'/', path.as_bytes()).chain([path.len()]);
        for (i, end) in ends.enumerate() {
            let segment = &path[start..end];
            start = end + 1;
            if i > 0 {
                out.push('/');
            }
            let from_template = i > 0 && literal(i - 1);
            let checked = !self.patterns.is_empty() && !from_template;
            let redacted = checked && {
                let decoded = crate::orders::percent_decode_lossy(segment);
                Some(decoded.as_ref()) != keep && self.patterns.is_match(&decoded)
            };
            out.push_str(if redacted { REDACTED } else { segment });
            if out.len() >= MAX_URL_PATH {
                let cut = (0..=MAX_URL_PATH)
                    .rev()
                    .find(|i| out.is_char_boundary(*i))
                    .unwrap_or(0);
                out.truncate(cut);
                break;
            }
        }
        out
    }
}

impl Redactor {
    /// A `.`-separated name (an AMQP routing key) with personal-looking segments replaced;
    /// `keep` (the order id) is never redacted.
    pub fn dotted(&self, name: &str, keep: Option<&str>) -> String {
        if self.patterns.is_empty() {
            return name.to_string();
        }
        name.split('.')
            .map(|segment| {
                if Some(segment) != keep && self.patterns.is_match(segment) {
                    REDACTED
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&DEFAULT_REDACT_PATTERNS).expect("the default patterns compile")
    }
}

/// How an exchange fared with the rules, for the agent's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOutcome {
    Order,
    NoOrderId,
    Unmatched,
}

/// Turns exchanges into spans: classify by the rules, then fill OpenTelemetry attributes.
#[derive(Debug)]
pub struct SpanBuilder {
    rules: RuleSet,
    redactor: Redactor,
    host_name: String,
    /// Added to CLOCK_MONOTONIC ns to get Unix ns.
    monotonic_to_unix_ns: i128,
    ids: IdCache,
}

impl SpanBuilder {
    /// `monotonic_to_unix_ns`: see `clock::monotonic_to_unix_offset_ns`.
    pub fn new(
        rules: RuleSet,
        redactor: Redactor,
        host_name: String,
        monotonic_to_unix_ns: i128,
    ) -> Self {
        Self {
            rules,
            redactor,
            host_name,
            monotonic_to_unix_ns,
            ids: IdCache::default(),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The request headers the rules and the span attributes read (for
    /// `Streams::keeping_headers`): the parser keeps only those.
    pub fn headers_read(&self) -> crate::http::HeaderFilter {
        let mut names = self.rules.headers_read();
        names.push(TRACEPARENT.to_string());
        crate::http::HeaderFilter::only(names)
    }

    /// Zero or one span for a record: one when a rule found an order, or when the
    /// service's `unmatched = "span"` asks for spans of the rest.
    pub fn build<'a>(
        &mut self,
        record: impl Into<RecordRef<'a>>,
    ) -> (MatchOutcome, Option<SpanRecord>) {
        self.build_unless(record, |_| false)
    }

    /// As [`SpanBuilder::build`], but no span when `shed` says yes to the record's
    /// classification: a caller deciding from it (overload) classifies once.
    pub fn build_unless<'a>(
        &mut self,
        record: impl Into<RecordRef<'a>>,
        shed: impl FnOnce(&Classification<'_>) -> bool,
    ) -> (MatchOutcome, Option<SpanRecord>) {
        let record = record.into();
        let classification = self.rules.classify(record);
        let outcome = match &classification {
            Classification::Order(_) => MatchOutcome::Order,
            Classification::NoOrderId { .. } => MatchOutcome::NoOrderId,
            Classification::Unmatched => MatchOutcome::Unmatched,
        };
        if shed(&classification) {
            return (outcome, None);
        }
        let service = match record {
            RecordRef::Http(exchange) => &exchange.service,
            RecordRef::Amqp(transfer) => &transfer.meta.service,
        };
        let wanted = outcome == MatchOutcome::Order
            || self.rules.unmatched_policy(service) == Unmatched::Span;
        if !wanted {
            return (outcome, None);
        }
        let ids = match &classification {
            Classification::Order(m) => Some(self.ids.get(&m.order_id)),
            _ => None,
        };
        let context = SpanContext {
            redactor: &self.redactor,
            host_name: &self.host_name,
            monotonic_to_unix_ns: self.monotonic_to_unix_ns,
        };
        let span = match record {
            RecordRef::Http(exchange) => context.span(exchange, &classification, ids),
            RecordRef::Amqp(transfer) => context.message_span(transfer, &classification, ids),
        };
        (outcome, Some(span))
    }
}

/// What building a span needs of the builder besides the rules and the id cache.
struct SpanContext<'b> {
    redactor: &'b Redactor,
    host_name: &'b str,
    monotonic_to_unix_ns: i128,
}

impl SpanContext<'_> {
    /// The span of a classified exchange; `ids`: its order's, when it has one.
    fn span(
        &self,
        exchange: &Exchange,
        classification: &Classification<'_>,
        ids: Option<OrderIds>,
    ) -> SpanRecord {
        let (rule, side, order) = match classification {
            Classification::Order(m) => (Some(m.rule), Some(m.side), Some(m)),
            Classification::NoOrderId { rule, side } => (Some(*rule), Some(*side), None),
            Classification::Unmatched => (None, None, None),
        };
        let kind = match (side, exchange.role) {
            (Some(CallSide::Server), _) | (None, Role::Server) => SpanKind::Server,
            (Some(CallSide::Client), _) | (None, Role::Client) => SpanKind::Client,
            (None, Role::Unknown) => SpanKind::Internal,
        };
        let method = exchange.request.head.method.as_str();
        let code = exchange.response.as_ref().map(|r| r.head.status);
        let (server, client) = match kind {
            SpanKind::Client => (exchange.peer, exchange.local),
            _ => (exchange.local, exchange.peer),
        };
        let error_type = match (exchange.outcome, code) {
            (Outcome::Reset, _) => Some("reset".to_string()),
            (Outcome::Timeout, _) => Some("timeout".to_string()),
            (Outcome::Complete, None) => Some("no_response".to_string()),
            (Outcome::Complete, Some(code))
                if code >= 500 || (code >= 400 && kind == SpanKind::Client) =>
            {
                Some(code.to_string())
            }
            (Outcome::Complete, Some(_)) => None,
        };
        let status = if error_type.is_some() {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        };
        // In key order, so that each attribute is appended (see `Attributes::insert`).
        let mut attributes = Attributes::with_capacity(20);
        let a = &mut attributes;
        let put = |a: &mut Attributes, key: &'static str, value: AttrValue| {
            a.insert(key.into(), value);
        };
        let address = |a: &mut Attributes, (address, port), addr: Option<SocketAddr>| {
            if let Some(addr) = addr {
                put(a, address, ip_text(addr).into());
                put(a, port, AttrValue::Int(addr.port().into()));
            }
        };
        address(a, ("client.address", "client.port"), client);
        if let Some(error_type) = error_type {
            put(a, "error.type", error_type.into());
        }
        put(a, "http.request.method", method.into());
        if let Some(code) = code {
            put(a, "http.response.status_code", AttrValue::Int(code.into()));
        }
        if let Some(rule) = rule {
            put(a, "http.route", rule.route.as_ref().into());
        }
        let peer = ("network.peer.address", "network.peer.port");
        address(a, peer, exchange.peer);
        order_attributes(a, classification, kind);
        address(a, ("server.address", "server.port"), server);
        if exchange.tls {
            put(a, TLS_ATTRIBUTE, "tls".into());
        }
        put(
            a,
            "url.path",
            self.redactor
                .path_with(
                    &exchange.request.head.target,
                    order.map(|o| o.order_id.as_str()),
                    |i| rule.is_some_and(|r| r.is_literal_segment(i)),
                )
                .into(),
        );
        let (trace_id, parent_span_id) = match ids {
            Some(ids) => (ids.trace_id, Some(ids.root_span_id)),
            None => (random_id(), None),
        };
        let name = match rule {
            Some(rule) => [method, " ", &rule.route].concat(),
            None => method.to_string(),
        };
        let resource = Attributes::from([
            ("service.name".into(), exchange.service.as_ref().into()),
            (
                "process.pid".into(),
                AttrValue::Int(exchange.conn.pid.into()),
            ),
            ("host.name".into(), self.host_name.into()),
        ]);
        SpanRecord {
            trace_id,
            span_id: random_id(),
            parent_span_id,
            links: traceparent_link(exchange).into_iter().collect(),
            name,
            kind,
            start_unix_nano: self.to_unix(exchange.start_ns),
            end_unix_nano: self.to_unix(exchange.end_ns.max(exchange.start_ns)),
            status,
            resource,
            attributes,
            events: Vec::new(),
        }
    }

    pub(super) fn to_unix(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.monotonic_to_unix_ns).clamp(0, u64::MAX as i128) as u64
    }
}

/// `order.*` (and `peer.service` for calls out) from what the rules found, in key order so
/// that a span filled in key order around them only appends.
pub(super) fn order_attributes(
    attributes: &mut Attributes,
    classification: &Classification<'_>,
    kind: SpanKind,
) {
    let mut put = |key: &'static str, value: AttrValue| {
        attributes.insert(key.into(), value);
    };
    let (rule, order) = match classification {
        Classification::Order(m) => (Some(m.rule), Some(m)),
        Classification::NoOrderId { rule, .. } => (Some(*rule), None),
        Classification::Unmatched => (None, None),
    };
    if let Some(m) = order {
        put("order.id", m.order_id.as_str().into());
        let optional = [
            ("order.key", m.key.as_deref()),
            ("order.lookup", m.lookup.map(|l| l.as_str())),
            ("order.observed_status", m.observed_status),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                put(key, value.into());
            }
        }
    }
    if let Some(rule) = rule {
        put("order.owner", rule.owner.as_ref().into());
        put("order.rule", rule.name.as_ref().into());
    }
    if let Some(m) = order {
        for (key, value) in [("order.status", m.status), ("order.step", m.step)] {
            if let Some(value) = value {
                put(key, value.into());
            }
        }
    }
    if let Some(rule) = rule
        && matches!(kind, SpanKind::Client | SpanKind::Producer)
    {
        put("peer.service", rule.owner.as_ref().into());
    }
}

/// A record of any protocol, borrowed: what [`SpanBuilder::build`] takes.
#[derive(Clone, Copy, Debug)]
pub enum RecordRef<'a> {
    Http(&'a Exchange),
    Amqp(&'a Transfer),
}

impl<'a> From<&'a Record> for RecordRef<'a> {
    fn from(record: &'a Record) -> Self {
        match record {
            Record::Http(exchange) => RecordRef::Http(exchange),
            Record::Amqp(transfer) => RecordRef::Amqp(transfer),
        }
    }
}

impl<'a> From<&'a Transfer> for RecordRef<'a> {
    fn from(transfer: &'a Transfer) -> Self {
        RecordRef::Amqp(transfer)
    }
}

impl<'a> From<&'a Exchange> for RecordRef<'a> {
    fn from(exchange: &'a Exchange) -> Self {
        RecordRef::Http(exchange)
    }
}

impl From<&str> for AttrValue {
    fn from(value: &str) -> Self {
        AttrValue::Str(value.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(value: String) -> Self {
        AttrValue::Str(value)
    }
}

/// This machine's name, for the `host.name` resource attribute ("unknown" if it has none).
/// On Kubernetes the DaemonSet passes the node's name in `NODE_NAME`: the pod's own host name
/// would name the agent, not the machine the traced services run on.
pub fn local_host_name() -> String {
    if let Some(node) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return node;
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "unknown".to_string(),
    }
}

/// An address as OpenTelemetry shows it (`127.0.0.1`, `::1`); IPv4 without the formatting
/// machinery, which is most of what a span costs otherwise.
fn ip_text(addr: SocketAddr) -> String {
    let IpAddr::V4(ip) = addr.ip() else {
        return addr.ip().to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// A random, non-zero id (span ids, and trace ids of spans outside any order).
pub(super) fn random_id<const N: usize>() -> [u8; N] {
    let mut id: [u8; N] = rand::random();
    if id.iter().all(|b| *b == 0) {
        id[N - 1] = 1;
    }
    id
}

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`) the request carried, as a link.
fn traceparent_link(exchange: &Exchange) -> Option<SpanLink> {
    let value = std::str::from_utf8(exchange.request.header(TRACEPARENT)?)
        .ok()?
        .trim();
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || flags.len() != 2
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    let mut link = SpanLink {
        trace_id: [0; 16],
        span_id: [0; 8],
    };
    hex::decode_to_slice(trace, &mut link.trace_id).ok()?;
    hex::decode_to_slice(span, &mut link.span_id).ok()?;
    let valid = link.trace_id.iter().any(|b| *b != 0) && link.span_id.iter().any(|b| *b != 0);
    valid.then_some(link)
}

mod message;
#[cfg(test)]
mod tests;
