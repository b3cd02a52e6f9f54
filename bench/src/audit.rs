//! `plexus-bench audit`: audit append and verify throughput on a log of a
//! million entries, through the coordinator's own code and the auditor's
//! own command path (gRPC over mTLS, as `plexus audit verify` runs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use plexus_coordinator::audit_log::AuditLog;
use plexus_coordinator::store::Store;
use plexus_core::audit::{Action, AuditEntry, Outcome, Role};
use plexus_core::merkle::{leaf_of, verify_log};

use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub struct AuditBenchOptions {
    pub entries: u64,
    /// Single appends timed on top of the filled log.
    pub appends: u64,
    pub dir: Option<PathBuf>,
}

/// Filled this many at a time (one transaction each).
const BATCH: u64 = 50_000;
/// The verify target of issue 5: a million entries in under 10 s.
const VERIFY_TARGET: Duration = Duration::from_secs(10);

/// A job entry as the coordinator writes them, with realistic field sizes.
fn entry(i: u64) -> AuditEntry {
    let hex = |x: u64| format!("{:016x}{:016x}", x.wrapping_mul(0x9e37_79b9_7f4a_7c15), x);
    let outcome = if i.is_multiple_of(2) {
        Outcome::Sent
    } else {
        Outcome::Answered
    };
    AuditEntry {
        study_id: "aaa-outcomes".into(),
        purpose: "research".into(),
        query_id: hex(i / 3),
        job_id: hex(i),
        node_id: format!("hospital-{}", (b'a' + (i % 3) as u8) as char),
        query_hash: hex(i / 3).repeat(2),
        privacy_cost: Some(0.01),
        privacy_remaining: Some(0.5),
        ..AuditEntry::new("coordinator", Role::Coordinator, Action::Job, outcome)
    }
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64())
}

pub async fn run(opts: AuditBenchOptions) -> anyhow::Result<()> {
    let mut sb_opts = SandboxOptions::new(50, 1);
    if let Some(dir) = &opts.dir {
        std::fs::create_dir_all(dir)?;
        sb_opts.dir = Some(dir.clone());
    }
    let mut sb = Sandbox::prepare(sb_opts).await?;
    let url = sb.coordinator_config.coordinator.database_url.clone();
    let signer = Arc::new(
        plexus_tls::SigningKey::load(&sb.pki.join("coordinator-signing.key"))
            .context("the sandbox's coordinator key")?,
    );
    println!(
        "audit benchmark: {} entries, {} single appends, database {url}",
        opts.entries, opts.appends
    );

    // Fill the log through the coordinator's own AuditLog.
    let store = Store::open(&url).await?;
    let log = AuditLog::open(store.clone(), signer.clone(), "coordinator").await?;
    let t = Instant::now();
    let mut i = 0;
    while i < opts.entries {
        let n = BATCH.min(opts.entries - i);
        log.append_batch((i..i + n).map(entry).collect()).await?;
        i += n;
    }
    let fill = t.elapsed();

    // The coordinator's path: one durable insert (and tree update) per entry.
    let t = Instant::now();
    for j in 0..opts.appends {
        log.append(entry(opts.entries + j)).await?;
    }
    let append = t.elapsed();
    let total = opts.entries + opts.appends;
    let checkpoint = log.checkpoint().await?;
    drop(log);

    // In-process verification: read every entry back from the database,
    // rebuild the tree, compare with the checkpoint.
    let t = Instant::now();
    let mut leaves = Vec::with_capacity(total as usize);
    let mut pages = store.audit_pages(0);
    while let Some(page) = pages.recv().await {
        leaves.extend(page?.iter().map(AuditEntry::leaf));
    }
    let read_and_hash = t.elapsed();
    let t = Instant::now();
    verify_log(leaves.iter().copied(), &checkpoint.head)?;
    let tree_only = t.elapsed();
    store.close().await;

    // Baseline in the same run: SHA-256 of the same canonical bytes alone.
    let bytes: Vec<Vec<u8>> = (0..total.min(1_000_000))
        .map(|i| entry(i).canonical_bytes())
        .collect();
    let t = Instant::now();
    let mut acc = 0u8;
    for b in &bytes {
        acc ^= leaf_of(b)[0];
    }
    let sha_only = t.elapsed().mul_f64(total as f64 / bytes.len() as f64);
    std::hint::black_box(acc);

    // The auditor's path: coordinator start (tree rebuilt from the
    // database), then `plexus audit verify --fresh` over gRPC and mTLS.
    let t = Instant::now();
    sb.start_all().await?;
    let start = t.elapsed();
    let auditor = sb.client(sandbox::AUDITOR).await?;
    let key = plexus::audit::load_key(&sb.pki.join("coordinator-signing.pub"))?;
    let t = Instant::now();
    let report = plexus::audit::verify(&auditor, &key, None, true).await?;
    let verify_rpc = t.elapsed();
    anyhow::ensure!(
        report.entries >= total,
        "verified {} entries, expected at least {total}",
        report.entries
    );
    sb.shutdown().await?;

    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["step", "entries", "time", "entries/s"]);
    let row = |t: &mut Table, step: &str, n: u64, d: Duration| {
        t.add_row(vec![
            step.to_string(),
            n.to_string(),
            format!("{:.2} s", d.as_secs_f64()),
            rate(n, d),
        ]);
    };
    row(
        &mut table,
        "fill (batched appends, 50k per transaction)",
        opts.entries,
        fill,
    );
    row(
        &mut table,
        "append (one durable insert each, the coordinator's path)",
        opts.appends,
        append,
    );
    row(
        &mut table,
        "coordinator start (tree rebuilt from the database)",
        total,
        start,
    );
    row(
        &mut table,
        "verify: read + hash from the database (in process)",
        total,
        read_and_hash,
    );
    row(
        &mut table,
        "verify: Merkle tree and root check",
        total,
        tree_only,
    );
    row(
        &mut table,
        "verify: plexus audit verify --fresh (gRPC, mTLS)",
        report.entries,
        verify_rpc,
    );
    row(
        &mut table,
        "baseline: SHA-256 of the canonical bytes alone",
        total,
        sha_only,
    );
    println!("{table}");
    println!(
        "verify of {} entries through the auditor's command path: {:.2} s (target under {} s: {})",
        report.entries,
        verify_rpc.as_secs_f64(),
        VERIFY_TARGET.as_secs(),
        if verify_rpc < VERIFY_TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
