//! The `insilico` command-line tool. See `insilico --help`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod bayes_cli;
mod bench_p23_cli;
mod design_cli;
mod fit_cli;
mod perturb_cli;
mod sweep_cli;

use insilico::p1;
use insilico::simulate::{Simulation, EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME, EMBEDDED_DATA_NAME};
use insilico::solvers::Method;

/// Insilico: hybrid mechanistic/neural ODE simulation for pharmacometrics.
#[derive(Debug, Parser)]
#[command(name = "insilico", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a PK model over a NONMEM-layout dataset (one PRED per observation record).
    ///
    /// Without CONFIG, runs the embedded quick-start example
    /// (examples/quickstart.toml with examples/quickstart.csv) and writes pred.csv.
    Simulate {
        /// TOML config naming the model, its parameters, the dataset and the dose mapping.
        config: Option<PathBuf>,
        /// Output CSV (ID,TIME,PRED; with --fitted: ID,TIME,PRED,IPRED).
        #[arg(long, short, default_value = "pred.csv")]
        out: PathBuf,
        /// Output folder of `insilico fit` (CONFIG is then the fit config): predict with the fitted model.
        #[arg(long)]
        fitted: Option<PathBuf>,
        /// With --fitted: the dataset to predict (default: the fit config's dataset).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Fit a PK or hybrid PK/neural model to a NONMEM-layout dataset.
    ///
    /// Without CONFIG, fits the embedded Theophylline example (examples/theoph.toml)
    /// per subject and as a population, and writes the results to fit-out/.
    Fit {
        /// TOML fit config (see examples/theoph.toml, examples/p4_hybrid.toml).
        config: Option<PathBuf>,
        /// Output folder: fit.json, model.json, predictions.csv, PNG plots.
        #[arg(long, default_value = "fit-out")]
        out: PathBuf,
    },
    /// Sweep regimens x parameters x virtual populations on the batched integrators.
    ///
    /// Without CONFIG, runs the embedded organoid drug-regimen sweep
    /// (examples/sweep_organoid.toml): prints regimens ranked by efficacy next to a
    /// toxicity proxy and writes Parquet parts, summary.csv and heatmap.png to
    /// sweep-out/. Killing a sweep and re-running the same command resumes it.
    Sweep {
        /// TOML sweep config (see examples/sweep_organoid.toml, examples/sweep_p1.toml).
        config: Option<PathBuf>,
        /// Output folder: part-NNNNNN.parquet (one row per trajectory), manifest.json,
        /// progress.json, summary.csv, heatmap.png.
        #[arg(long, default_value = "sweep-out")]
        out: PathBuf,
        /// Where to integrate: cpu, cuda (a build with --features cuda and a GPU), or
        /// auto (cuda when usable, else cpu).
        #[arg(long, value_enum, default_value = "cpu")]
        device: sweep_cli::DeviceArg,
        /// Run a sweep whose estimated output exceeds the config's `max_output_gb` (default 10).
        #[arg(long)]
        large: bool,
    },
    /// Protein-ensemble perturbation study on a Markov model (rate or transition matrix).
    ///
    /// Grid over ligand concentration (per-state Kd), mutations (per-state ddG), kT and
    /// force; per point: macrostate populations, slowest implied timescales, MFPT and TPT
    /// rates between macrostates, observables, relaxation after the jump. Writes Parquet
    /// parts, summary.csv and plots; killing it and re-running the same command resumes.
    Perturb {
        /// TOML study config (see examples/perturb_protein.toml).
        config: PathBuf,
        /// Output folder: part-NNNNNN.parquet, manifest.json, progress.json, summary.csv, PNG plots.
        #[arg(long, default_value = "perturb-out")]
        out: PathBuf,
    },
    /// Population design: the FO Fisher information of sampling designs for any model file.
    ///
    /// Prints RSE% per parameter and det/ln det of the FIM (PopED's reduced or full FO
    /// form), and with [optimise] in the config optimises the sampling times within
    /// windows and a minimum spacing. Writes DIR/design.json.
    Design {
        /// TOML design config (see examples/design/warfarin.toml).
        config: PathBuf,
        /// Output folder: design.json.
        #[arg(long, default_value = "design-out")]
        out: PathBuf,
    },
    /// Individual posteriors of a dataset's subjects under a fixed population (MAP, Laplace, draws).
    ///
    /// Writes estimates.csv, predictions.csv, draws.csv, posterior.json, sequential.csv
    /// (with [sequential]) and subject_<ID>.png (see examples/mapbayr/mapbayr.toml).
    Assimilate {
        /// TOML config: model, data, population (θ, Ω, σ or a FOCE-I fit folder), [posterior].
        config: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "assimilate-out")]
        out: PathBuf,
    },
    /// Forecast under candidate regimens from the posterior `assimilate` wrote.
    ///
    /// Writes forecast.csv (quantiles per time), summaries.csv (AUC, CMAX, CTROUGH,
    /// TIME_ABOVE per draw: mean, SD, quantiles) and forecast.png.
    Forecast {
        /// The same TOML config as `assimilate`, with [forecast] and the regimens.
        config: PathBuf,
        /// The output folder of `insilico assimilate`.
        #[arg(long)]
        posterior: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "forecast-out")]
        out: PathBuf,
    },
    /// Compile a model file (or a zoo model) and report what it is and which engines run it.
    ///
    /// Errors point at the line and column. Without MODEL, lists the zoo.
    Check {
        /// A model file (`*.model`) or a zoo name (`pk-2cmt-oral`, ...).
        model: Option<String>,
    },
    /// Run a reference benchmark (default: p1 with its default options).
    Bench {
        #[command(subcommand)]
        problem: Option<BenchProblem>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchProblem {
    /// P1: two-compartment oral PK, 10,000-regimen sweep, checked against the closed form.
    P1(P1Args),
    /// P2: tumour spheroid reaction-diffusion (200 shells), reference regimen and 42-regimen sweep.
    P2(bench_p23_cli::P2Args),
    /// P3: Mueller-Brown conformational master equation (4096 states) against its exact spectral solution.
    P3(bench_p23_cli::P3Args),
}

#[derive(Debug, clap::Args)]
struct P1Args {
    /// Output folder for bench.json and p1.csv.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// batched (Tsit5 on the batched integrators, the default),
    /// batched-rosenbrock, closed-form (exact matrix exponential), diffsol
    /// (diffsol's Tsit45) or a diffsol method (bdf, esdirk34, tr-bdf2,
    /// tsit45), or all (each in turn; bench.json's top level and p1.csv then
    /// describe batched).
    #[arg(long, default_value = "batched", value_parser = parse_methods)]
    method: Methods,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Run only the first N solves of the sweep (quick checks).
    #[arg(long)]
    n: Option<usize>,
}

impl Default for P1Args {
    fn default() -> Self {
        P1Args {
            out: PathBuf::from("bench-out"),
            method: Methods(vec![p1::P1Method::Batched(insilico::kernels::Stepper::Tsit5)]),
            threads: None,
            n: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Methods(Vec<p1::P1Method>);

fn parse_methods(s: &str) -> Result<Methods, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(Methods(p1::P1Method::all()));
    }
    p1::P1Method::parse(s).map(|m| Methods(vec![m])).ok_or_else(|| {
        let mut valid = vec!["batched", "batched-rosenbrock", "closed-form", "diffsol"];
        valid.extend(Method::ALL.iter().map(|m| m.name()));
        format!("unknown method `{s}` (valid: {}, all)", valid.join(", "))
    })
}

/// `insilico check [MODEL]`.
fn check_model(spec: Option<&str>) -> anyhow::Result<()> {
    let Some(spec) = spec else {
        println!("zoo models (models-zoo/models/): {}", insilico::models_zoo::names().join(", "));
        return Ok(());
    };
    let t0 = std::time::Instant::now();
    let model = insilico::models_zoo::resolve(spec, None)?;
    let parsed = t0.elapsed();
    print!("{}", model.summary());
    println!("  engines");
    println!("    diffsol (simulate, gradients)  yes");
    match insilico::model::batched_engine_report(&model) {
        Ok(r) => {
            println!(
                "    batched CPU integrators        yes: {} per-trajectory constants, rhs/jacobian/output {}/{}/{} instructions, {} programs native{}",
                r.derived,
                r.instructions.0,
                r.instructions.1,
                r.instructions.2,
                r.native,
                r.jit_error.map(|e| format!(" (JIT unavailable: {e})")).unwrap_or_default()
            );
            println!("    CUDA (NVRTC)                   generated: {} lines of device code", r.cuda_lines);
        }
        Err(e) => println!("    batched CPU and CUDA           no: {e}"),
    }
    println!("compiled in {:.2} ms (parse, graph, derivatives); all checks passed", parsed.as_secs_f64() * 1e3);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate { config, out, fitted: Some(dir), data } => {
            fit_cli::simulate_fitted(config.as_deref(), &dir, data.as_deref(), &out)
        }
        Command::Simulate { config, out, .. } => simulate(config.as_deref(), &out),
        Command::Fit { config, out } => fit_cli::fit(config.as_deref(), &out),
        Command::Sweep { config, out, device, large } => sweep_cli::sweep(config.as_deref(), &out, device, large),
        Command::Perturb { config, out } => perturb_cli::perturb(&config, &out),
        Command::Design { config, out } => design_cli::design(&config, &out),
        Command::Assimilate { config, out } => bayes_cli::assimilate(&config, &out),
        Command::Forecast { config, posterior, out } => bayes_cli::forecast(&config, &posterior, &out),
        Command::Check { model } => check_model(model.as_deref()),
        Command::Bench { problem } => match problem {
            Some(BenchProblem::P1(args)) => bench_p1(&args),
            Some(BenchProblem::P2(args)) => bench_p23_cli::bench_p2(&args),
            Some(BenchProblem::P3(args)) => bench_p23_cli::bench_p3(&args),
            None => bench_p1(&P1Args::default()),
        },
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A progress bar on stderr that only appears once the work has taken more
/// than a second.
struct LazyBar {
    bar: ProgressBar,
    start: Instant,
    shown: AtomicBool,
}

impl LazyBar {
    fn new(len: usize, what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        LazyBar { bar, start: Instant::now(), shown: AtomicBool::new(false) }
    }
    fn inc(&self) {
        self.bar.inc(1);
        self.reveal();
    }
    fn set(&self, pos: usize) {
        self.bar.set_position(pos as u64);
        self.reveal();
    }
    fn reveal(&self) {
        if self.start.elapsed() > Duration::from_secs(1) && !self.shown.swap(true, Ordering::Relaxed) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
    fn finish(&self) {
        if self.shown.load(Ordering::Relaxed) {
            self.bar.finish_and_clear();
        }
    }
}

fn simulate(config: Option<&Path>, out: &Path) -> Result<()> {
    let (sim, ds) = match config {
        Some(path) => {
            let sim = Simulation::from_path(path)?;
            let ds = sim.load_dataset()?;
            (sim, ds)
        }
        None => {
            let sim = Simulation::from_toml_str(EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME, None)?;
            let ds = sim.load_embedded_dataset()?;
            println!("No config given: running the embedded example {EMBEDDED_CONFIG_NAME} on {EMBEDDED_DATA_NAME}.");
            (sim, ds)
        }
    };
    println!("config  {}", sim.source);
    println!("        {}", sim.describe());
    println!("data    {}: {} subjects, {} records", ds.file, ds.subjects.len(), ds.n_records());
    let start = Instant::now();
    let bar = LazyBar::new(ds.subjects.len(), "subjects");
    let preds = sim.run(&ds, &|| bar.inc());
    bar.finish();
    let preds = preds?;
    let wall = start.elapsed().as_secs_f64();
    preds.write_csv_file(out).context("cannot write the predictions")?;
    println!(
        "wrote   {}: {} rows ({}), {} subjects solved in {:.3} s on {} threads",
        out.display(),
        preds.rows.len(),
        if preds.with_status { "ID,TIME,PRED,STATUS" } else { "ID,TIME,PRED" },
        preds.subjects,
        wall,
        rayon::current_num_threads()
    );
    if preds.failed() > 0 {
        println!(
            "warning {} of {} rows have no prediction: their subject's solve failed (STATUS column; \
             allow_failures = true)",
            preds.failed(),
            preds.rows.len()
        );
    }
    if config.is_none() {
        println!(
            "Next: `insilico simulate examples/nmtest.toml --out pred.csv` reproduces NONMEM's \
             event-grammar suite; see README.md for the config format."
        );
    }
    Ok(())
}

fn bench_p1(args: &P1Args) -> Result<()> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        builder = builder.num_threads(t);
    }
    let pool = builder.build().context("cannot start the worker threads")?;
    pool.install(|| bench_p1_in_pool(args))
}

fn bench_p1_in_pool(args: &P1Args) -> Result<()> {
    let threads = rayon::current_num_threads();
    let mut cases = p1::sweep();
    if let Some(n) = args.n {
        if n == 0 {
            bail!("--n must be at least 1");
        }
        cases.truncate(n);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output folder {}", args.out.display()))?;
    println!(
        "P1: two-compartment oral PK, {} solves (of the 10,000-regimen sweep), rtol {:e}, atol {:e}, {} threads",
        cases.len(),
        p1::options().rtol,
        p1::options().atol,
        threads
    );
    let (cf, reference) = p1::run_closed_form(&cases)?;
    let mut runs = Vec::new();
    for &method in &args.method.0 {
        let name = method.name();
        let bar = LazyBar::new(cases.len(), &name);
        let run = p1::run_p1(&cases, method, &reference, &|done| bar.set(done));
        bar.finish();
        runs.push(run?);
    }
    println!();
    println!(
        "{:<20} {:>7} {:>9} {:>10} {:>12} {:>10}",
        "method", "solves", "wall s", "solves/s", "max rel err", "x ref"
    );
    for r in runs.iter().chain(std::iter::once(&cf)) {
        let err = if std::ptr::eq(r, &cf) { "(reference)".to_string() } else { format!("{:.3e}", r.max_rel_err) };
        println!(
            "{:<20} {:>7} {:>9.3} {:>10.0} {:>12} {:>10.2}",
            r.method,
            r.n_solves,
            r.wall_s,
            r.solves_per_s(),
            err,
            r.wall_s / cf.wall_s.max(f64::MIN_POSITIVE)
        );
    }
    let primary = runs.iter().find(|r| r.method == "batched").or_else(|| runs.first()).context("no method ran")?;
    let json = p1::bench_json(primary, &runs, &cf, threads);
    let json_path = args.out.join("bench.json");
    let text = serde_json::to_string_pretty(&json).context("cannot format bench.json")?;
    insilico::atomic::write_bytes(&json_path, (text + "\n").as_bytes())?;
    let csv_path = args.out.join("p1.csv");
    insilico::atomic::write_file(&csv_path, |w| p1::write_csv(w, &cases, &primary.metrics))?;
    println!();
    println!(
        "wrote {} and {} ({} rows, method {})",
        json_path.display(),
        csv_path.display(),
        cases.len(),
        primary.method
    );
    Ok(())
}
