//! Published data the model tests share.

/// R's `survival::aml` (Miller 1981), maintenance chemotherapy for acute
/// myelogenous leukaemia: (weeks, relapse, group) with group 0 for
/// "Maintained" and 1 for "Nonmaintained".
pub(crate) const AML: [(f64, bool, u32); 23] = [
    (9.0, true, 0),
    (13.0, true, 0),
    (13.0, false, 0),
    (18.0, true, 0),
    (23.0, true, 0),
    (28.0, false, 0),
    (31.0, true, 0),
    (34.0, true, 0),
    (45.0, false, 0),
    (48.0, true, 0),
    (161.0, false, 0),
    (5.0, true, 1),
    (5.0, true, 1),
    (8.0, true, 1),
    (8.0, true, 1),
    (12.0, true, 1),
    (16.0, false, 1),
    (23.0, true, 1),
    (27.0, true, 1),
    (30.0, true, 1),
    (33.0, true, 1),
    (43.0, true, 1),
    (45.0, true, 1),
];
