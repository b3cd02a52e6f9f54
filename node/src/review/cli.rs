//! What the data steward's `plexus-node review ...` commands do and print.
//! They work on the queue's files only, so they need no connection to the
//! running daemon, which picks decisions up on its next sweep.

use plexus_core::privacy::report::Receipt;
use plexus_core::NodeStats;
use plexus_proto::v1 as pb;
use prost::Message;

use super::desk::rfc3339;
use super::{Decision, Entry, ReviewQueue, Status, Verdict};
use crate::error::NodeError;

/// `review list`: pending results (every result with `all`), oldest first.
pub fn list(queue: &ReviewQueue, all: bool, now_ms: i64) -> Result<String, NodeError> {
    let entries: Vec<Entry> = queue
        .entries()?
        .into_iter()
        .filter(|e| all || e.status() == Status::Pending)
        .collect();
    if entries.is_empty() {
        return Ok(if all {
            "the review queue is empty".into()
        } else {
            "no result is waiting for review (`plexus-node review list --all` shows decided ones)"
                .into()
        });
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let status = match e.status() {
                Status::Pending if now_ms >= e.held.answer_by_unix_ms() => {
                    "pending (too late: expires unreleased)".to_string()
                }
                s => s.to_string(),
            };
            [
                e.held.job_id.clone(),
                e.held.study_id.clone(),
                e.held.analysis.clone(),
                rfc3339(e.held.held_unix_ms),
                rfc3339(e.held.answer_by_unix_ms()),
                status,
            ]
        })
        .collect();
    let header = ["job", "study", "analysis", "held at", "decide by", "status"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(&header.map(String::from))];
    out.extend(rows.iter().map(|r| line(r)));
    Ok(out.join("\n"))
}

/// The held aggregate, decoded from the exact bytes that leave on approval.
pub fn stats(entry: &Entry) -> Result<NodeStats, NodeError> {
    let damaged = |e: &dyn std::fmt::Display| {
        NodeError::State(format!(
            "the held result of job {} is damaged ({e})",
            entry.held.job_id
        ))
    };
    let bytes = hex::decode(&entry.held.stats).map_err(|e| damaged(&e))?;
    let wire = pb::NodeStats::decode(bytes.as_slice()).map_err(|e| damaged(&e))?;
    NodeStats::try_from(wire).map_err(|e| damaged(&e))
}

/// The privacy receipt that leaves with the aggregate; none for exact studies.
pub fn receipt(entry: &Entry) -> Result<Option<Receipt>, NodeError> {
    let damaged = |e: &dyn std::fmt::Display| {
        NodeError::State(format!(
            "the held privacy receipt of job {} is damaged ({e})",
            entry.held.job_id
        ))
    };
    entry
        .held
        .privacy
        .as_ref()
        .map(|p| {
            let bytes = hex::decode(p).map_err(|e| damaged(&e))?;
            let wire = pb::PrivacyReceipt::decode(bytes.as_slice()).map_err(|e| damaged(&e))?;
            Receipt::try_from(wire).map_err(|e| damaged(&e))
        })
        .transpose()
}

/// `review show JOB --output json`: everything about one held result; its
/// `stats` is the aggregate exactly as it would leave.
pub fn show_json(entry: &Entry) -> Result<serde_json::Value, NodeError> {
    let h = &entry.held;
    Ok(serde_json::json!({
        "job_id": h.job_id,
        "node_id": h.node_id,
        "study_id": h.study_id,
        "study_definition_hash": h.study_definition_hash,
        "purpose": h.purpose,
        "analysis": h.analysis,
        "query_hash": h.query_hash,
        "query": h.query,
        "held_at": rfc3339(h.held_unix_ms),
        "decide_by": rfc3339(h.answer_by_unix_ms()),
        "deadline": rfc3339(h.deadline_unix_ms),
        "status": entry.status().to_string(),
        "decision": entry.decision,
        "sent": entry.closed,
        "summary": h.summary,
        "privacy": receipt(entry)?,
        "stats": stats(entry)?,
    }))
}

/// `review show JOB`: the same for a person to read.
pub fn show_text(entry: &Entry) -> Result<String, NodeError> {
    let h = &entry.held;
    let stats = serde_json::to_string_pretty(&stats(entry)?).expect("stats serialise");
    let privacy = match receipt(entry)? {
        None => "exact study: no noise, no budget".to_string(),
        Some(r) => format!(
            "rho {:.6} charged, {:.6} of {:.6} spent{}",
            r.charged_rho,
            r.spent_rho,
            r.budget_rho,
            if r.cached {
                " (repeats an answer released before)"
            } else {
                ""
            }
        ),
    };
    let mut lines = vec![
        format!("job        {}", h.job_id),
        format!(
            "study      {} (definition {})",
            h.study_id, h.study_definition_hash
        ),
        format!("purpose    {}", h.purpose),
        format!("analysis   {}", h.analysis),
        format!("query      {}", h.query),
        format!("held at    {}", rfc3339(h.held_unix_ms)),
        format!(
            "decide by  {} (the job's deadline is {})",
            rfc3339(h.answer_by_unix_ms()),
            rfc3339(h.deadline_unix_ms)
        ),
        format!("status     {}", entry.status()),
    ];
    if let Some(d) = &entry.decision {
        let reason = if d.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", d.reason)
        };
        lines.push(format!(
            "decision   {} by {} at {}{reason}",
            d.verdict.as_str(),
            d.by,
            rfc3339(d.decided_unix_ms)
        ));
    }
    if let Some(c) = &entry.closed {
        lines.push(format!("answer     {c}"));
    }
    lines.push(format!("release    {}", h.summary));
    lines.push(format!("privacy    {privacy}"));
    lines.push(String::new());
    lines.push("the result exactly as it leaves this node if approved:".into());
    lines.push(stats);
    Ok(lines.join("\n"))
}

/// `review approve JOB` and `review reject JOB --reason TEXT`: records the
/// decision, which the running daemon sends on its next sweep.
pub fn decide(
    queue: &ReviewQueue,
    job_id: &str,
    verdict: Verdict,
    reason: &str,
    by: &str,
    now_ms: i64,
) -> Result<String, NodeError> {
    let reason = reason.trim();
    if verdict == Verdict::Rejected && reason.is_empty() {
        return Err(NodeError::State(
            "a rejection needs --reason TEXT: it reaches the researcher as this node's refusal, so say why".into(),
        ));
    }
    if verdict == Verdict::Expired {
        return Err(NodeError::State(
            "only the daemon marks a result as expired".into(),
        ));
    }
    let entry = queue.entry(job_id)?;
    let taken = |d: &Decision| {
        NodeError::State(format!(
            "job {job_id} was already {} by {} at {}; a decision cannot be changed",
            d.verdict.as_str(),
            d.by,
            rfc3339(d.decided_unix_ms)
        ))
    };
    if let Some(d) = &entry.decision {
        return Err(taken(d));
    }
    if now_ms >= entry.held.answer_by_unix_ms() {
        return Err(NodeError::State(format!(
            "job {job_id} had to be decided by {} (its deadline is {}); it expires unreleased and the researcher may ask again",
            rfc3339(entry.held.answer_by_unix_ms()),
            rfc3339(entry.held.deadline_unix_ms)
        )));
    }
    let decision = Decision {
        verdict,
        reason: reason.to_string(),
        by: by.to_string(),
        decided_unix_ms: now_ms,
    };
    let (standing, ours) = queue.decide(job_id, &decision)?;
    if !ours {
        return Err(taken(&standing));
    }
    Ok(match verdict {
        Verdict::Approved => format!(
            "approved job {job_id}: the running node sends the result to the coordinator on its next sweep"
        ),
        _ => format!(
            "rejected job {job_id}: the running node answers the coordinator with this node's refusal and your reason"
        ),
    })
}
