//! The `[data]` and `[consent]` sections of `node.toml`: where the
//! hospital's patient table and consent records live, and which local column
//! holds each dictionary variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plexus_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub use super::booleans::BooleanValues;

/// File formats the embedded data source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Parquet,
    Csv,
}

impl DataFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Parquet => "parquet",
            DataFormat::Csv => "csv",
        }
    }

    /// The format a file's extension names, if it names one.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(DataFormat::Parquet),
            "csv" => Some(DataFormat::Csv),
            _ => None,
        }
    }
}

impl std::fmt::Display for DataFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the node reads its patients from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A Parquet or CSV file (`data.path`), the default.
    #[default]
    Files,
    /// A PostgreSQL warehouse (`[data.postgres]`).
    Postgres,
}

/// `[data]`: the patient table, one row per patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `files` (default) or `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceKind>,
    #[serde(default)]
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Local column holding the patient id that consent records refer to.
    #[serde(default)]
    pub patient_id: String,
    /// Dictionary variable -> local column (and, for a boolean held as
    /// codes, the values that mean true and false).
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnMapping>,
    /// The warehouse, when `source = "postgres"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<super::warehouse::WarehouseConfig>,
    /// MiB of the file's mapped columns the node keeps in memory between
    /// jobs (default [`DEFAULT_MEMORY_MIB`]); a file whose columns take more
    /// is read for every job, and 0 always reads the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Folder where the node keeps the consent records joined to the data
    /// file's rows between runs, so a restart on unchanged files reads
    /// neither the id column nor the consent file: `"cache"` beside the
    /// config when the key is absent, `""` for none. It holds what the
    /// consent file holds per row (terms and dates), no ids; keep it with
    /// the data files, out of off-site backups of `state_dir`.
    #[serde(default = "default_cache_dir", skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

/// `data.cache_dir` when the key is absent.
pub const DEFAULT_CACHE_DIR: &str = "cache";

fn default_cache_dir() -> Option<PathBuf> {
    Some(PathBuf::from(DEFAULT_CACHE_DIR))
}

/// Where one variable is in the patient file: `"column"`, or
/// `{ column = "...", true_values = [...], false_values = [...] }` for a
/// boolean held as codes (see [`BooleanValues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMapping {
    pub column: String,
    pub booleans: Option<BooleanValues>,
}

impl From<&str> for ColumnMapping {
    fn from(column: &str) -> Self {
        ColumnMapping {
            column: column.to_string(),
            booleans: None,
        }
    }
}

impl From<String> for ColumnMapping {
    fn from(column: String) -> Self {
        ColumnMapping {
            column,
            booleans: None,
        }
    }
}

/// The table form of a [`ColumnMapping`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnTable {
    column: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    true_values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    false_values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    missing_values: Vec<String>,
}

impl Serialize for ColumnMapping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match &self.booleans {
            None => s.serialize_str(&self.column),
            Some(b) => ColumnTable {
                column: self.column.clone(),
                true_values: b.true_values.clone(),
                false_values: b.false_values.clone(),
                missing_values: b.missing_values.clone(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ColumnMapping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ColumnMapping;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a column name, or { column = \"...\", true_values = [...], false_values = [...] }",
                )
            }

            fn visit_str<E: serde::de::Error>(
                self,
                column: &str,
            ) -> std::result::Result<ColumnMapping, E> {
                Ok(column.into())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<ColumnMapping, A::Error> {
                let t =
                    ColumnTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ColumnMapping {
                    booleans: BooleanValues::from_keys(
                        &t.true_values,
                        &t.false_values,
                        &t.missing_values,
                    ),
                    column: t.column,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `data.memory_mib` when it is not set: the mapped columns of about a
/// million patients with a dozen variables.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// `[consent]`: consent records (`patient_id, purposes, valid_from,
/// withdrawn_at`) and an optional opt-out list (`patient_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Empty when a warehouse node keeps consent in its database.
    #[serde(default)]
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out: Option<PathBuf>,
}

pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl DataConfig {
    /// `data.memory_mib` in bytes.
    pub fn memory_budget(&self) -> usize {
        let mib = self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        usize::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// Resolves relative paths against `base`, the config file's directory.
    pub fn resolve(&self, base: &Path) -> Self {
        DataConfig {
            path: resolve(base, &self.path),
            postgres: self.postgres.as_ref().map(|p| p.resolve(base)),
            cache_dir: self.cache_dir.as_ref().map(|d| resolve(base, d)),
            ..self.clone()
        }
    }

    /// The folder for the consent join between runs, if any
    /// (`data.cache_dir`, not set to `""`).
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir
            .as_deref()
            .filter(|d| !d.as_os_str().is_empty())
    }

    /// Files unless `source = "postgres"`.
    pub fn source(&self) -> SourceKind {
        self.source.unwrap_or_default()
    }

    /// The configured format, or the one the file's extension names.
    pub fn format(&self) -> Result<DataFormat> {
        match self.format {
            Some(f) => Ok(f),
            None => DataFormat::from_extension(&self.path).ok_or_else(|| {
                Error::invalid(format!(
                    "cannot tell the format of data file {} from its extension; set data.format to \"parquet\" or \"csv\"",
                    self.path.display()
                ))
            }),
        }
    }

    /// Checks what can be checked without reading the data.
    pub fn validate(&self) -> Result<()> {
        if self.source() == SourceKind::Postgres {
            let Some(pg) = &self.postgres else {
                return Err(Error::invalid(
                    "data.source is \"postgres\" but there is no [data.postgres] section; add one (see docs/src/reference/node-toml.md, section A node on a PostgreSQL warehouse)",
                ));
            };
            if !self.path.as_os_str().is_empty()
                || !self.columns.is_empty()
                || !self.patient_id.is_empty()
            {
                return Err(Error::invalid(
                    "data.path, data.patient_id and [data.columns] are for files; a postgres node maps its variables under [data.postgres.person] and [data.postgres.variables]",
                ));
            }
            return pg.validate();
        }
        if self.postgres.is_some() {
            return Err(Error::invalid(
                "[data.postgres] is set but data.source is not \"postgres\"; set data.source = \"postgres\" or remove the section",
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::invalid(
                "data.path is empty; give the patient table's file",
            ));
        }
        self.format()?;
        if self.patient_id.trim().is_empty() {
            return Err(Error::invalid(
                "data.patient_id is empty; name the local column holding the patient id",
            ));
        }
        for (var, c) in &self.columns {
            if c.column.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "data.columns.{var} is empty; name the local column holding \"{var}\" or remove the line"
                )));
            }
            if let Some(b) = &c.booleans {
                b.validate(&format!("data.columns.{var}"))?;
            }
        }
        Ok(())
    }
}

impl DataConfig {
    /// Consent comes from the `[consent]` files, or from the warehouse's
    /// tables when `[data.postgres.consent]` names them (never both).
    pub fn validate_consent(&self, consent: &ConsentConfig) -> Result<()> {
        let in_tables = self.source() == SourceKind::Postgres
            && self.postgres.as_ref().is_some_and(|p| p.consent.is_some());
        match (in_tables, consent.path.as_os_str().is_empty()) {
            (true, true) if consent.opt_out.is_none() => Ok(()),
            (true, _) => Err(Error::invalid(
                "consent is read from [data.postgres.consent] tables and from [consent] files; keep one",
            )),
            (false, true) => Err(Error::invalid(
                "consent.path is missing; give the consent file, or (on a postgres node) name the consent table under [data.postgres.consent]",
            )),
            (false, false) => consent.validate(),
        }
    }
}

impl ConsentConfig {
    /// Resolves relative paths against `base`, the config file's directory.
    pub fn resolve(&self, base: &Path) -> Self {
        ConsentConfig {
            path: resolve(base, &self.path),
            opt_out: self.opt_out.as_deref().map(|p| resolve(base, p)),
        }
    }

    /// Checks that both files have a format we can tell from their extension.
    pub fn validate(&self) -> Result<()> {
        consent_format(&self.path, "consent.path")?;
        if let Some(p) = &self.opt_out {
            consent_format(p, "consent.opt_out")?;
        }
        Ok(())
    }
}

/// Consent and opt-out files have no format setting: the extension decides.
pub(crate) fn consent_format(path: &Path, field: &str) -> Result<DataFormat> {
    DataFormat::from_extension(path).ok_or_else(|| {
        Error::invalid(format!(
            "{field} {} must end in .csv or .parquet so the node knows how to read it",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        #[derive(Deserialize)]
        struct Cfg {
            data: DataConfig,
            consent: ConsentConfig,
        }
        let cfg: Cfg = toml::from_str(
            r#"
            [data]
            path = "data/patients.parquet"
            patient_id = "PatientID"
            [data.columns]
            age = "Age_Years"
            [consent]
            path = "data/consent.csv"
            opt_out = "/abs/opt_out.csv"
            "#,
        )
        .unwrap();
        let d = cfg.data.resolve(Path::new("/etc/plexus"));
        assert_eq!(d.path, Path::new("/etc/plexus/data/patients.parquet"));
        assert_eq!(d.format().unwrap(), DataFormat::Parquet);
        assert_eq!(d.columns["age"], "Age_Years".into());
        d.validate().unwrap();
        let c = cfg.consent.resolve(Path::new("/etc/plexus"));
        assert_eq!(c.path, Path::new("/etc/plexus/data/consent.csv"));
        assert_eq!(c.opt_out.as_deref(), Some(Path::new("/abs/opt_out.csv")));
        c.validate().unwrap();
    }

    #[test]
    fn a_boolean_held_as_codes_declares_its_values() {
        let d: DataConfig = toml::from_str(
            r#"
            path = "p.csv"
            patient_id = "id"
            [columns]
            age = "age_years"
            death = { column = "died", true_values = ["1", "Y"], false_values = ["0", "N"] }
            [columns.diabetes]
            column = "dm"
            true_values = ["yes"]
            false_values = ["no"]
            missing_values = ["unknown"]
            "#,
        )
        .unwrap();
        d.validate().unwrap();
        assert_eq!(d.columns["age"], "age_years".into());
        let death = &d.columns["death"];
        assert_eq!(death.column, "died");
        let b = death.booleans.as_ref().unwrap();
        assert_eq!((b.true_values.len(), b.false_values.len()), (2, 2));
        assert_eq!(
            d.columns["diabetes"]
                .booleans
                .as_ref()
                .unwrap()
                .missing_values,
            ["unknown"]
        );
        // Written back the way it was read.
        let again: DataConfig = toml::from_str(&toml::to_string(&d).unwrap()).unwrap();
        assert_eq!(again, d);

        for (mapping, want) in [
            (
                r#"death = { column = "died", true_values = ["1"], false_values = ["1"] }"#,
                "\"1\" is in both data.columns.death.true_values and data.columns.death.false_values",
            ),
            (
                r#"death = { column = "died", true_values = ["1"] }"#,
                "data.columns.death.false_values is empty",
            ),
            (
                r#"death = { column = "", true_values = ["1"], false_values = ["0"] }"#,
                "data.columns.death is empty",
            ),
        ] {
            let d: DataConfig = toml::from_str(&format!(
                "path = 'p.csv'\npatient_id = 'id'\n[columns]\n{mapping}\n"
            ))
            .unwrap();
            let e = d.validate().unwrap_err();
            assert!(e.message.contains(want), "{want}: {e}");
        }
        let e = toml::from_str::<DataConfig>(
            "path = 'p.csv'\npatient_id = 'id'\n[columns]\ndeath = { column = 'died', true = ['1'] }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `true`"), "{e}");
    }

    #[test]
    fn rejects_unknown_fields_and_unknown_formats() {
        let e = toml::from_str::<DataConfig>("path='a.csv'\npatient_id='id'\ncolour=1\n");
        assert!(e.unwrap_err().to_string().contains("colour"));
        let d: DataConfig = toml::from_str("path='a.txt'\npatient_id='id'\n").unwrap();
        let e = d.validate().unwrap_err();
        assert!(e.message.contains("data.format"), "{e}");
        let d: DataConfig =
            toml::from_str("path='a.txt'\nformat='csv'\npatient_id='id'\n").unwrap();
        assert_eq!(d.format().unwrap(), DataFormat::Csv);
    }
}
