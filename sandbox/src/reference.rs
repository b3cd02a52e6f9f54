//! The rows a study sees, for checking Plexus's answers with the tools
//! researchers trust: the union of the consenting patients of every site,
//! as one table (R's `glm`, `survival`, statsmodels, lifelines read it).
//! Synthetic patients only: this exists for the demo network and the tests.

use std::collections::HashSet;
use std::path::Path;

use chrono::NaiveDate;
use plexus_core::{ConsentTerms, Purpose};

use crate::synth::{Patient, Site};

/// Patients of a site whose consent covers `purpose` on `today` and who
/// did not opt out: the population a node may count.
pub fn consenting<'a>(site: &'a Site, purpose: &Purpose, today: NaiveDate) -> Vec<&'a Patient> {
    let ok: HashSet<&str> = site
        .consent
        .iter()
        .filter(|c| c.valid_from <= today && c.withdrawn_at.is_none_or(|w| w > today))
        .filter(|c| {
            ConsentTerms::parse(&c.purposes)
                .expect("valid consent")
                .covers(purpose)
        })
        .map(|c| c.patient_id.as_str())
        .collect();
    let opted_out: HashSet<&str> = site.opt_out.iter().map(String::as_str).collect();
    site.patients
        .iter()
        .filter(|p| {
            ok.contains(p.patient_id.as_str()) && !opted_out.contains(p.patient_id.as_str())
        })
        .collect()
}

/// The columns of [`write_union`]: `site`, then the dictionary's variables.
pub const UNION_COLUMNS: [&str; 13] = [
    "site",
    "age",
    "sex",
    "bmi",
    "sbp",
    "smoking",
    "diabetes",
    "aaa_diameter",
    "hypertension",
    "cholesterol",
    "inclusion_date",
    "followup_days",
    "death",
];

/// Writes the consenting patients of every site as one CSV file, a row a
/// patient: dictionary variable names as columns plus `site`, booleans as
/// `true`/`false`, missing values empty. Returns the number of rows.
pub fn write_union(
    sites: &[Site],
    purpose: &Purpose,
    today: NaiveDate,
    path: &Path,
) -> anyhow::Result<usize> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = csv::Writer::from_path(path)?;
    out.write_record(UNION_COLUMNS)?;
    let number = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
    let mut rows = 0;
    for site in sites {
        for p in consenting(site, purpose, today) {
            out.write_record([
                site.name.clone(),
                p.age.to_string(),
                p.sex.clone(),
                number(p.bmi),
                number(p.sbp),
                p.smoking.clone(),
                p.diabetes.to_string(),
                number(p.aaa_diameter),
                p.hypertension.to_string(),
                number(p.cholesterol),
                p.inclusion_date.to_string(),
                p.followup_days.to_string(),
                p.death.to_string(),
            ])?;
            rows += 1;
        }
    }
    out.flush()?;
    Ok(rows)
}

/// The patients' values as a model's columns, built from the synthetic
/// records independently of any node's code: numbers as they are (missing
/// as NaN), levels as their index in the dictionary's order (false, true
/// for booleans). Every dictionary variable but the dates.
pub fn model_columns(patients: &[&Patient]) -> plexus_core::models::design::Columns {
    use plexus_core::models::design::ColumnData;
    let dict = plexus_core::Dictionary::cardiovascular();
    let num = |f: &dyn Fn(&Patient) -> Option<f64>| {
        ColumnData::Numeric(patients.iter().map(|p| f(p).unwrap_or(f64::NAN)).collect())
    };
    let level = |variable: &str, f: &dyn Fn(&Patient) -> String| {
        let levels = dict.get(variable).expect("a dictionary variable").levels();
        ColumnData::Levels(
            patients
                .iter()
                .map(|p| {
                    let v = f(p);
                    levels
                        .iter()
                        .position(|l| *l == v)
                        .expect("a level of the dictionary") as u32
                })
                .collect(),
        )
    };
    let mut c = plexus_core::models::design::Columns::new();
    c.insert("age".into(), num(&|p| Some(p.age as f64)));
    c.insert("bmi".into(), num(&|p| p.bmi));
    c.insert("sbp".into(), num(&|p| p.sbp));
    c.insert("aaa_diameter".into(), num(&|p| p.aaa_diameter));
    c.insert("cholesterol".into(), num(&|p| p.cholesterol));
    c.insert(
        "followup_days".into(),
        num(&|p| Some(p.followup_days as f64)),
    );
    c.insert("sex".into(), level("sex", &|p| p.sex.clone()));
    c.insert("smoking".into(), level("smoking", &|p| p.smoking.clone()));
    c.insert(
        "diabetes".into(),
        level("diabetes", &|p| p.diabetes.to_string()),
    );
    c.insert(
        "hypertension".into(),
        level("hypertension", &|p| p.hypertension.to_string()),
    );
    c.insert("death".into(), level("death", &|p| p.death.to_string()));
    c
}
