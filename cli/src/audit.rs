//! `plexus audit ...`: what an auditor runs against the coordinator's Merkle
//! log and a node's local job log. Nothing here trusts the coordinator: each
//! checkpoint is checked against the coordinator key the auditor pinned, the
//! tree is rebuilt from the entries themselves, and proofs are verified
//! locally.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

use plexus_core::audit::AuditEntry;
use plexus_core::merkle::{
    leaf_of, verify_consistency, verify_inclusion, verify_log_heads, Checkpoint, TreeHead,
};
use plexus_core::node_audit;
use plexus_proto::v1 as pb;

use crate::output::{safe, safe_json, Report};
use plexus_client::Client;

fn status(s: tonic::Status) -> anyhow::Error {
    let e = plexus_proto::convert::from_status(&s);
    anyhow!("{}: {}", e.code, e.message)
}

/// The coordinator's public signing key, as `plexus pki init` wrote it.
pub fn load_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let key = plexus_tls::VerifyingKey::load(path).map_err(|e| {
        anyhow!(
            "{e}; pass the public key you pinned for this log with --log-key (the coordinator's is coordinator-signing.pub from `plexus pki init`)"
        )
    })?;
    Ok(hex::decode(key.to_hex()).expect("hex from the key"))
}

/// Checks a checkpoint's signature against the pinned key.
pub fn check_signature(c: &Checkpoint, key: &[u8]) -> anyhow::Result<()> {
    c.verify(key).map_err(|e| {
        anyhow!(
            "{}; it was not signed by the key you pinned (or was altered after signing)",
            e.message
        )
    })
}

fn checkpoint_of(c: Option<pb::SignedCheckpoint>) -> anyhow::Result<Checkpoint> {
    c.map(Checkpoint::from)
        .ok_or_else(|| anyhow!("the coordinator sent no checkpoint"))
}

/// Reads the whole coordinator log, in order, handing each entry to `f`.
pub async fn stream_log(
    client: &Client,
    mut f: impl FnMut(AuditEntry) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut stream = client
        .audit()
        .export_log(pb::ExportLogRequest { after_seq: 0 })
        .await
        .map_err(status)?
        .into_inner();
    let mut n = 0;
    while let Some(event) = stream.message().await.map_err(status)? {
        let seq = event.seq;
        f(event
            .try_into()
            .with_context(|| format!("entry {seq} of the coordinator's log"))?)?;
        n += 1;
    }
    Ok(n)
}

/// What `plexus audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoint: Checkpoint,
    /// Entries appended after the checkpoint, not yet covered by one.
    pub uncovered: u64,
    /// The earlier checkpoint the log was shown to extend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earlier: Option<TreeHead>,
    /// The checkpoints the nodes witnessed, each checked against the log.
    pub witnessed: Vec<crate::audit_witness::Witnessed>,
    /// Breaks of the log recorded by `plexus-coordinator audit-repair`.
    pub repairs: Vec<crate::audit_witness::RecordedRepair>,
}

/// Checks the whole coordinator log against its latest checkpoint (a new
/// one when `fresh`), and, given an auditor's earlier checkpoint, that
/// today's log extends it (consistency proof, and the entries themselves).
pub async fn verify(
    client: &Client,
    key: &[u8],
    earlier: Option<&Checkpoint>,
    fresh: bool,
) -> anyhow::Result<VerifyReport> {
    verify_with(client, key, earlier, fresh, &[]).await
}

/// [`verify`], also against the checkpoints the nodes witnessed (those
/// signed into the answers the coordinator kept, and the nodes'
/// `witnessed-checkpoint.json` files in `witnessed_files`): one the log
/// does not extend fails, unless a recorded repair came after it.
pub async fn verify_with(
    client: &Client,
    key: &[u8],
    earlier: Option<&Checkpoint>,
    fresh: bool,
    witnessed_files: &[&Path],
) -> anyhow::Result<VerifyReport> {
    let mut audit = client.audit();
    let checkpoint: Checkpoint = audit
        .get_checkpoint(pb::GetCheckpointRequest { fresh })
        .await
        .map_err(status)?
        .into_inner()
        .into();
    check_signature(&checkpoint, key)?;
    if let Some(old) = earlier {
        check_signature(old, key).context("the earlier checkpoint")?;
    }
    let mut leaves = Vec::new();
    let mut gap: Option<String> = None;
    let mut repairs = Vec::new();
    stream_log(client, |e| {
        if e.action == "audit.repair" {
            repairs.push(crate::audit_witness::RecordedRepair {
                seq: e.seq,
                at: e.at,
                who: e.who.clone(),
                detail: e.detail.clone(),
            });
        }
        let expected = leaves.len() as i64 + 1;
        if e.seq != expected && gap.is_none() {
            gap = Some(format!(
                "entry {expected} is missing (the next entry is numbered {}): entries were removed",
                e.seq
            ));
        }
        leaves.push(e.leaf());
        Ok(())
    })
    .await?;
    let heads = vec![checkpoint.head.clone()];
    let entries = verify_log_heads(leaves.iter().copied(), &heads).map_err(|e| {
        anyhow!(
            "the audit log does not match its signed checkpoint: {}{}",
            e.message,
            gap.as_deref()
                .map(|g| format!(" ({g})"))
                .unwrap_or_default()
        )
    })?;
    if let Some(g) = gap {
        bail!("the audit log is not numbered without gaps: {g}");
    }
    if let Some(old) = earlier {
        // The log itself, cut at the earlier size, must make the earlier
        // root: both are signed, so a difference is a split view.
        if old.head.size > entries {
            bail!(
                "the log holds {entries} entries but your earlier checkpoint signed {}: entries were removed or the log was truncated",
                old.head.size
            );
        }
        let then = plexus_core::merkle::MerkleLog::from_leaves(
            leaves[..old.head.size as usize].iter().copied(),
        )
        .head();
        verify_consistency(&old.head, &then, "").map_err(|e| anyhow!(e.message))?;
        // The coordinator's own proof that the old tree is a prefix of the new.
        let proof = audit
            .prove_consistency(pb::ProveConsistencyRequest {
                old_size: old.head.size,
            })
            .await
            .map_err(status)?
            .into_inner();
        let new = checkpoint_of(proof.checkpoint)?;
        check_signature(&new, key)?;
        verify_consistency(&old.head, &new.head, &proof.proof).map_err(|e| anyhow!(e.message))?;
    }
    let seen = crate::audit_witness::collect(client, witnessed_files).await?;
    let witnessed = crate::audit_witness::check(seen, key, &leaves, &repairs);
    let broken: Vec<String> = witnessed
        .iter()
        .filter(|w| !w.problems.is_empty())
        .map(|w| format!("{} ({}): {}", w.node, w.source, w.problems.join("; ")))
        .collect();
    if !broken.is_empty() {
        bail!(
            "the audit log does not extend checkpoints the hospitals witnessed, or the answers that carry them were altered: {}",
            broken.join(" | ")
        );
    }
    Ok(VerifyReport {
        uncovered: entries - checkpoint.head.size,
        entries,
        checkpoint,
        earlier: earlier.map(|c| c.head.clone()),
        witnessed,
        repairs,
    })
}

/// What `plexus audit prove` prints.
#[derive(Debug, Clone, Serialize)]
pub struct InclusionReport {
    pub entry: AuditEntry,
    pub index: u64,
    pub leaf: String,
    pub checkpoint: Checkpoint,
    /// The sibling hashes from the leaf up, hex.
    pub proof: Vec<String>,
}

/// Fetches and verifies the inclusion proof of entry `seq`.
pub async fn prove(client: &Client, key: &[u8], seq: u64) -> anyhow::Result<InclusionReport> {
    let r = client
        .audit()
        .prove_inclusion(pb::ProveInclusionRequest { seq })
        .await
        .map_err(status)?
        .into_inner();
    let checkpoint = checkpoint_of(r.checkpoint)?;
    check_signature(&checkpoint, key)?;
    let entry: AuditEntry = r
        .event
        .ok_or_else(|| anyhow!("the coordinator sent no entry"))?
        .try_into()
        .with_context(|| format!("entry {seq} the coordinator sent"))?;
    if entry.seq as u64 != seq {
        bail!(
            "asked for entry {seq}, the coordinator sent entry {}",
            entry.seq
        );
    }
    let leaf = entry.leaf();
    verify_inclusion(&checkpoint.head, &leaf, seq - 1, &r.proof).map_err(|e| anyhow!(e.message))?;
    Ok(InclusionReport {
        index: seq - 1,
        leaf: hex::encode(leaf),
        proof: r
            .proof
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect(),
        entry,
        checkpoint,
    })
}

/// A node's job log as an auditor receives it: the `jobs.log.jsonl` file
/// or the node's state folder.
pub struct NodeLog {
    pub lines: Vec<String>,
    pub checkpoints: Vec<Checkpoint>,
    folder: PathBuf,
}

impl NodeLog {
    pub fn read(path: &Path) -> anyhow::Result<NodeLog> {
        let (file, folder) = if path.is_dir() {
            (path.join(node_audit::JOB_LOG_FILE), path.to_path_buf())
        } else {
            (
                path.to_path_buf(),
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            )
        };
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "cannot read the node's job log {} (give the node's state folder or its jobs.log.jsonl)",
                file.display()
            )
        })?;
        // A last line without its newline is still being written (or was
        // torn by a crash, and the node cuts it off when it starts): it
        // holds no entry yet.
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let lines = whole
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let checkpoints = node_audit::read_checkpoints(&folder.join(node_audit::CHECKPOINT_FILE))?;
        Ok(NodeLog {
            lines,
            checkpoints,
            folder,
        })
    }

    /// The job ids the node recorded.
    pub fn job_ids(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self.jobs()?.into_keys().collect())
    }

    /// Each job the node recorded, with what became of it: its last
    /// outcome, or `accepted` while it has none.
    pub fn jobs(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut jobs = BTreeMap::new();
        for (i, l) in self.lines.iter().enumerate() {
            let e = serde_json::from_str::<node_audit::LogEntry>(l)
                .with_context(|| format!("line {} of the node's job log is not an entry", i + 1))?;
            if e.job_id.is_empty() {
                continue;
            }
            let last = jobs.entry(e.job_id).or_insert_with(String::new);
            if e.outcome != node_audit::ACCEPTED || last.is_empty() {
                *last = e.outcome;
            }
        }
        Ok(jobs)
    }

    /// The node's audit key beside its log, when the auditor pinned none.
    pub fn key_beside(&self) -> PathBuf {
        plexus_tls::signing_key_files(&self.folder, node_audit::AUDIT_KEY_STEM).1
    }
}

/// What `plexus audit verify --node-log` found.
#[derive(Debug, Clone, Serialize)]
pub struct NodeVerifyReport {
    pub origin: String,
    pub entries: u64,
    pub checkpoints: usize,
    pub latest: Option<TreeHead>,
}

/// Checks a node's job log against every checkpoint it signed.
pub fn verify_node(log: &NodeLog, key: &[u8]) -> anyhow::Result<NodeVerifyReport> {
    for c in &log.checkpoints {
        check_signature(c, key)?;
    }
    let heads: Vec<TreeHead> = log.checkpoints.iter().map(|c| c.head.clone()).collect();
    let entries = verify_log_heads(log.lines.iter().map(|l| leaf_of(l.as_bytes())), &heads)
        .map_err(|e| {
            anyhow!(
                "the node's job log does not match its signed checkpoints: {}",
                e.message
            )
        })?;
    Ok(NodeVerifyReport {
        origin: log
            .checkpoints
            .last()
            .map(|c| c.origin.clone())
            .unwrap_or_default(),
        entries,
        checkpoints: log.checkpoints.len(),
        latest: log
            .checkpoints
            .iter()
            .map(|c| c.head.clone())
            .max_by_key(|h| h.size),
    })
}

/// What `plexus audit reconcile` found: jobs one side has and the other
/// not, or whose ends the two sides tell differently.
///
/// Consistent, so not listed: a job both logs hold; a job the coordinator
/// sent and recorded `missing` (no answer came) that the node never logged
/// (it never reached the node) or logged as dropped (its link broke, or it
/// was killed, with the job in hand). A job the node accepted and has no
/// outcome for yet is counted as in flight.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciliation {
    pub node: String,
    /// Jobs in both logs.
    pub matched: usize,
    /// Jobs sent that never reached the node or that it dropped, which the
    /// coordinator also recorded as unanswered.
    pub unanswered: usize,
    /// Jobs the node accepted and has no outcome for yet (running, or the
    /// node stopped and has not started again).
    pub in_flight: Vec<String>,
    /// Sent by the coordinator and answered in its log, absent from the
    /// node's.
    pub only_coordinator: Vec<String>,
    /// In the node's log, absent from the coordinator's.
    pub only_node: Vec<String>,
    /// The node logged the job dropped, the coordinator an answer.
    pub dropped_but_answered: Vec<String>,
}

impl Reconciliation {
    pub fn is_clean(&self) -> bool {
        self.only_coordinator.is_empty()
            && self.only_node.is_empty()
            && self.dropped_but_answered.is_empty()
    }
}

/// Whether the coordinator recorded no answer for a job: it recorded it
/// `missing` (or another end without an answer), or no end at all yet.
fn unanswered(outcome: Option<&String>) -> bool {
    !matches!(
        outcome.map(String::as_str),
        Some(o) if matches!(o, "answered" | "refused" | "invalid" | "held") || o.starts_with("reviewed")
    )
}

/// Compares the jobs the coordinator sent to `node` with the node's log.
pub async fn reconcile(
    client: &Client,
    log: &NodeLog,
    node: &str,
) -> anyhow::Result<Reconciliation> {
    let at_node = log.jobs()?;
    let mut sent = BTreeSet::new();
    let mut ended: BTreeMap<String, String> = BTreeMap::new();
    stream_log(client, |e| {
        if e.action == "job" && e.node_id == node {
            if e.outcome == "sent" {
                sent.insert(e.job_id);
            } else {
                ended.insert(e.job_id, e.outcome.to_string());
            }
        }
        Ok(())
    })
    .await?;
    let mut r = Reconciliation {
        node: node.to_string(),
        ..Default::default()
    };
    for id in &sent {
        let coordinator = ended.get(id);
        match at_node.get(id) {
            None if unanswered(coordinator) => r.unanswered += 1,
            None => r.only_coordinator.push(id.clone()),
            Some(o) if o.starts_with("dropped") && !unanswered(coordinator) => {
                r.dropped_but_answered.push(id.clone())
            }
            Some(o) if o.starts_with("dropped") => r.unanswered += 1,
            Some(o) => {
                if o == node_audit::ACCEPTED {
                    r.in_flight.push(id.clone());
                }
                r.matched += 1;
            }
        }
    }
    r.only_node = at_node
        .keys()
        .filter(|id| !sent.contains(*id))
        .cloned()
        .collect();
    Ok(r)
}

/// Which entries an export or listing keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub study: Option<String>,
    pub who: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Filter {
    pub fn keeps(&self, e: &AuditEntry) -> bool {
        self.study.as_ref().is_none_or(|s| &e.study_id == s)
            && self.who.as_ref().is_none_or(|w| &e.who == w)
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
    }
}

/// Writes the log's entries as FHIR R4 AuditEvent resources, one JSON
/// object a line (NDJSON); returns how many.
pub async fn export_fhir(
    client: &Client,
    filter: &Filter,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let observer = client
        .audit()
        .get_checkpoint(pb::GetCheckpointRequest { fresh: false })
        .await
        .map(|c| c.into_inner().origin)
        .unwrap_or_else(|_| "coordinator".into());
    let observer = format!("plexus-coordinator/{observer}");
    let mut written = 0;
    stream_log(client, |e| {
        if filter.keeps(&e) {
            let line = serde_json::to_string(&e.to_fhir(&observer))?;
            out.write_all(safe_json(&line).as_bytes())?;
            out.write_all(b"\n")?;
            written += 1;
        }
        Ok(())
    })
    .await?;
    out.flush()?;
    Ok(written)
}

/// Reads a checkpoint an auditor saved (`plexus audit verify --save`).
pub fn read_checkpoint(path: &Path) -> anyhow::Result<Checkpoint> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the saved checkpoint {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a checkpoint saved by `plexus audit verify --save`",
            path.display()
        )
    })
}

// ---- the commands ----

/// The coordinator key to check checkpoints with: `--log-key`, else the
/// `coordinator-signing.pub` in `--pki`.
pub fn pinned_key(
    conn: &plexus_client::ConnectArgs,
    log_key: Option<&Path>,
) -> anyhow::Result<Vec<u8>> {
    let path = match (log_key, &conn.pki) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(pki)) => pki.join("coordinator-signing.pub"),
        (None, None) => bail!(
            "no coordinator key to check the log's checkpoints with: pass --log-key FILE (coordinator-signing.pub, as `plexus pki init` wrote it) or --pki DIR holding it"
        ),
    };
    load_key(&path)
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", safe_json(&serde_json::to_string_pretty(value)?));
    Ok(())
}

fn time(ms: i64) -> String {
    crate::commands::time_text(ms)
}

pub struct VerifyArgs {
    pub log_key: Option<PathBuf>,
    pub since: Option<PathBuf>,
    pub save: Option<PathBuf>,
    pub fresh: bool,
    pub node_log: Option<PathBuf>,
    pub node_key: Option<PathBuf>,
    /// Nodes' `witnessed-checkpoint.json` files to check the log against.
    pub witnessed: Vec<PathBuf>,
    pub output: Report,
}

pub async fn cmd_verify(conn: &plexus_client::ConnectArgs, a: VerifyArgs) -> anyhow::Result<()> {
    if let Some(path) = &a.node_log {
        let log = NodeLog::read(path)?;
        let key_path = a.node_key.clone().unwrap_or_else(|| log.key_beside());
        if a.node_key.is_none() {
            eprintln!(
                "note: checking against {} from the node's own folder; pin the node's key with --node-key for a proof that does not rest on that folder",
                key_path.display()
            );
        }
        let report = verify_node(&log, &load_key(&key_path)?)?;
        if a.output == Report::Json {
            return print_json(&report);
        }
        match &report.latest {
            Some(h) => println!(
                "node log {}: {} entries; all {} checkpoints verify; the latest covers {} entries (root {})",
                safe(&report.origin), report.entries, report.checkpoints, h.size, safe(&h.root)
            ),
            None => println!(
                "node log: {} entries and no checkpoint yet; nothing to verify them against (the node signs one every node.audit_checkpoint_secs)",
                report.entries
            ),
        }
        return Ok(());
    }
    let key = pinned_key(conn, a.log_key.as_deref())?;
    let earlier = a.since.as_deref().map(read_checkpoint).transpose()?;
    let client = Client::connect(conn).await?;
    let files: Vec<&Path> = a.witnessed.iter().map(PathBuf::as_path).collect();
    let report = verify_with(&client, &key, earlier.as_ref(), a.fresh, &files).await?;
    if let Some(path) = &a.save {
        std::fs::write(path, serde_json::to_string_pretty(&report.checkpoint)?)
            .with_context(|| format!("cannot save the checkpoint to {}", path.display()))?;
    }
    if a.output == Report::Json {
        return print_json(&report);
    }
    let c = &report.checkpoint;
    println!(
        "audit log verified: {} entries; checkpoint of {} entries signed by {} at {} (root {})",
        report.entries,
        c.head.size,
        safe(&c.origin),
        time(c.at_unix_ms),
        safe(&c.head.root)
    );
    if report.uncovered > 0 {
        println!(
            "{} newer entries are not yet in a checkpoint; run with --fresh to have one signed now",
            report.uncovered
        );
    }
    let nodes: BTreeSet<&str> = report
        .witnessed
        .iter()
        .filter(|w| w.superseded_by_repair.is_none())
        .map(|w| w.node.as_str())
        .collect();
    if report.witnessed.is_empty() {
        println!(
            "no node has witnessed a checkpoint of this log yet (nodes witness one with every job)"
        );
    } else {
        println!(
            "the log extends the {} checkpoints the hospitals witnessed ({}), up to {} entries",
            report
                .witnessed
                .iter()
                .filter(|w| w.superseded_by_repair.is_none())
                .count(),
            safe(&nodes.into_iter().collect::<Vec<_>>().join(", ")),
            report.witnessed.iter().map(|w| w.size).max().unwrap_or(0)
        );
    }
    for w in report.witnessed.iter().filter(|w| w.unattributed.is_some()) {
        println!(
            "warning: the checkpoint of {} entries from {} cannot be attributed to {}: {}",
            w.size,
            safe(&w.source),
            safe(&w.node),
            safe(w.unattributed.as_deref().unwrap_or_default())
        );
    }
    for r in &report.repairs {
        let before = report
            .witnessed
            .iter()
            .filter(|w| w.superseded_by_repair == Some(r.seq))
            .count();
        println!(
            "warning: entry {} records a repair of the log by {} at {}: {}{}",
            r.seq,
            safe(&r.who),
            time(r.at),
            safe(&r.detail),
            if before > 0 {
                format!(" ({before} checkpoints the hospitals witnessed before it belong to the log as it was)")
            } else {
                String::new()
            }
        );
    }
    if let Some(old) = &report.earlier {
        println!(
            "the log extends your earlier checkpoint of {} entries (root {}): nothing recorded then was changed or removed",
            old.size,
            safe(&old.root)
        );
    }
    if let Some(path) = &a.save {
        println!(
            "checkpoint saved to {}; next time run `plexus audit verify --since {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

pub async fn cmd_prove(
    conn: &plexus_client::ConnectArgs,
    log_key: Option<&Path>,
    seq: u64,
    output: Report,
) -> anyhow::Result<()> {
    if seq == 0 {
        bail!("entries are numbered from 1 (see `plexus audit log`)");
    }
    let key = pinned_key(conn, log_key)?;
    let client = Client::connect(conn).await?;
    let r = prove(&client, &key, seq).await?;
    if output == Report::Json {
        return print_json(&r);
    }
    let e = &r.entry;
    println!(
        "entry {}: {} {} ({}) {} {} at {}",
        e.seq,
        safe(&e.who),
        e.action,
        e.role,
        safe(&e.study_id),
        e.outcome,
        time(e.at)
    );
    println!("leaf {} at index {}", r.leaf, r.index);
    println!(
        "in the tree of {} entries with root {}, checkpoint signed by {} at {}",
        r.checkpoint.head.size,
        safe(&r.checkpoint.head.root),
        safe(&r.checkpoint.origin),
        time(r.checkpoint.at_unix_ms)
    );
    println!("inclusion proof ({} hashes, leaf to root):", r.proof.len());
    for h in &r.proof {
        println!("  {}", safe(h));
    }
    println!("verified: the entry is in the log the checkpoint signed");
    Ok(())
}

pub async fn cmd_reconcile(
    conn: &plexus_client::ConnectArgs,
    node_log: &Path,
    node: &str,
    output: Report,
) -> anyhow::Result<()> {
    let log = NodeLog::read(node_log)?;
    let client = Client::connect(conn).await?;
    let r = reconcile(&client, &log, node).await?;
    if output == Report::Json {
        print_json(&r)?;
    } else {
        println!(
            "node {}: {} jobs in both logs, {} unanswered by both accounts, {} only in the coordinator's, {} only in the node's, {} dropped by the node but answered by the coordinator's",
            safe(&r.node),
            r.matched,
            r.unanswered,
            r.only_coordinator.len(),
            r.only_node.len(),
            r.dropped_but_answered.len()
        );
        for id in &r.in_flight {
            println!(
                "  accepted by the node, no outcome yet (running, or the node has not restarted since it stopped): {}",
                safe(id)
            );
        }
        for id in &r.dropped_but_answered {
            println!(
                "  dropped in the node's log, answered in the coordinator's: {}",
                safe(id)
            );
        }
        for id in &r.only_coordinator {
            println!(
                "  sent by the coordinator, not in the node's log: {}",
                safe(id)
            );
        }
        for id in &r.only_node {
            println!(
                "  in the node's log, not in the coordinator's: {}",
                safe(id)
            );
        }
    }
    if !r.is_clean() {
        bail!(
            "the logs disagree about {} jobs",
            r.only_coordinator.len() + r.only_node.len() + r.dropped_but_answered.len()
        );
    }
    Ok(())
}

pub async fn cmd_export_fhir(
    conn: &plexus_client::ConnectArgs,
    filter: Filter,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let n = export_fhir(&client, &filter, &mut w).await?;
            eprintln!(
                "wrote {n} FHIR R4 AuditEvent resources to {}",
                path.display()
            );
        }
        None => {
            export_fhir(&client, &filter, &mut std::io::stdout().lock()).await?;
        }
    }
    Ok(())
}

/// One node's signed answer to a query, as a third party checked it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeEvidence {
    pub node: String,
    pub job_id: String,
    pub status: String,
    /// `stats` or `error:<code>` as the node signed it.
    pub signed_outcome: Option<String>,
    pub signed_at: Option<i64>,
    pub charged_rho: Option<f64>,
    /// Empty when every check passed.
    pub problems: Vec<String>,
}

/// Fetches what each node signed for `query_id` and checks it: the
/// certificate was issued by the network CA to that node and valid when it
/// signed, the signature verifies, and the statement names that job and node.
pub async fn evidence(
    client: &Client,
    ca: &[plexus_tls::CertificateDer<'static>],
    query_id: &str,
) -> anyhow::Result<Vec<NodeEvidence>> {
    use prost::Message;
    let r = client
        .audit()
        .query_evidence(pb::QueryEvidenceRequest {
            query_id: query_id.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    Ok(r.nodes
        .into_iter()
        .map(|n| {
            let mut e = NodeEvidence {
                node: n.node_id.clone(),
                job_id: n.job_id.clone(),
                status: n.status.clone(),
                signed_outcome: None,
                signed_at: None,
                charged_rho: None,
                problems: Vec::new(),
            };
            if n.statement.is_empty() {
                e.problems
                    .push(format!("no signed answer (the job ended {})", n.status));
                return e;
            }
            let statement = match pb::ResultStatement::decode(n.statement.as_slice()) {
                Ok(s) => s,
                Err(err) => {
                    e.problems
                        .push(format!("the stored statement does not decode: {err}"));
                    return e;
                }
            };
            e.signed_at = Some(statement.signed_unix_ms);
            e.charged_rho = statement.privacy.as_ref().map(|p| p.charged_rho);
            e.signed_outcome = statement.outcome.as_ref().map(|o| match o {
                pb::result_statement::Outcome::Stats(_) => "stats".to_string(),
                pb::result_statement::Outcome::Keys(_) => "secure-aggregation keys".to_string(),
                pb::result_statement::Outcome::Masked(_) => "masked stats".to_string(),
                pb::result_statement::Outcome::Confirmed(_) => {
                    "secure-aggregation survivor list".to_string()
                }
                pb::result_statement::Outcome::Unmasked(_) => {
                    "secure-aggregation unmasking".to_string()
                }
                pb::result_statement::Outcome::Error(err) => {
                    format!("error:{}", plexus_core::Error::from(err.clone()).code)
                }
            });
            if let Err(err) =
                plexus_tls::verify_issued_by(ca, &n.certificate, statement.signed_unix_ms)
            {
                e.problems.push(err);
            }
            match plexus_tls::identity_from_cert(&plexus_tls::CertificateDer::from(
                n.certificate.clone(),
            )) {
                Ok(id) if id.role == plexus_tls::Role::Node && id.name == n.node_id => {}
                Ok(id) => e.problems.push(format!(
                    "the certificate belongs to {} {}, not node {}",
                    id.role, id.name, n.node_id
                )),
                Err(err) => e
                    .problems
                    .push(format!("the certificate names no identity: {err}")),
            }
            if let Err(err) =
                plexus_tls::verify_by_certificate(&n.certificate, &n.statement, &n.signature)
            {
                e.problems.push(err);
            }
            if statement.job_id != n.job_id || statement.node_id != n.node_id {
                e.problems.push(format!(
                    "the statement names job {} of node {}, not job {} of node {}",
                    statement.job_id, statement.node_id, n.job_id, n.node_id
                ));
            }
            e
        })
        .collect())
}

pub async fn cmd_evidence(
    conn: &plexus_client::ConnectArgs,
    query_id: &str,
    output: Report,
) -> anyhow::Result<()> {
    let ca_path = conn
        .ca
        .clone()
        .or_else(|| conn.pki.as_ref().map(|p| p.join("ca.pem")))
        .ok_or_else(|| {
            anyhow!("pass --ca (the network CA) or --pki to check the nodes' certificates")
        })?;
    let ca = plexus_tls::load_certs(&ca_path)?;
    let client = Client::connect(conn).await?;
    let nodes = evidence(&client, &ca, query_id).await?;
    if output == Report::Json {
        print_json(&nodes)?;
    } else {
        for n in &nodes {
            let what = n.signed_outcome.as_deref().unwrap_or("-");
            let when = n.signed_at.map(time).unwrap_or_default();
            if n.problems.is_empty() {
                println!(
                    "{}: job {} {} signed at {} (rho {:.4}): signature, certificate and statement check",
                    safe(&n.node),
                    safe(&n.job_id),
                    safe(what),
                    when,
                    n.charged_rho.unwrap_or(0.0)
                );
            } else {
                println!(
                    "{}: job {} ({}): {}",
                    safe(&n.node),
                    safe(&n.job_id),
                    safe(&n.status),
                    safe(&n.problems.join("; "))
                );
            }
        }
    }
    let bad = nodes
        .iter()
        .filter(|n| !n.problems.is_empty() && n.status == "answered")
        .count();
    if bad > 0 {
        bail!("{bad} answered jobs do not carry a valid node signature");
    }
    Ok(())
}
