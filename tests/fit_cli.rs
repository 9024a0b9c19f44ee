//! `insilico fit` and `simulate --fitted` end to end on the P4 linear-clearance config (about a second).

use std::process::Command;

#[test]
fn fit_then_simulate_fitted() {
    let exe = env!("CARGO_BIN_EXE_insilico");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("insilico-fit-test-{}", std::process::id()));
    let cfg = format!("{root}/examples/p4_linear.toml");
    let st = Command::new(exe).args(["fit", &cfg, "--out"]).arg(&out).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let fit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("fit.json")).unwrap()).unwrap();
    for key in ["estimates", "loss_history", "n_gradient_evaluations", "wall_time_s", "random_effects", "heldout"] {
        assert!(fit.get(key).is_some(), "fit.json lacks {key}");
    }
    let cl = fit["estimates"]["CL"]["value"].as_f64().unwrap();
    assert!(cl > 0.5 && cl < 5.0, "CL = {cl}");
    for f in ["model.json", "predictions.csv", "loss.png", "obs_vs_pred.png", "subjects.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let pred = out.join("pred.csv");
    let st = Command::new(exe).args(["simulate", &cfg, "--fitted"]).arg(&out).arg("--out").arg(&pred).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let text = std::fs::read_to_string(&pred).unwrap();
    assert!(text.starts_with("ID,TIME,PRED,IPRED\n"));
    assert!(text.lines().count() > 250);
    // Bad input is an error naming the file, not a panic.
    let bad = out.join("bad.toml");
    std::fs::write(&bad, "model = \"pk-1cmt-oral\"\ndata = \"x.csv\"\n[params.ka]\ninit = 1\n").unwrap();
    let st = Command::new(exe).args(["fit"]).arg(&bad).output().unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("bad.toml") && err.contains("params.CL"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
