//! `insilico perturb` (issue 14): the study on the shipped toy-protein
//! example, resumption after a kill, physics checks and config errors.

use std::path::{Path, PathBuf};

use insilico::perturb::Study;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/perturb_protein.toml")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insilico-perturb-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A run killed after its first part resumes with the rest, and the result
/// is the same, value for value, as an uninterrupted run.
#[test]
fn resume_after_kill_gives_the_same_table() {
    let study = Study::from_path(&example()).unwrap();
    assert_eq!(study.len(), 11 * 4 * 3);
    let full = tmp("full");
    for k in study.prepare(&full).unwrap() {
        study.run_chunk(&full, k).unwrap();
    }
    let a = study.finish(&full).unwrap();
    let part = tmp("part");
    let todo = study.prepare(&part).unwrap();
    assert_eq!(todo.len() as u64, study.chunks());
    study.run_chunk(&part, todo[0]).unwrap();
    // a half-written part of the killed run
    std::fs::write(part.join("part-000001.parquet.tmp"), b"garbage").unwrap();
    assert!(study.finish(&part).is_err(), "an incomplete study cannot be summarised");
    let todo = study.prepare(&part).unwrap();
    assert_eq!(todo, (1..study.chunks()).collect::<Vec<_>>());
    assert!(!part.join("part-000001.parquet.tmp").exists());
    for k in todo {
        study.run_chunk(&part, k).unwrap();
    }
    let b = study.finish(&part).unwrap();
    assert_eq!(a, b);
    let s1 = std::fs::read_to_string(full.join("summary.csv")).unwrap();
    let s2 = std::fs::read_to_string(part.join("summary.csv")).unwrap();
    assert_eq!(s1, s2);
    let header = s1.lines().next().unwrap();
    assert!(header.starts_with(
        "ligand,mutation,kT,pop_inactive,pop_active,pop_pocket,its_1,its_2,its_3,its_4,its_5,\
         mfpt_inactive_active,mfpt_active_inactive,mfpt_inactive_pocket,\
         rate_inactive_active,rate_active_inactive,rate_inactive_pocket,obs_fret,relax_inactive_0"
    ));
    assert!(a.ints("status").unwrap().iter().all(|&s| s == 0));
    // a different config refuses the folder
    let other = std::fs::read_to_string(example()).unwrap().replace("n = 11", "n = 5");
    let s = Study::from_toml_str(&other, "other.toml", example().parent().unwrap()).unwrap();
    let e = s.prepare(&full).unwrap_err().to_string();
    assert!(e.contains("holds the results of a different sweep or study"), "{e}");
    std::fs::remove_dir_all(&full).ok();
    std::fs::remove_dir_all(&part).ok();
}

/// Ligand binding moves populations exactly as `π_i ∝ exp(−G_i/kT)(1 + L/Kd_i)`;
/// relaxation starts at the unperturbed equilibrium and ends at the perturbed one;
/// the MFPT and rate columns are consistent with TPT (`k_AB ≈ 1/MFPT` only for
/// metastable sets, so only their order is checked).
#[test]
fn ligand_shift_and_relaxation_are_physical() {
    let study = Study::from_path(&example()).unwrap();
    let cols = study.result_columns();
    let col = |name: &str| cols.iter().position(|c| c == name).unwrap();
    let apo = study.analyse(&study.params_of(&[0.0, 0.0, 1.0])).unwrap();
    let l = 0.05;
    let holo = study.analyse(&study.params_of(&[l, 0.0, 1.0])).unwrap();
    // pocket Kd 0.01, active Kd 1, inactive does not bind
    let r_apo = apo[col("pop_pocket")] / apo[col("pop_inactive")];
    let r_holo = holo[col("pop_pocket")] / holo[col("pop_inactive")];
    assert!((r_holo / r_apo - (1.0 + l / 0.01)).abs() < 1e-10, "{}", r_holo / r_apo);
    let a_apo = apo[col("pop_active")] / apo[col("pop_inactive")];
    let a_holo = holo[col("pop_active")] / holo[col("pop_inactive")];
    assert!((a_holo / a_apo - (1.0 + l / 1.0)).abs() < 1e-10);
    let s: f64 = ["pop_inactive", "pop_active", "pop_pocket"].iter().map(|c| holo[col(c)]).sum();
    assert!((s - 1.0).abs() < 1e-13);
    // relaxation: t = 0.01 near apo, t = 1000 (≫ its_1) at holo equilibrium
    let last = study.relaxation.len() - 1;
    for m in ["inactive", "active", "pocket"] {
        let end = holo[col(&format!("relax_{m}_{last}"))];
        assert!((end - holo[col(&format!("pop_{m}"))]).abs() < 1e-7, "{m}: {end}");
    }
    let first = holo[col("relax_inactive_0")];
    assert!((first - apo[col("pop_inactive")]).abs() < 0.01);
    assert!(holo[col("mfpt_inactive_active")] > 0.0 && holo[col("rate_inactive_active")] > 0.0);
    let its: Vec<f64> = (1..=5).map(|k| holo[col(&format!("its_{k}"))]).collect();
    assert!(its.windows(2).all(|w| w[0] >= w[1]), "{its:?}");
}

#[test]
fn config_errors_name_the_file_and_key() {
    let base = example();
    let base = base.parent().unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    let err = |t: &str| Study::from_toml_str(t, "bad.toml", base).unwrap_err().to_string();
    let e = err(&text.replace("states = [\"A1\", \"A2\", \"A3\"]", "states = [\"A1\", \"A9\"]"));
    assert!(e.starts_with("bad.toml: macrostate `active`: unknown state `A9`"), "{e}");
    let e = err(&text.replace("states = [\"P1\", \"P2\"]", "states = [7, 12]"));
    assert!(e.contains("macrostate `pocket`: state 12 is outside the model's 8 states"), "{e}");
    let e = err(&text.replace("kind = \"rate\"", "kind = \"transition\""));
    assert!(e.contains("a transition matrix needs its lag time"), "{e}");
    let e = err(&text.replace("[\"inactive\", \"pocket\"]", "[\"inactive\", \"closed\"]"));
    assert!(e.contains("analysis.pairs: unknown macrostate `closed`"), "{e}");
    let e = err(&text.replace("kd = { pocket", "kd = { pockt"));
    assert!(e.contains("ligand.kd: `pockt` is neither a state nor a macrostate"), "{e}");
    let e = err(&text.replace("timescales = 5", "timescale = 5"));
    assert!(e.starts_with("bad.toml:") && e.contains("timescale"), "{e}");
    let e = err(&text.replace("perturb_protein_rates.csv", "missing.npz"));
    assert!(e.contains("missing.npz") && e.contains("cannot read"), "{e}");
}

/// A transition-matrix study (discrete time) on the deeptime example: the
/// unperturbed point reproduces the deeptime reference.
#[test]
fn transition_matrix_study_matches_deeptime_at_the_reference_point() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mechanistic/tests/data/deeptime");
    let text = r#"
[model]
matrix = "dw100_T.npy"
kind = "transition"
lag = 1.0

[[macrostate]]
name = "A"
states = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]

[[macrostate]]
name = "B"
states = [80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99]

[analysis]
pairs = [["A", "B"]]
"#;
    let s = Study::from_toml_str(text, "dw.toml", &dir).unwrap();
    let out = s.analyse(&s.params_of(&[])).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let r = &r["dw100"];
    let cols = s.result_columns();
    let get = |c: &str| out[cols.iter().position(|x| x == c).unwrap()];
    let rel = |a: f64, b: f64| ((a - b) / b).abs();
    assert!(rel(get("mfpt_A_B"), r["mfpt_AB"].as_f64().unwrap()) < 1e-9);
    assert!(rel(get("rate_A_B"), r["rate_AB"].as_f64().unwrap()) < 1e-9);
    for k in 0..5 {
        let its = r["its"][k].as_f64().unwrap();
        assert!(rel(get(&format!("its_{}", k + 1)), its) < 1e-9, "its_{}", k + 1);
    }
}

/// The study's sensitivity columns against Richardson central differences
/// of its own outputs (1e-6 relative), and the hot-spot table against the
/// Boltzmann formula `∂π_A/∂G_m = −π_m(1[m∈A] − π_A)/kT`.
#[test]
fn study_sensitivities_match_differences_and_boltzmann() {
    let study = Study::from_path(&example()).unwrap();
    assert!(study.sensitivities);
    let cols = study.result_columns();
    let outs = study.differentiable_columns();
    let params = ["kT", "ligand", "mut_Y42A", "mut_G107P", "mut_L63F"];
    let p = vec![1.05, 0.02, 0.0, 0.3, 0.0];
    let v = study.analyse(&p).unwrap();
    for (k, pname) in params.iter().enumerate() {
        let central = |h: f64| {
            let (mut a, mut b) = (p.clone(), p.clone());
            a[k] += h;
            b[k] -= h;
            let (va, vb) = (study.analyse(&a).unwrap(), study.analyse(&b).unwrap());
            va.iter().zip(&vb).map(|(x, y)| (x - y) / (2.0 * h)).collect::<Vec<f64>>()
        };
        let h = if k == 1 { 2e-4 } else { 1e-3 * p[k].abs().max(1.0) }; // ligand: stay above 0
        let (d1, d2) = (central(h), central(h / 2.0));
        for o in &outs {
            let c = cols.iter().position(|x| x == o).unwrap();
            let fd = (4.0 * d2[c] - d1[c]) / 3.0;
            let exact = v[cols.iter().position(|x| *x == format!("d_{o}__{pname}")).unwrap()];
            let rel = (fd - exact).abs() / exact.abs().max(1e-6 * v[c].abs()).max(1e-300);
            assert!(rel < 1e-6, "d{o}/d{pname}: exact {exact} fd {fd} rel {rel:e}");
        }
    }
    let p0 = vec![1.0, 0.0, 0.0, 0.0, 0.0];
    let v0 = study.analyse(&p0).unwrap();
    let pop_i = v0[cols.iter().position(|x| x == "pop_inactive").unwrap()];
    let hs = study.hotspots_at(&p0, 8).unwrap();
    let chain = insilico::mechanistic::conformation::Chain::from_master(
        &study.model,
        &p0,
        insilico::mechanistic::conformation::Clock::Continuous,
    )
    .unwrap();
    let pi = chain.stationary().unwrap();
    for (o, _, state, d) in hs.iter().filter(|h| h.0 == "pop_inactive") {
        assert_eq!(o, "pop_inactive");
        let m = study.names.iter().position(|s| s == state).unwrap();
        let in_i = if m < 3 { 1.0 } else { 0.0 };
        let want = -pi[m] * (in_i - pop_i);
        assert!((d - want).abs() < 1e-12, "{state}: {d} vs {want}");
    }
}

/// A rate-matrix CSV of three wells {0..4}, {4..9}, {9..12} (free
/// energies chosen so that the middle well is the most populated, then the
/// first, then the last), fast inside a well, 1e-4 between wells.
fn three_wells_csv(dir: &Path) -> PathBuf {
    let n = 12;
    let g: Vec<f64> = (0..n)
        .map(|i| {
            if i < 4 {
                0.5
            } else if i < 9 {
                0.0
            } else {
                1.5
            }
        })
        .collect();
    let well = |i: usize| {
        if i < 4 {
            0
        } else if i < 9 {
            1
        } else {
            2
        }
    };
    let mut q = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let a = if well(i) == well(j) {
                1.0
            } else if (i, j) == (3, 4) || (i, j) == (4, 3) || (i, j) == (8, 9) || (i, j) == (9, 8) {
                1e-4
            } else {
                0.0
            };
            q[i][j] = a * (-(g[j] - g[i]) / 2.0).exp();
        }
        q[i][i] = -q[i].iter().sum::<f64>();
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("wells.csv");
    let text: String =
        q.iter().map(|r| r.iter().map(|v| format!("{v:e}")).collect::<Vec<_>>().join(",") + "\n").collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `[macrostates] pcca = 3` finds the three wells, names them m1…m3 by
/// decreasing population, runs the study on them and writes `pcca.csv`.
#[test]
fn pcca_macrostates_recover_the_wells() {
    let dir = tmp("pcca");
    three_wells_csv(&dir);
    let text = r#"
[model]
matrix = "wells.csv"
kind = "rate"
[macrostates]
pcca = 3
[ligand]
kd = { m3 = 0.1 }
concentration = [0.0, 1.0]
[analysis]
timescales = 2
pairs = [["m1", "m3"]]
"#;
    let s = Study::from_toml_str(text, "pcca.toml", &dir).unwrap();
    let sets: Vec<(String, Vec<usize>)> = s.macrostates.clone();
    assert_eq!(
        sets,
        vec![
            ("m1".to_string(), (4..9).collect::<Vec<_>>()),
            ("m2".to_string(), (0..4).collect()),
            ("m3".to_string(), (9..12).collect())
        ]
    );
    let chi = s.pcca.as_ref().unwrap();
    let worst = chi.iter().flatten().map(|&c| c.min(1.0 - c)).fold(0.0, f64::max);
    assert!(worst < 1e-2, "memberships not crisp: {worst}");
    let out = dir.join("out");
    for k in s.prepare(&out).unwrap() {
        s.run_chunk(&out, k).unwrap();
    }
    let t = s.finish(&out).unwrap();
    let (p1, p3) = (t.floats("pop_m1").unwrap(), t.floats("pop_m3").unwrap());
    assert!(p1[0] > p3[0]);
    // the ligand binds m3 (Kd 0.1, L = 1): its Boltzmann weight ×11
    assert!(p3[1] > 5.0 * p3[0], "{p3:?}");
    let csv = std::fs::read_to_string(out.join("pcca.csv")).unwrap();
    assert!(csv.starts_with("state,macrostate,chi_m1,chi_m2,chi_m3\n"), "{csv}");
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.lines().nth(5).unwrap().starts_with("S4,m1,"));
    // errors name the key
    let err = |t: &str| Study::from_toml_str(t, "pcca.toml", &dir).unwrap_err().to_string();
    let base = "[model]\nmatrix = \"wells.csv\"\nkind = \"rate\"\n";
    let e = err(&format!("{base}[macrostates]\npcca = 1\n"));
    assert!(e.contains("pcca.toml") && e.contains("macrostates.pcca = 1") && e.contains("at least 2"), "{e}");
    let e = err(&format!("{base}[macrostates]\npcca = 13\n"));
    assert!(e.contains("at most 12"), "{e}");
    let e = err(&format!("{base}[macrostates]\npcca = 2\n[[macrostate]]\nname = \"a\"\nstates = [0]\n"));
    assert!(e.contains("exclude each other"), "{e}");
}

/// `[design] method = "sobol" | "lhs"`: the range axes are sampled
/// (deterministically per point id), crossed with the grid axes; a killed
/// run resumes to the same table.
#[test]
fn sampled_designs_are_deterministic_and_resume() {
    let dir = tmp("design");
    three_wells_csv(&dir);
    let cfg = |method: &str| {
        format!(
            r#"
[model]
matrix = "wells.csv"
kind = "rate"
[ligand]
kd = {{ S10 = 0.1 }}
concentration = {{ from = 0.001, to = 10, log = true }}
[temperature]
kT = {{ from = 0.8, to = 1.2 }}
[force]
displacement = {{ S0 = 0.5 }}
values = [0.0, 1.0]
[analysis]
timescales = 2
chunk = 8
[design]
method = "{method}"
n = 16
seed = 3
"#
        )
    };
    for method in ["sobol", "lhs"] {
        let s = Study::from_toml_str(&cfg(method), "design.toml", &dir).unwrap();
        assert!(s.is_sampled());
        assert_eq!(s.len(), 32, "16 samples × 2 forces");
        let again = Study::from_toml_str(&cfg(method), "design.toml", &dir).unwrap();
        let (li, ti, fi) = (0, 1, 2);
        let mut strata = (vec![false; 16], vec![false; 16]);
        for id in 0..s.len() {
            let x = s.point(id);
            assert_eq!(x, again.point(id), "{method}: point {id} not deterministic");
            assert!((0.001..=10.0).contains(&x[li]) && (0.8..=1.2).contains(&x[ti]), "{method}: {x:?}");
            assert_eq!(x[fi], if id < 16 { 0.0 } else { 1.0 }, "grid axis outermost");
            if id < 16 {
                // The log range mapped back to [0, 1]. Sobol points sit on dyadic
                // stratum edges: a 1e-9 nudge keeps the round-off of the affine/log
                // maps from dropping them a stratum.
                let u = (x[li].log10() + 3.0) / 4.0;
                strata.0[((u * 16.0 + 1e-9).floor() as usize).min(15)] = true;
                strata.1[(((x[ti] - 0.8) / 0.4 * 16.0 + 1e-9).floor() as usize).min(15)] = true;
            }
        }
        // Both put one point in each of 16 strata per axis (LHS by construction,
        // the first 16 Sobol points as a (0, 4, 2)-net).
        assert!(strata.0.iter().all(|&b| b), "{method}: strata {strata:?}");
        assert!(strata.1.iter().all(|&b| b), "{method}: strata {strata:?}");
        let full = dir.join(format!("full-{method}"));
        for k in s.prepare(&full).unwrap() {
            s.run_chunk(&full, k).unwrap();
        }
        let a = s.finish(&full).unwrap();
        let part = dir.join(format!("part-{method}"));
        let todo = s.prepare(&part).unwrap();
        s.run_chunk(&part, todo[0]).unwrap();
        let todo = s.prepare(&part).unwrap();
        assert_eq!(todo, (1..s.chunks()).collect::<Vec<_>>());
        for k in todo {
            s.run_chunk(&part, k).unwrap();
        }
        let b = s.finish(&part).unwrap();
        assert_eq!(a.floats("ligand").unwrap(), b.floats("ligand").unwrap());
        assert_eq!(a.floats("its_1").unwrap(), b.floats("its_1").unwrap());
        assert!(std::fs::metadata(full.join("summary.csv")).unwrap().len() > 0);
    }
    let e = Study::from_toml_str(&cfg("grid"), "design.toml", &dir).unwrap_err().to_string();
    assert!(e.contains("design.toml") && e.contains("design.method"), "{e}");
    let no_design = cfg("sobol").replace("[design]\nmethod = \"sobol\"\nn = 16\nseed = 3\n", "");
    let e = Study::from_toml_str(&no_design, "design.toml", &dir).unwrap_err().to_string();
    assert!(e.contains("ligand.concentration") && e.contains("needs n"), "{e}");
}

/// `[report] heatmap`: `population_shift.png` over two grid axes is written
/// and non-empty; unknown axes are config errors.
#[test]
fn population_shift_heatmap_is_written() {
    let dir = tmp("heatmap");
    three_wells_csv(&dir);
    let text = r#"
[model]
matrix = "wells.csv"
kind = "rate"
[macrostates]
pcca = 3
[ligand]
kd = { m3 = 0.1 }
concentration = [0.0, 0.1, 1.0]
[temperature]
kT = [0.9, 1.0, 1.1]
[analysis]
timescales = 1
[report]
heatmap = ["ligand", "kT"]
macrostate = "m3"
"#;
    let s = Study::from_toml_str(text, "hm.toml", &dir).unwrap();
    let out = dir.join("out");
    for k in s.prepare(&out).unwrap() {
        s.run_chunk(&out, k).unwrap();
    }
    s.finish(&out).unwrap();
    let png = std::fs::read(out.join("population_shift.png")).unwrap();
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "{} bytes", png.len());
    let e = Study::from_toml_str(&text.replace("\"kT\"]", "\"force\"]"), "hm.toml", &dir).unwrap_err().to_string();
    assert!(e.contains("hm.toml") && e.contains("report.heatmap") && e.contains("force"), "{e}");
    let e = Study::from_toml_str(&text.replace("macrostate = \"m3\"", "macrostate = \"m9\""), "hm.toml", &dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("report.macrostate"), "{e}");
}
