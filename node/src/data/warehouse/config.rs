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
    /// Schema of every table named below (for OMOP, the CDM schema).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Schema of the OMOP vocabulary tables (`concept`,
    /// `concept_ancestor`) that concept sets are expanded with and checked
    /// against; by default `schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary_schema: Option<String>,
    /// Refuse to start when the connected role may write to a mapped table
    /// (by default the node warns: its own transactions are read only).
    #[serde(default)]
    pub refuse_writable_role: bool,
    /// Let a study bring its own OMOP concept sets (`[concept_sets]` in
    /// study.toml): the node reads their rows from the CDM's
    /// `condition_occurrence`, `drug_exposure`, `measurement` and
    /// `observation` tables in `schema` (`person_id`, the domain's concept
    /// id and its start date), expanding descendants with the vocabulary.
    /// Off by default: a job naming such a set is then refused.
    #[serde(default)]
    pub study_concept_sets: bool,
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
    /// One concept: the same as `concepts = [id]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept_id: Option<i64>,
    /// A concept set: the event rows whose `concept_column` holds one of
    /// these ids (with their descendants when `descendants`), less those
    /// of `exclude`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concepts: Vec<i64>,
    /// Also every descendant of the listed (and of the excluded) concepts,
    /// from the vocabulary's `concept_ancestor`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub descendants: bool,
    /// Concepts taken out of the set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<i64>,
    /// A concept set exported from OHDSI ATLAS (JSON): a concept set
    /// expression (`{"items": [...]}`), or a cohort definition (Circe
    /// JSON) with `concept_set_name` naming one of its `ConceptSets`.
    /// Instead of `concepts`, `descendants` and `exclude`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept_set_file: Option<PathBuf>,
    /// Which concept set of a cohort definition `concept_set_file` holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept_set_name: Option<String>,
    /// A categorical variable held as concept ids: each dictionary
    /// category and the concept ids that mean it; any other id reads as
    /// missing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub levels: BTreeMap<String, Vec<i64>>,
    /// Age in whole years on this date (`YYYY-MM-DD`), from a birth year
    /// (`year(age_at) - year_of_birth`, the OHDSI convention) or a birth
    /// date (completed years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The row's date: picks the latest or first `value`; without `value`,
    /// the dates of a presence (boolean) that `time_to_event` reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_column: Option<String>,
    /// Derived from other mapped variables: follow-up from an origin date
    /// to the first event after it or to a censoring date. A numeric
    /// variable gets the days, a boolean whether the event came first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_event: Option<TimeToEvent>,
    /// Derived: whether the patient has a row of an event in a window of
    /// days around an origin date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Derived: the days from one mapped date to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_between: Option<DaysBetween>,
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

fn default_patient_id() -> String {
    "patient_id".into()
}
fn default_purposes() -> String {
    "purposes".into()
}
fn default_valid_from() -> String {
    "valid_from".into()
}
fn default_withdrawn_at() -> String {
    "withdrawn_at".into()
}

/// Consent (one row per patient and consent: who, the DUO purposes, from
/// when, withdrawn when) and opt-out (who) tables. The columns default to
/// the consent files' names and can be mapped; the tables can live in a
/// schema of their own, apart from the CDM the ETL owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentTables {
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_table: Option<String>,
    /// Schema of both tables; by default `data.postgres.schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default = "default_patient_id")]
    pub patient_id: String,
    #[serde(default = "default_purposes")]
    pub purposes: String,
    #[serde(default = "default_valid_from")]
    pub valid_from: String,
    #[serde(default = "default_withdrawn_at")]
    pub withdrawn_at: String,
    /// The patient column of the opt-out table.
    #[serde(default = "default_patient_id")]
    pub opt_out_patient_id: String,
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
        let mut variables = self.variables.clone();
        for v in variables.values_mut() {
            v.concept_set_file = r(&v.concept_set_file);
        }
        WarehouseConfig {
            variables,
            url_file: r(&self.url_file),
            password_file: r(&self.password_file),
            ca: r(&self.ca),
            ..self.clone()
        }
    }

    /// The schema of the vocabulary tables.
    pub fn vocabulary_schema(&self) -> &str {
        self.vocabulary_schema.as_deref().unwrap_or(&self.schema)
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
        if let Some(v) = &self.vocabulary_schema {
            check_name(&format!("{f}.vocabulary_schema"), v)?;
        }
        check_name(&format!("{f}.person.table"), &self.person.table)?;
        check_name(&format!("{f}.person.id"), &self.person.id)?;
        if let Some(c) = &self.consent {
            check_name(&format!("{f}.consent.table"), &c.table)?;
            if let Some(t) = &c.opt_out_table {
                check_name(&format!("{f}.consent.opt_out_table"), t)?;
            }
            for (key, name) in [
                ("schema", c.schema.as_deref().unwrap_or(&self.schema)),
                ("patient_id", &c.patient_id),
                ("purposes", &c.purposes),
                ("valid_from", &c.valid_from),
                ("withdrawn_at", &c.withdrawn_at),
                ("opt_out_patient_id", &c.opt_out_patient_id),
            ] {
                check_name(&format!("{f}.consent.{key}"), name)?;
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

    /// The concept set this variable's event rows are restricted to, as
    /// configured (before the vocabulary expands it).
    pub fn concept_set(&self) -> Option<ConceptSet> {
        let set = ConceptSet::of(
            self.concept_id.iter().chain(&self.concepts),
            &self.exclude,
            self.descendants,
        );
        (!set.items.is_empty()).then_some(set)
    }

    /// The date of `age_at`, checked by `validate`.
    pub fn age_date(&self) -> Option<chrono::NaiveDate> {
        self.age_at
            .as_deref()
            .and_then(plexus_core::query::parse_date)
    }

    fn validate(&self, at: &str) -> Result<()> {
        if let Some(b) = self.booleans() {
            b.validate(at)?;
            if self.table.is_some() && self.value.is_none() {
                return Err(Error::invalid(format!(
                    "{at} maps the presence of a row, which is already a boolean; true_values and false_values apply to a value column, so remove them or name the value"
                )));
            }
            if !self.levels.is_empty() || self.age_at.is_some() {
                return Err(Error::invalid(format!(
                    "{at} declares true_values and false_values together with levels or age_at; keep one way of reading the value"
                )));
            }
        }
        if !self.levels.is_empty() {
            let mut seen = BTreeMap::new();
            for (level, ids) in &self.levels {
                for id in ids {
                    if let Some(other) = seen.insert(*id, level) {
                        return Err(Error::invalid(format!(
                            "{at}.levels: concept {id} is listed under both {other:?} and {level:?}; a concept can mean one category only"
                        )));
                    }
                }
            }
            if self.table.is_some() && self.value.is_none() {
                return Err(Error::invalid(format!(
                    "{at}.levels needs a column holding concept ids: name the event table's value (e.g. value = \"value_as_concept_id\" with date_column) or use column = ... of the person table"
                )));
            }
        }
        if let Some(text) = &self.age_at {
            if self.age_date().is_none() {
                return Err(Error::invalid(format!(
                    "{at}.age_at = {text:?} is not a date; write YYYY-MM-DD"
                )));
            }
            if self.column.is_none() || !self.levels.is_empty() {
                return Err(Error::invalid(format!(
                    "{at}.age_at needs column = the person table's birth year (year_of_birth) or birth date (birth_datetime), and no levels"
                )));
            }
        }
        let has_set = self.concept_id.is_some()
            || !self.concepts.is_empty()
            || !self.exclude.is_empty()
            || self.descendants
            || self.concept_set_file.is_some();
        if self.concept_set_file.is_some()
            && (self.concept_id.is_some()
                || !self.concepts.is_empty()
                || !self.exclude.is_empty()
                || self.descendants)
        {
            return Err(Error::invalid(format!(
                "{at}.concept_set_file gives the whole set (each concept with its own descendants and exclusion flags); remove concepts, concept_id, exclude and descendants"
            )));
        }
        if self.concept_set_name.is_some() && self.concept_set_file.is_none() {
            return Err(Error::invalid(format!(
                "{at}.concept_set_name names a concept set of a cohort definition; give the file as concept_set_file"
            )));
        }
        let derived = [
            self.time_to_event.is_some(),
            self.window.is_some(),
            self.days_between.is_some(),
        ];
        if derived.iter().any(|d| *d) {
            let derived_only = VariableSource {
                time_to_event: self.time_to_event.clone(),
                window: self.window.clone(),
                days_between: self.days_between.clone(),
                person_column: self.person_column.clone(),
                ..Default::default()
            };
            if *self != derived_only || derived.iter().filter(|d| **d).count() > 1 {
                return Err(Error::invalid(format!(
                    "{at}: time_to_event, window and days_between each derive the variable from others; keep one of them and no other key"
                )));
            }
            let mut names: Vec<(&str, &String)> = Vec::new();
            if let Some(t) = &self.time_to_event {
                names.extend([
                    ("time_to_event.origin", &t.origin),
                    ("time_to_event.event", &t.event),
                    ("time_to_event.censor", &t.censor),
                ]);
            }
            if let Some(w) = &self.window {
                names.extend([("window.event", &w.event), ("window.origin", &w.origin)]);
                if w.from > w.to {
                    return Err(Error::invalid(format!(
                        "{at}.window: from = {} is after to = {}; give the window's first day, then its last, in days from the origin (negative before it)",
                        w.from, w.to
                    )));
                }
                // Beyond a century a date sum could leave PostgreSQL's
                // date range, and fail only when a patient has such rows.
                let days = -plexus_core::timeline::MAX_WINDOW_DAYS
                    ..=plexus_core::timeline::MAX_WINDOW_DAYS;
                if !days.contains(&w.from) || !days.contains(&w.to) {
                    return Err(Error::invalid(format!(
                        "{at}.window runs from {} to {} days; keep both within {} days of the origin",
                        w.from,
                        w.to,
                        plexus_core::timeline::MAX_WINDOW_DAYS
                    )));
                }
            }
            if let Some(d) = &self.days_between {
                names.extend([("days_between.from", &d.from), ("days_between.to", &d.to)]);
            }
            for (key, name) in names {
                if name.is_empty() {
                    return Err(Error::invalid(format!(
                        "{at}.{key} is empty; name a mapped variable"
                    )));
                }
            }
            return Ok(());
        }
        match (&self.column, &self.table) {
            (Some(c), None) => {
                check_name(&format!("{at}.column"), c)?;
                if self.concept_column.is_some()
                    || has_set
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
                if self.concept_id.is_some() && !self.concepts.is_empty() {
                    return Err(Error::invalid(format!(
                        "{at} gives both concept_id and concepts; list every concept under concepts"
                    )));
                }
                let listed = self.concept_id.is_some()
                    || !self.concepts.is_empty()
                    || self.concept_set_file.is_some();
                if self.concept_column.is_some() != listed {
                    return Err(Error::invalid(format!(
                        "{at}: concept_column and concepts (or concept_id) go together; give both or neither"
                    )));
                }
                if has_set && !listed {
                    return Err(Error::invalid(format!(
                        "{at}: exclude and descendants refine a concept set; list its concepts under concepts"
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
                    (None, Some(d)) => check_name(&format!("{at}.date_column"), d)?,
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

/// `time_to_event`, `window` and `days_between` over the node's mapped
/// variables: the same shapes (and meaning) as a study's own derived
/// variables ([`plexus_core::timeline`]).
pub use plexus_core::timeline::{DaysBetween, TimeToEvent, Window};

/// One concept of a set, with the flags OHDSI ATLAS gives each item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConceptItem {
    pub id: i64,
    /// Also every concept below it in `concept_ancestor`.
    pub descendants: bool,
    /// Taken out of the set (with its descendants when `descendants`).
    pub excluded: bool,
}

/// A concept set as configured (before the vocabulary expands it): the
/// concepts taken in, and those taken out again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConceptSet {
    pub items: Vec<ConceptItem>,
}

impl ConceptSet {
    /// The concepts `included`, less those of `excluded`, every one with
    /// its descendants when `descendants` (a set as node.toml and a
    /// study's `[concept_sets]` write it).
    pub fn of<'a>(
        included: impl IntoIterator<Item = &'a i64>,
        excluded: &[i64],
        descendants: bool,
    ) -> ConceptSet {
        let item = |excluded: bool| {
            move |id: &i64| ConceptItem {
                id: *id,
                descendants,
                excluded,
            }
        };
        ConceptSet {
            items: included
                .into_iter()
                .map(item(false))
                .chain(excluded.iter().map(item(true)))
                .collect(),
        }
    }

    /// Every concept listed, taken in or out.
    pub fn listed(&self) -> Vec<i64> {
        self.items.iter().map(|i| i.id).collect()
    }

    /// The same set with every item taking its descendants.
    pub fn with_descendants(&self) -> ConceptSet {
        ConceptSet {
            items: self
                .items
                .iter()
                .map(|i| ConceptItem {
                    descendants: true,
                    ..*i
                })
                .collect(),
        }
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

    /// The OMOP keys: a concept set, categories from concept ids, a
    /// derived age, schemas and consent columns of their own.
    #[test]
    fn parses_omop_mappings() {
        let text = r#"
            source = "postgres"
            [postgres]
            url = "postgres://node@db:5432/cdm"
            schema = "cdm"
            vocabulary_schema = "vocab"
            [postgres.person]
            table = "person"
            [postgres.consent]
            table = "consent"
            schema = "plexus"
            patient_id = "person_id"
            purposes = "duo_codes"
            [postgres.variables]
            sex = { column = "gender_concept_id", levels = { F = [8532], M = [8507] } }
            age = { column = "year_of_birth", age_at = "2019-12-31" }
            nsaid = { table = "drug_exposure", concept_column = "drug_concept_id", concepts = [1177480, 1118084], exclude = [1118084], descendants = true }
            bleed = { table = "condition_occurrence", concept_column = "condition_concept_id", concepts = [192671], date_column = "condition_start_date" }
            followup = { time_to_event = { origin = "nsaid_index", event = "bleed", censor = "observation_end" } }
            bleed_year = { window = { event = "bleed", origin = "nsaid_index", from = 1, to = 365 } }
            observed = { days_between = { from = "observation_start", to = "nsaid_index" } }
        "#;
        let d: DataConfig = toml::from_str(text).unwrap();
        d.validate().unwrap();
        let pg = d.postgres.unwrap();
        assert_eq!(pg.vocabulary_schema(), "vocab");
        let set = pg.variables["nsaid"].concept_set().unwrap();
        let item = |id, excluded| ConceptItem {
            id,
            descendants: true,
            excluded,
        };
        assert_eq!(
            set.items,
            [
                item(1177480, false),
                item(1118084, false),
                item(1118084, true)
            ]
        );
        assert_eq!(
            pg.variables["age"].age_date(),
            chrono::NaiveDate::from_ymd_opt(2019, 12, 31)
        );
        assert_eq!(
            pg.variables["followup"].time_to_event,
            Some(TimeToEvent {
                origin: "nsaid_index".into(),
                event: "bleed".into(),
                censor: "observation_end".into()
            })
        );
        assert_eq!(
            pg.variables["bleed_year"].window,
            Some(Window {
                event: "bleed".into(),
                origin: "nsaid_index".into(),
                from: 1,
                to: 365
            })
        );
        assert_eq!(
            pg.variables["observed"].days_between.as_ref().unwrap().to,
            "nsaid_index"
        );
        let c = pg.consent.unwrap();
        assert_eq!(
            (c.schema.as_deref(), c.patient_id.as_str()),
            (Some("plexus"), "person_id")
        );
        assert_eq!(
            (c.valid_from.as_str(), c.opt_out_patient_id.as_str()),
            ("valid_from", "patient_id")
        );
        // One concept_id is a set of one.
        let d: DataConfig = toml::from_str(BASE).unwrap();
        let pg = d.postgres.unwrap();
        assert_eq!(pg.vocabulary_schema(), "public");
        assert_eq!(
            pg.variables["diabetes"].concept_set().unwrap().listed(),
            [201826]
        );
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
            (
                "\n[postgres.variables.htn]\ntable = \"c\"\nconcept_column = \"x\"\nconcept_id = 1\nconcepts = [2]",
                "both concept_id and concepts",
            ),
            (
                "\n[postgres.variables.htn]\ntable = \"c\"\nexclude = [2]",
                "exclude and descendants refine a concept set",
            ),
            (
                "\n[postgres.variables.htn]\ntable = \"c\"\nconcepts = [2]",
                "concept_column and concepts",
            ),
            (
                "\n[postgres.variables.htn]\ncolumn = \"c\"\ndescendants = true",
                "event-table keys",
            ),
            (
                "\n[postgres.variables.bmi]\ntime_to_event = { origin = \"a\", event = \"b\", censor = \"c\" }\ntable = \"x\"",
                "time_to_event, window and days_between each derive the variable",
            ),
            (
                "\n[postgres.variables.bmi]\nwindow = { event = \"b\", origin = \"o\", from = 10, to = -10 }",
                "window: from = 10 is after to = -10",
            ),
            (
                "\n[postgres.variables.bmi]\nwindow = { event = \"b\", origin = \"o\", from = 1, to = 3 }\ndays_between = { from = \"a\", to = \"b\" }",
                "keep one of them",
            ),
            (
                "\n[postgres.variables.bmi]\ndays_between = { from = \"a\", to = \"\" }",
                "days_between.to is empty",
            ),
            (
                "\n[postgres.variables.bmi]\ntime_to_event = { origin = \"\", event = \"b\", censor = \"c\" }",
                "time_to_event.origin is empty",
            ),
            (
                "\n[postgres.variables.bmi]\ntime_to_event = { origin = \"a\", event = \"b\" }",
                "censor",
            ),
            (
                "\n[postgres.variables.sex]\ncolumn = \"g\"\nlevels = { F = [8532], M = [8532] }",
                "concept 8532 is listed under both",
            ),
            (
                "\n[postgres.variables.sex]\ntable = \"observation\"\nlevels = { F = [8532] }",
                "levels needs a column holding concept ids",
            ),
            (
                "\n[postgres.variables.bmi]\ncolumn = \"year_of_birth\"\nage_at = \"2019-13-01\"",
                "variables.bmi.age_at",
            ),
            (
                "\n[postgres.variables.bmi]\ntable = \"person\"\nvalue = \"year_of_birth\"\ndate_column = \"d\"\nage_at = \"2019-12-31\"",
                "age_at needs column",
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
        d.postgres.as_mut().unwrap().vocabulary_schema = Some(String::new());
        assert!(d
            .validate()
            .unwrap_err()
            .message
            .contains("vocabulary_schema"));
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
