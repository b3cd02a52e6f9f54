//! Checking a query against the dictionary: every variable, type,
//! operator, option and limit, with errors that say what is wrong and how to
//! fix it.

use super::*;
use crate::dictionary::VarType;

pub(super) fn analysis(analysis: &Analysis, dict: &Dictionary) -> Result<()> {
    match analysis {
        Analysis::Count {} => Ok(()),
        Analysis::Summary { variable } => numeric(dict, variable, "summary").map(|_| ()),
        Analysis::Histogram { variable, edges } => {
            numeric(dict, variable, "histogram")?;
            validate_edges(edges)
        }
        Analysis::Table { row, column } => {
            discrete(dict, row, "a table")?;
            discrete(dict, column, "a table")?;
            different(row, column, "a table")
        }
        Analysis::Glm {
            family,
            outcome,
            covariates,
            intercept,
            ..
        } => {
            let v = dict.get(outcome)?;
            let fits = match family {
                Family::Gaussian => v.kind.is_numeric(),
                Family::Binomial => v.kind == VarType::Boolean,
                Family::Poisson => v.kind == VarType::Integer,
            };
            if !fits {
                let want = match family {
                    Family::Gaussian => "a numeric outcome",
                    Family::Binomial => "a boolean outcome",
                    Family::Poisson => "an integer (count) outcome",
                };
                return Err(Error::invalid(format!(
                    "a {} model needs {want}, and \"{outcome}\" is {}",
                    family.as_str(),
                    v.kind
                )));
            }
            covariate_list(dict, covariates, &[outcome], *intercept)?;
            fit_settings(analysis)
        }
        Analysis::Gbdt {
            loss,
            outcome,
            covariates,
            trees,
            depth,
            learning_rate,
            lambda,
            min_child_weight,
            validation,
            early_stopping,
            ..
        } => {
            let v = dict.get(outcome)?;
            let fits = match loss {
                Loss::Logistic => v.kind == VarType::Boolean,
                Loss::Squared => v.kind.is_numeric(),
            };
            if !fits {
                let want = match loss {
                    Loss::Logistic => "a boolean outcome",
                    Loss::Squared => "a numeric outcome",
                };
                return Err(Error::invalid(format!(
                    "a gbdt with {} loss needs {want}, and \"{outcome}\" is {}",
                    loss.as_str(),
                    v.kind
                )));
            }
            if covariates.is_empty() {
                return Err(Error::invalid("a gbdt needs at least one covariate"));
            }
            covariate_list(dict, covariates, &[outcome], true)?;
            let within = |name: &str, value: Option<u32>, lo: u32, hi: u32| match value {
                Some(v) if !(lo..=hi).contains(&v) => Err(Error::invalid(format!(
                    "gbdt \"{name}\" must be between {lo} and {hi}, not {v}"
                ))),
                _ => Ok(()),
            };
            within("trees", *trees, 1, gbdt::MAX_TREES)?;
            within("depth", *depth, 1, gbdt::MAX_DEPTH)?;
            if learning_rate.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
                return Err(Error::invalid(
                    "gbdt \"learning_rate\" must be above 0 and at most 1",
                ));
            }
            for (name, value) in [("lambda", lambda), ("min_child_weight", min_child_weight)] {
                if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                    return Err(Error::invalid(format!(
                        "gbdt \"{name}\" must be a finite number of at least 0"
                    )));
                }
            }
            within("early_stopping", *early_stopping, 1, gbdt::MAX_TREES)?;
            if early_stopping.is_some() && !*validation {
                return Err(Error::invalid(
                    "gbdt \"early_stopping\" needs \"validation\": true, which holds out patients to measure the loss on",
                ));
            }
            analysis.gbdt_features(dict).map(|_| ())
        }
        Analysis::Cox {
            time,
            event,
            covariates,
            ..
        } => {
            survival_variables(dict, time, event)?;
            if covariates.is_empty() {
                return Err(Error::invalid(
                    "a Cox model needs at least one covariate (use kaplan_meier for curves without covariates)",
                ));
            }
            covariate_list(dict, covariates, &[time, event], false)?;
            fit_settings(analysis)
        }
        Analysis::KaplanMeier {
            time,
            event,
            group,
            grid,
        } => {
            survival_variables(dict, time, event)?;
            if let Some(g) = group {
                discrete(dict, g, "a survival group")?;
                different(g, time, "a survival analysis")?;
                different(g, event, "a survival analysis")?;
            }
            grid.points().map(|_| ())
        }
        Analysis::Correlation { variables, .. } => {
            if variables.len() < 2 || variables.len() > MAX_CORRELATION_VARIABLES {
                return Err(Error::invalid(format!(
                    "a correlation needs between 2 and {MAX_CORRELATION_VARIABLES} variables, got {}",
                    variables.len()
                )));
            }
            for v in variables {
                numeric(dict, v, "correlation")?;
            }
            unique(variables, "a correlation")
        }
        Analysis::Quantiles {
            variable,
            edges,
            probabilities,
        } => {
            numeric(dict, variable, "quantile")?;
            validate_edges(edges)?;
            if probabilities.is_empty() || probabilities.len() > MAX_PROBABILITIES {
                return Err(Error::invalid(format!(
                    "quantiles need between 1 and {MAX_PROBABILITIES} probabilities"
                )));
            }
            if let Some(p) = probabilities.iter().find(|p| !(0.0..=1.0).contains(*p)) {
                return Err(Error::invalid(format!(
                    "probability {p} is not between 0 and 1"
                )));
            }
            Ok(())
        }
        Analysis::TwoByTwo { exposure, outcome } => {
            for v in [exposure, outcome] {
                discrete(dict, v, "a two-by-two table")?;
                let levels = dict.get(v)?.levels();
                if levels.len() != 2 {
                    return Err(Error::invalid(format!(
                        "a two-by-two table needs binary variables, and \"{v}\" has {} levels (use a table)",
                        levels.len()
                    )));
                }
            }
            different(exposure, outcome, "a two-by-two table")
        }
        Analysis::ModelPerformance {
            model,
            model_hash,
            inputs,
            outcome,
            subgroups,
            thresholds,
            calibration_bins,
        } => {
            crate::dictionary::check_identifier("model name", model)?;
            if !(model_hash.is_empty()
                || (model_hash.len() == 64
                    && model_hash
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))))
            {
                return Err(Error::invalid(format!(
                    "model_hash \"{model_hash}\" is not a SHA-256 in lowercase hex (`plexus model list` prints each model's)"
                )));
            }
            let v = dict.get(outcome)?;
            if v.kind != VarType::Boolean {
                return Err(Error::invalid(format!(
                    "a model_performance needs a boolean outcome, and \"{outcome}\" is {}",
                    v.kind
                )));
            }
            for name in inputs {
                dict.get(name)?;
            }
            // A model that reads the outcome could write it into its
            // predictions, which pieces and sums would then carry.
            if inputs.contains(outcome) {
                return Err(Error::invalid(format!(
                    "model \"{model}\" reads \"{outcome}\", the outcome it would be validated against; validate it against another outcome"
                )));
            }
            unique(subgroups, "a model_performance's subgroups")?;
            if let Some(s) = subgroups.iter().find(|s| *s == outcome) {
                return Err(Error::invalid(format!(
                    "\"{s}\" is the outcome and cannot be a subgroup"
                )));
            }
            crate::models::performance::groups(dict, subgroups)?;
            crate::models::performance::PerformanceOptions::new(thresholds, *calibration_bins)
                .map(|_| ())
        }
    }
}

fn different(a: &str, b: &str, what: &str) -> Result<()> {
    if a == b {
        return Err(Error::invalid(format!(
            "{what} needs two different variables, got \"{a}\" twice"
        )));
    }
    Ok(())
}

fn unique(names: &[String], what: &str) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    match names.iter().find(|n| !seen.insert(n.as_str())) {
        Some(dup) => Err(Error::invalid(format!("{what} lists \"{dup}\" twice"))),
        None => Ok(()),
    }
}

fn covariate_list(
    dict: &Dictionary,
    covariates: &[String],
    taken: &[&String],
    intercept: bool,
) -> Result<()> {
    if covariates.len() > MAX_COVARIATES {
        return Err(Error::invalid(format!(
            "a model may have at most {MAX_COVARIATES} covariates, got {}",
            covariates.len()
        )));
    }
    if covariates.is_empty() && !intercept {
        return Err(Error::invalid(
            "a model without an intercept needs at least one covariate",
        ));
    }
    unique(covariates, "the model")?;
    if let Some(c) = covariates.iter().find(|c| taken.contains(c)) {
        return Err(Error::invalid(format!(
            "\"{c}\" is the model's outcome (or time or event) and cannot also be a covariate"
        )));
    }
    if crate::models::design::terms(dict, covariates, intercept)?.is_empty() {
        return Err(Error::invalid(
            "the model has no parameters: its covariates have a single level each; add a covariate or the intercept",
        ));
    }
    Ok(())
}

fn survival_variables(dict: &Dictionary, time: &str, event: &str) -> Result<()> {
    numeric(dict, time, "survival time")?;
    if dict.get(event)?.kind != VarType::Boolean {
        return Err(Error::invalid(format!(
            "the event of a survival analysis must be boolean, and \"{event}\" is {}",
            dict.get(event)?.kind
        )));
    }
    Ok(())
}

fn fit_settings(analysis: &Analysis) -> Result<()> {
    let o = analysis.fit_options().expect("iterative analysis");
    if !(o.tolerance > 0.0 && o.tolerance <= 1e-2) {
        return Err(Error::invalid(format!(
            "tolerance must be above 0 and at most 0.01, got {}",
            o.tolerance
        )));
    }
    if o.max_iterations == 0 || o.max_iterations > MAX_ITERATIONS {
        return Err(Error::invalid(format!(
            "max_iterations must be between 1 and {MAX_ITERATIONS}, got {}",
            o.max_iterations
        )));
    }
    Ok(())
}

fn numeric<'a>(dict: &'a Dictionary, name: &str, what: &str) -> Result<&'a crate::Variable> {
    let v = dict.get(name)?;
    if !v.kind.is_numeric() {
        return Err(Error::invalid(format!(
            "a {what} needs a numeric variable, and \"{name}\" is {}",
            v.kind
        )));
    }
    Ok(v)
}

fn discrete(dict: &Dictionary, name: &str, what: &str) -> Result<()> {
    let v = dict.get(name)?;
    if !v.kind.is_discrete() {
        return Err(Error::invalid(format!(
            "{what} needs categorical or boolean variables, and \"{name}\" is {} (use a histogram for numeric variables)",
            v.kind
        )));
    }
    Ok(())
}

fn validate_edges(edges: &[f64]) -> Result<()> {
    if edges.len() < 2 {
        return Err(Error::invalid(
            "a histogram needs at least two bin edges, e.g. [40, 50, 60]",
        ));
    }
    if edges.len() > MAX_BINS + 1 {
        return Err(Error::invalid(format!(
            "a histogram may have at most {MAX_BINS} bins, got {}",
            edges.len() - 1
        )));
    }
    if let Some(bad) = edges.iter().find(|e| !e.is_finite()) {
        return Err(Error::invalid(format!(
            "bin edge {bad} is not a finite number"
        )));
    }
    if let Some(w) = edges.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::invalid(format!(
            "bin edges must be strictly increasing, but {} is followed by {}",
            w[0], w[1]
        )));
    }
    Ok(())
}

impl Cohort {
    pub(super) fn validate(
        &self,
        dict: &Dictionary,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<()> {
        *nodes += 1;
        if depth > MAX_COHORT_DEPTH {
            return Err(Error::invalid(format!(
                "cohort is nested deeper than {MAX_COHORT_DEPTH} levels; flatten it"
            )));
        }
        if *nodes > MAX_COHORT_NODES {
            return Err(Error::invalid(format!(
                "cohort has more than {MAX_COHORT_NODES} conditions; simplify it"
            )));
        }
        match self {
            Cohort::And(items) | Cohort::Or(items) => {
                if items.is_empty() {
                    let op = if matches!(self, Cohort::And(_)) {
                        "and"
                    } else {
                        "or"
                    };
                    return Err(Error::invalid(format!(
                        "cohort has an empty \"{op}\"; give it at least one condition or leave the cohort out to select everyone"
                    )));
                }
                items
                    .iter()
                    .try_for_each(|c| c.validate(dict, depth + 1, nodes))
            }
            Cohort::Not(c) => c.validate(dict, depth + 1, nodes),
            Cohort::Compare {
                variable,
                op,
                value,
            } => {
                let var = dict.get(variable)?;
                if op.is_ordering() && var.kind.is_discrete() {
                    return Err(Error::invalid(format!(
                        "\"{variable}\" is {} and can only be compared with = or != (or \"in\")",
                        var.kind
                    )));
                }
                check_value(variable, var, value)
            }
            Cohort::In { variable, values } => {
                let var = dict.get(variable)?;
                if values.is_empty() {
                    return Err(Error::invalid(format!(
                        "\"in\" on \"{variable}\" lists no values"
                    )));
                }
                if values.len() > MAX_SET_SIZE {
                    return Err(Error::invalid(format!(
                        "\"in\" on \"{variable}\" lists more than {MAX_SET_SIZE} values"
                    )));
                }
                values
                    .iter()
                    .try_for_each(|v| check_value(variable, var, v))
            }
            Cohort::IsNull { variable } | Cohort::NotNull { variable } => {
                dict.get(variable).map(|_| ())
            }
        }
    }
}

fn check_value(name: &str, var: &crate::Variable, value: &Value) -> Result<()> {
    let ok = match (var.kind, value) {
        (VarType::Integer, Value::Integer(_)) => true,
        (VarType::Integer, Value::Float(x)) => x.is_finite(),
        (VarType::Float, Value::Integer(_)) => true,
        (VarType::Float, Value::Float(x)) => x.is_finite(),
        (VarType::Boolean, Value::Boolean(_)) => true,
        (VarType::Categorical, Value::Text(s)) => {
            if !var.categories.contains(s) {
                return Err(Error::invalid(format!(
                    "\"{s}\" is not a category of \"{name}\" (categories: {})",
                    var.categories.join(", ")
                )));
            }
            true
        }
        (VarType::Date, Value::Text(s)) => {
            if parse_date(s).is_none() {
                return Err(Error::invalid(format!(
                    "\"{s}\" is not a date for \"{name}\"; write dates as YYYY-MM-DD"
                )));
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let want = match var.kind {
            VarType::Integer | VarType::Float => "a number",
            VarType::Boolean => "true or false",
            VarType::Categorical => "one of its categories as a string",
            VarType::Date => "a date string YYYY-MM-DD",
        };
        Err(Error::invalid(format!(
            "\"{name}\" is {} and cannot be compared with {value}; give {want}",
            var.kind
        )))
    }
}
