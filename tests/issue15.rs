//! Issue 15, "never a silent wrong number, never a crash": one regression
//! test per reproducer (`dNN_...` is defect NN of the issue). Each failed on
//! the main branch before the fix. See docs/notes/issue-15.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use insilico::fit_cmd::FitConfig;
use insilico::simulate::Simulation;
use insilico::sweep::{read_parts, Sweep};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_insilico"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("insilico-i15-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write input");
    p
}

/// Runs the command; no run may panic or abort (a signal instead of an exit code).
fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run insilico");
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!se.contains("panicked"), "panic:\n{se}");
    assert!(out.status.code().is_some(), "killed by a signal (abort?):\n{so}\n{se}");
    (out, so, se)
}

const SIM: &str = "model = \"pk-1cmt-oral\"\ndata = \"d.csv\"\n[params]\nka = 1.5\nCL = 3\nV = 30\n";
const DATA: &str = "ID,TIME,AMT,DV\n1,0,100,.\n1,1,.,1\n1,4,.,1\n";

/// Files left in `dir` whose name marks an unfinished write.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| insilico::atomic::is_temp_name(n))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn d01_dose_records_without_an_amount_column_are_refused_unless_mapped() {
    let dir = scratch("d01");
    write(&dir, "d.csv", "ID,TIME,DOSE,EVID,DV\n1,0,100,1,.\n1,1,.,0,1\n1,4,.,0,1\n");
    let cfg = write(&dir, "s.toml", SIM);
    let (out, so, se) = run(bin().arg("simulate").arg(&cfg).arg("--out").arg(dir.join("p.csv")));
    assert!(!out.status.success(), "{so}\n{se}");
    assert!(se.contains("needs an amount") && se.contains("[columns] AMT = \"DOSE\""), "{se}");
    assert!(!dir.join("p.csv").exists());
    let cfg = write(&dir, "m.toml", &format!("{SIM}[columns]\nAMT = \"DOSE\"\n"));
    let (out, so, se) = run(bin().arg("simulate").arg(&cfg).arg("--out").arg(dir.join("p.csv")));
    assert!(out.status.success(), "{so}\n{se}");
    let csv = std::fs::read_to_string(dir.join("p.csv")).unwrap();
    let preds: Vec<f64> = csv.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect();
    assert!(preds.iter().all(|&p| p > 1.0), "the dose is given: {csv}");
    // A missing amount on a dose record is refused too.
    write(&dir, "d.csv", "ID,TIME,AMT,EVID,DV\n1,0,.,1,.\n1,1,.,0,1\n");
    let (out, _, se) = run(bin().arg("simulate").arg(dir.join("s.toml")).arg("--out").arg(dir.join("q.csv")));
    assert!(!out.status.success() && se.contains("line 2") && se.contains("amount is missing"), "{se}");
    let _ = std::fs::remove_dir_all(&dir);
}

const ORGANOID: &str = "model = \"organoid-drug-response\"\nhorizon = 336.0\nchunk = 64\n[regimen.C_med]\nlevel = [1, 10]\nexposure = 24\nperiod = 72\n[efficacy]\nquantity = \"viable\"\n[population]\nsize = 4\nseed = 1\n";

#[test]
fn d02_tiny_output_step_is_refused_not_a_panic() {
    for step in ["5e-324", "1e-300"] {
        let text = format!("output_step = {step}\n{ORGANOID}");
        let e = Sweep::from_toml_str(&text, "t.toml", None).unwrap_err().to_string();
        assert!(e.contains("output_step") && e.contains("over the limit"), "{e}");
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sweep_organoid.toml"))
            .unwrap()
            .replace("output_step = 2.0", &format!("output_step = {step}"));
        let e = Sweep::from_toml_str(&text, "t.toml", None).unwrap_err().to_string();
        assert!(e.contains("change `output_step`"), "{e}");
    }
}

#[test]
fn d03_allocations_are_estimated_and_refused_with_the_key() {
    let text = ORGANOID.replace("level = [1, 10]", "level = { from = 0.5, to = 50, n = 100000000000 }");
    let e = Sweep::from_toml_str(&text, "t.toml", None).unwrap_err().to_string();
    assert!(e.contains("800 GB") && e.contains("[regimen.C_med] level.n"), "{e}");
    let e = Sweep::from_toml_str(&format!("output_step = 1e-9\n{ORGANOID}"), "t.toml", None).unwrap_err().to_string();
    assert!(e.contains("TB") && e.contains("`output_step`"), "{e}");
    let e = Sweep::from_toml_str(&ORGANOID.replace("chunk = 64", "chunk = 100000000000"), "t.toml", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`chunk`"), "{e}");
}

#[test]
fn d03_addl_is_expanded_lazily_up_to_the_horizon() {
    let dir = scratch("d03");
    for addl in ["100000000", "4294967295"] {
        write(&dir, "d.csv", &format!("ID,TIME,AMT,II,ADDL,DV\n1,0,100,12,{addl},.\n1,1,.,.,.,1\n"));
        let cfg = write(&dir, "s.toml", SIM);
        // Under a 1 GiB address-space cap: the 7 GB expansion would abort.
        let sh = format!(
            "ulimit -v 1048576; exec '{}' simulate '{}' --out '{}'",
            env!("CARGO_BIN_EXE_insilico"),
            cfg.display(),
            dir.join("p.csv").display()
        );
        let (out, so, se) = run(Command::new("sh").arg("-c").arg(sh).env("RAYON_NUM_THREADS", "1"));
        assert!(out.status.success(), "{so}\n{se}");
        assert!(so.contains("1 rows"), "{so}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn d03_heldout_regimen_with_u32_max_doses_is_expanded_lazily() {
    use insilico::neural::fast::Plan;
    use insilico::solvers::{Dose, Problem, Schedule};
    let model = insilico::mechanistic::PkModel::from_name("pk-1cmt-oral").unwrap();
    let schedule = Schedule::new().dose(Dose::bolus(0.0, 0, 400.0).repeated(12.0, u32::MAX - 1));
    let mut prob = Problem::new(&model, vec![1.5, 3.0, 30.0]).with_schedule(schedule);
    prob.observations = vec![insilico::solvers::ObservationPoint { time: 36.0, output: 0 }];
    let sol = insilico::solvers::solve(&prob, insilico::solvers::Method::Bdf, &Default::default()).unwrap();
    assert!(sol.outputs[0].is_finite() && sol.outputs[0] > 0.0);
    assert!(Plan::new(&prob).is_ok());
}

#[test]
fn d04_huge_sweeps_print_the_estimate_and_need_large() {
    // 5.6e9 trajectories: refused at once with the estimate.
    let text = ORGANOID
        .replace("level = [1, 10]", "level = { from = 0.5, to = 50, n = 100000 }")
        .replace("size = 4", "size = 56000");
    let s = Sweep::from_toml_str(&text, "t.toml", None).unwrap();
    let e = s.check_output_size(false).unwrap_err().to_string();
    assert!(e.contains("5.60e9") && e.contains("TB") && e.contains("--large") && e.contains("max_output_gb"), "{e}");
    assert!(s.check_output_size(true).is_ok());
    // Through the command: the size is printed first, and --large lets a small limit pass.
    let dir = scratch("d04");
    let cfg = write(&dir, "s.toml", &format!("max_output_gb = 1e-6\n{ORGANOID}"));
    let (out, so, se) = run(bin().arg("sweep").arg(&cfg).arg("--out").arg(dir.join("o")));
    assert!(!out.status.success() && so.contains("size") && se.contains("--large"), "{so}\n{se}");
    assert!(!dir.join("o").exists(), "nothing is started");
    let (out, so, se) = run(bin().arg("sweep").arg(&cfg).arg("--out").arg(dir.join("o")).arg("--large"));
    assert!(out.status.success() && so.contains("time    about"), "{so}\n{se}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn d05_non_finite_predictions_are_errors_naming_subject_and_time() {
    let dir = scratch("d05");
    write(&dir, "d.csv", DATA);
    let cfg = write(&dir, "s.toml", &SIM.replace("data = ", "output_scale = 1e308\ndata = "));
    let (out, so, se) = run(bin().arg("simulate").arg(&cfg).arg("--out").arg(dir.join("p.csv")));
    assert!(!out.status.success(), "{so}\n{se}");
    assert!(se.contains("subject `1`") && se.contains("time 1") && se.contains("inf"), "{se}");
    assert!(!dir.join("p.csv").exists() && temp_files(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn d06_steady_state_with_a_huge_peripheral_volume_is_never_negative() {
    let ds = insilico::solvers::Dataset::from_str(
        "ss.csv",
        "ID,TIME,AMT,EVID,SS,II,DV\n1,0,100,1,1,24,.\n1,1,.,0,0,0,1\n1,12,.,0,0,0,1\n1,23,.,0,0,0,1\n",
        &Default::default(),
    )
    .unwrap();
    for v2 in ["1e17", "1e300"] {
        for method in ["bdf", "esdirk34", "tr-bdf2", "tsit45"] {
            let text = format!(
                "model = \"pk-2cmt-oral\"\ndata = \"ss.csv\"\nmethod = \"{method}\"\n[params]\nka = 1.5\nCL = 3\nV1 = 30\nQ = 2\nV2 = {v2}\n"
            );
            let sim = Simulation::from_toml_str(&text, "ss.toml", None).unwrap();
            match sim.run(&ds, &|| {}) {
                Ok(p) => assert!(p.rows.iter().all(|r| r.pred >= 0.0), "{v2} {method}: {:?}", p.rows),
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains("steady state") && e.contains("dosing interval"), "{e}");
                }
            }
        }
    }
}

fn fit_text(extra_param: &str, rest: &str) -> String {
    format!(
        "model = \"pk-1cmt-oral\"\ndata = \"theoph.csv\"\nerror = \"combined\"\nsigma = [0.3, 0.1]\n{rest}\n\
         [params.ka]\ninit = 1.5\n{extra_param}\n[params.CL]\ninit = 3.0\n[params.V]\ninit = 30.0\n"
    )
}

#[test]
fn d07_nan_prior_is_refused() {
    let e = FitConfig::from_toml_str(&fit_text("prior = [nan, 1]", ""), "f.toml", None).unwrap_err().to_string();
    assert!(e.contains("prior mean = NaN") && e.contains("[params.ka]"), "{e}");
    let e = FitConfig::from_toml_str(&fit_text("prior = [inf, 1]", ""), "f.toml", None).unwrap_err().to_string();
    assert!(e.contains("prior mean"), "{e}");
}

#[test]
fn d08_empty_modes_is_refused() {
    let e = FitConfig::from_toml_str(&fit_text("", "modes = []"), "f.toml", None).unwrap_err().to_string();
    assert!(e.contains("`modes` is empty"), "{e}");
}

#[test]
fn d09_unknown_keys_under_stages_are_refused() {
    let stages = "[[stages]]\nmethod = \"lbfgs\"\niterations = 5\nlearning_rate = 0.5\n";
    let text = format!("{}{stages}", fit_text("", ""));
    let e = FitConfig::from_toml_str(&text, "f.toml", None).unwrap_err().to_string();
    assert!(e.contains("learning_rate"), "{e}");
    let text = format!("{}[[stages]]\nmethod = \"lbfgs\"\niterations = 5\nlr = 0.5\n", fit_text("", ""));
    let e = FitConfig::from_toml_str(&text, "f.toml", None).unwrap_err().to_string();
    assert!(e.contains("`lr`") && e.contains("lbfgs"), "{e}");
    let text = format!("{}[[stages]]\nmethod = \"adam\"\niterations = 5\nlr = 0.01\n", fit_text("", ""));
    assert!(FitConfig::from_toml_str(&text, "f.toml", None).is_ok());
}

#[test]
fn d10_full_disk_and_unwritable_paths_leave_no_partial_files() {
    let dir = scratch("d10");
    write(&dir, "d.csv", DATA);
    let cfg = write(&dir, "s.toml", SIM);
    // simulate: disk full at the first byte, and after a few bytes; an old file survives intact.
    write(&dir, "p.csv", "old\n");
    for after in ["0", "10"] {
        let (out, _, se) = run(bin()
            .arg("simulate")
            .arg(&cfg)
            .arg("--out")
            .arg(dir.join("p.csv"))
            .env("INSILICO_FAULT_ENOSPC_AFTER", after));
        assert!(!out.status.success() && se.contains("p.csv") && se.contains("No space left"), "{se}");
        assert!(!se.contains("config"), "blames the config: {se}");
        assert_eq!(std::fs::read_to_string(dir.join("p.csv")).unwrap(), "old\n");
        assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    }
    // An unwritable path (below a regular file) is an I/O error naming it.
    let (out, _, se) = run(bin().arg("simulate").arg(&cfg).arg("--out").arg(dir.join("d.csv/p.csv")));
    assert!(!out.status.success() && se.contains("d.csv/p.csv"), "{se}");
    // fit: disk full at every file in turn leaves no truncated file.
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/theoph.csv"), dir.join("theoph.csv")).unwrap();
    let fcfg = write(
        &dir,
        "f.toml",
        &format!("{}[[stages]]\nmethod = \"lbfgs\"\niterations = 3\n", fit_text("", "standard_errors = false")),
    );
    for after in ["0", "2000"] {
        let out_dir = dir.join(format!("fit-{after}"));
        let (out, _, se) =
            run(bin().arg("fit").arg(&fcfg).arg("--out").arg(&out_dir).env("INSILICO_FAULT_ENOSPC_AFTER", after));
        assert!(!out.status.success() && se.contains("No space left") && se.contains("I/O error"), "{se}");
        assert!(!se.contains("invalid fit specification"), "{se}");
        for e in std::fs::read_dir(&out_dir).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len > 0, "zero-byte {}", p.display());
            assert!(!insilico::atomic::is_temp_name(&e.file_name().to_string_lossy()), "{}", p.display());
            if p.extension().is_some_and(|x| x == "json") {
                let v: Result<serde_json::Value, _> = serde_json::from_slice(&std::fs::read(&p).unwrap());
                assert!(v.is_ok(), "truncated {}", p.display());
            }
        }
    }
    // sweep: the manifest (0 bytes allowed) or the first part (3000) hits a full disk.
    let scfg = write(&dir, "w.toml", ORGANOID);
    for after in ["0", "3000"] {
        let o = dir.join(format!("sweep-{after}"));
        let (out, _, se) =
            run(bin().arg("sweep").arg(&scfg).arg("--out").arg(&o).env("INSILICO_FAULT_ENOSPC_AFTER", after));
        assert!(!out.status.success() && se.contains("No space left") && se.contains(&o.display().to_string()), "{se}");
        assert!(temp_files(&o).is_empty(), "{:?}", temp_files(&o));
        for e in std::fs::read_dir(&o).unwrap().filter_map(|e| e.ok()) {
            assert!(std::fs::metadata(e.path()).unwrap().len() > 0, "zero-byte {}", e.path().display());
        }
        // The same command without the fault completes the folder.
        let (out, so, se) = run(bin().arg("sweep").arg(&scfg).arg("--out").arg(&o));
        assert!(out.status.success(), "{so}\n{se}");
    }
    // Unwritable output folders (below a regular file) for fit and sweep: I/O errors naming the path.
    let (out, _, se) = run(bin().arg("fit").arg(&fcfg).arg("--out").arg(dir.join("d.csv/fit")));
    assert!(!out.status.success() && se.contains("d.csv/fit") && !se.contains("invalid fit"), "{se}");
    let (out, _, se) = run(bin().arg("sweep").arg(&scfg).arg("--out").arg(dir.join("d.csv/sweep")));
    assert!(!out.status.success() && se.contains("d.csv/sweep"), "{se}");
    let (out, so, se) = run(bin().arg("fit").arg(&fcfg).arg("--out").arg(dir.join("fit-ok")));
    assert!(out.status.success(), "{so}\n{se}");
    // perturb (the protein study): the same guarantees as sweep, through the same writer.
    let pcfg = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/perturb_protein.toml");
    for after in ["0", "3000"] {
        let o = dir.join(format!("perturb-{after}"));
        let (out, _, se) =
            run(bin().arg("perturb").arg(pcfg).arg("--out").arg(&o).env("INSILICO_FAULT_ENOSPC_AFTER", after));
        assert!(!out.status.success() && se.contains("No space left"), "{se}");
        if o.exists() {
            assert!(temp_files(&o).is_empty(), "{:?}", temp_files(&o));
            for e in std::fs::read_dir(&o).unwrap().filter_map(|e| e.ok()) {
                assert!(std::fs::metadata(e.path()).unwrap().len() > 0, "zero-byte {}", e.path().display());
            }
        }
        let (out, so, se) = run(bin().arg("perturb").arg(pcfg).arg("--out").arg(&o));
        assert!(out.status.success(), "{so}\n{se}");
    }
    let (out, _, se) = run(bin().arg("perturb").arg(pcfg).arg("--out").arg(dir.join("d.csv/perturb")));
    assert!(!out.status.success() && se.contains("d.csv/perturb"), "{se}");
    let _ = std::fs::remove_dir_all(&dir);
}

const FAILING_P1: &str = "model = \"pk-2cmt-oral\"\nhorizon = 48.0\noutput_step = 1.0\nstepper = \"tsit5\"\nmax_steps = 2000\nchunk = 8\n[regimen.depot]\ndose = [100, 200]\ninterval = 12\n[params]\nka = 1e12\nCL = 5\nV1 = 30\nQ = 10\nV2 = 50\n[population]\nsize = 4\nseed = 1\n[[output]]\nname = \"cmax\"\nquantity = \"cp\"\nstat = \"max\"\n[[output]]\nname = \"ctrough\"\nquantity = \"cp\"\nstat = \"min\"\n[[output]]\nname = \"auc\"\nquantity = \"cp\"\nstat = \"auc\"\n";

#[test]
fn d11_failed_trajectories_carry_a_status_and_nulls_and_fail_the_command() {
    let dir = scratch("d11");
    let cfg = write(&dir, "s.toml", FAILING_P1);
    let (out, so, se) = run(bin().arg("sweep").arg(&cfg).arg("--out").arg(dir.join("o")));
    assert!(!out.status.success(), "{so}\n{se}");
    assert!(
        se.contains("8 of 8 trajectories failed") && se.contains("failed with") && se.contains("allow_failures"),
        "{se}"
    );
    let t = read_parts(&dir.join("o")).unwrap();
    assert!(t.texts("status").unwrap().iter().all(|s| s != "ok"), "{:?}", t.texts("status"));
    for c in ["cmax", "ctrough", "auc"] {
        assert!(t.floats(c).unwrap().iter().all(|v| v.is_nan()), "{c} holds numbers for failed trajectories");
    }
    assert!(t.floats("failed_at").unwrap().iter().all(|v| v.is_finite() && *v < 48.0));
    let cfg = write(&dir, "a.toml", &format!("allow_failures = true\n{FAILING_P1}"));
    let (out, so, se) = run(bin().arg("sweep").arg(&cfg).arg("--out").arg(dir.join("a")));
    assert!(out.status.success() && so.contains("failed"), "{so}\n{se}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn d12_commented_nonmem_header_is_the_header() {
    let ds =
        insilico::solvers::Dataset::from_str("c.csv", "#ID,TIME,AMT,DV\n1,0,100,.\n1,1,.,2\n", &Default::default())
            .unwrap();
    assert_eq!(ds.subjects.len(), 1);
    assert_eq!(ds.subjects[0].records[0].amt, 100.0);
    let e = insilico::solvers::Dataset::from_str("c.csv", "1,0,100,.\n1,1,.,2\n", &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no header") && !e.contains("more than once"), "{e}");
}

#[test]
fn d13_a_truncated_part_is_recomputed_on_resume() {
    let dir = scratch("d13");
    let cfg = write(&dir, "s.toml", &ORGANOID.replace("chunk = 64", "chunk = 1").replace("size = 4", "size = 2"));
    let o = dir.join("o");
    let (out, so, se) = run(bin().arg("sweep").arg(&cfg).arg("--out").arg(&o));
    assert!(out.status.success(), "{so}\n{se}");
    let before = read_parts(&o).unwrap();
    let part = o.join("part-000003.parquet");
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    f.set_len(300).unwrap();
    drop(f);
    let (out, so, se) = run(bin().arg("sweep").arg(&cfg).arg("--out").arg(&o));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("part 3 was damaged") && so.contains("3 of 4 chunks already complete"), "{so}");
    let after = read_parts(&o).unwrap();
    assert_eq!(before.ints("id"), after.ints("id"));
    assert_eq!(before.texts("status"), after.texts("status"));
    let bits =
        |t: &insilico::sweep::Table| t.floats("efficacy").unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&before), bits(&after));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn d14_tolerances_are_range_checked_in_every_config() {
    let e = Simulation::from_toml_str(&format!("rtol = 1e300\n{SIM}"), "s.toml", None).unwrap_err().to_string();
    assert!(e.contains("rtol") && e.contains("between"), "{e}");
    let e = Sweep::from_toml_str(&format!("rtol = 1e300\n{ORGANOID}"), "t.toml", None).unwrap_err().to_string();
    assert!(e.contains("rtol") && e.contains("between"), "{e}");
    let e = FitConfig::from_toml_str(&fit_text("", "rtol = 1e300"), "f.toml", None).unwrap_err().to_string();
    assert!(e.contains("rtol") && e.contains("between"), "{e}");
    assert!(Simulation::from_toml_str(&format!("rtol = 1e-6\n{SIM}"), "s.toml", None).is_ok());
}

#[test]
fn d11_simulate_failures_share_the_status_column() {
    let dir = scratch("d11s");
    write(&dir, "d.csv", "ID,TIME,AMT,II,ADDL,DV\n1,0,100,.,.,.\n1,1,.,.,.,1\n2,0,100,0.1,1000,.\n2,100,.,.,.,1\n");
    // Subject 2 (1001 doses) needs more than 300 steps.
    let cfg = write(&dir, "s.toml", &format!("max_steps = 300\n{SIM}"));
    let (out, _, se) = run(bin().arg("simulate").arg(&cfg).arg("--out").arg(dir.join("p.csv")));
    assert!(!out.status.success() && se.contains("subject `2`") && se.contains("max_steps"), "{se}");
    let cfg = write(&dir, "a.toml", &format!("allow_failures = true\nmax_steps = 300\n{SIM}"));
    let (out, so, se) = run(bin().arg("simulate").arg(&cfg).arg("--out").arg(dir.join("p.csv")));
    assert!(out.status.success() && so.contains("1 of 2 rows have no prediction"), "{so}\n{se}");
    let csv = std::fs::read_to_string(dir.join("p.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "ID,TIME,PRED,STATUS");
    assert!(lines[1].starts_with("1,1,") && lines[1].ends_with(",ok"), "{csv}");
    assert_eq!(lines[2], "2,100,,max_steps", "{csv}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn d14_max_steps_message_names_the_config_key() {
    let sim = Simulation::from_toml_str(&format!("max_steps = 1\n{SIM}"), "s.toml", None).unwrap();
    let ds = insilico::solvers::Dataset::from_str("d.csv", DATA, &Default::default()).unwrap();
    let e = sim.run(&ds, &|| {}).unwrap_err().to_string();
    assert!(e.contains("config key `max_steps`"), "{e}");
}

#[test]
fn d14_sigterm_ends_a_sweep_with_a_message_and_resumes() {
    let dir = scratch("d14");
    let text = ORGANOID.replace("chunk = 64", "chunk = 16").replace("size = 4", "size = 4000");
    let cfg = write(&dir, "s.toml", &text);
    let o = dir.join("o");
    let child = bin()
        .arg("sweep")
        .arg(&cfg)
        .arg("--out")
        .arg(&o)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while !o.join("progress.json").exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let out = child.wait_with_output().expect("wait");
    let se = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(se.contains("interrupted") && se.contains("run the same command again"), "{se}");
        let (out, so, se) = run(bin().arg("sweep").arg(&cfg).arg("--out").arg(&o));
        assert!(out.status.success() && so.contains("resume"), "{so}\n{se}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk that fills up at each write in turn (`INSILICO_FAULT_ENOSPC_AT_WRITE = 0, 1, 2, ...`),
/// for every command that writes files (bench p1 included): each run fails naming a full disk, leaves no temporary,
/// zero-byte or truncated file, and the loop ends when the command has no write left to fail.
#[test]
fn d10_disk_full_at_each_write_of_every_command() {
    let dir = scratch("d10-each");
    write(&dir, "d.csv", DATA);
    let sim = write(&dir, "s.toml", SIM);
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/theoph.csv"), dir.join("theoph.csv")).unwrap();
    let fit = write(
        &dir,
        "f.toml",
        &format!("{}[[stages]]\nmethod = \"lbfgs\"\niterations = 3\n", fit_text("", "standard_errors = false")),
    );
    let sweep = write(&dir, "w.toml", ORGANOID);
    let perturb = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/perturb_protein.toml"));
    let commands: Vec<(&str, Vec<std::ffi::OsString>, bool)> = vec![
        ("simulate", vec!["simulate".into(), sim.into_os_string()], false),
        ("fit", vec!["fit".into(), fit.into_os_string()], true),
        ("sweep", vec!["sweep".into(), sweep.into_os_string()], true),
        ("perturb", vec!["perturb".into(), perturb.into_os_string()], true),
        ("bench", vec!["bench".into(), "p1".into(), "--n".into(), "40".into()], true),
    ];
    for (cmd, args, is_folder) in commands {
        let mut k = 0;
        loop {
            let out_path = dir.join(format!("{cmd}-{k}{}", if is_folder { "" } else { ".csv" }));
            let (out, so, se) =
                run(bin().args(&args).arg("--out").arg(&out_path).env("INSILICO_FAULT_ENOSPC_AT_WRITE", k.to_string()));
            if out.status.success() {
                assert!(k >= 1, "{cmd} wrote nothing");
                eprintln!("{cmd}: a full disk at each of its {k} writes was refused cleanly");
                break;
            }
            assert!(se.contains("No space left"), "{cmd} at write {k}: {so}\n{se}");
            let files: Vec<std::path::PathBuf> = if is_folder {
                std::fs::read_dir(&out_path)
                    .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                    .unwrap_or_default()
            } else {
                vec![out_path.clone()].into_iter().filter(|p| p.exists()).collect()
            };
            for p in &files {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert!(!insilico::atomic::is_temp_name(&name), "{cmd} at write {k}: temporary {}", p.display());
                assert!(std::fs::metadata(p).unwrap().len() > 0, "{cmd} at write {k}: zero-byte {}", p.display());
                if name.ends_with(".json") {
                    let v: Result<serde_json::Value, _> = serde_json::from_slice(&std::fs::read(p).unwrap());
                    assert!(v.is_ok(), "{cmd} at write {k}: truncated {}", p.display());
                }
            }
            if is_folder {
                assert!(temp_files(&out_path).is_empty(), "{cmd} at write {k}: {:?}", temp_files(&out_path));
            }
            k += 1;
            assert!(k < 200, "{cmd}: still failing after 200 writes");
        }
        // And an unwritable output path (below a regular file): an I/O error naming it.
        let below = dir.join("d.csv").join(format!("{cmd}-out"));
        let (out, so, se) = run(bin().args(&args).arg("--out").arg(&below));
        assert!(!out.status.success() && se.contains(&below.display().to_string()), "{cmd}: {so}\n{se}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
