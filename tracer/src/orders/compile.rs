//! Compiling the `[[service]]` sections into a [`RuleSet`], once at load: templates parsed,
//! path parameters turned into segment indices, status names checked against the canonical
//! ones, and what needs the whole config checked (a service listed twice, a rule name used in
//! two services). A config that fails here does not load, so matching meets no bad rule.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    Body, CANONICAL_STATUSES, CompiledIdSource, CompiledStatus, IdSource, KEY_SECRET_ENV, Matcher,
    Protocol, Rule, RuleConfig, RuleKind, RuleSet, ServiceEntry, ServiceRules, Side, StatusSource,
    Template, canonical_status,
};

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
}

impl Rule {
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
}

impl CompiledStatus {
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
