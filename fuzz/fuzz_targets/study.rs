//! Study and dictionary text -> `StudyDefinition` / `Dictionary`, validated
//! as `plexus study register` and the daemons do; a valid study must also
//! survive the wire round trip (Admin.RegisterStudy) with the same hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::{Dictionary, StudyDefinition};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dict = plexus_fuzz::dictionary();
    if let Ok(study) = StudyDefinition::from_toml(text) {
        let hash = study.definition_hash();
        if study.validate(dict).is_ok() {
            let _ = study.purpose();
            let wire = plexus_proto::convert::study_to_pb(&study, 0);
            let back =
                StudyDefinition::try_from(wire).expect("a valid study converts back from the wire");
            assert_eq!(
                back.definition_hash(),
                hash,
                "the wire round trip changed the study"
            );
        }
    }
    if let Ok(d) = Dictionary::from_toml(text) {
        let _ = d.validate();
        let _ = d.fingerprint();
    }
});
