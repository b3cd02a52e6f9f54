//! Rendering pooled results for people (aligned tables), programs (JSON)
//! and spreadsheets (CSV), and the escaping every output of the CLI goes
//! through: text from the coordinator, a node or an old log may hold
//! control or bidirectional formatting characters (see
//! [`plexus_core::text`]), which must never reach a terminal or a
//! spreadsheet raw.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

use plexus_core::cell::PooledCell;
use plexus_core::models::glm::Family;
use plexus_core::models::inference::Coefficient;
use plexus_core::pool::{NodeStatus, PooledResult, PooledValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// How a report (a verification, a proof, a reconciliation, evidence) is
/// printed: sentences, or its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Report {
    Text,
    Json,
}

/// A table cell or a line of plain text: control and bidirectional
/// formatting characters shown as `\u{1b}`-style escapes.
pub fn safe(s: &str) -> String {
    plexus_core::text::escape(s).into_owned()
}

/// A whole rendered text (a table, a TOML document, an error message):
/// its own line breaks stay, every other unsafe character is escaped.
pub fn safe_text(s: &str) -> String {
    plexus_core::text::escape_keeping_lines(s).into_owned()
}

/// JSON as serde_json wrote it, with the characters it leaves raw (DEL, C1,
/// bidirectional formatting) escaped as `\uXXXX`: the same JSON value.
pub fn safe_json(s: &str) -> String {
    plexus_core::text::escape_json(s).into_owned()
}

/// A CSV cell: escaped like [`safe`] (no raw line break forges a row), and
/// a cell a spreadsheet would take for a formula, one beginning with `=`,
/// `+`, `-`, `@`, tab or carriage return (OWASP's CSV injection list),
/// gets a leading `'` so it stays text. A plain finite number such as
/// `-0.25` is left as it is: it is a number to the spreadsheet too.
pub fn csv_cell(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r'])
        && !s.parse::<f64>().is_ok_and(f64::is_finite);
    let escaped = safe(s);
    if formula {
        format!("'{escaped}")
    } else {
        escaped
    }
}

/// A row of [`csv_cell`]s.
pub fn csv_row<S: AsRef<str>>(cells: impl IntoIterator<Item = S>) -> Vec<String> {
    cells.into_iter().map(|c| csv_cell(c.as_ref())).collect()
}

pub fn cell_text(c: &PooledCell) -> String {
    match (c.count, c.at_least) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) => format!("suppressed (>= {n})"),
        (None, None) => "suppressed".into(),
    }
}

fn num(x: f64) -> String {
    if x.abs() >= 1e6 || (x != 0.0 && x.abs() < 1e-3) {
        format!("{x:.4e}")
    } else {
        format!("{x:.3}")
    }
}

/// An empty table in the CLI's one style, with `header`.
pub fn new_table<S: Into<String>>(header: Vec<S>) -> Table {
    let header: Vec<String> = header.into_iter().map(Into::into).collect();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header);
    t
}

fn opt(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "-".into())
}

fn p_value(p: f64) -> String {
    if p < 1e-4 {
        "< 0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.map(String::from).to_vec()
}

/// A regression table: one row per coefficient, with the ratio columns
/// (odds, rate or hazard ratio) when the model has them.
fn coefficient_rows(
    coefficients: &[Coefficient],
    statistic: &str,
    ratio: Option<&str>,
) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = strings([
        "term",
        "estimate",
        "std error",
        statistic,
        "p",
        "95% CI low",
        "95% CI high",
    ]);
    if let Some(r) = ratio {
        header.extend([r.to_string(), format!("{r} low"), format!("{r} high")]);
    }
    let rows = coefficients
        .iter()
        .map(|c| {
            let mut row = vec![
                c.term.clone(),
                num(c.estimate),
                num(c.std_error),
                num(c.statistic),
                p_value(c.p_value),
                num(c.ci_lower),
                num(c.ci_upper),
            ];
            if let (Some(_), Some(r)) = (ratio, &c.ratio) {
                row.extend([num(r.estimate), num(r.ci_lower), num(r.ci_upper)]);
            }
            row
        })
        .collect();
    (header, rows)
}

/// The value as rows of strings: (header, rows), for the aligned table.
pub fn rows(value: &PooledValue) -> (Vec<String>, Vec<Vec<String>>) {
    match value {
        PooledValue::Count { n } => (vec!["count".into()], vec![vec![cell_text(n)]]),
        PooledValue::Summary {
            variable,
            n,
            mean,
            variance,
            sd,
            ci,
            noise_sd,
        } => {
            let mut header = strings(["variable", "n", "mean", "95% CI", "variance", "sd"]);
            let mut row = vec![
                variable.clone(),
                n.to_string(),
                num(*mean),
                ci.map(|[lo, hi]| format!("{} to {}", num(lo), num(hi)))
                    .unwrap_or_default(),
                opt(*variance),
                opt(*sd),
            ];
            if let Some(sd) = noise_sd {
                header.push("noise sd (mean)".into());
                row.push(num(*sd));
            }
            (header, vec![row])
        }
        PooledValue::Histogram {
            variable,
            edges,
            bins,
            below,
            above,
        } => {
            let mut rows = vec![vec![format!("< {}", edges[0]), cell_text(below)]];
            let last = bins.len() - 1;
            for (i, b) in bins.iter().enumerate() {
                let close = if i == last { "]" } else { ")" };
                rows.push(vec![
                    format!("[{}, {}{close}", edges[i], edges[i + 1]),
                    cell_text(b),
                ]);
            }
            rows.push(vec![
                format!("> {}", edges[edges.len() - 1]),
                cell_text(above),
            ]);
            (vec![variable.clone(), "count".into()], rows)
        }
        PooledValue::Table {
            row,
            column,
            row_levels,
            column_levels,
            cells,
        } => {
            let mut header = vec![format!("{row} \\ {column}")];
            header.extend(column_levels.iter().cloned());
            let rows = row_levels
                .iter()
                .zip(cells)
                .map(|(level, cells)| {
                    let mut r = vec![level.clone()];
                    r.extend(cells.iter().map(cell_text));
                    r
                })
                .collect();
            (header, rows)
        }
        PooledValue::Glm(g) => {
            let ratio = match g.family {
                Family::Binomial => Some("odds ratio"),
                Family::Poisson => Some("rate ratio"),
                Family::Gaussian => None,
            };
            coefficient_rows(&g.coefficients, &g.statistic, ratio)
        }
        PooledValue::Cox(c) => coefficient_rows(&c.coefficients, "z", Some("hazard ratio")),
        PooledValue::KaplanMeier(k) => (
            strings([
                "group",
                "at risk",
                "events",
                "median",
                "survival stated until",
                "survival then",
                "95% CI",
                "note",
            ]),
            k.curves
                .iter()
                .map(|c| {
                    // The last time survival is stated, not the grid's end:
                    // after it the released counts show nobody at risk, or
                    // intervals were merged.
                    let last = c.survival.iter().rposition(Option::is_some);
                    let at = |v: &[Option<f64>]| last.and_then(|j| v[j]);
                    let mut note = Vec::new();
                    if !c.suppressed_at.is_empty() {
                        note.push(format!("suppressed at {}", c.suppressed_at.join(", ")));
                    }
                    if let Some(t) = c.merged_after {
                        note.push(format!("merged after {t} ({})", c.merged_at.join(", ")));
                    }
                    let median = match (c.median, c.stated_until) {
                        (Some(m), _) => m.to_string(),
                        (None, Some(t)) => format!("not reached by {t}"),
                        (None, None) => "-".into(),
                    };
                    vec![
                        c.group.clone(),
                        c.at_risk.to_string(),
                        c.events.to_string(),
                        median,
                        c.stated_until.map_or("-".into(), |t| t.to_string()),
                        opt(at(&c.survival)),
                        format!("{} - {}", opt(at(&c.lower)), opt(at(&c.upper))),
                        note.join("; "),
                    ]
                })
                .collect(),
        ),
        PooledValue::Correlation(c) => {
            let mut header = vec!["correlation".to_string()];
            header.extend(c.variables.iter().cloned());
            let rows = c
                .variables
                .iter()
                .zip(&c.correlation)
                .map(|(v, row)| {
                    let mut r = vec![v.clone()];
                    r.extend(row.iter().map(|x| opt(*x)));
                    r
                })
                .collect();
            (header, rows)
        }
        PooledValue::Quantiles(q) => (
            strings(["probability", "estimate", "bin low", "bin high", "note"]),
            q.quantiles
                .iter()
                .map(|x| {
                    vec![
                        x.probability.to_string(),
                        opt(x.estimate),
                        opt(x.bin_lower),
                        opt(x.bin_upper),
                        x.note.clone().unwrap_or_default(),
                    ]
                })
                .collect(),
        ),
        PooledValue::TwoByTwo(t) => (
            strings(["measure", "estimate", "95% CI low", "95% CI high"]),
            vec![
                vec![
                    "odds ratio".into(),
                    num(t.odds_ratio.estimate),
                    num(t.odds_ratio.ci_lower),
                    num(t.odds_ratio.ci_upper),
                ],
                vec![
                    "relative risk".into(),
                    num(t.relative_risk.estimate),
                    num(t.relative_risk.ci_lower),
                    num(t.relative_risk.ci_upper),
                ],
            ],
        ),
        PooledValue::Gbdt(g) => {
            let total: f64 = g.importance.iter().map(|i| i.gain).sum();
            (
                strings(["feature", "splits", "gain", "share of gain"]),
                g.importance
                    .iter()
                    .map(|i| {
                        vec![
                            i.feature.clone(),
                            i.splits.to_string(),
                            num(i.gain),
                            format!("{:.1}%", 100.0 * i.gain / total.max(f64::MIN_POSITIVE)),
                        ]
                    })
                    .collect(),
            )
        }
        PooledValue::Performance(p) => {
            let est = |e: &Option<plexus_core::models::performance::Estimate>| match e {
                Some(e) => format!("{} ({}, {})", num(e.estimate), num(e.ci[0]), num(e.ci[1])),
                None => "-".into(),
            };
            (
                strings([
                    "group",
                    "n",
                    "events",
                    "AUC (95% CI)",
                    "AUC bound",
                    "Brier",
                    "calibration in the large",
                    "calibration slope",
                    "O/E",
                ]),
                p.groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group.label(),
                            g.n.to_string(),
                            g.positives.to_string(),
                            est(&g.auc),
                            opt(g.auc_error_bound),
                            opt(g.brier),
                            est(&g.calibration_in_the_large),
                            est(&g.calibration_slope),
                            opt(g.observed_expected),
                        ]
                    })
                    .collect(),
            )
        }
    }
}

/// The threshold metrics and fairness gaps of a model's validation, as
/// text under its table.
fn performance_footer(p: &plexus_core::models::performance::PerformanceResult) -> String {
    let mut s = format!(
        "validation of model \"{}\" (hash {}) against {}: predictions on a public grid of {} bins; each AUC is from segments of at least k patients, ties within a segment counted half, and \"AUC bound\" is the most the segments can move it; 95% CIs by DeLong on those segments; calibration by logistic fits on logit(p), {} rounds",
        p.model, p.model_hash, p.outcome, p.grid, p.rounds
    );
    let share = |v: Option<f64>| v.map_or("-".to_string(), num);
    for g in &p.groups {
        if g.thresholds.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "\n\n{}: threshold (used)  TP  FP  TN  FN  sensitivity  specificity  PPV  NPV  net benefit  treat all",
            g.group.label()
        ));
        for t in &g.thresholds {
            s.push_str(&format!(
                "\n  {} ({})  {}  {}  {}  {}  {}  {}  {}  {}  {}  {}",
                num(t.requested),
                num(t.threshold),
                t.tp,
                t.fp,
                t.tn,
                t.fn_,
                share(t.sensitivity),
                share(t.specificity),
                share(t.ppv),
                share(t.npv),
                num(t.net_benefit),
                num(t.treat_all)
            ));
        }
        if !g.converged {
            s.push_str("\n  the calibration fits did NOT converge");
        }
    }
    if !p.fairness.is_empty() {
        s.push_str("\n\nlargest gaps between subgroups:");
        for f in &p.fairness {
            s.push_str(&format!(
                "\n  {} {}{}: {} (lowest {}, highest {})",
                f.variable,
                f.metric,
                f.threshold
                    .map(|t| format!(" at {}", num(t)))
                    .unwrap_or_default(),
                num(f.gap),
                f.lowest,
                f.highest
            ));
        }
    }
    s
}

/// What a value needs said under its table: fit statistics, tests,
/// precision.
pub fn footer(value: &PooledValue) -> Option<String> {
    match value {
        PooledValue::Performance(p) => Some(performance_footer(p)),
        PooledValue::Gbdt(g) => {
            let m = &g.model;
            let depth = m.trees.first().map_or(0, |t| t.depth());
            let loss = match (g.training_loss.first(), g.training_loss.last()) {
                (Some(a), Some(b)) => format!("; mean training {} loss {} before the first tree, {} before the last", m.loss.as_str(), num(*a), num(*b)),
                _ => String::new(),
            };
            let mut s = format!(
                "gradient-boosted trees ({} loss): {} trees of depth {depth}, learning rate {}, base score {}; N = {}; {} rounds{loss}; the model (JSON) is in the result's \"model\" (--format json)",
                m.loss.as_str(),
                m.trees.len(),
                num(m.learning_rate),
                num(m.base_score),
                g.n,
                g.rounds,
            );
            if let (Some(first), Some(last)) = (g.validation_loss.first(), g.validation_loss.last()) {
                s.push_str(&format!(
                    "\nheld out for validation: {} patients; mean {} loss {} before the first tree, {} before the last measured",
                    g.validation_n,
                    m.loss.as_str(),
                    num(*first),
                    num(*last)
                ));
            }
            if let Some(why) = &g.stopped {
                s.push_str(&format!("\n{why}"));
            }
            Some(s)
        }
        PooledValue::Glm(g) => Some(format!(
            "{} ({} link) model of {}: N = {}; deviance {} on {} df; null deviance {} on {} df; dispersion {}; {} iterations, {}; {}",
            g.family.as_str(),
            g.link,
            g.outcome,
            g.n,
            num(g.deviance),
            g.df_residual,
            opt(g.null_deviance),
            g.df_null,
            num(g.dispersion),
            g.iterations,
            if g.converged { "converged".to_string() } else { format!("NOT converged (tolerance {})", g.tolerance) },
            g.missing
        )),
        PooledValue::Cox(c) => Some(format!(
            "Cox model of ({}, {}), stratified by {}, {:?} ties: N = {}, {} events; likelihood ratio test {} on {} df, p = {}; {} iterations, {}; {}",
            c.time,
            c.event,
            c.strata,
            c.ties,
            c.n,
            c.events,
            num(c.likelihood_ratio.chi_square),
            c.likelihood_ratio.df,
            p_value(c.likelihood_ratio.p_value),
            c.iterations,
            if c.converged { "converged" } else { "NOT converged" },
            c.missing
        )),
        PooledValue::KaplanMeier(k) => {
            let mut s = format!(
                "Kaplan-Meier of ({}, {}) from {} over {} grid intervals; {}",
                k.time, k.event, k.start, k.grid_intervals, k.confidence
            );
            for c in &k.curves {
                for note in &c.notes {
                    s.push_str(&format!("\n{}: {note}", c.group));
                }
            }
            if let Some(lr) = &k.log_rank {
                s.push_str(&format!(
                    "\nlog-rank test: chi-square {} on {} df, p = {}",
                    num(lr.chi_square),
                    lr.df,
                    p_value(lr.p_value)
                ));
                if let Some(note) = &lr.note {
                    s.push_str(&format!("\nlog-rank test: {note}"));
                }
            }
            Some(s)
        }
        PooledValue::Correlation(c) => {
            let mut s = c.missing.clone();
            let ns: std::collections::BTreeSet<_> = c.n.iter().flatten().flatten().collect();
            if ns.len() == 1 {
                s.push_str(&format!(" (N = {})", ns.into_iter().next().expect("one")));
            }
            if !c.suppressed.is_empty() {
                s.push_str(&format!("\nsuppressed: {}", c.suppressed.join("; ")));
            }
            Some(s)
        }
        PooledValue::Quantiles(q) => Some(format!(
            "{} from a pooled histogram of N = {}: {}; precision (widest bin) {}",
            q.variable, q.n, q.method, q.precision
        )),
        PooledValue::TwoByTwo(t) => Some(format!(
            "exposure {}={}, outcome {}={}: table [[{}, {}], [{}, {}]] (exposed: outcome, none; unexposed: outcome, none)\nchi-square {} (1 df, p = {}); with Yates' correction {} (p = {})",
            t.exposure,
            t.exposed_level,
            t.outcome,
            t.outcome_level,
            t.table[0][0],
            t.table[0][1],
            t.table[1][0],
            t.table[1][1],
            num(t.chi_square),
            p_value(t.p_value),
            num(t.chi_square_yates),
            p_value(t.p_value_yates)
        )),
        _ => None,
    }
}

/// A CSV field: a missing value (a survival not stated, a standard error
/// that is not finite) is an empty field, as R and pandas read NA.
fn missing_empty(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// Rows for CSV: like the table, but survival curves and correlations in
/// long form, one line per time or per pair.
pub fn csv_rows(value: &PooledValue) -> (Vec<String>, Vec<Vec<String>>) {
    match value {
        PooledValue::KaplanMeier(k) => {
            let header = strings([
                "group",
                "time",
                "n_risk",
                "n_event",
                "n_censor",
                "survival",
                "std_error",
                "lower",
                "upper",
            ]);
            let rows = k
                .curves
                .iter()
                .flat_map(|c| {
                    (0..c.times.len()).map(move |j| {
                        vec![
                            c.group.clone(),
                            c.times[j].to_string(),
                            c.n_risk[j].to_string(),
                            c.n_event[j].to_string(),
                            c.n_censor[j].to_string(),
                            missing_empty(c.survival[j]),
                            missing_empty(c.std_error[j]),
                            missing_empty(c.lower[j]),
                            missing_empty(c.upper[j]),
                        ]
                    })
                })
                .collect();
            (header, rows)
        }
        PooledValue::Correlation(c) => {
            let header = strings(["variable_a", "variable_b", "n", "covariance", "correlation"]);
            let mut rows = Vec::new();
            let show = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
            for (a, va) in c.variables.iter().enumerate() {
                for (b, vb) in c.variables.iter().enumerate().skip(a) {
                    rows.push(vec![
                        va.clone(),
                        vb.clone(),
                        c.n[a][b].map(|n| n.to_string()).unwrap_or_default(),
                        show(c.covariance[a][b]),
                        show(c.correlation[a][b]),
                    ]);
                }
            }
            (header, rows)
        }
        other => rows(other),
    }
}

fn table_of(value: &PooledValue) -> String {
    let (header, body) = rows(value);
    let mut t = new_table(header);
    for row in body {
        t.add_row(
            row.into_iter()
                .map(|s| Cell::new(s).set_alignment(CellAlignment::Right)),
        );
    }
    match footer(value) {
        Some(f) => format!("{t}\n{f}"),
        None => t.to_string(),
    }
}

pub fn render_table(r: &PooledResult) -> String {
    let mut out = table_of(&r.value);
    for site in &r.by_site {
        out.push_str(&format!("\n\nsite {}:\n", safe(&site.node)));
        match (&site.value, &site.error) {
            (Some(v), _) => out.push_str(&table_of(v)),
            (None, e) => out.push_str(&safe(e.as_deref().unwrap_or("no answer"))),
        }
    }
    safe_text(&format!("{out}\n{}", provenance(r)))
}

use plexus_core::pool::PrivacyReport;

pub fn provenance(r: &PooledResult) -> String {
    let p = &r.provenance;
    let mut t = new_table(vec!["node", "status", "detail"]);
    for (i, n) in p.nodes.iter().enumerate() {
        // A reason several nodes gave is printed once.
        let earlier = p.nodes[..i]
            .iter()
            .find(|e| n.detail.is_some() && e.status == n.status && e.detail == n.detail);
        let detail = match earlier {
            Some(e) => format!("as {}", safe(&e.node)),
            None => safe(n.detail.as_deref().unwrap_or_default()),
        };
        let status = match n.status {
            NodeStatus::Answered => "answered",
            NodeStatus::Suppressed => "suppressed (< k)",
            NodeStatus::Missing => "missing",
            NodeStatus::Refused => "refused",
            NodeStatus::Failed => "failed",
        };
        t.add_row(vec![safe(&n.node), status.into(), detail]);
    }
    let n = r
        .n()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "partly suppressed".into());
    let mut out = format!(
        "N = {n}; {} of {} nodes answered (minimum {}); minimum cell size k = {}\n{t}",
        p.answered,
        p.nodes.len(),
        p.min_nodes,
        p.min_cell_size
    );
    for note in &p.notes {
        out.push_str(&format!("\nnote: {}", safe(note)));
    }
    if let Some(privacy) = &r.privacy {
        out.push('\n');
        out.push_str(&privacy_text(privacy));
    }
    out
}

/// The privacy footer: what the query cost and what the study has left.
pub fn privacy_text(p: &PrivacyReport) -> String {
    if p.exact {
        return "privacy: exact study (no noise, no budget), accepted as such by every answering node".into();
    }
    let mut out = format!(
        "privacy: cost rho {} ({}), study spent {} of {} (epsilon {:.3} at delta {:e}), remaining {}",
        num(p.cost_rho),
        if p.cached {
            "repeated answer, nothing charged".to_string()
        } else {
            format!("charged {}", num(p.charged_rho))
        },
        num(p.spent_rho),
        num(p.budget_rho),
        p.epsilon_spent,
        p.delta,
        num(p.remaining_rho),
    );
    if let Some(sd) = p.count_noise_sd {
        out.push_str(&format!(
            "\nprivacy: each pooled count carries noise of sd {} (95% within ±{})",
            num(sd),
            num(1.96 * sd)
        ));
    }
    for note in &p.notes {
        out.push_str(&format!("\nnote: {note}"));
    }
    out
}

/// CSV of the pooled value; with sites, a first column says whose row it is.
pub fn render_csv(r: &PooledResult) -> anyhow::Result<String> {
    let (header, body) = csv_rows(&r.value);
    let mut w = csv::Writer::from_writer(Vec::new());
    let with_sites = !r.by_site.is_empty();
    let prefix = |who: &str, row: Vec<String>| -> Vec<String> {
        if with_sites {
            std::iter::once(who.to_string()).chain(row).collect()
        } else {
            row
        }
    };
    w.write_record(csv_row(prefix("site", header)))?;
    for row in body {
        w.write_record(csv_row(prefix("pooled", row)))?;
    }
    for site in &r.by_site {
        if let Some(v) = &site.value {
            for row in csv_rows(v).1 {
                w.write_record(csv_row(prefix(&site.node, row)))?;
            }
        }
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

pub fn render(r: &PooledResult, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Table => render_table(r),
        Format::Json => safe_json(&serde_json::to_string_pretty(r)?),
        Format::Csv => render_csv(r)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::models::survival;
    use plexus_core::pool::{NodeOutcome, Provenance};
    use plexus_proto::v1 as pb;

    /// A Kaplan-Meier result whose standard error is missing (everyone at
    /// risk died, so survival is 0 and Greenwood's sum infinite) reaches
    /// the CLI as JSON null, the way the coordinator stores it; the CLI
    /// reads it back and prints it as missing instead of failing.
    #[test]
    fn a_kaplan_meier_result_with_a_missing_standard_error_prints() {
        let points = [0.0, 10.0, 20.0, 30.0];
        // Five die by 10, the other five by 20: nobody is left after 20.
        let t = [5.0, 5.0, 5.0, 5.0, 5.0, 15.0, 15.0, 15.0, 15.0, 15.0];
        let groups = survival::disclose(survival::count(&points, &t, &[true; 10], &[0; 10], 1), 5);
        let km = survival::pool(
            &points,
            &["all".into()],
            &[("hospital-a".into(), groups)],
            ("followup_days", "death", None),
        )
        .unwrap();
        let result = PooledResult {
            value: PooledValue::KaplanMeier(km),
            provenance: Provenance {
                nodes: vec![NodeOutcome {
                    node: "hospital-a".into(),
                    status: NodeStatus::Answered,
                    detail: None,
                    code: None,
                }],
                answered: 1,
                min_nodes: 1,
                min_cell_size: 5,
                notes: vec![],
                round_ms: vec![],
            },
            by_site: vec![],
            privacy: None,
        };
        let json = serde_json::to_string(&result).unwrap();
        assert!(
            json.contains(r#""lower":["#) && json.contains("null,null]"),
            "{json}"
        );
        let reply = pb::QueryResult {
            status: pb::QueryStatus::Succeeded as i32,
            result_json: json,
            ..Default::default()
        };
        let back = plexus_client::outcome(&reply).unwrap();

        let table = render(&back, Format::Table).unwrap();
        // Median 10, survival stated until 20 where it is 0 with no interval.
        let row = table.lines().find(|l| l.contains(" all ")).unwrap();
        let cells: Vec<&str> = row.split(['│', '┆']).map(str::trim).collect();
        assert_eq!(
            cells[1..8],
            ["all", "10", "10", "10", "20", "0.000", "- - -"],
            "{table}"
        );
        assert!(
            table.contains("all: survival is not stated after 20: the released counts show nobody at risk after it"),
            "{table}"
        );

        let csv = render(&back, Format::Csv).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "group,time,n_risk,n_event,n_censor,survival,std_error,lower,upper"
        );
        assert!(lines[1].starts_with("all,10,10,5,0,0.5,0.158"), "{csv}");
        assert_eq!(lines[2], "all,20,5,5,0,0,,,");
        assert_eq!(lines[3], "all,30,0,0,0,,,,");

        let pretty = render(&back, Format::Json).unwrap();
        let again: PooledResult = serde_json::from_str(&pretty).unwrap();
        let PooledValue::KaplanMeier(k) = &again.value else {
            panic!()
        };
        assert_eq!(k.curves[0].std_error[1], None);

        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("km.png");
        crate::plot::plot_result(&back, &png).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn a_refusal_several_nodes_gave_is_printed_once() {
        let node = |name: &str, status, detail: Option<&str>| NodeOutcome {
            node: name.into(),
            status,
            detail: detail.map(String::from),
            code: None,
        };
        let why = "study \"s\" has not been approved by this hospital yet";
        let result = PooledResult {
            value: PooledValue::Count {
                n: plexus_core::cell::PooledCell {
                    count: Some(40),
                    at_least: None,
                    suppressed_at: vec![],
                    suppressed_by: 0,
                },
            },
            provenance: Provenance {
                nodes: vec![
                    node("hospital-a", NodeStatus::Answered, None),
                    node("hospital-b", NodeStatus::Answered, None),
                    node("hospital-c", NodeStatus::Refused, Some(why)),
                    node("hospital-d", NodeStatus::Refused, Some(why)),
                ],
                answered: 2,
                min_nodes: 2,
                min_cell_size: 5,
                notes: vec![],
                round_ms: vec![],
            },
            by_site: vec![],
            privacy: None,
        };
        let text = provenance(&result);
        assert_eq!(text.matches(why).count(), 1, "{text}");
        let d = text.lines().find(|l| l.contains("hospital-d")).unwrap();
        assert!(d.contains("as hospital-c"), "{text}");
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_evaluate_stay_text() {
        for (cell, expected) in [
            ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
            ("+41 20 123", "'+41 20 123"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
            ("\t=1", "'\\u{9}=1"),
            ("\r=1", "'\\u{d}=1"),
            ("-inf", "'-inf"),
            // Numbers stay numbers, and text not starting a formula stays.
            ("-0.25", "-0.25"),
            ("+3", "+3"),
            ("-1e-5", "-1e-5"),
            ("a=b", "a=b"),
            ("hospital-a", "hospital-a"),
            ("", ""),
            // No raw line break forges a row.
            ("ok\nforged,row", "ok\\u{a}forged,row"),
        ] {
            assert_eq!(csv_cell(cell), expected, "{cell:?}");
        }
    }

    #[test]
    fn rendered_text_keeps_its_own_lines_only() {
        assert_eq!(safe("a\nb\u{1b}"), "a\\u{a}b\\u{1b}");
        assert_eq!(
            safe_text("line 1\nline 2\r\u{202E}"),
            "line 1\nline 2\\u{d}\\u{202e}"
        );
        assert_eq!(safe_json("[\n  \"a\u{9b}\"\n]"), "[\n  \"a\\u009b\"\n]");
    }
}
