//! What a researcher is told about a result's privacy: what it cost, what
//! the study has left, and how much noise its values carry. The report
//! itself is part of the pooled result ([`crate::pool::PrivacyReport`]);
//! here are the figures that go into it, and the check at submission.

use serde::{Deserialize, Serialize};

use super::scale::NoiseScale;
use super::survival::TreeNoise;
use crate::error::{Error, Result};
use crate::pool::{PooledValue, Z_95};
use crate::query::{Analysis, Query};
use crate::stats::NodeStats;
use crate::study::StudyDefinition;

/// Root of the summed variances: the sd of a sum of independent noises.
fn pooled_sd(sds: impl Iterator<Item = f64>) -> f64 {
    sds.map(|s| s * s).sum::<f64>().sqrt()
}

/// The noise in each pooled count, from the nodes that answered.
pub fn count_noise_sd(noises: &[NoiseScale]) -> Option<f64> {
    let sd = pooled_sd(noises.iter().map(|n| n.count_sd));
    (sd > 0.0).then_some(sd)
}

/// The noise of a pooled Kaplan-Meier result, from the nodes' receipts
/// (each gives the σ of every node of its trees, see
/// [`super::survival`]) and the query's public grid: the standard deviation
/// of a pooled number at risk (the largest over the grid), to report as the
/// result's count noise, and a note saying what each σ applies to. `None`
/// for any other analysis.
pub fn survival_noise(analysis: &Analysis, noises: &[NoiseScale]) -> Result<Option<(f64, String)>> {
    let Analysis::KaplanMeier { grid, .. } = analysis else {
        return Ok(None);
    };
    let sds: Vec<f64> = noises
        .iter()
        .map(|n| n.count_sd)
        .filter(|sd| *sd > 0.0)
        .collect();
    if sds.is_empty() {
        return Ok(None);
    }
    let unit = TreeNoise::of(grid.points()?.len() - 1, 1.0);
    let pooled = pooled_sd(sds.iter().copied());
    let (lo, hi) = sds.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), sd| {
        (lo.min(*sd), hi.max(*sd))
    });
    let per_node = if hi - lo <= 1e-9 * hi {
        format!("{lo:.1}")
    } else {
        format!("{lo:.1} to {hi:.1}")
    };
    let at_risk = unit.at_risk_sd * pooled;
    let note = format!(
        "Kaplan-Meier counts were released through a tree of range counts over the grid's {} intervals ({} levels, one patient changes one path): each node noised every range count with sd {per_node}; after consistent post-processing a pooled number at risk carries noise of sd up to {at_risk:.1} and one interval's pooled events or censorings about {:.1}; the Greenwood intervals are sampling error only and do not include this noise",
        unit.intervals,
        unit.levels,
        unit.interval_sd * pooled,
    );
    Ok(Some((at_risk, note)))
}

/// Widens a pooled summary's interval by the noise of the nodes whose
/// moments are in it, and states that noise; returns a note when the
/// noise made the variance negative (it is then reported as 0).
pub fn annotate_summary(
    value: &mut PooledValue,
    answers: &[(String, NodeStats)],
    noise_of: impl Fn(&str) -> Option<NoiseScale>,
) -> Option<String> {
    let released: Vec<NoiseScale> = answers
        .iter()
        .filter(|(_, s)| matches!(s, NodeStats::Summary(Some(_))))
        .filter_map(|(node, _)| noise_of(node))
        .collect();
    annotate_summary_noises(value, &released)
}

/// [`annotate_summary`] from the noise of every node whose moments are in
/// the pooled summary (under secure aggregation: every roster node).
pub fn annotate_summary_noises(value: &mut PooledValue, released: &[NoiseScale]) -> Option<String> {
    let PooledValue::Summary {
        n,
        mean,
        variance,
        sd,
        ci,
        noise_sd,
        variable,
    } = value
    else {
        return None;
    };
    if released.iter().all(NoiseScale::is_zero) {
        return None;
    }
    let nf = *n as f64;
    // Delta method for a ratio of noised sums centred on c: the mean is
    // c + ΣS/ΣN, so Var ≈ (σ_S² + (m − c)²·σ_N²)/N², node by node.
    let var: f64 = released
        .iter()
        .map(|x| x.sum_sd.powi(2) + (*mean - x.centre).powi(2) * x.count_sd.powi(2))
        .sum();
    let noise = var.sqrt() / nf;
    *noise_sd = Some(noise);
    let sampling = variance.map(|v| v / nf).unwrap_or(0.0);
    let half = Z_95 * (sampling + noise * noise).sqrt();
    *ci = Some([*mean - half, *mean + half]);
    let note = (*variance == Some(0.0) && *n > 1).then(|| {
        format!(
            "the noised sums of \"{variable}\" gave a variance of 0 or less; it is reported as 0"
        )
    });
    *sd = variance.map(f64::sqrt);
    note
}

/// What a node says about one release's privacy.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Receipt {
    /// Debited for this job (0 when it repeated a kept answer).
    pub charged_rho: f64,
    /// The study's spent budget at the node after this job.
    pub spent_rho: f64,
    /// The budget the node enforces for the study.
    pub budget_rho: f64,
    pub cached: bool,
    pub noise: NoiseScale,
}

/// What `query` asks to spend of its study's budget: 0 in an exact study.
pub fn query_cost(study: &StudyDefinition, query: &Query) -> f64 {
    if study.privacy.exact {
        return 0.0;
    }
    query.rho.unwrap_or(study.privacy.query_rho)
}

/// Refuses at submission a query the study's privacy terms cannot answer:
/// an analysis not yet released under differential privacy, or a cost
/// beyond what the study has left (`spent` so far). A `repeat` of a query
/// already charged is answered from the nodes' caches and costs nothing.
/// Returns the query's cost.
pub fn precheck(study: &StudyDefinition, query: &Query, spent: f64, repeat: bool) -> Result<f64> {
    let cost = query_cost(study, query);
    if study.privacy.exact {
        return Ok(cost);
    }
    super::release::releasable(query)?;
    let budget = study.privacy.budget_rho;
    if cost > budget {
        return Err(Error::invalid(format!(
            "the query's \"rho\" {cost} is more than study \"{}\"'s whole budget {budget}; ask with a smaller \"rho\"",
            study.id
        )));
    }
    if !repeat && spent + cost > budget * (1.0 + 1e-12) {
        return Err(Error::policy(format!(
            "study \"{}\" has spent rho {spent:.4} of its budget {budget:.4} (epsilon {:.2} of {:.2} at delta {:e}) and this query costs {cost:.4}; \
             ask for a cheaper query with a smaller \"rho\" (more noise), or a new study",
            study.id,
            study.privacy.epsilon(spent),
            study.privacy.epsilon(budget),
            study.privacy.delta
        )));
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::AnalysisKind;
    use crate::Dictionary;

    fn study() -> StudyDefinition {
        let mut s = StudyDefinition::from_toml(crate::study::tests::EXAMPLE).unwrap();
        s.analyses.push(AnalysisKind::Glm);
        s.privacy.budget_rho = 0.05;
        s
    }

    #[test]
    fn kaplan_meier_noise_is_stated_for_what_it_applies_to() {
        let km = Query::from_json(
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
                "grid": {"from": 0, "to": 1826, "step": 1}}}}"#,
        )
        .unwrap();
        let node = TreeNoise::for_cost(1826, 0.01).unwrap();
        let receipt = NoiseScale {
            count_sd: node.node_sd,
            rho: 0.01,
            ..NoiseScale::default()
        };
        let (sd, note) = survival_noise(&km.analysis, &[receipt; 3])
            .unwrap()
            .unwrap();
        // Three nodes: √3 times one node's noise in a number at risk.
        assert!((sd - node.at_risk_sd * 3f64.sqrt()).abs() < 1e-9, "{sd}");
        assert!(note.contains("1826 intervals (12 levels"), "{note}");
        assert!(note.contains("sd 24.5;"), "{note}");
        let count = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
        assert_eq!(survival_noise(&count.analysis, &[receipt]).unwrap(), None);
    }

    #[test]
    fn precheck_refuses_what_the_budget_cannot_pay_and_models_under_dp() {
        let s = study();
        s.validate(&Dictionary::cardiovascular()).unwrap();
        let count = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
        assert_eq!(precheck(&s, &count, 0.0, false).unwrap(), 0.01);
        assert!(precheck(&s, &count, 0.04, false).is_ok());
        let e = precheck(&s, &count, 0.045, false).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Policy);
        assert!(
            e.message
                .contains("has spent rho 0.0450 of its budget 0.0500"),
            "{e}"
        );
        // A repeat is answered from the nodes' caches, free.
        assert!(precheck(&s, &count, 0.05, true).is_ok());
        let dear = Query::from_json(r#"{"analysis": {"count": {}}, "rho": 0.2}"#).unwrap();
        assert!(precheck(&s, &dear, 0.0, false).is_err());
        let glm = Query::from_json(
            r#"{"analysis": {"glm": {"family": "poisson", "outcome": "age", "covariates": ["sex"]}}}"#,
        )
        .unwrap();
        let e = precheck(&s, &glm, 0.0, false).unwrap_err();
        assert!(e.message.contains("exact = true"), "{e}");
        let gaussian = Query::from_json(
            r#"{"analysis": {"glm": {"family": "gaussian", "outcome": "age", "covariates": ["sex"]}}}"#,
        )
        .unwrap();
        assert_eq!(precheck(&s, &gaussian, 0.0, false).unwrap(), 0.01);
        let mut exact = s.clone();
        exact.privacy.exact = true;
        assert_eq!(precheck(&exact, &glm, 10.0, false).unwrap(), 0.0);
    }
}
