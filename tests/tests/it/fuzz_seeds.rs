//! The wire fuzz targets' seed corpora (fuzz/seeds/), encoded from the
//! example queries in deploy/queries and deploy/study.toml: this test fails
//! when they drift from what the code encodes today. Regenerate them with
//! `PLEXUS_WRITE_FUZZ_SEEDS=1 cargo test -p plexus-tests --test it -- fuzz_seeds::`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use plexus_core::audit::{Action, AuditEntry, Outcome, Role};
use plexus_core::disclosure::{apply, Rules};
use plexus_core::merkle::{Checkpoint, MerkleLog};
use plexus_core::stats::SummarySums;
use plexus_core::{Dictionary, Query, RawStats, StudyDefinition};
use plexus_proto::v1 as pb;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// deploy/queries/*.json by file stem, in name order.
fn deploy_queries() -> Vec<(String, Query)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/queries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            (stem, Query::from_json(&text).unwrap())
        })
        .collect()
}

fn study() -> StudyDefinition {
    StudyDefinition::from_toml(&std::fs::read_to_string(repo().join("deploy/study.toml")).unwrap())
        .unwrap()
}

fn to_node() -> BTreeMap<String, Vec<u8>> {
    let purpose = pb::Purpose::from(&study().purpose().unwrap());
    deploy_queries()
        .into_iter()
        .map(|(name, q)| {
            let job = pb::Job {
                job_id: "0123456789abcdef0123456789abcdef".into(),
                study_id: "aaa-outcomes".into(),
                purpose: Some(purpose.clone()),
                query: Some((&q).into()),
                min_cell_size: 5,
                deadline_unix_ms: 1_800_000_060_000,
                query_hash: q.hash(),
                audience: "hospital-a".into(),
                issued_unix_ms: 1_800_000_000_000,
                ..Default::default()
            };
            let msg = pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::SignedJob(pb::SignedJob {
                    job: job.encode_to_vec(),
                    signature: vec![0; 64],
                })),
            };
            (format!("job-{name}"), msg.encode_to_vec())
        })
        .chain(secure_jobs())
        .collect()
}

const NODES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
const SESSION: &str = "00112233445566778899aabbccddeeff";

/// A signed key bundle of fixed bytes (the fuzzers check shapes, not
/// signatures).
fn bundle(node: &str) -> pb::SignedKeyBundle {
    let b = pb::KeyBundle {
        session_id: SESSION.into(),
        study_id: "aaa-secure".into(),
        study_definition_hash: "ab".repeat(32),
        query_binding: vec![1; 32],
        node_id: node.into(),
        keys: NODES
            .iter()
            .filter(|p| **p != node)
            .map(|p| pb::PeerKey {
                peer: p.to_string(),
                public_key: vec![9; 32],
            })
            .collect(),
    };
    pb::SignedKeyBundle {
        bundle: b.encode_to_vec(),
        signature: vec![3; 72],
        certificate: vec![4; 400],
    }
}

/// Each step of a secure aggregation session as a node receives it.
fn secure_jobs() -> Vec<(String, Vec<u8>)> {
    use pb::secure_aggregation::Step;
    let roster = pb::Roster {
        session_id: SESSION.into(),
        nodes: NODES
            .iter()
            .map(|n| pb::RosterNode {
                node_id: n.to_string(),
                bundle: Some(bundle(n)),
            })
            .collect(),
    };
    let steps = [
        (
            "keys",
            Step::KeyRequest(pb::KeyRequest {
                nodes: NODES.map(String::from).to_vec(),
                study_definition: serde_json::to_vec(&study()).unwrap(),
            }),
        ),
        (
            "mask",
            Step::Mask(pb::MaskRequest {
                roster: Some(roster),
                step: 1,
            }),
        ),
        (
            "confirm",
            Step::Confirm(pb::ConfirmRequest {
                step: 1,
                survivors: NODES[..2].iter().map(|n| n.to_string()).collect(),
                dropped: vec![NODES[2].into()],
            }),
        ),
        (
            "unmask",
            Step::Unmask(pb::UnmaskRequest {
                step: 1,
                survivors: NODES[..2].iter().map(|n| n.to_string()).collect(),
                dropped: vec![NODES[2].into()],
                confirmations: vec![pb::SurvivorSignature {
                    node_id: NODES[1].into(),
                    signature: vec![5; 72],
                }],
                shares: vec![pb::EncryptedShare {
                    sender: NODES[1].into(),
                    recipient: String::new(),
                    ciphertext: vec![6; 49],
                }],
            }),
        ),
    ];
    steps
        .into_iter()
        .map(|(name, step)| {
            let job = pb::Job {
                job_id: "0123456789abcdef0123456789abcdef".into(),
                study_id: "aaa-secure".into(),
                audience: "hospital-a".into(),
                secure_aggregation: Some(pb::SecureAggregation {
                    session_id: SESSION.into(),
                    step: Some(step),
                }),
                ..Default::default()
            };
            (format!("job-secure-{name}"), job.encode_to_vec())
        })
        .collect()
}

/// Each answer of a node in a secure aggregation session.
fn secure_results() -> Vec<(String, Vec<u8>)> {
    use pb::job_result::Outcome;
    let outcomes = [
        (
            "keys",
            Outcome::Keys(pb::KeyShare {
                session_id: SESSION.into(),
                bundle: Some(bundle(NODES[0])),
            }),
        ),
        (
            "masked",
            Outcome::Masked(pb::MaskedStats {
                session_id: SESSION.into(),
                roster_digest: vec![2; 32],
                step: 1,
                vector: vec![0xa5; 32],
                shares: NODES[1..]
                    .iter()
                    .map(|n| pb::EncryptedShare {
                        sender: String::new(),
                        recipient: n.to_string(),
                        ciphertext: vec![6; 49],
                    })
                    .collect(),
                self_mask_commitment: vec![8; 32],
            }),
        ),
        (
            "confirmed",
            Outcome::Confirmed(pb::Confirmation {
                session_id: SESSION.into(),
                step: 1,
                survivors: NODES[..2].iter().map(|n| n.to_string()).collect(),
                signature: vec![5; 72],
            }),
        ),
        (
            "unmasked",
            Outcome::Unmasked(pb::Unmasked {
                session_id: SESSION.into(),
                step: 1,
                shares: vec![pb::RevealedShare {
                    owner: NODES[1].into(),
                    share: vec![1; 33],
                }],
                seeds: vec![pb::RevealedSeed {
                    peer: NODES[2].into(),
                    seed: vec![7; 32],
                }],
            }),
        ),
    ];
    outcomes
        .into_iter()
        .map(|(name, outcome)| {
            let msg = pb::NodeMessage {
                msg: Some(pb::node_message::Msg::Result(pb::JobResult {
                    job_id: "0123456789abcdef0123456789abcdef".into(),
                    outcome: Some(outcome),
                    ..Default::default()
                })),
            };
            (format!("result-secure-{name}"), msg.encode_to_vec())
        })
        .collect()
}

fn to_coordinator() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (name, q) in deploy_queries() {
        let r = pb::SubmitQueryRequest {
            study_id: "aaa-outcomes".into(),
            query: Some((&q).into()),
            ..Default::default()
        };
        out.insert(format!("submit-{name}"), r.encode_to_vec());
    }
    let r = pb::RegisterStudyRequest {
        study: Some(plexus_proto::convert::study_to_pb(&study(), 0)),
    };
    out.insert("register-study".into(), r.encode_to_vec());
    let dict = Dictionary::cardiovascular();
    let sbp = dict.get("sbp").unwrap();
    let raws = [
        ("count", RawStats::Count(42)),
        (
            "histogram",
            RawStats::Histogram {
                bins: vec![7, 12, 30, 9],
                below: 6,
                above: 0,
            },
        ),
        (
            "table",
            RawStats::Table {
                rows: 2,
                columns: 2,
                cells: vec![20, 8, 15, 6],
            },
        ),
        (
            "summary",
            RawStats::Summary(SummarySums::of(
                sbp,
                "sbp",
                &(0..40).map(|i| 110.0 + i as f64).collect::<Vec<_>>(),
            )),
        ),
    ];
    for (name, raw) in raws {
        let stats = apply(raw, Rules::new(5));
        let msg = pb::NodeMessage {
            msg: Some(pb::node_message::Msg::Result(pb::JobResult {
                job_id: "0123456789abcdef0123456789abcdef".into(),
                outcome: Some(pb::job_result::Outcome::Stats((&stats).into())),
                ..Default::default()
            })),
        };
        out.insert(format!("result-{name}"), msg.encode_to_vec());
    }
    out.extend(secure_results());
    out
}

fn audit() -> BTreeMap<String, Vec<u8>> {
    // A fixed key: Ed25519 signatures are deterministic, so the seeds are too.
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let public = hex::encode(ring::signature::KeyPair::public_key(&key).as_ref());
    let entries: Vec<AuditEntry> = (1..=5)
        .map(|seq| AuditEntry {
            seq,
            at: 1_800_000_000_000 + seq,
            study_id: "aaa-outcomes".into(),
            ..AuditEntry::new(
                "alice",
                Role::Researcher,
                Action::QuerySubmit,
                Outcome::Accepted,
            )
        })
        .collect();
    let log = MerkleLog::from_leaves(entries.iter().map(AuditEntry::leaf));
    let checkpoint = |size: u64| {
        let head =
            MerkleLog::from_leaves(entries[..size as usize].iter().map(AuditEntry::leaf)).head();
        let mut c = pb::SignedCheckpoint::from(Checkpoint::sign(
            &key,
            "coordinator",
            head,
            1_800_000_000_100,
        ));
        c.public_key = public.clone();
        c
    };
    let mut out = BTreeMap::new();
    let inclusion = pb::InclusionProof {
        event: Some(entries[2].clone().into()),
        checkpoint: Some(checkpoint(5)),
        proof: log.prove_inclusion(2).unwrap(),
    };
    out.insert("inclusion".into(), inclusion.encode_to_vec());
    let consistency = pb::ConsistencyProof {
        checkpoint: Some(checkpoint(5)),
        proof: log.prove_consistency(2).unwrap(),
    };
    out.insert("consistency".into(), consistency.encode_to_vec());
    let list = pb::ListEventsResponse {
        events: entries.iter().cloned().map(Into::into).collect(),
    };
    out.insert("events".into(), list.encode_to_vec());
    out
}

#[test]
fn the_wire_fuzz_seeds_are_what_the_code_encodes() {
    let write = std::env::var_os("PLEXUS_WRITE_FUZZ_SEEDS").is_some();
    let targets = [
        ("wire_to_node", to_node()),
        ("wire_to_coordinator", to_coordinator()),
        ("audit_proofs", audit()),
    ];
    for (target, seeds) in targets {
        let dir = repo().join("fuzz/seeds").join(target);
        if write {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort();
        for (name, bytes) in &seeds {
            let path = dir.join(name);
            if write {
                std::fs::write(&path, bytes).unwrap();
                continue;
            }
            let kept = std::fs::read(&path).unwrap_or_default();
            assert!(
                kept == *bytes,
                "{} is out of date: regenerate the seeds with PLEXUS_WRITE_FUZZ_SEEDS=1 cargo test -p plexus-tests --test it -- fuzz_seeds::",
                path.display()
            );
        }
        if !write {
            let expected: Vec<String> = seeds.keys().cloned().collect();
            assert_eq!(
                on_disk, expected,
                "fuzz/seeds/{target} holds other files than the seeds (regenerate them)"
            );
        }
    }
}
