//! Matching a record against the compiled rules and reading the order id, statuses and key
//! from the rule that fits: the part that runs for every exchange and message.

use std::borrow::Cow;

use super::json::LazyJson;
use super::template::{PathSegments, Template};
use super::{
    Body, CallSide, Classification, CompiledIdSource, CompiledStatus, LookupResult, Matcher,
    OrderMatch, Rule, RuleKind, RuleSet, canonical_status, extract, request_path,
};
use crate::amqp::{Operation, Transfer};
use crate::capture::Role;
use crate::http::Exchange;
use crate::spans::RecordRef;

impl RuleSet {
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
}
