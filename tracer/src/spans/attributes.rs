//! [`Attributes`]: a span's (or resource's) attributes, a small map kept sorted by key.
//!
//! A span carries about fifteen attributes, most with names known at compile time: a sorted
//! vector of borrowed-or-owned keys costs one allocation per map where a `BTreeMap<String, _>`
//! cost one per key and per node, and it iterates in the same (sorted) order.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::AttrValue;

/// An attribute name: a `&'static str` for the names the tracer sets, owned for names read
/// from the wire.
pub type AttrKey = Cow<'static, str>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes {
    /// Sorted by key, keys unique.
    entries: Vec<(AttrKey, AttrValue)>,
}

impl Attributes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Attributes {
            entries: Vec::with_capacity(n),
        }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_ref().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`; returns the value it replaces.
    pub fn insert(&mut self, key: AttrKey, value: AttrValue) -> Option<AttrValue> {
        // Built in key order, a span's attributes only ever append.
        if self.entries.last().is_none_or(|(last, _)| *last < key) {
            self.entries.push((key, value));
            return None;
        }
        match self.find(key.as_ref()) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Sets `key` to `value()` unless it is set already.
    pub fn insert_missing(&mut self, key: &str, value: impl FnOnce() -> AttrValue) {
        if let Err(i) = self.find(key) {
            self.entries
                .insert(i, (Cow::Owned(key.to_string()), value()));
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<AttrValue> {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Keeps the attributes `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut AttrValue) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// In key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &AttrValue)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<AttrKey>> FromIterator<(K, AttrValue)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, AttrValue)>>(items: I) -> Self {
        let mut map = Attributes::new();
        for (key, value) in items {
            map.insert(key.into(), value);
        }
        map
    }
}

impl<const N: usize> From<[(AttrKey, AttrValue); N]> for Attributes {
    fn from(items: [(AttrKey, AttrValue); N]) -> Self {
        items.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a str, &'a AttrValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (AttrKey, AttrValue)>,
        fn(&'a (AttrKey, AttrValue)) -> (&'a str, &'a AttrValue),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl IntoIterator for Attributes {
    type Item = (AttrKey, AttrValue);
    type IntoIter = std::vec::IntoIter<(AttrKey, AttrValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl std::ops::Index<&str> for Attributes {
    type Output = AttrValue;
    /// Panics when `key` is not set, as a map's index does.
    fn index(&self, key: &str) -> &AttrValue {
        self.get(key)
            .unwrap_or_else(|| panic!("attribute {key:?} is not set"))
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, AttrValue>::deserialize(deserializer)?;
        Ok(Attributes {
            entries: map.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_sorted_map() {
        let mut map = Attributes::from([
            ("b".into(), AttrValue::Int(2)),
            ("a".into(), AttrValue::Int(1)),
            ("c".into(), AttrValue::Int(3)),
        ]);
        assert_eq!(
            map.insert("b".into(), AttrValue::Int(20)),
            Some(AttrValue::Int(2))
        );
        assert_eq!(
            map.insert(String::from("d").into(), AttrValue::Bool(true)),
            None
        );
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(map.get("b"), Some(&AttrValue::Int(20)));
        assert_eq!(map.remove("a"), Some(AttrValue::Int(1)));
        assert!(!map.contains_key("a") && map.len() == 3);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, r#"{"b":20,"c":3,"d":true}"#);
        assert_eq!(serde_json::from_str::<Attributes>(&json).unwrap(), map);
    }
}
