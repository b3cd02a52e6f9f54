//! The CLI's commands other than `demo`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use plexus_core::audit::AuditEntry;
use plexus_core::{Query, StudyDefinition};
use plexus_proto::v1 as pb;

use crate::client::{outcome, Client, ConnectArgs};
use crate::output::{self, Format};

pub async fn study_register(conn: &ConnectArgs, file: &Path) -> anyhow::Result<()> {
    let def = StudyDefinition::load(file)?;
    let client = Client::connect(conn).await?;
    let s = client
        .admin()
        .register_study(pb::RegisterStudyRequest {
            study: Some(plexus_proto::convert::study_to_pb(&def, 0)),
        })
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner();
    println!(
        "registered study \"{}\" ({} nodes, at least {} must answer)",
        s.id,
        s.nodes.len(),
        s.min_nodes
    );
    Ok(())
}

/// `plexus study show ID` (as registered at the coordinator) or `plexus
/// study show --file study.toml`: the definition and the hash hospitals pin
/// in their node policy.
pub async fn study_show(
    conn: &ConnectArgs,
    id: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let (def, hash, registered) = match (id, file) {
        (Some(_), Some(_)) | (None, None) => {
            bail!("name a registered study (plexus study show ID) or a study file (--file study.toml), not both")
        }
        (None, Some(file)) => {
            let def = StudyDefinition::load(file)?;
            let hash = def.definition_hash();
            (def, hash, None)
        }
        (Some(id), None) => {
            let client = Client::connect(conn).await?;
            let r = client
                .research()
                .list_studies(pb::ListStudiesRequest {})
                .await
                .map_err(|s| plexus_proto::convert::from_status(&s))?
                .into_inner();
            let Some(s) = r.studies.into_iter().find(|s| s.id == id) else {
                bail!("no study \"{id}\" that you may see is registered (`plexus study list` lists them)");
            };
            let registered = s.registered_unix_ms;
            let reported = s.definition_hash.clone();
            let def = StudyDefinition::try_from(s)?;
            // An older coordinator does not report it; the hash is of the
            // definition as it sends it.
            let hash = if reported.is_empty() {
                def.definition_hash()
            } else {
                reported
            };
            (def, hash, Some(registered))
        }
    };
    println!("study       {}", def.id);
    println!("definition  {hash}");
    if let Some(at) = registered {
        let at = chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!("registered  {at}");
    }
    println!();
    print!("{}", toml::to_string(&def)?);
    println!();
    println!(
        "each hospital that approves this version runs:\n  plexus-node approve --config node.toml --study {} --hash {hash}",
        def.id
    );
    Ok(())
}

pub async fn studies(conn: &ConnectArgs) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    let r = client
        .research()
        .list_studies(pb::ListStudiesRequest {})
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner();
    let mut t = output::new_table(vec![
        "study", "title", "purpose", "analyses", "nodes", "min",
    ]);
    for s in r.studies {
        let p = s.purpose.unwrap_or_default();
        let purpose = plexus_core::Purpose::from_parts(&p.code, &p.disease, &p.modifiers)
            .map(|p| p.to_string())
            .unwrap_or(p.code);
        t.add_row(vec![
            s.id,
            s.title,
            purpose,
            s.analyses.join(", "),
            if s.secure_aggregation {
                format!("{} (secure aggregation)", s.nodes.join(", "))
            } else {
                s.nodes.join(", ")
            },
            s.min_nodes.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn query(
    conn: &ConnectArgs,
    study: &str,
    file: &Path,
    format: Format,
    wait: Duration,
    plot: Option<&Path>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let query = Query::from_json(&text)?;
    let client = Client::connect(conn).await?;
    let r = client
        .run_query(study, &query, wait)
        .await
        .map_err(|e| anyhow::anyhow!("query refused [{}]: {}", e.code, e.message))?;
    let pooled = outcome(&r)
        .map_err(|e| anyhow::anyhow!("query {} failed [{}]: {}", r.query_id, e.code, e.message))?;
    println!("{}", output::render(&pooled, format)?);
    if let Some(path) = plot {
        crate::plot::plot_result(&pooled, path)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

pub async fn nodes(conn: &ConnectArgs) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    let r = client
        .admin()
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner();
    let mut t = output::new_table(vec![
        "node",
        "live",
        "version",
        "dictionary",
        "data snapshot",
        "last heartbeat",
        "address",
        "health",
    ]);
    for n in r.nodes {
        t.add_row(vec![
            n.node_id,
            if n.live { "yes" } else { "no" }.to_string(),
            n.version,
            n.dictionary_version,
            n.data_snapshot.chars().take(16).collect(),
            time_text(n.last_heartbeat_unix_ms),
            n.peer_address,
            match n.degraded {
                false => "ok".to_string(),
                true => format!("degraded: {}", n.health_detail),
            },
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `plexus budget --study ID`: the study's privacy terms and spending.
pub async fn budget(conn: &ConnectArgs, study: &str, format: Format) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    let r = client
        .research()
        .get_budget(pb::GetBudgetRequest {
            study_id: study.to_string(),
        })
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner();
    println!("{}", budget_text(&r, format)?);
    Ok(())
}

/// A budget report as text (table or CSV) or JSON.
pub fn budget_text(r: &pb::BudgetReport, format: Format) -> anyhow::Result<String> {
    let nodes: Vec<serde_json::Value> = r
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "node": n.node_id,
                "spent_rho": n.spent_rho,
                "budget_rho": n.budget_rho,
                "updated": time_text(n.updated_unix_ms),
            })
        })
        .collect();
    let json = serde_json::json!({
        "study": r.study_id,
        "exact": r.exact,
        "budget_rho": r.budget_rho,
        "spent_rho": r.spent_rho,
        "remaining_rho": r.remaining_rho,
        "epsilon_spent": r.epsilon_spent,
        "epsilon_budget": r.epsilon_budget,
        "delta": r.delta,
        "queries_charged": r.queries_charged,
        "nodes": nodes,
    });
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&json)?,
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["node", "spent_rho", "budget_rho", "updated"])?;
            w.write_record([
                "coordinator".to_string(),
                r.spent_rho.to_string(),
                r.budget_rho.to_string(),
                String::new(),
            ])?;
            for n in &r.nodes {
                w.write_record([
                    n.node_id.clone(),
                    n.spent_rho.to_string(),
                    n.budget_rho.to_string(),
                    time_text(n.updated_unix_ms),
                ])?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table if r.exact => format!(
            "study {}: exact answers (no differential privacy, no budget); every node must accept this in its policy",
            r.study_id
        ),
        Format::Table => {
            let mut t = output::new_table(vec!["node", "spent rho", "budget rho", "last report"]);
            for n in &r.nodes {
                t.add_row(vec![
                    n.node_id.clone(),
                    format!("{:.4}", n.spent_rho),
                    format!("{:.4}", n.budget_rho),
                    time_text(n.updated_unix_ms),
                ]);
            }
            format!(
                "study {}: spent rho {:.4} of {:.4}, remaining {:.4}\n\
                 (epsilon {:.3} of {:.3} at delta {:e}; {} charged queries)\n{t}",
                r.study_id,
                r.spent_rho,
                r.budget_rho,
                r.remaining_rho,
                r.epsilon_spent,
                r.epsilon_budget,
                r.delta,
                r.queries_charged
            )
        }
    })
}

pub fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Parses `2026-01-31` or an RFC 3339 time into unix milliseconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis());
    }
    bail!("\"{s}\" is not a date (YYYY-MM-DD) or an RFC 3339 time")
}

pub fn audit_table(events: &[AuditEntry]) -> String {
    let mut t = output::new_table(vec![
        "#", "time", "who", "role", "action", "study", "node", "outcome", "rho", "detail",
    ]);
    for e in events {
        t.add_row(vec![
            e.seq.to_string(),
            time_text(e.at),
            e.who.clone(),
            e.role.clone(),
            e.action.clone(),
            e.study_id.clone(),
            if e.node_id.is_empty() {
                e.nodes.join(",")
            } else {
                e.node_id.clone()
            },
            e.outcome.clone(),
            e.privacy_cost
                .map(|c| format!("{c:.4}"))
                .unwrap_or_default(),
            e.detail.chars().take(60).collect(),
        ]);
    }
    t.to_string()
}

/// An entry for `--output json|csv`: every field, times as RFC 3339.
fn audit_row(e: &AuditEntry) -> serde_json::Value {
    let mut v = serde_json::to_value(e).expect("entry serialises");
    v["at"] = serde_json::Value::String(time_text(e.at));
    v
}

#[allow(clippy::too_many_arguments)]
pub async fn audit_log(
    conn: &ConnectArgs,
    study: Option<String>,
    who: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: u32,
    format: Format,
) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    let events: Vec<AuditEntry> = client
        .audit()
        .list_events(pb::ListEventsRequest {
            study_id: study.unwrap_or_default(),
            who: who.unwrap_or_default(),
            since_unix_ms: since.as_deref().map(parse_time).transpose()?.unwrap_or(0),
            until_unix_ms: until.as_deref().map(parse_time).transpose()?.unwrap_or(0),
            limit,
        })
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner()
        .events
        .into_iter()
        .map(AuditEntry::from)
        .collect();
    match format {
        Format::Table => println!("{}", audit_table(&events)),
        Format::Json => {
            let rows: Vec<serde_json::Value> = events.iter().map(audit_row).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            let columns = [
                "seq",
                "at",
                "who",
                "role",
                "action",
                "study_id",
                "purpose",
                "query_id",
                "job_id",
                "node_id",
                "nodes",
                "query_hash",
                "result_size",
                "suppressed",
                "privacy_cost",
                "privacy_remaining",
                "outcome",
                "detail",
            ];
            w.write_record(columns)?;
            for e in &events {
                let row = audit_row(e);
                w.write_record(columns.iter().map(|c| {
                    match &row[*c] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => String::new(),
                        serde_json::Value::Array(a) => a
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(";"),
                        other => other.to_string(),
                    }
                }))?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

pub fn dictionary(file: Option<&Path>) -> anyhow::Result<()> {
    let dict = plexus_core::Dictionary::load_or_default(file)?;
    let mut t = output::new_table(vec![
        "variable",
        "type",
        "unit",
        "bounds / categories",
        "description",
    ]);
    for (name, v) in &dict.variables {
        let range = match (v.kind, &v.min, &v.max) {
            (plexus_core::VarType::Categorical, _, _) => v.categories.join(", "),
            (plexus_core::VarType::Boolean, _, _) => "false, true".into(),
            (_, Some(lo), Some(hi)) => format!("{} .. {}", bound(lo), bound(hi)),
            _ => String::new(),
        };
        t.add_row(vec![
            name.clone(),
            v.kind.to_string(),
            v.unit.clone().unwrap_or_default(),
            range,
            v.description.clone(),
        ]);
    }
    println!(
        "{} version {} ({})\n{t}",
        dict.name,
        dict.version,
        dict.fingerprint()
    );
    Ok(())
}

fn bound(b: &plexus_core::dictionary::Bound) -> String {
    match b {
        plexus_core::dictionary::Bound::Number(x) => x.to_string(),
        plexus_core::dictionary::Bound::Date(d) => d.to_string(),
    }
}
