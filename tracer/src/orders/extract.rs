//! Reading single values out of an exchange: path segments, query parameters, headers and
//! JSON fields. Everything read here stays in the agent; only the values a rule names leave.

use std::borrow::Cow;

/// Longest order id accepted; longer values are garbage or not ids at all.
pub const MAX_ORDER_ID_LEN: usize = 128;

/// The first value of query parameter `name` in a request target, percent-decoded.
pub(super) fn query_param<'t>(target: &'t str, name: &str) -> Option<Cow<'t, str>> {
    let (_, query) = target.split_once('?')?;
    let query = query.split('#').next().unwrap_or("");
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key).as_deref() == Some(name))
            .then(|| percent_decode(value))
            .flatten()
    })
}

/// `%XX` decoding (and `+` left as is: ids do not contain spaces). Invalid escapes or
/// non-UTF-8 results give `None`.
pub(super) fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.as_bytes().contains(&b'%') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// An order id as found, if it looks like one: non-empty, bounded, printable, no spaces.
pub fn clean_order_id(raw: &str) -> Option<String> {
    let id = raw.trim();
    let printable = |c: char| !c.is_control() && !c.is_whitespace();
    let plausible = !id.is_empty()
        && id.len() <= MAX_ORDER_ID_LEN
        && (id.bytes().all(|b| b.is_ascii_graphic()) || id.chars().all(printable));
    plausible.then(|| id.to_string())
}

/// `order.key`: the first 16 bytes of SHA-256 — HMAC-SHA-256 under `secret` when the
/// deployment has one — over the rule name and the key values, hex. The rule name keeps equal
/// values of unrelated rules apart; values are length-prefixed so `("ab","c")` and
/// `("a","bc")` differ. Never the raw values.
pub(super) fn key_hash(secret: Option<&[u8]>, rule: &str, values: &[Cow<'_, str>]) -> String {
    use hmac::{Mac, digest::Update};
    use sha2::{Digest, Sha256};
    fn feed(sink: &mut impl Update, rule: &str, values: &[Cow<'_, str>]) {
        sink.update(b"order-tracer/key/v1:");
        for part in std::iter::once(rule).chain(values.iter().map(|v| v.as_ref())) {
            sink.update(&(part.len() as u64).to_be_bytes());
            sink.update(part.as_bytes());
        }
    }
    let digest: [u8; 32] = match secret {
        Some(secret) => {
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret)
                .expect("HMAC takes a key of any length");
            feed(&mut mac, rule, values);
            mac.finalize().into_bytes().into()
        }
        None => {
            let mut hasher = Sha256::new();
            feed(&mut hasher, rule, values);
            hasher.finalize().into()
        }
    };
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_and_decoded() {
        assert_eq!(
            query_param("/x?a=1&order=SO%2D9&b", "order").as_deref(),
            Some("SO-9")
        );
        assert_eq!(query_param("/x?a=1", "order"), None);
        assert_eq!(query_param("/x", "order"), None);
        assert_eq!(query_param("/x?order=%zz", "order"), None);
        assert_eq!(query_param("/x?order=%4", "order"), None);
    }

    #[test]
    fn implausible_ids_are_refused() {
        assert_eq!(clean_order_id(" SO-1 "), Some("SO-1".into()));
        assert_eq!(clean_order_id(""), None);
        assert_eq!(clean_order_id("a b"), None);
        assert_eq!(clean_order_id(&"x".repeat(MAX_ORDER_ID_LEN + 1)), None);
    }

    fn values(v: &[&'static str]) -> Vec<Cow<'static, str>> {
        v.iter().map(|s| Cow::Borrowed(*s)).collect()
    }

    #[test]
    fn key_hash_separates_values() {
        let h = |v: &[&'static str]| key_hash(None, "r", &values(v));
        assert_eq!(h(&["c1", "cart"]), h(&["c1", "cart"]));
        assert_ne!(h(&["ab", "c"]), h(&["a", "bc"]));
        assert_eq!(h(&["c1", "cart"]).len(), 32);
    }

    #[test]
    fn a_secret_keys_the_hash() {
        let v = values(&["c1", "cart"]);
        let plain = key_hash(None, "r", &v);
        let keyed = key_hash(Some(b"fleet secret"), "r", &v);
        assert_ne!(plain, keyed, "without the secret, guesses can be tested");
        assert_eq!(
            keyed,
            key_hash(Some(b"fleet secret"), "r", &v),
            "stable across agents"
        );
        assert_ne!(keyed, key_hash(Some(b"other secret"), "r", &v));
        assert_eq!(keyed.len(), 32);
    }
}
