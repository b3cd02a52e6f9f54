//! Covariance and correlation matrices from per-pair sums, which add across
//! sites. With complete cases every pair rests on the same patients (those
//! with all variables); pairwise, each pair rests on those with both.

use serde::{Deserialize, Serialize};

use super::linalg::{packed_index, packed_len};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    #[default]
    CompleteCases,
    Pairwise,
}

impl Missing {
    pub fn describe(self) -> &'static str {
        match self {
            Missing::CompleteCases => {
                "complete cases: every entry rests on the patients with all the variables"
            }
            Missing::Pairwise => {
                "pairwise complete: each entry rests on the patients with both of its variables"
            }
        }
    }
}

/// Sums over the patients with values for both variables of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PairSums {
    pub n: u64,
    pub sum_x: f64,
    pub sum_y: f64,
    pub sum_xx: f64,
    pub sum_yy: f64,
    pub sum_xy: f64,
}

impl PairSums {
    pub fn merge(&mut self, o: &PairSums) {
        self.n = self.n.saturating_add(o.n);
        self.sum_x += o.sum_x;
        self.sum_y += o.sum_y;
        self.sum_xx += o.sum_xx;
        self.sum_yy += o.sum_yy;
        self.sum_xy += o.sum_xy;
    }

    fn covariance(&self) -> Option<f64> {
        (self.n >= 2).then(|| {
            let n = self.n as f64;
            (self.sum_xy - self.sum_x * self.sum_y / n) / (n - 1.0)
        })
    }

    fn correlation(&self) -> Option<f64> {
        let n = self.n as f64;
        let sxx = self.sum_xx - self.sum_x * self.sum_x / n;
        let syy = self.sum_yy - self.sum_y * self.sum_y / n;
        let sxy = self.sum_xy - self.sum_x * self.sum_y / n;
        (self.n >= 2 && sxx > 0.0 && syy > 0.0).then(|| (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
    }

    /// Whether sums received from a node are possible.
    pub fn plausible(&self) -> bool {
        let all = [
            self.sum_x,
            self.sum_y,
            self.sum_xx,
            self.sum_yy,
            self.sum_xy,
        ];
        let n = self.n as f64;
        let slack = |a: f64| a.abs() * 1e-9 + 1e-9;
        all.iter().all(|v| v.is_finite())
            && self.sum_xx >= 0.0
            && self.sum_yy >= 0.0
            && self.sum_x * self.sum_x <= self.sum_xx * n + slack(self.sum_xx * n)
            && self.sum_y * self.sum_y <= self.sum_yy * n + slack(self.sum_yy * n)
            && self.sum_xy * self.sum_xy
                <= self.sum_xx * self.sum_yy + slack(self.sum_xx * self.sum_yy)
    }
}

/// A node's per-pair sums (packed upper triangle including the diagonal)
/// over `columns` (NaN for missing).
pub fn pair_sums(columns: &[Vec<f64>], missing: Missing) -> Vec<PairSums> {
    let p = columns.len();
    let n = columns.first().map_or(0, Vec::len);
    let mut out = vec![PairSums::default(); packed_len(p)];
    let complete: Option<Vec<bool>> = (missing == Missing::CompleteCases).then(|| {
        (0..n)
            .map(|r| columns.iter().all(|c| c[r].is_finite()))
            .collect()
    });
    for a in 0..p {
        for b in a..p {
            let s = &mut out[packed_index(p, a, b)];
            for r in 0..n {
                let (x, y) = (columns[a][r], columns[b][r]);
                let keep = match &complete {
                    Some(rows) => rows[r],
                    None => x.is_finite() && y.is_finite(),
                };
                if keep {
                    s.n += 1;
                    s.sum_x += x;
                    s.sum_y += y;
                    s.sum_xx += x * x;
                    s.sum_yy += y * y;
                    s.sum_xy += x * y;
                }
            }
        }
    }
    out
}

/// The node's disclosure rule for per-pair sums (packed upper triangle):
/// an entry resting on fewer than `k` patients is withheld, and so is an
/// entry whose patients differ from those of either variable's own entry
/// by 1 to k − 1 (the difference would single those patients out: their
/// count, and their sums by subtraction).
pub fn disclose(pairs: Vec<PairSums>, k: u32) -> Vec<Option<PairSums>> {
    let k = u64::from(k);
    let p = (1..=pairs.len())
        .find(|p| packed_len(*p) == pairs.len())
        .unwrap_or(0);
    let diagonal: Vec<u64> = (0..p).map(|a| pairs[packed_index(p, a, a)].n).collect();
    let thin = |d: u64| d > 0 && d < k;
    let mut out: Vec<Option<PairSums>> = pairs.iter().map(|s| (s.n >= k).then_some(*s)).collect();
    for a in 0..p {
        for b in a + 1..p {
            let i = packed_index(p, a, b);
            let n = pairs[i].n;
            if thin(diagonal[a].saturating_sub(n)) || thin(diagonal[b].saturating_sub(n)) {
                out[i] = None;
            }
        }
    }
    out
}

/// Pooled matrices; an entry is `None` where it rests on fewer than two
/// patients or was suppressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrelationResult {
    pub variables: Vec<String>,
    pub missing: String,
    /// `n[i][j]`: patients the entry rests on (None when suppressed somewhere).
    pub n: Vec<Vec<Option<u64>>>,
    pub covariance: Vec<Vec<Option<f64>>>,
    pub correlation: Vec<Vec<Option<f64>>>,
    /// Entries some node suppressed, as "a × b: node, node".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<String>,
}

/// Pools the nodes' released pairs (`None` = suppressed at that node).
pub fn pool(
    variables: &[String],
    missing: Missing,
    parts: &[(String, Vec<Option<PairSums>>)],
) -> Result<CorrelationResult> {
    let p = variables.len();
    let mut total = vec![PairSums::default(); packed_len(p)];
    let mut suppressed_at: Vec<Vec<String>> = vec![Vec::new(); packed_len(p)];
    for (node, pairs) in parts {
        if pairs.len() != packed_len(p) {
            return Err(Error::internal(
                "pair sums do not match the variables (checked on receipt)",
            ));
        }
        for (i, s) in pairs.iter().enumerate() {
            match s {
                Some(s) => total[i].merge(s),
                None => suppressed_at[i].push(node.clone()),
            }
        }
    }
    let described = suppressed_at
        .into_iter()
        .map(|nodes| (!nodes.is_empty()).then(|| nodes.join(", ")))
        .collect();
    Ok(finish(variables, missing, &total, described))
}

/// Matrices from pooled pairs; `suppressed[i]`, when set, says where pair
/// i was suppressed (nodes by name, or how many under secure aggregation)
/// and withholds it.
pub fn finish(
    variables: &[String],
    missing: Missing,
    total: &[PairSums],
    suppressed_where: Vec<Option<String>>,
) -> CorrelationResult {
    let p = variables.len();
    let mut n = vec![vec![None; p]; p];
    let mut cov = vec![vec![None; p]; p];
    let mut cor = vec![vec![None; p]; p];
    let mut suppressed = Vec::new();
    for a in 0..p {
        for b in a..p {
            let i = packed_index(p, a, b);
            if let Some(Some(at)) = suppressed_where.get(i) {
                suppressed.push(format!("{} × {}: {at}", variables[a], variables[b]));
                continue;
            }
            let s = &total[i];
            n[a][b] = Some(s.n);
            n[b][a] = Some(s.n);
            cov[a][b] = s.covariance();
            cov[b][a] = cov[a][b];
            cor[a][b] = if a == b {
                s.correlation().map(|_| 1.0)
            } else {
                s.correlation()
            };
            cor[b][a] = cor[a][b];
        }
    }
    CorrelationResult {
        variables: variables.to_vec(),
        missing: missing.describe().into(),
        n,
        covariance: cov,
        correlation: cor,
        suppressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_equals_whole_and_pairwise_differs() {
        let x = vec![1.0, 2.0, 3.0, 4.0, f64::NAN, 6.0];
        let y = vec![2.0, 4.1, 5.9, f64::NAN, 10.0, 12.5];
        let whole = pair_sums(&[x.clone(), y.clone()], Missing::Pairwise);
        let a = pair_sums(&[x[..3].to_vec(), y[..3].to_vec()], Missing::Pairwise);
        let b = pair_sums(&[x[3..].to_vec(), y[3..].to_vec()], Missing::Pairwise);
        let vars = ["x".to_string(), "y".to_string()];
        let r = pool(
            &vars,
            Missing::Pairwise,
            &[
                ("a".into(), a.into_iter().map(Some).collect()),
                ("b".into(), b.into_iter().map(Some).collect()),
            ],
        )
        .unwrap();
        let w = pool(
            &vars,
            Missing::Pairwise,
            &[("w".into(), whole.into_iter().map(Some).collect())],
        )
        .unwrap();
        assert_eq!(r.n, w.n);
        assert_eq!(r.n[0][0], Some(5));
        assert_eq!(r.n[0][1], Some(4));
        assert!((r.correlation[0][1].unwrap() - w.correlation[0][1].unwrap()).abs() < 1e-12);
        assert!(r.correlation[0][1].unwrap() > 0.99);
        let cc = pair_sums(&[x, y], Missing::CompleteCases);
        assert!(cc.iter().all(|s| s.n == 4));
    }

    #[test]
    fn a_pair_that_would_single_out_patients_is_withheld() {
        // 12 patients with x, 11 of them with y too: x without y is one patient.
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        let mut y: Vec<f64> = (0..12).map(|v| f64::from(v) * 2.0).collect();
        y[0] = f64::NAN;
        let released = disclose(pair_sums(&[x.clone(), y.clone()], Missing::Pairwise), 5);
        assert!(released[0].is_some() && released[2].is_some());
        assert!(released[1].is_none(), "{released:?}");
        // With complete cases every entry rests on the same 11 patients.
        let released = disclose(pair_sums(&[x, y], Missing::CompleteCases), 5);
        assert!(released.iter().all(Option::is_some));
    }
}
