//! The truth file: what the driver really did to every order (JSON lines).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::faults::{Detection, FaultKind};
use crate::jsonl::{self, JsonLinesError};
use crate::service::Service;
use crate::status::Status;

/// One order of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthRecord {
    pub order_id: String,
    /// The furthest status the systems really reached.
    pub final_status: Option<Status>,
    /// Faults injected into this order (at most one).
    pub faults: Vec<FaultRecord>,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// What the monitor should raise.
    pub detection: Detection,
    /// The canonical status the order failed to reach.
    pub step: Status,
    /// The service the fault is charged to.
    pub service: Service,
    /// When the fault was played.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl FaultRecord {
    /// A fault of `kind` played at `at`, with the fault table's columns.
    pub fn new(kind: FaultKind, at: OffsetDateTime) -> Self {
        let (detection, step, service) = kind.table_row();
        FaultRecord {
            kind,
            detection,
            step,
            service,
            at,
        }
    }
}

/// Reads a truth file (blank lines are skipped).
pub fn read_truth(path: impl AsRef<Path>) -> Result<Vec<TruthRecord>, JsonLinesError> {
    jsonl::read(path.as_ref(), "truth")
}

/// Writes a truth file, replacing any file at `path`.
pub fn write_truth(path: impl AsRef<Path>, records: &[TruthRecord]) -> Result<(), JsonLinesError> {
    let path = path.as_ref();
    let io = JsonLinesError::io(path);
    let mut out = BufWriter::new(File::create(path).map_err(JsonLinesError::io(path))?);
    for record in records {
        let line = serde_json::to_string(record).expect("a truth record always serializes");
        writeln!(out, "{line}").map_err(JsonLinesError::io(path))?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_round_trips_through_the_file() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        let records = vec![
            TruthRecord {
                order_id: "SO-000001".into(),
                final_status: Some(Status::Shipped),
                faults: vec![FaultRecord::new(FaultKind::CarrierWebhookLost, at)],
            },
            TruthRecord {
                order_id: "SO-000002".into(),
                final_status: Some(Status::Closed),
                faults: vec![],
            },
        ];
        let path = std::env::temp_dir().join(format!("truth-{}.jsonl", std::process::id()));
        write_truth(&path, &records).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let back = read_truth(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, records);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["faults"][0]["detection"], "stuck");
        assert_eq!(first["faults"][0]["service"], "crm-api");
        assert_eq!(first["faults"][0]["at"], "2026-11-18T11:06:40.123456789Z");
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let path = std::env::temp_dir().join(format!("truth-bad-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"order_id\":\"SO-1\",\"final_status\":\"CLOSED\",\"faults\":[]}\n\n{\"order_id\":1}\n").unwrap();
        let err = read_truth(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, JsonLinesError::Parse { line: 3, .. }),
            "{err}"
        );
    }
}
