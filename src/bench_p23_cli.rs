//! `insilico bench p2` and `insilico bench p3` (the work is in
//! [`insilico::bench_p2`] and [`insilico::bench_p3`]).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use insilico::bench_p2::{self, P2Options};
use insilico::bench_p3::{self, P3Options};
use insilico::solvers::Method;

fn parse_method(s: &str) -> Result<Method, String> {
    Method::parse(s).ok_or_else(|| {
        let valid: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        format!("unknown method `{s}` (valid: {})", valid.join(", "))
    })
}

/// Arguments of `insilico bench p2`.
#[derive(Debug, clap::Args)]
pub struct P2Args {
    /// Output folder for bench.json and p2.csv.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Skip the convergence studies (tolerance rtol 1e-4..1e-8, and mesh
    /// N = 100, 200, 400 with the observed order; a few seconds).
    #[arg(long)]
    quick: bool,
    /// Integration method: bdf (default), esdirk34, tr-bdf2 (tsit45 is not
    /// suited to this stiff problem).
    #[arg(long, default_value = "bdf", value_parser = parse_method)]
    method: Method,
    /// Timed repetitions of the reference solve (the minimum is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Worker threads for the sweep (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Arguments of `insilico bench p3`.
#[derive(Debug, clap::Args)]
pub struct P3Args {
    /// Output folder for bench.json and p3.csv.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Integration method: bdf (default), esdirk34, tr-bdf2.
    #[arg(long, default_value = "bdf", value_parser = parse_method)]
    method: Method,
    /// Timed repetitions of the solve (the minimum is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
}

/// Runs `insilico bench p2`.
pub fn bench_p2(args: &P2Args) -> Result<()> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        builder = builder.num_threads(t);
    }
    let pool = builder.build().context("cannot start the worker threads")?;
    let opts = P2Options { method: args.method, repeats: args.repeats, convergence: !args.quick };
    pool.install(|| bench_p2::run(&args.out, &opts))?;
    Ok(())
}

/// Runs `insilico bench p3`.
pub fn bench_p3(args: &P3Args) -> Result<()> {
    let opts = P3Options { method: args.method, repeats: args.repeats };
    bench_p3::run(&args.out, &opts)?;
    Ok(())
}
