//! Per-group summaries (`summary.csv`), the ranking and the heat map,
//! computed by streaming the part files in order (memory bounded by one part).

use std::io::Write;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::io::{complete_parts, read_part};
use super::{Sweep, SweepError};
use crate::plots::viridis;

/// Summary statistics of one column over a group's successful trajectories.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColumnStats {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub sd: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

#[derive(Debug, Clone, Copy)]
struct Acc {
    n: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Acc {
    fn new() -> Self {
        Acc { n: 0, mean: 0.0, m2: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }
    fn stats(&self) -> ColumnStats {
        if self.n == 0 {
            return ColumnStats { mean: f64::NAN, sd: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        let sd = if self.n > 1 { (self.m2 / (self.n - 1) as f64).sqrt() } else { 0.0 };
        ColumnStats { mean: self.mean, sd, min: self.min, max: self.max }
    }
}

/// One group (regimen × grid × sample point) of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// Group index.
    pub group: u64,
    /// Grid axis then sample values ([`Sweep::axis_names`], [`Sweep::sample_names`]).
    pub key: Vec<f64>,
    /// Trajectories.
    pub n: u64,
    /// Trajectories that did not reach the horizon (excluded from the statistics).
    pub failed: u64,
    /// Statistics per result column ([`Sweep::result_columns`]).
    pub stats: Vec<ColumnStats>,
}

/// What [`Sweep::finish`] returns: the ranked groups and where the files are.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepReport {
    /// Number of groups.
    pub groups: u64,
    /// Number of trajectories.
    pub trajectories: u64,
    /// Trajectories that did not reach the horizon.
    pub failed: u64,
    /// The first failed trajectory: its id, `status` and the last output
    /// time it reached (NaN when unknown).
    pub first_failure: Option<(u64, String, f64)>,
    /// Key column names (axes then sampled variables).
    pub key_names: Vec<String>,
    /// Result column names.
    pub columns: Vec<String>,
    /// Index of the rank-by column in `columns`.
    pub rank_col: Option<usize>,
    /// Index of the toxicity column in `columns`.
    pub tox_col: Option<usize>,
    /// The best groups by the rank-by column's mean, best first (at most `top`).
    pub ranked: Vec<GroupRow>,
    /// The best group whose mean toxicity is within `max_toxicity`, if set.
    pub best_within_toxicity: Option<GroupRow>,
    /// Heat map written, if any.
    pub heatmap: Option<String>,
}

use crate::plots::ensure_font;

fn csv_num(x: f64) -> String {
    if x.is_nan() {
        String::new()
    } else {
        format!("{x}")
    }
}

pub(super) fn finish(sweep: &Sweep, dir: &Path) -> Result<SweepReport, SweepError> {
    let parts = complete_parts(sweep, dir)?;
    let columns = sweep.result_columns();
    let key_names: Vec<String> =
        sweep.axis_names().iter().chain(sweep.sample_names().iter()).map(|s| s.to_string()).collect();
    let csv_path = dir.join("summary.csv");
    // Streamed into the atomic writer: a part that cannot be read stops the
    // write (no summary.csv is left half-written) and is reported as itself.
    let mut part_err: Option<SweepError> = None;
    let mut result = None;
    let written = crate::atomic::write_file(&csv_path, |w| {
        let stop = |e: SweepError, slot: &mut Option<SweepError>| {
            let msg = e.to_string();
            *slot = Some(e);
            std::io::Error::other(msg)
        };
        let r = summarise(sweep, &parts, &columns, &key_names, w, &mut |e| stop(e, &mut part_err))?;
        result = Some(r);
        Ok(())
    });
    if let Some(e) = part_err {
        return Err(e);
    }
    written.map_err(|e| SweepError::output(&e.path, e.reason))?;
    let Some((ranked, best_safe, total, failed_total, first_failure, hm, rank_col, tox_col)) = result else {
        return Err(SweepError::output(&csv_path, "the summary was not written"));
    };
    let pop = sweep.population_size();
    let heatmap = match hm {
        Some(h) => {
            let path = dir.join("heatmap.png");
            let title = format!(
                "{} (mean over {} per cell)",
                sweep.report.rank_by.as_deref().unwrap_or(""),
                if pop > 1 { format!("{pop} virtual subjects") } else { "trajectories".into() }
            );
            crate::atomic::write_via_path(&path, |tmp| h.draw(tmp, &title))
                .map_err(|e| SweepError::output(&path, e.reason))?;
            Some(path.display().to_string())
        }
        None => None,
    };
    Ok(SweepReport {
        groups: sweep.groups(),
        trajectories: total,
        failed: failed_total,
        first_failure,
        key_names,
        columns,
        rank_col,
        tox_col,
        ranked,
        best_within_toxicity: best_safe,
        heatmap,
    })
}

/// What [`summarise`] returns: ranked rows, the best within toxicity, totals,
/// the first failure, the heat map and the rank and toxicity columns.
type Summary = (
    Vec<GroupRow>,
    Option<GroupRow>,
    u64,
    u64,
    Option<(u64, String, f64)>,
    Option<HeatAcc>,
    Option<usize>,
    Option<usize>,
);

/// Streams the parts into `summary.csv` rows written to `w`.
fn summarise(
    sweep: &Sweep,
    parts: &[std::path::PathBuf],
    columns: &[String],
    key_names: &[String],
    w: &mut dyn Write,
    fail: &mut dyn FnMut(SweepError) -> std::io::Error,
) -> std::io::Result<Summary> {
    let mut header: Vec<String> = vec!["group".into()];
    header.extend(key_names.iter().cloned());
    header.push("n".into());
    header.push("failed".into());
    for c in columns {
        for s in ["mean", "sd", "min", "max"] {
            header.push(format!("{c}_{s}"));
        }
    }
    writeln!(w, "{}", header.join(","))?;

    let rank_col = sweep.report.rank_by.as_ref().and_then(|r| columns.iter().position(|c| c == r));
    let tox_col = sweep.report.toxicity.as_ref().and_then(|r| columns.iter().position(|c| c == r));
    let better = |a: f64, b: f64| if sweep.report.descending { a > b } else { a < b };
    let mut ranked: Vec<GroupRow> = Vec::new();
    let mut best_safe: Option<GroupRow> = None;
    let top = sweep.report.top;
    // Heat map cells: (panel, x index, y index) -> (sum, count).
    let hm = sweep.report.heatmap.as_ref().map(|(x, y)| HeatAcc::new(sweep, x, y));
    let mut hm = hm;

    let pop = sweep.population_size();
    let mut current: Option<(u64, Vec<Acc>, u64, u64)> = None;
    let mut total = 0u64;
    let mut failed_total = 0u64;
    let mut first_failure: Option<(u64, String, f64)> = None;
    let mut emit = |g: u64, accs: &[Acc], n: u64, failed: u64, w: &mut dyn Write| {
        let row =
            GroupRow { group: g, key: sweep.group_key(g), n, failed, stats: accs.iter().map(|a| a.stats()).collect() };
        let mut line = vec![g.to_string()];
        line.extend(row.key.iter().map(|v| csv_num(*v)));
        line.push(n.to_string());
        line.push(failed.to_string());
        for s in &row.stats {
            line.extend([s.mean, s.sd, s.min, s.max].iter().map(|v| csv_num(*v)));
        }
        let r = writeln!(w, "{}", line.join(","));
        if let Some(h) = hm.as_mut() {
            if let Some(rc) = rank_col {
                h.push(g, row.stats[rc].mean);
            }
        }
        if let Some(rc) = rank_col {
            let v = row.stats[rc].mean;
            if !v.is_nan() {
                if let (Some(tc), Some(limit)) = (tox_col, sweep.report.max_toxicity) {
                    let ok = row.stats[tc].mean <= limit;
                    if ok && best_safe.as_ref().is_none_or(|b| better(v, b.stats[rc].mean)) {
                        best_safe = Some(row.clone());
                    }
                }
                ranked.push(row);
                if ranked.len() > 4 * top + 64 {
                    sort_ranked(&mut ranked, rc, sweep.report.descending);
                    ranked.truncate(top);
                }
            }
        }
        r
    };
    for p in parts {
        let t = read_part(p).map_err(&mut *fail)?;
        let id = t.ints("id").ok_or_else(|| fail(SweepError::output(p, "no id column")))?;
        let status = t.texts("status").ok_or_else(|| fail(SweepError::output(p, "no status column")))?;
        let failed_at = t.floats("failed_at");
        let cols: Vec<&[f64]> = columns
            .iter()
            .map(|c| t.floats(c).ok_or_else(|| fail(SweepError::output(p, format!("no column {c}")))))
            .collect::<Result<_, _>>()?;
        for i in 0..t.len() {
            let g = id[i] as u64 / pop;
            if current.as_ref().is_none_or(|c| c.0 != g) {
                if let Some((cg, accs, n, f)) = current.take() {
                    emit(cg, &accs, n, f, w)?;
                }
                current = Some((g, vec![Acc::new(); columns.len()], 0, 0));
            }
            if let Some(c) = current.as_mut() {
                c.2 += 1;
                total += 1;
                if status[i] != "ok" {
                    c.3 += 1;
                    failed_total += 1;
                    if first_failure.is_none() {
                        let at = failed_at.map_or(f64::NAN, |f| f[i]);
                        first_failure = Some((id[i] as u64, status[i].clone(), at));
                    }
                } else {
                    for (a, col) in c.1.iter_mut().zip(&cols) {
                        a.push(col[i]);
                    }
                }
            }
        }
    }
    if let Some((cg, accs, n, f)) = current.take() {
        emit(cg, &accs, n, f, w)?;
    }
    if let Some(rc) = rank_col {
        sort_ranked(&mut ranked, rc, sweep.report.descending);
        ranked.truncate(top);
    }
    Ok((ranked, best_safe, total, failed_total, first_failure, hm, rank_col, tox_col))
}

fn sort_ranked(r: &mut [GroupRow], col: usize, descending: bool) {
    r.sort_by(|a, b| {
        let (x, y) = (a.stats[col].mean, b.stats[col].mean);
        let o = if descending { y.total_cmp(&x) } else { x.total_cmp(&y) };
        o.then(a.group.cmp(&b.group))
    });
}

/// Heat-map accumulator: the rank-by column's group means averaged per
/// (x, y) cell, one panel per value of a third grid axis when there is one
/// with at most 4 values.
struct HeatAcc {
    x_name: String,
    y_name: String,
    xs: Vec<f64>,
    ys: Vec<f64>,
    panel_name: Option<String>,
    panels: Vec<f64>,
    /// Axis positions of x, y, panel.
    pos: (usize, usize, Option<usize>),
    axis_lens: Vec<usize>,
    sample_size: u64,
    sums: Vec<(f64, u64)>,
    grid: crate::kernels::generators::Grid,
}

impl HeatAcc {
    fn new(sweep: &Sweep, x: &str, y: &str) -> Self {
        let names = sweep.axis_names();
        let xi = names.iter().position(|n| *n == x).unwrap_or(0);
        let yi = names.iter().position(|n| *n == y).unwrap_or(0);
        let pi = (0..names.len()).find(|&i| i != xi && i != yi && (2..=4).contains(&sweep.axes[i].values.len()));
        let xs = sweep.axes[xi].values.clone();
        let ys = sweep.axes[yi].values.clone();
        let panels = pi.map_or(vec![f64::NAN], |i| sweep.axes[i].values.clone());
        HeatAcc {
            x_name: x.to_string(),
            y_name: y.to_string(),
            sums: vec![(0.0, 0); xs.len() * ys.len() * panels.len()],
            xs,
            ys,
            panel_name: pi.map(|i| names[i].to_string()),
            panels,
            pos: (xi, yi, pi),
            axis_lens: sweep.axes.iter().map(|a| a.values.len()).collect(),
            sample_size: sweep.sample_size(),
            grid: sweep.grid.clone(),
        }
    }
    fn push(&mut self, group: u64, v: f64) {
        if v.is_nan() {
            return;
        }
        let mut idx = vec![0usize; self.axis_lens.len()];
        self.grid.indices(group / self.sample_size, &mut idx);
        let (xi, yi) = (idx[self.pos.0], idx[self.pos.1]);
        let pi = self.pos.2.map_or(0, |p| idx[p]);
        let cell = (pi * self.ys.len() + yi) * self.xs.len() + xi;
        self.sums[cell].0 += v;
        self.sums[cell].1 += 1;
    }
    fn draw(&self, path: &Path, title: &str) -> Result<(), String> {
        ensure_font();
        let np = self.panels.len();
        let (nx, ny) = (self.xs.len(), self.ys.len());
        let width = (140 + 90 * nx as u32).clamp(400, 1400) * np as u32;
        let height = (160 + 60 * ny as u32).clamp(300, 1000);
        let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| format!("cannot draw the heat map: {e}");
        root.fill(&WHITE).map_err(e)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(e)?;
        let vals: Vec<f64> = self.sums.iter().filter(|s| s.1 > 0).map(|s| s.0 / s.1 as f64).collect();
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        let fmt = |v: f64| {
            if v == v.round() && v.abs() < 1e6 {
                format!("{v:.0}")
            } else {
                format!("{v:.3}").trim_end_matches('0').to_string()
            }
        };
        let panels = root.split_evenly((1, np));
        for (p, area) in panels.iter().enumerate() {
            let caption = match &self.panel_name {
                Some(n) => format!("{n} = {}", fmt(self.panels[p])),
                None => String::new(),
            };
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(60)
                // Index axes 0..n-1 give n segments (a single value gets one empty extra segment).
                .build_cartesian_2d(
                    (0..(nx as i32 - 1).max(1)).into_segmented(),
                    (0..(ny as i32 - 1).max(1)).into_segmented(),
                )
                .map_err(e)?;
            let label = |vals: &[f64], v: &SegmentValue<i32>| match v {
                SegmentValue::CenterOf(i) if *i >= 0 && (*i as usize) < vals.len() => fmt(vals[*i as usize]),
                _ => String::new(),
            };
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(nx)
                .y_labels(ny)
                .x_label_formatter(&|v| label(&self.xs, v))
                .y_label_formatter(&|v| label(&self.ys, v))
                .x_desc(self.x_name.as_str())
                .y_desc(self.y_name.as_str())
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(e)?;
            for yi in 0..ny {
                for xi in 0..nx {
                    let (s, c) = self.sums[(p * ny + yi) * nx + xi];
                    if c == 0 {
                        continue;
                    }
                    let v = s / c as f64;
                    let t = ((v - lo) / span).clamp(0.0, 1.0);
                    let (x0, y0) = (xi as i32, yi as i32);
                    let cell = [
                        (SegmentValue::Exact(x0), SegmentValue::Exact(y0)),
                        (SegmentValue::Exact(x0 + 1), SegmentValue::Exact(y0 + 1)),
                    ];
                    chart.draw_series(std::iter::once(Rectangle::new(cell, viridis(t).filled()))).map_err(e)?;
                    let text_color = if t > 0.6 { BLACK } else { WHITE };
                    let style =
                        ("sans-serif", 14).into_font().color(&text_color).pos(Pos::new(HPos::Center, VPos::Center));
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{v:.2}"),
                            (SegmentValue::CenterOf(x0), SegmentValue::CenterOf(y0)),
                            style,
                        )))
                        .map_err(e)?;
                }
            }
        }
        root.present().map_err(e)?;
        Ok(())
    }
}
