//! `plexus audit verify` against the checkpoints the hospitals witnessed.
//! Every job shows its node the coordinator's latest signed checkpoint,
//! and the node signs the one it witnessed into its answer; the
//! coordinator keeps those answers. A checkpoint carrying the coordinator's
//! own signature that the log does not extend proves the log was
//! rewritten, truncated or shown differently to different hospitals,
//! whoever relays it: so the log is caught with no checkpoint saved by
//! anyone, unless the coordinator also destroyed every answer it kept (and
//! then the nodes' own `witnessed-checkpoint.json` files, given with
//! `--witnessed`, still hold one each).

use std::path::Path;

use anyhow::{anyhow, Context};
use prost::Message;
use serde::Serialize;

use plexus_core::merkle::{Checkpoint, Leaf, MerkleLog};
use plexus_proto::v1 as pb;

use plexus_client::Client;

/// One checkpoint a node witnessed, as checked against the log.
#[derive(Debug, Clone, Serialize)]
pub struct Witnessed {
    /// The node that witnessed it (from its signed statement, or the file).
    pub node: String,
    /// Where it was found: the job whose signed answer carries it, or a file.
    pub source: String,
    pub size: u64,
    pub root: String,
    pub signed_at: i64,
    /// Empty when the log extends it.
    pub problems: Vec<String>,
    /// Why the node that relayed it cannot be confirmed (its signature over
    /// the kept answer fails). The checkpoint still counts: its evidence is
    /// the coordinator's own signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unattributed: Option<String>,
    /// Signed before an `audit.repair` entry that recorded a break: the
    /// log it belonged to was repaired, and the repair is reported instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by_repair: Option<i64>,
}

/// An `audit.repair` entry of the log.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRepair {
    pub seq: i64,
    pub at: i64,
    pub who: String,
    pub detail: String,
}

/// The checkpoints the nodes witnessed, from the answers the coordinator
/// kept, plus those of nodes' `witnessed-checkpoint.json` files.
pub async fn collect(
    client: &Client,
    files: &[&Path],
) -> anyhow::Result<Vec<(Witnessed, Checkpoint)>> {
    let r = client
        .audit()
        .witnessed_checkpoints(pb::WitnessedCheckpointsRequest {})
        .await
        .map_err(|s| {
            let e = plexus_proto::convert::from_status(&s);
            anyhow!("{}: {}", e.code, e.message)
        })?
        .into_inner();
    let mut out = Vec::new();
    for n in r.evidence {
        let Ok(statement) = pb::ResultStatement::decode(n.statement.as_slice()) else {
            continue;
        };
        let Some(w) = statement.witnessed else {
            continue;
        };
        let unattributed =
            plexus_tls::verify_by_certificate(&n.certificate, &n.statement, &n.signature)
                .err()
                .map(|e| format!("the node's signature over its kept answer does not verify: {e}"));
        let c = Checkpoint::from(w);
        out.push((
            Witnessed {
                node: statement.node_id.clone(),
                source: format!("answer to job {}", n.job_id),
                size: c.head.size,
                root: c.head.root.clone(),
                signed_at: c.at_unix_ms,
                problems: Vec::new(),
                unattributed,
                superseded_by_repair: None,
            },
            c,
        ));
    }
    for path in files {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the node's witnessed checkpoint file {}",
                path.display()
            )
        })?;
        let file: plexus_core::node_audit::Witnessed =
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a node's witnessed-checkpoint.json",
                    path.display()
                )
            })?;
        // The file names no node: whoever handed it over vouches for it.
        let node = format!("the node whose file is {}", path.display());
        let mut shown: Vec<Checkpoint> = file.checkpoint.into_iter().collect();
        if let Some(b) = file.broken {
            // What the node refused is evidence too: the coordinator signed it.
            shown.push(b.shown);
        }
        for c in shown {
            out.push((
                Witnessed {
                    node: node.clone(),
                    source: path.display().to_string(),
                    size: c.head.size,
                    root: c.head.root.clone(),
                    signed_at: c.at_unix_ms,
                    problems: Vec::new(),
                    unattributed: None,
                    superseded_by_repair: None,
                },
                c,
            ));
        }
    }
    Ok(out)
}

/// Checks each witnessed checkpoint: signed by the pinned coordinator key
/// and made by the log's own entries. A checkpoint signed before a
/// recorded repair and not matching is reported as superseded by it.
pub fn check(
    witnessed: Vec<(Witnessed, Checkpoint)>,
    key: &[u8],
    leaves: &[Leaf],
    repairs: &[RecordedRepair],
) -> Vec<Witnessed> {
    let mut sizes: Vec<u64> = witnessed.iter().map(|(_, c)| c.head.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    // The log's root at each witnessed size, in one pass.
    let mut roots = std::collections::HashMap::new();
    let mut tree = MerkleLog::new();
    let mut next = sizes.iter().peekable();
    if next.peek() == Some(&&0) {
        roots.insert(0, tree.head().root);
        next.next();
    }
    for leaf in leaves {
        tree.push(*leaf);
        if next.peek() == Some(&&tree.len()) {
            roots.insert(tree.len(), tree.head().root);
            next.next();
        }
    }
    witnessed
        .into_iter()
        .map(|(mut w, c)| {
            if let Err(e) = c.verify(key) {
                w.problems.push(format!(
                    "{}; it is not signed by the coordinator key you pinned, so it says nothing about this log",
                    e.message
                ));
                return w;
            }
            let problem = match roots.get(&c.head.size) {
                None => Some(format!(
                    "{} witnessed a checkpoint of {} entries but the log holds {}: entries were removed or the log was truncated",
                    w.node,
                    c.head.size,
                    leaves.len()
                )),
                Some(root) if *root != c.head.root => Some(format!(
                    "{} witnessed a checkpoint of {} entries with root {} but the log's first {} entries make root {}: entries were edited, removed or reordered, or the log shown to this hospital was another",
                    w.node, c.head.size, c.head.root, c.head.size, root
                )),
                Some(_) => None,
            };
            if let Some(p) = problem {
                match repairs.iter().find(|r| r.at >= c.at_unix_ms) {
                    Some(r) => w.superseded_by_repair = Some(r.seq),
                    None => w.problems.push(p),
                }
            }
            w
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::merkle::leaf_of;
    use plexus_tls::SigningKey;

    /// The coordinator's key and the public half an auditor pins.
    fn key(dir: &Path, stem: &str) -> (SigningKey, Vec<u8>) {
        let (key, _, _) = SigningKey::generate_into(dir, stem).unwrap();
        let public = hex::decode(key.public_hex()).unwrap();
        (key, public)
    }

    fn leaves(entries: &[&str]) -> Vec<Leaf> {
        entries.iter().map(|e| leaf_of(e.as_bytes())).collect()
    }

    /// The checkpoint a node was shown over `leaves`, signed by `key`.
    fn shown(key: &SigningKey, leaves: &[Leaf], at: i64) -> (Witnessed, Checkpoint) {
        let head = MerkleLog::from_leaves(leaves.iter().copied()).head();
        let c = Checkpoint::sign_with(|m| key.sign(m), "coordinator", head, at);
        let w = Witnessed {
            node: "hospital-a".into(),
            source: "answer to job j-1".into(),
            size: c.head.size,
            root: c.head.root.clone(),
            signed_at: c.at_unix_ms,
            problems: Vec::new(),
            unattributed: None,
            superseded_by_repair: None,
        };
        (w, c)
    }

    const LOG: [&str; 5] = ["e1", "e2", "e3", "e4", "e5"];

    /// What hospital-a witnessed at 3 entries, checked against `log`.
    fn check_against(log: &[Leaf], repairs: &[RecordedRepair]) -> Witnessed {
        let dir = tempfile::tempdir().unwrap();
        let (coordinator, pinned) = key(dir.path(), "coordinator");
        let witnessed = shown(&coordinator, &leaves(&LOG[..3]), 1_000);
        let mut out = check(vec![witnessed], &pinned, log, repairs);
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn a_log_that_extends_the_witnessed_checkpoint_passes() {
        let w = check_against(&leaves(&LOG), &[]);
        assert!(w.problems.is_empty(), "{:?}", w.problems);
        assert_eq!(w.superseded_by_repair, None);
    }

    #[test]
    fn an_entry_changed_under_a_witnessed_checkpoint_fails_naming_the_roots() {
        let edited = leaves(&["e1", "e2 (edited)", "e3", "e4", "e5"]);
        let w = check_against(&edited, &[]);
        assert_eq!(w.problems.len(), 1, "{:?}", w.problems);
        let p = &w.problems[0];
        let honest = MerkleLog::from_leaves(leaves(&LOG[..3])).head().root;
        let altered = MerkleLog::from_leaves(edited[..3].iter().copied())
            .head()
            .root;
        assert!(
            p.contains("hospital-a witnessed a checkpoint of 3 entries")
                && p.contains(&format!("with root {honest}"))
                && p.contains(&format!("make root {altered}"))
                && p.contains("edited, removed or reordered"),
            "{p}"
        );
    }

    #[test]
    fn a_log_truncated_below_a_witnessed_checkpoint_fails() {
        let w = check_against(&leaves(&LOG[..2]), &[]);
        assert_eq!(
            w.problems,
            ["hospital-a witnessed a checkpoint of 3 entries but the log holds 2: entries were removed or the log was truncated"]
        );
    }

    /// A checkpoint of another log, validly signed by another key: it
    /// proves nothing about this log and is reported as not the pinned
    /// key's, not compared.
    #[test]
    fn a_checkpoint_signed_by_another_key_is_reported_as_unsigned() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pinned) = key(dir.path(), "coordinator");
        let (other, other_public) = key(dir.path(), "impostor");
        let (w, c) = shown(&other, &leaves(&["x1", "x2", "x3"]), 1_000);
        assert!(c.verify(&other_public).is_ok(), "a valid signature");
        let out = check(vec![(w, c)], &pinned, &leaves(&LOG), &[]);
        assert_eq!(out[0].problems.len(), 1, "{:?}", out[0].problems);
        assert!(
            out[0].problems[0].contains("does not carry a valid signature")
                && out[0].problems[0].contains("not signed by the coordinator key you pinned"),
            "{}",
            out[0].problems[0]
        );
    }

    /// A repair recorded after the checkpoint was signed explains the
    /// mismatch (reported as the repair); one recorded before does not.
    #[test]
    fn only_a_later_recorded_repair_supersedes_a_mismatch() {
        let edited = leaves(&["e1", "e2 (edited)", "e3", "e4", "e5"]);
        let repair = |at| RecordedRepair {
            seq: 5,
            at,
            who: "operator".into(),
            detail: "restored from backup".into(),
        };
        let w = check_against(&edited, &[repair(2_000)]);
        assert!(w.problems.is_empty(), "{:?}", w.problems);
        assert_eq!(w.superseded_by_repair, Some(5));
        let w = check_against(&edited, &[repair(500)]);
        assert_eq!(w.superseded_by_repair, None);
        assert_eq!(w.problems.len(), 1, "{:?}", w.problems);
    }
}
