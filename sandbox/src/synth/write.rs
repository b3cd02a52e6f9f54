//! Writing synthetic sites to Parquet or CSV, batch by batch.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::*;
pub(super) fn days_since_epoch(d: NaiveDate) -> i32 {
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
    let mut hypertension = BooleanBuilder::with_capacity(n);
    let mut cholesterol = Float64Builder::with_capacity(n);
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
        hypertension.append_value(p.hypertension);
        cholesterol.append_option(p.cholesterol);
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
        Arc::new(hypertension.finish()),
        Arc::new(cholesterol.finish()),
        Arc::new(inclusion.finish()),
        Arc::new(followup.finish()),
        Arc::new(died.finish()),
    ];
    Ok(RecordBatch::try_new(patient_schema(), columns)?)
}

pub(super) enum PatientSink {
    Parquet(ArrowWriter<BufWriter<File>>),
    Csv(csv::Writer<BufWriter<File>>),
}

impl PatientSink {
    pub(super) fn create(path: &Path, format: DataFormat) -> Result<Self> {
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
    pub(super) fn write(&mut self, patients: &[Patient]) -> Result<()> {
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

    pub(super) fn finish(self) -> Result<()> {
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
pub(super) fn fmt_opt_f64(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:.1}"),
        None => String::new(),
    }
}

pub(super) fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub(super) fn write_csv_patient<W: Write>(w: &mut csv::Writer<W>, p: &Patient) -> Result<()> {
    w.write_record([
        p.patient_id.as_str(),
        &p.age.to_string(),
        &p.sex,
        &fmt_opt_f64(p.bmi),
        &fmt_opt_f64(p.sbp),
        &p.smoking,
        if p.diabetes { "true" } else { "false" },
        &fmt_opt_f64(p.aaa_diameter),
        if p.hypertension { "true" } else { "false" },
        &fmt_opt_f64(p.cholesterol),
        &fmt_date(p.inclusion_date),
        &p.followup_days.to_string(),
        if p.death { "true" } else { "false" },
    ])?;
    Ok(())
}

pub(super) struct SiteWriter {
    pub(super) paths: SitePaths,
    pub(super) patients: PatientSink,
    pub(super) consent: csv::Writer<BufWriter<File>>,
    pub(super) opt_out: csv::Writer<BufWriter<File>>,
}

impl SiteWriter {
    pub(super) fn create(dir: &Path, format: DataFormat) -> Result<Self> {
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

    pub(super) fn write_consent(&mut self, c: &ConsentRecord) -> Result<()> {
        self.consent.write_record([
            c.patient_id.as_str(),
            &c.purposes,
            &fmt_date(c.valid_from),
            &c.withdrawn_at.map(fmt_date).unwrap_or_default(),
        ])?;
        Ok(())
    }

    pub(super) fn write_opt_out(&mut self, id: &str) -> Result<()> {
        self.opt_out.write_record([id])?;
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<SitePaths> {
        self.patients
            .finish()
            .with_context(|| format!("writing {}", self.paths.data.display()))?;
        self.consent.flush()?;
        self.opt_out.flush()?;
        Ok(self.paths)
    }
}
