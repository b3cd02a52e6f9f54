//! The node's own privacy ledger: how much of each study's zCDP budget
//! (ρ) this hospital has spent. A debit is written and synced to disk
//! before anything it pays for is released, so a crash can lose a release
//! but never a debit; the totals are rebuilt from the file at start-up.
//!
//! Each debit also holds the answer it paid for, under a key made of the
//! study, the query's canonical hash, the data snapshot, the day and the
//! cost: the same query asked again on the same data gets the same answer
//! back, free, so repeating a query cannot average its noise away. The key
//! is built from the query's wording in canonical form, never from which
//! patients it selects, so it says nothing about whether two cohorts hold
//! the same patients.
//!
//! JSON lines in `STATE_DIR/privacy.ledger.jsonl`. A line cut short by a
//! crash during its write paid for nothing (the release waits for the
//! sync), so it is dropped at start-up with a warning; any other bad line
//! stops the node, because guessing a spent budget is not safe.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use plexus_core::privacy::release::NoiseScale;
use plexus_core::{Error, NodeStats, Result};

/// A released answer, kept so that asking again returns it unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub key: String,
    #[serde(flatten)]
    pub kept: Kept,
    pub noise: NoiseScale,
}

/// What a kept answer holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kept {
    /// The statistics released: in the clear, or under secure aggregation
    /// masked afresh for every session (a repeat gets the same noised
    /// values under new masks, for no new charge).
    Stats(NodeStats),
    /// What a node before the current secure aggregation kept for a secure
    /// aggregate: a noised sum with no disclosure control, which is never
    /// masked or sent again. Read so that the debit it paid for still
    /// counts; newer nodes key their kept answers so that none of these
    /// is ever looked up.
    Contribution(serde_json::Value),
    /// A refusal decided on the noised values the debit paid for (a
    /// model's level rule, say): asking again gets the same refusal, free.
    Refused(Error),
}

/// One debit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debit {
    pub at: String,
    pub study_id: String,
    pub job_id: String,
    pub query_hash: String,
    pub rho: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
}

/// What a study has spent and has left at this node after a debit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    pub spent: f64,
    pub remaining: f64,
}

struct Inner {
    file: File,
    spent: BTreeMap<String, f64>,
    answers: HashMap<String, Answer>,
}

pub struct Ledger {
    path: PathBuf,
    inner: Mutex<Inner>,
}

/// Rounding slack when comparing sums of ρ with a budget.
const SLACK: f64 = 1e-12;

impl Ledger {
    /// Opens (or creates) the ledger in `dir` and rebuilds every study's
    /// spent budget from it.
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |what: &str, e: std::io::Error| {
            Error::internal(format!(
                "cannot {what} the privacy ledger in {}: {e} (check the node's state folder)",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
        let path = dir.join("privacy.ledger.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("read", e)),
        };
        let mut spent: BTreeMap<String, f64> = BTreeMap::new();
        let mut answers = HashMap::new();
        let complete = text.ends_with('\n') || text.is_empty();
        let lines: Vec<&str> = text.lines().collect();
        let mut keep = text.len();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let last = i + 1 == lines.len();
            match serde_json::from_str::<Debit>(line) {
                Ok(d) if d.rho.is_finite() && d.rho >= 0.0 => {
                    *spent.entry(d.study_id).or_default() += d.rho;
                    if let Some(a) = d.answer {
                        answers.insert(a.key.clone(), a);
                    }
                }
                _ if last && !complete => {
                    tracing::warn!(
                        path = %path.display(),
                        "dropping a privacy ledger line cut short by a crash (it paid for no release)"
                    );
                    keep = text.len() - line.len();
                }
                _ => {
                    return Err(Error::internal(format!(
                        "line {} of the privacy ledger {} is not a valid debit; the node will not guess a spent budget (restore the file from backup)",
                        i + 1,
                        path.display()
                    )))
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let mut file = file;
        if keep < text.len() {
            file.set_len(keep as u64).map_err(|e| io("repair", e))?;
        } else if !complete {
            // A whole debit whose newline was lost: it counts (the safe
            // side), and the next debit starts on a line of its own.
            file.write_all(b"\n").map_err(|e| io("repair", e))?;
        }
        Ok(Ledger {
            path,
            inner: Mutex::new(Inner {
                file,
                spent,
                answers,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `study` has spent here so far.
    pub fn spent(&self, study: &str) -> f64 {
        let inner = self.inner.lock().expect("ledger lock");
        inner.spent.get(study).copied().unwrap_or(0.0)
    }

    /// The answer released before under `key`, if any.
    pub fn cached(&self, key: &str) -> Option<Answer> {
        let inner = self.inner.lock().expect("ledger lock");
        inner.answers.get(key).cloned()
    }

    /// Refuses, naming what was spent, when `rho` more would take `study`
    /// past `budget` at this node: checked before a job computes anything,
    /// and again by [`Ledger::debit`].
    pub fn affords(&self, study: &str, budget: f64, rho: f64) -> Result<()> {
        affords(study, self.spent(study), budget, rho)
    }

    /// Debits `rho` from `study`'s `budget`, durably, or refuses when the
    /// budget at this node would be exceeded. Only after this returns may
    /// the release it pays for leave the node. The `answer` it pays for is
    /// kept under its key; when an answer is already kept under that key
    /// (the same query asked twice at once), nothing is charged and the
    /// kept one is returned, which is then what must be released.
    pub fn debit(
        &self,
        study: &str,
        budget: f64,
        rho: f64,
        job_id: &str,
        query_hash: &str,
        answer: Option<Answer>,
    ) -> Result<(Balance, Option<Answer>)> {
        if !(rho.is_finite() && rho >= 0.0) {
            return Err(Error::invalid(format!(
                "a privacy cost must be a finite rho of at least 0, got {rho}"
            )));
        }
        let mut inner = self.inner.lock().expect("ledger lock");
        let spent = inner.spent.get(study).copied().unwrap_or(0.0);
        if let Some(kept) = answer.as_ref().and_then(|a| inner.answers.get(&a.key)) {
            let balance = Balance {
                spent,
                remaining: (budget - spent).max(0.0),
            };
            return Ok((balance, Some(kept.clone())));
        }
        affords(study, spent, budget, rho)?;
        let debit = Debit {
            at: chrono::Utc::now().to_rfc3339(),
            study_id: study.to_string(),
            job_id: job_id.to_string(),
            query_hash: query_hash.to_string(),
            rho,
            answer,
        };
        let mut line = serde_json::to_vec(&debit).expect("a debit serialises");
        line.push(b'\n');
        let written = inner
            .file
            .write_all(&line)
            .and_then(|_| inner.file.sync_data());
        if let Err(e) = written {
            return Err(Error::internal(format!(
                "cannot write the privacy ledger {}: {e}; nothing was released (check the node's state folder)",
                self.path.display()
            )));
        }
        let total = spent + rho;
        inner.spent.insert(study.to_string(), total);
        if let Some(a) = debit.answer {
            inner.answers.insert(a.key.clone(), a);
        }
        let balance = Balance {
            spent: total,
            remaining: (budget - total).max(0.0),
        };
        Ok((balance, None))
    }
}

fn affords(study: &str, spent: f64, budget: f64, rho: f64) -> Result<()> {
    if spent + rho > budget * (1.0 + SLACK) {
        return Err(Error::policy(format!(
            "study \"{study}\" has spent rho {spent:.6} of its {budget:.6} at this node and this query costs {rho:.6}; \
             the hospital's budget for the study is exhausted (ask for a cheaper query or a new study)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debits_survive_a_restart_and_the_budget_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let (b, _) = ledger.debit("s1", 1.0, 0.4, "j1", "q", None).unwrap();
        assert_eq!((b.spent, b.remaining), (0.4, 0.6));
        ledger.debit("s1", 1.0, 0.6, "j2", "q", None).unwrap();
        ledger.debit("s2", 1.0, 0.1, "j3", "q", None).unwrap();
        let e = ledger.debit("s1", 1.0, 0.01, "j4", "q", None).unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Policy);
        assert!(e.message.contains("exhausted"), "{e}");
        drop(ledger);

        // A restarted node knows what was spent.
        let again = Ledger::open(dir.path()).unwrap();
        assert!((again.spent("s1") - 1.0).abs() < 1e-12);
        assert!((again.spent("s2") - 0.1).abs() < 1e-12);
        assert!(again.debit("s1", 1.0, 0.01, "j5", "q", None).is_err());
    }

    #[test]
    fn answers_are_kept_with_their_debit_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let answer = Answer {
            key: "k1".into(),
            kept: Kept::Stats(NodeStats::Count(plexus_core::Cell::Count(1234))),
            noise: NoiseScale {
                count_sd: 7.0,
                ..Default::default()
            },
        };
        assert!(ledger.cached("k1").is_none());
        let (b, kept) = ledger
            .debit("s1", 1.0, 0.01, "j1", "q", Some(answer.clone()))
            .unwrap();
        assert!(kept.is_none());
        assert!((b.spent - 0.01).abs() < 1e-15);
        // The same key again (a concurrent duplicate): no charge, the kept answer.
        let mut other = answer.clone();
        other.kept = Kept::Stats(NodeStats::Count(plexus_core::Cell::Count(1240)));
        let (b, kept) = ledger
            .debit("s1", 1.0, 0.01, "j2", "q", Some(other))
            .unwrap();
        assert_eq!(kept, Some(answer.clone()));
        assert!((b.spent - 0.01).abs() < 1e-15);
        drop(ledger);
        let again = Ledger::open(dir.path()).unwrap();
        assert_eq!(again.cached("k1"), Some(answer));
        assert!((again.spent("s1") - 0.01).abs() < 1e-15);
        // The file keeps its shape: the statistics under "stats".
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert!(
            text.contains(r#""stats":{"count":{"count":1234}}"#),
            "{text}"
        );
    }

    #[test]
    fn contributions_kept_by_an_older_node_still_load_and_count() {
        let dir = tempfile::tempdir().unwrap();
        // A debit for a secure aggregate, as the previous scheme kept it.
        let line = r#"{"at":"2026-01-01T00:00:00Z","study_id":"s1","job_id":"j1","query_hash":"q","rho":0.01,"answer":{"key":"k9","contribution":{"count":17},"noise":{"count_sd":7.0,"sum_sd":0.0,"square_sd":0.0}}}"#;
        std::fs::write(dir.path().join("privacy.ledger.jsonl"), format!("{line}\n")).unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!((ledger.spent("s1") - 0.01).abs() < 1e-15);
        assert!(matches!(
            ledger.cached("k9").map(|a| a.kept),
            Some(Kept::Contribution(_))
        ));
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_corrupt_one_stops_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.debit("s1", 1.0, 0.25, "j1", "q", None).unwrap();
        let path = ledger.path().to_path_buf();
        drop(ledger);
        // A crash in the middle of the next write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"at":"2026-01-01","study_id":"s1","jo"#)
            .unwrap();
        drop(f);
        let again = Ledger::open(dir.path()).unwrap();
        assert!((again.spent("s1") - 0.25).abs() < 1e-12);
        again.debit("s1", 1.0, 0.25, "j2", "q", None).unwrap();
        drop(again);
        let reread = Ledger::open(dir.path()).unwrap();
        assert!((reread.spent("s1") - 0.5).abs() < 1e-12);
        drop(reread);

        // A whole debit that lost its newline counts, and the next debit
        // starts on a line of its own.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"at":"t","study_id":"s1","job_id":"j3","query_hash":"q","rho":0.125}"#)
            .unwrap();
        drop(f);
        let again = Ledger::open(dir.path()).unwrap();
        assert!((again.spent("s1") - 0.625).abs() < 1e-12);
        again.debit("s1", 1.0, 0.125, "j4", "q", None).unwrap();
        drop(again);
        assert!((Ledger::open(dir.path()).unwrap().spent("s1") - 0.75).abs() < 1e-12);

        // A damaged line in the middle is not guessed around.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap();
        assert!(e.message.contains("line 1"), "{e}");
    }
}
