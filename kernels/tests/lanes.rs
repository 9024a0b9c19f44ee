//! The lane-interleaved integrator gives every trajectory exactly (bit for
//! bit) what the one-trajectory integrator gives it, whatever its partner:
//! different regimens, infusions, exposure windows, both steppers, and a
//! partner that stops early (step limit) or never steps.

mod common;
use common::{p1_grid, p1_subset};
use insilico_kernels::organoid::{Organoid, OrganoidOutput, ORGANOID_DEFAULTS};
use insilico_kernels::reductions::{solve_reductions, Reducer, Reduction, Stat};
use insilico_kernels::{
    integrate, integrate_lanes, solve_grid, solve_summaries, BatchModel, DoseTrain, Observer, Regimen, Stepper,
    SummaryObserver, Tolerances, TrajectoryStats, TwoCmtOral, WindowTrain,
};

fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs `a` and `b` as a pair and alone; asserts identical outputs and stats.
#[allow(clippy::too_many_arguments)]
fn check_pair<const N: usize, M: BatchModel<N>>(
    model: &M,
    stepper: Stepper,
    (pa, xa, ra): (&[f64], &[f64; N], &Regimen),
    (pb, xb, rb): (&[f64], &[f64; N], &Regimen),
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
) -> [TrajectoryStats; 2] {
    let nt = times.len();
    let (mut a, mut b) = (vec![f64::NAN; nt], vec![f64::NAN; nt]);
    let st = integrate_lanes(model, stepper, [pa, pb], [xa, xb], [ra, rb], times, t_end, tol, [&mut a[..], &mut b[..]]);
    let (mut a1, mut b1) = (vec![f64::NAN; nt], vec![f64::NAN; nt]);
    let sa = integrate(model, stepper, pa, xa, ra, times, t_end, tol, &mut a1[..]);
    let sb = integrate(model, stepper, pb, xb, rb, times, t_end, tol, &mut b1[..]);
    assert_eq!(st, [sa, sb], "{stepper:?}: stats differ");
    assert!(same(&a, &a1) || st[0].status != insilico_kernels::Status::Ok, "{stepper:?}: lane 0 differs");
    assert!(same(&b, &b1) || st[1].status != insilico_kernels::Status::Ok, "{stepper:?}: lane 1 differs");
    st
}

/// Trajectory `i` of `batch` integrated on its own.
fn alone_with<O: Observer + ?Sized>(
    batch: &insilico_kernels::Batch<4>,
    i: usize,
    stepper: Stepper,
    p: &[f64],
    times: &[f64],
    o: &mut O,
) -> TrajectoryStats {
    let tol = Tolerances::default();
    integrate(&TwoCmtOral, stepper, p, &batch.x0_of(i), &batch.regimens[i], times, 336.0, &tol, o)
}

#[test]
fn p1_batches_equal_lone_trajectories() {
    let batch = p1_subset(37);
    let times = p1_grid();
    for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
        let g = solve_grid(&TwoCmtOral, stepper, &batch, &times, 336.0, &Tolerances::default());
        let (s, _) =
            solve_summaries(&TwoCmtOral, stepper, &batch, &times, 336.0, &Tolerances::default(), (312.0, 336.0), 1.0);
        for (i, si) in s.iter().enumerate() {
            let mut p = vec![0.0; batch.nparams];
            batch.params_of(i, &mut p);
            let mut alone = vec![0.0; times.len()];
            let st = alone_with(&batch, i, stepper, &p, &times, &mut alone[..]);
            assert_eq!(st, g.stats[i]);
            assert!(same(&alone, &g.values[i * times.len()..(i + 1) * times.len()]), "{stepper:?} case {i}");
            let mut o = SummaryObserver::new(312.0, 336.0, 1.0);
            alone_with(&batch, i, stepper, &p, &times, &mut o);
            assert_eq!(o.s, *si, "{stepper:?} summary {i}");
        }
    }
}

#[test]
fn mixed_partners_infusions_windows_and_early_stops() {
    let times: Vec<f64> = (0..=200).map(|i| i as f64 * 0.6).collect();
    let tol = Tolerances::default();
    let p = [1.2, 5.0, 30.0, 10.0, 50.0];
    let p_fast = [1.2, 40.0, 30.0, 10.0, 50.0];
    let bolus = Regimen::repeated_bolus(100.0, 0, 12.0, 120.0).unwrap();
    let infusion = Regimen::new()
        .with_doses(DoseTrain { start: 1.5, interval: 9.0, count: 8, amount: 300.0, target: 1, duration: 2.5 })
        .unwrap();
    let nothing = Regimen::new();
    let x0 = [0.0; 4];
    let x0_loaded = [50.0, 10.0, 0.0, 0.0];
    for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
        check_pair(&TwoCmtOral, stepper, (&p, &x0, &bolus), (&p_fast, &x0, &infusion), &times, 120.0, &tol);
        check_pair(&TwoCmtOral, stepper, (&p, &x0_loaded, &nothing), (&p, &x0, &infusion), &times, 120.0, &tol);
        // A partner that hits the step limit early, and one with nothing to do (t_end = 0).
        let short = Tolerances { max_steps: 40, ..tol };
        let st = check_pair(&TwoCmtOral, stepper, (&p, &x0, &infusion), (&p_fast, &x0, &bolus), &times, 120.0, &short);
        assert_eq!(st[0].status, insilico_kernels::Status::MaxSteps);
        check_pair(&TwoCmtOral, stepper, (&p, &x0, &bolus), (&p, &x0, &infusion), &times[..1], 0.0, &tol);
    }
    // The organoid model: exposure windows drive an input.
    let m = Organoid::new(OrganoidOutput::Viable);
    let pa = ORGANOID_DEFAULTS;
    let mut pb = ORGANOID_DEFAULTS;
    pb[0] *= 1.7;
    let win = |level: f64, dur: f64, period: f64| {
        Regimen::new()
            .with_windows(WindowTrain { start: 0.0, period, count: 5, duration: dur, level, input: 0 })
            .unwrap()
    };
    let (ra, rb) = (win(10.0, 24.0, 72.0), win(50.0, 6.0, 48.0));
    let ot: Vec<f64> = (0..=56).map(|i| i as f64 * 6.0).collect();
    for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
        let (xa, xb) = (m.initial_state(&pa), m.initial_state(&pb));
        check_pair(&m, stepper, (&pa, &xa, &ra), (&pb, &xb, &rb), &ot, 336.0, &tol);
    }
}

#[test]
fn batched_reductions_equal_lone_reducers() {
    let batch = p1_subset(41);
    let times = p1_grid();
    let tol = Tolerances::default();
    let red = [
        Reduction::cmax(312.0, 336.0),
        Reduction::auc(312.0, 336.0),
        Reduction::new(Stat::Mean, 0.0, 336.0, 0.0),
        Reduction::time_above(0.0, 336.0, 1.0),
    ];
    let (v, st) = solve_reductions(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 336.0, &tol, &red).unwrap();
    for i in 0..batch.n {
        let mut p = vec![0.0; batch.nparams];
        batch.params_of(i, &mut p);
        let mut r = Reducer::new(&red).unwrap();
        let s = integrate(
            &TwoCmtOral,
            Stepper::Tsit5,
            &p,
            &batch.x0_of(i),
            &batch.regimens[i],
            &times,
            336.0,
            &tol,
            &mut r,
        );
        assert_eq!(s, st[i]);
        let mut alone = [0.0; 4];
        r.values(&mut alone);
        assert!(same(&alone, &v[i * 4..(i + 1) * 4]), "case {i}");
    }
}
