//! `insilico assimilate` and `insilico forecast` end to end: mapbayr's README
//! example (examples/mapbayr/), the file contracts (exact header columns),
//! a forecast from a degenerate posterior against a plain simulation, and
//! bad input (unknown keys, a bad regimen CSV line).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insilico-bayes-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn insilico(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_insilico")).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    stdout
}

/// A CSV as (header, rows of fields).
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    (header, lines.map(|l| l.split(',').map(String::from).collect()).collect())
}

fn col(header: &[String], name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

fn mapbayr() -> String {
    format!("{}/examples/mapbayr/mapbayr.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn mapbayr_assimilate_then_forecast() {
    let post = out_dir("post");
    let p = post.to_str().unwrap();
    let stdout = ok(&insilico(&["assimilate", &mapbayr(), "--out", p]));
    println!("{stdout}");
    // estimates.csv: ID, η, individual parameters, OFV, SD_η (then extras).
    let (h, rows) = csv(&post.join("estimates.csv"));
    assert_eq!(h[..10].join(","), "ID,ETA_CL,ETA_V1,CL,V1,Q,V2,OFV,SD_ETA_CL,SD_ETA_V1");
    assert_eq!(rows.len(), 1);
    let v = |name: &str| rows[0][col(&h, name)].parse::<f64>().unwrap();
    // mapbayr's published MAP (README): η = (0.3872104, 0.1569604), to 1e-5 as the issue asks.
    assert!((v("ETA_CL") - 0.3872104).abs() < 1e-5, "ETA_CL {}", v("ETA_CL"));
    assert!((v("ETA_V1") - 0.1569604).abs() < 1e-5, "ETA_V1 {}", v("ETA_V1"));
    assert!((v("CL") - 0.9 * v("ETA_CL").exp()).abs() < 1e-12 && v("Q") == 1.0);
    assert!(v("SD_ETA_CL") > 0.0 && v("SD_ETA_CL") < 0.3f64.sqrt(), "the data shrink the prior SD");
    // predictions.csv: IPRED 4.162 and 1.087 (mapbayr), to 1e-3.
    let (h, rows) = csv(&post.join("predictions.csv"));
    assert_eq!(h[..5].join(","), "ID,TIME,DV,PRED,IPRED");
    let ipred: Vec<f64> = rows.iter().map(|r| r[4].parse().unwrap()).collect();
    assert!((ipred[0] - 4.162).abs() < 1e-3 && (ipred[1] - 1.087).abs() < 1e-3, "{ipred:?}");
    // draws.csv, posterior.json, sequential.csv, the subject's plot.
    let (h, rows) = csv(&post.join("draws.csv"));
    assert_eq!(h.join(","), "ID,DRAW,ETA_CL,ETA_V1");
    assert_eq!(rows.len(), 1000);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(post.join("posterior.json")).unwrap()).unwrap();
    for key in ["population", "subjects", "eta_names", "method", "warnings"] {
        assert!(json.get(key).is_some(), "posterior.json lacks {key}");
    }
    let s = &json["subjects"][0];
    for key in ["eta", "covariance", "sd", "ess", "method", "warnings"] {
        assert!(s.get(key).is_some(), "posterior.json subject lacks {key}");
    }
    let (h, rows) = csv(&post.join("sequential.csv"));
    assert_eq!(h.join(","), "ID,STEP,TIME,OUTPUT,DV,PREDICTED,ERROR,ETA_CL,ETA_V1");
    assert_eq!(rows.len(), 2);
    assert!(post.join("subject_1.png").metadata().unwrap().len() > 1000);

    // forecast from that folder.
    let fc = out_dir("forecast");
    let stdout = ok(&insilico(&["forecast", &mapbayr(), "--posterior", p, "--out", fc.to_str().unwrap()]));
    println!("{stdout}");
    let (h, rows) = csv(&fc.join("forecast.csv"));
    assert_eq!(h.join(","), "ID,REGIMEN,TIME,OUTPUT,Q05,Q25,Q50,Q75,Q95");
    let regimens: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(regimens.into_iter().collect::<Vec<_>>(), vec!["100mg-5h-q24h", "150mg-5h-q24h", "50mg-q12h", "split"]);
    assert_eq!(rows.len(), 4 * 97, "48 h by 0.5 h from the last record (15 h)");
    assert_eq!(rows[0][2], "15");
    for r in &rows {
        let q: Vec<f64> = r[4..9].iter().map(|x| x.parse().unwrap()).collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "quantiles not monotone: {r:?}");
    }
    let (h, rows) = csv(&fc.join("summaries.csv"));
    assert_eq!(h.join(","), "ID,REGIMEN,OUTPUT,SUMMARY,MEAN,SD,Q05,Q25,Q50,Q75,Q95");
    let names: Vec<&str> = rows.iter().filter(|r| r[1] == "split").map(|r| r[3].as_str()).collect();
    assert_eq!(names, vec!["AUC_0_24", "CMAX", "CTROUGH", "TIME_ABOVE_2"]);
    for r in &rows {
        let q: Vec<f64> = r[6..11].iter().map(|x| x.parse().unwrap()).collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]) && r[5].parse::<f64>().unwrap() >= 0.0, "{r:?}");
    }
    assert!(fc.join("forecast.png").metadata().unwrap().len() > 1000);
    std::fs::remove_dir_all(&post).ok();
    std::fs::remove_dir_all(&fc).ok();
}

/// With Ω tiny the posterior is a point: every quantile is the plain
/// simulation of the typical subject under its history plus the regimen.
#[test]
fn degenerate_posterior_forecast_is_a_plain_simulation() {
    use insilico::model::{Model, ModelSystem};
    use insilico::solvers::{solve, Dose, Method, ObservationPoint, Options, Problem, Schedule};
    let dir = out_dir("degenerate");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("d.csv"), "ID,TIME,AMT,DV,EVID,CMT\n1,0,100,.,1,1\n1,2,0,2.0,0,2\n1,8,0,1.0,0,2\n")
        .unwrap();
    let cfg = "model = \"pk-2cmt-oral\"\ndata = \"d.csv\"\nerror = \"proportional\"\nsigma = [0.1]\n\
               [theta]\nka = 1.2\nCL = 5\nV1 = 30\nQ = 10\nV2 = 50\n[omega2]\nCL = 1e-12\nV1 = 1e-12\n\
               [posterior]\nmethod = \"laplace\"\ndraws = 50\n\
               [forecast]\nstart = 8\nhorizon = 24\nstep = 1\nresidual = false\n\
               [[regimen]]\nname = \"q12\"\ndoses = [ { time = 4, amt = 200, cmt = 1, ii = 12, addl = 1 } ]\n";
    std::fs::write(dir.join("c.toml"), cfg).unwrap();
    let c = dir.join("c.toml");
    let (post, fc) = (dir.join("post"), dir.join("fc"));
    ok(&insilico(&["assimilate", c.to_str().unwrap(), "--out", post.to_str().unwrap()]));
    ok(&insilico(&[
        "forecast",
        c.to_str().unwrap(),
        "--posterior",
        post.to_str().unwrap(),
        "--out",
        fc.to_str().unwrap(),
    ]));
    let (_, rows) = csv(&fc.join("forecast.csv"));
    // The reference: diffsol at tight tolerance, doses at 0 (history) and 12, 24 (regimen from start 8 + 4).
    let model: Model = insilico::models_zoo::resolve("pk-2cmt-oral", None).unwrap();
    let sys = ModelSystem::new(&model, &[]).unwrap();
    let times: Vec<f64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
    let mut prob = Problem::new(&sys, vec![1.2, 5.0, 30.0, 10.0, 50.0]).with_schedule(
        Schedule::new().dose(Dose::bolus(0.0, 0, 100.0)).dose(Dose::bolus(12.0, 0, 200.0).repeated(12.0, 1)),
    );
    prob.observations = times.iter().map(|&t| ObservationPoint { time: t, output: 0 }).collect();
    let sol = solve(&prob, Method::Tsit45, &Options { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 }).unwrap();
    assert_eq!(times.first().copied(), Some(8.0));
    assert_eq!(times.len(), 25);
    for (r, want) in rows.iter().zip(&sol.outputs) {
        for q in &r[4..9] {
            let got: f64 = q.parse().unwrap();
            // The draws spread by SD 1e-6 in η; the forecast integrates at rtol 1e-6, the
            // reference at 1e-10: 1e-5 relative covers both.
            assert!((got - want).abs() <= 1e-5 * want.abs() + 1e-9, "t = {}: {got} vs {want}", r[2]);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_names_file_key_and_line() {
    let dir = out_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::fs::read_to_string(mapbayr()).unwrap();
    let root = format!("{}/examples/mapbayr/", env!("CARGO_MANIFEST_DIR"));
    let fixed = src
        .replace("\"mapbayr.model\"", &format!("\"{root}mapbayr.model\""))
        .replace("\"mapbayr.csv\"", &format!("\"{root}mapbayr.csv\""));
    // An unknown key.
    let c = dir.join("typo.toml");
    std::fs::write(&c, fixed.replace("horizon = 48", "horizn = 48")).unwrap();
    let o = insilico(&["assimilate", c.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("typo.toml") && err.contains("horizn"), "{err}");
    // A regimen CSV with a negative amount on line 3.
    std::fs::write(dir.join("regimens.csv"), "REGIMEN,TIME,AMT,CMT\nA,0,100,1\nA,12,-50,1\n").unwrap();
    let c = dir.join("reg.toml");
    std::fs::write(&c, &fixed).unwrap();
    let o = insilico(&["assimilate", c.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("regimens.csv") && err.contains("line 3") && err.contains("AMT"),
        "{err}"
    );
    // A dose into a compartment the model lacks.
    std::fs::write(dir.join("regimens.csv"), "REGIMEN,TIME,AMT,CMT\nA,0,100,5\n").unwrap();
    let o = insilico(&["assimilate", c.to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("line 2") && err.contains("CMT"), "{err}");
    // forecast without a posterior folder.
    std::fs::write(dir.join("regimens.csv"), "REGIMEN,TIME,AMT,CMT\nA,0,100,1\n").unwrap();
    let o = insilico(&[
        "forecast",
        c.to_str().unwrap(),
        "--posterior",
        dir.join("none").to_str().unwrap(),
        "--out",
        dir.join("o").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("posterior.json") && err.contains("assimilate"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `[filter]` on a model with declared process noise (examples/filter/):
/// filtered.csv's columns, one row per observation, filtered SDs no larger
/// than the predicted spread, and filter.json's log-likelihood is the sum of
/// the subjects'.
#[test]
fn filter_writes_filtered_states() {
    let cfg = format!("{}/examples/filter/tumour.toml", env!("CARGO_MANIFEST_DIR"));
    let out = out_dir("filter");
    ok(&insilico(&["assimilate", &cfg, "--out", out.to_str().unwrap()]));
    let (h, rows) = csv(&out.join("filtered.csv"));
    assert_eq!(
        h,
        [
            "ID",
            "TIME",
            "LINE",
            "OUTPUT",
            "DV",
            "PREDICTED",
            "PREDICTED_SD",
            "drug",
            "tumour",
            "SD_drug",
            "SD_tumour",
            "LOGLIK"
        ]
    );
    assert_eq!(rows.len(), 24, "3 subjects × 8 images");
    for r in &rows {
        let sd: f64 = r[col(&h, "SD_tumour")].parse().unwrap();
        let pred_sd: f64 = r[col(&h, "PREDICTED_SD")].parse().unwrap();
        assert!(sd.is_finite() && sd > 0.0 && sd <= pred_sd, "{r:?}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("filter.json")).unwrap()).unwrap();
    assert_eq!(j["method"], "ekf");
    let total: f64 = j["subjects"].as_array().unwrap().iter().map(|s| s["log_likelihood"].as_f64().unwrap()).sum();
    assert!((total - j["log_likelihood"].as_f64().unwrap()).abs() < 1e-9);
    let _ = std::fs::remove_dir_all(&out);
}
