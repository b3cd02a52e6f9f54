//! Deterministic synthetic cardiovascular cohorts: three hospitals of a
//! vascular (abdominal aortic aneurysm) registry, for the demo, the tests and
//! the benchmarks.
//!
//! Everything is drawn from [`StdRng::seed_from_u64`] streams, so the same
//! [`SiteSpec`] always yields the same patients, consent records and opt-out
//! list. Patients are produced one at a time by an internal generator, which
//! lets [`write_generated_site`] stream millions of patients to disk without
//! holding them in memory; [`generate_site`] simply collects the same stream.
//!
//! The case mix is chosen from the site name: `hospital-b` is older,
//! `hospital-c` smokes more, every other name uses the `hospital-a` mix.
//!
//! The patient file deliberately uses *local* column names that differ from
//! the data dictionary (see [`node_columns`]) so that the node's column
//! mapping is exercised.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use chrono::NaiveDate;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};

#[cfg(test)]
mod tests;
pub mod warehouse;
mod write;

pub use write::patients_to_batch;
use write::SiteWriter;

/// One registry patient, with the data dictionary's variable names.
#[derive(Debug, Clone, PartialEq)]
pub struct Patient {
    /// Site letter + zero-padded 1-based index, e.g. `A-000123`.
    pub patient_id: String,
    /// Age at inclusion, integer years in 40..=95.
    pub age: i64,
    /// `"F"` or `"M"`.
    pub sex: String,
    /// Body-mass index, kg/m², rounded to 0.1; `None` when missing.
    pub bmi: Option<f64>,
    /// Systolic blood pressure, mmHg, integer-valued; `None` when missing.
    pub sbp: Option<f64>,
    /// `"never"`, `"former"` or `"current"`.
    pub smoking: String,
    pub diabetes: bool,
    /// Maximal abdominal aortic diameter, mm, rounded to 0.1; `None` when missing.
    pub aaa_diameter: Option<f64>,
    /// Diagnosed or treated hypertension (more likely with higher blood pressure).
    pub hypertension: bool,
    /// Total cholesterol, mmol/L, rounded to 0.1; `None` when missing.
    pub cholesterol: Option<f64>,
    pub inclusion_date: NaiveDate,
    /// Days from inclusion to death or censoring, ≥ 1, never past 2024-12-31.
    pub followup_days: i64,
    pub death: bool,
}

/// One consent record (at most one per patient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    pub patient_id: String,
    /// DUO codes separated by `;`, e.g. `HMB;NPU`.
    pub purposes: String,
    pub valid_from: NaiveDate,
    pub withdrawn_at: Option<NaiveDate>,
}

/// A hospital's synthetic data: patients, consent records, opt-out list.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: String,
    pub patients: Vec<Patient>,
    pub consent: Vec<ConsentRecord>,
    /// Patient ids that opted out of secondary use.
    pub opt_out: Vec<String>,
}

/// What to generate: the site name (drives id prefix and case mix), the
/// number of patients and the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub name: String,
    pub patients: usize,
    pub seed: u64,
}

/// Format of the patient file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Parquet,
    Csv,
}

impl DataFormat {
    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            DataFormat::Parquet => "parquet",
            DataFormat::Csv => "csv",
        }
    }
}

/// The files written by [`write_site`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePaths {
    /// `patients.parquet` or `patients.csv`.
    pub data: PathBuf,
    /// `consent.csv`.
    pub consent: PathBuf,
    /// `opt_out.csv`.
    pub opt_out: PathBuf,
}

/// Rows per Arrow record batch (and per CSV flush unit).
pub const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 4 * BATCH_ROWS;

/// The names of the three demo hospitals.
pub const DEMO_SITE_NAMES: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// (dictionary variable, local column) mapping for the synthetic patient file.
pub fn node_columns() -> Vec<(&'static str, &'static str)> {
    vec![
        ("age", "age_years"),
        ("sex", "sex"),
        ("bmi", "bmi"),
        ("sbp", "systolic_bp"),
        ("smoking", "smoking_status"),
        ("diabetes", "diabetes"),
        ("aaa_diameter", "aaa_max_diameter_mm"),
        ("hypertension", "htn"),
        ("cholesterol", "chol_total_mmol"),
        ("inclusion_date", "inclusion_date"),
        ("followup_days", "followup_days"),
        ("death", "died"),
    ]
}

/// Arrow schema of the patient file (local column names).
pub fn patient_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("age_years", DataType::Int64, false),
        Field::new("sex", DataType::Utf8, false),
        Field::new("bmi", DataType::Float64, true),
        Field::new("systolic_bp", DataType::Float64, true),
        Field::new("smoking_status", DataType::Utf8, false),
        Field::new("diabetes", DataType::Boolean, false),
        Field::new("aaa_max_diameter_mm", DataType::Float64, true),
        Field::new("htn", DataType::Boolean, false),
        Field::new("chol_total_mmol", DataType::Float64, true),
        Field::new("inclusion_date", DataType::Date32, false),
        Field::new("followup_days", DataType::Int64, false),
        Field::new("died", DataType::Boolean, false),
    ]))
}

/// Generates one site entirely in memory.
pub fn generate_site(spec: &SiteSpec) -> Site {
    let mut patients = Vec::with_capacity(spec.patients);
    let mut consent = Vec::with_capacity(spec.patients);
    let mut opt_out = Vec::new();
    for g in SiteGenerator::new(spec) {
        if g.opted_out {
            opt_out.push(g.patient.patient_id.clone());
        }
        if let Some(c) = g.consent {
            consent.push(c);
        }
        patients.push(g.patient);
    }
    Site {
        name: spec.name.clone(),
        patients,
        consent,
        opt_out,
    }
}

/// The three demo hospitals (`hospital-a`, `-b`, `-c`; ids `A-…`, `B-…`,
/// `C-…`), each with `patients_per_site` patients and its own seed derived
/// from `seed`.
pub fn demo_sites(patients_per_site: usize, seed: u64) -> Vec<Site> {
    demo_specs(patients_per_site, seed)
        .iter()
        .map(generate_site)
        .collect()
}

/// The specs behind [`demo_sites`], e.g. for [`write_generated_site`].
pub fn demo_specs(patients_per_site: usize, seed: u64) -> Vec<SiteSpec> {
    DEMO_SITE_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| SiteSpec {
            name: (*name).to_string(),
            patients: patients_per_site,
            seed: splitmix64(seed ^ splitmix64(i as u64 + 1)),
        })
        .collect()
}

/// Writes `site` into `dir` (created if needed): the patient file in
/// `format`, `consent.csv` and `opt_out.csv`.
pub fn write_site(site: &Site, dir: &Path, format: DataFormat) -> Result<SitePaths> {
    let mut out = SiteWriter::create(dir, format)?;
    for chunk in site.patients.chunks(BATCH_ROWS) {
        out.patients.write(chunk)?;
    }
    for c in &site.consent {
        out.write_consent(c)?;
    }
    for id in &site.opt_out {
        out.write_opt_out(id)?;
    }
    out.finish()
}

/// Generates `spec` and writes it to `dir` chunk by chunk, without holding
/// the whole site in memory. Produces exactly the files
/// `write_site(&generate_site(spec), dir, format)` would.
pub fn write_generated_site(spec: &SiteSpec, dir: &Path, format: DataFormat) -> Result<SitePaths> {
    let mut out = SiteWriter::create(dir, format)?;
    let mut chunk = Vec::with_capacity(BATCH_ROWS.min(spec.patients));
    // Consent and opt-out rows are buffered per chunk so each file keeps
    // patient order, exactly like `write_site`.
    let mut consent = Vec::with_capacity(BATCH_ROWS.min(spec.patients));
    let mut opt_out = Vec::new();
    let mut generator = SiteGenerator::new(spec).peekable();
    while generator.peek().is_some() {
        chunk.clear();
        for g in generator.by_ref().take(BATCH_ROWS) {
            if g.opted_out {
                opt_out.push(g.patient.patient_id.clone());
            }
            if let Some(c) = g.consent {
                consent.push(c);
            }
            chunk.push(g.patient);
        }
        out.patients.write(&chunk)?;
        for c in consent.drain(..) {
            out.write_consent(&c)?;
        }
    }
    for id in &opt_out {
        out.write_opt_out(id)?;
    }
    out.finish()
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid constant date")
}

fn first_inclusion() -> NaiveDate {
    date(2012, 1, 1)
}
fn last_inclusion() -> NaiveDate {
    date(2021, 12, 31)
}
fn end_of_followup() -> NaiveDate {
    date(2024, 12, 31)
}
fn last_withdrawal() -> NaiveDate {
    date(2024, 6, 30)
}

/// Per-site differences in who is referred to the registry.
#[derive(Debug, Clone, Copy)]
struct CaseMix {
    age_mean: f64,
    age_sd: f64,
    male_share: f64,
    /// Multiplies the weight of "current" smoking.
    current_smoking: f64,
    /// Added to the diabetes log-odds.
    diabetes_shift: f64,
}

fn case_mix(name: &str) -> CaseMix {
    let base = CaseMix {
        age_mean: 69.0,
        age_sd: 8.5,
        male_share: 0.65,
        current_smoking: 1.0,
        diabetes_shift: 0.0,
    };
    match name {
        "hospital-b" => CaseMix {
            age_mean: 73.0,
            male_share: 0.62,
            current_smoking: 0.8,
            diabetes_shift: 0.15,
            ..base
        },
        "hospital-c" => CaseMix {
            age_mean: 67.0,
            male_share: 0.68,
            current_smoking: 1.6,
            ..base
        },
        _ => base,
    }
}

/// Id prefix: the upper-cased last `-`-separated part of the name, so
/// `hospital-a` → `A`; `S` if nothing alphanumeric is left.
fn id_prefix(name: &str) -> String {
    let last = name.rsplit('-').next().unwrap_or("");
    let p: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if p.is_empty() {
        "S".to_string()
    } else {
        p
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

// Survival model: Weibull proportional hazards, time in years.
const WEIBULL_SHAPE: f64 = 1.2;
/// Scale chosen so that 5-year mortality is ≈ 25% over the case mix.
const WEIBULL_SCALE: f64 = 15.0;
/// Mean linear predictor of the case mix, subtracted for centring.
const LP_CENTRE: f64 = 0.33;
/// Loss to follow-up, per year.
const LOSS_RATE: f64 = 0.02;
const DAYS_PER_YEAR: f64 = 365.25;

struct Generated {
    patient: Patient,
    consent: Option<ConsentRecord>,
    opted_out: bool,
}

/// Sequential generator: one RNG stream for the clinical data, one for
/// consent and one for the variables added later (so adding them changed
/// nothing else), each drawing a fixed number of values per patient.
struct SiteGenerator {
    prefix: String,
    mix: CaseMix,
    total: usize,
    next: usize,
    clinical: StdRng,
    consent: StdRng,
    extra: StdRng,
    inclusion_span: i64,
}

impl SiteGenerator {
    fn new(spec: &SiteSpec) -> Self {
        SiteGenerator {
            prefix: id_prefix(&spec.name),
            mix: case_mix(&spec.name),
            total: spec.patients,
            next: 0,
            clinical: StdRng::seed_from_u64(spec.seed),
            consent: StdRng::seed_from_u64(splitmix64(spec.seed ^ 0xC0_75E7_u64)),
            extra: StdRng::seed_from_u64(splitmix64(spec.seed ^ 0xE7_7A_u64)),
            inclusion_span: (last_inclusion() - first_inclusion()).num_days(),
        }
    }

    fn patient(&mut self, patient_id: String) -> Patient {
        let mix = self.mix;
        let rng = &mut self.clinical;
        let mut z = || -> f64 { StandardNormal.sample(rng) };
        let z_age = z();
        let z_bmi = z();
        let z_sbp = z();
        let z_diam = z();
        let rng = &mut self.clinical;

        let age = (mix.age_mean + mix.age_sd * z_age)
            .round()
            .clamp(40.0, 95.0) as i64;
        let agef = age as f64;
        let male = rng.random_bool(mix.male_share);

        let bmi = round1((27.5 + 4.5 * z_bmi).clamp(15.0, 55.0));
        let sbp = (110.0 + 0.5 * agef + 1.2 * (bmi - 27.0) + 15.0 * z_sbp)
            .clamp(80.0, 230.0)
            .round();

        // Smoking: younger patients and men smoke more; women more often never did.
        let w_never = 0.35 * if male { 0.8 } else { 1.4 };
        let w_former = 0.45;
        let w_current = 0.20
            * mix.current_smoking
            * (-0.03 * (agef - 70.0)).exp()
            * if male { 1.15 } else { 0.75 };
        let u = rng.random::<f64>() * (w_never + w_former + w_current);
        let smoking = if u < w_never {
            "never"
        } else if u < w_never + w_former {
            "former"
        } else {
            "current"
        };

        let p_dm =
            logistic(-1.45 + 0.09 * (bmi - 27.5) + 0.01 * (agef - 70.0) + mix.diabetes_shift);
        let diabetes = rng.random_bool(p_dm);

        let smoke_mm = match smoking {
            "current" => 4.0,
            "former" => 2.0,
            _ => 0.0,
        };
        let diameter = round1(
            (44.0 + if male { 3.0 } else { 0.0 } + 0.15 * (agef - 70.0) + smoke_mm + 9.0 * z_diam)
                .clamp(20.0, 110.0),
        );

        let inclusion_date =
            first_inclusion() + chrono::Days::new(rng.random_range(0..=self.inclusion_span) as u64);

        // Survival.
        let smoke_lp = match smoking {
            "current" => 0.55,
            "former" => 0.2,
            _ => 0.0,
        };
        let lp = 0.065 * (agef - 70.0)
            + 0.025 * (diameter - 48.0)
            + smoke_lp
            + if diabetes { 0.4 } else { 0.0 }
            + if male { 0.15 } else { 0.0 }
            - LP_CENTRE;
        let e_death: f64 = Exp1.sample(rng);
        let e_loss: f64 = Exp1.sample(rng);
        let t_death = WEIBULL_SCALE * (e_death / lp.exp()).powf(1.0 / WEIBULL_SHAPE);
        let death_days = ((t_death * DAYS_PER_YEAR).ceil() as i64).max(1);
        let loss_days = ((e_loss / LOSS_RATE * DAYS_PER_YEAR).ceil() as i64).max(1);
        let admin_days = (end_of_followup() - inclusion_date).num_days();
        let censor_days = admin_days.min(loss_days);
        let (followup_days, death) = if death_days <= censor_days {
            (death_days, true)
        } else {
            (censor_days, false)
        };

        // Missingness (always drawn, to keep the stream aligned).
        let bmi_missing = rng.random_bool(0.03);
        let sbp_missing = rng.random_bool(0.02);
        let diam_missing = rng.random_bool(0.01);

        // Variables of the extra stream.
        let rng = &mut self.extra;
        let hypertension = rng.random_bool(logistic(-0.4 + 0.06 * (sbp - 140.0)));
        let z_chol: f64 = StandardNormal.sample(rng);
        let cholesterol = round1((5.2 + 1.0 * z_chol).clamp(2.5, 10.0));
        let chol_missing = rng.random_bool(0.02);

        Patient {
            patient_id,
            age,
            sex: if male { "M" } else { "F" }.to_string(),
            bmi: (!bmi_missing).then_some(bmi),
            sbp: (!sbp_missing).then_some(sbp),
            smoking: smoking.to_string(),
            diabetes,
            aaa_diameter: (!diam_missing).then_some(diameter),
            hypertension,
            cholesterol: (!chol_missing).then_some(cholesterol),
            inclusion_date,
            followup_days,
            death,
        }
    }

    fn consent(&mut self, patient: &Patient) -> (Option<ConsentRecord>, bool) {
        let rng = &mut self.consent;
        let no_record = rng.random_bool(0.005);
        let u = rng.random::<f64>();
        let withdrawn = rng.random_bool(0.03);
        let valid_from = patient.inclusion_date;
        let span = (last_withdrawal() - valid_from).num_days().max(1);
        let offset = rng.random_range(1..=span);
        let opted_out = rng.random_bool(0.01);

        let purposes = if u < 0.70 {
            "HMB"
        } else if u < 0.85 {
            "GRU"
        } else if u < 0.93 {
            "DS:MONDO:0005160"
        } else if u < 0.97 {
            "HMB;NPU"
        } else {
            "DS:MONDO:0004995"
        };
        let record = (!no_record).then(|| ConsentRecord {
            patient_id: patient.patient_id.clone(),
            purposes: purposes.to_string(),
            valid_from,
            withdrawn_at: withdrawn.then(|| valid_from + chrono::Days::new(offset as u64)),
        });
        (record, opted_out)
    }
}

impl Iterator for SiteGenerator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if self.next >= self.total {
            return None;
        }
        self.next += 1;
        let id = format!("{}-{:06}", self.prefix, self.next);
        let patient = self.patient(id);
        let (consent, opted_out) = self.consent(&patient);
        Some(Generated {
            patient,
            consent,
            opted_out,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.next;
        (left, Some(left))
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------
