//! What a query cost the study's privacy budget: the nodes' receipts
//! summed, recorded against the study, and stated in the result with the
//! noise its values carry.

use tracing::warn;

use plexus_core::pool::{NodeCharge, PooledResult, PrivacyReport};
use plexus_core::privacy::report::{
    annotate_summary_noises, count_noise_sd, query_cost, survival_noise, Receipt,
};
use plexus_core::privacy::scale::NoiseScale;
use plexus_core::{Error, Query, StudyDefinition};

use crate::state::State;

/// Records what a query under differential privacy cost, and states it
/// with the noise its values carry.
pub(super) async fn account(
    state: &State,
    query_id: &str,
    study: &StudyDefinition,
    query: &Query,
    summary_noises: &[NoiseScale],
    receipts: &[(String, Receipt)],
    result: &mut PooledResult,
) -> Result<PrivacyReport, Error> {
    let store_err = |e: crate::error::CoordinatorError| {
        Error::internal(format!(
            "the coordinator could not record the query's privacy cost: {e}"
        ))
    };
    let charged = receipts
        .iter()
        .map(|(_, r)| r.charged_rho)
        .fold(0.0, f64::max);
    let canonical = state.charge_key(study, query)?;
    state
        .store
        .record_charge(query_id, &study.id, &canonical, charged)
        .await
        .map_err(store_err)?;
    let (spent, _) = state.store.spent(&study.id).await.map_err(store_err)?;
    // What any node has spent can exceed the coordinator's sum when a node
    // charged a job whose query later failed; the larger figure stands.
    let spent = receipts
        .iter()
        .map(|(_, r)| r.spent_rho)
        .fold(spent, f64::max);
    let budget = study.privacy.budget_rho;
    let mut notes = Vec::new();
    if let Some(note) = annotate_summary_noises(&mut result.value, summary_noises) {
        notes.push(note);
    }
    let noises: Vec<_> = receipts.iter().map(|(_, r)| r.noise).collect();
    // A Kaplan-Meier count's noise follows from the tree its node used.
    let mut count_sd = count_noise_sd(&noises);
    if let Some((sd, note)) = survival_noise(&query.analysis, &noises)? {
        count_sd = Some(sd);
        notes.push(note);
    }
    Ok(PrivacyReport {
        exact: false,
        cost_rho: query_cost(study, query),
        charged_rho: charged,
        cached: !receipts.is_empty() && receipts.iter().all(|(_, r)| r.cached),
        budget_rho: budget,
        spent_rho: spent,
        remaining_rho: (budget - spent).max(0.0),
        epsilon_spent: study.privacy.epsilon(spent),
        delta: study.privacy.delta,
        count_noise_sd: count_sd,
        nodes: receipts
            .iter()
            .map(|(node, r)| NodeCharge {
                node: node.clone(),
                charged_rho: r.charged_rho,
                spent_rho: r.spent_rho,
                budget_rho: r.budget_rho,
                cached: r.cached,
            })
            .collect(),
        notes,
    })
}

/// Records what the study's nodes charged for a query that failed: the
/// most any node charged over the query's jobs, as for an answered one.
pub(super) async fn record_failed_charge(
    state: &State,
    query_id: &str,
    study: &StudyDefinition,
    query: &Query,
    charges: &std::sync::Mutex<Vec<(String, Receipt)>>,
) {
    let charged = charges
        .lock()
        .expect("charges lock")
        .iter()
        .map(|(_, r)| r.charged_rho)
        .fold(0.0, f64::max);
    if charged <= 0.0 {
        return;
    }
    let recorded = match state.charge_key(study, query) {
        Ok(canonical) => state
            .store
            .record_charge(query_id, &study.id, &canonical, charged)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.message),
    };
    if let Err(e) = recorded {
        warn!(error = %e, "could not record what a failed query charged");
    }
}
