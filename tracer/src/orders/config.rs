//! The `[[service]]` / `[[service.rule]]` sections: which exchange means which order and
//! status. Deserialised as written, then compiled by [`super::RuleSet::compile`].

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

/// One rule: a request shape and where its order id and status are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique across the whole config; the monitor refers to rules by it (`order.rule`).
    pub name: String,
    /// HTTP method, upper case (`GET`, `POST`, …).
    pub method: String,
    /// Path template: `{name}` is one segment, a final `*` the rest of the path.
    pub path: String,
    /// Only requests whose `Host` header is this (`host` or `host:port`).
    #[serde(default)]
    pub host: Option<String>,
    /// Only requests that carry this header (and value, when given).
    #[serde(default)]
    pub header: Option<HeaderMatch>,
    /// Which side's exchanges the rule applies to: `server` (the owning service answered),
    /// `client` (a traced process called the owning service), or `both` (default).
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
}

/// Which JSON body a field is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Body {
    #[serde(rename = "request.json")]
    Request,
    #[serde(rename = "response.json")]
    Response,
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
        if self.method.is_empty() || !self.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "method {:?} must be an upper-case HTTP method such as \"POST\"",
                self.method
            ));
        }
        let template = super::template::Template::parse(&self.path)?;
        if self.order_id.is_empty() {
            return Err("order_id needs at least one source".into());
        }
        for source in &self.order_id {
            match source {
                IdSource::Path { param } if template.param_index(param).is_none() => {
                    return Err(format!(
                        "order_id takes path parameter {{{param}}}, which the template {:?} lacks",
                        self.path
                    ));
                }
                IdSource::RequestJson { path } | IdSource::ResponseJson { path }
                    if path.is_empty() =>
                {
                    return Err("order_id: empty JSON path".into());
                }
                _ => {}
            }
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
