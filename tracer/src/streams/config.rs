//! The `[streams]` section: how much the agent holds per connection and how long it waits.

use serde::Deserialize;

use crate::http::HeaderFilter;
use crate::http::head::{Limits, MAX_HEADERS_CEILING};

/// `[streams]`: bounds of per-connection reassembly and of the protocols' parsing (HTTP, AMQP). Every bound, when hit,
/// drops data and counts it (see `StreamCounters`); none blocks the traced process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// Connections followed at once. A new one beyond this makes the agent forget the least
    /// recently active (`connections_evicted`).
    pub max_connections: usize,
    /// Bytes held over all connections at once: reassembly buffers (partial frames
    /// included), the HTTP messages being assembled (heads, body prefixes) and the AMQP
    /// messages being assembled or waiting for their settlement (names, properties, body
    /// prefixes). Beyond it the largest holders drop what they hold, whole messages at a
    /// time, and resync (`connections_shed`, `shed_bytes`, `shed_requests`,
    /// `shed_messages`): an agent facing many slow, huge messages stays within its memory.
    /// At least `max_buffered_bytes` + `max_body_bytes`, so one connection fits.
    pub max_total_bytes: usize,
    /// Bytes held per connection and direction while a head, a chunk-size line or a
    /// resync window is incomplete. Beyond it they are dropped (`dropped_over_budget`) and
    /// the direction resyncs on the next message start. At least `max_header_bytes`.
    pub max_buffered_bytes: usize,
    /// Longest message head (start line, headers, blank line) parsed; a longer one is
    /// dropped (`oversized_heads`).
    pub max_header_bytes: usize,
    /// Most headers in one head (at most 256); more drops the message (`oversized_heads`).
    pub max_headers: usize,
    /// Decoded body bytes kept per message: the order rules read JSON fields from this
    /// prefix. Bodies never leave the agent.
    pub max_body_bytes: usize,
    /// Requests waiting for responses on one connection (pipelining); more are dropped
    /// (`pending_overflow`).
    pub max_pending_requests: usize,
    /// A request still unanswered this long after its last byte is reported with outcome
    /// `Timeout`.
    pub response_timeout_ms: u64,
    /// A connection with no traffic this long is forgotten (its close was missed). At least
    /// `response_timeout_ms` and `ack_timeout_ms`, so unanswered requests and unsettled
    /// messages time out first.
    pub idle_timeout_ms: u64,
    /// AMQP: a publish the broker has not confirmed, or a delivery the consumer has not
    /// acknowledged, this long after it arrived is reported unsettled (`timeout`): the
    /// consumer that never acks (an overloaded one) shows as such.
    pub ack_timeout_ms: u64,
    /// AMQP: messages waiting for a confirm or an ack on one connection; more are dropped
    /// (`unsettled_overflow`). Set it above the consumers' prefetch. Their bytes count in
    /// `max_total_bytes` too.
    pub max_unsettled_messages: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            max_connections: 16_384,
            max_total_bytes: 32 << 20,
            max_buffered_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 64 * 1024,
            max_pending_requests: 64,
            response_timeout_ms: 30_000,
            idle_timeout_ms: 600_000,
            ack_timeout_ms: 30_000,
            max_unsettled_messages: 1024,
        }
    }
}

impl StreamsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("max_buffered_bytes", self.max_buffered_bytes as u64),
            ("max_header_bytes", self.max_header_bytes as u64),
            ("max_headers", self.max_headers as u64),
            ("max_pending_requests", self.max_pending_requests as u64),
            ("response_timeout_ms", self.response_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("max_unsettled_messages", self.max_unsettled_messages as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("[streams] {name} must be greater than 0"));
        }
        if self.max_headers > MAX_HEADERS_CEILING {
            return Err(format!(
                "[streams] max_headers is {}; set it to at most {MAX_HEADERS_CEILING}",
                self.max_headers
            ));
        }
        if self.max_buffered_bytes < self.max_header_bytes {
            return Err(format!(
                "[streams] max_buffered_bytes ({}) must be at least max_header_bytes ({}): a \
                 head is buffered whole before it is parsed",
                self.max_buffered_bytes, self.max_header_bytes
            ));
        }
        let one_connection = self.max_buffered_bytes + self.max_body_bytes;
        if self.max_total_bytes < one_connection {
            return Err(format!(
                "[streams] max_total_bytes ({}) must be at least max_buffered_bytes + \
                 max_body_bytes ({one_connection}): one connection's message must fit",
                self.max_total_bytes
            ));
        }
        if self.idle_timeout_ms < self.response_timeout_ms.max(self.ack_timeout_ms) {
            return Err(format!(
                "[streams] idle_timeout_ms ({}) must be at least response_timeout_ms ({}) and \
                 ack_timeout_ms ({}), or unanswered requests and unsettled messages are \
                 forgotten before they time out",
                self.idle_timeout_ms, self.response_timeout_ms, self.ack_timeout_ms
            ));
        }
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes,
            headers: HeaderFilter::ALL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sections_parse() {
        StreamsConfig::default().validate().unwrap();
        let c: StreamsConfig = toml::from_str("max_body_bytes = 1024\n").unwrap();
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.response_timeout_ms, 30_000);
        assert!(toml::from_str::<StreamsConfig>("max_bodies = 1\n").is_err());
    }

    #[test]
    fn bad_values_say_what_to_change() {
        let check = |c: StreamsConfig, needle: &str| {
            let err = c.validate().unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        let d = StreamsConfig::default;
        check(
            StreamsConfig {
                max_connections: 0,
                ..d()
            },
            "max_connections",
        );
        check(
            StreamsConfig {
                max_headers: 1000,
                ..d()
            },
            "at most 256",
        );
        check(
            StreamsConfig {
                max_buffered_bytes: 1024,
                ..d()
            },
            "max_buffered_bytes",
        );
        check(
            StreamsConfig {
                idle_timeout_ms: 1,
                ..d()
            },
            "idle_timeout_ms",
        );
    }
}
