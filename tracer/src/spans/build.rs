//! Building the [`SpanRecord`] of one exchange from what the order rules found.

use std::collections::BTreeMap;

use regex::RegexSet;

use super::{
    AttrValue, SpanKind, SpanLink, SpanRecord, SpanStatus, order_root_span_id, order_trace_id,
};
use crate::amqp::Transfer;
use crate::capture::Role;
use crate::http::{Exchange, Outcome};
use crate::orders::{CallSide, Classification, RuleSet, Unmatched};
use crate::protocol::Record;

/// Longest `url.path` exported; the rest is cut (paths are attacker-controlled input).
const MAX_URL_PATH: usize = 512;
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
        let path = target.split(['?', '#']).next().unwrap_or("");
        let mut out = String::with_capacity(path.len().min(MAX_URL_PATH));
        for (i, segment) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            let from_template = i > 0 && literal(i - 1);
            let checked = !self.patterns.is_empty() && !from_template;
            let decoded = crate::orders::percent_decode_lossy(segment);
            if checked && Some(decoded.as_ref()) != keep && self.patterns.is_match(&decoded) {
                out.push_str(REDACTED);
            } else {
                out.push_str(segment);
            }
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
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Zero or one span for a record: one when a rule found an order, or when the
    /// service's `unmatched = "span"` asks for spans of the rest.
    pub fn build<'a>(
        &self,
        record: impl Into<RecordRef<'a>>,
    ) -> (MatchOutcome, Option<SpanRecord>) {
        let record = record.into();
        let classification = self.rules.classify(record);
        let outcome = match &classification {
            Classification::Order(_) => MatchOutcome::Order,
            Classification::NoOrderId { .. } => MatchOutcome::NoOrderId,
            Classification::Unmatched => MatchOutcome::Unmatched,
        };
        let service = match record {
            RecordRef::Http(exchange) => &exchange.service,
            RecordRef::Amqp(transfer) => &transfer.meta.service,
        };
        let wanted = outcome == MatchOutcome::Order
            || self.rules.unmatched_policy(service) == Unmatched::Span;
        let span = wanted.then(|| match record {
            RecordRef::Http(exchange) => self.span(exchange, &classification),
            RecordRef::Amqp(transfer) => self.message_span(transfer, &classification),
        });
        (outcome, span)
    }

    /// The span of an exchange already classified.
    pub fn span(&self, exchange: &Exchange, classification: &Classification<'_>) -> SpanRecord {
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
        let mut attributes = BTreeMap::new();
        let mut put = |key: &str, value: AttrValue| {
            attributes.insert(key.to_string(), value);
        };
        put("http.request.method", method.into());
        put(
            "url.path",
            self.redactor
                .path_with(
                    &exchange.request.head.target,
                    order.map(|o| o.order_id.as_str()),
                    |i| rule.is_some_and(|r| r.is_literal_segment(i)),
                )
                .into(),
        );
        let code = exchange.response.as_ref().map(|r| r.head.status);
        if let Some(code) = code {
            put("http.response.status_code", AttrValue::Int(code.into()));
        }
        let (server, client) = match kind {
            SpanKind::Client => (exchange.peer, exchange.local),
            _ => (exchange.local, exchange.peer),
        };
        let addresses = [
            ("server.address", "server.port", server),
            ("client.address", "client.port", client),
            ("network.peer.address", "network.peer.port", exchange.peer),
        ];
        for (address_key, port_key, addr) in addresses {
            if let Some(addr) = addr {
                put(address_key, addr.ip().to_string().into());
                put(port_key, AttrValue::Int(addr.port().into()));
            }
        }
        if exchange.tls {
            put(TLS_ATTRIBUTE, "tls".into());
        }
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
        if let Some(error_type) = error_type {
            put("error.type", error_type.into());
        }
        if let Some(rule) = rule {
            put("http.route", rule.route.as_ref().into());
        }
        order_attributes(&mut attributes, classification, kind);
        let (trace_id, parent_span_id) = match order {
            Some(m) => (
                order_trace_id(&m.order_id),
                Some(order_root_span_id(&m.order_id)),
            ),
            None => (random_id(), None),
        };
        let name = match rule {
            Some(rule) => format!("{method} {}", rule.route),
            None => method.to_string(),
        };
        let mut resource = BTreeMap::new();
        resource.insert("service.name".to_string(), exchange.service.as_ref().into());
        resource.insert(
            "process.pid".to_string(),
            AttrValue::Int(exchange.conn.pid.into()),
        );
        resource.insert("host.name".to_string(), self.host_name.as_str().into());
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

/// `order.*` (and `peer.service` for calls out) from what the rules found.
pub(super) fn order_attributes(
    attributes: &mut BTreeMap<String, AttrValue>,
    classification: &Classification<'_>,
    kind: SpanKind,
) {
    let mut put = |key: &str, value: AttrValue| {
        attributes.insert(key.to_string(), value);
    };
    let (rule, order) = match classification {
        Classification::Order(m) => (Some(m.rule), Some(m)),
        Classification::NoOrderId { rule, .. } => (Some(*rule), None),
        Classification::Unmatched => (None, None),
    };
    if let Some(rule) = rule {
        put("order.rule", rule.name.as_ref().into());
        put("order.owner", rule.owner.as_ref().into());
        if matches!(kind, SpanKind::Client | SpanKind::Producer) {
            put("peer.service", rule.owner.as_ref().into());
        }
    }
    if let Some(m) = order {
        put("order.id", m.order_id.as_str().into());
        let optional = [
            ("order.step", m.step),
            ("order.status", m.status),
            ("order.observed_status", m.observed_status),
            ("order.lookup", m.lookup.map(|l| l.as_str())),
            ("order.key", m.key.as_deref()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                put(key, value.into());
            }
        }
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
    let value = std::str::from_utf8(exchange.request.header("traceparent")?)
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
