//! The hospital's approval of each study: which versions of its definition
//! (by SHA-256 of the definition as registered) the hospital approved, and
//! what it lets the study do here. Versions come from `node.toml`
//! (`policy.studies.ID.definition_hashes`) and from the approvals file the
//! data steward extends with `plexus-node approve`, which is read again for
//! every job so an approval takes effect without a restart.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use plexus_core::{Error, Query};
use plexus_proto::v1 as pb;

use crate::config::{is_sha256_hex, NodeConfig, StudyPolicy};
use crate::error::NodeError;

/// The approvals file, in the node's state folder: one JSON object a line.
pub const APPROVALS_FILE: &str = "approvals.jsonl";

/// One approved version of a study, recorded by `plexus-node approve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub study_id: String,
    /// An approved version of the study's definition (empty in a model's
    /// approval).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub definition_hash: String,
    /// An approved prediction model of the study, by its hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_hash: String,
    /// RFC 3339.
    pub approved_at: String,
    /// The local account that approved it.
    #[serde(default)]
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

pub fn approvals_path(state_dir: &Path) -> PathBuf {
    state_dir.join(APPROVALS_FILE)
}

/// Every approval recorded in `state_dir`; none when the file does not exist.
pub fn read_approvals(state_dir: &Path) -> Result<Vec<Approval>, Error> {
    let path = approvals_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot read the approvals file {}: {e} (check the node's state folder)",
                path.display()
            )))
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Approval>(l).map_err(|e| {
                Error::internal(format!(
                    "line {} of the approvals file {} is not an approval ({e}); fix or remove that line",
                    i + 1,
                    path.display()
                ))
            })
        })
        .collect()
}

/// The definition hashes of `study` the hospital approved: pinned in the
/// config or recorded in the approvals file.
pub fn approved_hashes(config: &NodeConfig, study: &str) -> Result<BTreeSet<String>, Error> {
    approved(
        config,
        study,
        |s| &s.definition_hashes,
        |a| a.definition_hash,
    )
}

/// The model hashes of `study` the hospital approved: pinned in the config
/// or recorded in the approvals file.
pub fn approved_models(config: &NodeConfig, study: &str) -> Result<BTreeSet<String>, Error> {
    approved(config, study, |s| &s.model_hashes, |a| a.model_hash)
}

/// What the hospital approved of `study` of one kind: the hashes its
/// config pins (`pinned`), and those its approvals file records
/// (`recorded`, empty in an approval of the other kind).
fn approved(
    config: &NodeConfig,
    study: &str,
    pinned: impl Fn(&StudyPolicy) -> &BTreeSet<String>,
    recorded: impl Fn(Approval) -> String,
) -> Result<BTreeSet<String>, Error> {
    let mut out: BTreeSet<String> = config
        .policy
        .studies
        .get(study)
        .map(|s| pinned(s).clone())
        .unwrap_or_default();
    out.extend(
        read_approvals(&config.node.state_dir)?
            .into_iter()
            .filter(|a| a.study_id == study)
            .map(recorded)
            .filter(|h| !h.is_empty()),
    );
    Ok(out)
}

/// Refuses a `model_performance` job unless the model it carries is the
/// one its query names, reads exactly the variables the query lists, and
/// was approved by this hospital for the study. A changed model has another
/// hash, and is refused until approved again.
pub fn model_approved(
    config: &NodeConfig,
    study: &str,
    query: &Query,
    iteration: Option<&plexus_core::models::fit::Iteration>,
    dict: &plexus_core::Dictionary,
) -> Result<(), Error> {
    let plexus_core::Analysis::ModelPerformance {
        model,
        model_hash,
        inputs,
        ..
    } = &query.analysis
    else {
        return Ok(());
    };
    let artefact = iteration
        .and_then(|it| it.model.as_deref())
        .ok_or_else(|| {
            Error::invalid(format!(
                "the job validates model \"{model}\" and carries no model"
            ))
        })?;
    let hash = artefact.hash();
    if hash != *model_hash || artefact.spec.name != *model {
        return Err(Error::policy(format!(
            "the model the job carries (\"{}\", hash {hash}) is not the model its query names (\"{model}\", hash {model_hash}); refused",
            artefact.spec.name
        )));
    }
    let approved = approved_models(config, study)?;
    if !approved.contains(&hash) {
        return Err(Error::policy(format!(
            "model \"{model}\" of study \"{study}\" with hash {hash} has not been approved by this hospital (a model registered again has a new hash); to approve it, check it (`plexus model list --study {study}` shows its file's SHA-256, inputs and operators), then run `plexus-node approve --config node.toml --study {study} --model {hash}` (or add the hash to policy.studies.{study}.model_hashes in node.toml)"
        )));
    }
    let features = plexus_core::models::registration::check(artefact, dict, inputs)?;
    let reads = plexus_core::models::artefact::ModelArtefact::variables(&features);
    let mut listed = inputs.clone();
    listed.sort();
    listed.dedup();
    if reads != listed {
        return Err(Error::policy(format!(
            "model \"{model}\" reads {} and the query lists {}; refused",
            reads.join(", "),
            listed.join(", ")
        )));
    }
    Ok(())
}

/// Refuses a job of a study the hospital does not take part in, or of a
/// definition it has not approved; returns what the hospital allows the study.
pub fn pinned<'a>(config: &'a NodeConfig, job: &pb::Job) -> Result<&'a StudyPolicy, Error> {
    let node = &config.node.id;
    let study = &job.study_id;
    let received = job.study_definition_hash.as_str();
    // The node's name stays out of the refusals a hospital resolves by
    // approving: the coordinator names the node beside its refusal, and
    // tells the researcher once for all the nodes that refused alike.
    let how = format!(
        "check the definition (`plexus study show {study}` prints it and its hash), then approve it with `plexus-node approve --config node.toml --study {study} --hash {}` (or add the hash to policy.studies.{study}.definition_hashes in node.toml)",
        if received.is_empty() { "HASH" } else { received }
    );
    let Some(allowed) = config.policy.studies.get(study) else {
        return Err(Error::policy(format!(
            "study \"{study}\" is not in this hospital's policy; to take part, the hospital should add a [policy.studies.{study}] table to its node.toml, restart the node, {how}"
        )));
    };
    let approved = approved_hashes(config, study)?;
    if approved.contains(received) {
        return Ok(allowed);
    }
    if received.is_empty() {
        return Err(Error::policy(format!(
            "the job of study \"{study}\" names no definition hash, so node {node} cannot tell which version of the study it is; the coordinator must be upgraded to one that pins study definitions"
        )));
    }
    if approved.is_empty() {
        return Err(Error::policy(format!(
            "study \"{study}\" has not been approved by this hospital yet; to approve it, the hospital should {how}"
        )));
    }
    let approved = approved.into_iter().collect::<Vec<_>>().join(", ");
    Err(Error::policy(format!(
        "study \"{study}\" arrived with definition hash {received}, which this hospital has not approved (approved: {approved}): the study changed since the hospital's approval; to approve the new version, the hospital should {how}"
    )))
}

/// Refuses a query using an analysis or a variable the hospital does not
/// allow this study, naming the config key that narrows it.
pub fn narrowed(
    node: &str,
    study: &str,
    allowed: &StudyPolicy,
    query: &Query,
) -> Result<(), Error> {
    narrowed_through(node, study, allowed, query, &Default::default())
}

/// [`narrowed`] for a study that derives variables of its own: a derived
/// variable is judged by the dictionary variables it reads, which the
/// hospital's `variables` list names.
pub fn narrowed_through(
    node: &str,
    study: &str,
    allowed: &StudyPolicy,
    query: &Query,
    derived: &std::collections::BTreeMap<String, plexus_core::timeline::Derived>,
) -> Result<(), Error> {
    let kind = query.analysis.kind();
    if let Some(analyses) = &allowed.analyses {
        if !analyses.contains(&kind) {
            let list: Vec<&str> = analyses.iter().map(|a| a.as_str()).collect();
            return Err(Error::policy(format!(
                "node {node} does not run {kind} analyses for study \"{study}\"; policy.studies.{study}.analyses allows only {}",
                list.join(", ")
            )));
        }
    }
    if let Some(variables) = &allowed.variables {
        if let Some(v) = plexus_core::timeline::inputs(derived, &query.variables())
            .into_iter()
            .find(|v| !variables.contains(v))
        {
            let list: Vec<&str> = variables.iter().map(String::as_str).collect();
            return Err(Error::policy(format!(
                "node {node} does not let study \"{study}\" use variable \"{v}\"; policy.studies.{study}.variables allows only {}",
                list.join(", ")
            )));
        }
    }
    Ok(())
}

/// What `approve` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Approved {
    /// False when the hash was already approved (nothing was written).
    pub recorded: bool,
    /// Every approved version of the study afterwards.
    pub hashes: BTreeSet<String>,
}

/// Records `hash` as an approved definition of `study` in the approvals
/// file; the running node uses it from its next job.
pub fn approve(
    config: &NodeConfig,
    study: &str,
    hash: &str,
    by: &str,
    note: &str,
) -> Result<Approved, NodeError> {
    record(config, study, hash, false, by, note)
}

/// Records `hash` as an approved prediction model of `study` in the
/// approvals file; the running node uses it from its next job.
pub fn approve_model(
    config: &NodeConfig,
    study: &str,
    hash: &str,
    by: &str,
    note: &str,
) -> Result<Approved, NodeError> {
    record(config, study, hash, true, by, note)
}

fn record(
    config: &NodeConfig,
    study: &str,
    hash: &str,
    model: bool,
    by: &str,
    note: &str,
) -> Result<Approved, NodeError> {
    let hash = hash.trim().to_ascii_lowercase();
    if !config.policy.studies.contains_key(study) {
        return Err(NodeError::Config(format!(
            "study \"{study}\" has no [policy.studies.{study}] table in node.toml; add one first (it says what the study may do here), then approve its definition"
        )));
    }
    if !is_sha256_hex(&hash) {
        return Err(NodeError::Config(format!(
            "\"{hash}\" is not a SHA-256 hex digest (64 characters 0-9, a-f); copy it from `plexus {} {study}` or from the node's refusal",
            if model { "model list --study" } else { "study show" }
        )));
    }
    let mut hashes = if model {
        approved_models(config, study)
    } else {
        approved_hashes(config, study)
    }
    .map_err(NodeError::Core)?;
    if hashes.contains(&hash) {
        return Ok(Approved {
            recorded: false,
            hashes,
        });
    }
    let approval = Approval {
        study_id: study.to_string(),
        definition_hash: if model { String::new() } else { hash.clone() },
        model_hash: if model { hash.clone() } else { String::new() },
        approved_at: chrono::Utc::now().to_rfc3339(),
        by: by.to_string(),
        note: note.to_string(),
    };
    let path = approvals_path(&config.node.state_dir);
    let mut line = serde_json::to_vec(&approval).expect("an approval serialises");
    line.push(b'\n');
    std::fs::create_dir_all(&config.node.state_dir)
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        })
        .and_then(|mut f| {
            f.write_all(&line)?;
            f.sync_data()
        })
        .map_err(|e| {
            NodeError::State(format!(
                "cannot record the approval in {}: {e} (run as the node's account, or check the state folder)",
                path.display()
            ))
        })?;
    hashes.insert(hash);
    Ok(Approved {
        recorded: true,
        hashes,
    })
}

/// The local account running a command, for the records of who decided.
pub use plexus_ops::local_user;

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::AnalysisKind;

    const DEPLOYED: &str = include_str!("../../deploy/node-a.toml");
    const STUDY: &str = "aaa-outcomes";

    fn config(state: &Path) -> NodeConfig {
        let mut cfg: NodeConfig = toml::from_str(DEPLOYED).unwrap();
        cfg.node.state_dir = state.to_path_buf();
        cfg
    }

    fn job(hash: &str) -> pb::Job {
        pb::Job {
            study_id: STUDY.into(),
            study_definition_hash: hash.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_definition_runs_only_once_approved_in_the_config_or_the_approvals_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let pinned_hash = cfg.policy.studies[STUDY]
            .definition_hashes
            .first()
            .unwrap()
            .clone();
        assert!(super::pinned(&cfg, &job(&pinned_hash)).is_ok());

        let changed = "7".repeat(64);
        let e = super::pinned(&cfg, &job(&changed)).unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Policy);
        for part in [
            "study \"aaa-outcomes\"",
            &format!("definition hash {changed}"),
            &format!("approved: {pinned_hash}"),
            &format!(
                "plexus-node approve --config node.toml --study aaa-outcomes --hash {changed}"
            ),
        ] {
            assert!(e.message.contains(part), "{part}: {e}");
        }
        assert!(
            e.message.contains("changed since the hospital's approval"),
            "{e}"
        );
        let e = super::pinned(&cfg, &job("")).unwrap_err();
        assert!(e.message.contains("names no definition hash"), "{e}");
        let mut other = job(&pinned_hash);
        other.study_id = "other-study".into();
        let e = super::pinned(&cfg, &other).unwrap_err();
        assert!(e.message.contains("[policy.studies.other-study]"), "{e}");
        assert!(e.message.contains("restart the node"), "{e}");

        // Approved by the steward: taken from the next job, no restart.
        let done = approve(&cfg, STUDY, &changed.to_uppercase(), "steward", "v2").unwrap();
        assert!(done.recorded);
        assert_eq!(done.hashes.len(), 2);
        assert!(super::pinned(&cfg, &job(&changed)).is_ok());
        let again = approve(&cfg, STUDY, &changed, "steward", "").unwrap();
        assert!(!again.recorded);
        let kept = read_approvals(dir.path()).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].by.as_str(), kept[0].note.as_str()),
            ("steward", "v2")
        );

        // Bad input, each with what to do.
        let e = approve(&cfg, STUDY, "abc", "s", "").unwrap_err();
        assert!(e.to_string().contains("not a SHA-256 hex digest"), "{e}");
        let e = approve(&cfg, "other-study", &changed, "s", "").unwrap_err();
        assert!(e.to_string().contains("add one first"), "{e}");
        std::fs::write(approvals_path(dir.path()), "not json\n").unwrap();
        let e = super::pinned(&cfg, &job(&changed)).unwrap_err();
        assert!(e.message.contains("line 1 of the approvals file"), "{e}");
    }

    #[test]
    fn a_study_never_approved_is_refused_as_not_approved_yet_not_as_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.policy
            .studies
            .get_mut(STUDY)
            .unwrap()
            .definition_hashes
            .clear();
        let hash = "5".repeat(64);
        let e = super::pinned(&cfg, &job(&hash)).unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Policy);
        for part in [
            "study \"aaa-outcomes\" has not been approved by this hospital yet",
            &format!("plexus-node approve --config node.toml --study aaa-outcomes --hash {hash}"),
            "plexus study show aaa-outcomes",
        ] {
            assert!(e.message.contains(part), "{part}: {e}");
        }
        for wrong in ["changed", "re-approve", "approved:", "hospital-a"] {
            assert!(!e.message.contains(wrong), "{wrong}: {e}");
        }

        // Once approved, the next version is a change.
        approve(&cfg, STUDY, &hash, "steward", "").unwrap();
        let next = "6".repeat(64);
        let e = super::pinned(&cfg, &job(&next)).unwrap_err();
        assert!(
            e.message.contains("changed since the hospital's approval"),
            "{e}"
        );
        assert!(e.message.contains(&format!("approved: {hash}")), "{e}");
    }

    #[test]
    fn narrowing_refuses_other_analyses_and_variables_naming_the_key() {
        let allowed = StudyPolicy {
            analyses: Some([AnalysisKind::Count, AnalysisKind::Summary].into()),
            variables: Some(["age".to_string(), "sex".to_string()].into()),
            ..Default::default()
        };
        let q = |json: &str| Query::from_json(json).unwrap();
        let ok = q(
            r#"{"cohort": {"compare": {"variable": "sex", "op": "=", "value": "F"}},
            "analysis": {"summary": {"variable": "age"}}}"#,
        );
        narrowed("hospital-a", STUDY, &allowed, &ok).unwrap();

        let e = narrowed(
            "hospital-a",
            STUDY,
            &allowed,
            &q(r#"{"analysis": {"histogram": {"variable": "age", "edges": [50, 60, 70]}}}"#),
        )
        .unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Policy);
        assert!(
            e.message.contains("histogram")
                && e.message.contains("policy.studies.aaa-outcomes.analyses"),
            "{e}"
        );
        // A variable in the cohort counts as much as one in the analysis.
        let e = narrowed(
            "hospital-a",
            STUDY,
            &allowed,
            &q(
                r#"{"cohort": {"compare": {"variable": "bmi", "op": ">", "value": 30}},
                "analysis": {"count": {}}}"#,
            ),
        )
        .unwrap_err();
        assert!(
            e.message.contains("\"bmi\"")
                && e.message.contains("policy.studies.aaa-outcomes.variables"),
            "{e}"
        );
        // Not narrowed: whatever the study allows.
        narrowed("hospital-a", STUDY, &StudyPolicy::default(), &ok).unwrap();

        // A variable the study derives is judged by those it reads.
        let derived: std::collections::BTreeMap<String, plexus_core::timeline::Derived> =
            serde_json::from_str(
                r#"{"seen": {"type": "integer", "days_between": {"from": "inclusion_date", "to": "inclusion_date"}},
                    "old": {"type": "integer", "days_between": {"from": "age", "to": "age"}}}"#,
            )
            .unwrap();
        let on = |v: &str| {
            q(&format!(
                r#"{{"analysis": {{"summary": {{"variable": "{v}"}}}}}}"#
            ))
        };
        narrowed_through("hospital-a", STUDY, &allowed, &on("old"), &derived).unwrap();
        let e = narrowed_through("hospital-a", STUDY, &allowed, &on("seen"), &derived).unwrap_err();
        assert!(e.message.contains("\"inclusion_date\""), "{e}");
    }

    #[test]
    fn policy_config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let base = config(dir.path());
        type Change = Box<dyn Fn(&mut crate::config::Policy)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|p| p.allowed_studies = Some(vec![STUDY.into()])),
                "policy.allowed_studies was replaced",
            ),
            (
                Box::new(|p| {
                    p.studies.get_mut(STUDY).unwrap().definition_hashes = ["xyz".into()].into()
                }),
                "policy.studies.aaa-outcomes.definition_hashes",
            ),
            (
                Box::new(|p| {
                    p.studies.get_mut(STUDY).unwrap().variables = Some(Default::default())
                }),
                "policy.studies.aaa-outcomes.variables is empty",
            ),
            (
                Box::new(|p| {
                    p.review.insert("nope".into());
                }),
                "policy.review lists \"nope\"",
            ),
            (
                Box::new(|p| {
                    p.exact_studies.insert("nope".into());
                }),
                "policy.exact_studies lists \"nope\"",
            ),
            (
                Box::new(|p| {
                    let s = p.studies.remove(STUDY).unwrap();
                    p.studies.insert("Bad Id".into(), s);
                }),
                "is not a study id",
            ),
        ];
        for (change, want) in cases {
            let mut p = base.policy.clone();
            change(&mut p);
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut p = base.policy.clone();
        p.review.insert("*".into());
        p.validate().unwrap();
        assert!(p.reviews(STUDY) && p.reviews("anything"));
        let mut p = base.policy.clone();
        p.studies.get_mut(STUDY).unwrap().variables = Some(["no_such".to_string()].into());
        let e = p
            .validate_variables(&plexus_core::Dictionary::cardiovascular())
            .unwrap_err();
        assert!(e.to_string().contains("\"no_such\""), "{e}");
    }
}
