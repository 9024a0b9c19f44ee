//! `insilico sweep` end to end: the embedded default and its plausibility,
//! kill-and-resume, thread-count and chunking determinism, clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use insilico::sweep::{read_parts, Sweep, Table};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_insilico"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("insilico-sweep-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run insilico");
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!se.contains("panicked"), "panic:\n{se}");
    (out, so, se)
}

/// An organoid sweep of `levels × pop` trajectories in parts of `chunk`.
fn organoid_config(levels: &str, pop: u64, chunk: u64) -> String {
    format!(
        "model = \"organoid-drug-response\"\nhorizon = 336.0\noutput_step = 2.0\nchunk = {chunk}\n\
         [regimen.C_med]\nlevel = {levels}\nexposure = [12, 48]\nperiod = 72\n[efficacy]\nquantity = \"viable\"\n\
         [population]\nsize = {pop}\nseed = 99\ncv = {{ rho = 0.25, EC50 = 0.4, k_in = 0.3 }}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// Every column of two tables, bit for bit.
fn assert_same(a: &Table, b: &Table) {
    assert_eq!(a.names, b.names);
    assert_eq!(a.len(), b.len());
    for name in &a.names {
        if let (Some(x), Some(y)) = (a.floats(name), b.floats(name)) {
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "column {name} differs");
        } else {
            assert_eq!(a.ints(name), b.ints(name), "column {name} differs");
        }
    }
}

#[test]
fn embedded_default_ranks_regimens_and_is_monotone() {
    let dir = scratch("embedded");
    let (out, so, se) = run(bin().arg("sweep").current_dir(&dir));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("No config given") && so.contains("efficacy") && so.contains("toxicity_peak"), "{so}");
    assert!(so.contains("rank") && so.contains("Best with mean toxicity_peak"), "{so}");
    let out_dir = dir.join("sweep-out");
    let png = std::fs::read(out_dir.join("heatmap.png")).expect("heatmap.png");
    assert_eq!(&png[1..4], b"PNG");
    let sweep = Sweep::from_toml_str(insilico::sweep::EMBEDDED_CONFIG, "embedded", None).unwrap();
    let t = read_parts(&out_dir).unwrap();
    assert_eq!(t.len() as u64, sweep.len());
    assert!(t.texts("status").unwrap().iter().all(|s| s == "ok"));
    // Plausibility: for every organoid of the population (the same member in
    // every group), a higher level or a longer exposure never leaves more
    // viable cells at day 14; efficacy stays in [0, 1].
    let v = t.floats("viable_final").unwrap();
    let eff = t.floats("efficacy").unwrap();
    assert!(eff.iter().all(|e| (-1e-6..=1.0).contains(e)));
    let pop = sweep.population_size() as usize;
    let (nl, ne, np) = (7, 4, 2);
    let at = |l: usize, e: usize, p: usize, m: usize| v[((l * ne + e) * np + p) * pop + m];
    for m in 0..pop {
        for p in 0..np {
            for e in 0..ne {
                for l in 1..nl {
                    assert!(at(l, e, p, m) <= at(l - 1, e, p, m) * (1.0 + 1e-6), "level {l}, exposure {e}, member {m}");
                }
            }
            for l in 0..nl {
                for e in 1..ne {
                    assert!(at(l, e, p, m) <= at(l, e - 1, p, m) * (1.0 + 1e-6), "exposure {e}, level {l}, member {m}");
                }
            }
        }
    }
    let csv = std::fs::read_to_string(out_dir.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 56);
    assert!(csv.starts_with("group,level,exposure,period,n,failed,viable_final_mean,"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn killed_sweep_resumes_without_loss_or_duplicates() {
    let dir = scratch("kill");
    // 6 levels × 2 exposures × 1500 organoids = 18,000 trajectories in 36 parts.
    let config = write(&dir, "big.toml", &organoid_config("[0.5, 1, 2, 5, 10, 20]", 1500, 500));
    let (a, b) = (dir.join("killed"), dir.join("straight"));
    let mut child = bin()
        .arg("sweep")
        .arg(&config)
        .arg("--out")
        .arg(&a)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn insilico");
    let parts = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".parquet")).count())
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while parts(&a) < 2 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let after_kill = parts(&a);
    assert!((2..36).contains(&after_kill), "killed with {after_kill} of 36 parts written");
    let (out, so, se) = run(bin().arg("sweep").arg(&config).arg("--out").arg(&a));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("resume"), "{so}");
    let resumed = read_parts(&a).unwrap();
    let ids = resumed.ints("id").unwrap();
    assert_eq!(ids.len(), 18_000);
    assert!(ids.iter().enumerate().all(|(i, &id)| id == i as i64), "every id exactly once, in order");
    let (out, so, se) = run(bin().arg("sweep").arg(&config).arg("--out").arg(&b));
    assert!(out.status.success(), "{so}\n{se}");
    assert_same(&resumed, &read_parts(&b).unwrap());
    let sa = std::fs::read_to_string(a.join("summary.csv")).unwrap();
    assert_eq!(sa, std::fs::read_to_string(b.join("summary.csv")).unwrap());
    // A finished sweep re-run computes nothing and keeps its results.
    let (out, so, _) = run(bin().arg("sweep").arg(&config).arg("--out").arg(&a));
    assert!(out.status.success() && so.contains("36 of 36 chunks already complete"), "{so}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn results_do_not_depend_on_threads_or_chunking() {
    let dir = scratch("threads");
    let c1 = write(&dir, "c1.toml", &organoid_config("[1, 10]", 150, 128));
    let c2 = write(&dir, "c2.toml", &organoid_config("[1, 10]", 150, 77));
    let mut tables = Vec::new();
    for (threads, config, name) in [("1", &c1, "t1"), ("2", &c1, "t2"), ("2", &c2, "t2-chunk77")] {
        let out_dir = dir.join(name);
        let (out, so, se) =
            run(bin().arg("sweep").arg(config).arg("--out").arg(&out_dir).env("RAYON_NUM_THREADS", threads));
        assert!(out.status.success(), "{so}\n{se}");
        tables.push((read_parts(&out_dir).unwrap(), std::fs::read_to_string(out_dir.join("summary.csv")).unwrap()));
    }
    assert_eq!(tables[0].0.len(), 600);
    assert_same(&tables[0].0, &tables[1].0);
    assert_same(&tables[0].0, &tables[2].0);
    assert_eq!(tables[0].1, tables[1].1);
    assert_eq!(tables[0].1, tables[2].1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn p1_sweep_config_matches_the_batched_integrator() {
    // A 400-trajectory cut of examples/sweep_p1.toml: 2 doses × 4 intervals × 5 CL × 10 subjects.
    let dir = scratch("p1");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sweep_p1.toml")).unwrap();
    let text = text
        .replace("dose = { from = 50, to = 1000, n = 50 }", "dose = [100, 1000]")
        .replace("CL = { from = 2.5, to = 10, n = 50, log = true }", "CL = { from = 2.5, to = 10, n = 5, log = true }");
    let config = write(&dir, "p1.toml", &text);
    let (out, so, se) = run(bin().arg("sweep").arg(&config).arg("--out").arg(dir.join("out")));
    assert!(out.status.success(), "{so}\n{se}");
    let t = read_parts(&dir.join("out")).unwrap();
    assert_eq!(t.len(), 400);
    // Linear PK: AUC over a dosing-interval-multiple window scales with the dose.
    let auc = t.floats("auc").unwrap();
    for i in 0..200 {
        let r = auc[200 + i] / auc[i];
        assert!((r - 10.0).abs() < 1e-4, "AUC ratio {r}");
    }
    // V1 varies across subjects (20% CV), CL follows the grid.
    let v1 = t.floats("V1").unwrap();
    assert!(v1[0] != v1[1] && v1[0] == v1[10]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configs_and_devices_are_clear_errors() {
    let dir = scratch("bad");
    let cases = [
        (
            organoid_config("[1]", 2, 10).replace("organoid-drug-response", "organoidx"),
            "model: organoidx: not a zoo model",
        ),
        (organoid_config("[1]", 2, 10) + "[params]\nEC500 = 3\n", "[params] EC500: unknown parameter"),
        (
            organoid_config("[1]", 2, 10).replace("exposure = [12, 48]", "exposure = [12, 0]"),
            "exposure: must be positive",
        ),
        (organoid_config("[]", 2, 10), "[regimen.C_med] level: empty grid"),
        (
            organoid_config("[1]", 2, 10) + "[report]\nrank_by = \"viable\"\n",
            "[report] rank_by: unknown column `viable`",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let config = write(&dir, &format!("bad{i}.toml"), text);
        let (out, so, se) = run(bin().arg("sweep").arg(&config).arg("--out").arg(dir.join("o")));
        assert!(!out.status.success(), "accepted {text}\n{so}");
        assert!(se.contains(&format!("bad{i}.toml")) && se.contains(want), "expected `{want}` in: {se}");
    }
    let (out, _, se) = run(bin().arg("sweep").arg(dir.join("missing.toml")));
    assert!(!out.status.success() && se.contains("missing.toml"), "{se}");
    // Another config in a folder that holds a sweep is refused.
    let c1 = write(&dir, "a.toml", &organoid_config("[1]", 2, 10));
    let c2 = write(&dir, "b.toml", &organoid_config("[2]", 2, 10));
    let (out, so, se) = run(bin().arg("sweep").arg(&c1).arg("--out").arg(dir.join("same")));
    assert!(out.status.success(), "{so}\n{se}");
    let (out, _, se) = run(bin().arg("sweep").arg(&c2).arg("--out").arg(dir.join("same")));
    assert!(!out.status.success() && se.contains("different sweep"), "{se}");
    // Devices: CUDA without a GPU (or without the feature) fails clearly; auto falls back.
    if insilico::sweep::cuda_status().is_err() {
        let (out, _, se) =
            run(bin().arg("sweep").arg(&c1).arg("--out").arg(dir.join("gpu")).args(["--device", "cuda"]));
        assert!(!out.status.success() && se.contains("--device cuda"), "{se}");
        let (out, so, se) =
            run(bin().arg("sweep").arg(&c1).arg("--out").arg(dir.join("auto")).args(["--device", "auto"]));
        assert!(out.status.success() && so.contains("running on the CPU"), "{so}\n{se}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn friberg_model_file_sweeps_end_to_end_through_the_cli() {
    // examples/friberg/sweep.toml: a model in no zoo, 4 doses x 3 intervals x 8 patients.
    let dir = scratch("friberg");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/friberg/sweep.toml");
    let out_dir = dir.join("out");
    let (out, so, se) = run(bin().arg("sweep").arg(&config).arg("--out").arg(&out_dir).current_dir(&dir));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("model friberg") && so.contains("neutrophil_nadir"), "{so}");
    let t = read_parts(&out_dir).unwrap();
    assert_eq!(t.len(), 4 * 3 * 8);
    assert!(t.texts("status").unwrap().iter().all(|s| s == "ok"));
    let (nadir, cmax) = (t.floats("neutrophil_nadir").unwrap(), t.floats("cmax").unwrap());
    let circ0 = t.floats("Circ0").unwrap();
    let at = |v: &[f64], d: usize, i: usize, m: usize| v[(d * 3 + i) * 8 + m];
    for (m, &c0) in circ0.iter().enumerate().take(8) {
        for i in 0..3 {
            // Myelosuppression: the nadir falls below baseline and deepens with the dose.
            assert!(at(nadir, 0, i, m) < c0, "member {m}: no nadir below Circ0");
            for d in 1..4 {
                assert!(at(nadir, d, i, m) < at(nadir, d - 1, i, m), "dose {d}, interval {i}, member {m}");
            }
            // Linear PK: the peak concentration scales with the dose (rtol 1e-6 solves).
            let r = at(cmax, 3, i, m) / at(cmax, 0, i, m);
            assert!((r - 8.0).abs() < 1e-4, "cmax ratio {r}");
        }
    }
    assert!(std::fs::read(out_dir.join("heatmap.png")).is_ok_and(|b| &b[1..4] == b"PNG"));
    let _ = std::fs::remove_dir_all(&dir);
}
