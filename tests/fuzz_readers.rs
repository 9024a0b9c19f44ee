//! Fuzzing every reader (issue 15): proptest over structured mutations of
//! the NONMEM CSV reader and of every TOML config (simulate, fit, sweep).
//! A reader may refuse its input, never panic, abort or allocate without an
//! estimate. The CI run is short (256 cases per reader); a long run:
//!
//! ```text
//! INSILICO_FUZZ_CASES=1000000 cargo test --release --test fuzz_readers
//! ```

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use insilico::fit_cmd::FitConfig;
use insilico::simulate::Simulation;
use insilico::solvers::data::{ColumnOrValue, Dataset, DoseMapping, ReadOptions};
use insilico::sweep::Sweep;

/// Cases per reader: `INSILICO_FUZZ_CASES`, default 256.
fn cases() -> u32 {
    std::env::var("INSILICO_FUZZ_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

// ---------------------------------------------------------------------------
// NONMEM CSV
// ---------------------------------------------------------------------------

const NAMES: [&str; 18] = [
    "ID", "TIME", "AMT", "DV", "EVID", "CMT", "MDV", "RATE", "II", "ADDL", "SS", "WT", "DOSE", "LAGT", "id", "", "#ID",
    "\"ID\"",
];

const FIELDS: [&str; 34] = [
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "-1",
    "-2",
    ".",
    "",
    "100",
    "0.5",
    "24",
    "1e308",
    "-1e308",
    "5e-324",
    "1e-300",
    "4294967295",
    "4294967296",
    "1e11",
    "nan",
    "inf",
    "-inf",
    "NaN",
    "abc",
    "\"1\"",
    "\"a,b\"",
    "\"",
    "1,",
    " 2 ",
    "1e",
    "0x10",
    "１",
    "#",
];

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0..FIELDS.len()).prop_map(|i| FIELDS[i].to_string()),
        2 => any::<f64>().prop_map(|v| format!("{v}")),
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => proptest::collection::vec(any::<char>(), 0..4).prop_map(String::from_iter),
    ]
}

fn dataset_text() -> impl Strategy<Value = String> {
    let header = proptest::collection::vec(0..NAMES.len(), 1..9);
    let rows = proptest::collection::vec((0..4usize, proptest::collection::vec(field(), 0..10)), 0..8);
    (header, rows, 0..3usize, any::<bool>(), any::<bool>(), 0..3usize).prop_map(
        |(header, rows, eol, bom, comment, hdr_style)| {
            let eol = ["\n", "\r\n", "\r"][eol];
            let mut names: Vec<&str> = header.iter().map(|&i| NAMES[i]).collect();
            if hdr_style == 0 && !names.contains(&"ID") {
                names.insert(0, "ID");
            }
            if hdr_style == 0 && !names.contains(&"TIME") {
                names.insert(1, "TIME");
            }
            let mut out = String::new();
            if bom {
                out.push('\u{feff}');
            }
            if comment {
                out += "# a comment";
                out += eol;
            }
            if hdr_style == 2 {
                out.push('#');
            }
            out += &names.join(",");
            out += eol;
            for (id, fields) in rows {
                let mut f = fields;
                if !f.is_empty() {
                    f[0] = ["1", "2", "1", "x"][id].to_string();
                }
                out += &f.join(",");
                out += eol;
            }
            out
        },
    )
}

#[test]
fn fuzz_nonmem_csv_reader() {
    let maps = [
        DoseMapping::new(2, 1, 2),
        DoseMapping::new(3, 2, 1)
            .with_lag(1, ColumnOrValue::Column("LAGT".into()))
            .with_rate(2, ColumnOrValue::Column("WT".into()))
            .with_duration(2, ColumnOrValue::Value(2.0))
            .with_bioavailability(1, ColumnOrValue::Param(0)),
    ];
    let opts = [
        ReadOptions::default(),
        ReadOptions { ignore: vec!["ss".into()], columns: vec![("AMT".into(), "DOSE".into())] },
    ];
    let n = std::cell::Cell::new(0u64);
    runner()
        .run(&(dataset_text(), 0..2usize), |(text, k)| {
            n.set(n.get() + 1);
            if let Ok(ds) = Dataset::from_str("fuzz.csv", &text, &opts[k]) {
                for s in &ds.subjects {
                    for m in &maps {
                        let _ = s.to_schedule(&ds, m);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!("fuzz_nonmem_csv_reader: {} cases, 0 panics", n.get());
}

// ---------------------------------------------------------------------------
// TOML configs
// ---------------------------------------------------------------------------

const SIMULATE_SEED: &str = r#"
model = "pk-1cmt-oral"
data = "d.csv"
ignore_columns = ["SS"]
output_scale = 1000.0
method = "bdf"
rtol = 1e-8
atol = 1e-10
max_steps = 1000000
[params]
ka = 1.5
CL = 1.1
V = 20
[columns]
AMT = "DOSE"
[dosing]
dose_cmt = 1
obs_cmt = 2
[dosing.bioavailability]
2 = "bioav"
[dosing.lag]
central = 0.5
[dosing.rate]
2 = "rat2"
[dosing.duration]
2 = 2.5
"#;

/// A pool of replacement values: the edges that broke readers before.
fn value_pool() -> Vec<toml::Value> {
    use toml::Value as V;
    let mut range = toml::Table::new();
    range.insert("from".into(), V::Float(0.5));
    range.insert("to".into(), V::Float(50.0));
    range.insert("n".into(), V::Float(1e11));
    let mut tiny = toml::Table::new();
    tiny.insert("from".into(), V::Float(5e-324));
    tiny.insert("to".into(), V::Float(1e308));
    tiny.insert("n".into(), V::Integer(3));
    tiny.insert("log".into(), V::Boolean(true));
    vec![
        V::Integer(0),
        V::Integer(-1),
        V::Integer(1),
        V::Integer(i64::MAX),
        V::Integer(i64::MIN),
        V::Integer(4294967295),
        V::Float(f64::NAN),
        V::Float(f64::INFINITY),
        V::Float(f64::NEG_INFINITY),
        V::Float(1e308),
        V::Float(5e-324),
        V::Float(1e-300),
        V::Float(1e-9),
        V::Float(1e11),
        V::Float(0.5),
        V::Float(-0.5),
        V::String(String::new()),
        V::String("nan".into()),
        V::String("lbfgs".into()),
        V::String("adam".into()),
        V::String("population".into()),
        V::String("central".into()),
        V::Boolean(true),
        V::Array(vec![]),
        V::Array(vec![V::Float(f64::NAN), V::Integer(1)]),
        V::Array(vec![V::String("individual".into())]),
        V::Array(vec![V::Integer(100000000)]),
        V::Table(range),
        V::Table(tiny),
        V::Table(toml::Table::new()),
    ]
}

/// Paths to every value of a table (through tables and arrays).
fn paths(v: &toml::Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        toml::Value::Table(t) => {
            for (k, x) in t {
                prefix.push(PathStep::Key(k.clone()));
                out.push(prefix.clone());
                paths(x, prefix, out);
                prefix.pop();
            }
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                out.push(prefix.clone());
                paths(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut toml::Value, path: &[PathStep]) -> Option<&'a mut toml::Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (PathStep::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (PathStep::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One mutation: replace a value, delete a key, or add an unknown key.
fn mutate(doc: &mut toml::Value, op: u8, which: usize, val: &toml::Value) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    let path = all[which % all.len()].clone();
    match op % 4 {
        0 | 1 => {
            if let Some(slot) = at(doc, &path) {
                *slot = val.clone();
            }
        }
        2 => {
            let (last, parent) = path.split_last().expect("non-empty path");
            if let (PathStep::Key(k), Some(toml::Value::Table(t))) = (last, at(doc, parent)) {
                t.remove(k);
            } else if let (PathStep::Index(i), Some(toml::Value::Array(a))) = (last, at(doc, parent)) {
                a.remove(*i);
            }
        }
        _ => {
            let parent = &path[..path.len() - 1];
            if let Some(toml::Value::Table(t)) = at(doc, parent) {
                t.insert("learning_rate".into(), val.clone());
            }
        }
    }
}

/// TOML text of a document: `key = value` lines, tables and arrays inline
/// (the `toml` crate is built without its writer).
fn to_toml(doc: &toml::Value) -> String {
    fn key(k: &str) -> String {
        inline(&toml::Value::String(k.to_string()))
    }
    fn inline(v: &toml::Value) -> String {
        match v {
            toml::Value::String(s) => {
                let mut o = String::from("\"");
                for c in s.chars() {
                    match c {
                        '"' => o += "\\\"",
                        '\\' => o += "\\\\",
                        c if (c as u32) < 0x20 || c as u32 == 0x7f => o += &format!("\\u{:04X}", c as u32),
                        c => o.push(c),
                    }
                }
                o + "\""
            }
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) if f.is_nan() => "nan".into(),
            toml::Value::Float(f) if f.is_infinite() => {
                if *f > 0.0 {
                    "inf".into()
                } else {
                    "-inf".into()
                }
            }
            toml::Value::Float(f) => {
                let s = format!("{f:?}");
                if s.contains(['.', 'e', 'E']) {
                    s
                } else {
                    s + ".0"
                }
            }
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
            toml::Value::Table(t) => {
                format!(
                    "{{ {} }}",
                    t.iter().map(|(k, v)| format!("{} = {}", key(k), inline(v))).collect::<Vec<_>>().join(", ")
                )
            }
        }
    }
    match doc {
        toml::Value::Table(t) => t.iter().map(|(k, v)| format!("{} = {}\n", key(k), inline(v))).collect(),
        other => inline(other),
    }
}

#[test]
fn the_writer_round_trips_the_seeds() {
    for seed in [SIMULATE_SEED, include_str!("../examples/theoph.toml"), include_str!("../examples/sweep_p1.toml")] {
        let doc = toml::Value::Table(toml::from_str::<toml::Table>(seed).unwrap());
        let back = toml::Value::Table(toml::from_str::<toml::Table>(&to_toml(&doc)).unwrap());
        assert_eq!(doc, back);
    }
}

/// Structured mutations of `seed`: 1 to 4 edits with values from the pool
/// or arbitrary numbers, then the text (or a raw byte-level edit of it).
fn mutated(seed: &'static str) -> impl Strategy<Value = String> {
    let pool = value_pool();
    let np = pool.len();
    let edit = (any::<u8>(), any::<usize>(), 0..np + 2, any::<f64>(), any::<i64>());
    (proptest::collection::vec(edit, 1..5), any::<bool>(), any::<usize>(), any::<char>()).prop_map(
        move |(edits, raw, pos, ch)| {
            let mut doc: toml::Value = toml::from_str::<toml::Table>(seed).map(toml::Value::Table).expect("seed");
            for (op, which, vi, f, i) in edits {
                let v = if vi < np {
                    pool[vi].clone()
                } else if vi == np {
                    toml::Value::Float(f)
                } else {
                    toml::Value::Integer(i)
                };
                mutate(&mut doc, op, which, &v);
            }
            let mut text = to_toml(&doc);
            if raw && !text.is_empty() {
                let mut cut = pos % text.len();
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.insert(cut, ch);
            }
            text
        },
    )
}

fn fuzz_config(name: &str, seed: &'static str, check: &dyn Fn(&str)) {
    let n = std::cell::Cell::new(0u64);
    runner()
        .run(&mutated(seed), |text| {
            n.set(n.get() + 1);
            check(&text);
            Ok(())
        })
        .unwrap();
    eprintln!("{name}: {} cases, 0 panics", n.get());
}

#[test]
fn fuzz_simulate_config() {
    fuzz_config("fuzz_simulate_config", SIMULATE_SEED, &|text| {
        if let Ok(sim) = Simulation::from_toml_str(text, "fuzz.toml", None) {
            let _ = sim.describe();
        }
    });
}

#[test]
fn fuzz_fit_configs() {
    let ds = insilico::solvers::Dataset::from_str(
        "theoph.csv",
        insilico::fit_cmd::EMBEDDED_FIT_DATA,
        &insilico::solvers::ReadOptions::default(),
    )
    .unwrap();
    for (name, seed) in [
        ("theoph.toml", include_str!("../examples/theoph.toml")),
        ("p4_hybrid.toml", include_str!("../examples/p4_hybrid.toml")),
    ] {
        fuzz_config(&format!("fuzz_fit_config {name}"), seed, &|text| {
            if let Ok(cfg) = FitConfig::from_toml_str(text, "fuzz.toml", None) {
                let _ = cfg.describe();
                let _ = cfg.n_weights();
                if let Ok(b) = cfg.build(&ds) {
                    let _ = cfg.subjects(&b, &ds);
                }
            }
        });
    }
}

#[test]
fn fuzz_sweep_configs() {
    for (name, seed) in [
        ("sweep_organoid.toml", include_str!("../examples/sweep_organoid.toml")),
        ("sweep_p1.toml", include_str!("../examples/sweep_p1.toml")),
    ] {
        fuzz_config(&format!("fuzz_sweep_config {name}"), seed, &|text| {
            if let Ok(s) = Sweep::from_toml_str(text, "fuzz.toml", None) {
                let _ = (s.describe(), s.columns(), s.fingerprint(), s.chunks());
                let _ = s.check_output_size(false);
                let _ = s.inputs(0);
                let _ = s.inputs(s.len() - 1);
                let _ = s.group_key(s.groups() - 1);
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Whole commands on mutated inputs
// ---------------------------------------------------------------------------

/// Cases of [`fuzz_whole_commands`]: `INSILICO_FUZZ_COMMANDS`, default 24.
fn command_cases() -> u32 {
    std::env::var("INSILICO_FUZZ_COMMANDS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(24)
}

/// Runs `insilico` under a 4 GiB address-space cap; returns (exit code, stdout, stderr).
fn capped(args: &[&Path], dir: &Path) -> (Option<i32>, String, String) {
    let mut sh = String::from("ulimit -v 4194304; exec");
    sh += &format!(" '{}'", env!("CARGO_BIN_EXE_insilico"));
    for a in args {
        sh += &format!(" '{}'", a.display());
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(sh)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run insilico");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `simulate` and `sweep` on mutated datasets and configs, as processes
/// under a 4 GiB memory cap: never a panic or an abort (a signal), and never
/// a non-finite number written with exit 0.
#[test]
fn fuzz_whole_commands() {
    let dir = std::env::temp_dir().join(format!("insilico-fuzz-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = std::cell::Cell::new(0u64);
    let (ok_runs, refused) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let (sweep_ok, sweep_refused, sweep_skipped) =
        (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let mut runner = TestRunner::new(Config { cases: command_cases(), failure_persistence: None, ..Config::default() });
    let small_sweep = "model = \"pk-2cmt-oral\"\nhorizon = 48.0\noutput_step = 1.0\nchunk = 8\n[regimen.depot]\ndose = [100, 200]\ninterval = 12\n[params]\nka = 1.2\nCL = 5\nV1 = 30\nQ = 10\nV2 = 50\n[population]\nsize = 4\nseed = 1\n";
    let sweep_seed: &'static str = Box::leak(small_sweep.to_string().into_boxed_str());
    let strategy = (dataset_text(), mutated(SIMULATE_SEED), mutated(sweep_seed), any::<bool>());
    runner
        .run(&strategy, |(data, sim, sweep, use_seed_data)| {
            n.set(n.get() + 1);
            let case = dir.join(format!("c{}", n.get()));
            std::fs::create_dir_all(&case).unwrap();
            let data = if use_seed_data {
                "ID,TIME,DOSE,DV,bioav,rat2\n1,0,100,.,1,5\n1,1,.,2,1,5\n".to_string()
            } else {
                data
            };
            std::fs::write(case.join("d.csv"), data).unwrap();
            std::fs::write(case.join("s.toml"), &sim).unwrap();
            let out = case.join("p.csv");
            let (code, so, se) =
                capped(&[Path::new("simulate"), &case.join("s.toml"), Path::new("--out"), &out], &case);
            assert!(code.is_some() && !se.contains("panicked"), "simulate crashed on\n{sim}\n{so}\n{se}");
            if code == Some(0) {
                ok_runs.set(ok_runs.get() + 1);
                let csv = std::fs::read_to_string(&out).unwrap();
                for line in csv.lines().skip(1) {
                    let v: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
                    assert!(v.is_finite(), "non-finite output with exit 0:\n{sim}\n{csv}");
                }
            } else {
                refused.set(refused.get() + 1);
                assert!(!out.exists() || std::fs::metadata(&out).unwrap().len() > 0);
            }
            // The sweep only where it is small (a valid huge sweep would just run long).
            if let Ok(s) = Sweep::from_toml_str(&sweep, "s.toml", Some(&case)) {
                if s.len() > 4096 || s.times.len() > 4096 {
                    sweep_skipped.set(sweep_skipped.get() + 1);
                    let _ = std::fs::remove_dir_all(&case);
                    return Ok(());
                }
            }
            std::fs::write(case.join("w.toml"), &sweep).unwrap();
            let o = case.join("o");
            let (code, so, se) = capped(&[Path::new("sweep"), &case.join("w.toml"), Path::new("--out"), &o], &case);
            assert!(code.is_some() && !se.contains("panicked"), "sweep crashed on\n{sweep}\n{so}\n{se}");
            if code == Some(0) {
                sweep_ok.set(sweep_ok.get() + 1);
                let t = insilico::sweep::read_parts(&o).unwrap();
                for (name, col) in t.names.iter().zip(&t.columns) {
                    if let insilico::sweep::Values::Float(v) = col {
                        let status = t.texts("status").unwrap();
                        for (x, st) in v.iter().zip(status) {
                            assert!(
                                x.is_finite() || st != "ok" || name == "failed_at",
                                "{name} = {x} with status ok:\n{sweep}"
                            );
                        }
                    }
                }
            }
            if code != Some(0) {
                sweep_refused.set(sweep_refused.get() + 1);
            }
            let _ = std::fs::remove_dir_all(&case);
            Ok(())
        })
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "fuzz_whole_commands: {} cases (simulate: {} exited 0, {} refused; sweep: {} exited 0, {} refused, {} \
         valid but too large to run here), 0 panics, 0 aborts, 0 non-finite outputs with exit 0",
        n.get(),
        ok_runs.get(),
        refused.get(),
        sweep_ok.get(),
        sweep_refused.get(),
        sweep_skipped.get()
    );
}

/// The perturb study config (`insilico perturb`) under the same structured mutations.
#[test]
fn fuzz_perturb_config() {
    let base = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"));
    fuzz_config("fuzz_perturb_config", include_str!("../examples/perturb_protein.toml"), &|text| {
        if let Ok(study) = insilico::perturb::Study::from_toml_str(text, "fuzz.toml", base) {
            let _ = study.describe();
        }
    });
}

/// `fit` and `perturb` as processes on mutated configs, under the same 4 GiB
/// cap (and a 60 s wall limit, since a valid config may ask for a long fit):
/// never a panic or an abort, and a fit that exits 0 reports a finite objective.
#[test]
fn fuzz_whole_commands_fit_and_perturb() {
    let dir = std::env::temp_dir().join(format!("insilico-fuzz-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let examples = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"));
    for f in ["perturb_protein_rates.csv", "perturb_protein_mutations.csv"] {
        std::fs::copy(examples.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(examples.join("data/theoph.csv"), dir.join("theoph.csv")).unwrap();
    let fit_seed: &'static str = Box::leak(
        include_str!("../examples/theoph.toml")
            .replace("../../shared/data/theoph.csv", "theoph.csv")
            .replace("iterations = 400", "iterations = 5")
            .into_boxed_str(),
    );
    let n = std::cell::Cell::new(0u64);
    let counts = std::cell::Cell::new((0u64, 0u64, 0u64, 0u64));
    let mut runner = TestRunner::new(Config { cases: command_cases(), failure_persistence: None, ..Config::default() });
    let timed = |args: &[&Path], case: &Path| {
        let mut sh = String::from("ulimit -v 4194304; exec timeout 60");
        sh += &format!(" '{}'", env!("CARGO_BIN_EXE_insilico"));
        for a in args {
            sh += &format!(" '{}'", a.display());
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(sh)
            .current_dir(case)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("run insilico");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    runner
        .run(&(mutated(fit_seed), mutated(include_str!("../examples/perturb_protein.toml"))), |(fit, study)| {
            n.set(n.get() + 1);
            let case = dir.join(format!("c{}", n.get()));
            std::fs::create_dir_all(&case).unwrap();
            // Configs sit beside the data they name (relative paths resolve against them).
            let (fcfg, pcfg) = (dir.join(format!("f{}.toml", n.get())), dir.join(format!("p{}.toml", n.get())));
            std::fs::write(&fcfg, &fit).unwrap();
            std::fs::write(&pcfg, &study).unwrap();
            let (mut fit_ok, mut fit_no, mut p_ok, mut p_no) = counts.get();
            let (code, se) = timed(&[Path::new("fit"), &fcfg, Path::new("--out"), &case.join("fo")], &dir);
            assert!(code.is_some() && !se.contains("panicked"), "fit crashed on\n{fit}\n{se}");
            if code == Some(0) {
                fit_ok += 1;
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(case.join("fo/fit.json")).unwrap()).unwrap();
                assert!(v.get("loss").and_then(|l| l.as_f64()).is_some_and(f64::is_finite), "fit.json: {v}");
            } else {
                fit_no += 1;
            }
            let (code, se) = timed(&[Path::new("perturb"), &pcfg, Path::new("--out"), &case.join("po")], &dir);
            assert!(code.is_some() && !se.contains("panicked"), "perturb crashed on\n{study}\n{se}");
            if code == Some(0) {
                p_ok += 1;
            } else {
                p_no += 1;
            }
            counts.set((fit_ok, fit_no, p_ok, p_no));
            let _ = std::fs::remove_dir_all(&case);
            let _ = (std::fs::remove_file(&fcfg), std::fs::remove_file(&pcfg));
            Ok(())
        })
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b, c, d) = counts.get();
    eprintln!(
        "fuzz_whole_commands_fit_and_perturb: {} cases (fit: {a} exited 0, {b} refused or stopped; perturb: {c} exited 0, \
         {d} refused), 0 panics, 0 aborts",
        n.get()
    );
}
