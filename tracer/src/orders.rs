//! Orders: configured rules turn a record — an HTTP exchange or a broker message — into an
//! order id, the status the call tries to reach and the status it reached. Rules are per
//! service (`[[service]]` in the config), compiled once into a [`RuleSet`] so matching costs a
//! few segment compares per rule.
//!
//! A server exchange (the traced process answered), like a message the traced process
//! consumed, is matched only against its own service's rules. A client exchange (a traced
//! process called someone), like a message it published, is matched against the rules of
//! every service, since the callee is named by the request, not by the caller: the matching
//! rule's service is the owner (`order.owner`, `peer.service`).

mod compile;
mod config;
mod extract;
mod json;
mod matching;
mod template;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use crate::capture::Role;

pub use config::{
    Body, HeaderMatch, IdSource, KeyFields, Protocol, RuleConfig, RuleKind, ServiceRules, Side,
    StatusField, StatusSource, Unmatched,
};
pub use extract::{MAX_ORDER_ID_LEN, clean_order_id};
use template::Template;

/// The ten statuses of an order's life, in order. The lifecycle monitor owns the transitions;
/// rules may only name these.
pub const CANONICAL_STATUSES: [&str; 10] = [
    "INITIATED",
    "FILE_UPLOADED",
    "SUBMITTED",
    "PRICE_CALCULATED",
    "MANUFACTURING_APPROVED",
    "MANUFACTURING_STARTED",
    "MANUFACTURING_COMPLETED",
    "PACKAGING",
    "SHIPPED",
    "CLOSED",
];

/// The canonical spelling (a `'static` str) of a status name, if it is one.
pub fn canonical_status(name: &str) -> Option<&'static str> {
    CANONICAL_STATUSES.iter().copied().find(|s| *s == name)
}

/// The path of a request target: what comes before its query or fragment.
pub fn request_path(target: &str) -> &str {
    let end = memchr::memchr2(b'?', b'#', target.as_bytes()).unwrap_or(target.len());
    &target[..end]
}

/// A path segment percent-decoded, or as it is when it holds no valid escape.
pub fn percent_decode_lossy(segment: &str) -> Cow<'_, str> {
    extract::percent_decode(segment).unwrap_or(Cow::Borrowed(segment))
}

/// Environment variable holding the deployment's secret for `order.key`. Set (to the same value
/// on every agent), `order.key` is an HMAC-SHA-256 of the key fields, which nobody without the
/// secret can test guesses of customer ids against; unset, a plain SHA-256.
pub const KEY_SECRET_ENV: &str = "ORDER_TRACER_KEY_SECRET";

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    /// The service the rule belongs to.
    pub owner: Arc<str>,
    /// HTTP: the path template, reported as `http.route`; AMQP: the templates the rule
    /// matches, for people reading the config.
    pub route: Arc<str>,
    pub kind: RuleKind,
    matcher: Matcher,
    header: Option<(String, Option<String>)>,
    order_id: Vec<CompiledIdSource>,
    step: Option<CompiledStatus>,
    status: Option<CompiledStatus>,
    key: Option<KeyFields>,
    /// Keys `order.key` (HMAC) when the deployment set [`KEY_SECRET_ENV`].
    key_secret: Option<Arc<[u8]>>,
}

/// What a record must look like for the rule to apply.
#[derive(Debug)]
enum Matcher {
    Http {
        method: String,
        template: Template,
        host: Option<String>,
    },
    Amqp {
        exchange: Option<Template>,
        routing_key: Option<Template>,
        queue: Option<Template>,
    },
}

#[derive(Debug)]
enum CompiledIdSource {
    /// Index of the template segment.
    Path(usize),
    Query(String),
    Header(String),
    Property(String),
    Json(Body, String),
}

#[derive(Debug)]
enum CompiledStatus {
    Fixed(&'static str),
    Field {
        body: Body,
        path: String,
        map: HashMap<String, &'static str, BuildHasherDefault<NameHasher>>,
    },
}

#[derive(Debug)]
struct ServiceEntry {
    unmatched: Unmatched,
    /// Indices into `RuleSet::rules` of rules that apply to this service's server side.
    server_rules: Vec<usize>,
}

/// FNV-1a, for the maps whose keys come from the config (service names, a status field's
/// words), few and short: a lookup per exchange needs speed, and a map that never grows needs
/// no protection against chosen keys.
#[derive(Default)]
struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// All rules of a config, ready to match exchanges.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    services: HashMap<Arc<str>, ServiceEntry, BuildHasherDefault<NameHasher>>,
    /// Rules that apply to client exchanges, of any service.
    client_rules: Vec<usize>,
}

/// What a call to an order-bearing endpoint returned, for `lookup` rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupResult {
    Found,
    NotFound,
}

impl LookupResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Found => "found",
            LookupResult::NotFound => "not_found",
        }
    }
}

/// Which side of the call the traced process was on, as far as the rules tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallSide {
    Server,
    Client,
}

/// An exchange that a rule matched and that named an order.
#[derive(Debug)]
pub struct OrderMatch<'r> {
    pub rule: &'r Rule,
    pub side: CallSide,
    pub order_id: String,
    /// The canonical status the call tries to reach.
    pub step: Option<&'static str>,
    /// The canonical status reached (2xx only).
    pub status: Option<&'static str>,
    /// For lookups: the canonical status the system answered with.
    pub observed_status: Option<&'static str>,
    pub lookup: Option<LookupResult>,
    /// Hash of the rule's key fields (duplicate detection).
    pub key: Option<String>,
}

#[derive(Debug)]
pub enum Classification<'r> {
    Order(OrderMatch<'r>),
    /// A rule matched but no order id was found (no response yet, garbage, truncated body).
    NoOrderId {
        rule: &'r Rule,
        side: CallSide,
    },
    /// No rule matched.
    Unmatched,
}

impl RuleSet {
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The request headers any rule reads (lower-case): `host` when a rule matches on it, the
    /// headers rules match on or take an order id from.
    pub fn headers_read(&self) -> Vec<String> {
        let mut names = Vec::new();
        for rule in &self.rules {
            // AMQP rules read message headers, which the HTTP stage never keeps.
            let Matcher::Http { host, .. } = &rule.matcher else {
                continue;
            };
            if host.is_some() {
                names.push("host".to_string());
            }
            names.extend(rule.header.iter().map(|(name, _)| name.clone()));
            names.extend(rule.order_id.iter().filter_map(|source| match source {
                CompiledIdSource::Header(name) => Some(name.clone()),
                _ => None,
            }));
        }
        names.sort();
        names.dedup();
        names
    }

    /// Whether any rule that can match an exchange of `service`'s process on that side of the
    /// connection reads a body (a JSON id, status or key field): the capture then copies the
    /// start of bodies as well as heads. `Role::Unknown` asks about either side.
    pub fn reads_body(&self, service: &str, role: Role) -> bool {
        let server = || {
            self.services
                .get(service)
                .is_some_and(|s| s.server_rules.iter().any(|i| self.rules[*i].reads_body()))
        };
        let client = || {
            self.client_rules
                .iter()
                .any(|i| self.rules[*i].reads_body())
        };
        match role {
            Role::Server => server(),
            Role::Client => client(),
            Role::Unknown => server() || client(),
        }
    }

    /// What to do with a service's exchanges no rule claims.
    pub fn unmatched_policy(&self, service: &str) -> Unmatched {
        self.services
            .get(service)
            .map_or(Unmatched::Count, |s| s.unmatched)
    }
}

impl Rule {
    fn reads_body(&self) -> bool {
        let from_body =
            |status: &Option<CompiledStatus>| matches!(status, Some(CompiledStatus::Field { .. }));
        self.key.is_some()
            || from_body(&self.step)
            || from_body(&self.status)
            || self
                .order_id
                .iter()
                .any(|source| matches!(source, CompiledIdSource::Json(..)))
    }

    /// Whether path segment `index` (0 = the first after the leading '/') is fixed text of
    /// the rule's template, which needs no redaction.
    pub fn is_literal_segment(&self, index: usize) -> bool {
        match &self.matcher {
            Matcher::Http { template, .. } => template.is_literal(index),
            Matcher::Amqp { .. } => false,
        }
    }

    /// Which protocol the rule matches.
    pub fn protocol(&self) -> Protocol {
        match self.matcher {
            Matcher::Http { .. } => Protocol::Http,
            Matcher::Amqp { .. } => Protocol::Amqp,
        }
    }
}

#[cfg(test)]
mod tests;
