//! `[data.postgres]`: how a node reaches the hospital's PostgreSQL clinical
//! data warehouse and where each dictionary variable lives in it (an
//! OMOP-style person table plus event tables such as `measurement` or
//! `condition_occurrence`).
//!
//! Nothing here reaches SQL text: every table and column named is looked up
//! in the database catalogue at start-up, and only the catalogue's own
//! quoted spelling of names found there is ever used (see `catalog.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plexus_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::super::booleans::BooleanValues;

fn default_pool_size() -> u32 {
    4
}
fn default_statement_timeout_ms() -> u64 {
    60_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_schema() -> String {
    "public".into()
}
fn default_person_column() -> String {
    "person_id".into()
}

/// TLS to the database (the libpq names). `verify-full` checks the
/// server's certificate and name against `ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// `[data.postgres]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// `postgres://user@host:port/db`; better without the password, which
    /// can come from `password_file` or `password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file (mode 0600, owned by the node's user) holding the whole URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// A file holding only the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding only the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Longest a statement may run before the database cancels it.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Longest the node waits for a connection from the pool.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<SslMode>,
    /// CA certificate (PEM) the database's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Schema of every table named below.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Refuse to start when the connected role may write to a mapped table
    /// (by default the node warns: its own transactions are read only).
    #[serde(default)]
    pub refuse_writable_role: bool,
    /// A read-only query whose first row (as text) identifies the data's
    /// version; by default the node hashes the tables' change counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_query: Option<String>,
    pub person: PersonTable,
    /// Dictionary variable -> where it comes from.
    #[serde(default)]
    pub variables: BTreeMap<String, VariableSource>,
    /// Consent and opt-out tables in the same database; when absent the
    /// `[consent]` files are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentTables>,
}

/// The table with one row per patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonTable {
    pub table: String,
    /// The patient id column that consent records and event tables refer to.
    #[serde(default = "default_person_column")]
    pub id: String,
}

/// Which of a patient's event rows gives the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pick {
    #[default]
    Latest,
    First,
}

/// Where one variable comes from: a `column` of the person table, or an
/// event `table` joined on the person id, optionally restricted to one
/// concept; with a `value` column the latest (or first) non-missing value
/// by `date_column`, without one `true` when the patient has such a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VariableSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default = "default_person_column")]
    pub person_column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_column: Option<String>,
    #[serde(default)]
    pub pick: Pick,
    /// A boolean held as codes (a text or integer column or value): the
    /// values that mean true, false and missing (see `data::booleans`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub true_values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub false_values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_values: Vec<String>,
}

/// Consent (`patient_id, purposes, valid_from, withdrawn_at`) and opt-out
/// (`patient_id`) tables, with the columns of the consent files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentTables {
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_table: Option<String>,
}

/// A name from the config that will be looked up in the catalogue: no
/// control characters (NUL cannot even be sent), not empty, not absurdly long.
fn check_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} = {name:?} is not a table or column name (1 to 63 characters, no control characters); give the name exactly as the database spells it"
        )));
    }
    Ok(())
}

impl WarehouseConfig {
    /// Resolves relative paths against `base`, the config file's directory.
    pub fn resolve(&self, base: &Path) -> Self {
        let r = |p: &Option<PathBuf>| p.as_ref().map(|p| super::super::config::resolve(base, p));
        WarehouseConfig {
            url_file: r(&self.url_file),
            password_file: r(&self.password_file),
            ca: r(&self.ca),
            ..self.clone()
        }
    }

    /// Checks what can be checked without the database.
    pub fn validate(&self) -> Result<()> {
        let f = "data.postgres";
        match (&self.url, &self.url_file) {
            (None, None) => {
                return Err(Error::invalid(format!(
                    "{f}.url (or {f}.url_file) is missing; give the warehouse's postgres://user@host:port/database"
                )))
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "{f}.url and {f}.url_file are both set; keep one"
                )))
            }
            _ => {}
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(Error::invalid(format!(
                "{f}.password_file and {f}.password_env are both set; keep one"
            )));
        }
        if self.pool_size == 0 || self.pool_size > 1000 {
            return Err(Error::invalid(format!(
                "{f}.pool_size must be between 1 and 1000"
            )));
        }
        if self.statement_timeout_ms == 0 {
            return Err(Error::invalid(format!(
                "{f}.statement_timeout_ms must be above 0 (a statement without a time limit could hold the warehouse)"
            )));
        }
        if self.ca.is_some() && matches!(self.sslmode, None | Some(SslMode::Disable)) {
            return Err(Error::invalid(format!(
                "{f}.ca is set but {f}.sslmode is not; set sslmode = \"verify-full\""
            )));
        }
        if self
            .snapshot_query
            .as_deref()
            .is_some_and(|q| q.trim().is_empty())
        {
            return Err(Error::invalid(format!(
                "{f}.snapshot_query is empty; remove it or give a query"
            )));
        }
        check_name(&format!("{f}.schema"), &self.schema)?;
        check_name(&format!("{f}.person.table"), &self.person.table)?;
        check_name(&format!("{f}.person.id"), &self.person.id)?;
        if let Some(c) = &self.consent {
            check_name(&format!("{f}.consent.table"), &c.table)?;
            if let Some(t) = &c.opt_out_table {
                check_name(&format!("{f}.consent.opt_out_table"), t)?;
            }
        }
        for (var, s) in &self.variables {
            let at = format!("{f}.variables.{var}");
            s.validate(&at)?;
        }
        Ok(())
    }
}

impl VariableSource {
    /// The declared codes of a boolean, if any.
    pub fn booleans(&self) -> Option<BooleanValues> {
        BooleanValues::from_keys(&self.true_values, &self.false_values, &self.missing_values)
    }

    fn validate(&self, at: &str) -> Result<()> {
        if let Some(b) = self.booleans() {
            b.validate(at)?;
            if self.table.is_some() && self.value.is_none() {
                return Err(Error::invalid(format!(
                    "{at} maps the presence of a row, which is already a boolean; true_values and false_values apply to a value column, so remove them or name the value"
                )));
            }
        }
        match (&self.column, &self.table) {
            (Some(c), None) => {
                check_name(&format!("{at}.column"), c)?;
                if self.concept_column.is_some()
                    || self.concept_id.is_some()
                    || self.value.is_some()
                    || self.date_column.is_some()
                {
                    return Err(Error::invalid(format!(
                        "{at} names a column of the person table and also event-table keys; keep column, or give table with its keys"
                    )));
                }
            }
            (None, Some(t)) => {
                check_name(&format!("{at}.table"), t)?;
                check_name(&format!("{at}.person_column"), &self.person_column)?;
                if self.concept_column.is_some() != self.concept_id.is_some() {
                    return Err(Error::invalid(format!(
                        "{at}: concept_column and concept_id go together; give both or neither"
                    )));
                }
                if let Some(c) = &self.concept_column {
                    check_name(&format!("{at}.concept_column"), c)?;
                }
                match (&self.value, &self.date_column) {
                    (Some(v), Some(d)) => {
                        check_name(&format!("{at}.value"), v)?;
                        check_name(&format!("{at}.date_column"), d)?;
                    }
                    (Some(_), None) => {
                        return Err(Error::invalid(format!(
                            "{at}.date_column is missing; the node needs it to pick the {} value",
                            match self.pick {
                                Pick::Latest => "latest",
                                Pick::First => "first",
                            }
                        )))
                    }
                    (None, Some(_)) => {
                        return Err(Error::invalid(format!(
                            "{at}.date_column is set without value; name the value column, or drop date_column to map a presence (boolean)"
                        )))
                    }
                    (None, None) => {}
                }
            }
            _ => {
                return Err(Error::invalid(format!(
                "{at} needs exactly one of column (of the person table) or table (an event table)"
            )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::config::DataConfig;
    use super::*;

    const BASE: &str = r#"
        source = "postgres"
        [postgres]
        url = "postgres://node@db:5432/cdm"
        [postgres.person]
        table = "person"
        [postgres.variables]
        age = { column = "age_years" }
        sbp = { table = "measurement", concept_column = "measurement_concept_id", concept_id = 3004249, value = "value_as_number", date_column = "measurement_date" }
        diabetes = { table = "condition_occurrence", concept_column = "condition_concept_id", concept_id = 201826 }
    "#;

    #[test]
    fn parses_with_defaults() {
        let d: DataConfig = toml::from_str(BASE).unwrap();
        d.validate().unwrap();
        let pg = d.postgres.unwrap();
        assert_eq!(pg.person.id, "person_id");
        assert_eq!(pg.schema, "public");
        assert_eq!(pg.variables["sbp"].pick, Pick::Latest);
        assert_eq!(pg.variables["diabetes"].person_column, "person_id");
        assert_eq!(pg.statement_timeout_ms, 60_000);
        assert_eq!(pg.variables["age"].booleans(), None);

        let with_codes = format!(
            "{BASE}\n[postgres.variables.death]\ncolumn = \"died_yn\"\ntrue_values = [\"Y\"]\nfalse_values = [\"N\"]\nmissing_values = [\"U\"]"
        );
        let d: DataConfig = toml::from_str(&with_codes).unwrap();
        d.validate().unwrap();
        let b = d.postgres.unwrap().variables["death"].booleans().unwrap();
        assert_eq!(b.declared(), ["N", "U", "Y"]);
    }

    #[test]
    fn refuses_what_cannot_work_naming_the_field() {
        let cases = [
            ("\ncolour = 1", "colour"),
            (
                "\n[postgres.variables.bmi]\ncolumn = \"bmi\"\ntable = \"m\"",
                "variables.bmi",
            ),
            (
                "\n[postgres.variables.bmi]\ntable = \"m\"\nvalue = \"v\"",
                "variables.bmi.date_column",
            ),
            (
                "\n[postgres.variables.bmi]\ntable = \"m\"\nconcept_id = 1",
                "concept_column",
            ),
            (
                "\n[postgres.variables.bmi]\ncolumn = \"a\\u0000b\"",
                "variables.bmi.column",
            ),
            (
                "\n[postgres.variables.bmi]\ncolumn = \"\"",
                "variables.bmi.column",
            ),
            (
                "\n[postgres.variables.death]\ncolumn = \"died\"\ntrue_values = [\"Y\"]",
                "variables.death.false_values is empty",
            ),
            (
                "\n[postgres.variables.death]\ncolumn = \"died\"\ntrue_values = [\"Y\"]\nfalse_values = [\"Y\"]",
                "\"Y\" is in both data.postgres.variables.death.true_values",
            ),
            (
                "\n[postgres.variables.htn]\ntable = \"c\"\ntrue_values = [\"Y\"]\nfalse_values = [\"N\"]",
                "presence of a row",
            ),
        ];
        for (extra, field) in cases {
            let text = format!("{BASE}{extra}");
            let msg = match toml::from_str::<DataConfig>(&text) {
                Err(e) => e.to_string(),
                Ok(d) => d.validate().unwrap_err().message,
            };
            assert!(msg.contains(field), "{field}: {msg}");
        }
        let mut d: DataConfig = toml::from_str(BASE).unwrap();
        d.postgres.as_mut().unwrap().statement_timeout_ms = 0;
        assert!(d
            .validate()
            .unwrap_err()
            .message
            .contains("statement_timeout_ms"));
        let mut d: DataConfig = toml::from_str(BASE).unwrap();
        d.postgres.as_mut().unwrap().ca = Some("ca.pem".into());
        assert!(d.validate().unwrap_err().message.contains("sslmode"));
        let mut d: DataConfig = toml::from_str(BASE).unwrap();
        d.path = "patients.parquet".into();
        assert!(d.validate().unwrap_err().message.contains("data.path"));
        let mut d: DataConfig = toml::from_str(BASE).unwrap();
        d.source = None;
        assert!(d.validate().unwrap_err().message.contains("data.source"));
    }
}
