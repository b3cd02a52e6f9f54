//! Compiles a cohort into a DataFusion expression over the node's local
//! columns. The expression is built from typed `Expr` values, never from SQL
//! text, and follows SQL's three-valued logic like `plexus_core::eval`: a
//! condition on a missing value is unknown and the row is left out.
//!
//! Floating-point NaN is read as a missing value everywhere (cohorts,
//! summaries, histograms), so it neither matches a condition nor poisons a
//! sum.

use chrono::NaiveDate;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, ScalarValue};
use datafusion::prelude::{cast, in_list, lit, try_cast, when, Expr};
use plexus_core::query::parse_date;
use plexus_core::{Cohort, CompareOp, Error, Result, Value, VarType};

use super::booleans::BooleanValues;

/// A dictionary variable as it is stored at this node.
#[derive(Debug, Clone)]
pub(crate) struct Mapped {
    pub kind: VarType,
    /// Local column name, exactly as in the file (case preserved).
    pub column: String,
    /// Arrow type of the local column.
    pub dtype: DataType,
    /// A boolean held as codes: the values that mean true and false.
    pub booleans: Option<BooleanValues>,
}

/// A column by its exact name: `col("Name")` would parse and lowercase it.
pub(crate) fn column(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

pub(crate) fn is_int(t: &DataType) -> bool {
    t.is_integer()
}

pub(crate) fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

pub(crate) fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(_, v) if is_string(v))
}

impl Mapped {
    /// The variable's value in its canonical type: integers as stored,
    /// floats as Float64 with NaN as null, booleans (also those held as
    /// codes) as Boolean, categories as strings, dates as Date32.
    pub fn value(&self) -> Expr {
        let c = column(&self.column);
        if let (VarType::Boolean, Some(b)) = (self.kind, &self.booleans) {
            // Codes compared as text; any other value reads as missing (the
            // start-up check refused those present then).
            let text = cast(c, DataType::Utf8);
            let list = |l: &[String]| l.iter().map(|v| lit(v.as_str())).collect();
            return when(
                in_list(text.clone(), list(&b.true_values), false),
                lit(true),
            )
            .when(in_list(text, list(&b.false_values), false), lit(false))
            .end()
            .expect("a case with two branches is valid");
        }
        match self.kind {
            VarType::Float if is_float(&self.dtype) => {
                let x = cast(c, DataType::Float64);
                let finite_or_inf = x
                    .clone()
                    .between(lit(f64::NEG_INFINITY), lit(f64::INFINITY));
                // Arrow orders NaN above +inf, so this is false for NaN only.
                when(finite_or_inf, x)
                    .end()
                    .expect("a case with one branch is valid")
            }
            VarType::Float => cast(c, DataType::Float64),
            VarType::Categorical if matches!(self.dtype, DataType::Dictionary(..)) => {
                cast(c, DataType::Utf8)
            }
            VarType::Date if self.dtype == DataType::Date32 => c,
            VarType::Date if is_string(&self.dtype) => try_cast(c, DataType::Date32),
            VarType::Date => cast(c, DataType::Date32),
            _ => c,
        }
    }

    /// The value as Float64, for sums and bins.
    pub fn as_f64(&self) -> Expr {
        match self.kind {
            VarType::Float => self.value(),
            _ => cast(self.value(), DataType::Float64),
        }
    }
}

/// Looks up the mapping of a variable the query names.
pub(crate) type Lookup<'a> = dyn Fn(&str) -> Result<&'a Mapped> + 'a;

pub(crate) fn compile(cohort: &Cohort, lookup: &Lookup<'_>) -> Result<Expr> {
    Ok(match cohort {
        Cohort::And(items) | Cohort::Or(items) => {
            let is_and = matches!(cohort, Cohort::And(_));
            let mut exprs = items.iter().map(|c| compile(c, lookup));
            let first = exprs
                .next()
                .ok_or_else(|| Error::invalid("cohort has an empty \"and\" or \"or\""))??;
            exprs.try_fold(first, |acc, e| {
                let e = e?;
                Ok::<_, Error>(if is_and { acc.and(e) } else { acc.or(e) })
            })?
        }
        Cohort::Not(c) => !compile(c, lookup)?,
        Cohort::Compare {
            variable,
            op,
            value,
        } => {
            let m = lookup(variable)?;
            let (lhs, rhs) = operands(variable, m, std::slice::from_ref(value))?;
            let rhs = rhs
                .into_iter()
                .next()
                .expect("one value in, one literal out");
            match op {
                CompareOp::Eq => lhs.eq(rhs),
                CompareOp::Ne => lhs.not_eq(rhs),
                CompareOp::Lt => lhs.lt(rhs),
                CompareOp::Le => lhs.lt_eq(rhs),
                CompareOp::Gt => lhs.gt(rhs),
                CompareOp::Ge => lhs.gt_eq(rhs),
            }
        }
        Cohort::In { variable, values } => {
            let m = lookup(variable)?;
            let (lhs, list) = operands(variable, m, values)?;
            in_list(lhs, list, false)
        }
        Cohort::IsNull { variable } => lookup(variable)?.value().is_null(),
        Cohort::NotNull { variable } => lookup(variable)?.value().is_not_null(),
    })
}

/// The column side and the literal side of a comparison, in one type.
/// Integers compare exactly with integer literals; any float literal turns
/// the comparison into Float64, as the reference evaluator does.
fn operands(name: &str, m: &Mapped, values: &[Value]) -> Result<(Expr, Vec<Expr>)> {
    let mismatch = |v: &Value| {
        Error::invalid(format!(
            "\"{name}\" is {} and cannot be compared with {v}",
            m.kind
        ))
    };
    match m.kind {
        VarType::Integer | VarType::Float => {
            let all_int = values.iter().all(|v| matches!(v, Value::Integer(_)));
            if m.kind == VarType::Integer && all_int {
                let lits = values
                    .iter()
                    .map(|v| match v {
                        Value::Integer(i) => Ok(lit(*i)),
                        other => Err(mismatch(other)),
                    })
                    .collect::<Result<_>>()?;
                return Ok((m.value(), lits));
            }
            let lits = values
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => Ok(lit(*i as f64)),
                    Value::Float(x) => Ok(lit(*x)),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<_>>()?;
            Ok((m.as_f64(), lits))
        }
        VarType::Boolean => {
            let lits = values
                .iter()
                .map(|v| match v {
                    Value::Boolean(b) => Ok(lit(*b)),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<_>>()?;
            Ok((m.value(), lits))
        }
        VarType::Categorical => {
            let lits = values
                .iter()
                .map(|v| match v {
                    Value::Text(s) => Ok(lit(s.as_str())),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<_>>()?;
            Ok((m.value(), lits))
        }
        VarType::Date => {
            let lits = values
                .iter()
                .map(|v| match v {
                    Value::Text(s) => parse_date(s).map(date_literal).ok_or_else(|| {
                        Error::invalid(format!(
                            "\"{s}\" is not a date for \"{name}\"; write dates as YYYY-MM-DD"
                        ))
                    }),
                    other => Err(mismatch(other)),
                })
                .collect::<Result<_>>()?;
            Ok((m.value(), lits))
        }
    }
}

pub(crate) fn date_literal(d: NaiveDate) -> Expr {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let days = (d - epoch).num_days() as i32;
    lit(ScalarValue::Date32(Some(days)))
}
