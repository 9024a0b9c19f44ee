//! `insilico design` end to end on PopED's warfarin example
//! (examples/design/): design.json's keys and values (issue 13, item 2),
//! the optimisation of the sampling times, and config errors.

use std::process::Command;

fn out_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("insilico-design-{tag}-{}", std::process::id()))
}

fn run(config: &str, tag: &str) -> (serde_json::Value, String) {
    let exe = env!("CARGO_BIN_EXE_insilico");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = out_dir(tag);
    let st = Command::new(exe)
        .args(["design", &format!("{root}/examples/design/{config}"), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&st.stderr));
    let json = serde_json::from_str(&std::fs::read_to_string(out.join("design.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    (json, stdout)
}

/// PopED's reduced FO FIM of the warfarin design: det 5.996147e22 and the RSE%
/// quoted in issue 13, within 1e-4 relative.
#[test]
fn warfarin_design_json_matches_poped() {
    let (d, stdout) = run("warfarin.toml", "warfarin");
    assert!(stdout.contains("RSE%"), "{stdout}");
    assert_eq!(d["fim_type"], "reduced");
    let det = d["det_fim"].as_f64().unwrap();
    assert!((det / 5.996147e22 - 1.0).abs() < 1e-4, "{det:e}");
    assert!((d["ln_det_fim"].as_f64().unwrap() - det.ln()).abs() < 1e-9);
    let poped = [
        ("CL", 4.738266),
        ("V", 2.756206),
        ("KA", 13.925829),
        ("omega2_CL", 25.627205),
        ("omega2_V", 30.344316),
        ("omega2_KA", 25.777327),
        ("sigma2_prop", 11.170784),
    ];
    for (k, v) in poped {
        let r = d["rse_percent"][k].as_f64().unwrap_or_else(|| panic!("rse_percent.{k} missing: {d}"));
        assert!((r / v - 1.0).abs() < 1e-4, "{k}: {r} vs PopED {v}");
    }
    assert_eq!(d["times"].as_array().unwrap().len(), 8);
}

/// Optimising the 8 times within [0, 120] h: the criterion does not fall, the
/// spaced optimum keeps 0.25 h between samples, and the report has the keys.
#[test]
fn warfarin_times_optimised() {
    let (free, _) = run("warfarin_optimise.toml", "free");
    let (spaced, stdout) = run("warfarin_optimise_spaced.toml", "spaced");
    println!("{stdout}");
    for d in [&free, &spaced] {
        for key in
            ["times_before", "times", "criterion_before", "criterion_after", "det_fim_after", "d_efficiency_gain"]
        {
            assert!(!d[key].is_null(), "{key} missing: {d}");
        }
        assert!(d["criterion_after"].as_f64().unwrap() >= d["criterion_before"].as_f64().unwrap());
        assert!(d["d_efficiency_gain"].as_f64().unwrap() >= 1.0);
    }
    let t: Vec<f64> = spaced["times"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(t.len(), 8);
    for w in t.windows(2) {
        assert!(w[1] - w[0] >= 0.25 - 1e-9, "{t:?}");
    }
    assert!(t.iter().all(|x| (0.0..=120.0).contains(x)));
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let exe = env!("CARGO_BIN_EXE_insilico");
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/examples/design/warfarin.toml")).unwrap();
    let dir = out_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["warfarin.model", "warfarin.csv"] {
        std::fs::copy(format!("{root}/examples/design/{f}"), dir.join(f)).unwrap();
    }
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, text.replace("fim = \"reduced\"", "fim_kind = \"reduced\"")).unwrap();
    let st = Command::new(exe).arg("design").arg(&cfg).arg("--out").arg(dir.join("out")).output().unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success());
    assert!(err.contains("bad.toml") && err.contains("fim_kind"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
