//! Path templates (`/api/v1/orders/{order_id}/submit`, `/static/*`) and AMQP name templates
//! (`priced.{region}`, `mes.work-orders.*`), compiled once at load so matching a record is a
//! walk over pre-split segments with no allocation.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A compiled path template: `{name}` matches exactly one non-empty segment, a final `*`
/// matches the rest of the path (zero or more segments).
#[derive(Clone, Debug)]
pub struct Template {
    segments: Vec<Segment>,
    tail: bool,
    /// `/` for paths (which start with one), `.` for AMQP names.
    separator: char,
}

/// The parameters one match captured, as (name index, raw segment) pairs.
pub type Captures<'p> = Vec<(usize, &'p str)>;

/// Segments split once per request, for every rule's template to compare against.
const MAX_SPLIT: usize = 16;

/// A request path split at '/' once, so trying each rule's template costs segment compares
/// rather than splitting the path again.
pub struct PathSegments<'p> {
    path: &'p str,
    /// (start, end) of each segment in `path`.
    bounds: [(u32, u32); MAX_SPLIT],
    len: usize,
    /// The path has more segments than were split (or is too long to split).
    more: bool,
}

impl<'p> PathSegments<'p> {
    /// `None` when the path does not start with '/'.
    pub fn split(path: &'p str) -> Option<Self> {
        let rest = path.strip_prefix('/')?;
        let mut segments = PathSegments {
            path,
            bounds: [(0, 0); MAX_SPLIT],
            len: 0,
            more: u32::try_from(path.len()).is_err(),
        };
        // "/" has no segments.
        if rest.is_empty() || segments.more {
            return Some(segments);
        }
        let mut start = 1;
        let ends = memchr::memchr_iter(b'/', rest.as_bytes()).map(|end| end + 1);
        for end in ends.chain([path.len()]) {
            if segments.len == MAX_SPLIT {
                segments.more = true;
                break;
            }
            segments.bounds[segments.len] = (start as u32, end as u32);
            segments.len += 1;
            start = end + 1;
        }
        Some(segments)
    }

    fn part(&self, i: usize) -> &'p str {
        let (start, end) = self.bounds[i];
        &self.path[start as usize..end as usize]
    }

    /// Segment `index` (0 = the first after the leading '/').
    pub fn get(&self, index: usize) -> Option<&'p str> {
        if index < self.len {
            return Some(self.part(index));
        }
        if !self.more {
            return None;
        }
        self.path[1..].split('/').nth(index)
    }
}

impl Template {
    pub fn parse(template: &str) -> Result<Self, String> {
        let rest = template.strip_prefix('/').ok_or_else(|| {
            format!("path template {template:?} must start with '/' (e.g. \"/api/v1/orders/{{order_id}}\")")
        })?;
        Self::parse_segments(template, rest, '/')
    }

    /// An AMQP exchange, routing key or queue template: `.`-separated segments; `""` matches
    /// only the empty name (the default exchange).
    pub fn parse_name(template: &str) -> Result<Self, String> {
        Self::parse_segments(template, template, '.')
    }

    fn parse_segments(template: &str, rest: &str, separator: char) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut tail = false;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(separator).collect()
        };
        for (i, part) in parts.iter().enumerate() {
            if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "path template {template:?}: '*' is only allowed as the last segment"
                    ));
                }
                tail = true;
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "path template {template:?}: parameter {part:?} needs a name of letters, digits and '_'"
                    ));
                }
                if segments
                    .iter()
                    .any(|s| *s == Segment::Param(name.to_string()))
                {
                    return Err(format!(
                        "path template {template:?}: parameter {{{name}}} appears twice"
                    ));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains(['{', '}', '*', '?', '#']) {
                return Err(format!(
                    "path template {template:?}: segment {part:?} mixes text with '{{', '}}', '*', '?' or '#'; \
                     a parameter must be a whole segment"
                ));
            } else if part.is_empty() && (i + 1 != parts.len() || separator == '.') {
                return Err(format!(
                    "template {template:?} has an empty segment (\"{separator}{separator}\")"
                ));
            } else {
                segments.push(Segment::Literal((*part).to_string()));
            }
        }
        Ok(Self {
            segments,
            tail,
            separator,
        })
    }

    /// The index of parameter `name`, to look captures up without string compares per match.
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.segments
            .iter()
            .position(|s| matches!(s, Segment::Param(p) if p == name))
    }

    /// Whether segment `index` (0 = the first after the leading '/') is fixed text of the
    /// template, i.e. configuration rather than something a client chose.
    pub fn is_literal(&self, index: usize) -> bool {
        matches!(self.segments.get(index), Some(Segment::Literal(_)))
    }

    /// Whether a split path (no query) matches.
    pub fn matches_segments(&self, path: &PathSegments<'_>) -> bool {
        if path.more {
            return self.matches(path.path).is_some();
        }
        if path.len < self.segments.len() || (!self.tail && path.len > self.segments.len()) {
            return false;
        }
        self.segments
            .iter()
            .enumerate()
            .all(|(i, segment)| match segment {
                Segment::Literal(text) => path.part(i) == text,
                Segment::Param(_) => !path.part(i).is_empty(),
            })
    }

    /// Matches a path (no query); returns the captured parameters, by segment index.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Captures<'p>> {
        let rest = if self.separator == '/' {
            path.strip_prefix('/')?
        } else {
            path
        };
        // "/" (or the empty name) has no segments (split would yield one empty one).
        let mut parts = rest.split(self.separator).filter(|_| !rest.is_empty());
        let mut captures = Vec::new();
        for (index, segment) in self.segments.iter().enumerate() {
            let part = parts.next()?;
            match segment {
                Segment::Literal(text) => {
                    if part != text {
                        return None;
                    }
                }
                Segment::Param(_) => {
                    if part.is_empty() {
                        return None;
                    }
                    captures.push((index, part));
                }
            }
        }
        if self.tail || parts.next().is_none() {
            Some(captures)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paths_match_as_whole_ones() {
        let templates = ["/", "/a/{id}", "/a/{id}/b", "/a/*", "/*", "/a/b/"];
        let long = format!("/a{}", "/x".repeat(40));
        let paths = [
            "/", "/a", "/a/", "/a/1", "/a/1/b", "/a/1/b/c", "/a/b/", "/b", &long,
        ];
        for template in templates {
            let t = Template::parse(template).unwrap();
            for path in paths {
                let split = PathSegments::split(path).unwrap();
                assert_eq!(
                    t.matches_segments(&split),
                    t.matches(path).is_some(),
                    "{template} {path}"
                );
            }
        }
        let split = PathSegments::split(&long).unwrap();
        assert_eq!(split.get(0), Some("a"));
        assert_eq!(split.get(40), Some("x"));
        assert_eq!(split.get(41), None);
        assert_eq!(PathSegments::split("/a/1").unwrap().get(2), None);
        assert!(PathSegments::split("a").is_none());
    }

    fn captured(template: &str, path: &str) -> Option<Vec<String>> {
        let t = Template::parse(template).unwrap();
        t.matches(path)
            .map(|c| c.into_iter().map(|(_, s)| s.to_string()).collect())
    }

    #[test]
    fn literal_and_param_segments() {
        assert_eq!(
            captured(
                "/api/v1/orders/{order_id}/submit",
                "/api/v1/orders/SO-1/submit"
            ),
            Some(vec!["SO-1".into()])
        );
        assert_eq!(
            captured(
                "/api/v1/orders/{order_id}/submit",
                "/api/v1/orders/SO-1/model"
            ),
            None
        );
        assert_eq!(
            captured("/api/v1/orders/{order_id}", "/api/v1/orders/SO-1/submit"),
            None
        );
        assert_eq!(
            captured("/api/v1/orders/{order_id}", "/api/v1/orders/"),
            None
        );
        assert_eq!(captured("/api/v1/orders", "/api/v1/orders"), Some(vec![]));
        assert_eq!(captured("/api/v1/orders", "/api/v1/orders/"), None);
        assert_eq!(captured("/", "/"), Some(vec![]));
        assert_eq!(captured("/", "/x"), None);
        assert_eq!(captured("/api/v1/orders", "api/v1/orders"), None);
    }

    #[test]
    fn tail_matches_zero_or_more_segments() {
        assert_eq!(captured("/static/*", "/static"), Some(vec![]));
        assert_eq!(captured("/static/*", "/static/a/b"), Some(vec![]));
        assert_eq!(captured("/{tenant}/*", "/t1/x"), Some(vec!["t1".into()]));
        assert_eq!(captured("/*", "/anything/at/all"), Some(vec![]));
    }

    #[test]
    fn bad_templates_are_rejected_with_a_reason() {
        for bad in [
            "api/x",
            "/a/*/b",
            "/a/{}",
            "/a/{x-y}",
            "/a/pre{x}",
            "/a//b",
            "/{x}/{x}",
        ] {
            let err = Template::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn amqp_names_match_by_dotted_segments() {
        let t = |template: &str, name: &str| {
            Template::parse_name(template)
                .unwrap()
                .matches(name)
                .is_some()
        };
        assert!(t("priced.{region}", "priced.eu"));
        assert!(!t("priced.{region}", "priced"));
        assert!(!t("priced.{region}", "priced.eu.x"));
        assert!(t("mes.work-orders.*", "mes.work-orders"));
        assert!(t("mes.work-orders.*", "mes.work-orders.rush"));
        assert!(t("", ""));
        assert!(!t("", "x"));
        assert!(t("shop.priced-orders", "shop.priced-orders"));
        assert!(Template::parse_name("a..b").is_err());
        assert!(Template::parse_name("a.*.b").is_err());
    }

    #[test]
    fn param_index_finds_names() {
        let t = Template::parse("/mes/api/work-orders/{orderRef}/transitions").unwrap();
        assert_eq!(t.param_index("orderRef"), Some(3));
        assert_eq!(t.param_index("order_id"), None);
    }
}
