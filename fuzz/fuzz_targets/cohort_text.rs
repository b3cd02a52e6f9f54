//! A researcher's `"where"` text -> `plexus_core::Cohort`, as the
//! coordinator parses it with the network dictionary. Arbitrary text must
//! be refused with an error, never panic; a cohort that parses and
//! validates must print as text that parses back to the same canonical
//! query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::query::syntax::{cohort_text, parse_cohort, pointer};
use plexus_core::{Analysis, Query};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dict = plexus_fuzz::dictionary();
    let cohort = match parse_cohort(text, dict) {
        Ok(c) => c,
        Err(e) => {
            let _ = pointer(text, &e.message);
            return;
        }
    };
    let query = Query {
        cohort: Some(cohort.clone()),
        analysis: Analysis::Count {},
        by_site: false,
        rho: None,
    };
    if query.validate(dict).is_err() {
        return;
    }
    let printed = cohort_text(&cohort);
    let again = parse_cohort(&printed, dict).expect("a printed cohort parses");
    let again = Query {
        cohort: Some(again),
        ..query.clone()
    };
    assert_eq!(
        again.canonical_hash(dict).expect("canonical form"),
        query.canonical_hash(dict).expect("canonical form"),
        "printing and parsing changed the cohort: {printed}"
    );
});
