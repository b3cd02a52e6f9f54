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

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp1, StandardNormal};

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
/// consent, each drawing a fixed number of values per patient.
struct SiteGenerator {
    prefix: String,
    mix: CaseMix,
    total: usize,
    next: usize,
    clinical: StdRng,
    consent: StdRng,
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

        Patient {
            patient_id,
            age,
            sex: if male { "M" } else { "F" }.to_string(),
            bmi: (!bmi_missing).then_some(bmi),
            sbp: (!sbp_missing).then_some(sbp),
            smoking: smoking.to_string(),
            diabetes,
            aaa_diameter: (!diam_missing).then_some(diameter),
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

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - date(1970, 1, 1)).num_days() as i32
}

/// Converts patients to an Arrow batch with the local column names.
pub fn patients_to_batch(patients: &[Patient]) -> Result<RecordBatch> {
    let n = patients.len();
    let mut id = StringBuilder::with_capacity(n, n * 8);
    let mut age = Int64Builder::with_capacity(n);
    let mut sex = StringBuilder::with_capacity(n, n);
    let mut bmi = Float64Builder::with_capacity(n);
    let mut sbp = Float64Builder::with_capacity(n);
    let mut smoking = StringBuilder::with_capacity(n, n * 6);
    let mut diabetes = BooleanBuilder::with_capacity(n);
    let mut diameter = Float64Builder::with_capacity(n);
    let mut inclusion = Date32Builder::with_capacity(n);
    let mut followup = Int64Builder::with_capacity(n);
    let mut died = BooleanBuilder::with_capacity(n);
    for p in patients {
        id.append_value(&p.patient_id);
        age.append_value(p.age);
        sex.append_value(&p.sex);
        bmi.append_option(p.bmi);
        sbp.append_option(p.sbp);
        smoking.append_value(&p.smoking);
        diabetes.append_value(p.diabetes);
        diameter.append_option(p.aaa_diameter);
        inclusion.append_value(days_since_epoch(p.inclusion_date));
        followup.append_value(p.followup_days);
        died.append_value(p.death);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(age.finish()),
        Arc::new(sex.finish()),
        Arc::new(bmi.finish()),
        Arc::new(sbp.finish()),
        Arc::new(smoking.finish()),
        Arc::new(diabetes.finish()),
        Arc::new(diameter.finish()),
        Arc::new(inclusion.finish()),
        Arc::new(followup.finish()),
        Arc::new(died.finish()),
    ];
    Ok(RecordBatch::try_new(patient_schema(), columns)?)
}

enum PatientSink {
    Parquet(ArrowWriter<BufWriter<File>>),
    Csv(csv::Writer<BufWriter<File>>),
}

impl PatientSink {
    fn create(path: &Path, format: DataFormat) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let file = BufWriter::with_capacity(1 << 20, file);
        Ok(match format {
            DataFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build();
                PatientSink::Parquet(ArrowWriter::try_new(file, patient_schema(), Some(props))?)
            }
            DataFormat::Csv => {
                let mut w = csv::Writer::from_writer(file);
                let schema = patient_schema();
                w.write_record(schema.fields().iter().map(|f| f.name().as_str()))?;
                PatientSink::Csv(w)
            }
        })
    }

    /// Writes up to [`BATCH_ROWS`] patients at a time.
    fn write(&mut self, patients: &[Patient]) -> Result<()> {
        match self {
            PatientSink::Parquet(w) => {
                for chunk in patients.chunks(BATCH_ROWS) {
                    w.write(&patients_to_batch(chunk)?)?;
                }
            }
            PatientSink::Csv(w) => {
                for p in patients {
                    write_csv_patient(w, p)?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            PatientSink::Parquet(w) => {
                let mut inner = w.into_inner()?;
                inner.flush()?;
            }
            PatientSink::Csv(mut w) => w.flush()?,
        }
        Ok(())
    }
}

/// Floats always carry a decimal point so that CSV schema inference sees
/// Float64 (not Int64) for `systolic_bp` and whole-number BMIs.
fn fmt_opt_f64(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:.1}"),
        None => String::new(),
    }
}

fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn write_csv_patient<W: Write>(w: &mut csv::Writer<W>, p: &Patient) -> Result<()> {
    w.write_record([
        p.patient_id.as_str(),
        &p.age.to_string(),
        &p.sex,
        &fmt_opt_f64(p.bmi),
        &fmt_opt_f64(p.sbp),
        &p.smoking,
        if p.diabetes { "true" } else { "false" },
        &fmt_opt_f64(p.aaa_diameter),
        &fmt_date(p.inclusion_date),
        &p.followup_days.to_string(),
        if p.death { "true" } else { "false" },
    ])?;
    Ok(())
}

struct SiteWriter {
    paths: SitePaths,
    patients: PatientSink,
    consent: csv::Writer<BufWriter<File>>,
    opt_out: csv::Writer<BufWriter<File>>,
}

impl SiteWriter {
    fn create(dir: &Path, format: DataFormat) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let paths = SitePaths {
            data: dir.join(format!("patients.{}", format.extension())),
            consent: dir.join("consent.csv"),
            opt_out: dir.join("opt_out.csv"),
        };
        let csv_file = |path: &Path| -> Result<csv::Writer<BufWriter<File>>> {
            let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Ok(csv::Writer::from_writer(BufWriter::new(f)))
        };
        let patients = PatientSink::create(&paths.data, format)?;
        let mut consent = csv_file(&paths.consent)?;
        consent.write_record(["patient_id", "purposes", "valid_from", "withdrawn_at"])?;
        let mut opt_out = csv_file(&paths.opt_out)?;
        opt_out.write_record(["patient_id"])?;
        Ok(SiteWriter {
            paths,
            patients,
            consent,
            opt_out,
        })
    }

    fn write_consent(&mut self, c: &ConsentRecord) -> Result<()> {
        self.consent.write_record([
            c.patient_id.as_str(),
            &c.purposes,
            &fmt_date(c.valid_from),
            &c.withdrawn_at.map(fmt_date).unwrap_or_default(),
        ])?;
        Ok(())
    }

    fn write_opt_out(&mut self, id: &str) -> Result<()> {
        self.opt_out.write_record([id])?;
        Ok(())
    }

    fn finish(mut self) -> Result<SitePaths> {
        self.patients
            .finish()
            .with_context(|| format!("writing {}", self.paths.data.display()))?;
        self.consent.flush()?;
        self.opt_out.flush()?;
        Ok(self.paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

    fn spec(name: &str, n: usize, seed: u64) -> SiteSpec {
        SiteSpec {
            name: name.to_string(),
            patients: n,
            seed,
        }
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    fn corr(xs: &[f64], ys: &[f64]) -> f64 {
        let (mx, my) = (mean(xs), mean(ys));
        let mut sxy = 0.0;
        let mut sxx = 0.0;
        let mut syy = 0.0;
        for (x, y) in xs.iter().zip(ys) {
            sxy += (x - mx) * (y - my);
            sxx += (x - mx) * (x - mx);
            syy += (y - my) * (y - my);
        }
        sxy / (sxx * syy).sqrt()
    }

    fn share(ps: &[Patient], f: impl Fn(&Patient) -> bool) -> f64 {
        ps.iter().filter(|p| f(p)).count() as f64 / ps.len() as f64
    }

    /// Kaplan–Meier probability of death by `days`.
    fn km_mortality(ps: &[Patient], days: i64) -> f64 {
        let mut times: Vec<(i64, bool)> = ps.iter().map(|p| (p.followup_days, p.death)).collect();
        times.sort_unstable();
        let mut at_risk = times.len() as f64;
        let mut surv = 1.0;
        let mut i = 0;
        while i < times.len() && times[i].0 <= days {
            let t = times[i].0;
            let (mut d, mut n) = (0.0, 0.0);
            while i < times.len() && times[i].0 == t {
                if times[i].1 {
                    d += 1.0;
                }
                n += 1.0;
                i += 1;
            }
            surv *= 1.0 - d / at_risk;
            at_risk -= n;
        }
        1.0 - surv
    }

    #[test]
    fn synth_is_deterministic() {
        let a = generate_site(&spec("hospital-a", 500, 7));
        let b = generate_site(&spec("hospital-a", 500, 7));
        assert_eq!(a, b);
        let c = generate_site(&spec("hospital-a", 500, 8));
        assert_ne!(a.patients, c.patients);
        assert_eq!(demo_sites(200, 1), demo_sites(200, 1));
        // A longer run starts with the same patients.
        let longer = generate_site(&spec("hospital-a", 800, 7));
        assert_eq!(&longer.patients[..500], &a.patients[..]);
    }

    #[test]
    fn synth_demo_sites_ids_and_mix() {
        let sites = demo_sites(20_000, 42);
        let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, DEMO_SITE_NAMES);
        let mut all = std::collections::HashSet::new();
        for (site, letter) in sites.iter().zip(["A-", "B-", "C-"]) {
            assert_eq!(site.patients.len(), 20_000);
            assert_eq!(site.patients[0].patient_id, format!("{letter}000001"));
            for p in &site.patients {
                assert!(p.patient_id.starts_with(letter));
                assert!(all.insert(p.patient_id.clone()), "duplicate id");
            }
        }
        let mean_age =
            |s: &Site| mean(&s.patients.iter().map(|p| p.age as f64).collect::<Vec<_>>());
        let current = |s: &Site| share(&s.patients, |p| p.smoking == "current");
        assert!(mean_age(&sites[1]) > mean_age(&sites[0]) + 2.0);
        assert!(current(&sites[2]) > current(&sites[0]) + 0.05);
    }

    #[test]
    fn synth_plausible_marginals() {
        let site = generate_site(&spec("hospital-a", 20_000, 2024));
        let ps = &site.patients;
        let ages: Vec<f64> = ps.iter().map(|p| p.age as f64).collect();
        let mean_age = mean(&ages);
        assert!((60.0..75.0).contains(&mean_age), "mean age {mean_age}");
        assert!(ps.iter().all(|p| (40..=95).contains(&p.age)));

        let male = share(ps, |p| p.sex == "M");
        assert!((0.61..0.69).contains(&male), "male {male}");
        assert!(ps.iter().all(|p| p.sex == "M" || p.sex == "F"));

        let death = share(ps, |p| p.death);
        assert!((0.1..0.45).contains(&death), "death share {death}");
        let m5 = km_mortality(ps, 1826);
        assert!((0.18..0.32).contains(&m5), "5-year mortality {m5}");

        let miss_bmi = share(ps, |p| p.bmi.is_none());
        let miss_sbp = share(ps, |p| p.sbp.is_none());
        let miss_diam = share(ps, |p| p.aaa_diameter.is_none());
        assert!((0.02..0.04).contains(&miss_bmi), "bmi missing {miss_bmi}");
        assert!((0.01..0.03).contains(&miss_sbp), "sbp missing {miss_sbp}");
        assert!(
            (0.004..0.02).contains(&miss_diam),
            "diameter missing {miss_diam}"
        );

        let (a, s): (Vec<f64>, Vec<f64>) = ps
            .iter()
            .filter_map(|p| p.sbp.map(|s| (p.age as f64, s)))
            .unzip();
        let r = corr(&a, &s);
        assert!(r > 0.1, "age–sbp correlation {r}");
        assert!(s
            .iter()
            .all(|v| (80.0..=230.0).contains(v) && v.fract() == 0.0));

        let bmis: Vec<f64> = ps.iter().filter_map(|p| p.bmi).collect();
        let mb = mean(&bmis);
        assert!((26.5..28.5).contains(&mb), "bmi mean {mb}");
        assert!(bmis.iter().all(|b| (15.0..=55.0).contains(b)));

        let diams: Vec<f64> = ps.iter().filter_map(|p| p.aaa_diameter).collect();
        let md = mean(&diams);
        assert!((44.0..52.0).contains(&md), "diameter mean {md}");
        let in_range =
            diams.iter().filter(|d| (30.0..=80.0).contains(*d)).count() as f64 / diams.len() as f64;
        assert!(in_range > 0.9, "diameters in 30..80: {in_range}");

        let dm = share(ps, |p| p.diabetes);
        assert!((0.15..0.25).contains(&dm), "diabetes {dm}");
        let never = share(ps, |p| p.smoking == "never");
        let former = share(ps, |p| p.smoking == "former");
        let current = share(ps, |p| p.smoking == "current");
        assert!((0.28..0.42).contains(&never), "never {never}");
        assert!((0.38..0.52).contains(&former), "former {former}");
        assert!((0.15..0.25).contains(&current), "current {current}");

        let end = end_of_followup();
        for p in ps {
            assert!(p.inclusion_date >= first_inclusion() && p.inclusion_date <= last_inclusion());
            assert!(p.followup_days >= 1);
            assert!(p.followup_days <= (end - p.inclusion_date).num_days());
        }
    }

    #[test]
    fn synth_consent_shares() {
        let site = generate_site(&spec("hospital-a", 20_000, 99));
        let n = site.patients.len() as f64;
        let missing = 1.0 - site.consent.len() as f64 / n;
        assert!((0.001..0.012).contains(&missing), "no consent {missing}");
        let opt = site.opt_out.len() as f64 / n;
        assert!((0.005..0.016).contains(&opt), "opt-out {opt}");
        let c = &site.consent;
        let sh =
            |code: &str| c.iter().filter(|r| r.purposes == code).count() as f64 / c.len() as f64;
        assert!((0.67..0.73).contains(&sh("HMB")));
        assert!((0.13..0.17).contains(&sh("GRU")));
        assert!((0.065..0.095).contains(&sh("DS:MONDO:0005160")));
        assert!((0.03..0.05).contains(&sh("HMB;NPU")));
        assert!((0.02..0.04).contains(&sh("DS:MONDO:0004995")));
        let withdrawn: Vec<&ConsentRecord> =
            c.iter().filter(|r| r.withdrawn_at.is_some()).collect();
        let w = withdrawn.len() as f64 / c.len() as f64;
        assert!((0.02..0.04).contains(&w), "withdrawn {w}");
        for r in withdrawn {
            let at = r.withdrawn_at.unwrap();
            assert!(at > r.valid_from && at <= last_withdrawal());
        }
        let by_id: std::collections::HashMap<&str, &Patient> = site
            .patients
            .iter()
            .map(|p| (p.patient_id.as_str(), p))
            .collect();
        for r in c {
            assert_eq!(by_id[r.patient_id.as_str()].inclusion_date, r.valid_from);
        }
        for id in &site.opt_out {
            assert!(by_id.contains_key(id.as_str()));
        }
    }

    #[test]
    fn synth_node_columns_match_schema() {
        let schema = patient_schema();
        let cols = node_columns();
        assert_eq!(cols.len(), 10);
        for (_, local) in cols {
            assert!(schema.field_with_name(local).is_ok(), "{local}");
        }
        assert_eq!(id_prefix("hospital-a"), "A");
        assert_eq!(id_prefix("---"), "S");
    }

    #[tokio::test]
    async fn synth_round_trip_parquet_and_csv() -> Result<()> {
        let site = generate_site(&spec("hospital-b", 70_000, 5));
        let tmp = tempfile::tempdir()?;
        let ctx = SessionContext::new();

        let pq = write_site(&site, &tmp.path().join("pq"), DataFormat::Parquet)?;
        assert!(pq.data.ends_with("patients.parquet"));
        let df = ctx
            .read_parquet(pq.data.to_str().unwrap(), ParquetReadOptions::default())
            .await?;
        assert_eq!(df.schema().as_arrow(), patient_schema().as_ref());
        assert_eq!(df.count().await?, 70_000);

        let csv = write_site(&site, &tmp.path().join("csv"), DataFormat::Csv)?;
        assert!(csv.data.ends_with("patients.csv"));
        let df = ctx
            .read_csv(csv.data.to_str().unwrap(), CsvReadOptions::new())
            .await?;
        // Inferred CSV types match the Parquet schema (nullability aside).
        for (got, want) in df.schema().fields().iter().zip(patient_schema().fields()) {
            assert_eq!(got.name(), want.name());
            assert_eq!(got.data_type(), want.data_type(), "{}", want.name());
        }
        assert_eq!(df.count().await?, 70_000);

        let consent = ctx
            .read_csv(csv.consent.to_str().unwrap(), CsvReadOptions::new())
            .await?;
        assert_eq!(consent.count().await?, site.consent.len());
        let opt = ctx
            .read_csv(csv.opt_out.to_str().unwrap(), CsvReadOptions::new())
            .await?;
        assert_eq!(opt.count().await?, site.opt_out.len());
        let text = fs::read_to_string(&csv.consent)?;
        assert!(text.starts_with("patient_id,purposes,valid_from,withdrawn_at\n"));
        assert!(fs::read_to_string(&csv.opt_out)?.starts_with("patient_id\n"));

        // Streaming generation writes byte-identical CSV files.
        let spec_b = spec("hospital-b", 70_000, 5);
        let streamed = write_generated_site(&spec_b, &tmp.path().join("stream"), DataFormat::Csv)?;
        assert_eq!(fs::read(&streamed.data)?, fs::read(&csv.data)?);
        assert_eq!(fs::read(&streamed.consent)?, fs::read(&csv.consent)?);
        assert_eq!(fs::read(&streamed.opt_out)?, fs::read(&csv.opt_out)?);
        Ok(())
    }
}
