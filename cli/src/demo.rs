//! `plexus demo`: three synthetic hospitals and a coordinator in one
//! process, real mTLS on loopback, a registered study and a handful of
//! pooled queries printed with their provenance.

use std::time::{Duration, Instant};

use plexus_core::Query;
use plexus_proto::v1 as pb;

use crate::output;
use plexus_client::outcome;
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub struct DemoOptions {
    pub patients_per_site: usize,
    pub seed: u64,
    pub keep: Option<std::path::PathBuf>,
    /// Keep the network running for other clients (CLI, Python, R) instead
    /// of running the demo's queries.
    pub serve: bool,
}

/// The file `plexus demo --serve` writes: how to connect.
pub const CONNECT_FILE: &str = "connect.json";

/// The demo's queries: most run in the study under differential privacy;
/// the Cox model, not yet released under it, runs in the exact validation
/// study (`true`).
const QUERIES: &[(&str, &str, bool)] = &[
    (
        "How many consenting patients does the study see?",
        r#"{"analysis": {"count": {}}}"#,
        false,
    ),
    (
        "Aneurysm diameter (mm) in men aged 65 or more",
        r#"{"cohort": {"and": [
              {"compare": {"variable": "sex", "op": "=", "value": "M"}},
              {"compare": {"variable": "age", "op": ">=", "value": 65}}]},
            "analysis": {"summary": {"variable": "aaa_diameter"}}}"#,
        false,
    ),
    (
        "Age distribution of current and former smokers",
        r#"{"cohort": {"in": {"variable": "smoking", "values": ["current", "former"]}},
            "analysis": {"histogram": {"variable": "age", "edges": [40, 50, 60, 70, 80, 90, 100]}}}"#,
        false,
    ),
    (
        "Smoking by death during follow-up",
        r#"{"analysis": {"table": {"row": "smoking", "column": "death"}}}"#,
        false,
    ),
    (
        "What predicts death during follow-up? Logistic regression over all sites (federated IRLS under differential privacy: six noised rounds of rho 0.1, the most each hospital allows per job; a regression needs far more patients than a count to stand out of the noise)",
        r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
              "covariates": ["age", "smoking", "diabetes"]}}, "rho": 0.6}"#,
        false,
    ),
    (
        "Hazard of death, Cox model stratified by site (federated Newton-Raphson)",
        r#"{"analysis": {"cox": {"time": "followup_days", "event": "death",
              "covariates": ["age", "smoking", "diabetes", "aaa_diameter"]}}}"#,
        true,
    ),
    (
        "Five-year survival by smoking status (Kaplan-Meier on a monthly grid, log-rank test)",
        r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
              "group": "smoking", "grid": {"from": 0, "to": 1830, "step": 30.5}}}}"#,
        false,
    ),
    (
        "A tiny cohort: women under 45 with diabetes and an aneurysm over 70 mm (cells under k are suppressed)",
        r#"{"cohort": {"and": [
              {"compare": {"variable": "sex", "op": "=", "value": "F"}},
              {"compare": {"variable": "age", "op": "<", "value": 45}},
              {"compare": {"variable": "diabetes", "op": "=", "value": true}},
              {"compare": {"variable": "aaa_diameter", "op": ">", "value": 70}}]},
            "analysis": {"count": {}}}"#,
        false,
    ),
];

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    if opts.serve {
        return serve(opts).await;
    }
    let started = Instant::now();
    println!("Plexus demo: a coordinator and three synthetic hospitals on loopback, real mTLS\n");
    let mut sb_opts = SandboxOptions::new(opts.patients_per_site, opts.seed);
    sb_opts.dir = opts.keep.clone();
    let sb = Sandbox::start(sb_opts).await?;
    println!("  files:        {}", sb.dir.display());
    println!(
        "  coordinator:  {} (SQLite {})",
        sb.coordinator_url(),
        sb.coordinator_config.coordinator.database_url
    );
    for (name, cfg) in &sb.node_configs {
        println!(
            "  node:         {name} -> {} patients in {}",
            opts.patients_per_site,
            cfg.data
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
    }
    let study = sandbox::demo_study();
    sb.register_study(&study).await?;
    let validation = sandbox::validation_study();
    sb.register_study(&validation).await?;
    println!(
        "\nStudy \"{}\": {}\n  purpose {} (consent must cover it), researchers {:?}, at least {} of {} nodes must answer",
        study.id,
        study.title,
        study.purpose()?,
        study.researchers,
        study.min_nodes,
        study.nodes.len()
    );
    println!(
        "  differential privacy: budget rho {} per hospital (epsilon {:.2} at delta {:e}), rho {} per query",
        study.privacy.budget_rho,
        study.privacy.epsilon(study.privacy.budget_rho),
        study.privacy.delta,
        study.privacy.query_rho
    );
    println!(
        "Study \"{}\": the same, with exact answers for validating the models (each node accepts it in its policy)",
        validation.id
    );

    let alice = sb.client(sandbox::RESEARCHER).await?;
    for (title, json, exact) in QUERIES {
        let target = if *exact { &validation } else { &study };
        println!("\n== {title} [{}]", target.id);
        let query = Query::from_json(json)?;
        let t = Instant::now();
        let result = alice
            .run_query(&target.id, &query, Duration::from_secs(60))
            .await;
        match result.and_then(|r| outcome(&r)) {
            Ok(r) => {
                println!("{}", output::render_table(&r));
                println!("({} ms)", t.elapsed().as_millis());
                if let (Some(dir), plexus_core::pool::PooledValue::KaplanMeier(_)) =
                    (&opts.keep, &r.value)
                {
                    let path = dir.join("survival.svg");
                    match crate::plot::plot_result(&r, &path) {
                        Ok(()) => println!("(curves drawn to {})", path.display()),
                        Err(e) => println!("(no plot: {e})"),
                    }
                }
            }
            Err(e) => println!("refused [{}]: {}", e.code, e.message),
        }
    }

    println!("\n== Asking the first question again: the same answer, and nothing charged");
    let again = Query::from_json(QUERIES[0].1)?;
    match alice
        .run_query(&study.id, &again, Duration::from_secs(60))
        .await
        .and_then(|r| outcome(&r))
    {
        Ok(r) => println!("{}", output::render_table(&r)),
        Err(e) => println!("refused [{}]: {}", e.code, e.message),
    }

    println!(
        "\n== The study's privacy budget (plexus budget --study {})",
        study.id
    );
    let budget = alice
        .research()
        .get_budget(pb::GetBudgetRequest {
            study_id: study.id.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!(
        "{}",
        crate::commands::budget_text(&budget, output::Format::Table)?
    );

    println!("\n== What a refused query looks like");
    let bad = Query::from_json(r#"{"analysis": {"summary": {"variable": "systolic"}}}"#)?;
    if let Err(e) = alice
        .run_query(&study.id, &bad, Duration::from_secs(10))
        .await
    {
        println!("unknown variable -> [{}] {}", e.code, e.message);
    }
    let bob = sb.client(sandbox::OUTSIDER).await?;
    let count = Query::from_json(r#"{"analysis": {"count": {}}}"#)?;
    if let Err(e) = bob
        .run_query(&study.id, &count, Duration::from_secs(10))
        .await
    {
        println!("researcher outside the study -> [{}] {}", e.code, e.message);
    }

    println!("\n== Audit log (last entries, as an auditor sees them)");
    let auditor = sb.client(sandbox::AUDITOR).await?;
    let events = auditor
        .audit()
        .list_events(pb::ListEventsRequest {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .events;
    let tail: Vec<plexus_core::audit::AuditEntry> = events
        .iter()
        .rev()
        .take(8)
        .rev()
        .cloned()
        .map(TryInto::try_into)
        .collect::<Result<_, _>>()?;
    println!("{}", crate::commands::audit_table(&tail));
    println!("({} entries in all)", events.len());

    println!("\n== The auditor verifies the log (plexus audit verify / prove)");
    let key = crate::audit::load_key(&sb.pki.join("coordinator-signing.pub"))?;
    let report = crate::audit::verify(&auditor, &key, None, true).await?;
    println!(
        "the first {} entries rebuild the root {} that the coordinator signed ({} entries in all: reading the log is logged too)",
        report.checkpoint.head.size, report.checkpoint.head.root, report.entries
    );
    let proof = crate::audit::prove(&auditor, &key, 1).await?;
    println!(
        "entry 1 ({}) is in that tree: {} proof hashes verified",
        proof.entry.action,
        proof.proof.len()
    );

    sb.shutdown().await?;
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `plexus demo --serve`: the demo network, kept running until SIGINT or
/// SIGTERM, with `connect.json` and a reference table of the exact
/// study's rows in its folder, and how to connect printed.
async fn serve(opts: DemoOptions) -> anyhow::Result<()> {
    let mut sb_opts = SandboxOptions::new(opts.patients_per_site, opts.seed);
    sb_opts.dir = opts.keep.clone();
    let sb = Sandbox::start(sb_opts).await?;
    let study = sandbox::demo_study();
    sb.register_study(&study).await?;
    let validation = sandbox::validation_study();
    sb.register_study(&validation).await?;

    let dir = sb.dir.clone();
    let reference = dir.join("reference").join(format!("{}.csv", validation.id));
    let rows = sandbox::reference::write_union(
        &sb.sites,
        &validation.purpose()?,
        chrono::Utc::now().date_naive(),
        &reference,
    )?;
    let url = sb.coordinator_url();
    let identity = |name: &str| {
        serde_json::json!({
            "name": name,
            "cert": sb.pki.join(format!("{name}.pem")),
            "key": sb.pki.join(format!("{name}.key")),
        })
    };
    let connect = serde_json::json!({
        "url": url,
        "pki": sb.pki,
        "ca": sb.pki.join("ca.pem"),
        "identities": {
            "researcher": identity(sandbox::RESEARCHER),
            "outsider": identity(sandbox::OUTSIDER),
            "auditor": identity(sandbox::AUDITOR),
            "admin": identity(sandbox::ADMIN),
        },
        "studies": {"private": study.id, "exact": validation.id},
        "reference": {validation.id.clone(): reference},
    });
    let connect_path = dir.join(CONNECT_FILE);
    // Written whole, then renamed: whoever waits for the file never reads half of it.
    let partial = dir.join(format!("{CONNECT_FILE}.partial"));
    std::fs::write(&partial, serde_json::to_string_pretty(&connect)? + "\n")?;
    std::fs::rename(&partial, &connect_path)?;

    let pki = sb.pki.display();
    let connect_file = connect_path.display();
    let (patients, private, exact) = (opts.patients_per_site, &study.id, &validation.id);
    let reference = reference.display();
    println!(
        "Plexus demo network: a coordinator and three synthetic hospitals ({patients} patients each) on loopback, real mTLS

  coordinator   {url}   (gRPC and the HTTP/JSON API: {url}/v1/openapi.json)
  studies       {private} (differential privacy), {exact} (exact answers)
  certificates  {pki}  (researcher alice, outsider bob, auditor, admin)
  connect file  {connect_file}
  reference     {reference} ({rows} consenting patients of the exact study, for checking results)

From the CLI:
  plexus --coordinator {url} --pki {pki} --as alice count --study {exact}
  plexus --coordinator {url} --pki {pki} --as alice glm --study {exact} \"death ~ age + smoking\" --family binomial

From Python (pip install ./clients/python):
  import plexus
  net = plexus.Network.from_connect_file(\"{connect_file}\")
  net.study(\"{exact}\").glm(\"death ~ age + smoking\", family=\"binomial\").tidy()

From R (R CMD INSTALL clients/r):
  library(plexus)
  con <- px_connect(connect_file = \"{connect_file}\")
  px_glm(con, death ~ age + smoking, family = \"binomial\", study = \"{exact}\")

With curl:
  curl --cacert {pki}/ca.pem --cert {pki}/alice.pem --key {pki}/alice.key {url}/v1/studies

Serving until interrupted (Ctrl-C or SIGTERM)."
    );
    wait_for_stop().await?;
    println!("stopping the demo network");
    sb.shutdown().await
}

/// Until SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
