//! Disclosure rules in a study under differential privacy, decided on
//! what the node has just noised, never on its exact data.
//!
//! A rule that looks at exact values is an oracle: its firing is a fact
//! about the data that no noise covers and no budget pays for (asked
//! about `not (quasi-identifiers and P)` for a series of P, an exact
//! complement rule spells out one patient's record for almost no ρ).
//! Here every rule reads only the noised release the job pays for, so
//! its decision is post-processing: a refusal says nothing the noised
//! values would not have said, and it is charged like an answer.
//!
//! Regressions: the first round of a fit runs at R's starting values,
//! where every patient's weight depends on its outcome only and, for the
//! families released under differential privacy, is the same for both
//! outcomes (1 for a gaussian model, 3/16 for a logistic one). That
//! round's noised X'WX then holds, scaled by that weight, the number of
//! complete cases with each level of every categorical or boolean
//! covariate and with every two-way combination of levels; its X'Wz and
//! Σy give the outcome's levels and their combinations with each
//! covariate level. So the node decides the complete-cases,
//! parameter-share, level and two-way rules on the counts the round it is
//! about to release implies.

use crate::dictionary::Dictionary;
use crate::disclosure::Rules;
use crate::error::{Error, Result};
use crate::models::design::Term;
use crate::models::glm::{Family, GlmStats};
use crate::models::linalg::packed_index;

/// The refusal, if any, that a fit's noised first round calls for: fewer
/// than k complete cases, more parameters than the policy's share of
/// them, a level of a categorical or boolean covariate (or of a binomial
/// outcome) under k, or a two-way combination of such levels under k, all
/// read off the noised sums.
pub fn glm_first_round(
    noised: &GlmStats,
    terms: &[Term],
    family: Family,
    outcome: &str,
    dict: &Dictionary,
    rules: Rules,
) -> Result<Option<Error>> {
    let k = f64::from(rules.k);
    let p = terms.len();
    if noised.xtwz.len() != p || noised.xtwx.len() != crate::models::linalg::packed_len(p) {
        return Err(Error::internal(
            "a model round whose sums do not match its terms",
        ));
    }
    let n = noised.n as f64;
    if n < k {
        return Ok(Some(Error::disclosure(format!(
            "complete-cases rule: the model would rest on fewer than {} complete cases at this node (decided on the round's noised count; widen the cohort)",
            rules.k
        ))));
    }
    if p as f64 > rules.max_parameter_share * n {
        return Ok(Some(Error::disclosure(format!(
            "parameter-share rule: the model's {p} parameters are more than {} of this node's complete cases (decided on the round's noised count; use fewer covariates or a wider cohort)",
            rules.max_parameter_share
        ))));
    }
    let (w1, wz1) = family.first_round_weights(1.0);
    let (w0, wz0) = family.first_round_weights(0.0);
    if (w1 - w0).abs() > 1e-12 * w1.abs().max(1.0) || w1 <= 0.0 {
        // Only families whose first-round weight is the same for every
        // patient are released under differential privacy.
        return Err(Error::internal(format!(
            "the first-round weights of a {} model differ by outcome",
            family.as_str()
        )));
    }
    let entry = |i: usize, j: usize| {
        let (a, b) = if i <= j { (i, j) } else { (j, i) };
        noised.xtwx[packed_index(p, a, b)] / w1
    };
    let total = match terms.iter().position(|t| matches!(t, Term::Intercept)) {
        Some(i) => entry(i, i),
        None => n,
    };
    let mut factors = factors(terms, dict)?;
    for f in &mut factors {
        f.counts = level_counts(f, total, &entry);
    }
    for f in &factors {
        if let Some(l) = f.counts.iter().position(|c| *c < k) {
            return Ok(Some(level_refusal(&f.name, &f.levels[l], rules.k)));
        }
    }
    for (i, a) in factors.iter().enumerate() {
        for b in &factors[i + 1..] {
            if let Some((la, lb)) = first_thin_cell(a, b, total, &entry, k) {
                return Ok(Some(cross_refusal(
                    (&a.name, &a.levels[la]),
                    (&b.name, &b.levels[lb]),
                    rules.k,
                )));
            }
        }
    }
    if family == Family::Binomial {
        // The outcome: Σy patients with it, the rest without; with each
        // covariate level, X'Wz gives wz1·(with) + wz0·(without).
        let levels = dict.get(outcome)?.levels();
        let with = noised.sum_y;
        let counts = [n - with, with];
        if let Some(l) = counts.iter().position(|c| *c < k) {
            return Ok(Some(level_refusal(outcome, &levels[l], rules.k)));
        }
        for f in &factors {
            let mut with_rest = with;
            for (l, column) in f.columns.iter().enumerate() {
                let Some(j) = column else { continue };
                let c = f.counts[l];
                let w = (noised.xtwz[*j] - wz0 * c) / (wz1 - wz0);
                with_rest -= w;
                if let Some(o) = [c - w, w].iter().position(|v| *v < k) {
                    return Ok(Some(cross_refusal(
                        (&f.name, &f.levels[l]),
                        (outcome, &levels[o]),
                        rules.k,
                    )));
                }
            }
            let reference = f.columns.iter().position(Option::is_none).unwrap_or(0);
            let c = f.counts[reference];
            if let Some(o) = [c - with_rest, with_rest].iter().position(|v| *v < k) {
                return Ok(Some(cross_refusal(
                    (&f.name, &f.levels[reference]),
                    (outcome, &levels[o]),
                    rules.k,
                )));
            }
        }
    }
    Ok(None)
}

/// A categorical or boolean covariate: its levels and the design column
/// of each (none for the reference level).
struct Factor {
    name: String,
    levels: Vec<String>,
    columns: Vec<Option<usize>>,
    /// Complete cases per level, as the noised sums imply.
    counts: Vec<f64>,
}

fn factors(terms: &[Term], dict: &Dictionary) -> Result<Vec<Factor>> {
    let mut out: Vec<Factor> = Vec::new();
    for (j, t) in terms.iter().enumerate() {
        let Term::Level {
            variable, index, ..
        } = t
        else {
            continue;
        };
        if out.last().is_none_or(|f| f.name != *variable) {
            let levels = dict.get(variable)?.levels();
            out.push(Factor {
                name: variable.clone(),
                columns: vec![None; levels.len()],
                counts: Vec::new(),
                levels,
            });
        }
        let f = out.last_mut().expect("pushed above");
        match f.columns.get_mut(*index as usize) {
            Some(c) => *c = Some(j),
            None => return Err(Error::internal("a level term beyond its variable's levels")),
        }
    }
    Ok(out)
}

fn level_counts(f: &Factor, total: f64, entry: &impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut counts: Vec<f64> = f
        .columns
        .iter()
        .map(|c| c.map_or(f64::NAN, |j| entry(j, j)))
        .collect();
    let listed: f64 = counts.iter().filter(|c| !c.is_nan()).sum();
    for c in counts.iter_mut().filter(|c| c.is_nan()) {
        *c = total - listed;
    }
    counts
}

/// The first combination of a level of `a` and a level of `b` with fewer
/// than `k` complete cases by the noised sums.
fn first_thin_cell(
    a: &Factor,
    b: &Factor,
    total: f64,
    entry: &impl Fn(usize, usize) -> f64,
    k: f64,
) -> Option<(usize, usize)> {
    let (na, nb) = (a.levels.len(), b.levels.len());
    let mut cells = vec![vec![f64::NAN; nb]; na];
    for (la, ca) in a.columns.iter().enumerate() {
        for (lb, cb) in b.columns.iter().enumerate() {
            if let (Some(i), Some(j)) = (ca, cb) {
                cells[la][lb] = entry(*i, *j);
            }
        }
    }
    // The reference level's cells are the margins less the listed cells.
    let ra = a.columns.iter().position(Option::is_none)?;
    let rb = b.columns.iter().position(Option::is_none)?;
    for la in (0..na).filter(|l| *l != ra) {
        let listed: f64 = (0..nb).filter(|l| *l != rb).map(|lb| cells[la][lb]).sum();
        cells[la][rb] = a.counts[la] - listed;
    }
    for lb in (0..nb).filter(|l| *l != rb) {
        let listed: f64 = (0..na).filter(|l| *l != ra).map(|la| cells[la][lb]).sum();
        cells[ra][lb] = b.counts[lb] - listed;
    }
    let others: f64 = cells.iter().flatten().filter(|c| !c.is_nan()).sum();
    cells[ra][rb] = total - others;
    for (la, row) in cells.iter().enumerate() {
        if let Some(lb) = row.iter().position(|c| *c < k) {
            return Some((la, lb));
        }
    }
    None
}

fn level_refusal(variable: &str, level: &str, k: u32) -> Error {
    Error::disclosure(format!(
        "level rule: level \"{level}\" of \"{variable}\" has fewer than {k} of this node's complete cases (decided on the round's noised sums; merge levels, drop \"{variable}\" or widen the cohort)"
    ))
}

fn cross_refusal(a: (&str, &str), b: (&str, &str), k: u32) -> Error {
    Error::disclosure(format!(
        "two-way rule: fewer than {k} of this node's complete cases have \"{}\" = \"{}\" and \"{}\" = \"{}\", which the model's sums would reveal (decided on the round's noised sums; merge levels, drop one of the two variables or widen the cohort)",
        a.0, a.1, b.0, b.1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::design::{complete_rows, design_matrix, terms, ColumnData, Columns};
    use crate::models::glm::glm_round;

    /// A first round's exact sums over `sex`, `smoking` and a binomial
    /// outcome `death`, as a node computes them before noise.
    fn first_round(rows: &[(u32, u32, u32)]) -> (GlmStats, Vec<Term>) {
        let d = Dictionary::cardiovascular();
        let t = terms(&d, &["sex".into(), "smoking".into()], true).unwrap();
        let mut cols = Columns::new();
        cols.insert(
            "sex".into(),
            ColumnData::Levels(rows.iter().map(|r| r.0).collect()),
        );
        cols.insert(
            "smoking".into(),
            ColumnData::Levels(rows.iter().map(|r| r.1).collect()),
        );
        let all = complete_rows(&cols, &["sex", "smoking"]).unwrap();
        let x = design_matrix(&t, &cols, &all).unwrap();
        let y: Vec<f64> = rows.iter().map(|r| f64::from(r.2)).collect();
        let (stats, _) = glm_round(Family::Binomial, &x, &y, t.len(), &[], None, f64::INFINITY);
        (stats, t)
    }

    fn decide(rows: &[(u32, u32, u32)], k: u32) -> Option<Error> {
        let (stats, t) = first_round(rows);
        let d = Dictionary::cardiovascular();
        glm_first_round(&stats, &t, Family::Binomial, "death", &d, Rules::new(k)).unwrap()
    }

    /// Every (sex, smoking, death) combination `n` times.
    fn balanced(n: usize) -> Vec<(u32, u32, u32)> {
        let mut rows = Vec::new();
        for s in 0..2 {
            for m in 0..3 {
                for y in 0..2 {
                    rows.extend(std::iter::repeat_n((s, m, y), n));
                }
            }
        }
        rows
    }

    #[test]
    fn the_first_round_reads_as_the_counts_of_every_level_and_pair() {
        // With exact sums the rules see exactly the exact counts.
        assert_eq!(decide(&balanced(5), 5), None);
        assert!(decide(&balanced(5), 11).is_some());
        // One smoking level of 4 (former, any sex or outcome).
        let mut rows = balanced(10);
        rows.retain(|r| r.1 != 1);
        rows.extend([(0, 1, 0), (1, 1, 1), (0, 1, 1), (1, 1, 0)]);
        let e = decide(&rows, 5).unwrap();
        assert!(e.message.starts_with("level rule"), "{e}");
        assert!(e.message.contains("\"former\" of \"smoking\""), "{e}");
        // Every level large, but men who are former smokers few.
        let mut rows = balanced(10);
        rows.retain(|r| !(r.0 == 1 && r.1 == 1));
        rows.extend([(1, 1, 0), (1, 1, 1), (1, 1, 1)]);
        let e = decide(&rows, 5).unwrap();
        assert!(e.message.starts_with("two-way rule"), "{e}");
        assert!(
            e.message
                .contains("\"sex\" = \"M\" and \"smoking\" = \"former\""),
            "{e}"
        );
        // The reference levels' cells too: women who never smoked (the
        // reference of both) are the margins less the rest.
        let mut rows = balanced(10);
        rows.retain(|r| !(r.0 == 0 && r.1 == 0));
        rows.extend([(0, 0, 1), (0, 0, 0)]);
        let e = decide(&rows, 5).unwrap();
        assert!(
            e.message
                .contains("\"sex\" = \"F\" and \"smoking\" = \"never\""),
            "{e}"
        );
        // The outcome's levels and its cross cells with a covariate level.
        let mut rows = balanced(10);
        rows.retain(|r| !(r.1 == 2 && r.2 == 1));
        rows.extend([(0, 2, 1), (1, 2, 1)]);
        let e = decide(&rows, 5).unwrap();
        assert!(
            e.message
                .contains("\"smoking\" = \"current\" and \"death\" = \"true\""),
            "{e}"
        );
        let mut rows = balanced(10);
        rows.retain(|r| !(r.1 == 0 && r.2 == 0));
        rows.extend([(0, 0, 0)]);
        let e = decide(&rows, 5).unwrap();
        assert!(
            e.message
                .contains("\"smoking\" = \"never\" and \"death\" = \"false\""),
            "{e}"
        );
    }

    #[test]
    fn complete_cases_and_parameter_share_are_read_off_the_noised_n() {
        let (mut stats, t) = first_round(&balanced(10));
        let d = Dictionary::cardiovascular();
        let rules = Rules::new(5);
        stats.n = 4;
        let e = glm_first_round(&stats, &t, Family::Binomial, "death", &d, rules)
            .unwrap()
            .unwrap();
        assert!(e.message.starts_with("complete-cases rule"), "{e}");
        // Four parameters need at least 4 / 0.33 ≈ 12.1 cases.
        stats.n = 12;
        let e = glm_first_round(&stats, &t, Family::Binomial, "death", &d, rules)
            .unwrap()
            .unwrap();
        assert!(e.message.starts_with("parameter-share rule"), "{e}");
        // No message carries a count of patients.
        assert!(!e.message.contains("12"), "{e}");
    }
}
