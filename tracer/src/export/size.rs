//! What a span waiting for export costs in memory, estimated cheaply enough to do for every
//! span: the record itself, its names, its attributes' keys and text values. The queue's byte
//! bound (`[export] max_queue_bytes`) is kept with it.

use crate::spans::{AttrValue, Attributes, SpanRecord};

/// Bytes `span` holds, as far as the queue is concerned. Keys are counted whether owned or
/// static (a small overestimate, never an underestimate of what the span owns).
pub fn span_bytes(span: &SpanRecord) -> usize {
    let events: usize = span
        .events
        .iter()
        .map(|e| std::mem::size_of_val(e) + e.name.len() + attributes_bytes(&e.attributes))
        .sum();
    std::mem::size_of::<SpanRecord>()
        + span.name.len()
        + std::mem::size_of_val(span.links.as_slice())
        + attributes_bytes(&span.resource)
        + attributes_bytes(&span.attributes)
        + events
}

fn attributes_bytes(attributes: &Attributes) -> usize {
    attributes
        .iter()
        .map(|(key, value)| {
            let text = match value {
                AttrValue::Str(s) => s.len(),
                AttrValue::Bool(_) | AttrValue::Int(_) | AttrValue::Double(_) => 0,
            };
            ENTRY + key.len() + text
        })
        .sum()
}

/// One attribute's slot: its key (a `Cow`) and value.
const ENTRY: usize = std::mem::size_of::<(crate::spans::AttrKey, AttrValue)>();
