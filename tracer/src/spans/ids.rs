//! The ids that make one trace of each order: functions of the order id, so every agent on
//! every host derives the same ones, and a bounded cache so each order's are computed once
//! per agent rather than once per span.

use std::collections::HashMap;

const TRACE_ID_DOMAIN: &[u8] = b"order-tracer/trace/v1:";
const ROOT_SPAN_DOMAIN: &[u8] = b"order-tracer/root/v1:";

/// The trace id of an order: the first 16 bytes of SHA-256(`order-tracer/trace/v1:` + id).
/// Stable across hosts, services and days, so every span that names the order lands in one
/// trace. In Python: `hashlib.sha256(b"order-tracer/trace/v1:" + oid.encode()).hexdigest()[:32]`.
pub fn order_trace_id(order_id: &str) -> [u8; 16] {
    let digest = domain_hash(TRACE_ID_DOMAIN, order_id);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    non_zero(&mut id);
    id
}

/// The span id of an order's root span (emitted by the lifecycle monitor): the first 8 bytes
/// of SHA-256(`order-tracer/root/v1:` + id). Exchange spans name it as their parent.
pub fn order_root_span_id(order_id: &str) -> [u8; 8] {
    let digest = domain_hash(ROOT_SPAN_DOMAIN, order_id);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    non_zero(&mut id);
    id
}

fn domain_hash(domain: &[u8], order_id: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(domain);
    hasher.update(order_id.as_bytes());
    hasher.finalize().into()
}

/// All-zero ids are invalid in OpenTelemetry; a digest that starts with 16 zero bytes is
/// practically impossible, but the fix-up keeps the function total.
fn non_zero(id: &mut [u8]) {
    if id.iter().all(|b| *b == 0)
        && let Some(last) = id.last_mut()
    {
        *last = 1;
    }
}

/// Orders whose ids the cache holds, per generation: about 2 × 4096 × 100 bytes at most.
const CACHE_GENERATION: usize = 4096;

/// An order's trace id and root span id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrderIds {
    pub trace_id: [u8; 16],
    pub root_span_id: [u8; 8],
}

/// The ids of recently seen orders. An order's exchanges come close together (its steps,
/// their client and server sides), so two generations of a bounded size keep nearly every
/// hit: a full current generation becomes the previous one, dropping the one before.
#[derive(Debug, Default)]
pub(crate) struct IdCache {
    current: HashMap<Box<str>, OrderIds>,
    previous: HashMap<Box<str>, OrderIds>,
}

impl IdCache {
    pub fn get(&mut self, order_id: &str) -> OrderIds {
        if let Some(ids) = self.current.get(order_id) {
            return *ids;
        }
        let ids = match self.previous.remove(order_id) {
            Some(ids) => ids,
            None => OrderIds {
                trace_id: order_trace_id(order_id),
                root_span_id: order_root_span_id(order_id),
            },
        };
        if self.current.len() >= CACHE_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(order_id.into(), ids);
        ids
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn the_cache_gives_the_derived_ids_and_stays_bounded() {
        let mut cache = IdCache::default();
        for round in 0..2 {
            for n in 0..3 * CACHE_GENERATION {
                let id = format!("SO-{n}");
                let ids = cache.get(&id);
                assert_eq!(ids.trace_id, order_trace_id(&id), "round {round}");
                assert_eq!(ids.root_span_id, order_root_span_id(&id));
            }
        }
        assert!(cache.current.len() + cache.previous.len() <= 2 * CACHE_GENERATION);
    }

    #[test]
    fn trace_id_matches_the_documented_python_one_liner() {
        // python3 -c 'import hashlib; print(hashlib.sha256(b"order-tracer/trace/v1:ord-1").hexdigest()[:32])'
        assert_eq!(
            hex::encode(order_trace_id("ord-1")),
            "a5f2507f5c5d9a01f0653511f49b1326"
        );
        assert_eq!(hex::encode(order_root_span_id("ord-1")), "4be63fe819188f3b");
    }

    #[test]
    fn ids_differ_per_order_and_per_domain() {
        assert_ne!(order_trace_id("a"), order_trace_id("b"));
        assert_ne!(order_trace_id("a")[..8], order_root_span_id("a"));
    }
}
