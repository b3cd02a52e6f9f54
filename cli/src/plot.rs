//! Plot rendering for `plexus query --plot`: Kaplan-Meier curves with their
//! confidence bands and histograms, written as SVG or PNG by plotters.
//!
//! Text needs a TrueType font at run time (plotters' `ab_glyph` backend
//! builds without system font libraries); the first of `PLEXUS_PLOT_FONT`
//! and the usual system font paths is used.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const SIZE: (u32, u32) = (800, 500);
const FONT: &str = "sans-serif";
const FONT_ENV: &str = "PLEXUS_PLOT_FONT";
/// Searched in order after `PLEXUS_PLOT_FONT`: Debian/Ubuntu, Arch, Fedora, then macOS paths.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans-fonts/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/google-noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];
/// Okabe-Ito colours (colour-blind safe), cycled when there are more curves.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// One Kaplan-Meier curve with its confidence band; all four vectors have the same length.
pub struct Curve {
    pub label: String,
    pub times: Vec<f64>,
    pub survival: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

/// Kaplan-Meier curves as step functions starting at (`start`, 1): `times[0]` is the first grid
/// point after `start`, so S = 1 is drawn from `start` to the first time. Each curve gets a shaded
/// confidence band (lower..upper, same step shape, semi-transparent fill in the curve's colour)
/// and a legend entry. NaN bounds count as the survival value; a curve without points is flat at 1.
pub fn km_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    start: f64,
    curves: &[Curve],
) -> Result<()> {
    let format = output_format(path)?;
    let km = prepare_km(start, curves)?;
    ensure_font()?;
    match format {
        Format::Svg => draw_km(SVGBackend::new(path, SIZE), title, x_label, &km),
        Format::Png => draw_km(BitMapBackend::new(path, SIZE), title, x_label, &km),
    }
    .with_context(|| format!("cannot write plot {}", path.display()))
}

/// A histogram on public bin edges (`edges.len() == counts.len() + 1`); `counts[i]` is None when
/// that bin was suppressed: it is drawn as a full-height hatched light-grey outlined bar, and a
/// note under the plot says how many bins were suppressed.
pub fn histogram_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    edges: &[f64],
    counts: &[Option<u64>],
) -> Result<()> {
    let format = output_format(path)?;
    let (n_bins, n_edges) = (counts.len(), edges.len());
    if n_bins == 0 {
        bail!("nothing to plot: the histogram has no bins");
    }
    if n_edges != n_bins + 1 {
        bail!("histogram has {n_bins} bins but {n_edges} edges; expected one more edge than bins");
    }
    if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
        bail!("histogram bin edges must be finite and strictly increasing");
    }
    ensure_font()?;
    let labels = [title, x_label, "count"];
    match format {
        Format::Svg => draw_hist(SVGBackend::new(path, SIZE), labels, edges, counts),
        Format::Png => draw_hist(BitMapBackend::new(path, SIZE), labels, edges, counts),
    }
    .with_context(|| format!("cannot write plot {}", path.display()))
}

/// A model's validation as three panels side by side: ROC curves,
/// calibration (observed against predicted risk per bin, with the
/// diagonal), and the decision curve (net benefit against threshold, with
/// treat-all and treat-none). One series per group with patients of both
/// kinds.
pub fn performance_plot(
    path: &Path,
    p: &plexus_core::models::performance::PerformanceResult,
) -> Result<()> {
    let format = output_format(path)?;
    if p.groups.iter().all(|g| g.roc.is_empty()) {
        bail!("nothing to plot: no group has patients with and without the outcome");
    }
    ensure_font()?;
    let size = (3 * SIZE.0 / 2 + 300, SIZE.1);
    match format {
        Format::Svg => draw_performance(SVGBackend::new(path, size), p),
        Format::Png => draw_performance(BitMapBackend::new(path, size), p),
    }
    .with_context(|| format!("cannot write plot {}", path.display()))
}

fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(170, 170, 170))
        .draw()?;
    Ok(())
}

fn draw_performance<DB: DrawingBackend>(
    backend: DB,
    p: &plexus_core::models::performance::PerformanceResult,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let groups: Vec<_> = p.groups.iter().filter(|g| !g.roc.is_empty()).collect();
    let grey = RGBColor(150, 150, 150);
    // ROC.
    let mut chart = new_chart(
        &panels[0],
        ["ROC", "1 - specificity", "sensitivity"],
        0.0..1.0,
        0.0..1.0,
        true,
    )?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], grey))?;
    for (g, color) in groups.iter().zip(PALETTE.iter().cycle()) {
        let style = color.stroke_width(2);
        let auc = g
            .auc
            .map(|a| tick_label(&((a.estimate * 1000.0).round() / 1000.0)));
        chart
            .draw_series(LineSeries::new(g.roc.iter().map(|r| (r.fpr, r.tpr)), style))?
            .label(format!(
                "{} (AUC {})",
                g.group.label(),
                auc.unwrap_or_default()
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    legend(&mut chart)?;
    // Calibration.
    let top = groups
        .iter()
        .flat_map(|g| g.calibration.iter().flat_map(|b| [b.observed, b.predicted]))
        .fold(0.0f64, f64::max)
        .clamp(0.05, 1.0);
    let mut chart = new_chart(
        &panels[1],
        ["Calibration", "predicted risk", "observed risk"],
        0.0..top,
        0.0..top,
        true,
    )?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (top, top)], grey))?;
    for (g, color) in groups.iter().zip(PALETTE.iter().cycle()) {
        let style = color.stroke_width(2);
        let points: Vec<(f64, f64)> = g
            .calibration
            .iter()
            .map(|b| (b.predicted, b.observed))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(g.group.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        chart.draw_series(
            points
                .into_iter()
                .map(|pt| Circle::new(pt, 3, color.filled())),
        )?;
    }
    legend(&mut chart)?;
    // Decision curve, over the thresholds asked for.
    let all = groups[0];
    let xs: Vec<f64> = all.thresholds.iter().map(|t| t.threshold).collect();
    let x1 = xs.iter().copied().fold(0.0f64, f64::max).max(0.01);
    let nb_top = all
        .thresholds
        .iter()
        .map(|t| t.net_benefit.max(t.treat_all))
        .fold(0.0f64, f64::max)
        .max(0.01);
    let mut chart = new_chart(
        &panels[2],
        ["Decision curve", "threshold", "net benefit"],
        0.0..x1,
        (-nb_top * 0.2)..(nb_top * 1.1),
        true,
    )?;
    chart
        .draw_series(LineSeries::new(
            all.thresholds.iter().map(|t| (t.threshold, t.treat_all)),
            grey.stroke_width(2),
        ))?
        .label("treat all")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (x1, 0.0)], BLACK))?
        .label("treat none")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for (g, color) in groups.iter().zip(PALETTE.iter().cycle()) {
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                g.thresholds.iter().map(|t| (t.threshold, t.net_benefit)),
                style,
            ))?
            .label(g.group.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

enum Format {
    Svg,
    Png,
}

fn output_format(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => Ok(Format::Svg),
        Some(e) if e.eq_ignore_ascii_case("png") => Ok(Format::Png),
        _ => bail!(
            "plot file must end in .svg or .png, got \"{}\"",
            path.display()
        ),
    }
}

/// Registers a TrueType font as "sans-serif" once per process; the outcome is cached.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    let env = std::env::var_os(FONT_ENV).filter(|p| !p.is_empty());
    let outcome = REGISTERED.get_or_init(|| load_font(env.map(PathBuf::from)));
    outcome.clone().map_err(|e| anyhow!(e))
}

fn load_font(override_path: Option<PathBuf>) -> Result<(), String> {
    if let Some(path) = override_path {
        let p = path.display();
        let bytes = std::fs::read(&path);
        let bytes = bytes.map_err(|e| format!("cannot read {FONT_ENV} font file {p}: {e}"))?;
        if register(bytes) {
            return Ok(());
        }
        return Err(format!(
            "{FONT_ENV} font file {p} is not a usable TrueType font"
        ));
    }
    if FONT_PATHS
        .iter()
        .any(|p| std::fs::read(p).map(register).unwrap_or(false))
    {
        return Ok(());
    }
    Err(format!("no TrueType font found for plot labels; install a font package such as fonts-dejavu-core or set {FONT_ENV} to a .ttf file"))
}

fn register(bytes: Vec<u8>) -> bool {
    // plotters needs 'static font data; this happens at most once per candidate file per process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT, FontStyle::Normal, bytes).is_ok()
}

/// Validated curves as rows `[time, survival, low, high]` (clamped to 0..1, low <= survival <=
/// high), each starting with `[start, 1, 1, 1]`; a curve without points runs flat to the x end.
struct KmData {
    x_range: (f64, f64),
    curves: Vec<(String, Vec<[f64; 4]>)>,
}

fn prepare_km(start: f64, curves: &[Curve]) -> Result<KmData> {
    if curves.is_empty() {
        bail!("nothing to plot: no survival curves given");
    }
    if !start.is_finite() {
        bail!("the start time of the survival plot must be finite");
    }
    let (mut x0, mut x1) = (start, start);
    for c in curves {
        let label = &c.label;
        let lens @ [t, s, lo, up] = [
            c.times.len(),
            c.survival.len(),
            c.lower.len(),
            c.upper.len(),
        ];
        if lens.iter().any(|&n| n != t) {
            bail!("curve \"{label}\" has mismatched lengths: {t} times, {s} survival, {lo} lower, {up} upper values");
        }
        if c.times.iter().chain(&c.survival).any(|v| !v.is_finite()) {
            bail!("curve \"{label}\" has a non-finite time or survival value");
        }
        if c.times.windows(2).any(|w| w[0] > w[1]) {
            bail!("curve \"{label}\" has times that are not in increasing order");
        }
        c.times
            .iter()
            .for_each(|&t| (x0, x1) = (x0.min(t), x1.max(t)));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let rows = |c: &Curve| -> Vec<[f64; 4]> {
        let mut rows = vec![[start, 1.0, 1.0, 1.0]];
        for k in 0..c.times.len() {
            let s = c.survival[k].clamp(0.0, 1.0);
            let or_s = |v: f64| if v.is_finite() { v.clamp(0.0, 1.0) } else { s };
            let (a, b) = (or_s(c.lower[k]), or_s(c.upper[k]));
            rows.push([c.times[k], s, a.min(b).min(s), a.max(b).max(s)]);
        }
        if c.times.is_empty() {
            rows.push([x1, 1.0, 1.0, 1.0]);
        }
        rows
    };
    let curves = curves.iter().map(|c| (c.label.clone(), rows(c))).collect();
    Ok(KmData {
        x_range: (x0, x1),
        curves,
    })
}

/// Step-function path through column `j` of the rows: horizontal, then vertical at each time.
fn step_path(rows: &[[f64; 4]], j: usize) -> Vec<(f64, f64)> {
    let mut path = vec![(rows[0][0], rows[0][j])];
    for w in rows.windows(2) {
        path.extend([(w[1][0], w[0][j]), (w[1][0], w[1][j])]);
    }
    path
}

/// The first legend corner whose box (fractions `w`, `h` of the plot) no curve or band crosses.
fn legend_position(data: &KmData, w: f64, h: f64) -> SeriesLabelPosition {
    use SeriesLabelPosition::*;
    let (x0, x1) = data.x_range;
    let dx = (x1 - x0) * w;
    let corners = [
        (LowerLeft, x0, x0 + dx, 0.0, h),
        (UpperRight, x1 - dx, x1, 1.0 - h, 1.0),
        (LowerRight, x1 - dx, x1, 0.0, h),
    ];
    let free = |&(_, a, b, ya, yb): &(SeriesLabelPosition, f64, f64, f64, f64)| {
        data.curves.iter().all(|(_, rows)| {
            // Row k holds on [t_k, t_k+1]; steps are joined by vertical jumps, so the y values
            // covered over [a, b] form one interval.
            let ends = rows.iter().skip(1).chain(rows.last()).map(|r| r[0]);
            let active = rows
                .iter()
                .zip(ends)
                .filter(|(r, end)| r[0] <= b && *end >= a);
            let (lo, hi) =
                active.fold((2.0, -1.0), |(lo, hi), (r, _)| (r[2].min(lo), r[3].max(hi)));
            lo > yb || hi < ya
        })
    };
    corners.into_iter().find(free).map_or(LowerLeft, |c| c.0)
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Caption, axes, descriptions (`[title, x_label, y_label]`) and a light grid.
fn new_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    [title, x_label, y_label]: [&str; 3],
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_grid: bool,
) -> Result<Chart<'a, DB>>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(15)
        .margin_right(30)
        .x_label_area_size(50)
        .y_label_area_size(65)
        .build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    if !x_grid {
        mesh.disable_x_mesh();
    }
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(245, 245, 245))
        .draw()?;
    Ok(chart)
}

fn draw_km<DB: DrawingBackend>(backend: DB, title: &str, x_label: &str, km: &KmData) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1) = km.x_range;
    let labels = [title, x_label, "survival probability"];
    let mut chart = new_chart(&root, labels, x0..x1, 0.0..1.0, true)?;
    let colors = || PALETTE.iter().cycle();
    // All bands first, so that no band hides another curve's line.
    for ((_, rows), color) in km.curves.iter().zip(colors()) {
        let mut band = step_path(rows, 3);
        band.extend(step_path(rows, 2).into_iter().rev());
        chart.draw_series([Polygon::new(band, color.mix(0.2).filled())])?;
    }
    for ((label, rows), color) in km.curves.iter().zip(colors()) {
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(step_path(rows, 1), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    // Rough legend size in pixels: swatch, ~8.5 px per character, ~20 px per row.
    let (pw, ph) = chart.plotting_area().dim_in_pixel();
    let chars = km
        .curves
        .iter()
        .map(|c| c.0.chars().count())
        .max()
        .unwrap_or(0);
    let w = (50.0 + 8.5 * chars as f64) / f64::from(pw.max(1));
    let h = (20.0 + 20.0 * km.curves.len() as f64) / f64::from(ph.max(1));
    chart
        .configure_series_labels()
        .position(legend_position(km, w, h))
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(170, 170, 170))
        .draw()?;
    root.present()?;
    Ok(())
}

fn draw_hist<DB: DrawingBackend>(
    backend: DB,
    labels: [&str; 3],
    edges: &[f64],
    counts: &[Option<u64>],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, note) = root.split_vertically(SIZE.1 - 28);
    let max = counts.iter().flatten().max().copied().unwrap_or(0) as f64;
    let y_top = if max > 0.0 { max * 1.08 } else { 1.0 };
    let x_range = edges[0]..edges[edges.len() - 1];
    let mut chart = new_chart(&upper, labels, x_range, 0.0..y_top, false)?;
    for (i, count) in counts.iter().enumerate() {
        let bar = [
            (edges[i], 0.0),
            (edges[i + 1], count.map_or(y_top, |c| c as f64)),
        ];
        let (fill, edge) = match count {
            Some(_) => (RGBColor(64, 149, 197), RGBColor(0, 114, 178)),
            None => (RGBColor(238, 238, 238), RGBColor(150, 150, 150)),
        };
        chart.draw_series([
            Rectangle::new(bar, fill.filled()),
            Rectangle::new(bar, edge),
        ])?;
        if count.is_none() {
            // Hatching along "x + y = c" in pixel space, clipped to the bar.
            let ((x0, y1), (x1, y0)) = (chart.backend_coord(&bar[0]), chart.backend_coord(&bar[1]));
            for c in ((x0 + y0 + 10)..(x1 + y1)).step_by(10) {
                let (lo, hi) = (x0.max(c - y1), x1.min(c - y0));
                upper.draw(&PathElement::new(
                    [(lo, c - lo), (hi, c - hi)],
                    RGBColor(190, 190, 190),
                ))?;
            }
        }
    }
    let suppressed = counts.iter().filter(|c| c.is_none()).count();
    if suppressed > 0 {
        let n = counts.len();
        let text =
            format!("hatched grey bars: {suppressed} of {n} bins suppressed (count withheld)");
        let style = TextStyle::from((FONT, 14)).color(&RGBColor(90, 90, 90));
        note.draw_text(&text, &style, (80, 4))?;
    }
    root.present()?;
    Ok(())
}

/// Axis tick text without float noise or trailing zeros: 10 not 10.0, 0.3 not 0.30000000000000004.
fn tick_label(v: &f64) -> String {
    if *v != 0.0 && v.abs() < 1e-4 {
        return format!("{v:e}");
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0" } else { s }.to_string()
}

/// Draws a pooled result: Kaplan-Meier curves with their bands, or a
/// histogram. Other results have nothing to draw and say so.
pub fn plot_result(r: &plexus_core::pool::PooledResult, path: &Path) -> Result<()> {
    use plexus_core::pool::PooledValue;
    match &r.value {
        PooledValue::KaplanMeier(k) => {
            // Each curve is drawn only where survival is stated: it ends
            // where the released counts stop showing patients at risk or
            // intervals were merged, never flat to the grid's end.
            let curves: Vec<Curve> = k
                .curves
                .iter()
                .filter(|c| c.survival.iter().any(Option::is_some))
                .map(|c| {
                    let stated: Vec<usize> =
                        (0..c.times.len()).filter(|&j| c.survival[j].is_some()).collect();
                    let column = |v: &[Option<f64>]| -> Vec<f64> {
                        stated.iter().map(|&j| v[j].unwrap_or(f64::NAN)).collect()
                    };
                    Curve {
                        label: match &k.group {
                            Some(g) => format!("{g}={} (n={})", c.group, c.at_risk),
                            None => format!("all (n={})", c.at_risk),
                        },
                        times: stated.iter().map(|&j| c.times[j]).collect(),
                        survival: column(&c.survival),
                        lower: column(&c.lower),
                        upper: column(&c.upper),
                    }
                })
                .collect();
            if curves.is_empty() {
                bail!("nothing to plot: no curve states survival at any time (the result's notes say why)");
            }
            let title = format!("Kaplan-Meier: {} / {}", k.time, k.event);
            km_plot(path, &title, &k.time, k.start, &curves)
        }
        PooledValue::Histogram {
            variable,
            edges,
            bins,
            ..
        } => {
            let counts: Vec<Option<u64>> = bins.iter().map(|c| c.count).collect();
            histogram_plot(path, &format!("Histogram of {variable}"), variable, edges, &counts)
        }
        PooledValue::Performance(p) => performance_plot(path, p),
        other => bail!(
            "there is nothing to plot for a {} result; --plot draws kaplan_meier, histogram and model_performance results",
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                .unwrap_or_else(|| "this".into())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    const NAN: f64 = f64::NAN;

    /// A curve from rows of (time, survival, lower, upper).
    fn curve(label: &str, rows: &[[f64; 4]]) -> Curve {
        let col = |j: usize| rows.iter().map(|r| r[j]).collect();
        let (times, survival, lower, upper) = (col(0), col(1), col(2), col(3));
        Curve {
            label: label.to_string(),
            times,
            survival,
            lower,
            upper,
        }
    }

    fn sample_curves() -> Vec<Curve> {
        let make = |label: &str, rate: f64| {
            let rows: Vec<[f64; 4]> = (1..=24)
                .map(|t| {
                    let (t, half) = (f64::from(t), 0.036 * f64::from(t).sqrt());
                    let s = (-rate * t).exp();
                    [t, s, s - half, s + half]
                })
                .collect();
            curve(label, &rows)
        };
        vec![make("treatment", 0.03), make("control", 0.06)]
    }

    fn sample_hist() -> (Vec<f64>, Vec<Option<u64>>) {
        let edges = (0..=10).map(|i| f64::from(i) * 10.0).collect();
        let counts = [0, 12, 40, 85, 120, 96, 51, 20, 0, 0];
        (
            edges,
            counts.iter().map(|&c| (c > 0).then_some(c)).collect(),
        )
    }

    fn check_outputs(dir: &Path, title: &str, labels: &[&str], draw: impl Fn(&Path) -> Result<()>) {
        let (svg, png) = (dir.join("plot.svg"), dir.join("plot.png"));
        draw(&svg).unwrap();
        draw(&png).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for label in std::iter::once(&title).chain(labels) {
            assert!(text.contains(label), "svg lacks {label}");
        }
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.len() > PNG_SIGNATURE.len() && bytes.starts_with(&PNG_SIGNATURE));
    }

    #[test]
    fn km_writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let curves = sample_curves();
        let labels = ["treatment", "control", "survival probability", "months"];
        check_outputs(dir.path(), "Overall survival", &labels, |p| {
            km_plot(p, "Overall survival", "months", 0.0, &curves)
        });
    }

    #[test]
    fn km_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("km.svg");
        let err = km_plot(&path, "t", "x", 0.0, &[]).unwrap_err();
        assert!(err.to_string().contains("nothing to plot"), "{err}");
        let rows = [
            [1.0, 0.9, NAN, 0.95],
            [2.0, 0.7, 0.6, NAN],
            [3.0, 0.5, NAN, f64::INFINITY],
        ];
        let curves = [curve("empty arm", &[]), curve("nan band", &rows)];
        km_plot(&path, "edge cases", "days", 0.0, &curves).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("empty arm"));
        km_plot(
            &dir.path().join("e.png"),
            "t",
            "x",
            0.0,
            &[curve("nobody", &[])],
        )
        .unwrap();
        let mut bad = curve("arm B", &[[1.0, 0.9, 0.8, 1.0], [2.0, 0.8, 0.7, 0.9]]);
        bad.survival.pop();
        let err = km_plot(&path, "t", "x", 0.0, &[bad])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("curve \"arm B\" has mismatched lengths"),
            "{err}"
        );
    }

    #[test]
    fn histogram_writes_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let (edges, counts) = sample_hist();
        check_outputs(
            dir.path(),
            "Age at diagnosis",
            &["suppressed", "count"],
            |p| histogram_plot(p, "Age at diagnosis", "age (years)", &edges, &counts),
        );
    }

    #[test]
    fn histogram_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        histogram_plot(&path, "all hidden", "x", &[0.0, 1.0, 2.0], &[None, None]).unwrap();
        let err = histogram_plot(&path, "t", "x", &[0.0, 1.0], &[Some(1), Some(2)]).unwrap_err();
        assert!(err.to_string().contains("one more edge than bins"), "{err}");
        assert!(histogram_plot(&path, "t", "x", &[0.0], &[]).is_err());
        assert!(histogram_plot(&path, "t", "x", &[1.0, 0.0], &[Some(3)]).is_err());
    }

    #[test]
    fn bad_extension_is_rejected() {
        let expected = "plot file must end in .svg or .png, got \"out/plot.pdf\"";
        let path = Path::new("out/plot.pdf");
        let err = histogram_plot(path, "t", "x", &[0.0, 1.0], &[Some(1)]).unwrap_err();
        assert_eq!(err.to_string(), expected);
        let err = km_plot(path, "t", "x", 0.0, &sample_curves()).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn legend_avoids_curves() {
        let high = prepare_km(
            0.0,
            &[curve("a", &[[1.0, 0.95, 0.9, 1.0], [9.0, 0.9, 0.8, 0.95]])],
        );
        let pos = legend_position(&high.unwrap(), 0.3, 0.2);
        assert!(matches!(pos, SeriesLabelPosition::LowerLeft));
        let steep = prepare_km(
            0.0,
            &[curve("b", &[[1.0, 0.1, 0.0, 0.2], [9.0, 0.05, 0.0, 0.1]])],
        );
        let pos = legend_position(&steep.unwrap(), 0.3, 0.2);
        assert!(matches!(pos, SeriesLabelPosition::UpperRight));
    }

    #[test]
    fn tick_labels_are_tidy() {
        assert_eq!(tick_label(&10.0), "10");
        assert_eq!(tick_label(&(0.1 + 0.2)), "0.3");
        assert_eq!(tick_label(&-0.0), "0");
        assert_eq!(tick_label(&2.5e-6), "2.5e-6");
    }

    #[test]
    fn font_override_must_be_readable() {
        let err = load_font(Some(PathBuf::from("/nonexistent/font.ttf"))).unwrap_err();
        assert!(err.contains("PLEXUS_PLOT_FONT"), "{err}");
    }

    /// Writes sample_km.png and sample_hist.png into the temp folder for
    /// eyeballing: `cargo test -p plexus plot -- --ignored`.
    #[test]
    #[ignore]
    fn render_samples() {
        let dir = std::env::temp_dir();
        let (title, x_label) = ("Overall survival by arm", "months since diagnosis");
        km_plot(
            &dir.join("sample_km.png"),
            title,
            x_label,
            0.0,
            &sample_curves(),
        )
        .unwrap();
        let (edges, counts) = sample_hist();
        let path = dir.join("sample_hist.png");
        histogram_plot(&path, "Age at diagnosis", "age (years)", &edges, &counts).unwrap();
    }
}
