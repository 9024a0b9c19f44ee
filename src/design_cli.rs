//! The `design` subcommand (terminal side: the table and messages).

use std::path::Path;

use anyhow::Result;

use insilico::design_cmd::DesignConfig;

pub fn design(config: &Path, out: &Path) -> Result<()> {
    let cfg = DesignConfig::from_path(config)?;
    let data = cfg.load_dataset()?;
    println!("config  {}", cfg.source);
    println!("        {}", cfg.describe());
    println!("design  {}: {} group(s)", data.file, data.subjects.len());
    if cfg.optimise.is_some() {
        println!("        optimising the sampling times (criterion {})...", cfg.criterion.name());
    }
    let report = cfg.run(&data, out)?;
    let fim = &report.fim;
    println!("\nFIM ({}): det {:.6e}, ln det {:.6}", fim.fim_type.name(), fim.det(), fim.ln_det());
    let rse = fim.rse_percent().ok();
    println!("{:<16} {:>12} {:>10}", "parameter", "value", "RSE%");
    for (i, (n, v)) in fim.names.iter().zip(&fim.values).enumerate() {
        let r = rse.as_ref().map_or("-".to_string(), |r| format!("{:.4}", r[i]));
        println!("{n:<16} {v:>12.6} {r:>10}");
    }
    for (id, n, t) in &report.groups {
        println!("group {id} ({n} subjects): times {t:?}");
    }
    if let Some(o) = &report.optimum {
        println!(
            "\noptimised in {} sweeps ({} FIM evaluations): criterion {} {:.6} -> {:.6}",
            o.sweeps,
            o.evaluations,
            cfg.criterion.name(),
            o.criterion_before,
            o.criterion_after
        );
        let p = o.fim_after.names.len() as f64;
        println!(
            "ln det {:.6} -> {:.6}; D-efficiency gain {:.4}",
            o.fim_before.ln_det(),
            o.fim_after.ln_det(),
            ((o.fim_after.ln_det() - o.fim_before.ln_det()) / p).exp()
        );
        for (g, t) in o.times.iter().enumerate() {
            println!(
                "group {}: times {:?}",
                report.groups[g].0,
                t.iter().map(|x| (x * 1e4).round() / 1e4).collect::<Vec<_>>()
            );
        }
    }
    println!("\nwrote {}", out.join("design.json").display());
    Ok(())
}
