//! Fixtures shared by the data source tests: a synthetic patient table
//! written as Parquet and CSV with mixed-case local column names, consent
//! files, and a row-at-a-time reference built on `plexus_core::eval`.

mod booleans;
mod compute;
mod consent;
mod open;
mod resident;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use plexus_core::eval::Datum;
use plexus_core::{Dictionary, Purpose};

use super::{ConsentConfig, DataConfig, DataSource, Limits};

/// Limits for tests that apply disclosure control themselves.
pub(super) const TEST_LIMITS: Limits = Limits {
    private: false,
    holdout_salt: 0,
    k: 1,
    max_parameter_share: 0.33,
};

pub(super) fn date(s: &str) -> NaiveDate {
    plexus_core::query::parse_date(s).unwrap()
}

pub(super) fn days(d: NaiveDate) -> i32 {
    (d - date("1970-01-01")).num_days() as i32
}

pub(super) fn purpose(code: &str, disease: &str, mods: &[&str]) -> Purpose {
    let mods: Vec<String> = mods.iter().map(|m| m.to_string()).collect();
    Purpose::from_parts(code, disease, &mods).unwrap()
}

/// One synthetic patient; `None` is a missing value.
#[derive(Debug, Clone, Default)]
pub(super) struct Patient {
    pub id: String,
    pub age: Option<i32>,
    pub sex: Option<&'static str>,
    pub bmi: Option<f64>,
    pub sbp: Option<i64>,
    pub smoking: Option<&'static str>,
    pub diabetes: Option<bool>,
    pub included: Option<NaiveDate>,
    pub death: Option<bool>,
}

/// Dictionary variable -> local column of the fixtures (mixed case, one
/// with a space).
pub(super) const MAPPING: [(&str, &str); 8] = [
    ("age", "Age_Years"),
    ("sex", "Sex"),
    ("bmi", "BMI"),
    ("sbp", "SBP mmHg"),
    ("smoking", "Smoking"),
    ("diabetes", "Diabetes"),
    ("inclusion_date", "InclDate"),
    ("death", "Death"),
];
pub(super) const ID: &str = "PatientID";

/// A deterministic pseudo-random table with nulls, edge values and a NaN.
pub(super) fn patients(n: usize) -> Vec<Patient> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    let edges = [39, 40, 50, 59, 60, 79, 80, 81];
    (0..n)
        .map(|i| {
            let null = |r: u64| r == 0;
            Patient {
                id: format!("P{i:04}"),
                age: if i < edges.len() {
                    Some(edges[i])
                } else if null(next(10)) {
                    None
                } else {
                    Some(30 + next(60) as i32)
                },
                sex: (!null(next(12))).then(|| ["F", "M"][next(2) as usize]),
                bmi: match next(15) {
                    _ if i == 17 => Some(f64::NAN),
                    0 => None,
                    1 => Some(30.5),
                    _ => Some(18.0 + next(250) as f64 / 10.0),
                },
                sbp: (!null(next(9))).then(|| 100 + next(80) as i64),
                smoking: (!null(next(8))).then(|| ["never", "former", "current"][next(3) as usize]),
                diabetes: (!null(next(11))).then(|| next(3) == 0),
                included: (!null(next(10)))
                    .then(|| date("2020-01-01") + chrono::Days::new(next(1500))),
                death: (!null(next(13))).then(|| next(4) == 0),
            }
        })
        .collect()
}

impl Patient {
    /// The patient as the reference evaluator sees it; NaN is missing,
    /// as at the node.
    pub fn datum(&self, var: &str) -> Datum {
        let text = |s: Option<&str>| s.map_or(Datum::Null, |s| Datum::Text(s.into()));
        let boolean = |b: Option<bool>| b.map_or(Datum::Null, Datum::Boolean);
        match var {
            "age" => self.age.map_or(Datum::Null, |a| Datum::Integer(a.into())),
            "sex" => text(self.sex),
            "bmi" => self
                .bmi
                .filter(|x| !x.is_nan())
                .map_or(Datum::Null, Datum::Float),
            "sbp" => self.sbp.map_or(Datum::Null, Datum::Integer),
            "smoking" => text(self.smoking),
            "diabetes" => boolean(self.diabetes),
            "inclusion_date" => self.included.map_or(Datum::Null, Datum::Date),
            "death" => boolean(self.death),
            other => panic!("fixture has no {other}"),
        }
    }
}

pub(super) fn batch(rows: &[Patient]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new(ID, DataType::Utf8, false),
        Field::new("Age_Years", DataType::Int32, true),
        Field::new("Sex", DataType::Utf8, true),
        Field::new("BMI", DataType::Float64, true),
        Field::new("SBP mmHg", DataType::Int64, true),
        Field::new("Smoking", DataType::Utf8, true),
        Field::new("Diabetes", DataType::Boolean, true),
        Field::new("InclDate", DataType::Date32, true),
        Field::new("Death", DataType::Boolean, true),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|p| p.id.as_str()),
        )),
        Arc::new(Int32Array::from_iter(rows.iter().map(|p| p.age))),
        Arc::new(StringArray::from_iter(rows.iter().map(|p| p.sex))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|p| p.bmi))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|p| p.sbp))),
        Arc::new(StringArray::from_iter(rows.iter().map(|p| p.smoking))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|p| p.diabetes))),
        Arc::new(Date32Array::from_iter(
            rows.iter().map(|p| p.included.map(days)),
        )),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|p| p.death))),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

pub(super) fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// The same table as CSV; NaN is written as an empty (missing) field.
pub(super) fn write_csv(path: &Path, rows: &[Patient]) {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut out = format!("{ID},{}\n", MAPPING.map(|(_, c)| c).join(","));
    for p in rows {
        let fields = [
            p.id.clone(),
            opt(p.age.map(|a| a.to_string())),
            opt(p.sex.map(str::to_string)),
            opt(p.bmi.filter(|x| !x.is_nan()).map(|x| format!("{x:?}"))),
            opt(p.sbp.map(|a| a.to_string())),
            opt(p.smoking.map(str::to_string)),
            opt(p.diabetes.map(|b| b.to_string())),
            opt(p.included.map(|d| d.to_string())),
            opt(p.death.map(|b| b.to_string())),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// Writes a consent file from `(id, purposes, valid_from, withdrawn_at)`.
pub(super) fn write_consent(path: &Path, rows: &[(&str, &str, &str, &str)]) {
    let mut out = String::from("patient_id,purposes,valid_from,withdrawn_at\n");
    for (id, p, from, until) in rows {
        out.push_str(&format!("{id},{p},{from},{until}\n"));
    }
    std::fs::write(path, out).unwrap();
}

pub(super) fn write_opt_out(path: &Path, ids: &[&str]) {
    std::fs::write(path, format!("patient_id\n{}\n", ids.join("\n"))).unwrap();
}

/// Dates a file an hour back, so the node treats it as settled and keeps
/// what it read from it.
pub(super) fn settle(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
}

/// A temporary node folder with data, consent and opt-out files.
pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub data: DataConfig,
    pub consent: ConsentConfig,
}

impl Fixture {
    pub fn new(data_file: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = DataConfig {
            path: PathBuf::from(data_file),
            format: None,
            patient_id: ID.into(),
            columns: MAPPING
                .iter()
                .map(|(v, c)| (v.to_string(), (*c).into()))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        }
        .resolve(dir.path());
        let consent = ConsentConfig {
            path: "consent.csv".into(),
            opt_out: Some("opt_out.csv".into()),
        }
        .resolve(dir.path());
        write_opt_out(&dir.path().join("opt_out.csv"), &[]);
        Fixture { dir, data, consent }
    }

    /// A fixture holding `rows` as Parquet or CSV, everyone consenting to
    /// GRU except the ids in `without`.
    pub fn with_rows(rows: &[Patient], csv: bool, without: &[&str]) -> Self {
        let f = Fixture::new(if csv {
            "patients.csv"
        } else {
            "patients.parquet"
        });
        if csv {
            write_csv(&f.data.path, rows);
        } else {
            write_parquet(&f.data.path, &batch(rows));
        }
        let consent: Vec<_> = rows
            .iter()
            .filter(|p| !without.contains(&p.id.as_str()))
            .map(|p| (p.id.as_str(), "GRU", "2019-01-01", ""))
            .collect();
        write_consent(&f.consent.path, &consent);
        f
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn open(&self) -> plexus_core::Result<DataSource> {
        DataSource::open(
            &self.data,
            &self.consent,
            Arc::new(Dictionary::cardiovascular()),
        )
        .await
    }

    /// Opens the source with `data.cache_dir` set to `cache_dir`.
    pub async fn open_in(&self, cache_dir: &Path) -> plexus_core::Result<DataSource> {
        let data = DataConfig {
            cache_dir: Some(cache_dir.to_path_buf()),
            ..self.data.clone()
        };
        DataSource::open(&data, &self.consent, Arc::new(Dictionary::cardiovascular())).await
    }
}
