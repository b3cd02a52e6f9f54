//! A researcher's model formula -> the fields of a glm, cox or
//! kaplan_meier analysis, as the coordinator parses it with the network
//! dictionary. Arbitrary text must be refused with an error, never panic;
//! a GLM formula that parses must print as text that parses back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::models::glm::Family;
use plexus_core::query::syntax::{formula_text, parse_formula, pointer, Outcome};
use plexus_core::{Analysis, AnalysisKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dict = plexus_fuzz::dictionary();
    for kind in [AnalysisKind::Glm, AnalysisKind::Cox, AnalysisKind::KaplanMeier] {
        match parse_formula(text, kind, dict) {
            Err(e) => {
                let _ = pointer(text, &e.message);
            }
            Ok(f) => {
                let Outcome::Variable(outcome) = f.outcome.clone() else {
                    continue;
                };
                let analysis = Analysis::Glm {
                    family: Family::Gaussian,
                    outcome,
                    covariates: f.covariates.clone(),
                    intercept: f.intercept,
                    tolerance: None,
                    max_iterations: None,
                };
                let printed = formula_text(&analysis).expect("a glm has a formula");
                let again = parse_formula(&printed, kind, dict).expect("a printed formula parses");
                assert_eq!(again, f, "printing and parsing changed the formula: {printed}");
            }
        }
    }
});
