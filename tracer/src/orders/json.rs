//! The JSON fields a rule names, read straight from the body bytes: the document is checked
//! once (RFC 8259 grammar, UTF-8, nesting bounded) and each field found by walking its path
//! over the text, skipping what is not on the path. No tree is built; a field's text is
//! borrowed from the body unless it holds escapes.

use std::borrow::Cow;

/// Deeper nesting than this makes a document unreadable (as serde_json's default limit):
/// the checker recurses once per level.
const MAX_DEPTH: usize = 128;

/// A JSON body, checked at most once and only when a rule reads a field of it.
pub(super) struct LazyJson<'b> {
    body: &'b [u8],
    /// `None` until checked.
    valid: Option<bool>,
}

impl<'b> LazyJson<'b> {
    /// `usable` is false when the body was cut short: a JSON prefix is not JSON.
    pub(super) fn new(body: &'b [u8], usable: bool) -> Self {
        let valid = (!usable || body.is_empty()).then_some(false);
        Self { body, valid }
    }

    /// The text of the scalar at dotted `path` (object keys, and decimal indices into
    /// arrays): strings as they are, numbers and booleans as written. `None` when the body is
    /// no JSON document, has no such field, or the field is null, an object or an array.
    pub(super) fn text(&mut self, path: &str) -> Option<Cow<'b, str>> {
        let mut at = Cursor::new(self.body);
        match self.valid {
            Some(false) => return None,
            Some(true) => {
                at.ws();
                for step in path.split('.') {
                    at.enter(step)?;
                }
            }
            // The first field read checks the whole document on the way.
            None => {
                let found = check_document(self.body, Some(path));
                self.valid = Some(found.is_some());
                at.pos = found??;
            }
        }
        at.scalar()
    }
}

/// Checks that `body` is one JSON value with nothing but white space around it, and finds
/// the value at `path` (when given) on the way: `None` when it is no document, `Some(None)`
/// when it has no such value.
fn check_document(body: &[u8], path: Option<&str>) -> Option<Option<usize>> {
    std::str::from_utf8(body).ok()?;
    let mut at = Cursor::new(body);
    at.ws();
    let found = match path {
        Some(path) => at.check_find(path, 0)?,
        None => at.skip_value(0).map(|()| None)?,
    };
    at.ws();
    (at.pos == body.len()).then_some(found)
}

/// A position in a document. Every method returns `None` on bytes that break the grammar.
struct Cursor<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Cursor<'b> {
    fn new(bytes: &'b [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Skips the value at the cursor (no white space before it), checking it, and returns
    /// where the value at dotted `path` below it starts, if there is one.
    fn check_find(&mut self, path: &str, depth: usize) -> Option<Option<usize>> {
        let (step, rest) = match path.split_once('.') {
            Some((step, rest)) => (step, Some(rest)),
            None => (path, None),
        };
        // Where the value the step names starts, checked with whatever follows it.
        let descend = |at: &mut Self| match rest {
            Some(rest) => at.check_find(rest, depth + 1),
            None => {
                let start = at.pos;
                at.skip_value(depth + 1).map(|()| Some(start))
            }
        };
        let object = match self.peek()? {
            b'{' => true,
            b'[' => false,
            _ => return self.skip_value(depth).map(|()| None),
        };
        if depth >= MAX_DEPTH {
            return None;
        }
        let close = if object { b'}' } else { b']' };
        let index: Option<usize> = if object { None } else { step.parse().ok() };
        let mut found = None;
        self.pos += 1;
        self.ws();
        if self.eat(close).is_some() {
            return Some(None);
        }
        let mut n = 0;
        loop {
            let wanted = if object {
                let (key, escaped) = self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
                key_is(key, escaped, step)
            } else {
                index == Some(n)
            };
            n += 1;
            if wanted {
                // A repeated key reads as its last value, as a map would keep it.
                found = descend(self)?;
            } else {
                self.skip_value(depth + 1)?;
            }
            self.ws();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.ws();
                }
                b if b == close => {
                    self.pos += 1;
                    return Some(found);
                }
                _ => return None,
            }
        }
    }

    /// Skips the value at the cursor (no white space before it), checking it.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        // One loop over the tokens with the open containers on a bit stack (1 = object),
        // rather than a call per value: most of a body is skipped this way.
        let mut open: u128 = 0;
        let mut nested = 0usize;
        loop {
            // A value starts here.
            match self.peek()? {
                c @ (b'{' | b'[') => {
                    if depth + nested >= MAX_DEPTH {
                        return None;
                    }
                    let object = c == b'{';
                    open = (open << 1) | u128::from(object);
                    nested += 1;
                    self.pos += 1;
                    self.ws();
                    if self.eat(if object { b'}' } else { b']' }).is_none() {
                        if object {
                            self.member_key()?;
                        }
                        continue;
                    }
                    open >>= 1;
                    nested -= 1;
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => {
                    self.number()?;
                }
            }
            // A value ended: close what it ends, or go on to the next member or element.
            loop {
                if nested == 0 {
                    return Some(());
                }
                self.ws();
                let object = open & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.pos += 1;
                        self.ws();
                        if object {
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.pos += 1;
                open >>= 1;
                nested -= 1;
            }
        }
    }

    /// `"key" :` and the white space after it.
    fn member_key(&mut self) -> Option<()> {
        self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A number as written: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<&'b str> {
        let start = self.pos;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        std::str::from_utf8(&self.bytes[start..self.pos]).ok()
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// A string at the cursor: its raw contents (between the quotes) and whether they hold
    /// escapes.
    fn string(&mut self) -> Option<(&'b [u8], bool)> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = self.bytes.get(self.pos..)?;
            let n = rest
                .iter()
                .position(|b| matches!(b, b'"' | b'\\') || *b < 0x20)?;
            self.pos += n;
            match self.bytes[self.pos] {
                b'"' => {
                    let raw = &self.bytes[start..self.pos];
                    self.pos += 1;
                    return Some((raw, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    self.escape(&mut None)?;
                }
                _ => return None,
            }
        }
    }

    /// The escape after a backslash, appended to `out` when given.
    fn escape(&mut self, out: &mut Option<&mut String>) -> Option<()> {
        let c = match self.peek()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                self.pos += 1;
                let high = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&high) {
                    // A surrogate pair: the low half must follow as its own escape.
                    self.literal(b"\\u")?;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    high
                };
                let c = char::from_u32(code)?;
                if let Some(out) = out {
                    out.push(c);
                }
                return Some(());
            }
            _ => return None,
        };
        self.pos += 1;
        if let Some(out) = out {
            out.push(c);
        }
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        let code = u32::from_str_radix(text, 16).ok()?;
        // from_str_radix takes a leading '+', which JSON does not.
        digits.iter().all(u8::is_ascii_hexdigit).then_some(())?;
        self.pos += 4;
        Some(code)
    }

    /// Moves into the member `step` of the object (its last one, as a map would keep) or
    /// the element `step` of the array at the cursor.
    fn enter(&mut self, step: &str) -> Option<()> {
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                let mut found = None;
                self.ws();
                if self.eat(b'}').is_some() {
                    return None;
                }
                loop {
                    let (key, escaped) = self.string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    if key_is(key, escaped, step) {
                        found = Some(self.pos);
                    }
                    self.skip_value(0)?;
                    self.ws();
                    if self.eat(b',').is_none() {
                        break;
                    }
                    self.ws();
                }
                self.pos = found?;
                Some(())
            }
            b'[' => {
                let index: usize = step.parse().ok()?;
                self.pos += 1;
                self.ws();
                for _ in 0..index {
                    self.skip_value(0)?;
                    self.ws();
                    self.eat(b',')?;
                    self.ws();
                }
                // `[]` or an index past the end.
                (!matches!(self.peek()?, b']')).then_some(())
            }
            _ => None,
        }
    }

    /// The scalar at the cursor as text.
    fn scalar(&mut self) -> Option<Cow<'b, str>> {
        match self.peek()? {
            b'"' => {
                let (raw, escaped) = self.string()?;
                if !escaped {
                    return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
                }
                unescape(raw).map(Cow::Owned)
            }
            b't' => Some(Cow::Borrowed("true")),
            b'f' => Some(Cow::Borrowed("false")),
            b'n' | b'{' | b'[' => None,
            _ => self.number().map(Cow::Borrowed),
        }
    }
}

/// Whether a raw key (as between its quotes) is `want`.
fn key_is(raw: &[u8], escaped: bool, want: &str) -> bool {
    if !escaped {
        return raw == want.as_bytes();
    }
    unescape(raw).is_some_and(|key| key == want)
}

/// The contents of a string (between its quotes) with its escapes resolved.
fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut at = Cursor::new(raw);
    loop {
        let rest = &raw[at.pos..];
        let n = rest.iter().position(|b| *b == b'\\').unwrap_or(rest.len());
        out.push_str(std::str::from_utf8(&rest[..n]).ok()?);
        at.pos += n;
        if at.pos == raw.len() {
            return Some(out);
        }
        at.pos += 1;
        at.escape(&mut Some(&mut out))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(json: &str, path: &str) -> Option<String> {
        LazyJson::new(json.as_bytes(), true)
            .text(path)
            .map(Cow::into_owned)
    }

    #[test]
    fn paths_walk_objects_and_arrays() {
        let doc = r#" {"deal":{"order":{"id":"SO-1"}},"items":[{"n":7},{"n":-1.5e3}],"ok":true} "#;
        assert_eq!(field(doc, "deal.order.id").as_deref(), Some("SO-1"));
        assert_eq!(field(doc, "items.0.n").as_deref(), Some("7"));
        assert_eq!(field(doc, "items.1.n").as_deref(), Some("-1.5e3"));
        assert_eq!(field(doc, "ok").as_deref(), Some("true"));
        assert_eq!(field(doc, "items.2.n"), None);
        assert_eq!(field(doc, "items.x"), None);
        assert_eq!(field(doc, "deal.order.id.x"), None);
        assert_eq!(field(doc, "deal.missing"), None);
        assert_eq!(field(doc, "deal.order"), None, "objects are no scalar");
        assert_eq!(field(r#"{"a":null}"#, "a"), None);
        assert_eq!(field(r#"{"a":[]}"#, "a.0"), None);
    }

    #[test]
    fn escapes_are_resolved_in_keys_and_values() {
        let doc = r#"{"or\u0064er_id":"SO-\"1\"\n\u00e9\ud83d\ude00","x":"\/"}"#;
        assert_eq!(field(doc, "order_id").as_deref(), Some("SO-\"1\"\né😀"));
        assert_eq!(field(doc, "x").as_deref(), Some("/"));
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value() {
        assert_eq!(field(r#"{"id":"a","id":"b"}"#, "id").as_deref(), Some("b"));
    }

    #[test]
    fn anything_but_one_whole_document_gives_nothing() {
        let bad = [
            r#"{"order_id":"SO"#,
            r#"{"order_id":"SO-1"} x"#,
            r#"{"order_id":"SO-1",}"#,
            r#"{"order_id":"SO-1" "b":1}"#,
            r#"{"order_id":01}"#,
            r#"{"order_id":1.}"#,
            r#"{"order_id":"a\x"}"#,
            r#"{"order_id":"\ud800"}"#,
            r#"{"order_id":"\u+123"}"#,
            "{\"order_id\":\"tab\there\"}",
            r#"{order_id:1}"#,
            "",
        ];
        for doc in bad {
            assert_eq!(field(doc, "order_id"), None, "{doc:?}");
        }
        assert!(LazyJson::new(b"\xff\x00garbage", true).text("a").is_none());
        assert!(
            LazyJson::new(br#"{"order_id":"SO-1"}"#, false)
                .text("order_id")
                .is_none(),
            "a cut body is not read"
        );
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(field(&deep, "0"), None);
    }

    #[test]
    fn unescaped_text_is_borrowed() {
        let body = br#"{"id":"SO-1","n":12}"#;
        let mut json = LazyJson::new(body, true);
        assert!(matches!(json.text("id"), Some(Cow::Borrowed("SO-1"))));
        assert!(matches!(json.text("n"), Some(Cow::Borrowed("12"))));
    }

    proptest::proptest! {
        /// Whatever serde_json accepts as a document, the checker does too, and the reverse.
        #[test]
        fn checks_like_serde_json(bytes in proptest::collection::vec(
            proptest::sample::select(b" \t\n{}[]:,\"\\/ubfnrt0123456789-+.eEaxlsd\xc3\xa9".to_vec()),
            0..40,
        )) {
            let serde = serde_json::from_slice::<serde_json::Value>(&bytes);
            // serde_json also refuses numbers beyond f64 ("1e999"); their text is still JSON.
            let out_of_range = serde.as_ref().is_err_and(|e| e.to_string().contains("out of range"));
            if !out_of_range {
                let text = String::from_utf8_lossy(&bytes);
                let checked = check_document(&bytes, None).is_some();
                proptest::prop_assert_eq!(checked, serde.is_ok(), "{:?}", text);
                // Looking a field up checks the same.
                let found = check_document(&bytes, Some("a.0")).is_some();
                proptest::prop_assert_eq!(found, serde.is_ok(), "{:?}", text);
                if let Ok(value) = &serde {
                    let want = value.pointer("/a/0").and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Bool(b) => Some(b.to_string()),
                        serde_json::Value::Number(_) => Some(String::new()),
                        _ => None,
                    });
                    let got = LazyJson::new(&bytes, true).text("a.0").map(|t| {
                        if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) { String::new() } else { t.into_owned() }
                    });
                    proptest::prop_assert_eq!(got, want, "{:?}", text);
                }
            }
        }
    }
}
