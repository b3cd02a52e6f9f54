//! Consent and opt-out records: which patients a study with a given purpose
//! may count today.
//!
//! The records are re-read whenever their files change, so a withdrawal or
//! an opt-out takes effect on the next query. Errors name the file and the
//! line, never a patient id, and nothing here reports how many patients a
//! purpose leaves out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray, StringBuilder};
use datafusion::arrow::compute::{cast, filter, is_not_null};
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use plexus_core::query::parse_date;
use plexus_core::{ConsentTerms, Error, Purpose, Result};

use super::config::{consent_format, ConsentConfig, DataFormat};
use super::files::{read_error, read_table, stamp, text_columns, FileStamp};

const CONSENT_COLUMNS: [&str; 4] = ["patient_id", "purposes", "valid_from", "withdrawn_at"];
const OPT_OUT_COLUMNS: [&str; 1] = ["patient_id"];

/// Ids of the patients a purpose may count, in the data file's id type.
pub(crate) struct ConsentSets {
    /// Patients with a consent record covering the purpose today.
    pub consenting: ArrayRef,
    /// Patients on the opt-out list; empty when there is none.
    pub opted_out: ArrayRef,
}

#[derive(Clone, PartialEq, Eq)]
struct CacheKey {
    consent: FileStamp,
    opt_out: Option<FileStamp>,
    purpose: String,
    today: NaiveDate,
    id_type: DataType,
}

pub(crate) struct ConsentSource {
    /// One partition, so record batches arrive in file order and errors can
    /// name the line.
    ctx: SessionContext,
    path: PathBuf,
    format: DataFormat,
    opt_out: Option<(PathBuf, DataFormat)>,
    cache: Mutex<Option<(CacheKey, Arc<ConsentSets>)>>,
}

impl ConsentSource {
    /// Checks that the consent (and opt-out) files exist and have the
    /// columns the node needs.
    pub async fn open(cfg: &ConsentConfig) -> Result<Self> {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let format = consent_format(&cfg.path, "consent.path")?;
        let opt_out = match &cfg.opt_out {
            Some(p) => Some((p.clone(), consent_format(p, "consent.opt_out")?)),
            None => None,
        };
        let src = ConsentSource {
            ctx,
            path: cfg.path.clone(),
            format,
            opt_out,
            cache: Mutex::new(None),
        };
        stamp(&src.path, "consent file")?;
        src.records(&src.path, format, "consent file", &CONSENT_COLUMNS)
            .await?;
        if let Some((p, f)) = &src.opt_out {
            stamp(p, "opt-out file")?;
            src.records(p, *f, "opt-out file", &OPT_OUT_COLUMNS).await?;
        }
        Ok(src)
    }

    /// Files whose changes change the answers.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = vec![self.path.as_path()];
        out.extend(self.opt_out.as_ref().map(|(p, _)| p.as_path()));
        out
    }

    async fn records(
        &self,
        path: &Path,
        format: DataFormat,
        what: &str,
        columns: &[&str],
    ) -> Result<datafusion::prelude::DataFrame> {
        let df = read_table(&self.ctx, path, format, what).await?;
        text_columns(df, columns, what, path)
    }

    /// The consenting and opted-out ids for `purpose` on `today`, cast to
    /// `id_type`; cached while the files stay as they are.
    pub async fn sets(
        &self,
        purpose: &Purpose,
        today: NaiveDate,
        id_type: &DataType,
    ) -> Result<Arc<ConsentSets>> {
        let consent = stamp(&self.path, "consent file")?;
        let opt_out = match &self.opt_out {
            Some((p, _)) => Some(stamp(p, "opt-out file")?),
            None => None,
        };
        let key = CacheKey {
            consent,
            opt_out,
            purpose: purpose.to_string(),
            today,
            id_type: id_type.clone(),
        };
        if let Some((k, sets)) = self.cache.lock().expect("cache lock").as_ref() {
            if *k == key {
                return Ok(Arc::clone(sets));
            }
        }
        let consenting = self.consenting(purpose, today).await?;
        let opted_out = match &self.opt_out {
            Some((p, f)) => self.opted_out(p, *f).await?,
            None => StringArray::from(Vec::<&str>::new()),
        };
        let sets = Arc::new(ConsentSets {
            consenting: to_id_type(&consenting, id_type)?,
            opted_out: to_id_type(&opted_out, id_type)?,
        });
        // A file written within the last moments could change again without
        // changing its stamp: keep re-reading it until it has settled.
        if consent.settled() && opt_out.is_none_or(|s| s.settled()) {
            *self.cache.lock().expect("cache lock") = Some((key, Arc::clone(&sets)));
        }
        Ok(sets)
    }

    async fn consenting(&self, purpose: &Purpose, today: NaiveDate) -> Result<StringArray> {
        let what = "consent file";
        let df = self
            .records(&self.path, self.format, what, &CONSENT_COLUMNS)
            .await?;
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| read_error(what, &self.path, self.format, e))?;
        let mut out = StringBuilder::new();
        let mut covers: HashMap<String, bool> = HashMap::new();
        let mut row = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| read_error(what, &self.path, self.format, e))?;
            let [ids, purposes, from, until] =
                [0, 1, 2, 3].map(|i| batch.column(i).as_string::<i32>());
            for i in 0..batch.num_rows() {
                row += 1;
                let bad = |problem: &str| {
                    let at = match self.format {
                        DataFormat::Csv => format!("line {}", row + 1),
                        DataFormat::Parquet => format!("row {row}"),
                    };
                    Error::data(format!(
                        "consent file {} {at}: {problem}; fix the record, queries fail until then",
                        self.path.display()
                    ))
                };
                let id = text(ids, i).ok_or_else(|| bad("patient_id is empty"))?;
                let valid_from = text(from, i)
                    .ok_or_else(|| bad("valid_from is empty"))
                    .and_then(|s| {
                        parse_date(s).ok_or_else(|| bad("valid_from is not a date YYYY-MM-DD"))
                    })?;
                let withdrawn = match text(until, i) {
                    None => None,
                    Some(s) => Some(parse_date(s).ok_or_else(|| {
                        bad("withdrawn_at is not a date YYYY-MM-DD (leave it empty if consent stands)")
                    })?),
                };
                let terms = text(purposes, i).unwrap_or("");
                let covered = match covers.get(terms) {
                    Some(c) => *c,
                    None => {
                        let c = ConsentTerms::parse(terms)
                            .map_err(|e| bad(&e.message))?
                            .covers(purpose);
                        covers.insert(terms.to_string(), c);
                        c
                    }
                };
                let in_force = valid_from <= today && withdrawn.is_none_or(|w| w > today);
                if covered && in_force {
                    out.append_value(id);
                }
            }
        }
        Ok(out.finish())
    }

    async fn opted_out(&self, path: &Path, format: DataFormat) -> Result<StringArray> {
        let what = "opt-out file";
        let df = self.records(path, format, what, &OPT_OUT_COLUMNS).await?;
        let batches = df
            .collect()
            .await
            .map_err(|e| read_error(what, path, format, e))?;
        let mut out = StringBuilder::new();
        for b in &batches {
            let ids = b.column(0).as_string::<i32>();
            (0..b.num_rows())
                .filter_map(|i| text(ids, i))
                .for_each(|id| out.append_value(id));
        }
        Ok(out.finish())
    }
}

/// A non-empty, trimmed text value.
fn text(a: &StringArray, i: usize) -> Option<&str> {
    if a.is_null(i) {
        return None;
    }
    Some(a.value(i).trim()).filter(|s| !s.is_empty())
}

/// Casts ids to the data file's id type; ids that cannot be one (text ids
/// against an integer column) match nobody and are dropped.
fn to_id_type(ids: &StringArray, id_type: &DataType) -> Result<ArrayRef> {
    let cast = cast(ids, id_type)
        .map_err(|e| Error::internal(format!("cannot cast patient ids to {id_type}: {e}")))?;
    if cast.null_count() == 0 {
        return Ok(cast);
    }
    let keep = is_not_null(&cast).map_err(|e| Error::internal(e.to_string()))?;
    filter(&cast, &keep).map_err(|e| Error::internal(e.to_string()))
}
