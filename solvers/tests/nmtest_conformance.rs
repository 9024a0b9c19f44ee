//! Runs every scenario of NONMEM 7.4.3's event-grammar suite (../shared/data/nmtest.csv)
//! through the solve layer with a one-compartment depot model written inline.

use insilico_solvers::data::{ColumnOrValue, Dataset, DoseMapping, ReadOptions};
use insilico_solvers::{solve, Event, Method, ObservationPoint, Options, Problem, SteadyState};

mod common;
use common::OneCmt;

#[test]
fn nmtest_all_scenarios() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/nmtest.csv");
    let ds = Dataset::from_path(path, &ReadOptions::default()).unwrap();
    let map = DoseMapping {
        n_compartments: 2,
        default_dose_cmt: 1,
        default_obs_cmt: 2,
        bioavailability: vec![(2, ColumnOrValue::Column("bioav".into()))],
        lag: vec![(2, ColumnOrValue::Column("lagt".into()))],
        rate: vec![(2, ColumnOrValue::Column("rat2".into()))],
        duration: vec![(2, ColumnOrValue::Column("dur2".into()))],
    };
    let cp = ds.covariate("cp").unwrap();
    let opts = Options { rtol: 1e-10, atol: 1e-10, ..Options::default() };
    let mut bad = Vec::new();
    let mut known = 0;
    let mut total = 0;
    for subj in &ds.subjects {
        let (sched, obs) = subj.to_schedule(&ds, &map).unwrap();
        // Convention difference (docs/CONFORMANCE.md): for a steady-state dose whose lag
        // exceeds II, NONMEM 7.4.3 extrapolates the steady-state profile to a negative
        // time since the last dose on [t_rec, t_rec + ALAG - II); Insilico gives the
        // physical steady state there. Rows in these windows are expected to differ.
        let windows: Vec<(f64, f64)> = sched
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Dose(d) if d.ss != SteadyState::No => {
                    let lag = d.lag.value(&[]);
                    (lag > d.ii && d.ii > 0.0).then_some((d.time, d.time + lag - d.ii))
                }
                _ => None,
            })
            .collect();
        let mut prob = Problem::new(&OneCmt, vec![1.5, 1.1, 20.0, 0.0, 0.0, 0.0]).with_schedule(sched);
        prob.observations = obs.iter().map(|o| ObservationPoint { time: o.time, output: 0 }).collect();
        let sol = solve(&prob, Method::Bdf, &opts).unwrap();
        let expected: Vec<f64> =
            subj.records.iter().filter(|r| r.evid == 0).map(|r| r.covariates[cp].unwrap()).collect();
        let mut worst = (0.0f64, 0.0, 0.0, 0.0);
        for (i, (&got, &want)) in sol.outputs.iter().zip(&expected).enumerate() {
            total += 1;
            let ok = (got - want).abs() <= 1e-3 * want.abs() || (got - want).abs() <= 1e-6;
            let rel = (got - want).abs() / want.abs().max(1e-6);
            if !ok && rel > worst.0 {
                worst = (rel, obs[i].time, got, want);
            }
            if !ok {
                if windows.iter().any(|&(a, b)| obs[i].time >= a && obs[i].time < b) {
                    known += 1;
                } else {
                    bad.push((subj.id.clone(), obs[i].time, got, want));
                }
            }
        }
        if worst.0 > 0.0 {
            eprintln!(
                "subject {}: worst rel {:.3e} at t={} got {} want {}",
                subj.id, worst.0, worst.1, worst.2, worst.3
            );
        }
    }
    eprintln!("{total} rows: {known} in documented SS-lag windows, {} unexplained", bad.len());
    assert!(bad.is_empty(), "rows differing from NONMEM outside the documented convention: {bad:?}");
    assert_eq!(total, 7074);
    assert_eq!(known, 260, "the documented convention difference covers exactly 260 rows");
}
