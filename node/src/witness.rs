//! The coordinator's audit log as this hospital witnessed it. Every job
//! carries the coordinator's latest signed checkpoint of its audit log and
//! a consistency proof from the checkpoint this node reported it witnessed
//! last. Before a job is taken the node checks that the checkpoint is
//! signed by the coordinator key it pins for jobs and that it extends what
//! the node witnessed before; it keeps the newest in
//! `STATE_DIR/witnessed-checkpoint.json`, reports it in hello and
//! heartbeats, and signs it into every answer, so the coordinator's log
//! can later be checked against what each hospital saw.
//!
//! A checkpoint that does not extend the witnessed one (a fork, a
//! truncation, a split view, a bad signature) means the coordinator's log
//! was rewritten or is shown differently to different hospitals. The node
//! then refuses every job, naming the rule, turns not ready, counts it in
//! `plexus_node_witness_refusals_total`, and stays so, across restarts,
//! until an operator runs `plexus-node witness reset --reason "..."`,
//! which is recorded in the same file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::{error, info, warn};

use plexus_core::merkle::{verify_consistency, Checkpoint, TreeHead};
use plexus_core::{Error, Result};
use plexus_proto::v1 as pb;
use plexus_tls::VerifyingKey;

use crate::metrics::RuleLabels;

/// The readiness check the witness owns.
pub const WITNESS_CHECK: &str = "witness";
/// Earlier heads kept, to check the proofs of jobs sent before the
/// coordinator heard which checkpoint this node witnessed last.
const HISTORY: usize = 256;

// The file's format, read by auditors too: in plexus-core, so the CLI
// reads it without linking the node.
use plexus_core::node_audit::WITNESSED_FORMAT as FORMAT;
pub use plexus_core::node_audit::{Broken, Reset, Rule, Witnessed, WITNESS_FILE};

/// Writes the file in `dir` whole: a temporary file, fsync, rename,
/// fsync of the folder, so a crash leaves the old or the new one.
fn store(w: &Witnessed, dir: &Path) -> Result<()> {
    use std::io::Write;
    let path = dir.join(WITNESS_FILE);
    let tmp = dir.join(format!("{WITNESS_FILE}.tmp"));
    let io = |what: &str, e: std::io::Error| {
        Error::unavailable(format!(
            "cannot {what} {}: {e} (check the node's state folder and its free space)",
            path.display()
        ))
    };
    let text = serde_json::to_vec_pretty(w).expect("serialises");
    crate::disk::wait(|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("write", e))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| io("write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("replace", e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the folder of", e))
    })
}

/// What the checks decided about one job's checkpoint.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Nothing new: already witnessed, or consistent with an earlier head
    /// but not (yet) proven to extend the newest.
    Keep,
    /// A new newest checkpoint.
    Advance(Checkpoint),
}

/// A rule broken, with the detail for the refusal.
#[derive(Debug)]
struct Breach {
    rule: Rule,
    detail: String,
}

fn breach(rule: Rule, detail: impl Into<String>) -> Breach {
    Breach {
        rule,
        detail: detail.into(),
    }
}

/// The checks, on their own so they can be tested without files.
fn judge(
    w: &Witnessed,
    verify: &dyn Fn(&[u8], &[u8]) -> bool,
    shown: Option<&pb::SignedCheckpoint>,
    from_size: u64,
    proof: &[String],
) -> std::result::Result<Verdict, Breach> {
    let Some(shown) = shown else {
        return match &w.checkpoint {
            None => Ok(Verdict::Keep),
            Some(c) => Err(breach(
                Rule::Missing,
                format!(
                    "the job carries no checkpoint of the coordinator's audit log, though this node witnessed one of {} entries; every job must show the log",
                    c.head.size
                ),
            )),
        };
    };
    let shown = Checkpoint::from(shown.clone());
    let signature = hex::decode(&shown.signature).unwrap_or_default();
    if !verify(
        &Checkpoint::signed_bytes(&shown.origin, &shown.head, shown.at_unix_ms),
        &signature,
    ) {
        return Err(breach(
            Rule::Signature,
            format!(
                "the job's checkpoint of {} entries is not signed by the coordinator key pinned in coordinator.signing_key",
                shown.head.size
            ),
        ));
    }
    let Some(newest) = &w.checkpoint else {
        // Nothing witnessed yet (or since a reset): the first checkpoint
        // is taken as shown, as the first key of a TLS session would be.
        return Ok(Verdict::Advance(shown));
    };
    if shown.origin != newest.origin {
        return Err(breach(
            Rule::Origin,
            format!(
                "the job's checkpoint is of the log of \"{}\", this node witnessed the log of \"{}\"",
                shown.origin, newest.origin
            ),
        ));
    }
    let heads = w.heads();
    if let Some(root) = heads.get(&shown.head.size) {
        return if *root == shown.head.root {
            Ok(Verdict::Keep)
        } else {
            Err(breach(
                Rule::SplitView,
                format!(
                    "the job's checkpoint of {} entries has root {}, this node witnessed root {} for that size: the log was rewritten or is shown differently to different hospitals",
                    shown.head.size, shown.head.root, root
                ),
            ))
        };
    }
    let proof = proof.concat();
    let proven_from = |size: u64| -> std::result::Result<bool, Breach> {
        if size == 0 {
            // Every log extends the empty one: nothing is proven.
            return Ok(false);
        }
        let Some(root) = heads.get(&size) else {
            return Ok(false);
        };
        let old = TreeHead {
            size,
            root: root.clone(),
        };
        verify_consistency(&old, &shown.head, &proof)
            .map(|()| true)
            .map_err(|e| {
                breach(
                    Rule::Fork,
                    format!(
                        "the job's checkpoint of {} entries does not extend the one of {size} entries this node witnessed ({})",
                        shown.head.size, e.message
                    ),
                )
            })
    };
    let newest_size = newest.head.size;
    if shown.head.size < newest_size {
        // An older checkpoint is fine only when proven consistent with an
        // earlier head (a job built before the coordinator heard of the
        // newer one); a proof said to start from the newest cannot be.
        if from_size < newest_size && from_size <= shown.head.size && proven_from(from_size)? {
            return Ok(Verdict::Keep);
        }
        return Err(breach(
            Rule::Truncated,
            format!(
                "the job's checkpoint covers {} entries, this node witnessed {newest_size}: the coordinator's log lost entries it had signed",
                shown.head.size
            ),
        ));
    }
    if from_size == newest_size {
        proven_from(from_size)?;
        return Ok(Verdict::Advance(shown));
    }
    if from_size < newest_size && heads.contains_key(&from_size) {
        // Consistent with an earlier head; the newest is proven once the
        // coordinator has heard of it (the next heartbeat).
        proven_from(from_size)?;
        return Ok(Verdict::Keep);
    }
    Err(breach(
        Rule::Unproven,
        format!(
            "the job proves the coordinator's checkpoint from {from_size} entries, a size this node never witnessed (it witnessed {newest_size}); retry once the coordinator has its heartbeat"
        ),
    ))
}

/// This node's witness of the coordinator's audit log.
pub struct Witness {
    dir: PathBuf,
    key: VerifyingKey,
    /// The checkpoint (signed bytes and signature) whose signature this
    /// process verified last: jobs show the same checkpoint until the log
    /// is next signed, and checking the same bytes against the same
    /// signature again gives the same answer.
    verified: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    state: Mutex<Witnessed>,
    readiness: plexus_ops::Readiness,
    refusals: Family<RuleLabels, Counter>,
}

impl Witness {
    /// Opens `STATE_DIR/witnessed-checkpoint.json`. A break recorded there
    /// keeps the node not ready from the start.
    pub fn open(
        dir: &Path,
        key: VerifyingKey,
        readiness: plexus_ops::Readiness,
        refusals: Family<RuleLabels, Counter>,
    ) -> Result<Self> {
        let state = Witnessed::load(dir)?;
        let w = Witness {
            dir: dir.to_path_buf(),
            key,
            verified: Mutex::new(None),
            state: Mutex::new(state),
            readiness,
            refusals,
        };
        let state = w.state.lock().expect("witness lock").clone();
        w.show_readiness(&state);
        if let Some(b) = &state.broken {
            error!(rule = b.rule.name(), detail = %b.detail, "the coordinator's audit log did not extend the checkpoint this node witnessed; jobs are refused until an operator runs `plexus-node witness reset`");
        }
        Ok(w)
    }

    fn show_readiness(&self, state: &Witnessed) {
        match &state.broken {
            None => self.readiness.set(WITNESS_CHECK, true, ""),
            Some(b) => self.readiness.set(WITNESS_CHECK, false, refusal_text(b)),
        }
    }

    /// The size and root this node witnessed last, for hello and
    /// heartbeats (0 and empty when none).
    pub fn reported(&self) -> (u64, String) {
        let state = self.state.lock().expect("witness lock");
        state
            .checkpoint
            .as_ref()
            .map(|c| (c.head.size, c.head.root.clone()))
            .unwrap_or_default()
    }

    /// The checkpoint witnessed last, as signed into answers.
    pub fn signed(&self) -> Option<pb::SignedCheckpoint> {
        self.state
            .lock()
            .expect("witness lock")
            .checkpoint
            .clone()
            .map(pb::SignedCheckpoint::from)
    }

    /// Checks the checkpoint a verified job shows (see the module docs);
    /// `Err` is the refusal to answer the job with.
    pub fn check(&self, job: &pb::Job) -> Result<()> {
        let mut state = self.state.lock().expect("witness lock");
        if state.broken.is_some() {
            // An operator may have reset the file since.
            if let Ok(fresh) = Witnessed::load(&self.dir) {
                if fresh.broken.is_none() {
                    info!("the witnessed checkpoint was reset by an operator; taking jobs again");
                    *state = fresh;
                    self.show_readiness(&state);
                }
            }
        }
        if let Some(b) = &state.broken {
            self.count(b.rule);
            return Err(Error::policy(refusal_text(b)));
        }
        let verify = |message: &[u8], signature: &[u8]| {
            let mut last = self.verified.lock().expect("verified lock");
            if last
                .as_ref()
                .is_some_and(|(m, s)| m == message && s == signature)
            {
                return true;
            }
            let good = self.key.verify(message, signature);
            if good {
                *last = Some((message.to_vec(), signature.to_vec()));
            }
            good
        };
        let verdict = judge(
            &state,
            &verify,
            job.witness_checkpoint.as_ref(),
            job.witness_from_size,
            &job.witness_proof,
        );
        match verdict {
            Ok(Verdict::Keep) => Ok(()),
            Ok(Verdict::Advance(c)) => {
                let mut next = state.clone();
                if let Some(old) = next.checkpoint.replace(c) {
                    next.history.push(old.head);
                    let over = next.history.len().saturating_sub(HISTORY);
                    next.history.drain(..over);
                }
                store(&next, &self.dir)?;
                *state = next;
                Ok(())
            }
            Err(b) if !b.rule.sticky() => {
                self.count(b.rule);
                warn!(rule = b.rule.name(), detail = %b.detail, "job refused: its checkpoint of the coordinator's audit log is not proven");
                Err(Error::policy(format!("{}: {}", b.rule.name(), b.detail)))
            }
            Err(b) => {
                let broken = Broken {
                    rule: b.rule,
                    detail: b.detail,
                    at: chrono::Utc::now().to_rfc3339(),
                    job_id: job.job_id.clone(),
                    shown: job
                        .witness_checkpoint
                        .clone()
                        .map(Checkpoint::from)
                        .expect("a sticky rule is about a shown checkpoint"),
                };
                error!(rule = broken.rule.name(), detail = %broken.detail, job_id = %job.job_id, "the coordinator's audit log does not extend the checkpoint this node witnessed; refusing jobs until an operator runs `plexus-node witness reset`");
                let mut next = state.clone();
                next.broken = Some(broken.clone());
                // Refused whether or not the break could be written down.
                if let Err(e) = store(&next, &self.dir) {
                    error!(error = %e, "cannot record the break of the witnessed log");
                }
                *state = next;
                self.show_readiness(&state);
                self.count(broken.rule);
                Err(Error::policy(refusal_text(&broken)))
            }
        }
    }

    fn count(&self, rule: Rule) {
        self.refusals
            .get_or_create(&RuleLabels {
                rule: rule.name().to_string(),
            })
            .inc();
    }
}

fn refusal_text(b: &Broken) -> String {
    format!(
        "{}: {}; since {} this node refuses every job, until its operator, once the network admin has explained the break, runs `plexus-node witness reset --reason \"...\"`",
        b.rule.name(),
        b.detail,
        b.at
    )
}

/// `plexus-node witness reset`: forgets what was witnessed and clears a
/// break, keeping both and the reason in the file for auditors. The next
/// job's checkpoint is then taken as shown. A running node picks the reset
/// up at its next job.
pub fn reset(dir: &Path, by: &str, reason: &str) -> Result<Reset> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Error::invalid(
            "say why the witnessed checkpoint is reset with --reason \"...\" (kept for auditors)",
        ));
    }
    plexus_core::text::check("reason", reason)?;
    let mut w = match Witnessed::load(dir) {
        Ok(w) => w,
        // A file that cannot be read is replaced; what it held is lost
        // either way, and the reset says so.
        Err(e) => {
            warn!(error = %e, "the witnessed checkpoint file cannot be read; replacing it");
            Witnessed {
                format: FORMAT,
                ..Default::default()
            }
        }
    };
    let reset = Reset {
        at: chrono::Utc::now().to_rfc3339(),
        by: by.to_string(),
        reason: reason.to_string(),
        forgot: w.checkpoint.take(),
        cleared: w.broken.take(),
    };
    w.history.clear();
    w.resets.push(reset.clone());
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal(format!("cannot create the folder {}: {e}", dir.display())))?;
    store(&w, dir)?;
    Ok(reset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::merkle::{leaf_of, MerkleLog};
    use plexus_tls::SigningKey;

    struct Coordinator {
        key: SigningKey,
        log: MerkleLog,
    }

    impl Coordinator {
        fn grow(&mut self, n: u64) {
            for _ in 0..n {
                let i = self.log.len();
                self.log.push(leaf_of(format!("entry {i}").as_bytes()));
            }
        }

        fn checkpoint(&self) -> pb::SignedCheckpoint {
            let key = &self.key;
            Checkpoint::sign_with(|m| key.sign(m), "coordinator", self.log.head(), 1).into()
        }

        /// A job showing the current tree, proven from `from`.
        fn job(&self, from: u64) -> pb::Job {
            let proof = if from == 0 || from >= self.log.len() {
                Vec::new()
            } else {
                self.log
                    .prove_consistency(from)
                    .unwrap()
                    .as_bytes()
                    .chunks(64)
                    .map(|c| String::from_utf8(c.to_vec()).unwrap())
                    .collect()
            };
            pb::Job {
                job_id: "j".into(),
                witness_checkpoint: Some(self.checkpoint()),
                witness_from_size: from,
                witness_proof: proof,
                ..Default::default()
            }
        }
    }

    fn setup() -> (tempfile::TempDir, Coordinator, Witness) {
        let dir = tempfile::tempdir().unwrap();
        let (key, _, _) = SigningKey::generate_into(dir.path(), "coordinator").unwrap();
        let pinned = key.verifying_key();
        let w = Witness::open(
            &dir.path().join("state"),
            pinned,
            plexus_ops::Readiness::new(),
            Family::default(),
        );
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let coordinator = Coordinator {
            key,
            log: MerkleLog::new(),
        };
        (dir, coordinator, w.unwrap())
    }

    fn refused_by(w: &Witness, job: &pb::Job, rule: Rule) {
        let e = w.check(job).unwrap_err();
        assert!(e.message.starts_with(rule.name()), "{}", e.message);
    }

    #[test]
    fn a_checkpoint_verified_once_is_taken_again_but_a_forged_signature_on_it_breaks_the_witness() {
        let (_dir, mut c, w) = setup();
        c.grow(4);
        let good = c.job(0);
        w.check(&good).unwrap();
        // The same checkpoint on the next job: taken (from the verified one).
        w.check(&good).unwrap();
        // The same signed bytes with another signature: checked, and refused.
        let mut forged = good.clone();
        let shown = forged.witness_checkpoint.as_mut().unwrap();
        let first = if shown.signature.starts_with('0') {
            "1"
        } else {
            "0"
        };
        shown.signature.replace_range(..1, first);
        refused_by(&w, &forged, Rule::Signature);
        // A forged checkpoint breaks the witness for good: the genuine one,
        // verified before, is refused too until an operator resets.
        refused_by(&w, &good, Rule::Signature);
    }

    #[test]
    fn a_growing_log_is_witnessed_and_kept_across_restarts() {
        let (dir, mut c, w) = setup();
        // Nothing witnessed: a job without a checkpoint is taken.
        w.check(&pb::Job::default()).unwrap();
        c.grow(5);
        w.check(&c.job(0)).unwrap();
        assert_eq!(w.reported().0, 5);
        c.grow(7);
        w.check(&c.job(5)).unwrap();
        assert_eq!(w.reported(), (12, c.log.head().root));
        // The same checkpoint again, and an older one proven from a head
        // witnessed before (a job overtaken by a later one).
        w.check(&c.job(12)).unwrap();
        let older = {
            let mut small = Coordinator {
                key: SigningKey::load(&dir.path().join("coordinator-signing.key"))
                    .unwrap_or_else(|_| panic!("key")),
                log: MerkleLog::new(),
            };
            small.grow(9);
            small.job(5)
        };
        w.check(&older).unwrap();
        assert_eq!(w.reported().0, 12);
        // Once witnessed, a job must show the log.
        refused_by(&w, &pb::Job::default(), Rule::Missing);
        // Kept on disk.
        let state = dir.path().join("state");
        let again = Witness::open(
            &state,
            c.key.verifying_key(),
            plexus_ops::Readiness::new(),
            Family::default(),
        )
        .unwrap();
        assert_eq!(again.reported(), (12, c.log.head().root));
        assert_eq!(again.signed().unwrap().size, 12);
    }

    #[test]
    fn a_fork_is_refused_until_an_operator_resets_and_readiness_says_why() {
        let (dir, mut c, w) = setup();
        c.grow(10);
        w.check(&c.job(0)).unwrap();
        // The log rewritten at entry 3, then grown: the proof from 10
        // cannot show the witnessed tree is a prefix.
        let mut forked = Coordinator {
            key: SigningKey::load(&dir.path().join("coordinator-signing.key")).unwrap(),
            log: MerkleLog::new(),
        };
        forked.grow(3);
        forked.log.push(leaf_of(b"rewritten"));
        forked.grow(10);
        refused_by(&w, &forked.job(10), Rule::Fork);
        let ready = w.readiness.status().unwrap_err();
        assert!(ready.contains("witness.fork"), "{ready}");
        // Every later job is refused, the honest one too, and after a restart.
        c.grow(1);
        refused_by(&w, &c.job(10), Rule::Fork);
        let state = dir.path().join("state");
        let readiness = plexus_ops::Readiness::new();
        let again = Witness::open(
            &state,
            c.key.verifying_key(),
            readiness.clone(),
            Family::default(),
        )
        .unwrap();
        assert!(readiness.status().unwrap_err().contains("witness.fork"));
        refused_by(&again, &c.job(10), Rule::Fork);
        // The operator's reset, with a reason; the running node takes it.
        assert!(reset(&state, "it", " ").is_err());
        let r = reset(&state, "it", "coordinator restored from backup, ticket 42").unwrap();
        assert_eq!(r.cleared.unwrap().rule, Rule::Fork);
        assert_eq!(r.forgot.unwrap().head.size, 10);
        again.check(&forked.job(0)).unwrap();
        readiness.status().unwrap();
        let kept = Witnessed::load(&state).unwrap();
        assert_eq!(kept.resets.len(), 1);
        assert_eq!(kept.checkpoint.unwrap().head.size, 14);
    }

    #[test]
    fn truncation_split_views_bad_signatures_and_bad_proofs_are_refused() {
        // Truncation: a smaller checkpoint said to be proven from the
        // witnessed size.
        let (dir, mut c, w) = setup();
        let key = || SigningKey::load(&dir.path().join("coordinator-signing.key")).unwrap();
        c.grow(10);
        w.check(&c.job(0)).unwrap();
        let mut cut = Coordinator {
            key: key(),
            log: MerkleLog::new(),
        };
        cut.grow(6);
        refused_by(&w, &cut.job(10), Rule::Truncated);

        // Split view: the same size, another root.
        let (dir, mut c, w) = setup();
        c.grow(10);
        w.check(&c.job(0)).unwrap();
        let mut other = Coordinator {
            key: SigningKey::load(&dir.path().join("coordinator-signing.key")).unwrap(),
            log: MerkleLog::new(),
        };
        other.log.push(leaf_of(b"another history"));
        other.grow(9);
        refused_by(&w, &other.job(10), Rule::SplitView);

        // A checkpoint signed by another key, inside a job: the coordinator
        // itself showed it.
        let (_dir, mut c, w) = setup();
        c.grow(4);
        let dir2 = tempfile::tempdir().unwrap();
        let (evil, _, _) = SigningKey::generate_into(dir2.path(), "evil").unwrap();
        let forged = Coordinator {
            key: evil,
            log: MerkleLog::from_leaves((0..4).map(|i| leaf_of(format!("entry {i}").as_bytes()))),
        };
        refused_by(&w, &forged.job(0), Rule::Signature);
        assert!(w.reported().0 == 0);

        // A proof that does not verify (one hash changed).
        let (_dir, mut c, w) = setup();
        c.grow(5);
        w.check(&c.job(0)).unwrap();
        c.grow(6);
        let mut job = c.job(5);
        let first = job.witness_proof[0].clone();
        job.witness_proof[0] = format!(
            "{}{}",
            if first.starts_with('0') { "1" } else { "0" },
            &first[1..]
        );
        refused_by(&w, &job, Rule::Fork);

        // A proof from a size never witnessed is refused, but not held
        // against the log.
        let (_dir, mut c, w) = setup();
        c.grow(5);
        w.check(&c.job(0)).unwrap();
        c.grow(6);
        refused_by(&w, &c.job(7), Rule::Unproven);
        w.check(&c.job(5)).unwrap();
        assert_eq!(w.reported().0, 11);
    }
}
