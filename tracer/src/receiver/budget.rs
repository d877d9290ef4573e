//! What an OTLP trace request would cost once decoded, counted on the wire before anything
//! is decoded. Decoded spans are far larger than their encoding (an empty span is 2 bytes on
//! the wire and a few hundred in memory), so a size limit on the body alone does not bound
//! memory: this walk counts every span, event, link and attribute value first, and the
//! receiver refuses a request whose estimate is over its budget.

use std::mem::size_of;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};

/// Nesting of attribute values (arrays, maps) walked; deeper is refused.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    pub spans: usize,
    /// Estimated bytes of the decoded request: the wire bytes (strings are copied) plus every
    /// struct, twice (a vector's spare capacity).
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not an OTLP ExportTraceServiceRequest: {0}")]
    Malformed(&'static str),
    #[error("the request would take more than {limit} bytes decoded; send smaller batches")]
    OverBudget { limit: usize },
}

/// A protobuf field: number and, for length-delimited ones, the payload.
struct Field<'a> {
    number: u64,
    payload: Option<&'a [u8]>,
}

struct Wire<'a> {
    bytes: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, Refusal> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or(Refusal::Malformed("truncated varint"))?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Refusal::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        if n > self.bytes.len() {
            return Err(Refusal::Malformed("field runs past the end"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<Field<'a>>, Refusal> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        let payload = match key & 7 {
            0 => {
                self.varint()?;
                None
            }
            1 => {
                self.take(8)?;
                None
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Refusal::Malformed("length too large"))?;
                Some(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                None
            }
            _ => return Err(Refusal::Malformed("unsupported wire type")),
        };
        if number == 0 {
            return Err(Refusal::Malformed("field number 0"));
        }
        Ok(Some(Field { number, payload }))
    }
}

/// Calls `each` with the payload of every length-delimited field numbered `number`.
fn each_message(
    bytes: &[u8],
    number: u64,
    mut each: impl FnMut(&[u8]) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    let mut wire = Wire { bytes };
    while let Some(field) = wire.next()? {
        if field.number == number
            && let Some(payload) = field.payload
        {
            each(payload)?;
        }
    }
    Ok(())
}

struct Counter {
    cost: Cost,
    limit: usize,
}

impl Counter {
    fn add(&mut self, bytes: usize) -> Result<(), Refusal> {
        self.cost.bytes = self.cost.bytes.saturating_add(2 * bytes);
        if self.cost.bytes > self.limit {
            return Err(Refusal::OverBudget { limit: self.limit });
        }
        Ok(())
    }

    /// A `KeyValue` list (field `number` of `bytes`).
    fn attributes(&mut self, bytes: &[u8], number: u64, depth: usize) -> Result<(), Refusal> {
        each_message(bytes, number, |kv| {
            self.add(size_of::<KeyValue>())?;
            each_message(kv, 2, |value| self.any_value(value, depth + 1))
        })
    }

    fn any_value(&mut self, bytes: &[u8], depth: usize) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return Err(Refusal::Malformed("attribute values nested too deep"));
        }
        self.add(size_of::<AnyValue>())?;
        let mut wire = Wire { bytes };
        while let Some(field) = wire.next()? {
            match (field.number, field.payload) {
                // ArrayValue: repeated AnyValue values = 1.
                (5, Some(array)) => {
                    each_message(array, 1, |value| self.any_value(value, depth + 1))?
                }
                // KeyValueList: repeated KeyValue values = 1.
                (6, Some(list)) => self.attributes(list, 1, depth + 1)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn span(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        self.cost.spans += 1;
        self.add(size_of::<Span>())?;
        self.attributes(bytes, 9, 0)?;
        each_message(bytes, 11, |event| {
            self.add(size_of::<span::Event>())?;
            self.attributes(event, 3, 0)
        })?;
        each_message(bytes, 13, |link| {
            self.add(size_of::<span::Link>())?;
            self.attributes(link, 4, 0)
        })
    }
}

/// The cost of `wire` (an `ExportTraceServiceRequest`) decoded, or why it is refused:
/// malformed, or over `limit` bytes. Stops counting as soon as the limit is passed.
pub fn cost(wire: &[u8], limit: usize) -> Result<Cost, Refusal> {
    let mut counter = Counter {
        cost: Cost::default(),
        limit,
    };
    counter.add(wire.len() / 2)?;
    each_message(wire, 1, |resource_spans| {
        counter.add(size_of::<ResourceSpans>())?;
        // Resource { attributes = 1 }.
        each_message(resource_spans, 1, |resource| {
            counter.attributes(resource, 1, 0)
        })?;
        each_message(resource_spans, 2, |scope_spans| {
            counter.add(size_of::<ScopeSpans>())?;
            // InstrumentationScope { attributes = 3 }.
            each_message(scope_spans, 1, |scope| counter.attributes(scope, 3, 0))?;
            each_message(scope_spans, 2, |span| counter.span(span))
        })
    })?;
    Ok(counter.cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    fn empty_spans(n: usize) -> Vec<u8> {
        let spans: Vec<u8> = std::iter::repeat_n([0x12u8, 0x00], n).flatten().collect();
        let scope = ScopeSpans {
            spans: vec![Span::default(); n],
            ..Default::default()
        };
        assert_eq!(scope.encode_to_vec(), spans);
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![scope],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn the_estimate_covers_what_prost_allocates() {
        let wire = empty_spans(1000);
        let cost = cost(&wire, usize::MAX).unwrap();
        assert_eq!(cost.spans, 1000);
        assert!(cost.bytes >= 1000 * size_of::<Span>(), "{cost:?}");
        let real = crate::receiver::otlp_from_spans(&[crate::receiver::tests::span()]);
        let cost = super::cost(&real.encode_to_vec(), usize::MAX).unwrap();
        assert_eq!(cost.spans, 1);
    }

    #[test]
    fn eight_mebibytes_of_empty_spans_are_refused_before_decoding() {
        let wire = empty_spans(4 * 1024 * 1024);
        assert_eq!(wire.len() / (1024 * 1024), 8);
        assert_eq!(
            cost(&wire, 64 << 20),
            Err(Refusal::OverBudget { limit: 64 << 20 })
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&[0x0a, 0x05, 0x01][..], &[0xff; 11], &[0x0b], &[0x00, 0x00]] {
            assert!(matches!(cost(bytes, 1 << 20), Err(Refusal::Malformed(_))));
        }
        // Values nested deeper than MAX_DEPTH.
        let mut value = AnyValue::default();
        for _ in 0..40 {
            value = AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::ArrayValue(
                        opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![value],
                        },
                    ),
                ),
            };
        }
        let span = Span {
            attributes: vec![KeyValue {
                key: "k".into(),
                value: Some(value),
                ..Default::default()
            }],
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert!(matches!(
            cost(&request.encode_to_vec(), 1 << 20),
            Err(Refusal::Malformed(_))
        ));
    }
}
