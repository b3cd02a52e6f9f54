//! The hospitals each contribution may be summed with, on disk.
//!
//! A node's contribution to one question (the study, the query in canonical
//! form, the round of a fit with its coefficients, the data snapshot, and
//! the day under differential privacy) is masked for one roster and
//! unmasked over one set of survivors, ever: the first mask commits it to
//! the roster's members, the first survivor list it signs or unmasks
//! narrows that to the survivors, and nothing widens or changes it again.
//! Two sums of the same question over different hospitals, whose
//! difference would be one hospital's figure, therefore never exist.
//!
//! JSON lines in `STATE_DIR/secagg.commitments.jsonl`, written and synced
//! before the masked answer, the signature or the revealed shares leave;
//! the last line of a key stands. A line cut short by a crash committed
//! nothing that left, and is dropped at start-up; any other bad line stops
//! the node rather than forget a commitment.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use plexus_core::{Error, Result};

pub const COMMITMENTS_FILE: &str = "secagg.commitments.jsonl";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    at: String,
    key: String,
    /// The nodes the contribution may be summed with, in id order.
    members: Vec<String>,
    session_id: String,
}

pub struct Commitments {
    path: PathBuf,
    inner: Mutex<(File, HashMap<String, Vec<String>>)>,
}

impl Commitments {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(COMMITMENTS_FILE);
        let io = |what: &str, e: std::io::Error| {
            Error::internal(format!(
                "cannot {what} {}: {e} (check the node's state folder)",
                path.display()
            ))
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("read", e)),
        };
        let complete = text.is_empty() || text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let mut keep = text.len();
        let mut map = HashMap::new();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(line) {
                Ok(l) => {
                    map.insert(l.key, l.members);
                }
                Err(_) if i + 1 == lines.len() && !complete => keep = text.len() - line.len(),
                Err(_) => {
                    return Err(Error::internal(format!(
                        "line {} of {} is not a secure aggregation commitment; the node will not forget what it committed to (restore the file from backup)",
                        i + 1,
                        path.display()
                    )))
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        if keep < text.len() {
            file.set_len(keep as u64).map_err(|e| io("repair", e))?;
        } else if !complete {
            file.write_all(b"\n").map_err(|e| io("repair", e))?;
        }
        Ok(Commitments {
            path,
            inner: Mutex::new((file, map)),
        })
    }

    /// The nodes the contribution under `key` may be summed with, if it
    /// was ever masked.
    pub fn get(&self, key: &str) -> Option<Vec<String>> {
        self.inner
            .lock()
            .expect("commitments lock")
            .1
            .get(key)
            .cloned()
    }

    /// Records, durably, that the contribution under `key` may be summed
    /// with `members` only (in id order). Nothing is written when that is
    /// already so.
    pub fn commit(&self, key: &str, members: &[String], session_id: &str) -> Result<()> {
        let mut inner = self.inner.lock().expect("commitments lock");
        if inner.1.get(key).map(Vec::as_slice) == Some(members) {
            return Ok(());
        }
        let line = Line {
            at: chrono::Utc::now().to_rfc3339(),
            key: key.to_string(),
            members: members.to_vec(),
            session_id: session_id.to_string(),
        };
        let mut bytes = serde_json::to_vec(&line).expect("a commitment serialises");
        bytes.push(b'\n');
        inner
            .0
            .write_all(&bytes)
            .and_then(|_| inner.0.sync_data())
            .map_err(|e| {
                Error::internal(format!(
                    "cannot write {}: {e}; nothing was sent (check the node's state folder)",
                    self.path.display()
                ))
            })?;
        inner.1.insert(key.to_string(), members.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commitments_survive_a_restart_and_the_last_one_stands() {
        let dir = tempfile::tempdir().unwrap();
        let c = Commitments::open(dir.path()).unwrap();
        let all: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        c.commit("k", &all, "s1").unwrap();
        c.commit("k", &all[..3], "s1").unwrap();
        c.commit("other", &all, "s2").unwrap();
        drop(c);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(COMMITMENTS_FILE))
            .unwrap();
        f.write_all(br#"{"at":"t","key":"k","mem"#).unwrap();
        drop(f);
        let again = Commitments::open(dir.path()).unwrap();
        assert_eq!(again.get("k"), Some(all[..3].to_vec()));
        assert_eq!(again.get("other"), Some(all.clone()));
        assert_eq!(again.get("new"), None);
        drop(again);
        let text = std::fs::read_to_string(dir.path().join(COMMITMENTS_FILE)).unwrap();
        std::fs::write(
            dir.path().join(COMMITMENTS_FILE),
            format!("garbage\n{text}"),
        )
        .unwrap();
        assert!(Commitments::open(dir.path()).is_err());
    }
}
