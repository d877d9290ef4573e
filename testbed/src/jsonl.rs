//! JSON-lines files (truth file, request log): one JSON object per line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A JSON-lines file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JsonLinesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: not a {what} record ({source}); is it the right file?")]
    Parse {
        path: PathBuf,
        line: usize,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl JsonLinesError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| JsonLinesError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Reads every record of a JSON-lines file (blank lines are skipped); `what` names the
/// record type in errors.
pub fn read<T: DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Vec<T>, JsonLinesError> {
    let reader = BufReader::new(File::open(path).map_err(JsonLinesError::io(path))?);
    let mut records = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(JsonLinesError::io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|source| JsonLinesError::Parse {
            path: path.to_owned(),
            line: i + 1,
            what,
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}
