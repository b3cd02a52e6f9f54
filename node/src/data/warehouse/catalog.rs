//! The mapping checked against the database catalogue at start-up.
//!
//! Every table and column the config names is looked up in
//! `information_schema.columns` (which lists only what the node's role may
//! see) with the names bound as parameters; what comes back is the name as
//! PostgreSQL's own `quote_ident` spells it. That quoted spelling, held in
//! [`Ident`], is the only way a name reaches SQL text, so a name that is
//! not in the catalogue never does.

use std::collections::BTreeMap;

use plexus_core::{Dictionary, Error, Result, VarType};
use sqlx::{PgPool, Row};

use super::super::booleans::BooleanValues;
use super::config::{Pick, VariableSource, WarehouseConfig};
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
        concept: Option<(Ident, i64)>,
        /// The value column and the date that picks a row; `None` maps the
        /// presence of a row (a boolean).
        value: Option<(Column, Ident)>,
        pick: Pick,
    },
}

/// A dictionary variable as this warehouse holds it.
#[derive(Debug, Clone)]
pub(crate) struct Var {
    pub kind: VarType,
    pub source: Source,
    /// A boolean held as codes: the values that mean true and false.
    pub booleans: Option<BooleanValues>,
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

/// Checks every mapped variable against the dictionary and the catalogue.
pub(crate) async fn map_variables(
    pool: &PgPool,
    host: &str,
    cfg: &WarehouseConfig,
    person: &Table,
    id: &Column,
    dict: &Dictionary,
) -> Result<(BTreeMap<String, Var>, Vec<Table>)> {
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
        let (families, want) = wanted(v.kind, booleans.is_some());
        let source = match src {
            VariableSource {
                column: Some(c), ..
            } => Source::Column(person.column(c, families, &format!("{at}.column"), want)?),
            VariableSource {
                table: Some(t),
                person_column,
                concept_column,
                concept_id,
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
                let concept = match (concept_column, concept_id) {
                    (Some(c), Some(id)) => Some((
                        table
                            .column(
                                c,
                                &[Family::Int],
                                &format!("{at}.concept_column"),
                                "integer concept ids",
                            )?
                            .ident,
                        *id,
                    )),
                    _ => None,
                };
                let value = match (value, date_column) {
                    (Some(val), Some(d)) => Some((
                        table.column(val, families, &format!("{at}.value"), want)?,
                        table
                            .column(d, &[Family::Date], &format!("{at}.date_column"), "dates")?
                            .ident,
                    )),
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
                }
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
            },
        );
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
    table: &str,
    opt_out: Option<&str>,
) -> Result<ConsentCatalog> {
    let f = "data.postgres.consent.table";
    let t = Table::load(pool, host, &cfg.schema, table, f).await?;
    let dates = [Family::Date, Family::Text];
    let out = ConsentCatalog {
        consent: t.ident.clone(),
        patient: t.column("patient_id", &IDS, f, "patient ids")?,
        purposes: t
            .column("purposes", &[Family::Text], f, "text (DUO codes)")?
            .ident,
        valid_from: t.column("valid_from", &dates, f, "dates")?.ident,
        withdrawn_at: t.column("withdrawn_at", &dates, f, "dates")?.ident,
        opt_out: None,
        tables: vec![t],
    };
    match opt_out {
        None => Ok(out),
        Some(o) => {
            let f = "data.postgres.consent.opt_out_table";
            let t = Table::load(pool, host, &cfg.schema, o, f).await?;
            let c = t.column("patient_id", &IDS, f, "patient ids")?;
            let mut out = out;
            out.opt_out = Some((t.ident.clone(), c));
            out.tables.push(t);
            Ok(out)
        }
    }
}
