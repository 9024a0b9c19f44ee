//! Issue 10, item 4: `insilico fit` recovers the parameters of a model in no
//! zoo — the Friberg myelosuppression model driven by two-compartment IV PK
//! (examples/friberg/friberg.model) — from 40 subjects simulated by it with
//! 10% proportional noise (examples/friberg/fit_data.csv, written by
//! `cargo run --release --example friberg_data`, seed 20261207), each
//! estimate within 10% of the truth. About 5 s in release.

use insilico::fit_cmd::{run_fit, FitConfig};

/// The generator's true values (examples/friberg_data.rs).
const TRUTH: [(&str, f64); 8] = [
    ("CL", 10.0),
    ("V1", 20.0),
    ("Q", 5.0),
    ("V2", 50.0),
    ("Circ0", 5.0),
    ("MTT", 120.0),
    ("gamma", 0.17),
    ("slope", 0.3),
];

#[test]
fn friberg_parameters_are_recovered_within_10_percent() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = FitConfig::from_path(std::path::Path::new(&format!("{root}/examples/friberg/fit.toml"))).unwrap();
    let ds = cfg.load_dataset().unwrap();
    assert_eq!(ds.subjects.len(), 40);
    let out = std::env::temp_dir().join(format!("insilico-friberg-fit-{}", std::process::id()));
    run_fit(&cfg, &ds, &out, &|_| {}).unwrap();
    let fit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("fit.json")).unwrap()).unwrap();
    println!("{:<6} {:>10} {:>10} {:>8}", "param", "true", "fitted", "error");
    let mut worst = 0.0f64;
    for (name, truth) in TRUTH {
        let v = fit["estimates"][name]["value"].as_f64().unwrap();
        let rel = (v - truth) / truth;
        println!("{name:<6} {truth:>10.4} {v:>10.4} {:>7.2}%", 100.0 * rel);
        worst = worst.max(rel.abs());
    }
    assert!(worst <= 0.10, "an estimate is {:.1}% off the truth", 100.0 * worst);
    for f in ["model.json", "predictions.csv", "subjects.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&out);
}
