//! Rendering pooled results for people (aligned tables), programs (JSON)
//! and spreadsheets (CSV).

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

use plexus_core::pool::{NodeStatus, PooledCell, PooledResult, PooledValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
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

/// The value as rows of strings: (header, rows). Shared by table and CSV.
pub fn rows(r: &PooledResult) -> (Vec<String>, Vec<Vec<String>>) {
    match &r.value {
        PooledValue::Count { n } => (vec!["count".into()], vec![vec![cell_text(n)]]),
        PooledValue::Summary {
            variable,
            n,
            mean,
            variance,
            sd,
        } => (
            ["variable", "n", "mean", "variance", "sd"]
                .map(String::from)
                .to_vec(),
            vec![vec![
                variable.clone(),
                n.to_string(),
                num(*mean),
                variance.map(num).unwrap_or_else(|| "-".into()),
                sd.map(num).unwrap_or_else(|| "-".into()),
            ]],
        ),
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
    }
}

pub fn render_table(r: &PooledResult) -> String {
    let (header, body) = rows(r);
    let mut t = new_table(header);
    for row in body {
        t.add_row(
            row.into_iter()
                .map(|s| Cell::new(s).set_alignment(CellAlignment::Right)),
        );
    }
    format!("{t}\n{}", provenance(r))
}

pub fn provenance(r: &PooledResult) -> String {
    let p = &r.provenance;
    let mut t = new_table(vec!["node", "status", "detail"]);
    for n in &p.nodes {
        let status = match n.status {
            NodeStatus::Answered => "answered",
            NodeStatus::Suppressed => "suppressed (< k)",
            NodeStatus::Missing => "missing",
            NodeStatus::Refused => "refused",
            NodeStatus::Failed => "failed",
        };
        t.add_row(vec![
            n.node.clone(),
            status.into(),
            n.detail.clone().unwrap_or_default(),
        ]);
    }
    let n = r
        .n()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "partly suppressed".into());
    format!(
        "N = {n}; {} of {} nodes answered (minimum {}); minimum cell size k = {}\n{t}",
        p.answered,
        p.nodes.len(),
        p.min_nodes,
        p.min_cell_size
    )
}

pub fn render_csv(r: &PooledResult) -> anyhow::Result<String> {
    let (header, body) = rows(r);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&header)?;
    for row in body {
        w.write_record(&row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

pub fn render(r: &PooledResult, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Table => render_table(r),
        Format::Json => serde_json::to_string_pretty(r)?,
        Format::Csv => render_csv(r)?,
    })
}
