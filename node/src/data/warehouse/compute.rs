//! Analyses over the warehouse.
//!
//! Everything but the regressions is aggregated inside PostgreSQL, so only
//! aggregate rows leave the database:
//! - counts (with the complement rule), histograms and quantile bins,
//!   tables and 2x2 tables: counts per group, exact;
//! - Kaplan-Meier: counts per group, follow-up time and event (a few
//!   thousand rows), placed on the grid by the node with the file path's
//!   rule, exact;
//! - summaries: count, sum and sum of squares, total and two largest
//!   magnitudes, and the fixed-point sums a noised summary rests on (exact
//!   integers, as the file path encodes them);
//! - correlations: the per-pair sums.
//!
//! Floating-point sums taken by PostgreSQL add in another order than the
//! file path's (and in parallel workers when the planner uses them), so
//! they equal the file node's to within 1e-12 relative (in practice a few
//! units in the last place), not bit for bit; counts, fixed-point sums and
//! the largest magnitudes are exact.
//!
//! The GLM and Cox rounds read the model's own columns (and nothing else)
//! of the consenting cohort into the node's memory once per fit, ordered
//! by patient id, check the design (complete cases, category sizes) with
//! the file path's code, cache it, and run each round in Rust.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use plexus_core::dp::fixed::{FixedPoint, DP_DIGITS};
use plexus_core::models::correlation::{Missing, PairSums};
use plexus_core::models::design::{ColumnData, Columns, MISSING_LEVEL};
use plexus_core::models::fit::Iteration;
use plexus_core::models::linalg::{packed_index, packed_len};
use plexus_core::models::survival::Tally;
use plexus_core::stats::{FixedSums, Moments, SummarySums};
use plexus_core::{Analysis, ConsentTerms, Error, Purpose, Query, RawStats, Result, VarType};
use sqlx::Row;

use super::catalog::{derive, Family, Var};
use super::sql::{self, Aliases, Param, Params};
use super::{db_error, Consent, Warehouse};
use crate::data::models::{self, Limits};
use crate::data::{blocking, StudyScope};

/// The warehouse as one job's study sees it: the network dictionary with
/// the study's derived variables, and those variables built over this
/// node's mapping. Everything else is the warehouse's (through `Deref`).
pub(super) struct Scope<'a> {
    w: &'a Warehouse,
    dict: std::sync::Arc<plexus_core::Dictionary>,
    /// The study's derived variables the query names.
    extra: BTreeMap<String, Var>,
    /// Fingerprint of the study's derived block (empty for none), in the
    /// keys of cached model data.
    key: String,
}

impl std::ops::Deref for Scope<'_> {
    type Target = Warehouse;
    fn deref(&self) -> &Warehouse {
        self.w
    }
}

impl<'a> Scope<'a> {
    /// `study`'s view of `w` for `query`: the study's derived variables the
    /// query names, built from this node's mapped variables (refused,
    /// naming the variable and the field, when one it reads is not mapped
    /// here as the derivation needs it).
    pub(super) async fn new(w: &'a Warehouse, study: &StudyScope, query: &Query) -> Result<Self> {
        let mut extra = BTreeMap::new();
        let mut named: Vec<String> = query
            .variables()
            .into_iter()
            .filter(|v| study.derived.contains_key(v) || study.concept_sets.contains_key(v))
            .collect();
        if !named.is_empty() {
            let mut mapped = w.vars.clone();
            // The study's concept sets the query names or its derived
            // variables read (directly, or through a first_date), as
            // presences of their domain's rows, each with its date.
            let sets = plexus_core::timeline::inputs(&study.derived, &named)
                .into_iter()
                .filter(|n| study.concept_sets.contains_key(n));
            for name in sets {
                let var = w.study_set(&name, &study.concept_sets[&name]).await?;
                mapped.insert(name.clone(), var.clone());
                extra.insert(name, var);
            }
            named.retain(|n| study.derived.contains_key(n));
            // Every first date (named, or read by a named variable) comes
            // first: a checked definition chains one level, no further.
            let read = named
                .iter()
                .flat_map(|n| study.derived[n].derivation("").ok())
                .flat_map(|how| how.inputs())
                .map(|(_, v, _)| v.to_string())
                .filter(|v| study.derived.contains_key(v));
            let mut order: Vec<String> = Vec::new();
            for n in read.chain(named.iter().cloned()) {
                if !order.contains(&n) {
                    order.push(n);
                }
            }
            order.sort_by_key(|n| study.derived[n].first_date.is_none());
            for name in order {
                let d = &study.derived[&name];
                let at = format!("study variable derived.{name}");
                let how = d.derivation(&at)?;
                let at = format!("{at}.{}", how.key());
                let var = derive(&name, d.kind, how, &at, &mapped, &study.dictionary)?;
                mapped.insert(name.clone(), var.clone());
                extra.insert(name, var);
            }
        }
        Ok(Scope {
            w,
            dict: study.dictionary.clone(),
            extra,
            key: study.fingerprint.clone(),
        })
    }
}

/// The cohort as a relation `t` (columns `pid`, `v0`, ...) with its filter.
struct Relation<'a> {
    from: String,
    aliases: Aliases<'a>,
    params: Params,
}

impl Scope<'_> {
    fn aliases(&self, names: &[String]) -> Result<Aliases<'_>> {
        let mut vars = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let found = self
                .extra
                .get_key_value(n.as_str())
                .or_else(|| self.w.vars.get_key_value(n.as_str()));
            let (name, var) = found.ok_or_else(|| {
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
        params.2 = Some((self.person.ident.sql().to_string(), id.to_string()));
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
            "FROM (SELECT {select} FROM {} p{} WHERE {consent}) t WHERE {filter}",
            self.person.ident.sql(),
            params.joins()
        );
        Ok(Relation {
            from,
            aliases,
            params,
        })
    }

    async fn count(&self, r: &Relation<'_>) -> Result<u64> {
        let text = format!("SELECT count(*)::int8 {}", r.from);
        let n: i64 = self.row(&text, &r.params).await?.get(0);
        Ok(n as u64)
    }

    /// The one row an aggregate statement returns.
    async fn row(&self, text: &str, params: &Params) -> Result<sqlx::postgres::PgRow> {
        params
            .bind(sqlx::query(text))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(&self.host, e))
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
        // Only the cohort's own variables: an analysis variable (a latest
        // measurement, say) would cost its pass over the event table for
        // nothing.
        let cohort_vars = query
            .cohort
            .as_ref()
            .map(|c| c.variables())
            .unwrap_or_default();
        let cohort = self
            .count(
                &self
                    .relation(query, &cohort_vars, purpose, today, true)
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

    /// A summary's sums, taken inside PostgreSQL: count, sum and sum of
    /// squares of the finite values (floating point, so equal to the file
    /// node's to about 1e-15 relative: the order of addition differs), the
    /// fixed-point sums a noised release rests on (exact: the same
    /// rounding, clamping and centring as `FixedPoint::encode`, summed as
    /// integers), and the two largest magnitudes and their total for the
    /// dominance rule.
    async fn summary(
        &self,
        query: &Query,
        names: &[String],
        purpose: &Purpose,
        today: NaiveDate,
        variable: &str,
    ) -> Result<RawStats> {
        let var = self.dict.get(variable)?;
        let mut r = self.relation(query, names, purpose, today, true).await?;
        let alias = r.aliases.get(variable)?.0.clone();
        let fp = FixedPoint::new(variable, var, DP_DIGITS).ok();
        let fixed = match &fp {
            Some(fp) => {
                let (lo, hi) = fp.limits();
                let scale = r.params.push(Param::F64(fp.scale()), "float8");
                let (lo, hi) = (
                    r.params.push(Param::F64(lo as f64), "float8"),
                    r.params.push(Param::F64(hi as f64), "float8"),
                );
                let centre = r.params.push(Param::I64(fp.centre()), "int8");
                // Halves away from zero, as round_to_i64; clamped; centred.
                // x is first held within ±1e300 so that x * scale cannot
                // overflow (PostgreSQL raises where Rust saturates; any
                // such value is clamped to the bounds either way).
                let v = format!("(least(greatest(x, -1e300::float8), 1e300::float8) * {scale})");
                format!(
                    "(least(greatest(trunc({v}) + CASE WHEN abs({v} - trunc({v})) >= 0.5 THEN sign({v}) ELSE 0 END, {lo}), {hi})::int8 - {centre})::numeric"
                )
            }
            None => "0::numeric".into(),
        };
        let squares = product("x", "x");
        let text = format!(
            "WITH s AS (SELECT x, {fixed} AS e FROM (SELECT (t.{alias})::float8 AS x {}) v \
                        WHERE x > '-Infinity'::float8 AND x < 'Infinity'::float8) \
             SELECT count(*)::int8, coalesce(sum(x), 0)::float8, coalesce(sum({squares}), 0)::float8, \
                    coalesce(sum(e), 0)::text, coalesce(sum(e * e), 0)::text, coalesce(sum(abs(x)), 0)::float8, \
                    (SELECT array_agg(a ORDER BY a DESC) FROM (SELECT abs(x) AS a FROM s ORDER BY a DESC LIMIT 2) z) \
             FROM s",
            r.from
        );
        let row = self.row(&text, &r.params).await?;
        let n = row.get::<i64, _>(0) as u64;
        let int = |i: usize| -> Result<i128> {
            row.get::<String, _>(i).parse().map_err(|_| {
                Error::internal("the database returned a fixed-point sum that is not an integer")
            })
        };
        let top: Vec<f64> = row.get::<Option<Vec<f64>>, _>(6).unwrap_or_default();
        let mut largest = [0.0; 2];
        for (slot, v) in largest.iter_mut().zip(&top) {
            *slot = *v;
        }
        Ok(RawStats::Summary(SummarySums {
            moments: Moments {
                n,
                sum: row.get(1),
                sum_squares: row.get(2),
            },
            fixed: match fp {
                Some(fp) => Some((
                    fp,
                    FixedSums {
                        n,
                        sum: int(3)?,
                        squares: int(4)?,
                    },
                )),
                None => None,
            },
            largest,
            total_abs: row.get(5),
            non_negative: var.numeric_bounds().is_some_and(|(lo, _)| lo >= 0.0),
        }))
    }

    /// A correlation's per-pair sums inside PostgreSQL (floating point, to
    /// about 1e-15 relative of the file node's), with the same missing-value
    /// rule and, when the answer will be noised, the same clamping to the
    /// public bounds.
    #[allow(clippy::too_many_arguments)]
    async fn pairs(
        &self,
        query: &Query,
        names: &[String],
        purpose: &Purpose,
        today: NaiveDate,
        variables: &[String],
        missing: Missing,
        private: bool,
    ) -> Result<RawStats> {
        let mut r = self.relation(query, names, purpose, today, true).await?;
        let mut cols = Vec::new();
        for (i, v) in variables.iter().enumerate() {
            let alias = r.aliases.get(v)?.0.clone();
            let raw = format!("(t.{alias})::float8");
            let x = match self.dict.get(v)?.numeric_bounds().filter(|_| private) {
                // Clamped as the file path clamps: an infinity becomes a
                // bound and counts; a missing value stays missing (least
                // and greatest would skip a NULL, hence the CASE).
                Some((lo, hi)) => {
                    let lo = r.params.push(Param::F64(lo), "float8");
                    let hi = r.params.push(Param::F64(hi), "float8");
                    format!("CASE WHEN {raw} IS NOT NULL THEN least(greatest({raw}, {lo}), {hi}) END")
                }
                None => format!(
                    "CASE WHEN {raw} > '-Infinity'::float8 AND {raw} < 'Infinity'::float8 THEN {raw} END"
                ),
            };
            cols.push(format!("{x} AS c{i}"));
        }
        let p = variables.len();
        let all = (0..p)
            .map(|i| format!("c{i} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut aggs = Vec::new();
        for a in 0..p {
            for b in a..p {
                let keep = match missing {
                    Missing::CompleteCases => all.clone(),
                    Missing::Pairwise => format!("c{a} IS NOT NULL AND c{b} IS NOT NULL"),
                };
                let (aa, bb, ab) = (
                    product(&format!("c{a}"), &format!("c{a}")),
                    product(&format!("c{b}"), &format!("c{b}")),
                    product(&format!("c{a}"), &format!("c{b}")),
                );
                aggs.push(format!(
                    "count(*) FILTER (WHERE {keep})::int8, coalesce(sum(c{a}) FILTER (WHERE {keep}), 0)::float8, \
                     coalesce(sum(c{b}) FILTER (WHERE {keep}), 0)::float8, coalesce(sum({aa}) FILTER (WHERE {keep}), 0)::float8, \
                     coalesce(sum({bb}) FILTER (WHERE {keep}), 0)::float8, coalesce(sum({ab}) FILTER (WHERE {keep}), 0)::float8"
                ));
            }
        }
        let text = format!(
            "SELECT {} FROM (SELECT {} {}) s",
            aggs.join(", "),
            cols.join(", "),
            r.from
        );
        let row = self.row(&text, &r.params).await?;
        let mut out = vec![PairSums::default(); packed_len(p)];
        let mut i = 0;
        for a in 0..p {
            for b in a..p {
                out[packed_index(p, a, b)] = PairSums {
                    n: row.get::<i64, _>(i) as u64,
                    sum_x: row.get(i + 1),
                    sum_y: row.get(i + 2),
                    sum_xx: row.get(i + 3),
                    sum_yy: row.get(i + 4),
                    sum_xy: row.get(i + 5),
                };
                i += 6;
            }
        }
        Ok(RawStats::Pairs(out))
    }

    /// Kaplan-Meier counts: PostgreSQL counts the complete cases per group,
    /// follow-up time and event (a few thousand rows however many
    /// patients), and the node places them on the grid with the file
    /// node's own rule, so the counts are exact.
    async fn survival(
        &self,
        query: &Query,
        names: &[String],
        purpose: &Purpose,
        today: NaiveDate,
    ) -> Result<RawStats> {
        let Analysis::KaplanMeier {
            time,
            event,
            group,
            grid,
        } = &query.analysis
        else {
            return Err(Error::internal("not a survival analysis"));
        };
        let points = grid.points()?;
        let groups = query.analysis.survival_groups(&self.dict)?.len();
        let r = self.relation(query, names, purpose, today, true).await?;
        let (ta, tv) = r.aliases.get(time)?;
        let (ea, ev) = r.aliases.get(event)?;
        let number = |alias: &str, kind: VarType| match kind {
            VarType::Boolean => format!("(t.{alias})::int::float8"),
            _ => format!("(t.{alias})::float8"),
        };
        let (t, e) = (number(ta, tv.kind), number(ea, ev.kind));
        let g = match group {
            Some(g) => format!("(t.{})::text", r.aliases.get(g)?.0),
            None => "''::text".into(),
        };
        // Complete cases as the file path takes them: finite numbers.
        let finite = |x: &str| format!("{x} > '-Infinity'::float8 AND {x} < 'Infinity'::float8");
        let text = format!(
            "SELECT {g}, {t}, ({e}) = 1.0, count(*)::int8 {} AND {} AND {} AND {g} IS NOT NULL GROUP BY 1, 2, 3",
            r.from,
            finite(&t),
            finite(&e)
        );
        let levels = match group {
            Some(g) => self.dict.get(g)?.levels(),
            None => vec![String::new()],
        };
        let mut out = vec![Tally::zero(points.len() - 1); groups];
        for row in self.rows(&text, &r.params).await? {
            let (label, t, e, n): (String, f64, bool, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let at = levels.iter().position(|l| *l == label).ok_or_else(|| {
                Error::data(
                    "a survival group holds a value that is not a level of the dictionary; fix the data or the mapping",
                )
            })?;
            if let Some(tally) = out.get_mut(at) {
                tally.add_many(&points, t, e, n as u64);
            }
        }
        Ok(RawStats::Survival(out))
    }
}

/// `a * b` in float8 as Rust multiplies: PostgreSQL raises on overflow
/// and underflow where Rust gives an infinity or zero, and whether a query
/// fails must not depend on one patient's extreme value.
fn product(a: &str, b: &str) -> String {
    format!(
        "CASE WHEN {a} = 0 OR {b} = 0 OR abs({a}) < 1e-150 OR abs({b}) < 1e-150 THEN 0::float8 \
              WHEN abs({a}) > 1e150 OR abs({b}) > 1e150 THEN sign({a}) * sign({b}) * 'Infinity'::float8 \
              ELSE {a} * {b} END"
    )
}

pub(super) async fn run(
    w: &Scope<'_>,
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
            "{}\0{}\0{purpose}\0{today}\0{}\0{}\0{}\0{}",
            w.key,
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
                let (a, d, i) = (analysis.clone(), w.dict.clone(), it.clone());
                let prepared = std::sync::Arc::new(
                    blocking(move || models::prepare(&a, &d, &columns, limits, &i)).await?,
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
            w.summary(query, &names, purpose, today, variable).await?
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
        Analysis::Correlation { variables, missing } => {
            w.pairs(
                query,
                &names,
                purpose,
                today,
                variables,
                *missing,
                limits.private,
            )
            .await?
        }
        Analysis::KaplanMeier { .. } => w.survival(query, &names, purpose, today).await?,
        Analysis::Glm { .. }
        | Analysis::Cox { .. }
        | Analysis::Gbdt { .. }
        | Analysis::ModelPerformance { .. } => {
            return Err(Error::internal("regressions are computed round by round"))
        }
    })
}
