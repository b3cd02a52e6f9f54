//! What the fuzz targets share: the network dictionary, the example study
//! and the example queries of deploy/, made once per process (rebuilding
//! them for every input would spend the fuzzing time on the same work).
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use plexus_core::{Dictionary, Query, StudyDefinition};

pub fn dictionary() -> &'static Dictionary {
    static D: OnceLock<Dictionary> = OnceLock::new();
    D.get_or_init(Dictionary::cardiovascular)
}

/// deploy/study.toml.
pub fn study() -> &'static StudyDefinition {
    static S: OnceLock<StudyDefinition> = OnceLock::new();
    S.get_or_init(|| {
        StudyDefinition::from_toml(include_str!("../../deploy/study.toml"))
            .expect("deploy/study.toml is a valid study")
    })
}

/// [`SEED_QUERIES`] parsed: the wire targets check decoded statistics
/// against each one's analysis.
pub fn queries() -> &'static [Query] {
    static Q: OnceLock<Vec<Query>> = OnceLock::new();
    Q.get_or_init(|| {
        SEED_QUERIES
            .iter()
            .map(|q| Query::from_json(q).expect("seed query parses"))
            .collect()
    })
}

pub const SEED_QUERIES: &[&str] = &[
    include_str!("../../deploy/queries/correlation.json"),
    include_str!("../../deploy/queries/count.json"),
    include_str!("../../deploy/queries/cox.json"),
    include_str!("../../deploy/queries/glm.json"),
    include_str!("../../deploy/queries/histogram.json"),
    include_str!("../../deploy/queries/kaplan_meier.json"),
    include_str!("../../deploy/queries/quantiles.json"),
    include_str!("../../deploy/queries/summary.json"),
    include_str!("../../deploy/queries/table.json"),
    include_str!("../../deploy/queries/two_by_two.json"),
];
