//! The sweep's hand-written organoid path as it ran before the sweep took
//! model files (issue 10): the `Organoid` `BatchModel` of insilico-kernels,
//! its exposure rule, `LANES` trajectories per lane-interleaved solve, one
//! pass per observed quantity, and the efficacy from the closed-form
//! untreated logistic growth. Kept only as the baseline of the parity test
//! (tests/sweep_parity.rs) and the speed comparison
//! (examples/sweep_speed.rs); included by both with `#[path]`.

use insilico::kernels::organoid::{Organoid, OrganoidOutput};
use insilico::kernels::reductions::{Reducer, Reduction};
use insilico::kernels::{integrate, integrate_lanes, Regimen, WindowTrain, LANES};
use insilico::sweep::{Sweep, TrajectoryInputs};
use rayon::prelude::*;

/// One trajectory's results on the hand-written path.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// One value per output column of the sweep, in its order.
    pub outputs: Vec<f64>,
    /// `1 − viable(T) / untreated(T)` with the closed-form untreated growth.
    pub efficacy: f64,
    /// Accepted steps of the first pass (viable).
    pub steps: u32,
    /// Worst status code over the passes.
    pub status: i32,
}

/// The old organoid regimen rule: level (µM), exposure, period; level 0 is
/// no window, exposure >= period one continuous window over the horizon.
pub fn regimen(r: &[f64], horizon: f64) -> Regimen {
    let (level, exposure, period) = (r[0], r[1], r[2]);
    let w = if level == 0.0 {
        return Regimen::new();
    } else if exposure >= period {
        WindowTrain { start: 0.0, period: horizon, count: 1, duration: horizon, level, input: 0 }
    } else {
        let count = (horizon / period).ceil().max(1.0) as u32;
        WindowTrain { start: 0.0, period, count, duration: exposure, level, input: 0 }
    };
    Regimen::new().with_windows(w).unwrap_or_default()
}

/// Solves `inputs` (of an organoid sweep whose only train is `[regimen.C_med]`
/// level, exposure, period and whose efficacy quantity is `viable`) on the
/// hand-written path.
pub fn solve(sweep: &Sweep, inputs: &[TrajectoryInputs]) -> Vec<Row> {
    // One pass per quantity, in the order of OrganoidOutput::ALL, as before.
    let passes: Vec<(Organoid, Vec<Reduction>, Vec<Option<usize>>)> = OrganoidOutput::ALL
        .iter()
        .filter_map(|&o| {
            let mut reds = Vec::new();
            let mut dest = Vec::new();
            for (k, spec) in sweep.outputs.iter().enumerate() {
                if spec.quantity == o.name() {
                    reds.push(spec.reduction);
                    dest.push(Some(k));
                }
            }
            if o == OrganoidOutput::Viable {
                reds.push(Reduction::last());
                dest.push(None);
            }
            (!reds.is_empty()).then_some((Organoid::new(o), reds, dest))
        })
        .collect();
    let t_end = *sweep.times.last().expect("output times");
    let nout = sweep.outputs.len();
    inputs
        .par_chunks(LANES)
        .flat_map_iter(|inp| {
            let m = inp.len();
            let regs: Vec<Regimen> = inp.iter().map(|i| regimen(&i.regimen_vars, sweep.horizon)).collect();
            let xs: Vec<[f64; 6]> = inp.iter().map(|i| Organoid::default().initial_state(&i.params)).collect();
            let mut rows: Vec<Row> = (0..m)
                .map(|_| Row { outputs: vec![f64::NAN; nout], efficacy: f64::NAN, steps: 0, status: 0 })
                .collect();
            let mut fin = vec![f64::NAN; m];
            for (k, (model, reds, dest)) in passes.iter().enumerate() {
                let red = Reducer::new(reds).expect("valid reductions");
                let mut rs: Vec<Reducer> = (0..m).map(|_| red.clone()).collect();
                let stats: Vec<_> = match <[&mut Reducer; LANES]>::try_from(rs.iter_mut().collect::<Vec<_>>()) {
                    Ok(obs) => integrate_lanes(
                        model,
                        sweep.stepper,
                        std::array::from_fn(|l| &inp[l].params[..]),
                        std::array::from_fn(|l| &xs[l]),
                        std::array::from_fn(|l| &regs[l]),
                        &sweep.times,
                        sweep.horizon,
                        &sweep.tol,
                        obs,
                    )
                    .to_vec(),
                    Err(rest) => rest
                        .into_iter()
                        .enumerate()
                        .map(|(l, r)| {
                            let p = &inp[l].params;
                            integrate(
                                model,
                                sweep.stepper,
                                p,
                                &xs[l],
                                &regs[l],
                                &sweep.times,
                                sweep.horizon,
                                &sweep.tol,
                                r,
                            )
                        })
                        .collect(),
                };
                let mut vals = vec![0.0; reds.len()];
                for (l, (r, st)) in rs.iter().zip(&stats).enumerate() {
                    if k == 0 {
                        rows[l].steps = st.steps;
                    }
                    rows[l].status = rows[l].status.max(st.status as i32);
                    r.values(&mut vals);
                    for (d, v) in dest.iter().zip(&vals) {
                        match d {
                            Some(c) => rows[l].outputs[*c] = *v,
                            None => fin[l] = *v,
                        }
                    }
                }
            }
            for (l, row) in rows.iter_mut().enumerate() {
                row.efficacy = 1.0 - fin[l] / Organoid::untreated_viable(&inp[l].params, t_end);
            }
            rows
        })
        .collect()
}
