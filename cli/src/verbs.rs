//! The query verbs: `plexus count`, `summary`, `table`, `glm`, `cox` and
//! `km`. Each builds a query request in the text form (a `"where"` cohort
//! expression, a `"formula"`; docs/src/reference/query-syntax.md) and
//! submits it through the same path as `plexus query FILE`.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value as Json};

use plexus_client::{outcome, Client, ConnectArgs};
use plexus_core::pool::PooledResult;
use plexus_core::query::syntax;
use plexus_core::{Cohort, CompareOp, Value};
#[cfg(test)]
use plexus_core::{Dictionary, Query};
use plexus_proto::v1 as pb;

use crate::output::{self, Format};

/// What every query verb takes besides its analysis.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryOptions {
    /// The study to ask.
    #[arg(long)]
    pub study: String,
    /// Cohort as an R expression, e.g. 'age >= 65 & sex == "F" & !is.na(bmi)'
    /// (see docs/src/reference/query-syntax.md); everyone without it.
    #[arg(long = "where", value_name = "EXPR")]
    pub cohort: Option<String>,
    /// Also answer for each site on its own, under the same disclosure control.
    #[arg(long)]
    pub by_site: bool,
    /// What the query may spend of the study's privacy budget (zCDP rho);
    /// the study's per-query default without it.
    #[arg(long)]
    pub rho: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// How long to wait for the result.
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    Gaussian,
    Binomial,
    Poisson,
}

impl Family {
    fn as_str(self) -> &'static str {
        match self {
            Family::Gaussian => "gaussian",
            Family::Binomial => "binomial",
            Family::Poisson => "poisson",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ties {
    Efron,
    Breslow,
}

/// The query request (text form) for `analysis`, with the options'
/// cohort expression, `by_site` and `rho`.
pub fn request_json(
    analysis: Json,
    cohort: Option<&str>,
    by_site: bool,
    rho: Option<f64>,
) -> String {
    let mut request = Map::new();
    if let Some(text) = cohort {
        request.insert("where".into(), text.into());
    }
    request.insert("analysis".into(), analysis);
    if by_site {
        request.insert("by_site".into(), true.into());
    }
    if let Some(rho) = rho {
        request.insert("rho".into(), rho.into());
    }
    Json::Object(request).to_string()
}

/// The request of `options` for `analysis`.
pub fn request_of(options: &QueryOptions, analysis: Json) -> String {
    request_json(
        analysis,
        options.cohort.as_deref(),
        options.by_site,
        options.rho,
    )
}

pub fn count() -> Json {
    json!({"count": {}})
}

pub fn summary(variable: &str) -> Json {
    json!({"summary": {"variable": variable}})
}

pub fn table(row: &str, column: &str) -> Json {
    json!({"table": {"row": row, "column": column}})
}

pub fn glm(formula: &str, family: Family) -> Json {
    json!({"glm": {"formula": formula, "family": family.as_str()}})
}

pub fn cox(formula: &str, ties: Option<Ties>) -> Json {
    let mut body = json!({"formula": formula});
    if let Some(ties) = ties {
        body["ties"] = match ties {
            Ties::Efron => "efron",
            Ties::Breslow => "breslow",
        }
        .into();
    }
    json!({"cox": body})
}

pub fn kaplan_meier(formula: &str, grid: &Json) -> Json {
    json!({"kaplan_meier": {"formula": formula, "grid": grid}})
}

/// A Kaplan-Meier grid: `FROM:TO:STEP` (R's `seq(from, to, by)`) or a
/// comma-separated list of points.
pub fn parse_grid(text: &str) -> anyhow::Result<Json> {
    let number = |s: &str| -> anyhow::Result<f64> {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .with_context(|| format!("\"{}\" in --grid is not a number", output::safe(s)))
    };
    if text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        let [from, to, step] = parts.as_slice() else {
            bail!("--grid is FROM:TO:STEP (e.g. 0:1826:30) or a list of points (e.g. 0,365,730)");
        };
        return Ok(json!({"from": number(from)?, "to": number(to)?, "step": number(step)?}));
    }
    let points = text
        .split(',')
        .map(number)
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(json!(points))
}

/// The query a request stands for with the embedded dictionary, as the
/// coordinator of the demo network reads it.
#[cfg(test)]
fn parse_request(request: &str) -> anyhow::Result<Query> {
    Query::from_request(request, &Dictionary::cardiovascular()).map_err(|e| refused(request, &e))
}

/// The caret under the column an error names, in the request's `"where"`
/// or `"formula"` text.
fn pointer(request: &str, message: &str) -> Option<String> {
    let fields: Json = serde_json::from_str(request).ok()?;
    let source = if message.starts_with("where: ") {
        fields.get("where")?.as_str()?.to_string()
    } else if message.starts_with("formula: ") {
        let analysis = fields.get("analysis")?.as_object()?;
        let (_, body) = analysis.iter().next()?;
        body.get("formula")?.as_str()?.to_string()
    } else {
        return None;
    };
    syntax::pointer(&source, message)
}

/// Submits a query request (either form of docs/src/reference/query-format.md)
/// and returns the query's id. The coordinator reads the text with the
/// network's dictionary; an error in it comes back naming the column, and
/// is shown with a caret under it.
pub async fn submit_request(client: &Client, study: &str, request: &str) -> anyhow::Result<String> {
    client
        .submit_json(study, request)
        .await
        .map_err(|e| refused(request, &e))
}

/// A refusal, with a caret under the column of the text it names.
fn refused(request: &str, e: &plexus_core::Error) -> anyhow::Error {
    let shown = match pointer(request, &e.message) {
        Some(p) => format!("{}\n{p}", e.message),
        None => e.message.clone(),
    };
    anyhow::anyhow!("query refused [{}]: {}", e.code, output::safe_text(&shown))
}

/// Submits one request and prints its result (and its plot).
pub async fn run(
    conn: &ConnectArgs,
    options: &QueryOptions,
    analysis: Json,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let request = request_of(options, analysis);
    let client = Client::connect(conn).await?;
    let id = submit_request(&client, &options.study, &request).await?;
    crate::commands::show_result(&client, &id, wait(options), options.output, plot, None).await
}

fn wait(options: &QueryOptions) -> Duration {
    Duration::from_secs(options.wait_secs)
}

/// The cohort of one level of a `--by` variable, added to the options'
/// cohort: `(WHERE) & sex == "F"`.
pub fn level_cohort(cohort: Option<&str>, variable: &str, level: &Value) -> String {
    let condition = Cohort::Compare {
        variable: variable.to_string(),
        op: CompareOp::Eq,
        value: level.clone(),
    }
    .to_string();
    match cohort {
        Some(text) => format!("({text}) & {condition}"),
        None => condition,
    }
}

/// The levels of a `--by` variable in the coordinator's dictionary, as the
/// values a condition compares with.
pub fn levels(dict: &pb::Dictionary, variable: &str) -> anyhow::Result<Vec<Value>> {
    let Some(v) = dict.variables.iter().find(|v| v.name == variable) else {
        bail!("--by: no variable \"{variable}\" in the network's dictionary (list them with GET /v1/dictionary or `plexus study show`)")
    };
    Ok(match v.r#type.as_str() {
        "boolean" => vec![Value::Boolean(false), Value::Boolean(true)],
        "categorical" => v.categories.iter().cloned().map(Value::Text).collect(),
        other => {
            bail!("--by needs a categorical or boolean variable, and \"{variable}\" is {other}")
        }
    })
}

/// The levels of a `--by` variable the study itself declares (a derived
/// boolean or one of its concept sets); `None` when it declares none of
/// that name.
async fn study_levels(
    client: &Client,
    study: &str,
    variable: &str,
) -> anyhow::Result<Option<Vec<Value>>> {
    let studies = client
        .research()
        .list_studies(pb::ListStudiesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", plexus_proto::convert::from_status(&s)))?
        .into_inner()
        .studies;
    let Some(s) = studies.into_iter().find(|s| s.id == study) else {
        return Ok(None);
    };
    let def = plexus_core::StudyDefinition::try_from(s)?;
    let boolean = def.concept_sets.contains_key(variable)
        || def
            .derived
            .get(variable)
            .is_some_and(|d| d.kind == plexus_core::VarType::Boolean);
    if boolean {
        return Ok(Some(vec![Value::Boolean(false), Value::Boolean(true)]));
    }
    if let Some(d) = def.derived.get(variable) {
        bail!(
            "--by needs a categorical or boolean variable, and the study's \"{variable}\" is {}",
            d.kind
        );
    }
    Ok(None)
}

/// `plexus summary VAR --by CATVAR`: one query per level, printed together.
pub async fn summary_by(
    conn: &ConnectArgs,
    options: &QueryOptions,
    variable: &str,
    by: &str,
) -> anyhow::Result<()> {
    let client = Client::connect(conn).await?;
    let dict = client
        .research()
        .get_dictionary(pb::GetDictionaryRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", plexus_proto::convert::from_status(&s)))?
        .into_inner();
    let levels = match levels(&dict, by) {
        Ok(l) => l,
        // Not a dictionary variable: perhaps one of the study's own.
        Err(e) => study_levels(&client, &options.study, by).await?.ok_or(e)?,
    };
    let requests: Vec<(String, String)> = levels
        .iter()
        .map(|level| {
            let cohort = level_cohort(options.cohort.as_deref(), by, level);
            let request = request_json(
                summary(variable),
                Some(&cohort),
                options.by_site,
                options.rho,
            );
            (level_label(level), request)
        })
        .collect();
    let mut results: Vec<(String, Result<PooledResult, String>)> = Vec::new();
    for (label, request) in requests {
        let answer = async {
            let id = submit_request(&client, &options.study, &request).await?;
            let r = client
                .wait_result(&id, wait(options))
                .await
                .map_err(|e| anyhow::anyhow!("query {id} [{}]: {}", e.code, e.message))?;
            outcome(&r).map_err(|e| {
                anyhow::anyhow!("query {} failed [{}]: {}", r.query_id, e.code, e.message)
            })
        }
        .await
        .map_err(|e| e.to_string());
        results.push((label, answer));
    }
    println!("{}", render_by(by, &results, options.output)?);
    if results.iter().all(|(_, r)| r.is_err()) {
        bail!("no level of \"{by}\" was answered");
    }
    Ok(())
}

fn level_label(level: &Value) -> String {
    match level {
        Value::Text(s) => s.clone(),
        Value::Boolean(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// The answers for each level of a `--by` variable: one block per level
/// (table, csv), or one JSON array of `{"by", "level", "result" | "error"}`.
pub fn render_by(
    by: &str,
    results: &[(String, Result<PooledResult, String>)],
    format: Format,
) -> anyhow::Result<String> {
    if format == Format::Json {
        let items: Vec<Json> = results
            .iter()
            .map(|(level, r)| match r {
                Ok(r) => json!({"by": by, "level": level, "result": r}),
                Err(e) => json!({"by": by, "level": level, "error": e}),
            })
            .collect();
        return Ok(output::safe_json(&serde_json::to_string_pretty(&items)?));
    }
    let mut blocks = Vec::new();
    for (level, r) in results {
        let body = match r {
            Ok(r) => output::render(r, format)?,
            Err(e) => format!("refused: {}", output::safe_text(e)),
        };
        blocks.push(format!(
            "{} = {}:\n{body}",
            output::safe(by),
            output::safe(level)
        ));
    }
    Ok(blocks.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Verb {
        #[command(flatten)]
        options: QueryOptions,
        #[arg(long)]
        family: Option<Family>,
    }

    fn parse(args: &[&str]) -> QueryOptions {
        Verb::try_parse_from(std::iter::once("plexus").chain(args.iter().copied()))
            .unwrap()
            .options
    }

    fn json(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn options_become_the_request() {
        let o = parse(&[
            "--study",
            "s",
            "--where",
            "age >= 65",
            "--by-site",
            "--rho",
            "0.02",
        ]);
        assert_eq!(
            json(&request_of(&o, count())),
            json(
                r#"{"where": "age >= 65", "analysis": {"count": {}}, "by_site": true, "rho": 0.02}"#
            )
        );
        let o = parse(&["--study", "s"]);
        assert_eq!(
            json(&request_of(&o, count())),
            json(r#"{"analysis": {"count": {}}}"#)
        );
        assert_eq!(o.output, Format::Table);
        assert_eq!(o.wait_secs, 120);
        assert!(
            Verb::try_parse_from(["plexus", "--where", "x"]).is_err(),
            "--study is required"
        );
    }

    #[test]
    fn every_verb_gives_a_request_that_parses() {
        let o = parse(&[
            "--study",
            "s",
            "--where",
            "smoking %in% c(\"former\", \"current\")",
        ]);
        let grid = parse_grid("0:1826:30").unwrap();
        let analyses = [
            count(),
            summary("bmi"),
            table("smoking", "death"),
            glm("death ~ age + smoking", Family::Binomial),
            cox(
                "Surv(followup_days, death) ~ age + smoking",
                Some(Ties::Breslow),
            ),
            kaplan_meier("Surv(followup_days, death) ~ smoking", &grid),
        ];
        for analysis in analyses {
            let request = request_of(&o, analysis);
            let q = parse_request(&request).unwrap();
            q.validate(&Dictionary::cardiovascular()).unwrap();
        }
        let q = parse_request(&request_of(&o, glm("death ~ age", Family::Binomial))).unwrap();
        assert_eq!(
            q,
            Query::from_json(
                r#"{"cohort": {"in": {"variable": "smoking", "values": ["former", "current"]}},
                    "analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": ["age"]}}}"#
            )
            .unwrap()
        );
    }

    #[test]
    fn grids() {
        assert_eq!(
            parse_grid("0:1826:30").unwrap(),
            json(r#"{"from": 0.0, "to": 1826.0, "step": 30.0}"#)
        );
        assert_eq!(
            parse_grid("0, 365,730").unwrap(),
            json("[0.0, 365.0, 730.0]")
        );
        assert!(parse_grid("0:10").is_err());
        assert!(parse_grid("0:x:1")
            .unwrap_err()
            .to_string()
            .contains("\"x\""));
    }

    #[test]
    fn errors_in_text_show_a_caret() {
        let e = parse_request(&request_json(
            count(),
            Some("age >= 65 && sex == \"F\""),
            false,
            None,
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "query refused [invalid]: where: column 11: && compares single values in R; write & to combine conditions\n  age >= 65 && sex == \"F\"\n            ^"
        );
        let e = parse_request(&request_json(
            glm("death ~ age:sex", Family::Binomial),
            None,
            false,
            None,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("\n  death ~ age:sex\n             ^"), "{e}");
    }

    #[test]
    fn by_levels_add_to_the_cohort() {
        let d = Dictionary::cardiovascular();
        let wire = plexus_proto::convert::dictionary_to_pb(&d);
        let levels = levels(&wire, "smoking").unwrap();
        assert_eq!(levels.len(), 3);
        assert_eq!(
            level_cohort(Some("age >= 65 | bmi > 30"), "smoking", &levels[1]),
            "(age >= 65 | bmi > 30) & smoking == \"former\""
        );
        assert_eq!(
            level_cohort(None, "diabetes", &Value::Boolean(true)),
            "diabetes == TRUE"
        );
        assert!(levels_error(&wire, "age").contains("categorical or boolean"));
        assert!(levels_error(&wire, "smokin").contains("no variable \"smokin\""));
        for level in levels {
            let request = request_json(
                summary("bmi"),
                Some(&level_cohort(Some("age >= 65"), "smoking", &level)),
                false,
                None,
            );
            parse_request(&request).unwrap().validate(&d).unwrap();
        }
        let rendered = render_by(
            "smoking",
            &[("never".into(), Err("too few patients".into()))],
            Format::Table,
        )
        .unwrap();
        assert_eq!(rendered, "smoking = never:\nrefused: too few patients");
    }

    fn levels_error(d: &pb::Dictionary, v: &str) -> String {
        levels(d, v).unwrap_err().to_string()
    }
}
