//! Reading the node's files through DataFusion: existence checks, column
//! lists, and a text view of a table used for consent and opt-out records.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::error::DataFusionError;
use datafusion::prelude::{cast, CsvReadOptions, DataFrame, ParquetReadOptions, SessionContext};
use plexus_core::{Error, Result};

use super::compile::column;
use super::config::DataFormat;

/// Size and modification time of a file: what tells us it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileStamp {
    pub len: u64,
    pub modified_ns: u128,
    /// The inode's change time and number: they move whenever the file is
    /// written, replaced or restored, also by tools that set its
    /// modification time back (`cp -p`, `rsync -a`).
    pub changed_ns: u128,
    pub inode: u64,
}

impl FileStamp {
    /// True when the file was last written long enough ago that a later
    /// write would change its stamp (file times can be coarser than the
    /// time between two writes).
    pub fn settled(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // A later write sets the modification time to its own moment.
        self.modified_ns + 2_000_000_000 < now
    }
}

/// Stats a file the node needs, with an error that names it.
pub(crate) fn stamp(path: &Path, what: &str) -> Result<FileStamp> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::data(format!(
            "{what} {} cannot be read: {e} (check the path in node.toml)",
            path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(Error::data(format!(
            "{what} {} is not a file (give the path of a single .csv or .parquet file)",
            path.display()
        )));
    }
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    #[cfg(unix)]
    let (changed_ns, inode) = {
        use std::os::unix::fs::MetadataExt;
        let ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        (u128::try_from(ns).unwrap_or(0), meta.ino())
    };
    #[cfg(not(unix))]
    let (changed_ns, inode) = (0, 0);
    Ok(FileStamp {
        len: meta.len(),
        modified_ns,
        changed_ns,
        inode,
    })
}

pub(crate) fn path_str<'a>(path: &'a Path, what: &str) -> Result<&'a str> {
    path.to_str().ok_or_else(|| {
        Error::invalid(format!(
            "{what} path {} is not valid UTF-8; rename the file or its folder",
            path.display()
        ))
    })
}

/// The extension DataFusion should accept: exactly the file's own, since
/// it filters listed files by extension.
pub(crate) fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default()
}

pub(crate) fn read_error(what: &str, path: &Path, format: DataFormat, e: DataFusionError) -> Error {
    Error::data(format!(
        "cannot read {what} {} as {format}: {e} (check that the file is a valid {format} file)",
        path.display()
    ))
}

/// Opens a file as a DataFrame; CSV files are read with every column as
/// text, so ids keep their leading zeros and dates are parsed by us.
pub(crate) async fn read_table(
    ctx: &SessionContext,
    path: &Path,
    format: DataFormat,
    what: &str,
) -> Result<DataFrame> {
    let p = path_str(path, what)?;
    let ext = extension(path);
    let err = |e| read_error(what, path, format, e);
    match format {
        DataFormat::Parquet => ctx
            .read_parquet(p, ParquetReadOptions::default().file_extension(&ext))
            .await
            .map_err(err),
        DataFormat::Csv => {
            let header = ctx
                .read_csv(p, csv_options(&ext).schema_infer_max_records(1))
                .await
                .map_err(err)?;
            let text = Schema::new(
                header
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            ctx.read_csv(p, csv_options(&ext).schema(&text))
                .await
                .map_err(err)
        }
    }
}

pub(crate) fn csv_options(ext: &str) -> CsvReadOptions<'_> {
    CsvReadOptions::new().has_header(true).file_extension(ext)
}

/// Column names of a DataFrame, in file order.
pub(crate) fn column_names(df: &DataFrame) -> Vec<String> {
    df.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Checks that `df` (read from `path`) has `wanted` columns and returns
/// them as Utf8 in that order; dates and timestamps become `YYYY-MM-DD`.
pub(crate) fn text_columns(
    df: DataFrame,
    wanted: &[&str],
    what: &str,
    path: &Path,
) -> Result<DataFrame> {
    let names = column_names(&df);
    let mut exprs = Vec::with_capacity(wanted.len());
    for w in wanted {
        let field = df.schema().field_with_unqualified_name(w).map_err(|_| {
            Error::data(format!(
                "{what} {} has no column \"{w}\" (columns: {}; it needs {})",
                path.display(),
                names.join(", "),
                wanted.join(", ")
            ))
        })?;
        let c = column(w);
        let e = match field.data_type() {
            DataType::Date64 | DataType::Timestamp(..) => {
                cast(cast(c, DataType::Date32), DataType::Utf8)
            }
            _ => cast(c, DataType::Utf8),
        };
        exprs.push(e.alias(*w));
    }
    df.select(exprs)
        .map_err(|e| Error::internal(format!("cannot select {what} columns: {e}")))
}
