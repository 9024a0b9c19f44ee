//! The `perturb` subcommand (terminal side: progress, the printed summary).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use insilico::perturb::Study;

pub fn perturb(config: &Path, out: &Path) -> Result<()> {
    let t0 = Instant::now();
    let study = Study::from_path(config)?;
    println!("config  {}", study.source);
    println!("        {}", study.describe());
    let todo = study.prepare(out)?;
    let chunks = study.chunks();
    let mut done = chunks - todo.len() as u64;
    if done > 0 {
        println!("resume  {}: {done} of {chunks} parts already complete; computing the rest", out.display());
    }
    let mut failed = 0;
    for k in todo {
        failed += study.run_chunk(out, k)?;
        done += 1;
        study.write_progress(out, done)?;
        println!("part    {k:>6}  ({done}/{chunks})");
    }
    let table = study.finish(out)?;
    let wall = t0.elapsed().as_secs_f64();
    // Print a compact view of the summary: axes, populations, slowest timescale,
    // the first pair's MFPT and rate, observables (4 significant digits).
    let text = std::fs::read_to_string(out.join("summary.csv"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let nax = study.axes.len();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| {
            let h = header[i];
            i < nax
                || h.starts_with("pop_")
                || h == "its_1"
                || h.starts_with("obs_")
                || (!study.pairs.is_empty() && (h.starts_with("mfpt_") || h.starts_with("rate_")) && {
                    let (a, b) = study.pairs[0];
                    h.ends_with(&format!("_{}_{}", study.macrostates[a].0, study.macrostates[b].0))
                })
        })
        .collect();
    let rows: Vec<Vec<String>> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            keep.iter()
                .map(|&i| match f.get(i).map(|s| s.parse::<f64>()) {
                    Some(Ok(v)) => sig4(v),
                    _ => f.get(i).unwrap_or(&"").to_string(),
                })
                .collect()
        })
        .collect();
    let w: Vec<usize> = keep
        .iter()
        .enumerate()
        .map(|(c, &i)| rows.iter().map(|r| r[c].len()).chain([header[i].len()]).max().unwrap_or(8))
        .collect();
    let show = rows.len().min(48);
    println!(
        "summary {} ({} points, {} columns; {}):",
        out.join("summary.csv").display(),
        table.len(),
        header.len(),
        if show < rows.len() { format!("first {show} rows, selected columns") } else { "selected columns".into() }
    );
    println!(
        "  {}",
        keep.iter().enumerate().map(|(c, &i)| format!("{:>w$}", header[i], w = w[c])).collect::<Vec<_>>().join(" ")
    );
    for r in &rows[..show] {
        println!("  {}", r.iter().enumerate().map(|(c, v)| format!("{v:>w$}", w = w[c])).collect::<Vec<_>>().join(" "));
    }
    if failed > 0 {
        println!("warning {failed} points failed (status 1, values NaN)");
    }
    println!("wall    {wall:.2} s ({} threads)", rayon::current_num_threads());
    Ok(())
}

/// Formats with 4 significant digits (the plain form for moderate magnitudes).
fn sig4(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let d = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.d$}")
    } else {
        format!("{v:.3e}")
    }
}
