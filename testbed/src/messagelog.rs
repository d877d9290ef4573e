//! The message log: one JSON line per message a traced service published or consumed
//! through the broker, beside the request log (`--message-log FILE`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::jsonl::{self, JsonLinesError};
use crate::requestlog::RequestLog;
use crate::service::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageSide {
    /// The service published the message (with publisher confirms).
    Publish,
    /// The service consumed it (with manual acks).
    Consume,
}

/// How the message was settled, as the service saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageOutcome {
    /// Publish: the broker confirmed it. Consume: the service acknowledged it.
    Acked,
    /// Publish: the broker returned it (unroutable, mandatory).
    Returned,
    /// Publish: the broker refused it.
    Nacked,
    /// Consume: the service never acknowledges it.
    Unacked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLogRecord {
    pub service: Service,
    pub side: MessageSide,
    pub exchange: String,
    pub routing_key: String,
    /// The queue a consumed message came from.
    pub queue: Option<String>,
    pub order_id: String,
    pub outcome: MessageOutcome,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

/// Reads a message log (blank lines are skipped).
pub fn read_message_log(path: impl AsRef<Path>) -> Result<Vec<MessageLogRecord>, JsonLinesError> {
    jsonl::read(path.as_ref(), "message-log")
}

/// Appends a record to a log shared by several processes (one `write` per line).
pub fn append(log: &RequestLog, record: &MessageLogRecord) {
    log.append_line(record);
}
