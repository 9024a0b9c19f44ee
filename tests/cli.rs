//! The `insilico` binary end to end: outputs, file contracts and error
//! messages on bad input (never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_insilico"))
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("insilico-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run insilico");
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(!se.contains("panicked"), "panic:\n{se}");
    (out, so, se)
}

#[test]
fn simulate_without_arguments_runs_the_embedded_example() {
    let dir = scratch("embedded");
    let (out, so, se) = run(bin().arg("simulate").current_dir(&dir));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("embedded") && so.contains("pred.csv"), "{so}");
    let csv = std::fs::read_to_string(dir.join("pred.csv")).expect("pred.csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "ID,TIME,PRED");
    assert_eq!(lines.len(), 31, "{csv}");
    assert!(lines[1].starts_with("1,0.5,"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn simulate_nmtest_example_writes_every_observation() {
    let dir = scratch("nmtest");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nmtest.toml");
    let out_csv = dir.join("pred.csv");
    let (out, so, se) = run(bin().arg("simulate").arg(&config).arg("--out").arg(&out_csv));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("54 subjects") && so.contains("7074 rows"), "{so}");
    let csv = std::fs::read_to_string(&out_csv).expect("pred.csv");
    assert_eq!(csv.lines().count(), 7075);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_and_data_are_clear_errors() {
    let dir = scratch("errors");
    let cfg = dir.join("bad.toml");
    let base = "model = \"pk-1cmt-oral\"\ndata = \"d.csv\"\n[params]\nka = 1.5\nCL = 1.1\nV = 20\n";

    std::fs::write(&cfg, base.replace("V = 20", "Vd = 20")).unwrap();
    let (out, _, se) = run(bin().arg("simulate").arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    assert!(se.contains("bad.toml") && se.contains("unknown parameter `Vd`"), "{se}");

    std::fs::write(&cfg, base.replace("pk-1cmt-oral", "pk-1cmt-sc")).unwrap();
    let (out, _, se) = run(bin().arg("simulate").arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    assert!(se.contains("bad.toml") && se.contains("pk-1cmt-sc: not a zoo model"), "{se}");

    std::fs::write(&cfg, base).unwrap();
    let (out, _, se) = run(bin().arg("simulate").arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    assert!(se.contains("d.csv"), "missing dataset: {se}");

    std::fs::write(dir.join("d.csv"), "ID,TIME,AMT,DV\n1,0,100,.\n1,abc,0,1.0\n").unwrap();
    let (out, _, se) = run(bin().arg("simulate").arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    assert!(se.contains("d.csv") && se.contains("line 3") && se.contains("TIME"), "{se}");

    let (out, _, se) = run(bin().arg("simulate").arg(dir.join("nope.toml")));
    assert_eq!(out.status.code(), Some(1));
    assert!(se.contains("nope.toml"), "{se}");

    let (out, _, se) = run(bin().args(["bench", "p1", "--method", "rk4"]));
    assert!(!out.status.success());
    assert!(se.contains("rk4") && se.contains("tsit45"), "{se}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_p1_subset_writes_its_files() {
    let dir = scratch("bench");
    let (out, so, se) = run(bin().args(["bench", "p1", "--n", "20", "--threads", "2", "--out"]).arg(&dir));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(so.contains("batched") && so.contains("closed-form"), "{so}");
    let json = std::fs::read_to_string(dir.join("bench.json")).expect("bench.json");
    for key in [
        "\"problem\": \"p1\"",
        "\"wall_s\"",
        "\"n_solves\": 20",
        "\"max_rel_err\"",
        "\"method\": \"batched\"",
        "\"threads\": 2",
    ] {
        assert!(json.contains(key), "{key} not in {json}");
    }
    let csv = std::fs::read_to_string(dir.join("p1.csv")).expect("p1.csv");
    assert!(csv.starts_with("D,tau,cl_scale,cmax,auc,ctrough\n"));
    assert_eq!(csv.lines().count(), 21);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_reports_a_model_and_locates_errors() {
    let friberg = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/friberg/friberg.model");
    let (out, so, se) = run(bin().arg("check").arg(friberg));
    assert!(out.status.success(), "{so}\n{se}");
    assert!(
        so.contains("circ (CMT 8)") && so.contains("conserved    central + peripheral + eliminated (verified)"),
        "{so}"
    );
    assert!(so.contains("batched CPU integrators        yes") && so.contains("all checks passed"), "{so}");
    let (out, so, _) = run(bin().arg("check"));
    assert!(out.status.success() && so.contains("pk-2cmt-oral") && so.contains("organoid-drug-response"), "{so}");
    let dir = std::env::temp_dir().join(format!("insilico-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.model");
    std::fs::write(&bad, "states: a\nd/dt(a) = -kk * a\n").unwrap();
    let (out, _, se) = run(bin().arg("check").arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(se.contains("bad.model:2:12: unknown name `kk`") && se.contains("^^"), "{se}");
    let _ = std::fs::remove_dir_all(&dir);
}
