use std::sync::Arc;

use prost::Message;

use plexus_core::{Cell, NodeStats};
use plexus_proto::v1 as pb;

use super::cli;
use super::*;

const NOW: i64 = 1_800_000_000_000;
const JOB: &str = "0123456789abcdef0123456789abcdef";

fn held(job_id: &str, stats: &NodeStats) -> HeldResult {
    HeldResult {
        job_id: job_id.into(),
        node_id: "hospital-a".into(),
        study_id: "aaa-outcomes".into(),
        study_definition_hash: "ab".repeat(32),
        purpose: "DS:MONDO:0005160".into(),
        analysis: "count".into(),
        query_hash: "cd".repeat(32),
        query: serde_json::json!({"analysis": {"count": {}}}),
        job_hash: "ef".repeat(32),
        held_unix_ms: NOW,
        deadline_unix_ms: NOW + 60_000,
        stats: hex::encode(pb::NodeStats::from(stats).encode_to_vec()),
        privacy: None,
        data_snapshot: "snap".into(),
        summary: "1 values, 0 suppressed; exact".into(),
        secure_aggregation: None,
    }
}

fn decision(verdict: Verdict, by: &str) -> Decision {
    Decision {
        verdict,
        reason: String::new(),
        by: by.into(),
        decided_unix_ms: NOW + 1,
    }
}

#[test]
fn a_held_result_shows_the_exact_aggregate_and_takes_one_decision() {
    let dir = tempfile::tempdir().unwrap();
    let queue = ReviewQueue::open(dir.path()).unwrap();
    let stats = NodeStats::Count(Cell::Count(42));
    queue.hold(&held(JOB, &stats)).unwrap();

    let entry = queue.entry(JOB).unwrap();
    assert_eq!(entry.status(), Status::Pending);
    assert_eq!(
        entry.held.answer_by_unix_ms(),
        NOW + 60_000 - ANSWER_MARGIN_MS
    );
    assert_eq!(cli::stats(&entry).unwrap(), stats);
    let json = cli::show_json(&entry).unwrap();
    assert_eq!(json["stats"], serde_json::to_value(&stats).unwrap());
    assert_eq!(json["status"], "pending");
    assert!(cli::show_text(&entry).unwrap().contains("\"count\": 42"));
    let listed = cli::list(&queue, false, NOW).unwrap();
    assert!(
        listed.contains(JOB) && listed.contains("pending"),
        "{listed}"
    );

    // A rejection needs a reason; an approval after the decide-by time is refused.
    let e = cli::decide(&queue, JOB, Verdict::Rejected, " ", "steward", NOW).unwrap_err();
    assert!(e.to_string().contains("--reason"), "{e}");
    let late = entry.held.answer_by_unix_ms();
    let e = cli::decide(&queue, JOB, Verdict::Approved, "", "steward", late).unwrap_err();
    assert!(e.to_string().contains("had to be decided by"), "{e}");
    assert_eq!(queue.entry(JOB).unwrap().decision, None);

    let said = cli::decide(&queue, JOB, Verdict::Approved, "", "steward", NOW + 5).unwrap();
    assert!(said.contains("approved"), "{said}");
    let entry = queue.entry(JOB).unwrap();
    assert_eq!(entry.status(), Status::Decided(Verdict::Approved));
    assert_eq!(entry.decision.as_ref().unwrap().by, "steward");
    // The first decision stands, whoever comes second.
    let e = cli::decide(&queue, JOB, Verdict::Rejected, "no", "other", NOW + 6).unwrap_err();
    assert!(e.to_string().contains("already approved by steward"), "{e}");
    let (standing, ours) = queue
        .decide(JOB, &decision(Verdict::Expired, "plexus-node"))
        .unwrap();
    assert!(!ours);
    assert_eq!(standing.verdict, Verdict::Approved);

    // Answered, then closed: no longer pending, no longer open.
    assert_eq!(queue.open_items().unwrap(), vec![(JOB.to_string(), false)]);
    queue.save_answer(JOB, b"answer").unwrap();
    assert_eq!(queue.open_items().unwrap(), vec![(JOB.to_string(), true)]);
    assert_eq!(queue.answer(JOB).unwrap(), b"answer");
    queue.close(JOB, "sent at then").unwrap();
    assert!(queue.open_items().unwrap().is_empty());
    let entry = queue.entry(JOB).unwrap();
    assert_eq!(entry.status(), Status::Answered(Verdict::Approved));
    assert_eq!(entry.closed.as_deref(), Some("sent at then"));
    assert!(cli::list(&queue, false, NOW)
        .unwrap()
        .contains("no result is waiting"));
    assert!(cli::list(&queue, true, NOW).unwrap().contains(JOB));

    // The queue is files: a new handle (a restarted node) sees the same.
    let again = ReviewQueue::open(dir.path()).unwrap();
    assert_eq!(again.entries().unwrap(), vec![entry]);
    // No stray files are left behind.
    let names: Vec<String> = std::fs::read_dir(queue.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn racing_decisions_leave_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(ReviewQueue::open(dir.path()).unwrap());
    queue
        .hold(&held(JOB, &NodeStats::Count(Cell::Suppressed)))
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let verdict = if i % 2 == 0 {
                    Verdict::Approved
                } else {
                    Verdict::Rejected
                };
                queue
                    .decide(JOB, &decision(verdict, &format!("steward-{i}")))
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<(Decision, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|(_, ours)| *ours).count(), 1);
    let standing = queue.entry(JOB).unwrap().decision.unwrap();
    assert!(results.iter().all(|(d, _)| *d == standing));
}

#[test]
fn job_ids_that_are_not_hex_name_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let queue = ReviewQueue::open(dir.path()).unwrap();
    for bad in ["../jobs.log", "", "abc/def", "x.held"] {
        let e = queue.entry(bad).unwrap_err();
        assert!(e.to_string().contains("is not a job id"), "{bad}: {e}");
        assert!(queue
            .decide(bad, &decision(Verdict::Approved, "s"))
            .is_err());
    }
    let e = queue.entry(JOB).unwrap_err();
    assert!(e.to_string().contains("no result of job"), "{e}");
    let e = queue
        .decide(JOB, &decision(Verdict::Approved, "s"))
        .unwrap_err();
    assert!(e.to_string().contains("no result of job"), "{e}");
}
