//! Wire <-> domain conversions. Everything arriving from a peer is junk
//! until proven otherwise: missing oneofs, unknown enum values and
//! out-of-range sizes are refused here with an `invalid` error.

use plexus_core::cell::Cell;
use plexus_core::error::{Error, ErrorCode, Result};
use plexus_core::models::correlation::{Missing, PairSums};
use plexus_core::models::cox::{CoxStats, Ties};
use plexus_core::models::fit::Iteration;
use plexus_core::models::glm::{Family, GlmStats};
use plexus_core::models::survival::{Grid, GroupCounts, GroupStats, MAX_GRID_INTERVALS};
use plexus_core::privacy::report::Receipt;
use plexus_core::privacy::scale::NoiseScale;
use plexus_core::query::{
    Analysis, AnalysisKind, Cohort, CompareOp, Query, Value, MAX_BINS, MAX_CORRELATION_VARIABLES,
    MAX_COVARIATES, MAX_PROBABILITIES,
};
use plexus_core::stats::{Moments, NodeStats};
use plexus_core::study::{PrivacySettings, PurposeSpec, StudyDefinition};
use plexus_core::Purpose;

use crate::v1 as pb;

mod audit;
mod gbdt;
pub mod performance;
mod query;
mod secagg;
mod stats;

pub use secagg::{keys_from_pb, keys_to_pb, vector_from_bytes, vector_to_bytes};

pub(crate) use query::bounded;

/// Largest repeated field accepted from a peer (bins, cells, list items).
pub(crate) const MAX_REPEATED: usize = 100_000;
/// Largest vector of model sums accepted from a peer.
pub(crate) const MAX_WIRE_VECTOR: usize = 1 << 16;

pub(crate) fn missing(what: &str) -> Error {
    Error::invalid(format!("{what} is missing from the message"))
}

// ---- errors ----

impl From<ErrorCode> for pb::ErrorCode {
    fn from(c: ErrorCode) -> Self {
        match c {
            ErrorCode::Disclosure => pb::ErrorCode::Disclosure,
            ErrorCode::Data => pb::ErrorCode::Data,
            ErrorCode::Policy => pb::ErrorCode::Policy,
            ErrorCode::Unavailable => pb::ErrorCode::Unavailable,
            ErrorCode::Invalid => pb::ErrorCode::Invalid,
            ErrorCode::Internal => pb::ErrorCode::Internal,
            ErrorCode::NotFound => pb::ErrorCode::NotFound,
        }
    }
}

pub fn code_from_i32(code: i32) -> ErrorCode {
    match pb::ErrorCode::try_from(code).unwrap_or(pb::ErrorCode::Unspecified) {
        pb::ErrorCode::Disclosure => ErrorCode::Disclosure,
        pb::ErrorCode::Data => ErrorCode::Data,
        pb::ErrorCode::Policy => ErrorCode::Policy,
        pb::ErrorCode::Unavailable => ErrorCode::Unavailable,
        pb::ErrorCode::Invalid => ErrorCode::Invalid,
        pb::ErrorCode::NotFound => ErrorCode::NotFound,
        pb::ErrorCode::Internal | pb::ErrorCode::Unspecified => ErrorCode::Internal,
    }
}

impl From<&Error> for pb::Error {
    fn from(e: &Error) -> Self {
        pb::Error {
            code: pb::ErrorCode::from(e.code) as i32,
            message: e.message.clone(),
        }
    }
}

impl From<pb::Error> for Error {
    fn from(e: pb::Error) -> Self {
        Error::new(code_from_i32(e.code), e.message)
    }
}

/// The response metadata key that carries an error's stable code.
pub const ERROR_CODE_KEY: &str = "plexus-error-code";

/// Maps a domain error to a gRPC status; the stable code travels in the
/// `plexus-error-code` metadata so clients need not parse text.
pub fn to_status(e: &Error) -> tonic::Status {
    let code = match e.code {
        ErrorCode::Invalid => tonic::Code::InvalidArgument,
        ErrorCode::Policy => tonic::Code::PermissionDenied,
        ErrorCode::Disclosure => tonic::Code::FailedPrecondition,
        ErrorCode::Data => tonic::Code::FailedPrecondition,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Internal => tonic::Code::Internal,
    };
    let mut status = tonic::Status::new(code, e.message.clone());
    if let Ok(v) = e.code.as_str().parse() {
        status.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    status
}

/// Recovers the domain error from a status made by [`to_status`].
pub fn from_status(s: &tonic::Status) -> Error {
    let code = s
        .metadata()
        .get(ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse)
        .unwrap_or(match s.code() {
            // A request too large or too deep for the server to decode is
            // the caller's mistake.
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::Invalid,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => ErrorCode::Policy,
            // No code from the server: the connection failed or was cut
            // (a restarting coordinator), which a retry may cure.
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Aborted => ErrorCode::Unavailable,
            tonic::Code::NotFound => ErrorCode::NotFound,
            // The connection broke mid-call (a coordinator killed while a
            // researcher waited): tonic reports the HTTP/2 error as
            // `internal`, with the transport's error as its source or in
            // its message. A server's own errors carry their code above.
            tonic::Code::Internal if cut_off(s) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        });
    Error::new(code, s.message().to_string())
}

/// A status made on this side from a broken connection, not sent by a
/// server.
fn cut_off(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some() || s.message().starts_with("h2 protocol error")
}

// ---- studies ----

impl From<&Purpose> for pb::Purpose {
    fn from(p: &Purpose) -> Self {
        pb::Purpose {
            code: p.code_str().to_string(),
            disease: p.disease().to_string(),
            modifiers: p.modifiers.iter().cloned().collect(),
        }
    }
}

impl TryFrom<pb::Purpose> for Purpose {
    type Error = Error;
    fn try_from(p: pb::Purpose) -> Result<Self> {
        Purpose::from_parts(&p.code, &p.disease, &p.modifiers)
    }
}

/// Wire form of the data dictionary: what researchers may name.
pub fn dictionary_to_pb(d: &plexus_core::Dictionary) -> pb::Dictionary {
    let bound = |b: &Option<plexus_core::dictionary::Bound>| match b {
        None => String::new(),
        Some(plexus_core::dictionary::Bound::Number(x)) => x.to_string(),
        Some(plexus_core::dictionary::Bound::Date(d)) => d.to_string(),
    };
    pb::Dictionary {
        variables: d
            .variables
            .iter()
            .map(|(name, v)| pb::DictionaryVariable {
                name: name.clone(),
                r#type: v.kind.as_str().to_string(),
                unit: v.unit.clone().unwrap_or_default(),
                categories: v.categories.clone(),
                description: v.description.clone(),
                min: bound(&v.min),
                max: bound(&v.max),
            })
            .collect(),
        name: d.name.clone(),
        version: d.version.clone(),
        fingerprint: d.fingerprint(),
    }
}

/// Wire form of a study definition, with its registration time.
pub fn study_to_pb(s: &StudyDefinition, registered_unix_ms: i64) -> pb::Study {
    pb::Study {
        id: s.id.clone(),
        title: s.title.clone(),
        purpose: Some(pb::Purpose {
            code: s.purpose.code.clone(),
            disease: s.purpose.disease.clone(),
            modifiers: s.purpose.modifiers.clone(),
        }),
        variables: s.variables.clone(),
        analyses: s.analyses.iter().map(|a| a.as_str().to_string()).collect(),
        researchers: s.researchers.clone(),
        nodes: s.nodes.clone(),
        min_nodes: s.min_nodes,
        registered_unix_ms,
        continue_without_lost_nodes: s.continue_without_lost_nodes,
        secure_aggregation: s.secure_aggregation,
        privacy: Some(pb::StudyPrivacy {
            exact: s.privacy.exact,
            budget_rho: s.privacy.budget_rho,
            query_rho: s.privacy.query_rho,
            delta: s.privacy.delta,
        }),
        definition_hash: s.definition_hash(),
        derived_json: plexus_core::timeline::to_json(&s.derived),
        concept_sets_json: plexus_core::timeline::to_json(&s.concept_sets),
    }
}

impl From<&Receipt> for pb::PrivacyReceipt {
    fn from(r: &Receipt) -> Self {
        pb::PrivacyReceipt {
            charged_rho: r.charged_rho,
            spent_rho: r.spent_rho,
            budget_rho: r.budget_rho,
            cached: r.cached,
            count_sd: r.noise.count_sd,
            sum_sd: r.noise.sum_sd,
            square_sd: r.noise.square_sd,
            centre: r.noise.centre,
            rho: r.noise.rho,
        }
    }
}

impl TryFrom<pb::PrivacyReceipt> for Receipt {
    type Error = Error;
    fn try_from(r: pb::PrivacyReceipt) -> Result<Self> {
        let values = [
            r.charged_rho,
            r.spent_rho,
            r.budget_rho,
            r.count_sd,
            r.sum_sd,
            r.square_sd,
            r.rho,
        ];
        if !values.iter().all(|v| v.is_finite() && *v >= 0.0) || !r.centre.is_finite() {
            return Err(Error::invalid(
                "node's privacy receipt holds a negative or non-finite number",
            ));
        }
        Ok(Receipt {
            charged_rho: r.charged_rho,
            spent_rho: r.spent_rho,
            budget_rho: r.budget_rho,
            cached: r.cached,
            noise: NoiseScale {
                count_sd: r.count_sd,
                sum_sd: r.sum_sd,
                square_sd: r.square_sd,
                centre: r.centre,
                rho: r.rho,
            },
        })
    }
}

impl TryFrom<pb::Study> for StudyDefinition {
    type Error = Error;
    fn try_from(s: pb::Study) -> Result<Self> {
        let purpose = s.purpose.ok_or_else(|| missing("study purpose"))?;
        // Before parsing, whose error would echo the name.
        plexus_core::text::check_all("study.analyses", &s.analyses)?;
        Ok(StudyDefinition {
            id: s.id,
            title: s.title,
            variables: s.variables,
            analyses: s
                .analyses
                .iter()
                .map(|a| AnalysisKind::parse(a))
                .collect::<Result<_>>()?,
            researchers: s.researchers,
            nodes: s.nodes,
            min_nodes: s.min_nodes,
            continue_without_lost_nodes: s.continue_without_lost_nodes,
            secure_aggregation: s.secure_aggregation,
            privacy: s
                .privacy
                .map(|p| PrivacySettings {
                    exact: p.exact,
                    budget_rho: p.budget_rho,
                    query_rho: p.query_rho,
                    delta: p.delta,
                })
                .unwrap_or_default(),
            purpose: PurposeSpec {
                code: purpose.code,
                disease: purpose.disease,
                modifiers: purpose.modifiers,
            },
            derived: plexus_core::timeline::from_json(&s.derived_json, "derived variables")?,
            concept_sets: plexus_core::timeline::from_json(&s.concept_sets_json, "concept sets")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips() {
        let q = Query::from_json(
            r#"{"cohort": {"or": [
                   {"compare": {"variable": "age", "op": ">=", "value": 65}},
                   {"not": {"in": {"variable": "smoking", "values": ["former", "current"]}}},
                   {"is_null": {"variable": "bmi"}},
                   {"not_null": {"variable": "sbp"}},
                   {"compare": {"variable": "diabetes", "op": "=", "value": true}},
                   {"compare": {"variable": "bmi", "op": "<", "value": 30.5}}
                ]},
                "analysis": {"histogram": {"variable": "sbp", "edges": [100, 120, 140]}}}"#,
        )
        .unwrap();
        let wire = pb::Query::from(&q);
        assert_eq!(Query::try_from(wire).unwrap(), q);
    }

    #[test]
    fn junk_is_refused() {
        assert!(Query::try_from(pb::Query::default()).is_err());
        let bad_op = pb::Cohort {
            node: Some(pb::cohort::Node::Compare(pb::Comparison {
                variable: "age".into(),
                op: 99,
                value: Some(pb::Value {
                    kind: Some(pb::value::Kind::Integer(1)),
                }),
            })),
        };
        assert!(Cohort::try_from(bad_op).is_err());
        let bad_cell = pb::NodeStats {
            kind: Some(pb::node_stats::Kind::Count(pb::CountStats {
                n: Some(pb::CountCell {
                    value: Some(pb::count_cell::Value::Suppressed(false)),
                }),
            })),
        };
        assert!(NodeStats::try_from(bad_cell).is_err());
    }

    #[test]
    fn stats_round_trip() {
        let s = NodeStats::Table {
            rows: 2,
            columns: 2,
            cells: vec![
                Cell::Count(7),
                Cell::Suppressed,
                Cell::Count(9),
                Cell::Count(12),
            ],
        };
        assert_eq!(NodeStats::try_from(pb::NodeStats::from(&s)).unwrap(), s);
        let e = Error::disclosure("too few");
        let back = from_status(&to_status(&e));
        assert_eq!(back, e);
    }

    #[test]
    fn a_connection_cut_mid_call_is_unavailable_and_a_servers_internal_error_is_not() {
        // What tonic makes of an HTTP/2 stream reset by a dying server.
        let cut = tonic::Status::internal("h2 protocol error: http2 error");
        assert_eq!(from_status(&cut).code, ErrorCode::Unavailable);
        let mut with_source = tonic::Status::internal("stream error");
        with_source.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(from_status(&with_source).code, ErrorCode::Unavailable);
        // An internal error a server sent, with or without our code.
        let sent = tonic::Status::internal("the pool's matrix is singular");
        assert_eq!(from_status(&sent).code, ErrorCode::Internal);
        let ours = to_status(&Error::internal("h2 protocol error: not really"));
        assert_eq!(from_status(&ours).code, ErrorCode::Internal);
    }

    #[test]
    fn every_analysis_round_trips() {
        for json in [
            r#"{"analysis": {"glm": {"family": "poisson", "outcome": "age", "covariates": ["sex"],
                "intercept": false, "tolerance": 1e-6, "max_iterations": 9}}, "by_site": true}"#,
            r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": []}}}"#,
            r#"{"analysis": {"cox": {"time": "followup_days", "event": "death",
                "covariates": ["age"], "ties": "breslow"}}}"#,
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
                "group": "sex", "grid": {"from": 0, "to": 10, "step": 2}}}}"#,
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
                "grid": [0, 1, 5]}}}"#,
            r#"{"analysis": {"correlation": {"variables": ["age", "bmi"], "missing": "pairwise"}}}"#,
            r#"{"analysis": {"quantiles": {"variable": "age", "edges": [40, 60, 100]}}}"#,
            r#"{"analysis": {"two_by_two": {"exposure": "diabetes", "outcome": "death"}}}"#,
            r#"{"analysis": {"gbdt": {"outcome": "death", "covariates": ["age", "smoking"]}}}"#,
            r#"{"analysis": {"gbdt": {"loss": "squared", "outcome": "sbp", "covariates": ["age", "bmi"],
                "trees": 20, "depth": 3, "learning_rate": 0.3, "lambda": 0.5, "min_child_weight": 2,
                "bins": 16, "edges": {"bmi": [18.5, 25, 30]}, "validation": true, "early_stopping": 5}}}"#,
            r#"{"analysis": {"model_performance": {"model": "risk", "outcome": "death"}}}"#,
            r#"{"analysis": {"model_performance": {"model": "risk", "model_hash": "ab", "inputs": ["age", "sex"],
                "outcome": "death", "subgroups": ["sex"], "thresholds": [0.1, 0.2], "calibration_bins": 20}}}"#,
        ] {
            let q = Query::from_json(json).unwrap();
            assert_eq!(Query::try_from(pb::Query::from(&q)).unwrap(), q, "{json}");
        }
    }

    #[test]
    fn a_model_validation_round_trips_with_its_model_and_statistics() {
        use plexus_core::models::artefact::{ModelArtefact, ModelFormat, ModelSpec};
        use plexus_core::models::performance::{GroupCounts, PerformanceStats, ScoreSegments};
        let it = Iteration {
            round: 1,
            model: Some(std::sync::Arc::new(ModelArtefact {
                spec: ModelSpec {
                    name: "risk".into(),
                    format: ModelFormat::Onnx,
                    inputs: vec!["age".into(), "smoking=current".into()],
                    output: Some("probabilities".into()),
                    source: "risk.onnx".into(),
                },
                bytes: vec![1, 2, 3],
            })),
            ..Iteration::default()
        };
        assert_eq!(Iteration::try_from(pb::Iteration::from(&it)).unwrap(), it);
        let stats = NodeStats::Performance(PerformanceStats {
            counts: vec![GroupCounts {
                n: 12,
                positives: 5,
                segments: ScoreSegments {
                    first: 3,
                    lows: vec![10],
                    ends: vec![9999],
                    positives: vec![5],
                    negatives: vec![7],
                    sum_p: vec![4.5],
                    tied: vec![false],
                },
            }],
        });
        assert_eq!(
            NodeStats::try_from(pb::NodeStats::from(&stats)).unwrap(),
            stats
        );
        let mut bad = pb::ModelArtefact::default();
        assert!(super::performance::artefact_from_pb(bad.clone()).is_err());
        bad.spec = Some(pb::ModelSpec {
            format: "pickle".into(),
            ..Default::default()
        });
        let e = super::performance::artefact_from_pb(bad).unwrap_err();
        assert!(e.message.contains("\"pickle\""), "{e}");
    }

    #[test]
    fn model_statistics_round_trip_and_junk_is_refused() {
        let all = [
            NodeStats::Glm(GlmStats {
                n: 10,
                xtwx: vec![1.0, 2.0, 3.0],
                xtwz: vec![4.0, 5.0],
                deviance: 6.0,
                sum_y: 7.0,
                null_deviance: 8.0,
            }),
            NodeStats::Cox(CoxStats {
                n: 10,
                events: 4,
                loglik: -3.5,
                gradient: vec![0.1],
                information: vec![2.0],
            }),
            NodeStats::Survival(vec![
                GroupStats::Released(GroupCounts {
                    open_end: false,
                    at_risk: 9,
                    events: vec![1, 2],
                    censored: vec![3, 3],
                }),
                GroupStats::Suppressed,
            ]),
            NodeStats::Pairs(vec![
                Some(PairSums {
                    n: 6,
                    sum_x: 1.0,
                    sum_y: 2.0,
                    sum_xx: 3.0,
                    sum_yy: 4.0,
                    sum_xy: 2.5,
                }),
                None,
            ]),
        ];
        for s in all {
            assert_eq!(NodeStats::try_from(pb::NodeStats::from(&s)).unwrap(), s);
        }
        let empty_group = pb::NodeStats {
            kind: Some(pb::node_stats::Kind::Survival(pb::SurvivalStats {
                groups: vec![pb::SurvivalGroup { value: None }],
            })),
        };
        assert!(NodeStats::try_from(empty_group).is_err());
        let huge = pb::NodeStats {
            kind: Some(pb::node_stats::Kind::Glm(pb::GlmStats {
                xtwx: vec![0.0; MAX_WIRE_VECTOR + 1],
                ..Default::default()
            })),
        };
        assert!(NodeStats::try_from(huge).is_err());
        let nan = pb::Iteration {
            round: 2,
            coefficients: vec![f64::NAN],
            ..Default::default()
        };
        assert!(Iteration::try_from(nan).is_err());
        let zero = pb::Iteration {
            round: 0,
            ..Default::default()
        };
        assert!(Iteration::try_from(zero).is_err());

        use plexus_core::models::gbdt::{
            GbdtRound, GbdtStats, Segments, Slot, SlotStats, Sums, Tree,
        };
        let mut tree = Tree::open_root(2);
        tree.slots[0] = Slot::Split {
            feature: 1,
            threshold: 3,
        };
        tree.slots[1] = Slot::Leaf { value: -0.25 };
        tree.slots[2] = Slot::Open;
        let it = Iteration {
            round: 3,
            gbdt: Some(GbdtRound {
                base_score: Some(-1.5),
                trees: vec![tree.clone()],
                growing: Some(tree),
            }),
            ..Iteration::default()
        };
        assert_eq!(Iteration::try_from(pb::Iteration::from(&it)).unwrap(), it);
        let mut bad = pb::Iteration::from(&it);
        bad.gbdt.as_mut().unwrap().trees[0].kind[0] = 7;
        assert!(Iteration::try_from(bad)
            .unwrap_err()
            .message
            .contains("kind 7"));
        let mut bad = pb::Iteration::from(&it);
        bad.gbdt.as_mut().unwrap().trees[0].value.pop();
        assert!(Iteration::try_from(bad).is_err());
        let stats = NodeStats::Gbdt(GbdtStats {
            n: 40,
            sum_y: 12.0,
            loss: 20.5,
            validation_n: 10,
            validation_loss: 6.25,
            slots: vec![SlotStats {
                slot: 2,
                total: Sums {
                    n: 20,
                    g: 1.5,
                    h: 4.0,
                },
                features: vec![Segments {
                    ends: vec![1, 4],
                    sums: vec![
                        Sums {
                            n: 10,
                            g: 1.0,
                            h: 2.0,
                        },
                        Sums {
                            n: 10,
                            g: 0.5,
                            h: 2.0,
                        },
                    ],
                }],
            }],
        });
        assert_eq!(
            NodeStats::try_from(pb::NodeStats::from(&stats)).unwrap(),
            stats
        );
    }
}
