//! The node's own append-only log of every job it ran or refused, kept
//! next to the hospital's data so its IT can see what was asked of it
//! without trusting the coordinator. JSON lines, flushed to disk per entry.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One job as the node saw it. Never holds patient data or counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub at: String,
    pub job_id: String,
    pub study_id: String,
    pub purpose: String,
    pub query_hash: String,
    pub analysis: String,
    /// `released`, `refused:<code>` or `failed:<code>`; for a study under
    /// review `held`, then `reviewed-approved`, `reviewed-rejected` or
    /// `review-expired`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

pub struct JobLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl JobLog {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("jobs.log.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(JobLog {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, entry: &LogEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().expect("log lock");
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Reads every entry back, e.g. for an auditor or a test.
    pub fn read_all(path: &Path) -> std::io::Result<Vec<LogEntry>> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}
