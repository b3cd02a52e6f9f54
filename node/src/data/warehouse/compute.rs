//! Analyses over the warehouse.
//!
//! Counts (with the complement rule), histograms and quantile bins, and
//! tables and 2x2 tables are aggregated inside PostgreSQL: only the count
//! per group leaves the database.
//!
//! Summaries, correlations, Kaplan-Meier and the GLM and Cox rounds read
//! the analysis's own columns (and nothing else) of the consenting cohort
//! into the node's memory, ordered by patient id, and run the same Rust
//! arithmetic as the file path. This is deliberate: their releases rest on
//! floating-point sums whose value depends on the order of addition, on
//! fixed-point encodings and on the dominance rule's largest values, and
//! the regressions check their design (complete cases, category sizes)
//! before any round; summing in SQL would give answers that differ from
//! the file path's in the last bits and could not reuse those checks. The
//! columns stay inside the node, the design is prepared once per fit and
//! cached across rounds like the file path's.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use plexus_core::models::design::{ColumnData, Columns, MISSING_LEVEL};
use plexus_core::models::fit::Iteration;
use plexus_core::stats::SummarySums;
use plexus_core::{Analysis, ConsentTerms, Error, Purpose, Query, RawStats, Result, VarType};
use sqlx::Row;

use super::catalog::Family;
use super::sql::{self, Aliases, Param, Params};
use super::{db_error, Consent, Warehouse};
use crate::data::models::{self, Limits};
use crate::data::{blocking, survival_or_pairs};

/// The cohort as a relation `t` (columns `pid`, `v0`, ...) with its filter.
struct Relation<'a> {
    from: String,
    aliases: Aliases<'a>,
    params: Params,
}

impl Warehouse {
    fn aliases<'a>(&'a self, names: &[String]) -> Result<Aliases<'a>> {
        let mut vars = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let (name, var) = self.vars.get_key_value(n.as_str()).ok_or_else(|| {
                Error::data(format!(
                    "variable \"{n}\" is not mapped at this node (the hospital can add it under [data.postgres.variables] in node.toml; otherwise leave it out of the query)"
                ))
            })?;
            vars.insert(name.as_str(), (format!("v{i}"), var));
        }
        Ok(Aliases { vars })
    }

    /// Who may be counted for `purpose` on `today`, as a condition on `p`.
    async fn consent_filter(
        &self,
        purpose: &Purpose,
        today: NaiveDate,
        params: &mut Params,
    ) -> Result<String> {
        let id = self.id.ident.sql();
        match &self.consent {
            Consent::Tables(c) => {
                // DUO terms are decided in Rust (ConsentTerms), once per
                // distinct purposes text; the database gets the texts that
                // cover the purpose as a bound array.
                let distinct: Vec<Option<String>> = sqlx::query_scalar(&format!(
                    "SELECT DISTINCT btrim(c.{}) FROM {} c",
                    c.purposes.sql(),
                    c.consent.sql()
                ))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(&self.host, e))?;
                let mut covering = Vec::new();
                for terms in distinct {
                    let terms = terms.unwrap_or_default();
                    let parsed = ConsentTerms::parse(&terms).map_err(|e| {
                        Error::data(format!(
                            "consent table at {} holds purposes that do not parse ({}); fix the record, queries fail until then",
                            self.host, e.message
                        ))
                    })?;
                    if parsed.covers(purpose) {
                        covering.push(terms);
                    }
                }
                let purposes = params.push(Param::Texts(covering), "text[]");
                let day = params.push(Param::Text(today.to_string()), "date");
                let mut f = format!(
                    "EXISTS (SELECT 1 FROM {} c WHERE {} AND coalesce(btrim(c.{}), '') = ANY({purposes}) \
                     AND c.{}::date <= {day} AND (c.{w} IS NULL OR c.{w}::date > {day}))",
                    c.consent.sql(),
                    sql::id_match(id, self.id.family, &format!("c.{}", c.patient.ident.sql()), c.patient.family),
                    c.purposes.sql(),
                    c.valid_from.sql(),
                    w = c.withdrawn_at.sql(),
                );
                if let Some((t, col)) = &c.opt_out {
                    f.push_str(&format!(
                        " AND NOT EXISTS (SELECT 1 FROM {} o WHERE {})",
                        t.sql(),
                        sql::id_match(
                            id,
                            self.id.family,
                            &format!("o.{}", col.ident.sql()),
                            col.family
                        )
                    ));
                }
                Ok(f)
            }
            Consent::Files(c) => {
                let arrow = match self.id.family {
                    Family::Int => datafusion::arrow::datatypes::DataType::Int64,
                    _ => datafusion::arrow::datatypes::DataType::Utf8,
                };
                let ids = c.admitted(purpose, today, &arrow).await?;
                Ok(match ids.as_param() {
                    Param::I64s(v) => {
                        let ph = params.push(Param::I64s(v), "int8[]");
                        format!("p.{id} IN (SELECT unnest({ph}))")
                    }
                    other => {
                        let ph = params.push(other, "text[]");
                        format!("p.{id}::text IN (SELECT unnest({ph}))")
                    }
                })
            }
        }
    }

    /// The consenting patients, with the query's variables and, when
    /// `with_cohort`, only those in its cohort.
    async fn relation<'a>(
        &'a self,
        query: &Query,
        names: &[String],
        purpose: &Purpose,
        today: NaiveDate,
        with_cohort: bool,
    ) -> Result<Relation<'a>> {
        let aliases = self.aliases(names)?;
        let mut params = Params::default();
        let id = self.id.ident.sql();
        let mut select = format!("p.{id} AS pid");
        for (alias, var) in aliases.vars.values() {
            select.push_str(&format!(
                ", {} AS {alias}",
                sql::value(var, id, &mut params)
            ));
        }
        let consent = self.consent_filter(purpose, today, &mut params).await?;
        let filter = match (&query.cohort, with_cohort) {
            (Some(c), true) => sql::cohort(c, &aliases, &mut params)?,
            _ => "TRUE".into(),
        };
        let from = format!(
            "FROM (SELECT {select} FROM {} p WHERE {consent}) t WHERE {filter}",
            self.person.ident.sql()
        );
        Ok(Relation {
            from,
            aliases,
            params,
        })
    }

    async fn count(&self, r: &Relation<'_>) -> Result<u64> {
        let text = format!("SELECT count(*)::int8 {}", r.from);
        let n: i64 = r
            .params
            .bind(sqlx::query(&text))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(&self.host, e))?
            .get(0);
        Ok(n as u64)
    }

    async fn rows(&self, text: &str, params: &Params) -> Result<Vec<sqlx::postgres::PgRow>> {
        params
            .bind(sqlx::query(text))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(&self.host, e))
    }

    /// The complement rule, as for files.
    async fn check_complement(
        &self,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
    ) -> Result<Option<u64>> {
        if query.cohort.is_none() || limits.private {
            return Ok(None);
        }
        let population = self
            .count(&self.relation(query, &[], purpose, today, false).await?)
            .await?;
        let cohort = self
            .count(
                &self
                    .relation(query, &query.variables(), purpose, today, true)
                    .await?,
            )
            .await?;
        plexus_core::disclosure::complement(population, cohort, limits.k)?;
        Ok(Some(cohort))
    }

    /// The analysis's variables of the cohort in memory, ordered by id.
    async fn columns(&self, query: &Query, purpose: &Purpose, today: NaiveDate) -> Result<Columns> {
        let names = query.variables();
        let r = self.relation(query, &names, purpose, today, true).await?;
        let wanted: Vec<&str> = query.analysis.variables();
        let mut select = Vec::new();
        let mut kinds = Vec::new();
        for name in &wanted {
            let (alias, var) = r.aliases.get(name)?;
            select.push(match var.kind {
                VarType::Integer | VarType::Float => format!("t.{alias}::float8"),
                VarType::Boolean | VarType::Categorical => format!("t.{alias}::text"),
                VarType::Date => {
                    return Err(Error::invalid(format!(
                        "\"{name}\" is a date and cannot be used in this analysis"
                    )))
                }
            });
            kinds.push((var.kind, self.dict.get(name)?.levels()));
        }
        let order = match self.id.family {
            Family::Text => "t.pid COLLATE \"C\"",
            _ => "t.pid",
        };
        let text = format!("SELECT {} {} ORDER BY {order}", select.join(", "), r.from);
        let rows = self.rows(&text, &r.params).await?;
        let mut out = Columns::new();
        for (i, (name, (kind, levels))) in wanted.iter().zip(kinds).enumerate() {
            let data = if kind.is_numeric() {
                ColumnData::Numeric(
                    rows.iter()
                        .map(|row| row.get::<Option<f64>, _>(i).unwrap_or(f64::NAN))
                        .collect(),
                )
            } else {
                let mut v = Vec::with_capacity(rows.len());
                for row in &rows {
                    v.push(match row.get::<Option<String>, _>(i) {
                        None => MISSING_LEVEL,
                        Some(s) => levels.iter().position(|l| *l == s).ok_or_else(|| {
                            Error::data(format!(
                                "variable \"{name}\" holds a value that is not a level of the dictionary; fix the data or the mapping"
                            ))
                        })? as u32,
                    });
                }
                ColumnData::Levels(v)
            };
            out.insert(name.to_string(), data);
        }
        Ok(out)
    }
}

pub(super) async fn run(
    w: &Warehouse,
    query: &Query,
    purpose: &Purpose,
    today: NaiveDate,
    limits: Limits,
    iteration: Option<&Iteration>,
) -> Result<RawStats> {
    query.validate(&w.dict)?;
    let names = query.variables();
    w.aliases(&names)?;
    let analysis = &query.analysis;
    if analysis.kind().is_iterative() {
        let it = iteration.ok_or_else(|| {
            Error::invalid("a regression job carries no iteration (round and coefficients)")
        })?;
        let key = format!(
            "{}\0{purpose}\0{today}\0{}\0{}\0{}\0{}",
            query.hash(),
            w.fresh_snapshot().await?,
            limits.k,
            limits.max_parameter_share,
            limits.private
        );
        let prepared = match w.models.get(&key) {
            Some(p) => p,
            None => {
                w.check_complement(query, purpose, today, limits).await?;
                let columns = w.columns(query, purpose, today).await?;
                let (a, d) = (analysis.clone(), w.dict.clone());
                let prepared = std::sync::Arc::new(
                    blocking(move || models::prepare(&a, &d, &columns, limits)).await?,
                );
                w.models.put(key, prepared.clone());
                prepared
            }
        };
        let (a, it) = (analysis.clone(), it.clone());
        return blocking(move || models::round(&prepared, &a, &it, limits)).await;
    }
    let cohort_size = w.check_complement(query, purpose, today, limits).await?;
    Ok(match analysis {
        Analysis::Count {} => match cohort_size {
            Some(n) => RawStats::Count(n),
            None => RawStats::Count(
                w.count(&w.relation(query, &[], purpose, today, true).await?)
                    .await?,
            ),
        },
        Analysis::Summary { variable } => {
            let columns = w.columns(query, purpose, today).await?;
            let Some(ColumnData::Numeric(values)) = columns.get(variable) else {
                return Err(Error::internal(
                    "a summary variable was not read as numbers",
                ));
            };
            RawStats::Summary(SummarySums::of(w.dict.get(variable)?, variable, values))
        }
        Analysis::Histogram { variable, edges }
        | Analysis::Quantiles {
            variable, edges, ..
        } => {
            let mut r = w.relation(query, &names, purpose, today, true).await?;
            let alias = r.aliases.get(variable)?.0.clone();
            let bins = edges.len().saturating_sub(1);
            let last = *edges
                .last()
                .ok_or_else(|| Error::invalid("a histogram needs edges"))?;
            let e = r.params.push(Param::F64s(edges.clone()), "float8[]");
            let l = r.params.push(Param::F64(last), "float8");
            // width_bucket counts the edges at or below x, as bin_code's
            // partition point does; x on the last edge goes in the last bin.
            let text = format!(
                "SELECT width_bucket(x, {e})::int8, (x = {l}), count(*)::int8 \
                 FROM (SELECT (t.{alias})::float8 AS x {}) h WHERE x IS NOT NULL GROUP BY 1, 2",
                r.from
            );
            let mut counts = vec![0u64; bins];
            let (mut below, mut above) = (0u64, 0u64);
            for row in w.rows(&text, &r.params).await? {
                let (le, at_last, n): (i64, bool, i64) = (row.get(0), row.get(1), row.get(2));
                let n = n as u64;
                match le {
                    0 => below += n,
                    le if le as usize <= bins => counts[le as usize - 1] += n,
                    _ if at_last && bins > 0 => counts[bins - 1] += n,
                    _ => above += n,
                }
            }
            RawStats::Histogram {
                bins: counts,
                below,
                above,
            }
        }
        Analysis::Table { row, column }
        | Analysis::TwoByTwo {
            exposure: row,
            outcome: column,
        } => {
            let r = w.relation(query, &names, purpose, today, true).await?;
            let (ra, ca) = (&r.aliases.get(row)?.0, &r.aliases.get(column)?.0);
            let text = format!(
                "SELECT t.{ra}::text, t.{ca}::text, count(*)::int8 {} AND t.{ra} IS NOT NULL AND t.{ca} IS NOT NULL GROUP BY 1, 2",
                r.from
            );
            let (rl, cl) = (w.dict.get(row)?.levels(), w.dict.get(column)?.levels());
            let mut cells = vec![0u64; rl.len() * cl.len()];
            for rec in w.rows(&text, &r.params).await? {
                let (a, b, n): (String, String, i64) = (rec.get(0), rec.get(1), rec.get(2));
                let level = |levels: &[String], v: &str, name: &str| {
                    levels.iter().position(|l| l == v).ok_or_else(|| {
                        Error::data(format!(
                            "variable \"{name}\" holds a value that is not a level of the dictionary; fix the data or the mapping"
                        ))
                    })
                };
                cells[level(&rl, &a, row)? * cl.len() + level(&cl, &b, column)?] += n as u64;
            }
            RawStats::Table {
                rows: rl.len() as u32,
                columns: cl.len() as u32,
                cells,
            }
        }
        Analysis::KaplanMeier { .. } | Analysis::Correlation { .. } => {
            let columns = w.columns(query, purpose, today).await?;
            survival_or_pairs(analysis, &w.dict, columns, limits.private).await?
        }
        Analysis::Glm { .. } | Analysis::Cox { .. } => {
            return Err(Error::internal("regressions are computed round by round"))
        }
    })
}
