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

mod config;
mod extract;
mod json;
mod template;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use crate::amqp::{Operation, Transfer};
use crate::capture::Role;
use crate::http::Exchange;
use crate::spans::RecordRef;

pub use config::{
    Body, HeaderMatch, IdSource, KeyFields, Protocol, RuleConfig, RuleKind, ServiceRules, Side,
    StatusField, StatusSource, Unmatched,
};
pub use extract::{MAX_ORDER_ID_LEN, clean_order_id};
use json::LazyJson;
use template::{PathSegments, Template};

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
    /// Compiles validated service sections. Fails on what needs the whole config to see:
    /// a service listed twice, a rule name used in two services.
    pub fn compile(services: &[ServiceRules]) -> Result<Self, String> {
        let key_secret: Option<Arc<[u8]>> = std::env::var_os(KEY_SECRET_ENV)
            .filter(|secret| !secret.is_empty())
            .map(|secret| Arc::from(std::os::unix::ffi::OsStrExt::as_bytes(secret.as_os_str())));
        let mut set = RuleSet::default();
        let mut names: HashMap<Arc<str>, Arc<str>> = HashMap::new();
        for service in services {
            service.validate()?;
            let owner: Arc<str> = Arc::from(service.name.as_str());
            if set.services.contains_key(&owner) {
                return Err(format!(
                    "service {:?} has two [[service]] sections; merge them",
                    service.name
                ));
            }
            let mut entry = ServiceEntry {
                unmatched: service.unmatched,
                server_rules: Vec::new(),
            };
            for config in &service.rules {
                let rule = Rule::compile(config, &owner, key_secret.clone())?;
                if let Some(other) = names.insert(rule.name.clone(), owner.clone()) {
                    return Err(format!(
                        "rule name {:?} is used by services {other:?} and {:?}; rule names must be unique",
                        config.name, service.name
                    ));
                }
                let index = set.rules.len();
                if config.side != Side::Client {
                    entry.server_rules.push(index);
                }
                if config.side != Side::Server {
                    set.client_rules.push(index);
                }
                set.rules.push(rule);
            }
            set.services.insert(owner, entry);
        }
        Ok(set)
    }

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

    /// Finds the rule for a record and reads the order id and statuses from it.
    pub fn classify<'a, 'r>(&'r self, record: impl Into<RecordRef<'a>>) -> Classification<'r> {
        match record.into() {
            RecordRef::Http(exchange) => self.classify_http(exchange),
            RecordRef::Amqp(transfer) => self.classify_amqp(transfer),
        }
    }

    fn server_rules<'s>(&'s self, service: &str) -> impl Iterator<Item = (usize, CallSide)> + 's {
        self.services
            .get(service)
            .map_or(&[][..], |s| s.server_rules.as_slice())
            .iter()
            .map(|i| (*i, CallSide::Server))
    }

    fn client_rules(&self) -> impl Iterator<Item = (usize, CallSide)> + '_ {
        self.client_rules.iter().map(|i| (*i, CallSide::Client))
    }

    fn classify_http<'r>(&'r self, exchange: &Exchange) -> Classification<'r> {
        let path = request_path(&exchange.request.head.target);
        let Some(path) = PathSegments::split(path) else {
            return Classification::Unmatched;
        };
        let server_rules = || self.server_rules(&exchange.service);
        let client_rules = || self.client_rules();
        let found = match exchange.role {
            Role::Server => self.first_match(server_rules(), exchange, &path),
            Role::Client => self.first_match(client_rules(), exchange, &path),
            // Seen mid-connection: the rules decide which side it was.
            Role::Unknown => {
                self.first_match(server_rules().chain(client_rules()), exchange, &path)
            }
        };
        let Some((rule, side)) = found else {
            return Classification::Unmatched;
        };
        match rule.read(exchange, &path, side) {
            Some(m) => Classification::Order(m),
            None => Classification::NoOrderId { rule, side },
        }
    }

    fn first_match<'r>(
        &'r self,
        candidates: impl Iterator<Item = (usize, CallSide)>,
        exchange: &Exchange,
        path: &PathSegments<'_>,
    ) -> Option<(&'r Rule, CallSide)> {
        candidates.into_iter().find_map(|(index, side)| {
            let rule = &self.rules[index];
            let Matcher::Http {
                method, template, ..
            } = &rule.matcher
            else {
                return None;
            };
            let fits = *method == exchange.request.head.method
                && rule.headers_match(exchange)
                && template.matches_segments(path);
            fits.then_some((rule, side))
        })
    }

    /// A publish is the traced process sending to another (the broker, or the consumer the
    /// rule names); a delivery or get is its own service receiving.
    fn classify_amqp<'r>(&'r self, transfer: &Transfer) -> Classification<'r> {
        let matches = |(index, side): (usize, CallSide)| {
            let rule = &self.rules[index];
            rule.amqp_matches(transfer).then_some((rule, side))
        };
        let found = match transfer.operation {
            Operation::Publish => self.client_rules().find_map(matches),
            Operation::Deliver | Operation::Get => {
                self.server_rules(&transfer.meta.service).find_map(matches)
            }
        };
        let Some((rule, side)) = found else {
            return Classification::Unmatched;
        };
        match rule.read_message(transfer, side) {
            Some(m) => Classification::Order(m),
            None => Classification::NoOrderId { rule, side },
        }
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

    fn compile(
        config: &RuleConfig,
        owner: &Arc<str>,
        key_secret: Option<Arc<[u8]>>,
    ) -> Result<Self, String> {
        let context = |e: String| format!("service {owner:?}, rule {:?}: {e}", config.name);
        let http = config.protocol == Protocol::Http;
        let (matcher, route) = if http {
            let path = config.path.clone().unwrap_or_default();
            let matcher = Matcher::Http {
                method: config.method.clone().unwrap_or_default(),
                template: Template::parse(&path).map_err(context)?,
                host: config.host.clone(),
            };
            (matcher, path)
        } else {
            let name = |t: &Option<String>| {
                t.as_deref()
                    .map(Template::parse_name)
                    .transpose()
                    .map_err(context)
            };
            let matcher = Matcher::Amqp {
                exchange: name(&config.exchange)?,
                routing_key: name(&config.routing_key)?,
                queue: name(&config.queue)?,
            };
            let route = [
                ("exchange", &config.exchange),
                ("routing_key", &config.routing_key),
                ("queue", &config.queue),
            ]
            .iter()
            .filter_map(|(what, t)| t.as_ref().map(|t| format!("{what}={t}")))
            .collect::<Vec<_>>()
            .join(" ");
            (matcher, route)
        };
        let order_id = config
            .order_id
            .iter()
            .map(|source| {
                Ok(match source {
                    IdSource::Path { param } => CompiledIdSource::Path(
                        match &matcher {
                            Matcher::Http { template, .. } => template.param_index(param),
                            Matcher::Amqp { .. } => None,
                        }
                        .ok_or_else(|| context(format!("no path parameter {{{param}}}")))?,
                    ),
                    IdSource::Query { param } => CompiledIdSource::Query(param.clone()),
                    // HTTP header names are case-insensitive; AMQP table keys are not.
                    IdSource::Header { name } if http => {
                        CompiledIdSource::Header(name.to_ascii_lowercase())
                    }
                    IdSource::Header { name } => CompiledIdSource::Header(name.clone()),
                    IdSource::Property { name } => CompiledIdSource::Property(name.clone()),
                    IdSource::BodyJson { path } => {
                        CompiledIdSource::Json(Body::Message, path.clone())
                    }
                    IdSource::RequestJson { path } => {
                        CompiledIdSource::Json(Body::Request, path.clone())
                    }
                    IdSource::ResponseJson { path } => {
                        CompiledIdSource::Json(Body::Response, path.clone())
                    }
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let status = config
            .status
            .as_ref()
            .map(CompiledStatus::compile)
            .transpose()
            .map_err(context)?;
        let step = match &config.step {
            Some(step) => Some(CompiledStatus::compile(step).map_err(context)?),
            // A fixed status is also what the call tries to reach.
            None => match &status {
                Some(CompiledStatus::Fixed(s)) if config.kind == RuleKind::Transition => {
                    Some(CompiledStatus::Fixed(s))
                }
                _ => None,
            },
        };
        Ok(Rule {
            name: Arc::from(config.name.as_str()),
            owner: owner.clone(),
            route: Arc::from(route.as_str()),
            kind: config.kind,
            matcher,
            header: config.header.as_ref().map(|h| {
                let name = if http {
                    h.name.to_ascii_lowercase()
                } else {
                    h.name.clone()
                };
                (name, h.value.clone())
            }),
            order_id,
            step,
            status,
            key: config.key.clone(),
            key_secret,
        })
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

    fn amqp_matches(&self, transfer: &Transfer) -> bool {
        let Matcher::Amqp {
            exchange,
            routing_key,
            queue,
        } = &self.matcher
        else {
            return false;
        };
        let fits = |template: &Option<Template>, name: Option<&[u8]>| match template {
            None => true,
            Some(template) => name
                .and_then(|n| std::str::from_utf8(n).ok())
                .is_some_and(|n| template.matches(n).is_some()),
        };
        fits(exchange, Some(&transfer.exchange))
            && fits(routing_key, Some(&transfer.routing_key))
            && fits(queue, transfer.queue.as_deref())
            && match &self.header {
                None => true,
                Some((name, want)) => match (transfer.header(name), want) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(sent), Some(want)) => sent.trim() == want,
                },
            }
    }

    fn headers_match(&self, exchange: &Exchange) -> bool {
        let request = &exchange.request;
        if let Matcher::Http {
            host: Some(host), ..
        } = &self.matcher
        {
            let Some(sent) = request
                .header("host")
                .and_then(|v| std::str::from_utf8(v).ok())
            else {
                return false;
            };
            let sent = sent.trim();
            let bare = sent.rsplit_once(':').map_or(sent, |(h, _)| h);
            if !sent.eq_ignore_ascii_case(host) && !(bare.eq_ignore_ascii_case(host)) {
                return false;
            }
        }
        match &self.header {
            None => true,
            Some((name, value)) => match (request.header(name), value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(sent), Some(want)) => sent.as_ref().trim_ascii() == want.as_bytes(),
            },
        }
    }

    /// Reads id, step, status and key. `None` when no source yields a plausible order id.
    fn read<'r>(
        &'r self,
        exchange: &Exchange,
        path: &PathSegments<'_>,
        side: CallSide,
    ) -> Option<OrderMatch<'r>> {
        let response = exchange.response.as_ref();
        let mut bodies = Bodies {
            request: LazyJson::new(&exchange.request.body, !exchange.request.body_truncated),
            response: match response {
                Some(r) => LazyJson::new(&r.body, !r.body_truncated),
                None => LazyJson::new(&[], false),
            },
            message: LazyJson::new(&[], false),
        };
        let order_id = self.order_id.iter().find_map(|source| {
            let raw: Cow<'_, str> = match source {
                CompiledIdSource::Path(index) => {
                    let segment = path.get(*index)?;
                    extract::percent_decode(segment)?
                }
                CompiledIdSource::Query(name) => {
                    extract::query_param(&exchange.request.head.target, name)?
                }
                CompiledIdSource::Header(name) => {
                    Cow::Borrowed(std::str::from_utf8(exchange.request.header(name)?).ok()?)
                }
                CompiledIdSource::Json(body, path) => bodies.field(*body, path)?,
                CompiledIdSource::Property(_) => return None,
            };
            extract::clean_order_id(&raw)
        })?;

        let code = response.map(|r| r.head.status);
        let succeeded =
            matches!(code, Some(200..=299)) && exchange.outcome == crate::http::Outcome::Complete;
        Some(self.finish(side, order_id, succeeded, code, &mut bodies))
    }

    /// Reads id, step, status and key of a message.
    fn read_message<'r>(&'r self, transfer: &Transfer, side: CallSide) -> Option<OrderMatch<'r>> {
        let mut bodies = Bodies {
            request: LazyJson::new(&[], false),
            response: LazyJson::new(&[], false),
            message: LazyJson::new(&transfer.body, !transfer.body_truncated),
        };
        let order_id = self.order_id.iter().find_map(|source| {
            let raw: Cow<'_, str> = match source {
                CompiledIdSource::Header(name) => Cow::Owned(transfer.header(name)?),
                CompiledIdSource::Property(name) => {
                    Cow::Owned(String::from_utf8(transfer.property(name)?.to_vec()).ok()?)
                }
                CompiledIdSource::Json(body, path) => bodies.field(*body, path)?,
                CompiledIdSource::Path(_) | CompiledIdSource::Query(_) => return None,
            };
            extract::clean_order_id(&raw)
        })?;
        let succeeded = transfer.settlement.succeeded();
        Some(self.finish(side, order_id, succeeded, None, &mut bodies))
    }

    /// What every protocol reads the same way once the order id is known.
    fn finish<'r>(
        &'r self,
        side: CallSide,
        order_id: String,
        succeeded: bool,
        code: Option<u16>,
        bodies: &mut Bodies<'_>,
    ) -> OrderMatch<'r> {
        let step = self.step.as_ref().and_then(|s| s.read(bodies));
        let (mut status, mut observed_status, mut lookup) = (None, None, None);
        match self.kind {
            RuleKind::Transition if succeeded => {
                status = self.status.as_ref().and_then(|s| s.read(bodies))
            }
            RuleKind::Lookup => {
                lookup = match code {
                    Some(200..=299) => Some(LookupResult::Found),
                    Some(404 | 410) => Some(LookupResult::NotFound),
                    _ => None,
                };
                if lookup == Some(LookupResult::Found) {
                    observed_status = self.status.as_ref().and_then(|s| s.read(bodies));
                }
            }
            _ => {}
        }
        let key = self.key.as_ref().and_then(|key| {
            let values = key
                .fields
                .iter()
                .map(|field| bodies.field(key.from, field))
                .collect::<Option<Vec<_>>>()?;
            Some(extract::key_hash(
                self.key_secret.as_deref(),
                &self.name,
                &values,
            ))
        });
        OrderMatch {
            rule: self,
            side,
            order_id,
            step,
            status,
            observed_status,
            lookup,
            key,
        }
    }
}

/// The JSON bodies of one record (request and response, or the message), each checked at
/// most once.
struct Bodies<'b> {
    request: LazyJson<'b>,
    response: LazyJson<'b>,
    message: LazyJson<'b>,
}

impl<'b> Bodies<'b> {
    /// A scalar field's text, borrowed from the body when it holds no escapes.
    fn field(&mut self, body: Body, path: &str) -> Option<Cow<'b, str>> {
        match body {
            Body::Request => self.request.text(path),
            Body::Response => self.response.text(path),
            Body::Message => self.message.text(path),
        }
    }
}

impl CompiledStatus {
    fn read(&self, bodies: &mut Bodies<'_>) -> Option<&'static str> {
        match self {
            CompiledStatus::Fixed(s) => Some(s),
            CompiledStatus::Field { body, path, map } => {
                let text = bodies.field(*body, path)?;
                map.get(text.as_ref())
                    .copied()
                    .or_else(|| canonical_status(&text))
            }
        }
    }

    fn compile(source: &StatusSource) -> Result<Self, String> {
        let canonical = |name: &str| {
            canonical_status(name).ok_or_else(|| {
                format!(
                    "{name:?} is not a canonical status; use one of {}",
                    CANONICAL_STATUSES.join(", ")
                )
            })
        };
        Ok(match source {
            StatusSource::Fixed(name) => CompiledStatus::Fixed(canonical(name)?),
            StatusSource::Field(field) => CompiledStatus::Field {
                body: field.from,
                path: field.path.clone(),
                map: field
                    .map
                    .iter()
                    .map(|(from, to)| Ok((from.clone(), canonical(to)?)))
                    .collect::<Result<_, String>>()?,
            },
        })
    }
}

#[cfg(test)]
mod tests;
