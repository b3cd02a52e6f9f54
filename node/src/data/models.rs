//! The node's side of the analyses computed in Rust over the cohort's
//! columns: regression rounds (with the disclosure checks that must pass
//! before any round is released), survival counts and cross-products.
//!
//! A regression fit takes several rounds of jobs with the same query; the
//! prepared design is kept for a short while, keyed by the query, purpose,
//! day and data snapshot, so later rounds do not read the data again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_core::models::artefact::ModelFormat;
use plexus_core::models::correlation::pair_sums;
use plexus_core::models::cox::CoxData;
use plexus_core::models::design::{complete_rows, design_matrix, ColumnData, Columns, Term};
use plexus_core::models::fit::Iteration;
use plexus_core::models::gbdt::GbdtData;
use plexus_core::models::glm::{glm_round, Family};
use plexus_core::models::linalg::{add_outer, first_dependent_column, packed_len};
use plexus_core::models::performance::{self, PerformanceData};
use plexus_core::models::registration;
use plexus_core::models::rules::{check_cross_cells, check_disclosure};
use plexus_core::models::survival;
use plexus_core::privacy::glm::GlmBounds;
use plexus_core::{Analysis, Dictionary, Error, RawStats, Result};

/// The disclosure limits a job runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Minimum cell size.
    pub k: u32,
    /// Largest share of complete cases that may be parameters.
    pub max_parameter_share: f64,
    /// The answer will be noised: covariates and outcome are clamped to the
    /// dictionary's bounds and deviance terms clipped, so every patient's
    /// contribution has the bound the noise is calibrated to.
    pub private: bool,
    /// The node's secret salt of the patients a model holds out for
    /// validation in this study.
    pub holdout_salt: u64,
}

/// A regression's data, checked and ready for any number of rounds.
pub(crate) enum Prepared {
    Glm {
        family: Family,
        p: usize,
        x: Vec<f64>,
        y: Vec<f64>,
        /// Per-patient clip of deviance terms (infinite in exact studies).
        deviance_clip: f64,
    },
    Cox(CoxData),
    /// Binned features and outcome, with the scores of the trees applied
    /// so far.
    Gbdt(Box<GbdtData>),
    /// A model's predictions of every complete case, with the outcome and
    /// each group's patients.
    Performance(Box<PerformanceData>),
}

/// Prepared regressions kept between rounds.
pub(crate) struct ModelCache {
    entries: Mutex<Vec<(String, Instant, Arc<Prepared>)>>,
}

/// How many prepared fits a node keeps, and for how long after last use.
const CACHE_ENTRIES: usize = 4;
const CACHE_IDLE: Duration = Duration::from_secs(15 * 60);

impl ModelCache {
    pub fn new() -> Self {
        ModelCache {
            entries: Mutex::new(Vec::new()),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Prepared>> {
        let mut entries = self.entries.lock().expect("model cache lock");
        entries.retain(|(_, used, _)| used.elapsed() < CACHE_IDLE);
        let hit = entries.iter_mut().find(|(k, _, _)| k == key)?;
        hit.1 = Instant::now();
        Some(hit.2.clone())
    }

    pub fn put(&self, key: String, prepared: Arc<Prepared>) {
        let mut entries = self.entries.lock().expect("model cache lock");
        entries.retain(|(k, _, _)| *k != key);
        if entries.len() >= CACHE_ENTRIES {
            // Drop the least recently used.
            if let Some(oldest) = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, used, _))| *used)
                .map(|(i, _)| i)
            {
                entries.remove(oldest);
            }
        }
        entries.push((key, Instant::now(), prepared));
    }
}

/// The variables whose columns a regression needs: every one of them is
/// held to the level and two-way rules when it has levels at this node
/// (a covariate, the outcome, a Cox model's time and event alike).
fn regression_variables(analysis: &Analysis) -> Vec<&str> {
    match analysis {
        Analysis::Glm {
            outcome,
            covariates,
            ..
        } => {
            let mut all: Vec<&str> = vec![outcome];
            all.extend(covariates.iter().map(String::as_str));
            all
        }
        Analysis::Cox {
            time,
            event,
            covariates,
            ..
        } => {
            let mut all: Vec<&str> = vec![time, event];
            all.extend(covariates.iter().map(String::as_str));
            all
        }
        Analysis::Gbdt {
            outcome,
            covariates,
            ..
        } => {
            let mut all: Vec<&str> = vec![outcome];
            all.extend(covariates.iter().map(String::as_str));
            all
        }
        Analysis::ModelPerformance { .. } => analysis.variables(),
        _ => vec![],
    }
}

/// Checks a regression's data at this node and builds its design. Every
/// refusal names the rule and what to change. In a study under
/// differential privacy nothing is decided here on the exact data: the
/// rules run on the noised first round (`privacy::decisions`).
pub(crate) fn prepare(
    analysis: &Analysis,
    dict: &Dictionary,
    columns: &Columns,
    limits: Limits,
    it: &Iteration,
) -> Result<Prepared> {
    let variables = regression_variables(analysis);
    let rows = complete_rows(columns, &variables)?;
    if let Analysis::Gbdt { outcome, .. } = analysis {
        return prepare_trees(analysis, dict, columns, &rows, &variables, outcome, limits);
    }
    if let Analysis::ModelPerformance { .. } = analysis {
        return prepare_performance(analysis, dict, columns, &rows, limits, it);
    }
    let terms = analysis.terms(dict)?;
    if !limits.private {
        complete_cases_rule(rows.len(), limits.k)?;
        check_disclosure(
            dict,
            columns,
            &rows,
            &variables,
            terms.len(),
            limits.max_parameter_share,
            limits.k,
        )?;
        check_cross_cells(dict, columns, &rows, &variables, limits.k)?;
    }
    let x = design_matrix(&terms, columns, &rows)?;
    if !limits.private {
        check_singular(&terms, &x, matches!(analysis, Analysis::Cox { .. }))?;
    }
    let number = |name: &str| -> Result<Vec<f64>> {
        let c = columns
            .get(name)
            .ok_or_else(|| Error::internal(format!("\"{name}\" was not extracted")))?;
        Ok(rows.iter().map(|&r| c.number(r)).collect())
    };
    match analysis {
        Analysis::Glm {
            family, outcome, ..
        } => {
            let mut y = number(outcome)?;
            if y.iter().any(|v| !family.admits(*v)) {
                return Err(Error::data(format!(
                    "\"{outcome}\" holds a value at this node that a {} model cannot take (the hospital should check the data)",
                    family.as_str()
                )));
            }
            let mut x = x;
            let mut deviance_clip = f64::INFINITY;
            if limits.private {
                let bounds = GlmBounds::new(*family, &terms, outcome, dict)?;
                clamp_design(&mut x, &mut y, &bounds);
                deviance_clip = bounds.deviance_clip;
            }
            Ok(Prepared::Glm {
                family: *family,
                p: terms.len(),
                x,
                y,
                deviance_clip,
            })
        }
        Analysis::Cox { time, event, .. } => {
            let t = number(time)?;
            let e: Vec<bool> = number(event)?.iter().map(|v| *v == 1.0).collect();
            let data = CoxData::new(&x, &t, &e, terms.len());
            if data.events() < u64::from(limits.k) {
                return Err(Error::disclosure(format!(
                    "events rule: fewer than {} events among this node's complete cases (widen the cohort)",
                    limits.k
                )));
            }
            Ok(Prepared::Cox(data))
        }
        other => Err(Error::internal(format!(
            "a {} is not a regression",
            other.kind()
        ))),
    }
}

/// A GBDT's data: the same complete-cases, level and two-way rules as a
/// regression (a split on a binary covariate releases its sums by
/// level, and a logistic outcome's sums count the events), with the
/// features' count as the parameters; then every feature binned.
fn prepare_trees(
    analysis: &Analysis,
    dict: &Dictionary,
    columns: &Columns,
    rows: &[usize],
    variables: &[&str],
    outcome: &str,
    limits: Limits,
) -> Result<Prepared> {
    let features = analysis.gbdt_features(dict)?;
    let options = analysis
        .gbdt_options()
        .ok_or_else(|| Error::internal("not a gbdt"))?;
    if limits.private {
        return Err(plexus_core::privacy::release::gbdt_refused());
    }
    complete_cases_rule(rows.len(), limits.k)?;
    check_disclosure(
        dict,
        columns,
        rows,
        variables,
        features.len(),
        limits.max_parameter_share,
        limits.k,
    )?;
    check_cross_cells(dict, columns, rows, variables, limits.k)?;
    Ok(Prepared::Gbdt(Box::new(GbdtData::new(
        &options,
        features,
        columns,
        rows,
        outcome,
        limits.holdout_salt,
        u64::from(limits.k),
    )?)))
}

/// How long a node lets a model score its patients, per job.
const SCORING_TIME: Duration = Duration::from_secs(300);

/// A model's validation data: every complete case (outcome, subgroups and
/// the model's inputs) scored by the model the job carries (checked against
/// the hospital's approval before), and the groups held to their rule.
fn prepare_performance(
    analysis: &Analysis,
    dict: &Dictionary,
    columns: &Columns,
    rows: &[usize],
    limits: Limits,
    it: &Iteration,
) -> Result<Prepared> {
    let Analysis::ModelPerformance {
        model_hash,
        inputs,
        outcome,
        subgroups,
        ..
    } = analysis
    else {
        return Err(Error::internal("not a model_performance"));
    };
    if limits.private {
        return Err(plexus_core::privacy::release::performance_refused());
    }
    let artefact = it
        .model
        .as_deref()
        .filter(|m| m.hash() == *model_hash)
        .ok_or_else(|| Error::invalid("the job carries no model, or not the query's"))?;
    let features = registration::check(artefact, dict, inputs)?;
    let column = |name: &str| {
        columns
            .get(name)
            .ok_or_else(|| Error::internal(format!("\"{name}\" was not extracted")))
    };
    let cols = features
        .iter()
        .map(|f| column(&f.variable))
        .collect::<Result<Vec<_>>>()?;
    let width = features.len();
    let p = match artefact.spec.format {
        ModelFormat::Plexus => {
            let model = registration::plexus(artefact)?;
            let mut values = vec![0.0; width];
            rows.iter()
                .map(|&r| {
                    for ((v, f), c) in values.iter_mut().zip(&features).zip(&cols) {
                        *v = f.value(c.number(r));
                    }
                    model.predict(&values)
                })
                .collect()
        }
        ModelFormat::Onnx => {
            let scorer = plexus_onnx::OnnxScorer::load(
                &artefact.bytes,
                width,
                artefact.spec.output.as_deref(),
            )?;
            let mut x = Vec::with_capacity(rows.len() * width);
            for &r in rows {
                for (f, c) in features.iter().zip(&cols) {
                    x.push(f.value(c.number(r)) as f32);
                }
            }
            scorer.score(&x, rows.len(), Instant::now() + SCORING_TIME)?
        }
    };
    let y_col = column(outcome)?;
    let y: Vec<bool> = rows.iter().map(|&r| y_col.number(r) == 1.0).collect();
    let groups = performance::groups(dict, subgroups)?;
    let all: Vec<u32> = (0..rows.len() as u32).collect();
    let mut members = vec![all];
    for g in &groups[1..] {
        let c = column(g.variable.as_deref().unwrap_or_default())?;
        members.push(
            rows.iter()
                .enumerate()
                .filter(|(_, &r)| c.number(r) == f64::from(g.index))
                .map(|(i, _)| i as u32)
                .collect(),
        );
    }
    Ok(Prepared::Performance(Box::new(PerformanceData::new(
        p,
        y,
        &groups,
        members,
        u64::from(limits.k),
    )?)))
}

/// Refuses a model resting on fewer than `k` complete cases at this node.
fn complete_cases_rule(rows: usize, k: u32) -> Result<()> {
    if rows < k as usize {
        return Err(Error::disclosure(format!(
            "complete-cases rule: the model would rest on fewer than {k} complete cases at this node (widen the cohort)"
        )));
    }
    Ok(())
}

/// Refuses a design whose X'X is singular at this node (X'WX then is too):
/// the estimates would not be identified and the matrix could reveal
/// structure in very few patients. A Cox model has no intercept and each
/// site is a stratum, so its columns are centred first: a covariate that
/// is constant here is not identified here.
fn check_singular(terms: &[Term], x: &[f64], centre: bool) -> Result<()> {
    let p = terms.len();
    let n = x.len() / p.max(1);
    let mut means = vec![0.0; p];
    if centre && n > 0 {
        for row in x.chunks_exact(p) {
            means.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        means.iter_mut().for_each(|m| *m /= n as f64);
    }
    let mut xtx = vec![0.0; packed_len(p)];
    let mut centred = vec![0.0; p];
    for row in x.chunks_exact(p) {
        centred
            .iter_mut()
            .zip(row.iter().zip(&means))
            .for_each(|(c, (v, m))| *c = v - m);
        add_outer(&mut xtx, &centred, 1.0);
    }
    match first_dependent_column(p, &xtx) {
        None => Ok(()),
        Some(j) => Err(Error::disclosure(format!(
            "singular-design rule: the model's X'WX is singular at this node, \"{}\" is constant or a linear combination of the columns before it (drop it or a covariate it depends on)",
            terms[j].name()
        ))),
    }
}

/// One round of a prepared regression at the round's coefficients.
/// Refused when the sums are not finite (the fit diverged), and in an
/// exact study when the coefficients put nearly all the weight on fewer
/// than k patients (their sums would be those patients'). Under
/// differential privacy every patient's part of a round is bounded
/// whatever the coefficients, which is what the noise is calibrated to,
/// so no rule looks at the exact weights.
pub(crate) fn round(
    prepared: &Prepared,
    analysis: &Analysis,
    it: &Iteration,
    limits: Limits,
) -> Result<RawStats> {
    let (stats, effective) = match (prepared, analysis) {
        (
            Prepared::Glm {
                family,
                p,
                x,
                y,
                deviance_clip,
            },
            _,
        ) => {
            if !(it.coefficients.is_empty() || it.coefficients.len() == *p) {
                return Err(Error::invalid(format!(
                    "round {} carries {} coefficients for a model with {p}",
                    it.round,
                    it.coefficients.len()
                )));
            }
            let (stats, effective) = glm_round(
                *family,
                x,
                y,
                *p,
                &it.coefficients,
                it.null_mean,
                *deviance_clip,
            );
            (RawStats::Glm(stats), effective)
        }
        (Prepared::Cox(data), Analysis::Cox { ties, .. }) => {
            check_coefficients(it, data)?;
            let (stats, effective) = data.round(&it.coefficients, *ties);
            (RawStats::Cox(stats), effective)
        }
        (Prepared::Gbdt(data), Analysis::Gbdt { .. }) => {
            let round = it.gbdt.as_ref().ok_or_else(|| {
                Error::invalid(format!("round {} of a gbdt carries no trees", it.round))
            })?;
            let stats = data.round(round, u64::from(limits.k))?;
            (RawStats::Gbdt(stats), data.len() as f64)
        }
        (Prepared::Performance(data), Analysis::ModelPerformance { .. }) => {
            let stats = data.round(it, u64::from(limits.k))?;
            (RawStats::Performance(stats), data.len() as f64)
        }
        _ => {
            return Err(Error::internal(
                "prepared model does not match the analysis",
            ))
        }
    };
    if !finite(&stats) {
        return Err(Error::invalid(format!(
            "the fit diverged at this node in round {}: its sums are not finite (check the model for separation or extreme covariates)",
            it.round
        )));
    }
    if !limits.private && effective < f64::from(limits.k) {
        return Err(Error::disclosure(format!(
            "weight rule: round {}'s coefficients put nearly all the weight on fewer than {} patients at this node; refused",
            it.round, limits.k
        )));
    }
    Ok(stats)
}

/// Clamps the design's numeric columns and the outcome to their public
/// bounds (a no-op on data within the dictionary's ranges) and centres the
/// numeric columns as the noise calibration expects.
fn clamp_design(x: &mut [f64], y: &mut [f64], bounds: &GlmBounds) {
    let p = bounds.clamp.len();
    for row in x.chunks_exact_mut(p) {
        for ((v, c), centre) in row.iter_mut().zip(&bounds.clamp).zip(&bounds.centre) {
            if let Some((lo, hi)) = c {
                *v = v.clamp(*lo, *hi) - centre;
            }
        }
    }
    if let Some((lo, hi)) = bounds.outcome {
        y.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
    }
}

fn finite(stats: &RawStats) -> bool {
    match stats {
        RawStats::Glm(g) => g
            .xtwx
            .iter()
            .chain(&g.xtwz)
            .chain([&g.deviance, &g.sum_y, &g.null_deviance])
            .all(|v| v.is_finite()),
        RawStats::Cox(c) => c
            .gradient
            .iter()
            .chain(&c.information)
            .chain([&c.loglik])
            .all(|v| v.is_finite()),
        RawStats::Gbdt(g) => {
            [g.sum_y, g.loss, g.validation_loss]
                .iter()
                .all(|v| v.is_finite())
                && g.slots.iter().all(|s| {
                    s.features
                        .iter()
                        .flat_map(|f| &f.sums)
                        .chain([&s.total])
                        .all(|x| x.g.is_finite() && x.h.is_finite())
                })
        }
        RawStats::Performance(p) => p
            .counts
            .iter()
            .all(|c| c.segments.sum_p.iter().all(|v| v.is_finite())),
        _ => true,
    }
}

fn check_coefficients(it: &Iteration, data: &CoxData) -> Result<()> {
    let p = data.parameters();
    if it.coefficients.len() != p {
        return Err(Error::invalid(format!(
            "round {} carries {} coefficients for a model with {p}",
            it.round,
            it.coefficients.len()
        )));
    }
    Ok(())
}

/// Survival counts per group on the query's grid.
pub(crate) fn survival_counts(
    analysis: &Analysis,
    dict: &Dictionary,
    columns: &Columns,
) -> Result<RawStats> {
    let Analysis::KaplanMeier {
        time,
        event,
        group,
        grid,
    } = analysis
    else {
        return Err(Error::internal("not a survival analysis"));
    };
    let points = grid.points()?;
    let groups = analysis.survival_groups(dict)?.len();
    let mut variables: Vec<&str> = vec![time, event];
    variables.extend(group.as_deref());
    let rows = complete_rows(columns, &variables)?;
    let get = |name: &str| {
        columns
            .get(name)
            .ok_or_else(|| Error::internal(format!("\"{name}\" was not extracted")))
    };
    let (t, e) = (get(time)?, get(event)?);
    let g: Option<&ColumnData> = group.as_deref().map(get).transpose()?;
    let times: Vec<f64> = rows.iter().map(|&r| t.number(r)).collect();
    let events: Vec<bool> = rows.iter().map(|&r| e.number(r) == 1.0).collect();
    let labels: Vec<u32> = rows
        .iter()
        .map(|&r| g.map_or(0, |g| g.number(r) as u32))
        .collect();
    Ok(RawStats::Survival(survival::count(
        &points, &times, &events, &labels, groups,
    )))
}

/// Per-pair sums of a correlation's variables.
/// Per-pair sums of a correlation; values are clamped to their public
/// bounds first when the answer will be noised (`private`).
pub(crate) fn pairs(
    analysis: &Analysis,
    dict: &Dictionary,
    columns: &Columns,
    private: bool,
) -> Result<RawStats> {
    let Analysis::Correlation { variables, missing } = analysis else {
        return Err(Error::internal("not a correlation"));
    };
    let cols: Vec<Vec<f64>> = variables
        .iter()
        .map(|v| match columns.get(v) {
            Some(ColumnData::Numeric(x)) => {
                let bounds = dict.get(v)?.numeric_bounds().filter(|_| private);
                Ok(match bounds {
                    // NaN (missing) stays NaN through clamp.
                    Some((lo, hi)) => x.iter().map(|v| v.clamp(lo, hi)).collect(),
                    None => x.clone(),
                })
            }
            _ => Err(Error::internal(format!(
                "\"{v}\" was not extracted as numbers"
            ))),
        })
        .collect::<Result<_>>()?;
    Ok(RawStats::Pairs(pair_sums(&cols, *missing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisson() -> Prepared {
        let x: Vec<f64> = (0..20).flat_map(|a| [1.0, f64::from(a)]).collect();
        Prepared::Glm {
            family: Family::Poisson,
            p: 2,
            x,
            y: vec![1.0; 20],
            deviance_clip: f64::INFINITY,
        }
    }

    fn round_at(beta: Vec<f64>) -> Result<RawStats> {
        let analysis = plexus_core::Query::from_json(
            r#"{"analysis": {"glm": {"family": "poisson", "outcome": "age", "covariates": ["bmi"]}}}"#,
        )?
        .analysis;
        let it = Iteration {
            round: 2,
            coefficients: beta,
            null_mean: None,
            gbdt: None,
            ..Iteration::default()
        };
        let limits = Limits {
            k: 5,
            max_parameter_share: 0.33,
            private: false,
            holdout_salt: 0,
        };
        round(&poisson(), &analysis, &it, limits)
    }

    #[test]
    fn coefficients_that_single_out_patients_are_refused() {
        round_at(vec![0.0, 0.01]).unwrap();
        // exp(5 · a): the oldest patient carries nearly all the weight.
        let e = round_at(vec![0.0, 5.0]).unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Disclosure);
        assert!(e.message.starts_with("weight rule"), "{e}");
        // exp(1000 · a) overflows: the fit diverged, nothing is released.
        let e = round_at(vec![0.0, 1000.0]).unwrap_err();
        assert!(e.message.contains("diverged"), "{e}");
    }
}
