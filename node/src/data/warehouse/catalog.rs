//! The mapping checked against the database catalogue at start-up.
//!
//! Every table and column the config names is looked up in
//! `information_schema.columns` (which lists only what the node's role may
//! see) with the names bound as parameters; what comes back is the name as
//! PostgreSQL's own `quote_ident` spells it. That quoted spelling, held in
//! [`Ident`], is the only way a name reaches SQL text, so a name that is
//! not in the catalogue never does.

use std::collections::BTreeMap;

use plexus_core::timeline::{Derivation, Domain};
use plexus_core::{Dictionary, Error, Result, VarType};
use sqlx::{PgPool, Row};

use super::super::booleans::BooleanValues;
use super::config::{ConceptItem, ConceptSet, Pick, VariableSource, WarehouseConfig};
use super::db_error;

/// A table or column name as the catalogue quoted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ident(String);

impl Ident {
    pub fn sql(&self) -> &str {
        &self.0
    }

    /// A name taken as already quoted: for unit tests of the compiler only.
    #[cfg(test)]
    pub fn trusted(quoted: &str) -> Ident {
        Ident(quoted.to_string())
    }
}

/// What a column can hold, from its catalogue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Int,
    Float,
    Bool,
    Text,
    Date,
    Other,
}

impl Family {
    fn of(data_type: &str) -> Family {
        match data_type {
            "smallint" | "integer" | "bigint" => Family::Int,
            "real" | "double precision" | "numeric" => Family::Float,
            "boolean" => Family::Bool,
            "text" | "character varying" | "character" => Family::Text,
            "date" | "timestamp without time zone" | "timestamp with time zone" => Family::Date,
            _ => Family::Other,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub ident: Ident,
    pub family: Family,
    pub data_type: String,
}

/// A table the node's role can see, with its columns.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// `schema.table`, quoted.
    pub ident: Ident,
    /// As configured, for messages.
    pub name: String,
    pub schema: String,
    pub columns: BTreeMap<String, Column>,
}

impl Table {
    pub async fn load(
        pool: &PgPool,
        host: &str,
        schema: &str,
        name: &str,
        field: &str,
    ) -> Result<Table> {
        let rows = sqlx::query(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name), \
                    column_name::text, quote_ident(column_name), data_type::text \
             FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        )
        .bind(schema)
        .bind(name)
        .fetch_all(pool)
        .await
        .map_err(|e| db_error(host, e))?;
        let Some(first) = rows.first() else {
            return Err(Error::data(format!(
                "{field} names table {name:?} in schema {schema:?} (data.postgres.schema), which is not in the database at {host} or which the node's role may not read; check the names (case matters) and grant SELECT on the table (deploy/postgres/readonly-role.sql)"
            )));
        };
        let ident = Ident(first.get(0));
        let columns = rows
            .iter()
            .map(|r| {
                let data_type: String = r.get(3);
                (
                    r.get::<String, _>(1),
                    Column {
                        ident: Ident(r.get(2)),
                        family: Family::of(&data_type),
                        data_type,
                    },
                )
            })
            .collect();
        Ok(Table {
            ident,
            name: name.to_string(),
            schema: schema.to_string(),
            columns,
        })
    }

    /// A column that must exist and be of one of `families`.
    pub fn column(
        &self,
        name: &str,
        families: &[Family],
        field: &str,
        want: &str,
    ) -> Result<Column> {
        let c = self.columns.get(name).ok_or_else(|| {
            Error::data(format!(
                "{field} names column {name:?}, which is not in table {}.{} (columns: {})",
                self.schema,
                self.name,
                self.columns.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if !families.contains(&c.family) {
            return Err(Error::data(format!(
                "{field}: column {name:?} of {}.{} holds {}; it must hold {want}",
                self.schema, self.name, c.data_type
            )));
        }
        Ok(c.clone())
    }
}

/// Where a variable's value comes from, in catalogue names.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Column(Column),
    Event {
        table: Ident,
        person: Ident,
        /// The concept column and the concept set, expanded by the
        /// vocabulary (sorted, no duplicates).
        concept: Option<(Ident, Vec<i64>)>,
        /// The value column and the date that picks a row; `None` maps the
        /// presence of a row (a boolean).
        value: Option<(Column, Ident)>,
        pick: Pick,
        /// A presence's date column, for a follow-up that ends at it.
        dated: Option<Ident>,
        /// The person column holds text ids (sorted byte by byte).
        text_ids: bool,
    },
    /// Follow-up from an origin date to the first row of an event after it
    /// or to a censoring date: the days, or (`flag`) whether the event came.
    TimeTo {
        origin: Box<Var>,
        censor: Box<Var>,
        event: Dated,
        flag: bool,
    },
    /// Whether the patient has a row of an event from `origin + from` to
    /// `origin + to` days.
    Window {
        origin: Box<Var>,
        event: Dated,
        from: i32,
        to: i32,
    },
    /// `to - from`, two dates, in days.
    DaysBetween {
        from: Box<Var>,
        to: Box<Var>,
    },
}

/// An event table's rows of one concept set, with their date.
#[derive(Debug, Clone)]
pub(crate) struct Dated {
    pub table: Ident,
    pub person: Ident,
    pub concept: Option<(Ident, Vec<i64>)>,
    pub date: Ident,
    /// The person column holds text ids.
    pub text_ids: bool,
}

/// A dictionary variable as this warehouse holds it.
#[derive(Debug, Clone)]
pub(crate) struct Var {
    pub kind: VarType,
    pub source: Source,
    /// A boolean held as codes: the values that mean true and false.
    pub booleans: Option<BooleanValues>,
    /// A categorical held as concept ids: each id and its category.
    pub levels: Option<Levels>,
    /// Age in whole years on this date, from the birth year (an integer
    /// column) or birth date (a date column).
    pub age_at: Option<chrono::NaiveDate>,
}

/// Concept ids and the category each means, in two parallel lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Levels {
    pub ids: Vec<i64>,
    pub labels: Vec<String>,
}

/// What the mapping check found worth telling the hospital without
/// refusing to start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Findings {
    /// Decided on the mapping and the vocabulary alone (no patient data):
    /// logged, and reported to the coordinator for `plexus nodes`.
    pub notices: Vec<String>,
    /// Decided on patient data (e.g. a concept set that matches no row):
    /// only in the node's own log, since the coordinator is not entitled
    /// to learn that a hospital has no patient with a condition.
    pub local: Vec<String>,
}

/// The OMOP vocabulary tables, when the warehouse has them.
pub(crate) struct Vocabulary {
    schema: String,
    concept: Option<Table>,
    ancestor: Option<Table>,
}

/// One concept's vocabulary record.
struct ConceptRow {
    name: String,
    domain: String,
    standard: Option<String>,
}

impl Vocabulary {
    pub async fn load(pool: &PgPool, host: &str, cfg: &WarehouseConfig) -> Result<Vocabulary> {
        let schema = cfg.vocabulary_schema().to_string();
        let f = "data.postgres.vocabulary_schema";
        let concept = Table::load(pool, host, &schema, "concept", f).await.ok();
        let ancestor = Table::load(pool, host, &schema, "concept_ancestor", f)
            .await
            .ok();
        if cfg.vocabulary_schema.is_some() && (concept.is_none() || ancestor.is_none()) {
            return Err(Error::data(format!(
                "{f} = {schema:?}, but the tables concept and concept_ancestor are not both there (or the node's role may not read them); check the schema's name and grant SELECT on them (deploy/omop/readonly-role.sql)"
            )));
        }
        if let Some(t) = &concept {
            t.column("concept_id", &[Family::Int], f, "integer concept ids")?;
            for c in ["concept_name", "domain_id", "standard_concept"] {
                t.column(
                    c,
                    &[Family::Text],
                    f,
                    "text, as the OMOP vocabulary holds it",
                )?;
            }
        }
        if let Some(t) = &ancestor {
            for c in ["ancestor_concept_id", "descendant_concept_id"] {
                t.column(c, &[Family::Int], f, "concept ids")?;
            }
        }
        Ok(Vocabulary {
            schema,
            concept,
            ancestor,
        })
    }

    /// The concepts of a set: those taken in, each with every concept
    /// below it in `concept_ancestor` where it says so, less those taken
    /// out (likewise with theirs).
    pub(crate) async fn expand(
        &self,
        pool: &PgPool,
        host: &str,
        set: &ConceptSet,
        at: &str,
    ) -> Result<Vec<i64>> {
        let side = |excluded: bool| {
            let items: Vec<&ConceptItem> = set
                .items
                .iter()
                .filter(|i| i.excluded == excluded)
                .collect();
            async move {
                let mut ids: Vec<i64> = items.iter().map(|i| i.id).collect();
                let above: Vec<i64> = items
                    .iter()
                    .filter(|i| i.descendants)
                    .map(|i| i.id)
                    .collect();
                if above.is_empty() {
                    return Ok::<_, Error>(ids);
                }
                let Some(a) = &self.ancestor else {
                    return Err(Error::data(format!(
                        "{at} takes descendants, which needs the vocabulary table concept_ancestor, which is not in schema {:?} (or the node's role may not read it); set data.postgres.vocabulary_schema to the vocabulary's schema and grant SELECT on it",
                        self.schema
                    )));
                };
                // As ATLAS: descendants that the vocabulary marks invalid
                // (deprecated or replaced) are left out; the listed
                // concepts themselves are always in.
                let valid = match self.concept.as_ref().filter(|c| c.columns.contains_key("invalid_reason")) {
                    Some(c) => format!(
                        " AND a.descendant_concept_id IN (SELECT concept_id FROM {} WHERE invalid_reason IS NULL)",
                        c.ident.sql()
                    ),
                    None => String::new(),
                };
                let below: Vec<i64> = sqlx::query_scalar(&format!(
                    "SELECT DISTINCT a.descendant_concept_id::int8 FROM {} a WHERE a.ancestor_concept_id = ANY($1::int8[]){valid}",
                    a.ident.sql()
                ))
                .bind(&above)
                .fetch_all(pool)
                .await
                .map_err(|e| db_error(host, e))?;
                // concept_ancestor holds each standard concept as its own
                // descendant (level 0), but not every vocabulary build
                // does: the listed ids are in either way.
                ids.extend(below);
                Ok(ids)
            }
        };
        let include = side(false).await?;
        let exclude: std::collections::BTreeSet<i64> = side(true).await?.into_iter().collect();
        let mut ids: Vec<i64> = include
            .into_iter()
            .filter(|i| !exclude.contains(i))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    async fn rows(
        &self,
        pool: &PgPool,
        host: &str,
        ids: &[i64],
    ) -> Result<BTreeMap<i64, ConceptRow>> {
        let Some(c) = &self.concept else {
            return Ok(BTreeMap::new());
        };
        let rows = sqlx::query(&format!(
            "SELECT concept_id::int8, concept_name::text, domain_id::text, standard_concept::text FROM {} WHERE concept_id = ANY($1::int8[])",
            c.ident.sql()
        ))
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(|e| db_error(host, e))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<i64, _>(0),
                    ConceptRow {
                        name: r.get::<Option<String>, _>(1).unwrap_or_default(),
                        domain: r.get::<Option<String>, _>(2).unwrap_or_default(),
                        standard: r
                            .get::<Option<String>, _>(3)
                            .filter(|s| !s.trim().is_empty()),
                    },
                )
            })
            .collect())
    }

    /// Notices about the listed concepts: not in the vocabulary, not
    /// standard in a standard column, or of another domain than `domain`.
    #[allow(clippy::too_many_arguments)]
    async fn check(
        &self,
        pool: &PgPool,
        host: &str,
        ids: &[i64],
        column: &str,
        domain: Option<&str>,
        descendants: bool,
        at: &str,
        findings: &mut Findings,
    ) -> Result<()> {
        if self.concept.is_none() || ids.is_empty() {
            return Ok(());
        }
        let known = self.rows(pool, host, ids).await?;
        let source_column =
            column.ends_with("source_concept_id") || column.ends_with("source_value");
        for id in ids {
            let Some(c) = known.get(id) else {
                findings.notices.push(format!(
                    "{at}: concept {id} is not in the vocabulary ({}.concept); check the id (Athena) or load the vocabulary that holds it",
                    self.schema
                ));
                continue;
            };
            match c.standard.as_deref() {
                Some("S") => {}
                Some("C") if descendants => {}
                Some("C") => findings.notices.push(format!(
                    "{at}: concept {id} ({}) is a classification concept; rows are recorded with the standard concepts below it, so set descendants = true",
                    c.name
                )),
                _ if !source_column => findings.notices.push(format!(
                    "{at}: concept {id} ({}) is not a standard concept, but {column} holds standard concepts; map the standard concept it maps to, or restrict on the source column (e.g. condition_source_concept_id)",
                    c.name
                )),
                _ => {}
            }
            if let Some(d) = domain {
                if !c.domain.eq_ignore_ascii_case(d) {
                    findings.notices.push(format!(
                        "{at}: concept {id} ({}) is in the {} domain, but {column} holds {d} concepts; check the id or the table",
                        c.name, c.domain
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The domain an OMOP table's main concept column (or a person column)
/// holds, for the start-up check.
fn expected_domain(table: &str, column: &str) -> Option<&'static str> {
    if column.ends_with("source_concept_id") || column.contains("value_as_concept") {
        return None;
    }
    Some(match (table, column) {
        (_, "gender_concept_id") => "Gender",
        (_, "race_concept_id") => "Race",
        (_, "ethnicity_concept_id") => "Ethnicity",
        ("condition_occurrence" | "condition_era", _) => "Condition",
        ("drug_exposure" | "drug_era", _) => "Drug",
        ("measurement", _) => "Measurement",
        ("observation", _) => "Observation",
        ("procedure_occurrence", _) => "Procedure",
        ("device_exposure", _) => "Device",
        ("visit_occurrence" | "visit_detail", _) => "Visit",
        ("specimen", _) => "Specimen",
        _ => return None,
    })
}

const IDS: [Family; 2] = [Family::Int, Family::Text];

fn wanted(kind: VarType, codes: bool) -> (&'static [Family], &'static str) {
    match kind {
        VarType::Boolean if codes => (
            &[Family::Int, Family::Text],
            "text or integer codes (compared with true_values and false_values)",
        ),
        VarType::Integer => (&[Family::Int], "integers"),
        VarType::Float => (&[Family::Int, Family::Float], "numbers"),
        VarType::Boolean => (
            &[Family::Bool],
            "booleans, or codes declared with true_values = [...] and false_values = [...]",
        ),
        VarType::Categorical => (&[Family::Text], "text"),
        VarType::Date => (&[Family::Date], "dates"),
    }
}

/// Checks every mapped variable against the dictionary and the catalogue,
/// expands its concept sets with the vocabulary, and collects what the
/// hospital should hear about without the node refusing to start.
pub(crate) async fn map_variables(
    pool: &PgPool,
    host: &str,
    cfg: &WarehouseConfig,
    person: &Table,
    id: &Column,
    dict: &Dictionary,
    findings: &mut Findings,
) -> Result<(BTreeMap<String, Var>, Vec<Table>)> {
    let vocab = Vocabulary::load(pool, host, cfg).await?;
    let mut derived: Vec<(&String, VarType)> = Vec::new();
    let mut out = BTreeMap::new();
    let mut tables: Vec<Table> = Vec::new();
    for (name, src) in &cfg.variables {
        let at = format!("data.postgres.variables.{name}");
        let v = dict.get(name).map_err(|e| {
            Error::invalid(format!(
                "{at}: {}; fix or remove the section in node.toml",
                e.message
            ))
        })?;
        let booleans = src.booleans();
        if booleans.is_some() && v.kind != VarType::Boolean {
            return Err(Error::invalid(format!(
                "{at} declares true_values and false_values, but \"{name}\" is {}; only a boolean variable takes them, so remove them",
                v.kind
            )));
        }
        let levels = match src.levels.is_empty() {
            true => None,
            false => {
                if v.kind != VarType::Categorical {
                    return Err(Error::invalid(format!(
                        "{at}.levels maps concept ids to categories, but \"{name}\" is {}; only a categorical variable takes levels",
                        v.kind
                    )));
                }
                let mut l = Levels {
                    ids: Vec::new(),
                    labels: Vec::new(),
                };
                for (label, ids) in &src.levels {
                    if !v.categories.contains(label) {
                        return Err(Error::invalid(format!(
                            "{at}.levels names {label:?}, which is not a category of \"{name}\" (categories: {}); use the dictionary's spelling",
                            v.categories.join(", ")
                        )));
                    }
                    for i in ids {
                        l.ids.push(*i);
                        l.labels.push(label.clone());
                    }
                }
                Some(l)
            }
        };
        if src.age_at.is_some() && !v.kind.is_numeric() {
            return Err(Error::invalid(format!(
                "{at}.age_at derives an age in years, but \"{name}\" is {}; map it to an integer or float variable",
                v.kind
            )));
        }
        let (families, want) = match (&levels, src.age_at.is_some()) {
            (Some(_), _) => (&[Family::Int][..], "integer concept ids"),
            (None, true) => (
                &[Family::Int, Family::Date][..],
                "a birth year (integer) or a birth date",
            ),
            (None, false) => wanted(v.kind, booleans.is_some()),
        };
        let source = match src {
            VariableSource {
                column: Some(c), ..
            } => {
                let col = person.column(c, families, &format!("{at}.column"), want)?;
                if let Some(l) = &levels {
                    let ids: Vec<i64> = l.ids.clone();
                    vocab
                        .check(
                            pool,
                            host,
                            &ids,
                            c,
                            expected_domain(&person.name, c),
                            false,
                            &format!("{at}.levels"),
                            findings,
                        )
                        .await?;
                }
                Source::Column(col)
            }
            VariableSource {
                table: Some(t),
                person_column,
                concept_column,
                value,
                date_column,
                pick,
                ..
            } => {
                let table = match tables.iter().find(|x| x.name == *t) {
                    Some(x) => x.clone(),
                    None => {
                        let x =
                            Table::load(pool, host, &cfg.schema, t, &format!("{at}.table")).await?;
                        tables.push(x.clone());
                        x
                    }
                };
                let pc = table.column(
                    person_column,
                    &IDS,
                    &format!("{at}.person_column"),
                    "patient ids",
                )?;
                if (pc.family == Family::Int) != (id.family == Family::Int) {
                    return Err(Error::data(format!(
                        "{at}.person_column {person_column:?} holds {} but the person id holds {}; the join needs the same kind of id",
                        pc.data_type, id.data_type
                    )));
                }
                let set = match &src.concept_set_file {
                    Some(path) => Some(super::atlas::read(
                        path,
                        src.concept_set_name.as_deref(),
                        &at,
                    )?),
                    None => src.concept_set(),
                };
                let concept = match (concept_column, set) {
                    (Some(c), Some(set)) => {
                        let col = table.column(
                            c,
                            &[Family::Int],
                            &format!("{at}.concept_column"),
                            "integer concept ids",
                        )?;
                        for descendants in [false, true] {
                            let listed: Vec<i64> = set
                                .items
                                .iter()
                                .filter(|i| i.descendants == descendants)
                                .map(|i| i.id)
                                .collect();
                            vocab
                                .check(
                                    pool,
                                    host,
                                    &listed,
                                    c,
                                    expected_domain(t, c),
                                    descendants,
                                    &format!("{at}.concepts"),
                                    findings,
                                )
                                .await?;
                        }
                        let ids = vocab.expand(pool, host, &set, &at).await?;
                        if ids.is_empty() {
                            return Err(Error::invalid(format!(
                                "{at}: the concept set is empty once exclude is taken out; check concepts and exclude"
                            )));
                        }
                        // Only a hint for the hospital: a slow or failed
                        // probe (a huge table without an index on the
                        // concept column) is logged, never fatal.
                        let any = sqlx::query_scalar::<_, bool>(&format!(
                            "SELECT EXISTS (SELECT 1 FROM {} e WHERE e.{} = ANY($1::int8[]))",
                            table.ident.sql(),
                            col.ident.sql()
                        ))
                        .bind(&ids)
                        .fetch_one(pool)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::info!(host, variable = %name, error = %e, "could not check that the concept set matches rows");
                            true
                        });
                        if !any {
                            let hint = match set.items.iter().all(|i| i.descendants) {
                                true => String::new(),
                                false => {
                                    let more = vocab
                                        .expand(pool, host, &set.with_descendants(), &at)
                                        .await
                                        .map(|all| all.len().saturating_sub(ids.len()))
                                        .unwrap_or(0);
                                    match more {
                                        0 => String::new(),
                                        n => format!(" ({n} concepts lie below the listed ones: set descendants = true to include them)"),
                                    }
                                }
                            };
                            findings.local.push(format!(
                                "{at}: no row of {}.{} has one of the set's {} concepts in {c}, so the variable is false (or missing) for every patient{hint}",
                                table.schema, table.name, ids.len()
                            ));
                        }
                        Some((col.ident, ids))
                    }
                    _ => None,
                };
                let dated = match (value, date_column) {
                    (None, Some(d)) => Some(
                        table
                            .column(d, &[Family::Date], &format!("{at}.date_column"), "dates")?
                            .ident,
                    ),
                    _ => None,
                };
                let value = match (value, date_column) {
                    (Some(val), Some(d)) => {
                        if let Some(l) = &levels {
                            vocab
                                .check(
                                    pool,
                                    host,
                                    &l.ids,
                                    val,
                                    expected_domain(t, val),
                                    false,
                                    &format!("{at}.levels"),
                                    findings,
                                )
                                .await?;
                        }
                        Some((
                            table.column(val, families, &format!("{at}.value"), want)?,
                            table
                                .column(d, &[Family::Date], &format!("{at}.date_column"), "dates")?
                                .ident,
                        ))
                    }
                    _ => {
                        if v.kind != VarType::Boolean {
                            return Err(Error::invalid(format!(
                                "{at} maps the presence of a row, which is a boolean, but \"{name}\" is {}; name the value column",
                                v.kind
                            )));
                        }
                        None
                    }
                };
                Source::Event {
                    table: table.ident.clone(),
                    person: pc.ident,
                    concept,
                    value,
                    pick: *pick,
                    dated,
                    text_ids: pc.family == Family::Text,
                }
            }
            VariableSource {
                time_to_event: Some(_),
                ..
            }
            | VariableSource {
                window: Some(_), ..
            }
            | VariableSource {
                days_between: Some(_),
                ..
            } => {
                // Once every variable it names is mapped.
                derived.push((name, v.kind));
                continue;
            }
            _ => {
                return Err(Error::internal(
                    "a variable source passed validation without a column or table",
                ))
            }
        };
        out.insert(
            name.clone(),
            Var {
                kind: v.kind,
                source,
                booleans,
                levels,
                age_at: src.age_date(),
            },
        );
    }
    for (name, kind) in derived {
        let src = &cfg.variables[name];
        let how = match (&src.time_to_event, &src.window, &src.days_between) {
            (Some(t), _, _) => Derivation::TimeToEvent(t),
            (_, Some(w), _) => Derivation::Window(w),
            (_, _, Some(d)) => Derivation::DaysBetween(d),
            _ => return Err(Error::internal("not a derived variable")),
        };
        let at = format!("data.postgres.variables.{name}.{}", how.key());
        let var = derive(name, kind, how, &at, &out, dict)?;
        out.insert(name.clone(), var);
    }
    Ok((out, tables))
}

/// A variable derived from the mapped variables it names
/// (`time_to_event`, `window`, `days_between`): one of the node's mapping,
/// or one a study derives (`at` names where it is declared).
pub(crate) fn derive(
    name: &str,
    kind: VarType,
    how: Derivation<'_>,
    at: &str,
    mapped: &BTreeMap<String, Var>,
    dict: &Dictionary,
) -> Result<Var> {
    let key = how.key();
    let get = |field: &str, var: &str| {
        dict.get(var)
            .map_err(|e| Error::invalid(format!("{at}.{field}: {}", e.message)))?;
        mapped.get(var).ok_or_else(|| {
            Error::invalid(format!(
                "{at}.{field} names \"{var}\", which this node does not map (or which is itself derived); map it under [data.postgres.variables]"
            ))
        })
    };
    let date = |field: &str, var: &str| -> Result<Box<Var>> {
        let v = get(field, var)?;
        if v.kind != VarType::Date {
            return Err(Error::invalid(format!(
                "{at}.{field} names \"{var}\", which is {}; it must be a date (such as the first date of a concept set: value and date_column both the event's date, pick = \"first\")",
                v.kind
            )));
        }
        Ok(Box::new(v.clone()))
    };
    let dated = |field: &str, var: &str| -> Result<Dated> {
        match &get(field, var)?.source {
            Source::Event {
                table,
                person,
                concept,
                value: None,
                dated: Some(d),
                text_ids,
                ..
            } => Ok(Dated {
                table: table.clone(),
                person: person.clone(),
                concept: concept.clone(),
                date: d.clone(),
                text_ids: *text_ids,
            }),
            _ => Err(Error::invalid(format!(
                "{at}.{field} names \"{var}\", which is not the presence of an event table with its date; map it with table, concept_column, concepts and date_column (the event's date)"
            ))),
        }
    };
    let wrong = |want: &str| {
        Error::invalid(format!(
            "{at}: \"{name}\" is {kind}, but {key} gives {want}; declare it so in the dictionary or map another variable"
        ))
    };
    let source = match how {
        Derivation::FirstDate(f) => {
            if kind != VarType::Date {
                return Err(wrong("a date"));
            }
            let event = dated("event", &f.event)?;
            // The first row's date, as a mapped first date is read.
            let date = Column {
                ident: event.date.clone(),
                family: Family::Date,
                data_type: "date".into(),
            };
            Source::Event {
                table: event.table,
                person: event.person,
                concept: event.concept,
                value: Some((date, event.date.clone())),
                pick: Pick::First,
                dated: Some(event.date),
                text_ids: event.text_ids,
            }
        }
        Derivation::TimeToEvent(t) => Source::TimeTo {
            origin: date("origin", &t.origin)?,
            censor: date("censor", &t.censor)?,
            event: dated("event", &t.event)?,
            flag: match kind {
                VarType::Boolean => true,
                VarType::Integer | VarType::Float => false,
                _ => {
                    return Err(wrong(
                        "days (integer or float) or whether the event came (boolean)",
                    ))
                }
            },
        },
        Derivation::Window(w) => {
            if kind != VarType::Boolean {
                return Err(wrong("a boolean"));
            }
            Source::Window {
                origin: date("origin", &w.origin)?,
                event: dated("event", &w.event)?,
                from: w.from,
                to: w.to,
            }
        }
        Derivation::DaysBetween(d) => {
            if !kind.is_numeric() {
                return Err(wrong("days (integer or float)"));
            }
            Source::DaysBetween {
                from: date("from", &d.from)?,
                to: date("to", &d.to)?,
            }
        }
    };
    Ok(Var {
        kind,
        source,
        booleans: None,
        levels: None,
        age_at: None,
    })
}

/// Where the rows of a study's concept sets are, per OMOP domain
/// (`data.postgres.study_concept_sets`).
#[derive(Debug, Clone)]
pub(crate) struct DomainTable {
    pub table: Ident,
    pub person: Ident,
    pub concept: Ident,
    pub date: Ident,
    pub text_ids: bool,
}

/// The CDM table, concept column and start date of each domain.
fn domain_columns(d: Domain) -> (&'static str, &'static str, &'static str) {
    match d {
        Domain::Condition => (
            "condition_occurrence",
            "condition_concept_id",
            "condition_start_date",
        ),
        Domain::Drug => (
            "drug_exposure",
            "drug_concept_id",
            "drug_exposure_start_date",
        ),
        Domain::Measurement => ("measurement", "measurement_concept_id", "measurement_date"),
        Domain::Observation => ("observation", "observation_concept_id", "observation_date"),
    }
}

/// The domain tables a study's concept sets are read from, checked at
/// start-up: each must be readable, with its columns of the right types.
pub(crate) async fn domains(
    pool: &PgPool,
    host: &str,
    cfg: &WarehouseConfig,
) -> Result<(BTreeMap<Domain, DomainTable>, Vec<Table>)> {
    let mut out = BTreeMap::new();
    let mut tables = Vec::new();
    let at = "data.postgres.study_concept_sets";
    for d in Domain::ALL {
        let (name, concept, date) = domain_columns(d);
        let t = Table::load(pool, host, &cfg.schema, name, &format!("{at} ({name})")).await?;
        let person = t.column(
            "person_id",
            &IDS,
            &format!("{at} ({name}.person_id)"),
            "patient ids",
        )?;
        let concept = t.column(
            concept,
            &[Family::Int],
            &format!("{at} ({name}.{concept})"),
            "integer concept ids",
        )?;
        let date = t.column(
            date,
            &[Family::Date],
            &format!("{at} ({name}.{date})"),
            "dates",
        )?;
        out.insert(
            d,
            DomainTable {
                table: t.ident.clone(),
                person: person.ident,
                concept: concept.ident,
                date: date.ident,
                text_ids: person.family == Family::Text,
            },
        );
        tables.push(t);
    }
    Ok((out, tables))
}

/// The person table and its id column.
pub(crate) async fn person(
    pool: &PgPool,
    host: &str,
    cfg: &WarehouseConfig,
) -> Result<(Table, Column)> {
    let t = Table::load(
        pool,
        host,
        &cfg.schema,
        &cfg.person.table,
        "data.postgres.person.table",
    )
    .await?;
    let id = t.column(
        &cfg.person.id,
        &IDS,
        "data.postgres.person.id",
        "integers or text",
    )?;
    Ok((t, id))
}

/// Consent and opt-out tables with the consent files' columns.
pub(crate) struct ConsentCatalog {
    pub consent: Ident,
    pub patient: Column,
    pub purposes: Ident,
    pub valid_from: Ident,
    pub withdrawn_at: Ident,
    pub opt_out: Option<(Ident, Column)>,
    pub tables: Vec<Table>,
}

pub(crate) async fn consent(
    pool: &PgPool,
    host: &str,
    cfg: &WarehouseConfig,
    tables: &super::config::ConsentTables,
) -> Result<ConsentCatalog> {
    let schema = tables.schema.as_deref().unwrap_or(&cfg.schema);
    let f = "data.postgres.consent";
    let t = Table::load(pool, host, schema, &tables.table, &format!("{f}.table")).await?;
    let dates = [Family::Date, Family::Text];
    let out = ConsentCatalog {
        consent: t.ident.clone(),
        patient: t.column(
            &tables.patient_id,
            &IDS,
            &format!("{f}.patient_id"),
            "patient ids",
        )?,
        purposes: t
            .column(
                &tables.purposes,
                &[Family::Text],
                &format!("{f}.purposes"),
                "text (DUO codes)",
            )?
            .ident,
        valid_from: t
            .column(
                &tables.valid_from,
                &dates,
                &format!("{f}.valid_from"),
                "dates",
            )?
            .ident,
        withdrawn_at: t
            .column(
                &tables.withdrawn_at,
                &dates,
                &format!("{f}.withdrawn_at"),
                "dates",
            )?
            .ident,
        opt_out: None,
        tables: vec![t],
    };
    match &tables.opt_out_table {
        None => Ok(out),
        Some(o) => {
            let t = Table::load(pool, host, schema, o, &format!("{f}.opt_out_table")).await?;
            let c = t.column(
                &tables.opt_out_patient_id,
                &IDS,
                &format!("{f}.opt_out_patient_id"),
                "patient ids",
            )?;
            let mut out = out;
            out.opt_out = Some((t.ident.clone(), c));
            out.tables.push(t);
            Ok(out)
        }
    }
}
