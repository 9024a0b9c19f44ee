//! PNG plots of fits (plotters' bitmap backend with a bundled font, so no
//! system fonts are needed).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// DejaVu Sans (see `assets/fonts/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the bundled font with plotters once per process (every PNG the
/// CLI draws uses it, so no system fonts are needed).
pub(crate) fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

type PlotResult = Result<(), String>;

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> String + '_ {
    move |e| format!("{}: cannot draw the plot: {e}", path.display())
}

fn range(vals: impl Iterator<Item = f64>, pad_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if pad_zero {
        lo = lo.min(0.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let pad = 0.05 * (hi - lo);
    (lo - if pad_zero && lo == 0.0 { 0.0 } else { pad }, hi + pad)
}

/// Draws with `draw` into a temporary file and renames it over `path`
/// ([`crate::atomic::write_via_path`]): a failed plot leaves no broken PNG.
fn atomic_png(path: &Path, draw: impl FnOnce(&Path) -> PlotResult) -> PlotResult {
    crate::atomic::write_via_path(path, draw).map_err(|e| e.to_string())
}

/// A line plot of one or more named series `(name, points)`.
pub fn lines(path: &Path, title: &str, xlabel: &str, ylabel: &str, series: &[(String, Vec<(f64, f64)>)]) -> PlotResult {
    atomic_png(path, |tmp| draw_lines(tmp, title, xlabel, ylabel, series))
}

fn draw_lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> PlotResult {
    ensure_font();
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (x0, x1) = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)), false);
    let (y0, y1) = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)), false);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err(path))?;
    chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).label_style(("sans-serif", 15)).draw().map_err(err(path))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err(path))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(err(path))?;
    }
    root.present().map_err(err(path))?;
    Ok(())
}

/// Observed against predicted (PRED and IPRED), with the identity line.
pub fn obs_vs_pred(path: &Path, title: &str, dv: &[f64], pred: &[f64], ipred: &[f64]) -> PlotResult {
    atomic_png(path, |tmp| draw_obs_vs_pred(tmp, title, dv, pred, ipred))
}

fn draw_obs_vs_pred(path: &Path, title: &str, dv: &[f64], pred: &[f64], ipred: &[f64]) -> PlotResult {
    ensure_font();
    let root = BitMapBackend::new(path, (700, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (_, hi) = range(dv.iter().chain(pred).chain(ipred).copied(), true);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..hi, 0.0..hi)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc("predicted")
        .y_desc("observed")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err(path))?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (hi, hi)], BLACK.stroke_width(1))).map_err(err(path))?;
    let blue = BLUE.mix(0.6);
    chart
        .draw_series(pred.iter().zip(dv).map(|(&p, &y)| Circle::new((p, y), 3, blue.filled())))
        .map_err(err(path))?
        .label("PRED (typical)")
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, blue.filled()));
    let red = RED.mix(0.6);
    chart
        .draw_series(ipred.iter().zip(dv).map(|(&p, &y)| TriangleMarker::new((p, y), 4, red.filled())))
        .map_err(err(path))?
        .label("IPRED (individual)")
        .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, red.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

/// One panel per subject: observations and the fitted curves.
pub struct SubjectPanel {
    /// Subject ID.
    pub id: String,
    /// Observations (time, DV).
    pub obs: Vec<(f64, f64)>,
    /// Typical prediction on a fine grid.
    pub pred: Vec<(f64, f64)>,
    /// Individual prediction on a fine grid.
    pub ipred: Vec<(f64, f64)>,
}

/// A grid of per-subject fits.
pub fn subjects(path: &Path, title: &str, panels: &[SubjectPanel]) -> PlotResult {
    atomic_png(path, |tmp| draw_subjects(tmp, title, panels))
}

fn draw_subjects(path: &Path, title: &str, panels: &[SubjectPanel]) -> PlotResult {
    ensure_font();
    let n = panels.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let root = BitMapBackend::new(path, (300 * cols as u32, 220 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (top, body) = root.split_vertically(40);
    top.titled(title, ("sans-serif", 22)).map_err(err(path))?;
    let areas = body.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas) {
        let (x0, x1) = range(panel.obs.iter().chain(&panel.pred).map(|p| p.0), true);
        let (_, y1) = range(panel.obs.iter().chain(&panel.pred).chain(&panel.ipred).map(|p| p.1), true);
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("ID {}", panel.id), ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(38)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(err(path))?;
        chart.configure_mesh().label_style(("sans-serif", 11)).draw().map_err(err(path))?;
        chart.draw_series(LineSeries::new(panel.pred.iter().copied(), BLUE.stroke_width(1))).map_err(err(path))?;
        chart.draw_series(LineSeries::new(panel.ipred.iter().copied(), RED.stroke_width(2))).map_err(err(path))?;
        chart.draw_series(panel.obs.iter().map(|&(t, y)| Circle::new((t, y), 3, BLACK.filled()))).map_err(err(path))?;
    }
    root.present().map_err(err(path))?;
    Ok(())
}

/// One panel of predictive bands: observations, lines (e.g. the individual
/// fit or a median) and shaded bands `(t, lo, hi)` (outer band first).
pub struct BandPanel {
    /// Panel caption.
    pub title: String,
    /// Observations (time, DV).
    pub obs: Vec<(f64, f64)>,
    /// Lines (time, value).
    pub lines: Vec<Vec<(f64, f64)>>,
    /// Bands (time, lower, upper), drawn in order (outer first).
    pub bands: Vec<Vec<(f64, f64, f64)>>,
}

/// A grid of band panels (assimilate's per-subject plots, forecast.png).
pub fn band_panels(path: &Path, title: &str, panels: &[BandPanel]) -> PlotResult {
    atomic_png(path, |tmp| draw_band_panels(tmp, title, panels))
}

fn draw_band_panels(path: &Path, title: &str, panels: &[BandPanel]) -> PlotResult {
    ensure_font();
    let n = panels.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let root = BitMapBackend::new(path, (340 * cols as u32, 250 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (top, body) = root.split_vertically(40);
    top.titled(title, ("sans-serif", 20)).map_err(err(path))?;
    let areas = body.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas) {
        let xs = panel
            .obs
            .iter()
            .map(|p| p.0)
            .chain(panel.lines.iter().flatten().map(|p| p.0))
            .chain(panel.bands.iter().flatten().map(|p| p.0));
        let (x0, x1) = range(xs, false);
        let ys = panel
            .obs
            .iter()
            .map(|p| p.1)
            .chain(panel.lines.iter().flatten().map(|p| p.1))
            .chain(panel.bands.iter().flatten().map(|p| p.2));
        let (_, y1) = range(ys, true);
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 13))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(42)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(err(path))?;
        chart.configure_mesh().label_style(("sans-serif", 11)).draw().map_err(err(path))?;
        for (i, band) in panel.bands.iter().enumerate() {
            let finite: Vec<&(f64, f64, f64)> = band.iter().filter(|b| b.1.is_finite() && b.2.is_finite()).collect();
            let poly: Vec<(f64, f64)> =
                finite.iter().map(|b| (b.0, b.2)).chain(finite.iter().rev().map(|b| (b.0, b.1))).collect();
            let shade = if i == 0 { BLUE.mix(0.15) } else { BLUE.mix(0.3) };
            chart.draw_series(std::iter::once(Polygon::new(poly, shade.filled()))).map_err(err(path))?;
        }
        let colours = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
        for (i, line) in panel.lines.iter().enumerate() {
            let pts = line.iter().copied().filter(|p| p.1.is_finite());
            chart.draw_series(LineSeries::new(pts, colours[i % colours.len()].stroke_width(2))).map_err(err(path))?;
        }
        chart.draw_series(panel.obs.iter().map(|&(t, y)| Circle::new((t, y), 3, BLACK.filled()))).map_err(err(path))?;
    }
    root.present().map_err(err(path))?;
    Ok(())
}

/// An approximation of matplotlib's viridis colour map at `t` in [0, 1].
pub(crate) fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let x = t.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// A heat map of `values[yi * xs.len() + xi]` (NaN cells left blank) over
/// two grid axes, viridis colours with the value printed in each cell.
pub fn heatmap(
    path: &Path,
    title: &str,
    (x_name, xs): (&str, &[f64]),
    (y_name, ys): (&str, &[f64]),
    values: &[f64],
) -> PlotResult {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    ensure_font();
    let (nx, ny) = (xs.len(), ys.len());
    let width = (140 + 90 * nx as u32).clamp(400, 1400);
    let height = (160 + 60 * ny as u32).clamp(300, 1000);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("cannot draw the heat map: {e}");
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(e)?;
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let fmt = |v: f64| format!("{v:.3e}");
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((0..(nx as i32 - 1).max(1)).into_segmented(), (0..(ny as i32 - 1).max(1)).into_segmented())
        .map_err(e)?;
    let label = |vals: &[f64], v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) if *i >= 0 && (*i as usize) < vals.len() => format!("{:.3}", vals[*i as usize]),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nx)
        .y_labels(ny)
        .x_label_formatter(&|v| label(xs, v))
        .y_label_formatter(&|v| label(ys, v))
        .x_desc(x_name)
        .y_desc(y_name)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for yi in 0..ny {
        for xi in 0..nx {
            let v = values.get(yi * nx + xi).copied().unwrap_or(f64::NAN);
            if !v.is_finite() {
                continue;
            }
            let t = ((v - lo) / span).clamp(0.0, 1.0);
            let (x0, y0) = (xi as i32, yi as i32);
            let cell = [
                (SegmentValue::Exact(x0), SegmentValue::Exact(y0)),
                (SegmentValue::Exact(x0 + 1), SegmentValue::Exact(y0 + 1)),
            ];
            chart.draw_series(std::iter::once(Rectangle::new(cell, viridis(t).filled()))).map_err(e)?;
            let text_color = if t > 0.6 { BLACK } else { WHITE };
            let style = ("sans-serif", 11).into_font().color(&text_color).pos(Pos::new(HPos::Center, VPos::Center));
            chart
                .draw_series(std::iter::once(Text::new(
                    fmt(v),
                    (SegmentValue::CenterOf(x0), SegmentValue::CenterOf(y0)),
                    style,
                )))
                .map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}
