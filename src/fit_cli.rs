//! The `fit` subcommand and `simulate --fitted` (terminal side: progress bar, messages).

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use insilico::fit_cmd::{self, FitConfig, FitEvent};
use insilico::fit_focei::{self, FoceiConfig};
use insilico::solvers::{Dataset, ReadOptions};

pub fn fit(config: Option<&Path>, out: &Path) -> Result<()> {
    if let Some(path) = config {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        if fit_focei::is_estimation_config(&text) {
            return fit_population(path, out);
        }
    }
    let (cfg, ds) = match config {
        Some(path) => {
            let cfg = FitConfig::from_path(path)?;
            let ds = cfg.load_dataset()?;
            (cfg, ds)
        }
        None => {
            let cfg = FitConfig::from_toml_str(fit_cmd::EMBEDDED_FIT_CONFIG, fit_cmd::EMBEDDED_FIT_NAME, None)?;
            let ds = Dataset::from_str("theoph.csv (embedded)", fit_cmd::EMBEDDED_FIT_DATA, &ReadOptions::default())?;
            println!(
                "No config given: fitting the embedded Theophylline example ({}) to theoph.csv \
                 (12 subjects): a one-compartment oral model, per subject and as a population \
                 with log-normal random effects on ka, CL and V.",
                fit_cmd::EMBEDDED_FIT_NAME
            );
            (cfg, ds)
        }
    };
    println!("config  {}", cfg.source);
    println!("        {}", cfg.describe());
    println!("data    {}: {} subjects, {} records", ds.file, ds.subjects.len(), ds.n_records());
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let on = |ev: FitEvent| {
        let Ok(mut b) = bar.lock() else { return };
        match ev {
            FitEvent::Start(mode, total) => {
                let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                pb.set_style(style);
                pb.set_prefix(mode.to_string());
                *b = Some(pb);
            }
            FitEvent::Iter(p) => {
                if let Some(pb) = b.as_ref() {
                    pb.inc(1);
                    let val = p.validation.map(|v| format!(", validation {v:.3}")).unwrap_or_default();
                    pb.set_message(format!("loss {:.4}{val}", p.loss));
                }
            }
            FitEvent::Done => {
                if let Some(pb) = b.take() {
                    pb.finish_and_clear();
                }
            }
        }
    };
    let summary = fit_cmd::run_fit(&cfg, &ds, out, &on)?;
    print!("{summary}");
    println!(
        "wrote   {}/fit.json, model.json, predictions.csv and PNG plots (loss, observed vs predicted, per-subject{})",
        out.display(),
        if cfg.n_weights() > 0 { ", learned rate" } else { "" }
    );
    Ok(())
}

/// `estimation = "focei"`: the population likelihood; prints the estimates table.
fn fit_population(path: &Path, out: &Path) -> Result<()> {
    let cfg = FoceiConfig::from_path(path)?;
    let ds = cfg.load_dataset()?;
    println!("config  {}", cfg.source);
    println!("        {}", cfg.describe());
    println!("data    {}: {} subjects, {} records", ds.file, ds.subjects.len(), ds.n_records());
    let est = cfg.run(&ds, out)?;
    print!("{}", est.table());
    println!("wrote   {}/fit.json, sdtab.csv", out.display());
    Ok(())
}

pub fn simulate_fitted(config: Option<&Path>, fitted: &Path, data: Option<&Path>, out: &Path) -> Result<()> {
    let config = config.context("simulate --fitted needs the fit's CONFIG.toml as its first argument")?;
    let cfg = FitConfig::from_path(config)?;
    let ds = match data {
        Some(d) => Dataset::from_path(d, &ReadOptions::default())?,
        None => cfg.load_dataset()?,
    };
    let n = fit_cmd::simulate_fitted(&cfg, fitted, &ds, out)?;
    println!("wrote   {}: {n} rows (ID,TIME,PRED,IPRED) from the model fitted in {}", out.display(), fitted.display());
    Ok(())
}
