//! Consent and opt-out records: which patients a study with a given purpose
//! may count today.
//!
//! The records are re-read whenever their files change, so a withdrawal or
//! an opt-out takes effect on the next query. Errors name the file and the
//! line, never a patient id, and nothing here reports how many patients a
//! purpose leaves out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::HashMap;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use plexus_core::query::parse_date;
use plexus_core::{ConsentTerms, Error, Purpose, Result};

use super::config::{consent_format, ConsentConfig, DataFormat};
use super::files::{read_error, read_table, stamp, text_columns, FileStamp};
use super::ids::IdSet;

const CONSENT_COLUMNS: [&str; 4] = ["patient_id", "purposes", "valid_from", "withdrawn_at"];
const OPT_OUT_COLUMNS: [&str; 1] = ["patient_id"];
/// Admitted sets kept at once: one per study purpose in use today, so
/// studies with different purposes do not evict each other.
const CACHED_SETS: usize = 4;

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
    /// Most recently used first.
    cache: Mutex<Vec<(CacheKey, Arc<IdSet>)>>,
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
            cache: Mutex::new(Vec::new()),
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

    /// Ids of the patients whose consent covers `purpose` on `today` and
    /// who have not opted out, in the terms of the data file's id column;
    /// cached while the files stay as they are.
    pub async fn admitted(
        &self,
        purpose: &Purpose,
        today: NaiveDate,
        id_type: &DataType,
    ) -> Result<Arc<IdSet>> {
        let (consent, opt_out) = self.stamps()?;
        let key = CacheKey {
            consent,
            opt_out,
            purpose: purpose.to_string(),
            today,
            id_type: id_type.clone(),
        };
        {
            let mut cache = self.cache.lock().expect("cache lock");
            // sets computed from files that have changed since are useless
            cache.retain(|(k, _)| k.consent == key.consent && k.opt_out == key.opt_out);
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                let hit = cache.remove(i);
                let ids = Arc::clone(&hit.1);
                cache.insert(0, hit);
                return Ok(ids);
            }
        }
        let mut ids = IdSet::for_type(id_type);
        self.consenting(purpose, today, &mut ids).await?;
        self.remove_opted_out(&mut ids).await?;
        let ids = Arc::new(ids);
        // A file written within the last moments could change again without
        // changing its stamp: keep re-reading it until it has settled.
        if consent.settled() && opt_out.is_none_or(|s| s.settled()) {
            let mut cache = self.cache.lock().expect("cache lock");
            cache.retain(|(k, _)| *k != key);
            cache.insert(0, (key, Arc::clone(&ids)));
            cache.truncate(CACHED_SETS);
        }
        Ok(ids)
    }

    async fn consenting(&self, purpose: &Purpose, today: NaiveDate, ids: &mut IdSet) -> Result<()> {
        let mut covers: HashMap<usize, bool> = HashMap::default();
        self.each_record(|r| {
            let covered = match covers.get(&r.terms_index) {
                Some(c) => *c,
                None => {
                    let c = r.terms.covers(purpose);
                    covers.insert(r.terms_index, c);
                    c
                }
            };
            if covered && r.valid_from <= today && r.withdrawn_at.is_none_or(|w| w > today) {
                ids.insert(r.id);
            }
        })
        .await
    }

    /// The stamps of the consent and opt-out files as they are now.
    pub fn stamps(&self) -> Result<(FileStamp, Option<FileStamp>)> {
        let consent = stamp(&self.path, "consent file")?;
        let opt_out = match &self.opt_out {
            Some((p, _)) => Some(stamp(p, "opt-out file")?),
            None => None,
        };
        Ok((consent, opt_out))
    }

    /// Calls `visit` with every consent record, in file order, each read
    /// and checked once: an error names the file and the line.
    pub async fn each_record(&self, mut visit: impl FnMut(Record<'_>)) -> Result<()> {
        let what = "consent file";
        let df = self
            .records(&self.path, self.format, what, &CONSENT_COLUMNS)
            .await?;
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| read_error(what, &self.path, self.format, e))?;
        // Each distinct text of terms parsed once.
        let mut terms: HashMap<String, usize> = HashMap::default();
        let mut parsed: Vec<ConsentTerms> = Vec::new();
        let mut row = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| read_error(what, &self.path, self.format, e))?;
            let [id_col, purposes, from, until] =
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
                let id = text(id_col, i).ok_or_else(|| bad("patient_id is empty"))?;
                let valid_from = text(from, i)
                    .ok_or_else(|| bad("valid_from is empty"))
                    .and_then(|s| {
                        date(s).ok_or_else(|| bad("valid_from is not a date YYYY-MM-DD"))
                    })?;
                let withdrawn_at = match text(until, i) {
                    None => None,
                    Some(s) => Some(date(s).ok_or_else(|| {
                        bad("withdrawn_at is not a date YYYY-MM-DD (leave it empty if consent stands)")
                    })?),
                };
                let t = text(purposes, i).unwrap_or("");
                let terms_index = match terms.get(t) {
                    Some(k) => *k,
                    None => {
                        parsed.push(ConsentTerms::parse(t).map_err(|e| bad(&e.message))?);
                        terms.insert(t.to_string(), parsed.len() - 1);
                        parsed.len() - 1
                    }
                };
                visit(Record {
                    id,
                    terms: &parsed[terms_index],
                    terms_text: t,
                    terms_index,
                    valid_from,
                    withdrawn_at,
                });
            }
        }
        Ok(())
    }

    /// Calls `visit` with every id of the opt-out file, if there is one.
    pub async fn each_opt_out(&self, mut visit: impl FnMut(&str)) -> Result<()> {
        let Some((path, format)) = &self.opt_out else {
            return Ok(());
        };
        let (path, format) = (path.as_path(), *format);
        let what = "opt-out file";
        let df = self.records(path, format, what, &OPT_OUT_COLUMNS).await?;
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| read_error(what, path, format, e))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| read_error(what, path, format, e))?;
            let col = batch.column(0).as_string::<i32>();
            (0..batch.num_rows())
                .filter_map(|i| text(col, i))
                .for_each(&mut visit);
        }
        Ok(())
    }

    async fn remove_opted_out(&self, ids: &mut IdSet) -> Result<()> {
        self.each_opt_out(|id| ids.remove(id)).await
    }
}

/// One consent record, checked.
pub(crate) struct Record<'a> {
    pub id: &'a str,
    pub terms: &'a ConsentTerms,
    /// The text `terms` was parsed from.
    pub terms_text: &'a str,
    /// The same for records with the same text of terms, counting from 0
    /// in order of first appearance.
    pub terms_index: usize,
    pub valid_from: NaiveDate,
    pub withdrawn_at: Option<NaiveDate>,
}

/// Parses a date, taking the common `YYYY-MM-DD` shape without the
/// general parser: a million consent rows hold two dates each.
fn date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        if let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10)) {
            return NaiveDate::from_ymd_opt(y as i32, m, d);
        }
    }
    parse_date(s)
}

/// A non-empty, trimmed text value.
fn text(a: &StringArray, i: usize) -> Option<&str> {
    if a.is_null(i) {
        return None;
    }
    Some(a.value(i).trim()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_dates_agree_with_the_general_parser() {
        for s in [
            "2024-06-01",
            "2024-02-29",
            "2023-02-29",
            "2020-13-01",
            "2020-00-10",
            "0000-01-01",
            "2020-1-5",
            "2020-01-5",
            "20a0-01-01",
            "2020/01/01",
            "",
            "2020-01-01x",
            "+202-01-01",
        ] {
            assert_eq!(date(s), parse_date(s), "{s:?}");
        }
    }
}
