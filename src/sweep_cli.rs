//! The `sweep` subcommand (terminal side: device choice, progress bar, the
//! ranked table).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use insilico::sweep::{cuda_status, Device, Engine, Sweep, SweepReport, EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME};

/// `--device` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// All CPU cores.
    Cpu,
    /// The CUDA kernels (a build with `--features cuda` and a GPU).
    Cuda,
    /// CUDA when usable, else the CPU.
    Auto,
}

/// Peak resident memory of this process (VmHWM), in MiB, where /proc has it.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Set by SIGINT/SIGTERM: the sweep stops after the chunk being computed.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // A second signal ends the process at once (default action).
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
}

/// Installs [`on_signal`] for SIGINT and SIGTERM.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores an atomic and resets dispositions.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn sweep(config: Option<&Path>, out: &Path, device: DeviceArg, large: bool) -> Result<()> {
    let sweep = match config {
        Some(path) => Sweep::from_path(path)?,
        None => {
            println!(
                "No config given: running the embedded organoid drug-regimen sweep {EMBEDDED_CONFIG_NAME}: \
                 dose level x exposure x period x 64 virtual organoids, ranked by efficacy \
                 (viable-burden reduction at day 14 vs untreated) next to a toxicity proxy."
            );
            Sweep::from_toml_str(EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME, None)?
        }
    };
    let device = match device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => match cuda_status() {
            Ok(_) => Device::Cuda,
            Err(e) => bail!("--device cuda: {e}"),
        },
        DeviceArg::Auto => match cuda_status() {
            Ok(_) => Device::Cuda,
            Err(e) => {
                println!("device  auto: no usable GPU ({e}); running on the CPU");
                Device::Cpu
            }
        },
    };
    let engine = Engine::new(&sweep, device)?;
    let device_name = match device {
        Device::Cpu => format!("CPU, {} threads", rayon::current_num_threads()),
        Device::Cuda => format!("CUDA ({})", cuda_status().unwrap_or_default()),
    };
    println!("config  {}", sweep.source);
    println!("        {}", sweep.describe());
    println!("device  {device_name}");
    // Estimate first: the output size (refused over max_output_gb without --large), then the time.
    println!(
        "size    {} trajectories x {} columns: about {} of Parquet (max_output_gb = {}{})",
        insilico::limits::fmt_count(sweep.len() as f64),
        sweep.columns().len(),
        insilico::limits::fmt_bytes(sweep.estimated_output_bytes()),
        sweep.max_output_gb,
        if large { ", --large" } else { "" }
    );
    sweep.check_output_size(large)?;
    let probe = sweep.len().min(256) as usize;
    let t_probe = Instant::now();
    sweep.solve_chunk(&engine, 0, probe, &|_| {})?;
    let per = t_probe.elapsed().as_secs_f64() / probe.max(1) as f64;
    println!("time    about {} for all trajectories (from {probe} timed here)", fmt_duration(per * sweep.len() as f64));
    let mut plan = sweep.prepare(out)?;
    let total = sweep.len();
    let done_rows = plan.done_rows;
    let resumed = plan.done;
    for (k, why) in &plan.damaged {
        println!("resume  part {k} was damaged ({why}): removed, recomputing it");
    }
    if plan.done > 0 {
        println!(
            "resume  {}: {} of {} chunks already complete ({} of {} trajectories); computing the rest",
            out.display(),
            plan.done,
            sweep.chunks(),
            done_rows,
            total
        );
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:36}] {human_pos}/{human_len} trajectories ({per_sec}, {elapsed} elapsed, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message("sweep");
    bar.set_position(done_rows);
    bar.reset_eta();
    let start = Instant::now();
    let mut computed = 0u64;
    catch_signals();
    for k in plan.todo.clone() {
        if STOP.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            bail!(
                "interrupted: {} of {} chunks are complete and kept in {} ({} trajectories); run the same \
                 command again to resume from there",
                plan.done,
                sweep.chunks(),
                out.display(),
                plan.done_rows
            );
        }
        let (first, n) = sweep.chunk_range(k);
        let r = sweep.solve_chunk(&engine, first, n, &|d| bar.inc(d))?;
        sweep.write_chunk(out, k, &r, &mut plan)?;
        computed += n as u64;
    }
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    let report = sweep.finish(out)?;
    print_report(&sweep, &report);
    println!();
    println!(
        "solved  {} trajectories in {:.2} s ({:.0}/s) on {}{}",
        computed,
        wall,
        computed as f64 / wall.max(1e-9),
        device_name,
        if resumed > 0 { format!("; {done_rows} resumed from disk") } else { String::new() }
    );
    println!(
        "wrote   {}: {} part files (one row per trajectory), summary.csv ({} groups){}",
        out.display(),
        sweep.chunks(),
        report.groups,
        report.heatmap.as_ref().map(|h| format!(", {h}")).unwrap_or_default()
    );
    if report.failed > 0 {
        let first = report
            .first_failure
            .as_ref()
            .map(|(id, cause, at)| {
                let at = if at.is_finite() { format!(" after reaching t = {at}") } else { String::new() };
                format!("; the first, trajectory {id}, failed with `{cause}`{at}")
            })
            .unwrap_or_default();
        let msg = format!(
            "{} of {} trajectories failed (status != ok in the parts, outputs null){first}",
            report.failed, report.trajectories
        );
        if !sweep.allow_failures {
            bail!(
                "{msg}; fix the cause (`max_steps`, the tolerances, the stepper or the parameters), or set \
                   `allow_failures = true` in the config to accept them"
            );
        }
        println!("warning {msg} (allow_failures = true)");
    }
    if let Some(m) = peak_rss_mib() {
        println!("memory  peak RSS {m:.0} MiB");
    }
    if config.is_none() {
        println!(
            "Next: edit a copy of examples/sweep_organoid.toml, or run examples/sweep_p1.toml (the P1 \
             PK regimen sweep with a virtual population); killing a sweep and re-running the same \
             command resumes it."
        );
    }
    Ok(())
}

fn fmt_duration(s: f64) -> String {
    if !s.is_finite() {
        "an unknown time".into()
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

fn num(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 && v.abs() < 1e5 {
        format!("{v:.3}")
    } else {
        format!("{v:.3e}")
    }
}

fn print_report(sweep: &Sweep, r: &SweepReport) {
    let Some(rc) = r.rank_col else { return };
    println!();
    let what = if let (Some(e), "efficacy") = (&sweep.efficacy, r.columns[rc].as_str()) {
        format!("efficacy = 1 - final {} / untreated; mean ± sd over the population", e.quantity)
    } else {
        format!("{}: mean ± sd over the population", r.columns[rc])
    };
    println!(
        "Top {} of {} regimens by {} ({}){}",
        r.ranked.len(),
        r.groups,
        r.columns[rc],
        what,
        match (r.tox_col, sweep.report.max_toxicity) {
            (Some(t), Some(m)) => format!("; * = mean {} above {}", r.columns[t], m),
            _ => String::new(),
        }
    );
    let others: Vec<usize> = (0..r.columns.len()).filter(|&c| c != rc).collect();
    let mut head = format!("{:>4}", "rank");
    for k in &r.key_names {
        head += &format!(" {:>9}", k);
    }
    head += &format!(" {:>17}", r.columns[rc]);
    for &c in &others {
        head += &format!(" {:>13}", r.columns[c]);
    }
    println!("{head}");
    for (i, g) in r.ranked.iter().enumerate() {
        let mut line = format!("{:>4}", i + 1);
        for v in &g.key {
            line += &format!(" {:>9}", num(*v));
        }
        let s = g.stats[rc];
        line += &format!(" {:>17}", format!("{:.3} ± {:.3}", s.mean, s.sd));
        for &c in &others {
            line += &format!(" {:>13}", num(g.stats[c].mean));
        }
        if let (Some(t), Some(m)) = (r.tox_col, sweep.report.max_toxicity) {
            if g.stats[t].mean > m {
                line += " *";
            }
        }
        if g.failed > 0 {
            line += &format!(" ({} failed)", g.failed);
        }
        println!("{line}");
    }
    if let (Some(b), Some(t), Some(m)) = (&r.best_within_toxicity, r.tox_col, sweep.report.max_toxicity) {
        let key: Vec<String> = r.key_names.iter().zip(&b.key).map(|(k, v)| format!("{k} {}", num(*v))).collect();
        println!(
            "Best with mean {} <= {}: {} -> {} {:.3}, {} {:.3}",
            r.columns[t],
            m,
            key.join(", "),
            r.columns[rc],
            b.stats[rc].mean,
            r.columns[t],
            b.stats[t].mean
        );
    } else if let (Some(t), Some(m)) = (r.tox_col, sweep.report.max_toxicity) {
        println!("No regimen keeps the mean {} at or below {m}.", r.columns[t]);
    }
}
