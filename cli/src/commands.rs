//! The CLI's commands other than `demo`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use plexus_core::audit::AuditEntry;
use plexus_core::StudyDefinition;
use plexus_proto::v1 as pb;

use crate::output::{self, Format};
use plexus_client::{outcome, Client, ConnectArgs};

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
        output::safe(&s.id),
        s.nodes.len(),
        s.min_nodes
    );
    Ok(())
}

/// `plexus model register`: an ONNX file with its inputs, or a fitted
/// model from a query.
pub async fn model_register(
    conn: &ConnectArgs,
    study: &str,
    name: &str,
    file: Option<&Path>,
    inputs: Vec<String>,
    output: Option<String>,
    from_query: Option<String>,
) -> anyhow::Result<()> {
    let model = match file {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the model file {}", path.display()))?;
            Some(pb::ModelArtefact {
                spec: Some(pb::ModelSpec {
                    name: name.to_string(),
                    format: "onnx".into(),
                    inputs,
                    output,
                    source: path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                }),
                file: bytes,
            })
        }
        None => None,
    };
    let client = Client::connect(conn).await?;
    let m = client
        .admin()
        .register_model(pb::RegisterModelRequest {
            study_id: study.to_string(),
            model,
            name: name.to_string(),
            from_query: from_query.unwrap_or_default(),
        })
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner();
    println!(
        "registered model \"{}\" with study \"{}\"\nhash        {}\nfile sha256 {}\nreads       {}\neach hospital approves it with: plexus-node approve --config node.toml --study {} --model {}",
        output::safe(name),
        output::safe(study),
        m.hash,
        m.file_sha256,
        output::safe(&m.variables.join(", ")),
        output::safe(study),
        m.hash
    );
    Ok(())
}

/// `plexus model list --study ID`: every model with its hash, checked here
/// against its spec and file hash (a hospital approves what it reads).
pub async fn model_list(conn: &ConnectArgs, study: &str, format: Format) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    let r = client
        .admin()
        .list_models(pb::ListModelsRequest {
            study_id: study.to_string(),
        })
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner();
    let mut rows = Vec::new();
    for m in &r.models {
        let spec =
            plexus_proto::convert::performance::spec_from_pb(m.spec.clone().unwrap_or_default())?;
        let hash = plexus_core::hash::sha256_hex(
            serde_json::json!({"spec": spec, "file_sha256": m.file_sha256})
                .to_string()
                .as_bytes(),
        );
        if hash != m.hash {
            bail!(
                "the coordinator reports hash {} for model \"{}\", but its spec and file hash give {hash}; do not approve either, and tell the network admin",
                m.hash,
                output::safe(&spec.name)
            );
        }
        rows.push(serde_json::json!({
            "name": spec.name,
            "format": spec.format.as_str(),
            "hash": m.hash,
            "file_sha256": m.file_sha256,
            "bytes": m.size,
            "inputs": spec.inputs,
            "output": spec.output,
            "variables": m.variables,
            "operators": m.operators,
            "producer": m.producer,
            "source": spec.source,
            "registered_by": m.registered_by,
            "registered_at": chrono::DateTime::from_timestamp_millis(m.registered_unix_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        }));
    }
    if matches!(format, Format::Json) {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no models are registered with study \"{}\"",
            output::safe(study)
        );
        return Ok(());
    }
    for row in rows {
        let text = |k: &str| row[k].as_str().unwrap_or_default().to_string();
        let list = |k: &str| {
            row[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!("model        {}", output::safe(&text("name")));
        println!("format       {} ({} bytes)", text("format"), row["bytes"]);
        println!("hash         {}", text("hash"));
        println!("file sha256  {}", text("file_sha256"));
        println!("reads        {}", output::safe(&list("variables")));
        if !list("inputs").is_empty() {
            println!("inputs       {}", output::safe(&list("inputs")));
        }
        if !list("operators").is_empty() {
            println!("operators    {}", output::safe(&list("operators")));
        }
        println!("producer     {}", output::safe(&text("producer")));
        println!("source       {}", output::safe(&text("source")));
        println!(
            "registered   {} by {}",
            text("registered_at"),
            output::safe(&text("registered_by"))
        );
        println!();
    }
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
            // The hash is taken here, of the definition shown: a hospital
            // approves what it reads. An older coordinator reports none.
            let hash = def.definition_hash();
            if !reported.is_empty() && reported != hash {
                bail!(
                    "the coordinator reports definition hash {reported} for study \"{id}\", but the definition it sent hashes to {hash}; do not approve either, and tell the network admin"
                );
            }
            (def, hash, Some(registered))
        }
    };
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(out, "study       {}", def.id)?;
    writeln!(out, "definition  {hash}")?;
    if let Some(at) = registered {
        let at = chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        writeln!(out, "registered  {at}")?;
    }
    writeln!(out)?;
    write!(out, "{}", toml::to_string(&def)?)?;
    writeln!(out)?;
    write!(
        out,
        "each hospital that approves this version runs:\n  plexus-node approve --config node.toml --study {} --hash {hash}",
        def.id
    )?;
    // A definition registered before text was checked, or a local file,
    // may still hold control characters.
    println!("{}", output::safe_text(&out));
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
            output::safe(&s.id),
            output::safe(&s.title),
            output::safe(&purpose),
            output::safe(&s.analyses.join(", ")),
            output::safe(&if s.secure_aggregation {
                format!("{} (secure aggregation)", s.nodes.join(", "))
            } else {
                s.nodes.join(", ")
            }),
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
    save_model: Option<&Path>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Either form, tree or text: the coordinator reads it with the
    // study's dictionary (the network's, with the study's derived variables).
    let client = Client::connect(conn).await?;
    let id = crate::verbs::submit_request(&client, study, &text).await?;
    show_result(&client, &id, wait, format, plot, save_model).await
}

/// `plexus result ID`: one of the caller's queries, waited for up to
/// `wait` (a query accepted before a coordinator restart is fetched the
/// same way once it is back).
pub async fn result(
    conn: &ConnectArgs,
    id: &str,
    wait: Duration,
    format: Format,
    plot: Option<&Path>,
    save_model: Option<&Path>,
) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    show_result(&client, id, wait, format, plot, save_model).await
}

pub async fn show_result(
    client: &Client,
    id: &str,
    wait: Duration,
    format: Format,
    plot: Option<&Path>,
    save_model: Option<&Path>,
) -> anyhow::Result<()> {
    let r = client
        .wait_result(id, wait)
        .await
        .map_err(|e| anyhow::anyhow!("query {id} [{}]: {}", e.code, e.message))?;
    let pooled = outcome(&r)
        .map_err(|e| anyhow::anyhow!("query {} failed [{}]: {}", r.query_id, e.code, e.message))?;
    println!("{}", output::render(&pooled, format)?);
    if let Some(path) = plot {
        crate::plot::plot_result(&pooled, path)?;
        eprintln!("plot written to {}", path.display());
    }
    if let Some(path) = save_model {
        save_model_file(&pooled.value, path)?;
        eprintln!("model written to {}", path.display());
    }
    Ok(())
}

/// Writes a trained model: ONNX for a `.onnx` path, the model's JSON
/// otherwise.
pub fn save_model_file(value: &plexus_core::pool::PooledValue, path: &Path) -> anyhow::Result<()> {
    let plexus_core::pool::PooledValue::Gbdt(g) = value else {
        anyhow::bail!(
            "the result holds no model to save: --save-model is for a gbdt's result (the query was answered and shown above)"
        );
    };
    let bytes = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        plexus_proto::onnx::gbdt_to_onnx(&g.model)
    } else {
        serde_json::to_vec_pretty(&g.model)?
    };
    std::fs::write(path, bytes)
        .with_context(|| format!("cannot write the model to {}", path.display()))
}

pub async fn nodes(conn: &ConnectArgs) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    let r = client
        .admin()
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|s| plexus_proto::convert::from_status(&s))?
        .into_inner();
    println!("{}", nodes_table(&r));
    Ok(())
}

/// `plexus nodes`: the full view for admins and auditors; a researcher's
/// view (names and liveness of their studies' nodes) as two columns.
pub fn nodes_table(r: &pb::ListNodesResponse) -> String {
    let live = |l: bool| if l { "yes" } else { "no" }.to_string();
    if r.liveness_only {
        let mut t = output::new_table(vec!["node", "live"]);
        for n in &r.nodes {
            t.add_row(vec![output::safe(&n.node_id), live(n.live)]);
        }
        return t.to_string();
    }
    let mut t = output::new_table(vec![
        "node",
        "live",
        "version",
        "dictionary",
        "data snapshot",
        "last heartbeat",
        "address",
        "clock",
        "health",
    ]);
    for n in &r.nodes {
        t.add_row(vec![
            output::safe(&n.node_id),
            live(n.live),
            output::safe(&n.version),
            output::safe(&n.dictionary_version),
            output::safe(&n.data_snapshot.chars().take(16).collect::<String>()),
            time_text(n.last_heartbeat_unix_ms),
            output::safe(&n.peer_address),
            clock_text(n.clock_offset_ms),
            match n.degraded {
                false => "ok".to_string(),
                true => format!("degraded: {}", output::safe(&n.health_detail)),
            },
        ]);
    }
    let mut text = t.to_string();
    let noticed: Vec<&pb::NodeInfo> = r
        .nodes
        .iter()
        .filter(|n| !n.mapping_notices.is_empty())
        .collect();
    if !noticed.is_empty() {
        text.push_str(
            "\nmapping notices (the hospital's data mapping, checked at the node's start):\n",
        );
        for n in noticed {
            for m in &n.mapping_notices {
                text.push_str(&format!(
                    "  {}: {}\n",
                    output::safe(&n.node_id),
                    output::safe(m)
                ));
            }
        }
    }
    text
}

/// A node's clock against the coordinator's, flagged beyond the tolerance
/// that makes jobs fail.
fn clock_text(offset_ms: i64) -> String {
    let text = format!("{:+.1} s", offset_ms as f64 / 1000.0);
    if plexus_core::clock::is_off(offset_ms) {
        format!("{text} (off: synchronise)")
    } else {
        text
    }
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
        Format::Json => output::safe_json(&serde_json::to_string_pretty(&json)?),
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
                w.write_record(output::csv_row([
                    n.node_id.clone(),
                    n.spent_rho.to_string(),
                    n.budget_rho.to_string(),
                    time_text(n.updated_unix_ms),
                ]))?;
            }
            String::from_utf8(w.into_inner()?)?
        }
        Format::Table if r.exact => format!(
            "study {}: exact answers (no differential privacy, no budget); every node must accept this in its policy",
            output::safe(&r.study_id)
        ),
        Format::Table => {
            let mut t = output::new_table(vec!["node", "spent rho", "budget rho", "last report"]);
            for n in &r.nodes {
                t.add_row(vec![
                    output::safe(&n.node_id),
                    format!("{:.4}", n.spent_rho),
                    format!("{:.4}", n.budget_rho),
                    time_text(n.updated_unix_ms),
                ]);
            }
            format!(
                "study {}: spent rho {:.4} of {:.4}, remaining {:.4}\n\
                 (epsilon {:.3} of {:.3} at delta {:e}; {} charged queries)\n{t}",
                output::safe(&r.study_id),
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

/// `plexus audit log` as a table. Every text cell is escaped: entries
/// written before text was checked, and text from nodes, may hold control
/// characters.
pub fn audit_table(events: &[AuditEntry]) -> String {
    let mut t = output::new_table(vec![
        "#", "time", "who", "role", "action", "study", "node", "outcome", "rho", "detail",
    ]);
    for e in events {
        let node = if e.node_id.is_empty() {
            e.nodes.join(",")
        } else {
            e.node_id.clone()
        };
        t.add_row(vec![
            e.seq.to_string(),
            time_text(e.at),
            output::safe(&e.who),
            e.role.to_string(),
            e.action.to_string(),
            output::safe(&e.study_id),
            output::safe(&node),
            e.outcome.to_string(),
            e.privacy_cost
                .map(|c| format!("{c:.4}"))
                .unwrap_or_default(),
            output::safe(&e.detail.chars().take(60).collect::<String>()),
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

/// The columns of `plexus audit log --output csv`, in order.
const AUDIT_CSV_COLUMNS: [&str; 18] = [
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

/// `plexus audit log` as printed: a table, JSON (lossless, with the
/// characters serde leaves raw escaped), or CSV (cells escaped, formulas
/// neutralised; see [`output::csv_cell`]).
pub fn audit_text(events: &[AuditEntry], format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Table => audit_table(events),
        Format::Json => {
            let rows: Vec<serde_json::Value> = events.iter().map(audit_row).collect();
            output::safe_json(&serde_json::to_string_pretty(&rows)?)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(AUDIT_CSV_COLUMNS)?;
            for e in events {
                let row = audit_row(e);
                w.write_record(AUDIT_CSV_COLUMNS.iter().map(|c| {
                    match &row[*c] {
                        serde_json::Value::String(s) => output::csv_cell(s),
                        serde_json::Value::Null => String::new(),
                        serde_json::Value::Array(a) => output::csv_cell(
                            &a.iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(";"),
                        ),
                        other => other.to_string(),
                    }
                }))?;
            }
            String::from_utf8(w.into_inner()?)?
        }
    })
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
        .map(AuditEntry::try_from)
        .collect::<Result<_, _>>()
        .context("the coordinator's audit log")?;
    let text = audit_text(&events, format)?;
    match format {
        // CSV ends its last record with a line break already.
        Format::Csv => print!("{text}"),
        Format::Table | Format::Json => println!("{text}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::audit::{Action, Outcome, Role};
    use plexus_core::ErrorCode;

    /// An entry as an old log (before text was checked) or a hostile
    /// node could have left it.
    fn hostile() -> AuditEntry {
        AuditEntry {
            seq: 3,
            at: 1_790_000_000_000,
            study_id: "aaa\u{1b}[2J".into(),
            purpose: "@SUM(A1:A9)".into(),
            nodes: vec!["-2+3".into(), "hospital-a".into()],
            detail: "ok\n2026-01-01 admin study.register ok \u{202E}gpj.exe".into(),
            privacy_cost: Some(0.01),
            ..AuditEntry::new(
                "=cmd|' /C calc'!A0",
                Role::Researcher,
                Action::QuerySubmit,
                Outcome::Refused(Some(ErrorCode::Invalid)),
            )
        }
    }

    fn raw(text: &str) -> bool {
        text.chars()
            .any(|c| plexus_core::text::is_unsafe(c) && c != '\n')
    }

    #[test]
    fn the_audit_log_table_escapes_control_characters() {
        let table = audit_text(&[hostile()], Format::Table).unwrap();
        assert!(!raw(&table), "{table}");
        assert!(table.contains("aaa\\u{1b}[2J"), "{table}");
        assert!(table.contains("ok\\u{a}2026-01-01"), "{table}");
        assert!(table.contains("\\u{202e}gpj.exe"), "{table}");
        assert!(
            !table.lines().any(|l| l.starts_with("2026-01-01")),
            "no forged line: {table}"
        );
    }

    #[test]
    fn the_audit_log_csv_escapes_and_neutralises_formulas() {
        let text = audit_text(&[hostile()], Format::Csv).unwrap();
        assert!(!raw(&text), "{text}");
        assert_eq!(text.lines().count(), 2, "a header and one record: {text}");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        let column = |name: &str| {
            let i = AUDIT_CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
            record[i].to_string()
        };
        assert_eq!(column("who"), "'=cmd|' /C calc'!A0");
        assert_eq!(column("purpose"), "'@SUM(A1:A9)");
        assert_eq!(column("nodes"), "'-2+3;hospital-a");
        assert_eq!(column("study_id"), "aaa\\u{1b}[2J");
        assert_eq!(
            column("detail"),
            "ok\\u{a}2026-01-01 admin study.register ok \\u{202e}gpj.exe"
        );
        assert_eq!(column("privacy_cost"), "0.01");
        assert_eq!(column("seq"), "3");
    }

    #[test]
    fn the_audit_log_json_is_lossless_and_safe_on_a_terminal() {
        let text = audit_text(&[hostile()], Format::Json).unwrap();
        assert!(!raw(&text), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back[0]["study_id"], "aaa\u{1b}[2J");
        assert_eq!(back[0]["who"], "=cmd|' /C calc'!A0");
        assert_eq!(back[0]["detail"], hostile().detail);
    }

    #[test]
    fn a_researchers_node_list_shows_names_and_liveness_only() {
        let node = |id: &str, live: bool| pb::NodeInfo {
            node_id: id.into(),
            live,
            ..Default::default()
        };
        let r = pb::ListNodesResponse {
            nodes: vec![node("hospital-a", true), node("hospital-b", false)],
            liveness_only: true,
        };
        let table = nodes_table(&r);
        let header = table.lines().nth(1).unwrap();
        assert!(
            header.contains("node") && header.contains("live"),
            "{table}"
        );
        assert!(
            !table.contains("address") && !table.contains("snapshot"),
            "{table}"
        );
        assert!(
            table.contains("hospital-b") && table.contains("no"),
            "{table}"
        );
        let full = nodes_table(&pb::ListNodesResponse {
            nodes: vec![pb::NodeInfo {
                peer_address: "10.0.0.1:4000".into(),
                version: "0.1.0\u{1b}]0;owned\u{7}".into(),
                ..node("hospital-a", true)
            }],
            liveness_only: false,
        });
        assert!(
            full.contains("10.0.0.1:4000") && full.contains("address"),
            "{full}"
        );
        assert!(!raw(&full), "{full}");
        assert!(!full.contains("mapping notices"), "{full}");
        // What a node's mapping check noticed, under the table, made safe.
        let noticed = nodes_table(&pb::ListNodesResponse {
            nodes: vec![pb::NodeInfo {
                mapping_notices: vec![
                    "data.postgres.variables.gi_bleed.concepts: concept 999 is not in the vocabulary".into(),
                    "a notice with \u{1b}[2J an escape".into(),
                ],
                ..node("hospital-a", true)
            }],
            liveness_only: false,
        });
        assert!(
            noticed.contains("mapping notices")
                && noticed
                    .contains("hospital-a: data.postgres.variables.gi_bleed.concepts: concept 999"),
            "{noticed}"
        );
        assert!(!raw(&noticed), "{noticed}");
    }
}
