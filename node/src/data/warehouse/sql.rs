//! Queries compiled to SQL text whose identifiers all come from the
//! catalogue-checked mapping ([`Ident`]) or are fixed aliases written here,
//! and whose values (cohort constants, concept ids, category labels,
//! histogram edges, dates, consent purposes, admitted ids) are all bound
//! parameters `$1, $2, ...` with an explicit type.
//!
//! The semantics follow the file path (`data/compile.rs`): SQL's
//! three-valued logic, NaN read as a missing value, text compared byte by
//! byte (`COLLATE "C"`), dates as dates.

use std::collections::BTreeMap;
use std::fmt::Write;

use plexus_core::query::parse_date;
use plexus_core::{Cohort, CompareOp, Error, Result, Value, VarType};

use super::catalog::{Dated, Family, Ident, Source, Var};
use super::config::Pick;

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    I64(i64),
    F64(f64),
    Bool(bool),
    /// Text, also dates as `YYYY-MM-DD` cast by the statement.
    Text(String),
    I64s(Vec<i64>),
    F64s(Vec<f64>),
    Bools(Vec<bool>),
    Texts(Vec<String>),
}

/// Parameters of one statement, in order, and the joins its values need
/// (`LEFT JOIN ... jN ON ...`, written after `FROM person p`).
#[derive(Debug, Default)]
pub(crate) struct Params(
    pub Vec<Param>,
    pub Vec<String>,
    /// The person table and its id column, as the relation's `FROM` names
    /// them, when a date column of it may be read as a relation of its own.
    pub Option<(String, String)>,
);

impl Params {
    /// Adds a value and returns its placeholder with the SQL type `ty`.
    pub fn push(&mut self, p: Param, ty: &str) -> String {
        self.0.push(p);
        format!("${}::{ty}", self.0.len())
    }

    /// The joins the values compiled so far need, to follow `FROM person p`.
    pub fn joins(&self) -> String {
        self.1.iter().map(|j| format!(" {j}")).collect()
    }

    pub fn bind<'q>(
        &self,
        mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        for p in &self.0 {
            q = match p.clone() {
                Param::I64(v) => q.bind(v),
                Param::F64(v) => q.bind(v),
                Param::Bool(v) => q.bind(v),
                Param::Text(v) => q.bind(v),
                Param::I64s(v) => q.bind(v),
                Param::F64s(v) => q.bind(v),
                Param::Bools(v) => q.bind(v),
                Param::Texts(v) => q.bind(v),
            };
        }
        q
    }
}

/// The variable's raw value for the person row `p`.
pub(crate) fn raw(var: &Var, person_id: &str, params: &mut Params) -> String {
    match &var.source {
        Source::Column(c) => format!("p.{}", c.ident.sql()),
        Source::TimeTo {
            origin,
            censor,
            event,
            flag,
        } => {
            let o = value(origin, person_id, params);
            let c = value(censor, person_id, params);
            // The first event after the origin, up to the censoring date:
            // when both dates are one row of an event table each, one join
            // of the event rows to every patient's two dates (a pass over
            // each table), else a probe of the event table per patient.
            let both = is_picked_date(origin, params) && is_picked_date(censor, params);
            let ep = event.person.sql();
            let first = match both {
                true => {
                    let origins = picked(origin, params).expect("a picked date");
                    let censors = picked(censor, params).expect("a picked date");
                    let (d, table, filter) = dated(event, format!("e.{ep} IS NOT NULL"), params);
                    let (od, cd) = (finite_date("o.v"), finite_date("c.v"));
                    let rows = format!(
                        "(SELECT e.{ep} AS pid, min({d}) AS d {table} \
                         JOIN {origins} o ON o.pid = e.{ep} JOIN {censors} c ON c.pid = e.{ep} \
                         WHERE {filter} AND {d} > {od} AND {d} <= {cd} GROUP BY 1)"
                    );
                    format!("{}.d", join(params, &rows, person_id))
                }
                false => {
                    let (d, table, filter) =
                        dated(event, format!("e.{ep} = p.{person_id}"), params);
                    format!("(SELECT min({d}) {table} WHERE {filter} AND {d} > {o} AND {d} <= {c})")
                }
            };
            let known = format!("{o} IS NOT NULL AND {c} IS NOT NULL AND {c} >= {o}");
            match flag {
                true => format!("(CASE WHEN {known} THEN {first} IS NOT NULL END)"),
                false => format!("(CASE WHEN {known} THEN coalesce({first}, {c}) - {o} END)"),
            }
        }
        Source::Window {
            origin,
            event,
            from,
            to,
        } => {
            let o = value(origin, person_id, params);
            // date + int4 is a date; the days are bound as int8 (what the
            // driver sends) and narrowed by the statement.
            let from = format!(
                "({})::int4",
                params.push(Param::I64(i64::from(*from)), "int8")
            );
            let to = format!(
                "({})::int4",
                params.push(Param::I64(i64::from(*to)), "int8")
            );
            // An origin that is one row of an event table (a first date,
            // the usual index): the patients with an event row in the
            // window, as one join of the event rows to every patient's
            // origin (a hash join, one pass over each table), instead of a
            // probe of the event table per patient.
            let ep = event.person.sql();
            if is_picked_date(origin, params) {
                let origins = picked(origin, params).expect("a picked date");
                let (d, table, filter) = dated(event, format!("e.{ep} IS NOT NULL"), params);
                let od = finite_date("o.v");
                let rows = format!(
                    "(SELECT DISTINCT e.{ep} AS pid {table} JOIN {origins} o ON o.pid = e.{ep} \
                     WHERE {filter} AND {d} BETWEEN {od} + {from} AND {od} + {to})"
                );
                let j = join(params, &rows, person_id);
                return format!("(CASE WHEN {o} IS NOT NULL THEN {j}.pid IS NOT NULL END)");
            }
            let (d, table, filter) = dated(event, format!("e.{ep} = p.{person_id}"), params);
            format!(
                "(CASE WHEN {o} IS NOT NULL THEN EXISTS (SELECT 1 {table} WHERE {filter} AND {d} BETWEEN {o} + {from} AND {o} + {to}) END)"
            )
        }
        Source::DaysBetween { from, to } => {
            let (f, t) = (value(from, person_id, params), value(to, person_id, params));
            format!("({t} - {f})")
        }
        Source::Event {
            table,
            person,
            concept,
            value,
            ..
        } => {
            match value {
                // Uncorrelated, so PostgreSQL reads the event table once into
                // a hash (a "hashed SubPlan") instead of probing it per
                // patient; no NULL ids, so the answer is true or false.
                None => {
                    let only =
                        concept_filter(concept, format!("e.{} IS NOT NULL", person.sql()), params);
                    format!(
                        "coalesce(p.{person_id} IN (SELECT e.{} FROM {} e WHERE {only}), false)",
                        person.sql(),
                        table.sql()
                    )
                }
                Some(_) => {
                    let rows = picked(var, params).expect("an event table's value");
                    format!("{}.v", join(params, &rows, person_id))
                }
            }
        }
    }
}

/// `filter` and, when there is a concept set, its rows only.
fn concept_filter(
    concept: &Option<(Ident, Vec<i64>)>,
    mut filter: String,
    params: &mut Params,
) -> String {
    if let Some((col, ids)) = concept {
        let _ = match ids.as_slice() {
            [one] => {
                let ph = params.push(Param::I64(*one), "int8");
                write!(filter, " AND e.{} = {ph}", col.sql())
            }
            _ => {
                let ph = params.push(Param::I64s(ids.clone()), "int8[]");
                write!(filter, " AND e.{} = ANY({ph})", col.sql())
            }
        };
    }
    filter
}

/// For a variable that is one row of an event table (the latest or first
/// value by date), each patient's row as a relation `(pid, v)` of the raw
/// value; `None` for any other variable.
fn picked(var: &Var, params: &mut Params) -> Option<String> {
    if let (Source::Column(c), Some((table, id))) = (&var.source, &params.2) {
        return Some(format!(
            "(SELECT pp.{id} AS pid, pp.{} AS v FROM {table} pp)",
            c.ident.sql()
        ));
    }
    let Source::Event {
        table,
        person,
        concept,
        value: Some((v, date)),
        pick,
        text_ids,
        ..
    } = &var.source
    else {
        return None;
    };
    let filter = concept_filter(concept, format!("e.{} IS NOT NULL", person.sql()), params);
    let dir = match pick {
        Pick::Latest => "DESC",
        Pick::First => "ASC",
    };
    let v = v.ident.sql();
    // One ordered pass over the event table: each patient's first row in
    // (date, value) order; not a subquery per patient. Ties on the date
    // are broken by the value, so the answer does not depend on the
    // physical row order. Text ids are grouped byte by byte: the same
    // groups (equality is bytewise), sorted twice as fast as under a
    // locale's collation.
    let by = match text_ids {
        true => format!("(e.{} COLLATE \"C\")", person.sql()),
        false => format!("e.{}", person.sql()),
    };
    Some(format!(
        "(SELECT DISTINCT ON ({by}) e.{pc} AS pid, e.{v} AS v FROM {} e \
         WHERE {filter} AND e.{v} IS NOT NULL \
         ORDER BY {by}, e.{} {dir} NULLS LAST, e.{v} {dir})",
        table.sql(),
        date.sql(),
        pc = person.sql(),
    ))
}

/// Whether `var` is a date read as it is (its value its raw value, made
/// finite, as [`value`] reads a date) that [`picked`] gives as a relation;
/// found out without pushing anything.
fn is_picked_date(var: &Var, params: &Params) -> bool {
    var.kind == VarType::Date
        && var.levels.is_none()
        && var.booleans.is_none()
        && var.age_at.is_none()
        && match var.source {
            Source::Event { value: Some(_), .. } => true,
            Source::Column(_) => params.2.is_some(),
            _ => false,
        }
}

/// An event's rows as `e`: their date, `FROM table e`, and `on` (the
/// patient `p`'s rows, or every patient's) with its concept set, for a
/// subquery to finish.
fn dated(event: &Dated, on: String, params: &mut Params) -> (String, String, String) {
    (
        finite_date(&format!("e.{}", event.date.sql())),
        format!("FROM {} e", event.table.sql()),
        concept_filter(&event.concept, on, params),
    )
}

/// Joins `relation` (columns `pid`, ...) to the person row `p`; its alias.
fn join(params: &mut Params, relation: &str, person_id: &str) -> String {
    let j = format!("j{}", params.1.len());
    params.1.push(format!(
        "LEFT JOIN {relation} {j} ON {j}.pid = p.{person_id}"
    ));
    j
}

/// A date or timestamp as a date, ±infinity read as missing.
fn finite_date(x: &str) -> String {
    format!("NULLIF(NULLIF(({x})::date, 'infinity'::date), '-infinity'::date)")
}

/// The value in its canonical type: int8, float8 with NaN as NULL, boolean,
/// text, date.
pub(crate) fn value(var: &Var, person_id: &str, params: &mut Params) -> String {
    let r = raw(var, person_id, params);
    if let Some(l) = &var.levels {
        // The concept id's position among the listed ones picks its
        // category; an id listed nowhere (0, "no matching concept",
        // included) reads as missing. The raw value is read once.
        let ids = params.push(Param::I64s(l.ids.clone()), "int8[]");
        let labels = params.push(Param::Texts(l.labels.clone()), "text[]");
        return format!("({labels})[array_position({ids}, ({r})::int8)]");
    }
    if let (Some(at), Source::Column(c)) = (var.age_at, &var.source) {
        let at = params.push(Param::Text(at.to_string()), "date");
        let age = match c.family {
            // OHDSI's convention (ATLAS's age at index): the year's
            // difference, whatever the month.
            Family::Int => format!("(extract(year FROM {at})::int8 - ({r})::int8)"),
            // Completed years from a birth date.
            _ => format!("extract(year FROM age({at}, ({r})::date))::int8"),
        };
        return match var.kind {
            VarType::Float => format!("({age})::float8"),
            _ => age,
        };
    }
    if let (VarType::Boolean, Some(b)) = (var.kind, &var.booleans) {
        // Codes compared as text, as the file path does; the raw value (a
        // subquery for an event table) is read once: its position among
        // the true values then the false ones says which it is, and a
        // value in neither has none, so it reads as missing.
        let codes: Vec<String> = b
            .true_values
            .iter()
            .chain(&b.false_values)
            .cloned()
            .collect();
        let codes = params.push(Param::Texts(codes), "text[]");
        let trues = params.push(Param::I64(b.true_values.len() as i64), "int8");
        return format!("(array_position({codes}, ({r})::text) <= {trues})");
    }
    match var.kind {
        VarType::Integer => format!("({r})::int8"),
        VarType::Float => format!("NULLIF(({r})::float8, 'NaN'::float8)"),
        VarType::Boolean => format!("({r})::boolean"),
        VarType::Categorical => format!("({r})::text"),
        // An infinite date (a warehouse's 'infinity' end date) is no
        // date: day arithmetic on it would fail the whole query.
        VarType::Date => finite_date(&r),
    }
}

/// Variables a query reads, each under a fixed alias `v0, v1, ...` of the
/// inner select.
pub(crate) struct Aliases<'a> {
    pub vars: BTreeMap<&'a str, (String, &'a Var)>,
}

impl<'a> Aliases<'a> {
    pub fn get(&self, name: &str) -> Result<&(String, &'a Var)> {
        self.vars.get(name).ok_or_else(|| {
            Error::data(format!(
                "variable \"{name}\" is not mapped at this node (the hospital can add it under [data.postgres.variables] in node.toml; otherwise leave it out of the query)"
            ))
        })
    }
}

pub(crate) fn cohort(c: &Cohort, a: &Aliases<'_>, params: &mut Params) -> Result<String> {
    Ok(match c {
        Cohort::And(items) | Cohort::Or(items) => {
            if items.is_empty() {
                return Err(Error::invalid("cohort has an empty \"and\" or \"or\""));
            }
            let op = if matches!(c, Cohort::And(_)) {
                " AND "
            } else {
                " OR "
            };
            let parts = items
                .iter()
                .map(|i| cohort(i, a, params))
                .collect::<Result<Vec<_>>>()?;
            format!("({})", parts.join(op))
        }
        Cohort::Not(inner) => format!("(NOT {})", cohort(inner, a, params)?),
        Cohort::Compare {
            variable,
            op,
            value,
        } => {
            let (lhs, rhs) = operands(variable, a, std::slice::from_ref(value), params, false)?;
            let op = match op {
                CompareOp::Eq => "=",
                CompareOp::Ne => "<>",
                CompareOp::Lt => "<",
                CompareOp::Le => "<=",
                CompareOp::Gt => ">",
                CompareOp::Ge => ">=",
            };
            format!("({lhs} {op} {rhs})")
        }
        Cohort::In { variable, values } => {
            let (lhs, rhs) = operands(variable, a, values, params, true)?;
            format!("({lhs} = ANY({rhs}))")
        }
        Cohort::IsNull { variable } => format!("(t.{} IS NULL)", a.get(variable)?.0),
        Cohort::NotNull { variable } => format!("(t.{} IS NOT NULL)", a.get(variable)?.0),
    })
}

/// The column side and the bound side of a comparison, in one type, as
/// `data/compile.rs` types them. With `list` the bound side is one array.
fn operands(
    name: &str,
    a: &Aliases<'_>,
    values: &[Value],
    params: &mut Params,
    list: bool,
) -> Result<(String, String)> {
    let (alias, var) = a.get(name)?;
    let col = format!("t.{alias}");
    let mismatch = |v: &Value| {
        Error::invalid(format!(
            "\"{name}\" is {} and cannot be compared with {v}",
            var.kind
        ))
    };
    let one = |params: &mut Params, p: Param, ty: &str| params.push(p, ty);
    match var.kind {
        VarType::Integer | VarType::Float => {
            let all_int = values.iter().all(|v| matches!(v, Value::Integer(_)));
            if var.kind == VarType::Integer && all_int {
                let xs = values
                    .iter()
                    .map(|v| match v {
                        Value::Integer(i) => Ok(*i),
                        other => Err(mismatch(other)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let rhs = match list {
                    true => params.push(Param::I64s(xs), "int8[]"),
                    false => one(params, Param::I64(xs[0]), "int8"),
                };
                return Ok((col, rhs));
            }
            let xs = values
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => Ok(*i as f64),
                    Value::Float(x) => Ok(*x),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<Vec<_>>>()?;
            let rhs = match list {
                true => params.push(Param::F64s(xs), "float8[]"),
                false => one(params, Param::F64(xs[0]), "float8"),
            };
            Ok((format!("({col})::float8"), rhs))
        }
        VarType::Boolean => {
            let xs = values
                .iter()
                .map(|v| match v {
                    Value::Boolean(b) => Ok(*b),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<Vec<_>>>()?;
            let rhs = match list {
                true => params.push(Param::Bools(xs), "boolean[]"),
                false => one(params, Param::Bool(xs[0]), "boolean"),
            };
            Ok((col, rhs))
        }
        VarType::Categorical => {
            let xs = values
                .iter()
                .map(|v| match v {
                    Value::Text(s) => Ok(s.clone()),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<Vec<_>>>()?;
            let rhs = match list {
                true => params.push(Param::Texts(xs), "text[]"),
                false => one(params, Param::Text(xs[0].clone()), "text"),
            };
            Ok((format!("({col} COLLATE \"C\")"), rhs))
        }
        VarType::Date => {
            let xs = values
                .iter()
                .map(|v| match v {
                    Value::Text(s) => parse_date(s).map(|d| d.to_string()).ok_or_else(|| {
                        Error::invalid(format!(
                            "\"{s}\" is not a date for \"{name}\"; write dates as YYYY-MM-DD"
                        ))
                    }),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<Vec<_>>>()?;
            let rhs = match list {
                true => params.push(Param::Texts(xs), "date[]"),
                false => one(params, Param::Text(xs[0].clone()), "date"),
            };
            Ok((col, rhs))
        }
    }
}

/// `p.id` compared with an id column of another table, cast when one side
/// holds integers and the other text.
pub(crate) fn id_match(person_id: &str, person: Family, other: &str, family: Family) -> String {
    if person == family {
        format!("{other} = p.{person_id}")
    } else {
        format!("btrim({other}::text) = p.{person_id}::text")
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{Column, Family, Ident, Source, Var};
    use super::*;

    fn var(kind: VarType, column: &str) -> Var {
        Var {
            kind,
            source: Source::Column(Column {
                ident: Ident::trusted(column),
                family: Family::Text,
                data_type: "text".into(),
            }),
            booleans: None,
            levels: None,
            age_at: None,
        }
    }

    /// Codes reach the statement as parameters too.
    #[test]
    fn boolean_codes_are_bound() {
        let mut died = var(VarType::Boolean, "died_yn");
        died.booleans = Some(crate::data::BooleanValues {
            true_values: vec!["Y".into(), "'; --".into()],
            false_values: vec!["N".into()],
            missing_values: vec!["U".into()],
        });
        let mut params = Params::default();
        let text = value(&died, "person_id", &mut params);
        assert_eq!(
            text,
            "(array_position($1::text[], (p.died_yn)::text) <= $2::int8)"
        );
        assert_eq!(
            params.0,
            vec![
                Param::Texts(vec!["Y".into(), "'; --".into(), "N".into()]),
                Param::I64(2),
            ]
        );
    }

    /// Whatever a cohort carries ends up in the parameters, never in the text.
    #[test]
    fn values_are_bound_never_pasted() {
        let payload = "'; DROP TABLE person; -- $1 \" \\";
        let (sex, smoking, day, age) = (
            var(VarType::Categorical, "sex"),
            var(VarType::Categorical, "smoking_status"),
            var(VarType::Date, "inclusion_date"),
            var(VarType::Float, "age_years"),
        );
        let aliases = Aliases {
            vars: [
                ("sex", ("v0".to_string(), &sex)),
                ("smoking", ("v1".to_string(), &smoking)),
                ("inclusion_date", ("v2".to_string(), &day)),
                ("age", ("v3".to_string(), &age)),
            ]
            .into_iter()
            .collect(),
        };
        let either: Cohort = serde_json::from_str(&format!(
            r#"{{"or": [{{"compare": {{"variable": "sex", "op": "=", "value": {p}}}}},
                        {{"in": {{"variable": "smoking", "values": ["never", {p}]}}}},
                        {{"not": {{"compare": {{"variable": "age", "op": "<", "value": 1e308}}}}}},
                        {{"compare": {{"variable": "inclusion_date", "op": ">=", "value": "2020-02-29"}}}}]}}"#,
            p = serde_json::to_string(payload).unwrap()
        ))
        .unwrap();
        let mut params = Params::default();
        let text = cohort_sql(&either, &aliases, &mut params);
        assert!(
            !text.contains("DROP") && !text.contains("never") && !text.contains("2020"),
            "{text}"
        );
        assert_eq!(
            text,
            "(((t.v0 COLLATE \"C\") = $1::text) OR ((t.v1 COLLATE \"C\") = ANY($2::text[])) \
             OR (NOT ((t.v3)::float8 < $3::float8)) OR (t.v2 >= $4::date))"
        );
        assert_eq!(
            params.0,
            vec![
                Param::Text(payload.into()),
                Param::Texts(vec!["never".into(), payload.into()]),
                Param::F64(1e308),
                Param::Text("2020-02-29".into()),
            ]
        );
        // An unmapped variable is an error, not a column name.
        let bad: Cohort = serde_json::from_str(r#"{"is_null": {"variable": "x\"; --"}}"#).unwrap();
        assert!(cohort(&bad, &aliases, &mut params).is_err());
    }

    fn cohort_sql(c: &Cohort, a: &Aliases<'_>, p: &mut Params) -> String {
        cohort(c, a, p).unwrap()
    }
}
