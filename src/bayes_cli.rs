//! The `assimilate` and `forecast` subcommands (terminal side: progress, messages, warnings).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::LazyBar;
use insilico::bayes_config::BayesConfig;
use insilico::{assimilate, forecast};

pub fn assimilate(config: &Path, out: &Path) -> Result<()> {
    let cfg = BayesConfig::from_path(config)?;
    let ds = cfg.load_dataset()?;
    println!("config  {}", cfg.source);
    println!("        {}", cfg.describe());
    println!("data    {}: {} subjects, {} records", ds.file, ds.subjects.len(), ds.n_records());
    let start = Instant::now();
    let bar = LazyBar::new(ds.subjects.len(), "subjects");
    let res = assimilate::assimilate(&cfg, &ds, &|done, _| bar.set(done));
    bar.finish();
    let res = res?;
    for w in &res.warnings {
        eprintln!("warning {w}");
    }
    assimilate::write_outputs(&cfg, &ds, &res, out)?;
    if let Some(s) = res.subjects.first() {
        let eta: Vec<String> = res.eta_names.iter().zip(&s.map.eta).map(|(n, v)| format!("{n} = {v:.6}")).collect();
        println!(
            "subject {}: {} (OFV {:.4}, {} draws by {})",
            s.map.id,
            eta.join(", "),
            s.map.ofv,
            s.draws.eta.len(),
            s.draws.method.name()
        );
    }
    println!(
        "wrote   {}/estimates.csv, predictions.csv, draws.csv, posterior.json{}, subject_<ID>.png ({} subjects in {:.2} s, {} ODE solves)",
        out.display(),
        if cfg.sequential.is_some() { ", sequential.csv" } else { "" },
        res.subjects.len(),
        start.elapsed().as_secs_f64(),
        res.ode_solves
    );
    Ok(())
}

pub fn forecast(config: &Path, posterior: &Path, out: &Path) -> Result<()> {
    let cfg = BayesConfig::from_path(config)?;
    let f = forecast::settings(&cfg)?;
    println!("config  {}", cfg.source);
    println!(
        "        {}; {} regimen(s), horizon {}, outputs {}",
        cfg.describe(),
        f.regimens.len(),
        f.horizon,
        f.outputs.join(", ")
    );
    let start = Instant::now();
    let bar = LazyBar::new(1, "subjects");
    let res = forecast::run(&cfg, posterior, out, &|done, total| {
        bar.bar.set_length(total as u64);
        bar.set(done)
    });
    bar.finish();
    let res = res?;
    for w in &res.warnings {
        eprintln!("warning {w}");
    }
    let n: usize = res.subjects.iter().map(|s| s.regimens.len()).sum();
    println!(
        "wrote   {}/forecast.csv, summaries.csv, forecast.png ({} subject(s) × regimen(s) in {:.2} s)",
        out.display(),
        n,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
