//! The request log: one JSON line per side of every HTTP exchange a traced service took part in.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::jsonl::{self, JsonLinesError};
use crate::service::Service;

/// Which side of the exchange the logging service was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The service answered.
    Server,
    /// The service called.
    Client,
}

/// One side of one exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLogRecord {
    pub service: Service,
    pub side: Side,
    pub method: String,
    /// Route template of the endpoint (the server's router template, e.g.
    /// `/api/v1/orders/{order_id}/model`); `null` for a path no route matched.
    pub route: Option<String>,
    pub path: String,
    pub order_id: Option<String>,
    /// `null` when no response came (timeout, connection closed).
    pub status_code: Option<u16>,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

/// Reads a request log (blank lines are skipped).
pub fn read_request_log(path: impl AsRef<Path>) -> Result<Vec<RequestLogRecord>, JsonLinesError> {
    jsonl::read(path.as_ref(), "request-log")
}

/// Appends records to a request log shared by several processes. Each record is one
/// `write` on an `O_APPEND` file, so lines from different processes never interleave.
#[derive(Debug, Default)]
pub struct RequestLog {
    file: Option<Mutex<File>>,
}

impl RequestLog {
    /// A log that drops every record (no `--request-log`).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Opens (creating if needed) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<Self, JsonLinesError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(JsonLinesError::io(path))?;
        Ok(Self {
            file: Some(Mutex::new(file)),
        })
    }

    /// Appends one record. A failed write is reported on stderr and otherwise ignored: the
    /// log is a test aid and must never stall the service.
    pub fn append(&self, record: &RequestLogRecord) {
        self.append_line(record);
    }

    /// Appends any record as one JSON line (the message log shares the mechanism).
    pub fn append_line(&self, record: &impl Serialize) {
        let Some(file) = &self.file else { return };
        let mut line = serde_json::to_vec(record).expect("a log record always serializes");
        line.push(b'\n');
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(&line) {
            eprintln!("request log: write failed ({e}); the record is lost");
        }
    }
}
