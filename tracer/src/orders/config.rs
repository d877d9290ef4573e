//! The `[[service]]` / `[[service.rule]]` sections: which exchange or message means which
//! order and status. Deserialised as written, then compiled by [`super::RuleSet::compile`].

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::CANONICAL_STATUSES;

/// The rules of one traced service (or of an untraced one, such as a broker, whose calls are
/// seen only from its clients).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRules {
    /// The service name, as the capture stage names the process (`service.name`).
    pub name: String,
    /// What to do with this service's exchanges that match no rule (or match one but carry no
    /// order id): `count` them in metrics only (default), or also emit a `span` outside any
    /// order trace.
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Count,
    Span,
}

/// Which protocol a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    /// AMQP 0-9-1 (RabbitMQ): publishes and deliveries.
    Amqp,
}

/// One rule: a request (or message) shape and where its order id and status are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique across the whole config; the monitor refers to rules by it (`order.rule`).
    pub name: String,
    /// `http` (default) or `amqp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP: the method, upper case (`GET`, `POST`, …).
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP: path template: `{name}` is one segment, a final `*` the rest of the path.
    #[serde(default)]
    pub path: Option<String>,
    /// AMQP: exchange name template (`.`-separated segments, `{name}` one segment, a final
    /// `*` the rest; `""` is the default exchange).
    #[serde(default)]
    pub exchange: Option<String>,
    /// AMQP: routing key template, as `exchange`.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// AMQP: the queue a delivery came from, as `exchange` (known when the consume was seen).
    #[serde(default)]
    pub queue: Option<String>,
    /// HTTP: only requests whose `Host` header is this (`host` or `host:port`).
    #[serde(default)]
    pub host: Option<String>,
    /// Only requests (HTTP) or messages (AMQP `headers` table) that carry this header (and
    /// value, when given).
    #[serde(default)]
    pub header: Option<HeaderMatch>,
    /// Which side's records the rule applies to: `server` (the owning service answered the
    /// request, or consumed the message), `client` (a traced process called the owning
    /// service, or published to it), or `both` (default).
    #[serde(default)]
    pub side: Side,
    #[serde(default)]
    pub kind: RuleKind,
    /// Where the order id is; several sources are tried in order.
    #[serde(deserialize_with = "one_or_many")]
    pub order_id: Vec<IdSource>,
    /// The status this call tries to reach. Defaults to `status` when that is fixed.
    #[serde(default)]
    pub step: Option<StatusSource>,
    /// The status reached when the call succeeds (2xx); for `lookup` rules, the status the
    /// system answered with.
    #[serde(default)]
    pub status: Option<StatusSource>,
    /// JSON fields whose values, hashed, form `order.key` (duplicate detection). Only the
    /// hash leaves the agent.
    #[serde(default)]
    pub key: Option<KeyFields>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (compared case-insensitively).
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Server,
    Client,
    #[default]
    Both,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// The call moves the order to a status.
    #[default]
    Transition,
    /// A status lookup: reports what the system says (`order.observed_status`, `order.lookup`).
    Lookup,
    /// The call names the order but changes no status (a queue publish, a receipt).
    Reference,
}

/// Where a value comes from in the exchange.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "from", deny_unknown_fields)]
pub enum IdSource {
    /// A `{param}` segment of the path template.
    #[serde(rename = "path")]
    Path { param: String },
    #[serde(rename = "query")]
    Query { param: String },
    #[serde(rename = "header")]
    Header { name: String },
    /// A field of the request's JSON body; `path` is dotted (`order.id`, `items.0.sku`).
    #[serde(rename = "request.json")]
    RequestJson { path: String },
    #[serde(rename = "response.json")]
    ResponseJson { path: String },
    /// AMQP: a message property (`message-id`, `correlation-id`, `type`, `app-id`, …).
    #[serde(rename = "property")]
    Property { name: String },
    /// AMQP: a field of the message's JSON body.
    #[serde(rename = "body.json")]
    BodyJson { path: String },
}

/// Which JSON body a field is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Body {
    #[serde(rename = "request.json")]
    Request,
    #[serde(rename = "response.json")]
    Response,
    /// AMQP: the message body.
    #[serde(rename = "body.json")]
    Message,
}

/// A fixed canonical status (`"SUBMITTED"`), or a JSON field mapped to canonical names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusSource {
    Fixed(String),
    Field(StatusField),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusField {
    pub from: Body,
    pub path: String,
    /// The system's own names → canonical ones. Values not in the map are used as they are
    /// when they are canonical names, and ignored otherwise (e.g. MES `QUEUED`).
    #[serde(default)]
    pub map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    pub from: Body,
    pub fields: Vec<String>,
}

impl ServiceRules {
    /// Checks what one service section can check alone; names unique across services are
    /// checked when the rule set is compiled.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("a [[service]] has an empty name; set name = \"<service.name>\"".into());
        }
        let mut seen = std::collections::HashSet::new();
        for rule in &self.rules {
            rule.validate()
                .map_err(|e| format!("service {:?}, rule {:?}: {e}", self.name, rule.name))?;
            if !seen.insert(rule.name.as_str()) {
                return Err(format!(
                    "service {:?}: rule name {:?} is used twice; rule names must be unique",
                    self.name, rule.name
                ));
            }
        }
        Ok(())
    }
}

impl RuleConfig {
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("empty rule name; give every rule a unique name = \"…\"".into());
        }
        match self.protocol {
            Protocol::Http => self.validate_http()?,
            Protocol::Amqp => self.validate_amqp()?,
        }
        if self.order_id.is_empty() {
            return Err("order_id needs at least one source".into());
        }
        for (what, source) in [("step", &self.step), ("status", &self.status)] {
            match source {
                Some(StatusSource::Fixed(name)) => check_canonical(what, name)?,
                Some(StatusSource::Field(field)) => {
                    if field.path.is_empty() {
                        return Err(format!("{what}: empty JSON path"));
                    }
                    for canonical in field.map.values() {
                        check_canonical(what, canonical)?;
                    }
                }
                None => {}
            }
        }
        if self.kind == RuleKind::Reference && (self.step.is_some() || self.status.is_some()) {
            return Err("a kind = \"reference\" rule names an order but sets no step or status; remove them or use kind = \"transition\"".into());
        }
        if self.kind == RuleKind::Lookup && self.status.is_none() {
            return Err(
                "a kind = \"lookup\" rule needs status = { from = \"response.json\", path = … }"
                    .into(),
            );
        }
        if let Some(key) = &self.key
            && (key.fields.is_empty() || key.fields.iter().any(String::is_empty))
        {
            return Err("key.fields must list non-empty JSON paths".into());
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), String> {
        let method = self.method.as_deref().unwrap_or_default();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "method {method:?} must be an upper-case HTTP method such as \"POST\""
            ));
        }
        let path = self
            .path
            .as_deref()
            .ok_or("an HTTP rule needs path = \"/…\" (or protocol = \"amqp\")")?;
        let template = super::template::Template::parse(path)?;
        if self.exchange.is_some() || self.routing_key.is_some() || self.queue.is_some() {
            return Err("exchange, routing_key and queue are for protocol = \"amqp\" rules".into());
        }
        for source in &self.order_id {
            match source {
                IdSource::Path { param } if template.param_index(param).is_none() => {
                    return Err(format!(
                        "order_id takes path parameter {{{param}}}, which the template {path:?} lacks"
                    ));
                }
                IdSource::RequestJson { path } | IdSource::ResponseJson { path }
                    if path.is_empty() =>
                {
                    return Err("order_id: empty JSON path".into());
                }
                IdSource::Property { .. } | IdSource::BodyJson { .. } => {
                    return Err("order_id from \"property\" or \"body.json\" is for protocol = \"amqp\" rules; use request.json or response.json".into());
                }
                _ => {}
            }
        }
        if self.bodies_used().any(|b| b == Body::Message) {
            return Err(
                "\"body.json\" is for protocol = \"amqp\" rules; use request.json or response.json"
                    .into(),
            );
        }
        Ok(())
    }

    fn validate_amqp(&self) -> Result<(), String> {
        if self.method.is_some() || self.path.is_some() || self.host.is_some() {
            return Err("method, path and host are for HTTP rules; an amqp rule matches exchange, routing_key or queue".into());
        }
        let templates = [&self.exchange, &self.routing_key, &self.queue];
        if templates.iter().all(|t| t.is_none()) {
            return Err("an amqp rule needs exchange, routing_key or queue".into());
        }
        for template in templates.into_iter().flatten() {
            super::template::Template::parse_name(template)?;
        }
        if self.kind == RuleKind::Lookup {
            return Err("kind = \"lookup\" is for HTTP rules (a message answers no lookup)".into());
        }
        for source in &self.order_id {
            match source {
                IdSource::Property { name } if !crate::amqp::method::is_text_property(name) => {
                    return Err(format!(
                        "order_id: {name:?} is not a text property of a message; use message-id, correlation-id, type, app-id, user-id or reply-to"
                    ));
                }
                IdSource::BodyJson { path } if path.is_empty() => {
                    return Err("order_id: empty JSON path".into());
                }
                IdSource::Path { .. }
                | IdSource::Query { .. }
                | IdSource::RequestJson { .. }
                | IdSource::ResponseJson { .. } => {
                    return Err("an amqp rule takes order_id from \"header\", \"property\" or \"body.json\"".into());
                }
                _ => {}
            }
        }
        if self.bodies_used().any(|b| b != Body::Message) {
            return Err("an amqp rule reads the message body: use from = \"body.json\"".into());
        }
        Ok(())
    }

    /// The bodies the rule's status, step and key read.
    fn bodies_used(&self) -> impl Iterator<Item = Body> + '_ {
        let field = |s: &Option<StatusSource>| match s {
            Some(StatusSource::Field(f)) => Some(f.from),
            _ => None,
        };
        [
            field(&self.step),
            field(&self.status),
            self.key.as_ref().map(|k| k.from),
        ]
        .into_iter()
        .flatten()
    }
}

fn check_canonical(what: &str, name: &str) -> Result<(), String> {
    if CANONICAL_STATUSES.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "{what}: {name:?} is not a canonical status; use one of {}",
            CANONICAL_STATUSES.join(", ")
        ))
    }
}

/// `order_id = { … }` or `order_id = [{ … }, { … }]`, with the inner error kept (an untagged
/// enum would only say "did not match any variant").
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table or an array of tables")
        }
        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Vec<T>, M::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|one| vec![one])
        }
        fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Vec<T>, S::Error> {
            Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }
    deserializer.deserialize_any(OneOrMany(PhantomData))
}

impl<'de> Deserialize<'de> for StatusSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = StatusSource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a canonical status name or { from = \"response.json\", path = \"…\", map = { … } }")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<StatusSource, E> {
                Ok(StatusSource::Fixed(value.to_string()))
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<StatusSource, M::Error> {
                StatusField::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(StatusSource::Field)
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}
