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
//! JSON lines in `STATE_DIR/privacy.ledger.jsonl`, each a sealed record
//! ([`crate::record`]): it carries the hash of the debit before it and its
//! own, so an edited debit (ρ set to 0, say) or a debit removed from the
//! middle stops the node at start-up naming the file and line. Checkpoints
//! of the ledger (its number of records and last hash), signed with the
//! node's audit key like the job log's, go to `ledger-checkpoints.jsonl`:
//! a ledger cut at its end, or rebuilt with a fresh chain, does not match
//! them. And the job log is read against the ledger at start-up: a job it
//! records as charged must have its debit here ([`Ledger::cross_check`]).
//!
//! A last line cut short by a crash during its write paid for nothing (the
//! release waits for the sync), so it is cut off at start-up with a warning;
//! the cross-check proves it (a job log that records the job charged stops
//! the node instead). Any other bad line stops the node, because guessing
//! a spent budget is not safe. A write that fails (a full disk) is cut back
//! off the file at once, so no debit is ever appended to a fragment.
//!
//! Ledgers written before chaining hold unchained lines. They are read as
//! a prefix only, and the first chained debit's `prev` covers them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use plexus_core::merkle::{Checkpoint, TreeHead};
use plexus_core::privacy::scale::NoiseScale;
use plexus_core::{Error, NodeStats, Result};

use crate::log::JobLog;
use crate::record::{self, Appender, Recovered, Writer};

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
    /// The ledger file; read-only for a tool beside a running node.
    records: Writer,
    spent: BTreeMap<String, f64>,
    answers: HashMap<String, Answer>,
    /// Each job's debit: its line in the file and its ρ.
    debits: HashMap<String, (usize, f64)>,
    /// Records in the file (legacy ones included) and the next line number.
    count: u64,
    next_line: usize,
    last_signed: Option<u64>,
    /// The chain's hash after `count` records as read (what a read-only
    /// opening signs: the file may grow beside it).
    head_at_open: String,
}

pub struct Ledger {
    path: PathBuf,
    checkpoints: PathBuf,
    origin: String,
    key: Option<Arc<plexus_tls::SigningKey>>,
    inner: Mutex<Inner>,
}

/// Rounding slack when comparing sums of ρ with a budget.
const SLACK: f64 = 1e-12;

/// The ledger's file name in the state folder.
pub const LEDGER_FILE: &str = "privacy.ledger.jsonl";
/// Signed checkpoints of the ledger (size and chain hash), one JSON line each.
pub const LEDGER_CHECKPOINT_FILE: &str = "ledger-checkpoints.jsonl";

/// What to do about a ledger that does not check.
const RESTORE: &str = "the node will not guess a spent budget: restore the state folder from its last backup (privacy.ledger.jsonl with ledger-checkpoints.jsonl and jobs.log.jsonl), never by editing the ledger";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Write,
    Read,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir` for the node, without the
    /// audit key (no checkpoints are signed), and rebuilds every study's
    /// spent budget from it.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_mode(dir, Mode::Write)
    }

    /// The node's way in: [`Ledger::open`] with the node's audit key, so
    /// checkpoints of the ledger are signed.
    pub fn open_signed(dir: &Path, node_id: &str) -> Result<Self> {
        let key = crate::log::audit_key(dir).map_err(|e| {
            Error::internal(format!(
                "cannot load the node's audit key in {}: {e}",
                dir.display()
            ))
        })?;
        let mut ledger = Self::open_mode(dir, Mode::Write)?;
        ledger.origin = format!("node/{node_id}/ledger");
        ledger.key = Some(key);
        Ok(ledger)
    }

    /// Opens the ledger read-only, checked as at start-up, beside a node
    /// that may be running (a tool or a test reading what was spent).
    pub fn read(dir: &Path) -> Result<Self> {
        Self::open_mode(dir, Mode::Read)
    }

    /// Opens the ledger read-only with the node's audit key, to sign a
    /// checkpoint beside a running node (`plexus-node checkpoint`).
    pub fn open_to_sign(dir: &Path, node_id: &str) -> Result<Self> {
        let mut ledger = Self::open_mode(dir, Mode::Read)?;
        ledger.origin = format!("node/{node_id}/ledger");
        ledger.key = Some(crate::log::audit_key(dir).map_err(|e| {
            Error::internal(format!(
                "cannot load the node's audit key in {}: {e}",
                dir.display()
            ))
        })?);
        Ok(ledger)
    }

    fn open_mode(dir: &Path, mode: Mode) -> Result<Self> {
        let io = |what: &str, e: std::io::Error| {
            Error::internal(format!(
                "cannot {what} the privacy ledger in {}: {e} (check the node's state folder)",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
        let path = dir.join(LEDGER_FILE);
        let checkpoints = dir.join(LEDGER_CHECKPOINT_FILE);
        let scan = record::scan(
            &path,
            "privacy ledger",
            |line| match serde_json::from_slice::<Debit>(line) {
                Ok(d) if d.rho.is_finite() && d.rho >= 0.0 => Ok(d),
                Ok(d) => Err(format!(
                    "its rho {} is not a finite rho of at least 0",
                    d.rho
                )),
                Err(e) => Err(format!("not a debit ({e})")),
            },
        )
        .map_err(|e| io("read", e))?
        .map_err(|e| Error::internal(format!("{e}; {RESTORE}")))?;
        let signed = crate::log::read_checkpoints(&checkpoints)
            .map_err(|e| Error::internal(format!("{e}; {RESTORE}")))?;
        let (_, public) = plexus_tls::signing_key_files(dir, crate::log::AUDIT_KEY_STEM);
        let public = plexus_tls::VerifyingKey::load(&public)
            .ok()
            .map(|k| hex::decode(k.to_hex()).expect("hex from the key"));
        let count = scan.records.len() as u64;
        for (i, c) in signed.iter().enumerate() {
            let line = i + 1;
            let cps = checkpoints.display();
            if let Some(public) = &public {
                if c.verify(public).is_err() {
                    return Err(Error::internal(format!(
                        "line {line} of {cps} is a checkpoint not signed by this node's audit key; {RESTORE}"
                    )));
                }
            }
            if c.head.size > count {
                return Err(Error::internal(format!(
                    "the privacy ledger {} holds {count} debits but line {line} of {cps} signed {}: debits were removed from the ledger; {RESTORE}",
                    path.display(),
                    c.head.size
                )));
            }
            let at = match c.head.size {
                0 => record::GENESIS,
                n => scan.heads[n as usize - 1].as_str(),
            };
            if at != c.head.root {
                return Err(Error::internal(format!(
                    "the first {} debits of the privacy ledger {} are not those line {line} of {cps} signed: a debit was edited, removed or reordered and the chain rebuilt; {RESTORE}",
                    c.head.size,
                    path.display()
                )));
            }
        }
        if let (Some(torn), Mode::Write) = (&scan.torn, mode) {
            tracing::warn!(
                path = %path.display(),
                line = torn.line,
                reason = %torn.reason,
                "cutting off the privacy ledger's last line, torn by a crash while it was written (it paid for no release: a release waits for its debit to be written; the job log is checked for it before the node starts)"
            );
        }
        if scan.legacy > 0 && scan.legacy == scan.records.len() && mode == Mode::Write {
            tracing::info!(
                path = %path.display(),
                lines = scan.legacy,
                "the privacy ledger holds only unchained debits written before chaining; new debits are chained after them"
            );
        }
        let mut spent: BTreeMap<String, f64> = BTreeMap::new();
        let mut answers = HashMap::new();
        let mut debits = HashMap::new();
        let mut next_line = 1;
        for r in &scan.records {
            let d = &r.value;
            *spent.entry(d.study_id.clone()).or_default() += d.rho;
            if let Some(a) = &d.answer {
                answers.insert(a.key.clone(), a.clone());
            }
            debits.insert(d.job_id.clone(), (r.line, d.rho));
            next_line = r.line + 1;
        }
        let file = match mode {
            Mode::Write => Some(Appender::open(&scan).map_err(|e| io("repair", e))?),
            Mode::Read => None,
        };
        Ok(Ledger {
            path,
            checkpoints,
            origin: String::new(),
            key: None,
            inner: Mutex::new(Inner {
                records: Writer::new(file),
                spent,
                answers,
                debits,
                count,
                next_line,
                last_signed: signed.last().map(|c| c.head.size),
                head_at_open: scan.head().to_string(),
            }),
        })
    }

    /// Refuses to start when the job log shows a charge the ledger does
    /// not hold: a released or refused job whose privacy cost the log
    /// records must have its debit here, of that ρ. A ledger cut back, or a
    /// debit edited, cannot then silently lower what a study spent.
    pub fn cross_check(&self, log: &JobLog) -> Result<()> {
        let inner = self.inner.lock().expect("ledger lock");
        for c in log.charged() {
            match inner.debits.get(&c.job_id) {
                None => {
                    return Err(Error::internal(format!(
                        "line {} of the job log {} records job {} charged rho {}, and the privacy ledger {} holds no debit for it: debits were removed from the ledger; {RESTORE}",
                        c.line,
                        log.path().display(),
                        c.job_id,
                        c.rho,
                        self.path.display()
                    )))
                }
                Some((line, rho)) if (rho - c.rho).abs() > SLACK * c.rho.abs().max(1.0) => {
                    return Err(Error::internal(format!(
                        "line {} of the job log {} records job {} charged rho {}, and line {line} of the privacy ledger {} debits rho {rho} for it: a debit was edited; {RESTORE}",
                        c.line,
                        log.path().display(),
                        c.job_id,
                        c.rho,
                        self.path.display()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Why the last write failed, while none has succeeded since.
    pub fn trouble(&self) -> Option<String> {
        self.inner.lock().expect("ledger lock").records.trouble()
    }

    /// After a failed write, once the disk takes writes again: cuts its
    /// leftovers off and forgets it ([`Writer::recover`]).
    /// After a failed sync the ledger is cut back to its last durable
    /// debit and read again from the file.
    pub fn recover(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().expect("ledger lock");
        if inner.records.recover()? == Recovered::Reload {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let fresh = Self::open_mode(dir, Mode::Write)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            *inner = fresh.inner.into_inner().expect("ledger lock");
        }
        Ok(())
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` writes fail as on a full
    /// disk.
    pub fn fail_next_writes(&self, n: u32) {
        self.inner.lock().expect("ledger lock").records.fail_next(n);
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` syncs fail (EIO).
    pub fn fail_next_syncs(&self, n: u32) {
        self.inner
            .lock()
            .expect("ledger lock")
            .records
            .fail_next_syncs(n);
    }

    /// Signs a checkpoint of the ledger as it is now (its number of records
    /// and the hash of the last) and appends it to the checkpoint file.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut inner = self.inner.lock().expect("ledger lock");
        self.sign(&mut inner)
    }

    /// Signs a checkpoint when the ledger grew since the last one.
    pub fn publish_if_grown(&self) -> Result<Option<Checkpoint>> {
        let mut inner = self.inner.lock().expect("ledger lock");
        if inner.last_signed == Some(inner.count) {
            return Ok(None);
        }
        self.sign(&mut inner).map(Some)
    }

    fn sign(&self, inner: &mut Inner) -> Result<Checkpoint> {
        let key = self.key.as_ref().ok_or_else(|| {
            Error::internal("this privacy ledger was opened without the node's audit key")
        })?;
        // A checkpoint covers only debits on disk.
        if let Some(ticket) = inner.records.ticket() {
            ticket.wait().map_err(|e| {
                Error::unavailable(format!(
                    "cannot sign a checkpoint of the privacy ledger {}: {e}",
                    self.path.display()
                ))
            })?;
        }
        let root = match inner.records.head() {
            Some(head) => head.to_string(),
            None => inner.head_at_open.clone(),
        };
        let head = TreeHead {
            size: inner.count,
            root,
        };
        let c = Checkpoint::sign_with(
            |m| key.sign(m),
            &self.origin,
            head,
            chrono::Utc::now().timestamp_millis(),
        );
        crate::log::append_checkpoint(&self.checkpoints, &c).map_err(|e| {
            Error::unavailable(format!(
                "cannot write the ledger checkpoint file {}: {e}",
                self.checkpoints.display()
            ))
        })?;
        inner.last_signed = Some(c.head.size);
        Ok(c)
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
        let problem = |e: &std::io::Error| {
            format!(
                "cannot write the privacy ledger {}: {e}",
                self.path.display()
            )
        };
        let refused = |e: &std::io::Error| {
            Error::unavailable(format!(
                "{}; nothing was released, and the node takes no jobs until the hospital's IT frees space in its state folder or fixes the disk",
                problem(e)
            ))
        };
        if let Some(kept) = answer.as_ref().and_then(|a| inner.answers.get(&a.key)) {
            let balance = Balance {
                spent,
                remaining: (budget - spent).max(0.0),
            };
            let kept = kept.clone();
            // The debit that kept it may still be on its way to the disk
            // (group commit): the kept answer leaves only after it.
            let ticket = inner.records.ticket();
            drop(inner);
            if let Some(ticket) = ticket {
                ticket.wait().map_err(|e| refused(&e))?;
            }
            return Ok((balance, Some(kept)));
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
        let object = serde_json::to_vec(&debit).expect("a debit serialises");
        let written = inner.records.write(&object, problem).unwrap_or_else(|| {
            let e =
                std::io::Error::other("the ledger was opened read-only (a tool beside the node)");
            inner.records.failed(problem(&e));
            Err(e)
        });
        let written = written.map_err(|e| refused(&e))?;
        inner.count += 1;
        let line = inner.next_line;
        inner.next_line += 1;
        inner.debits.insert(job_id.to_string(), (line, rho));
        let total = spent + rho;
        inner.spent.insert(study.to_string(), total);
        if let Some(a) = debit.answer {
            inner.answers.insert(a.key.clone(), a);
        }
        let balance = Balance {
            spent: total,
            remaining: (budget - total).max(0.0),
        };
        // The debit counts at once for every other job (a failed sync
        // only over-counts until the ledger is read again); the release it
        // pays for waits until it is on disk, sharing the sync with the
        // debits written meanwhile. A failed sync is the ledger's trouble
        // until recovery ([`Writer::trouble`]).
        drop(inner);
        written.durable().map_err(|e| refused(&e))?;
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
    use std::fs::OpenOptions;
    use std::io::Write;

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
    fn a_debit_whose_sync_failed_is_refused_and_recovery_reads_the_ledger_again() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open_signed(dir.path(), "node-a").unwrap();
        ledger.debit("s1", 1.0, 0.25, "j1", "q", None).unwrap();
        ledger.fail_next_syncs(1);
        let e = ledger.debit("s1", 1.0, 0.25, "j2", "q", None).unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Unavailable);
        assert!(e.message.contains(LEDGER_FILE), "{e}");
        assert!(ledger.trouble().is_some());
        // Until recovery the refused debit still counts (over, never under)
        // and nothing more is written or signed.
        assert!((ledger.spent("s1") - 0.5).abs() < 1e-12);
        assert!(ledger.debit("s1", 1.0, 0.1, "j3", "q", None).is_err());
        assert!(ledger.checkpoint().is_err());
        ledger.recover().unwrap();
        assert_eq!(ledger.trouble(), None);
        assert!(
            (ledger.spent("s1") - 0.25).abs() < 1e-12,
            "read again from the file"
        );
        ledger.debit("s1", 1.0, 0.1, "j3", "q", None).unwrap();
        assert_eq!(ledger.checkpoint().unwrap().head.size, 2);
        drop(ledger);
        let again = Ledger::open_signed(dir.path(), "node-a").unwrap();
        assert!((again.spent("s1") - 0.35).abs() < 1e-12);
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
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();
        let again = Ledger::open(dir.path()).unwrap();
        assert!((again.spent("s1") - 0.5).abs() < 1e-12);
        again.debit("s1", 1.0, 0.125, "j4", "q", None).unwrap();
        drop(again);
        assert!((Ledger::open(dir.path()).unwrap().spent("s1") - 0.625).abs() < 1e-12);

        // A damaged line in the middle is not guessed around.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap();
        assert!(e.message.contains("line 1"), "{e}");
    }

    fn three_debits(dir: &Path, signed: bool) -> PathBuf {
        let ledger = if signed {
            Ledger::open_signed(dir, "node-a").unwrap()
        } else {
            Ledger::open(dir).unwrap()
        };
        for (i, rho) in [0.03, 0.04, 0.01].into_iter().enumerate() {
            ledger
                .debit("s1", 1.0, rho, &format!("j{i}"), "q", None)
                .unwrap();
        }
        if signed {
            ledger.checkpoint().unwrap();
        }
        ledger.path().to_path_buf()
    }

    #[test]
    fn an_edited_debit_is_refused_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_debits(dir.path(), false);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l.contains("\"hash\":")), "{text}");
        std::fs::write(&path, text.replacen("\"rho\":0.04", "\"rho\":0.0", 1)).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap();
        assert!(
            e.message.contains("line 2 of the privacy ledger")
                && e.message.contains(&path.display().to_string())
                && e.message.contains("edited"),
            "{e}"
        );
    }

    #[test]
    fn a_ledger_cut_in_the_middle_or_at_its_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = three_debits(dir.path(), true);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        // The middle debit removed: the next no longer follows.
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap();
        assert!(
            e.message.contains("line 2") && e.message.contains("prev"),
            "{e}"
        );

        // The last debit removed: shorter than its signed checkpoint.
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap();
        assert!(
            e.message.contains("holds 2 debits") && e.message.contains("ledger-checkpoints.jsonl"),
            "{e}"
        );

        // Rebuilt with a fresh chain and a debit set to 0: not what was signed.
        let rebuilt = tempfile::tempdir().unwrap();
        let forged = Ledger::open(rebuilt.path()).unwrap();
        for (i, rho) in [0.03, 0.0, 0.01].into_iter().enumerate() {
            forged
                .debit("s1", 1.0, rho, &format!("j{i}"), "q", None)
                .unwrap();
        }
        std::fs::copy(forged.path(), &path).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap();
        assert!(e.message.contains("the first 3 debits"), "{e}");

        // Put back, it opens, and a checkpoint only signs what grew.
        std::fs::write(&path, &text).unwrap();
        let ledger = Ledger::open_signed(dir.path(), "node-a").unwrap();
        assert!((ledger.spent("s1") - 0.08).abs() < 1e-12);
        assert!(ledger.publish_if_grown().unwrap().is_none());
    }

    #[test]
    fn a_ledger_written_before_chaining_is_read_and_chained_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let legacy = r#"{"at":"2026-01-01T00:00:00Z","study_id":"s1","job_id":"j1","query_hash":"q","rho":0.02}
{"at":"2026-01-01T00:00:01Z","study_id":"s1","job_id":"j2","query_hash":"q","rho":0.03}
"#;
        std::fs::write(&path, legacy).unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!((ledger.spent("s1") - 0.05).abs() < 1e-12);
        ledger.debit("s1", 1.0, 0.01, "j3", "q", None).unwrap();
        drop(ledger);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(legacy), "{text}");
        assert!((Ledger::open(dir.path()).unwrap().spent("s1") - 0.06).abs() < 1e-12);

        // An edited legacy debit breaks the chain at the first chained one.
        std::fs::write(&path, text.replacen("\"rho\":0.03", "\"rho\":0.0", 1)).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap();
        assert!(e.message.contains("line 3"), "{e}");
    }

    #[test]
    fn a_full_disk_leaves_no_fragment_and_loses_no_debit() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.debit("s1", 1.0, 0.1, "j1", "q", None).unwrap();
        ledger.fail_next_writes(1);
        let e = ledger.debit("s1", 1.0, 0.2, "j2", "q", None).unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Unavailable);
        assert!(
            e.message.contains(&ledger.path().display().to_string())
                && e.message.contains("No space left"),
            "{e}"
        );
        assert!(ledger.trouble().is_some());
        assert!((ledger.spent("s1") - 0.1).abs() < 1e-12);
        // Space is back: the next debit is on a line of its own.
        ledger.debit("s1", 1.0, 0.3, "j3", "q", None).unwrap();
        assert!(ledger.trouble().is_none());
        drop(ledger);
        let again = Ledger::open(dir.path()).unwrap();
        assert!((again.spent("s1") - 0.4).abs() < 1e-12);
    }

    #[test]
    fn the_job_log_and_the_ledger_are_cross_checked() {
        use crate::log::{JobLog, LogEntry};
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.debit("s1", 1.0, 0.04, "j1", "q", None).unwrap();
        ledger.debit("s1", 1.0, 0.03, "j2", "q", None).unwrap();
        let log = JobLog::open(dir.path()).unwrap();
        for (job, rho) in [("j1", 0.04), ("j2", 0.03), ("j3", 0.0)] {
            log.append(&LogEntry {
                job_id: job.into(),
                outcome: "released".into(),
                privacy_cost: Some(rho),
                ..Default::default()
            })
            .unwrap();
        }
        drop((ledger, log));
        let log = JobLog::open(dir.path()).unwrap();
        Ledger::open(dir.path()).unwrap().cross_check(&log).unwrap();

        // The last debit cut off (as a "torn" tail would be): the job log
        // still shows it, so the node does not start.
        let path = dir.path().join(LEDGER_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        std::fs::write(&path, format!("{first}\n{{\"at\":\"2026")).unwrap();
        let e = Ledger::open(dir.path())
            .unwrap()
            .cross_check(&log)
            .unwrap_err();
        assert!(
            e.message.contains("line 2 of the job log")
                && e.message.contains("j2")
                && e.message.contains(LEDGER_FILE)
                && e.message.contains("jobs.log.jsonl"),
            "{e}"
        );
    }
}
