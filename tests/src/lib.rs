//! Helpers for the multi-node integration tests: the sandbox network (from
//! the `plexus` crate) and an independent reference implementation that
//! computes each analysis directly on the union of all sites' rows.
#![forbid(unsafe_code)]

use chrono::NaiveDate;

use plexus_core::eval::{matches, Datum};
use plexus_core::stats::SummarySums;
use plexus_core::{Analysis, Dictionary, Query, RawStats};
use plexus_sandbox::synth::Patient;

pub use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub mod jobs;
pub mod omop;
pub mod pg;
pub mod processes;
pub mod reference;
pub mod tools;

/// The value of dictionary variable `var` for one patient.
pub fn datum(p: &Patient, var: &str) -> Datum {
    let f = |x: Option<f64>| x.map(Datum::Float).unwrap_or(Datum::Null);
    match var {
        "age" => Datum::Integer(p.age),
        "sex" => Datum::Text(p.sex.clone()),
        "bmi" => f(p.bmi),
        "sbp" => f(p.sbp),
        "smoking" => Datum::Text(p.smoking.clone()),
        "diabetes" => Datum::Boolean(p.diabetes),
        "aaa_diameter" => f(p.aaa_diameter),
        "hypertension" => Datum::Boolean(p.hypertension),
        "cholesterol" => f(p.cholesterol),
        "inclusion_date" => Datum::Date(p.inclusion_date),
        "followup_days" => Datum::Integer(p.followup_days),
        "death" => Datum::Boolean(p.death),
        other => panic!("no variable {other} in the synthetic data"),
    }
}

pub use plexus_sandbox::reference::consenting;

fn number(d: &Datum) -> Option<f64> {
    match d {
        Datum::Integer(i) => Some(*i as f64),
        Datum::Float(x) => Some(*x),
        _ => None,
    }
}

/// The analysis computed directly on `patients`, with no disclosure control.
pub fn reference(patients: &[&Patient], query: &Query, dict: &Dictionary) -> RawStats {
    let cohort: Vec<&&Patient> = patients
        .iter()
        .filter(|p| match &query.cohort {
            None => true,
            Some(c) => matches(c, &|v| datum(p, v)) == Some(true),
        })
        .collect();
    match &query.analysis {
        Analysis::Count {} => RawStats::Count(cohort.len() as u64),
        Analysis::Summary { variable } => {
            let values: Vec<f64> = cohort
                .iter()
                .filter_map(|p| number(&datum(p, variable)))
                .collect();
            let var = dict.get(variable).expect("variable");
            RawStats::Summary(SummarySums::of(var, variable, &values))
        }
        Analysis::Histogram { variable, edges } => {
            let mut bins = vec![0u64; edges.len() - 1];
            let (mut below, mut above) = (0, 0);
            let last = *edges.last().expect("edges");
            for x in cohort.iter().filter_map(|p| number(&datum(p, variable))) {
                if x < edges[0] {
                    below += 1;
                } else if x > last {
                    above += 1;
                } else {
                    let i = edges
                        .windows(2)
                        .position(|w| x < w[1])
                        .unwrap_or(bins.len() - 1);
                    bins[i] += 1;
                }
            }
            RawStats::Histogram { bins, below, above }
        }
        Analysis::Table { row, column } => {
            let rl = dict.get(row).expect("row").levels();
            let cl = dict.get(column).expect("column").levels();
            let mut cells = vec![0u64; rl.len() * cl.len()];
            let level = |d: Datum, levels: &[String]| -> Option<usize> {
                let s = match d {
                    Datum::Text(s) => s,
                    Datum::Boolean(b) => b.to_string(),
                    _ => return None,
                };
                levels.iter().position(|l| *l == s)
            };
            for p in &cohort {
                if let (Some(r), Some(c)) =
                    (level(datum(p, row), &rl), level(datum(p, column), &cl))
                {
                    cells[r * cl.len() + c] += 1;
                }
            }
            RawStats::Table {
                rows: rl.len() as u32,
                columns: cl.len() as u32,
                cells,
            }
        }
        other => panic!(
            "no row-by-row reference for a {} here; see tests/src/reference",
            other.kind()
        ),
    }
}

/// Relative difference, for comparing floating-point moments.
pub fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

/// Submits `json` as `who` in `study` and waits for the pooled result.
pub async fn ask(
    sb: &Sandbox,
    who: &str,
    study: &str,
    json: &str,
) -> Result<plexus_core::pool::PooledResult, plexus_core::Error> {
    let query = Query::from_json(json)?;
    let client = sb
        .client(who)
        .await
        .map_err(|e| plexus_core::Error::unavailable(e.to_string()))?;
    let r = client
        .run_query(study, &query, std::time::Duration::from_secs(60))
        .await?;
    plexus_client::outcome(&r)
}

/// Today's date as the nodes see it.
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}
