//! `insilico fit` with `estimation = "focei"` end to end on Theophylline
//! (examples/theoph_focei.toml), against R nlme's ML fit of the same model
//! (estimation/tests/data/theoph_nlme.txt), and its config errors.

use std::path::Path;
use std::process::Command;

const NLME: &str = include_str!("../estimation/tests/data/theoph_nlme.txt");

fn reference(key: &str) -> f64 {
    NLME.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{key} missing from theoph_nlme.txt"))
}

fn out_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("insilico-focei-{tag}-{}", std::process::id()))
}

#[test]
fn theophylline_focei_matches_nlme() {
    let exe = env!("CARGO_BIN_EXE_insilico");
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = format!("{root}/examples/theoph_focei.toml");
    if !Path::new(&format!("{root}/../shared/data/theoph.csv")).exists() {
        eprintln!("skipped: ../shared/data/theoph.csv is not beside the checkout");
        return;
    }
    let out = out_dir("theoph");
    let st = Command::new(exe).args(["fit", &cfg, "--out"]).arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&st.stderr));
    println!("{stdout}");
    assert!(stdout.contains("FOCE-I") && stdout.contains("RSE%"), "{stdout}");
    let fit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("fit.json")).unwrap()).unwrap();
    for key in [
        "ofv",
        "ofv_convention",
        "ofv_with_constant",
        "estimates",
        "omega2",
        "omega_sd",
        "omega_cv_percent",
        "shrinkage_percent",
        "sigma",
        "method",
        "iterations",
        "wall_seconds",
    ] {
        assert!(fit.get(key).is_some(), "fit.json lacks {key}");
    }
    assert_eq!(fit["method"], "focei");
    for name in ["ka", "CL", "V"] {
        let e = &fit["estimates"][name];
        let (ours, theirs) = (e["value"].as_f64().unwrap(), reference(name));
        assert!((ours - theirs).abs() / theirs < 0.02, "{name}: {ours} vs nlme {theirs}");
        assert!(e["se"].as_f64().unwrap() > 0.0 && e["rse_percent"].as_f64().unwrap() > 0.0, "{name}: {e}");
        let eta = format!("eta_{name}");
        let w2 = fit["omega2"][&eta].as_f64().unwrap();
        let sd = fit["omega_sd"][&eta].as_f64().unwrap();
        let cv = fit["omega_cv_percent"][&eta].as_f64().unwrap();
        assert!((sd * sd - w2).abs() < 1e-12 && (cv - 100.0 * (w2.exp() - 1.0).sqrt()).abs() < 1e-9);
        let theirs = reference(&format!("omega_sd_{name}"));
        assert!((sd - theirs).abs() / theirs < 0.10, "omega SD {name}: {sd} vs nlme {theirs}");
    }
    let ofv = fit["ofv"].as_f64().unwrap();
    assert!((ofv - reference("m2ll_no_const")).abs() < 0.5, "OFV {ofv}");
    let n = fit["n_observations"].as_f64().unwrap();
    let with = fit["ofv_with_constant"].as_f64().unwrap();
    assert!((with - ofv - n * (2.0 * std::f64::consts::PI).ln()).abs() < 1e-6);
    let sdtab = std::fs::read_to_string(out.join("sdtab.csv")).unwrap();
    assert!(sdtab.starts_with("ID,TIME,DV,PRED,IPRED,CWRES,IWRES,eta_ka,eta_CL,eta_V\n"), "{}", &sdtab[..80]);
    assert!(sdtab.lines().count() > 132);
    let _ = std::fs::remove_dir_all(&out);
}

fn fit_err(tag: &str, toml: &str) -> String {
    let exe = env!("CARGO_BIN_EXE_insilico");
    let dir = out_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data.csv"), include_str!("../examples/data/theoph.csv")).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, toml).unwrap();
    let st = Command::new(exe).args(["fit"]).arg(&cfg).arg("--out").arg(dir.join("out")).output().unwrap();
    assert!(!st.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&st.stderr).into_owned()
}

const HEAD: &str =
    "estimation = \"focei\"\nmodel = \"pk-1cmt-oral\"\ndata = \"data.csv\"\nerror = \"additive\"\nsigma = [0.7]\n";

#[test]
fn focei_config_errors_name_what_is_wrong() {
    // A random effect on a parameter the model lacks.
    let err = fit_err("missing", &format!("{HEAD}[theta]\nka = 1.5\nCL = 2.8\nV = 32\n[omega2]\nKE = 0.1\n"));
    assert!(err.contains("KE") && err.contains("pk-1cmt-oral"), "{err}");
    // An unknown key names the file and the key.
    let err = fit_err("unknown", &format!("{HEAD}itertions = 5\n[theta]\nka = 1.5\n[omega2]\nka = 0.1\n"));
    assert!(err.contains("bad.toml") && err.contains("itertions"), "{err}");
    // omega2 and omega for the same effect.
    let err = fit_err("both", &format!("{HEAD}[theta]\nka = 1.5\n[omega2]\nka = 0.1\n[omega]\nka = 0.3\n"));
    assert!(err.contains("bad.toml") && err.contains("`ka`") && err.contains("twice"), "{err}");
    // An error model that does not exist.
    let err = fit_err(
        "errmodel",
        &format!("{}[theta]\nka = 1.5\n[omega2]\nka = 0.1\n", HEAD.replace("additive", "gaussian")),
    );
    assert!(err.contains("gaussian"), "{err}");
}
