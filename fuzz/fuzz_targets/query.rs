//! A researcher's query text (JSON as `plexus query` reads it, in the tree
//! or the text form of a query request, or TOML) -> `plexus_core::Query` -> validated against the network dictionary and
//! the demo study, as the coordinator does on submission. A query that
//! passes must survive the wire round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::Query;
use plexus_proto::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dict = plexus_fuzz::dictionary();
    let study = plexus_fuzz::study();
    let parsed = [
        Query::from_json(text).ok(),
        Query::from_request(text, dict).ok(),
        toml::from_str::<Query>(text).ok(),
    ];
    for query in parsed.into_iter().flatten() {
        let _ = query.variables();
        let _ = query.hash();
        if query.validate(dict).is_err() {
            continue;
        }
        let _ = study.permits(&query);
        let _ = query.analysis.terms(dict);
        let wire = pb::Query::from(&query);
        let back = Query::try_from(wire).expect("a valid query converts back from the wire");
        assert_eq!(
            back.hash(),
            query.hash(),
            "the wire round trip changed the query"
        );
    }
});
