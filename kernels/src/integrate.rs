//! One trajectory: adaptive Tsit5 or Rosenbrock steps between the breakpoints
//! of its regimen, with dense output at the requested times.
//!
//! This is the CPU twin of the CUDA kernel: the same steps, constants,
//! controller and event handling per trajectory, so that one GPU thread runs
//! exactly what [`integrate`] runs. On the CPU, [`integrate_lanes`] advances
//! several trajectories side by side (each with its own steps and events) to
//! overlap their dependency chains; every lane's arithmetic is that of
//! [`integrate`], so results are bit-for-bit the same.

use crate::model::BatchModel;
use crate::schedule::{Cursor, Regimen};

/// Maximum number of exogenous inputs a batched model may have.
pub const MAX_INPUTS: usize = 4;

/// The stepping method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stepper {
    /// Tsitouras 5(4), explicit, with its free 4th-order dense output (non-stiff).
    Tsit5,
    /// Shampine's 4-stage Rosenbrock method of order 4(3), linearly implicit
    /// with the model's exact Jacobian (stiff); cubic Hermite dense output.
    Rosenbrock,
}

impl Stepper {
    /// Parses `tsit5` or `rosenbrock`.
    pub fn parse(s: &str) -> Option<Stepper> {
        match s.to_ascii_lowercase().as_str() {
            "tsit5" | "tsit45" => Some(Stepper::Tsit5),
            "rosenbrock" | "ros4" => Some(Stepper::Rosenbrock),
            _ => None,
        }
    }
}

/// Tolerances and limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Step limit per trajectory.
    pub max_steps: u32,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances { rtol: 1e-6, atol: 1e-9, max_steps: 100_000 }
    }
}

/// Outcome of one trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Status {
    /// Reached the horizon.
    #[default]
    Ok = 0,
    /// Hit `Tolerances::max_steps`.
    MaxSteps = 1,
    /// The step size underflowed.
    StepTooSmall = 2,
    /// The state became NaN or infinite.
    NonFinite = 3,
    /// The Rosenbrock matrix was singular.
    Singular = 4,
}

/// Counters of one trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrajectoryStats {
    /// Accepted steps.
    pub steps: u32,
    /// Rejected steps.
    pub rejected: u32,
    /// How it ended.
    pub status: Status,
}

/// Receives the output at the requested times.
pub trait Observer {
    /// Output `y` at requested time number `k` (time `t`).
    fn observe(&mut self, k: usize, t: f64, y: f64);
    /// Whether output `k` at `t` is needed at all. Outputs inside a step that
    /// are not wanted skip the dense-output evaluation (a summary over the
    /// last day of a 14-day run needs 49 of 673 grid points). Default: all.
    #[inline]
    fn wants(&self, _k: usize, _t: f64) -> bool {
        true
    }
}

/// Stores every output.
impl Observer for [f64] {
    fn observe(&mut self, k: usize, _t: f64, y: f64) {
        self[k] = y;
    }
}

// Tsitouras 5(4) (Tsitouras 2011), as in diffsol's `Tableau::tsit45`.
const C2: f64 = 0.161;
const C3: f64 = 0.327;
const C4: f64 = 0.9;
const C5: f64 = 0.980_025_540_904_509_7;
const A32: f64 = 0.335_480_655_492_357;
const A42: f64 = -6.359_448_489_975_075;
const A43: f64 = 4.362_295_432_869_581;
const A52: f64 = -11.748_883_564_062_83;
const A53: f64 = 7.495_539_342_889_836;
const A54: f64 = -0.092_495_066_361_755_25;
const A62: f64 = -12.920_969_317_847_11;
const A63: f64 = 8.159_367_898_576_159;
const A64: f64 = -0.071_584_973_281_401;
const A65: f64 = -0.028_269_050_394_068_38;
const A31: f64 = C3 - A32;
const A41: f64 = C4 - A42 - A43;
const A51: f64 = C5 - A52 - A53 - A54;
const A61: f64 = 1.0 - A62 - A63 - A64 - A65;
const B: [f64; 6] = [
    0.096_460_766_818_065_23,
    0.01,
    0.479_889_650_414_499_6,
    1.379_008_574_103_742,
    -3.290_069_515_436_081,
    2.324_710_524_099_774,
];
const BTILDE: [f64; 7] = [
    -0.001_780_011_052_225_777,
    -0.000_816_434_459_656_746_9,
    0.007_880_878_010_261_995,
    -0.144_711_007_173_262_9,
    0.582_357_165_452_555_2,
    -0.458_082_105_929_186_97,
    0.015_151_515_151_515_152,
];

/// Tsit5 dense-output weights `b_i(θ)` (4th order).
#[inline]
fn tsit5_dense(th: f64) -> [f64; 7] {
    let t2 = th * th;
    let t3 = t2 * th;
    let t4 = t3 * th;
    [
        -1.053_088_497_729_02 * t4 + 2.913_255_461_821_91 * t3 - 2.763_706_197_274_83 * t2 + th,
        0.1017 * t4 - 0.2234 * t3 + 0.1317 * t2,
        2.490_627_285_651_25 * t4 - 5.941_033_872_131_5 * t3 + 3.930_296_236_894_75 * t2,
        -16.548_102_889_244_9 * t4 + 30.338_188_630_282_3 * t3 - 12.411_077_166_933_7 * t2,
        47.379_521_962_819_3 * t4 - 88.178_904_894_766_4 * t3 + 37.509_313_416_511 * t2,
        -34.870_657_861_496_6 * t4 + 65.091_894_674_793_7 * t3 - 27.896_526_289_197_3 * t2,
        2.5 * t4 - 4.0 * t3 + 1.5 * t2,
    ]
}

// Shampine's Rosenbrock 4(3) constants (as in Numerical Recipes' `stiff`).
const GAM: f64 = 0.5;
const RA21: f64 = 2.0;
const RA31: f64 = 48.0 / 25.0;
const RA32: f64 = 6.0 / 25.0;
const RC21: f64 = -8.0;
const RC31: f64 = 372.0 / 25.0;
const RC32: f64 = 12.0 / 5.0;
const RC41: f64 = -112.0 / 125.0;
const RC42: f64 = -54.0 / 125.0;
const RC43: f64 = -2.0 / 5.0;
const RB: [f64; 4] = [19.0 / 9.0, 1.0 / 2.0, 25.0 / 108.0, 125.0 / 108.0];
const RE: [f64; 4] = [17.0 / 54.0, 7.0 / 36.0, 0.0, 125.0 / 108.0];

/// Step-size factor `err^(-1/4)` of the elementary controller. Both methods
/// use the exponent 1/4 (1/(q+1) for an order-3 estimate; for Tsit5's order-4
/// estimate it is slightly bolder than 1/5, which only changes proposals, not
/// the acceptance test), because `1/√√err` is two correctly rounded square
/// roots and a division: bit-for-bit the same on every CPU and in the CUDA
/// twin, and far cheaper than `pow`.
#[inline(always)]
fn controller(err: f64) -> f64 {
    1.0 / err.sqrt().sqrt()
}

/// In-place LU with partial pivoting of a small dense matrix; `false` if singular.
#[inline]
fn lu<const N: usize>(a: &mut [[f64; N]; N], piv: &mut [usize; N]) -> bool {
    for k in 0..N {
        let mut p = k;
        let mut best = a[k][k].abs();
        for (i, row) in a.iter().enumerate().skip(k + 1) {
            if row[k].abs() > best {
                best = row[k].abs();
                p = i;
            }
        }
        if best == 0.0 || !best.is_finite() {
            return false;
        }
        piv[k] = p;
        if p != k {
            a.swap(p, k);
        }
        let inv = 1.0 / a[k][k];
        for i in k + 1..N {
            let l = a[i][k] * inv;
            a[i][k] = l;
            if l != 0.0 {
                for j in k + 1..N {
                    a[i][j] -= l * a[k][j];
                }
            }
        }
    }
    true
}

#[inline]
fn lu_solve<const N: usize>(a: &[[f64; N]; N], piv: &[usize; N], b: &mut [f64; N]) {
    for k in 0..N {
        b.swap(k, piv[k]);
    }
    for i in 0..N {
        let mut s = b[i];
        for j in 0..i {
            s -= a[i][j] * b[j];
        }
        b[i] = s;
    }
    for i in (0..N).rev() {
        let mut s = b[i];
        for j in i + 1..N {
            s -= a[i][j] * b[j];
        }
        b[i] = s / a[i][i];
    }
}

#[inline]
fn eval<const N: usize, M: BatchModel<N>>(
    m: &M,
    x: &[f64; N],
    p: &[f64],
    u: &[f64],
    rate: &[f64; N],
    infusing: bool,
    dx: &mut [f64; N],
) {
    m.rhs(x, p, u, dx);
    // Adding zero rates changes nothing: skip the adds when no infusion runs.
    if infusing {
        for i in 0..N {
            dx[i] += rate[i];
        }
    }
}

/// [`eval`] for every stepping lane with one [`BatchModel::rhs_lanes`] call:
/// `k[s] = f(y)` (or `f(ynew)`), then the infusion rates, as `eval` adds them.
#[inline(always)]
fn eval_lanes<const N: usize, const L: usize, M: BatchModel<N>>(
    model: &M,
    lanes: &mut [Lane<'_, N>; L],
    nd: usize,
    nu: usize,
    s: usize,
    from_ynew: bool,
) {
    let mut args: [Option<crate::model::LaneRhs<'_, N>>; L] = std::array::from_fn(|_| None);
    for (slot, lane) in args.iter_mut().zip(lanes.iter_mut()) {
        if lane.go {
            let Lane { derived, y, ynew, u, k, .. } = lane;
            let x = if from_ynew { &*ynew } else { &*y };
            *slot = Some(crate::model::LaneRhs { x, d: &derived[..nd], u: &u[..nu], dx: &mut k[s] });
        }
    }
    model.rhs_lanes(&mut args);
    for lane in lanes.iter_mut() {
        if lane.go && lane.infusing {
            for i in 0..N {
                lane.k[s][i] += lane.rate[i];
            }
        }
    }
}

#[inline]
fn err_norm<const N: usize>(e: &[f64; N], y0: &[f64; N], y1: &[f64; N], tol: &Tolerances) -> f64 {
    let mut s = 0.0;
    for i in 0..N {
        let sc = tol.atol + tol.rtol * y0[i].abs().max(y1[i].abs());
        let r = e[i] / sc;
        s += r * r;
    }
    (s / N as f64).sqrt()
}

/// First-step guess `0.01·‖y‖/‖f‖` in the weighted RMS norm (Hairer–Nørsett–Wanner II.4).
#[inline]
fn initial_step<const N: usize>(y: &[f64; N], f: &[f64; N], tol: &Tolerances) -> f64 {
    let (mut d0, mut d1) = (0.0, 0.0);
    for i in 0..N {
        let sc = tol.atol + tol.rtol * y[i].abs();
        d0 += (y[i] / sc).powi(2);
        d1 += (f[i] / sc).powi(2);
    }
    let (d0, d1) = ((d0 / N as f64).sqrt(), (d1 / N as f64).sqrt());
    if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    }
}

/// Integrates one trajectory of `model` from `t = 0` and state `x0` under
/// `regimen` to `t_end`, reporting the output at each of the sorted `times`
/// (an output at a breakpoint sees the dose given then). `p` are the raw
/// parameters (the model's derived constants are computed here once).
#[allow(clippy::too_many_arguments)]
pub fn integrate<const N: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    stepper: Stepper,
    p: &[f64],
    x0: &[f64; N],
    regimen: &Regimen,
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    obs: &mut O,
) -> TrajectoryStats {
    let [st] = integrate_lanes(model, stepper, [p], [x0], [regimen], times, t_end, tol, [obs]);
    st
}

/// [`integrate`] for `L` independent trajectories at once (same model,
/// stepper, output times and horizon), interleaved lane by lane.
///
/// Each lane keeps its own step sizes, events and outputs, and performs
/// exactly the operations [`integrate`] performs for it, so its results are
/// bit-for-bit those of [`integrate`] (and of the CUDA kernel) whatever `L`
/// and whatever its partner lanes. Why interleave: one Tsit5 step of a small
/// system is a chain of dependent stages (each waits for the previous one's
/// right-hand side), so a lone trajectory leaves most of the core's
/// execution units idle; two independent chains side by side fill them.
///
/// ```
/// use insilico_kernels::{integrate, integrate_lanes, Regimen, Stepper, Tolerances, TwoCmtOral};
/// let times: Vec<f64> = (0..=48).map(|i| i as f64).collect();
/// let (pa, pb) = ([1.2, 5.0, 30.0, 10.0, 50.0], [1.2, 9.0, 30.0, 10.0, 50.0]);
/// let (ra, rb) = (Regimen::repeated_bolus(100.0, 0, 12.0, 48.0)?, Regimen::repeated_bolus(300.0, 0, 8.0, 48.0)?);
/// let (mut a, mut b) = (vec![0.0; times.len()], vec![0.0; times.len()]);
/// let tol = Tolerances::default();
/// let x0 = [0.0; 4];
/// integrate_lanes(&TwoCmtOral, Stepper::Tsit5, [&pa[..], &pb[..]], [&x0, &x0], [&ra, &rb], &times, 48.0, &tol,
///     [&mut a[..], &mut b[..]]);
/// let mut alone = vec![0.0; times.len()];
/// integrate(&TwoCmtOral, Stepper::Tsit5, &pb, &x0, &rb, &times, 48.0, &tol, &mut alone[..]);
/// assert_eq!(alone, b); // bit for bit
/// # Ok::<(), insilico_kernels::RegimenError>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn integrate_lanes<const N: usize, const L: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    stepper: Stepper,
    p: [&[f64]; L],
    x0: [&[f64; N]; L],
    regimen: [&Regimen; L],
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    obs: [&mut O; L],
) -> [TrajectoryStats; L] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { integrate_avx2(model, stepper, p, x0, regimen, times, t_end, tol, obs) };
        }
    }
    integrate_impl(model, stepper, p, x0, regimen, times, t_end, tol, obs)
}

/// [`integrate_lanes`] compiled for AVX2: the loops over the `N` states become
/// vector instructions. No FMA is enabled, so results are bit-for-bit those
/// of the portable build (and of the CUDA twin, compiled without FMA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn integrate_avx2<const N: usize, const L: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    stepper: Stepper,
    p: [&[f64]; L],
    x0: [&[f64; N]; L],
    regimen: [&Regimen; L],
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    obs: [&mut O; L],
) -> [TrajectoryStats; L] {
    integrate_impl(model, stepper, p, x0, regimen, times, t_end, tol, obs)
}

/// Everything one trajectory carries between steps, plus its step scratch.
struct Lane<'r, const N: usize> {
    regimen: &'r Regimen,
    /// The model's derived constants (`BatchModel::prepare`).
    derived: [f64; 64],
    x: [f64; N],
    rate: [f64; N],
    u: [f64; MAX_INPUTS],
    infusing: bool,
    cur: Cursor,
    t: f64,
    /// End of the current smooth stretch: the next breakpoint or `t_end`.
    t_seg: f64,
    /// Next output time to report.
    gi: usize,
    /// `f(t, x)` (first-same-as-last for Tsit5).
    f0: [f64; N],
    h: f64,
    st: TrajectoryStats,
    /// Still integrating.
    active: bool,
    /// This iteration attempts a step (`active` and within its limits).
    go: bool,
    hs: f64,
    last: bool,
    err: f64,
    // After a state jump (a dose) the step restarts from the conservative
    // guess `0.01·‖y‖/‖f‖` (Hairer–Nørsett–Wanner), which is 10–20x below the
    // step the controller accepts a few steps later: about 3 wasted steps and
    // a rejection per dose of a repeated regimen. Post-dose dynamics of the
    // same regimen repeat, so a later jump starts from the step the
    // controller proposed right after the previous one (never above the
    // current `h`; a too-bold start is rejected and shrunk as usual). P1:
    // 1,313 → 1,248 steps and 16 → 3 rejections per trajectory, same accuracy.
    h_post_jump: f64,
    first_after_jump: bool,
    k: [[f64; N]; 7],
    y: [f64; N],
    ynew: [f64; N],
    e: [f64; N],
    fnew: [f64; N],
    jac: [[f64; N]; N],
    piv: [usize; N],
    g: [[f64; N]; 4],
}

#[inline(always)]
fn observe_at<const N: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    lane: &mut Lane<'_, N>,
    nd: usize,
    times: &[f64],
    upto: f64,
    obs: &mut O,
) {
    while lane.gi < times.len() && times[lane.gi] <= upto {
        obs.observe(lane.gi, times[lane.gi], model.output(&lane.x, &lane.derived[..nd]));
        lane.gi += 1;
    }
}

/// Handles the breakpoints a lane has reached (events, then outputs at
/// them) until it stands inside a smooth stretch again, or finishes it at
/// `t_end` (events at the horizon, then outputs there).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn settle<const N: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    lane: &mut Lane<'_, N>,
    nd: usize,
    nu: usize,
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    obs: &mut O,
) {
    while lane.t >= lane.t_seg {
        let Lane { regimen, cur, t, x, rate, u, .. } = lane;
        if *t >= t_end {
            cur.apply(regimen, *t, x, rate, &mut u[..nu]);
            observe_at(model, lane, nd, times, t_end, obs);
            lane.active = false;
            return;
        }
        // Breakpoint: doses, infusion switches, windows; then outputs at it.
        let jumped = cur.apply(regimen, *t, x, rate, &mut u[..nu]);
        lane.infusing = lane.rate.iter().any(|r| *r != 0.0);
        eval(model, &lane.x, &lane.derived[..nd], &lane.u[..nu], &lane.rate, lane.infusing, &mut lane.f0);
        if jumped {
            lane.h = lane.h.min(initial_step(&lane.x, &lane.f0, tol).max(lane.h_post_jump));
            lane.first_after_jump = true;
        }
        let t = lane.t;
        observe_at(model, lane, nd, times, t, obs);
        lane.t_seg = lane.cur.next_time(lane.regimen).min(t_end);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn integrate_impl<const N: usize, const L: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    stepper: Stepper,
    p: [&[f64]; L],
    x0: [&[f64; N]; L],
    regimen: [&Regimen; L],
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    obs: [&mut O; L],
) -> [TrajectoryStats; L] {
    let nd = model.nderived().min(64);
    let nu = model.ninputs().min(MAX_INPUTS);
    let mut lanes: [Lane<'_, N>; L] = std::array::from_fn(|l| Lane {
        regimen: regimen[l],
        derived: [0.0; 64],
        x: *x0[l],
        rate: [0.0; N],
        u: [0.0; MAX_INPUTS],
        infusing: false,
        cur: Cursor::default(),
        t: 0.0,
        t_seg: 0.0,
        gi: 0,
        f0: [0.0; N],
        h: 0.0,
        st: TrajectoryStats::default(),
        active: true,
        go: false,
        hs: 0.0,
        last: false,
        err: 0.0,
        h_post_jump: 0.0,
        first_after_jump: false,
        k: [[0.0; N]; 7],
        y: [0.0; N],
        ynew: [0.0; N],
        e: [0.0; N],
        fnew: [0.0; N],
        jac: [[0.0; N]; N],
        piv: [0; N],
        g: [[0.0; N]; 4],
    });
    for (l, lane) in lanes.iter_mut().enumerate() {
        model.prepare(p[l], &mut lane.derived[..nd]);
        let Lane { regimen, cur, x, rate, u, .. } = lane;
        cur.apply(regimen, 0.0, x, rate, &mut u[..nu]);
        lane.infusing = lane.rate.iter().any(|r| *r != 0.0);
        observe_at(model, lane, nd, times, 0.0, &mut *obs[l]);
        eval(model, &lane.x, &lane.derived[..nd], &lane.u[..nu], &lane.rate, lane.infusing, &mut lane.f0);
        lane.h = initial_step(&lane.x, &lane.f0, tol);
        lane.t_seg = lane.cur.next_time(lane.regimen).min(t_end);
    }
    loop {
        // Who steps this round: settle breakpoints, then the step limits.
        let mut any = false;
        for (l, lane) in lanes.iter_mut().enumerate() {
            lane.go = false;
            if lane.active {
                settle(model, lane, nd, nu, times, t_end, tol, &mut *obs[l]);
            }
            if !lane.active {
                continue;
            }
            if lane.st.steps + lane.st.rejected >= tol.max_steps {
                lane.st.status = Status::MaxSteps;
                lane.active = false;
                continue;
            }
            lane.last = lane.t + lane.h >= lane.t_seg;
            lane.hs = if lane.last { lane.t_seg - lane.t } else { lane.h };
            if lane.hs <= 1e-14 * lane.t.abs().max(1.0) && !lane.last {
                lane.st.status = Status::StepTooSmall;
                lane.active = false;
                continue;
            }
            lane.go = true;
            any = true;
        }
        if !any {
            break;
        }
        // One step attempt per lane, stage by stage across the lanes, so the
        // lanes' independent dependency chains overlap.
        match stepper {
            Stepper::Tsit5 => tsit5_step(model, &mut lanes, nd, nu, tol),
            Stepper::Rosenbrock => rosenbrock_step(model, &mut lanes, nd, nu, tol),
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            if lane.go {
                finish_step(model, stepper, lane, nd, times, &mut *obs[l]);
            }
        }
    }
    std::array::from_fn(|l| lanes[l].st)
}

/// The seven Tsit5 stages of every stepping lane, interleaved.
#[inline(always)]
fn tsit5_step<const N: usize, const L: usize, M: BatchModel<N>>(
    model: &M,
    lanes: &mut [Lane<'_, N>; L],
    nd: usize,
    nu: usize,
    tol: &Tolerances,
) {
    /// `y = x + hs·Σ_j a_j k_j` over the first `a.len()` stages, then `k[s] = f(y)`.
    #[inline(always)]
    fn stage<const N: usize, const L: usize, M: BatchModel<N>>(
        model: &M,
        lanes: &mut [Lane<'_, N>; L],
        nd: usize,
        nu: usize,
        s: usize,
        combine: impl Fn(&[[f64; N]; 7], usize) -> f64,
    ) {
        for lane in lanes.iter_mut() {
            if lane.go {
                for i in 0..N {
                    lane.y[i] = lane.x[i] + lane.hs * combine(&lane.k, i);
                }
            }
        }
        if model.batches_lanes() {
            eval_lanes(model, lanes, nd, nu, s, false);
            return;
        }
        for lane in lanes.iter_mut() {
            if lane.go {
                let Lane { derived, y, u, rate, infusing, k, .. } = lane;
                eval(model, y, &derived[..nd], &u[..nu], rate, *infusing, &mut k[s]);
            }
        }
    }
    for lane in lanes.iter_mut() {
        if lane.go {
            lane.k[0] = lane.f0;
        }
    }
    stage(model, lanes, nd, nu, 1, |k, i| C2 * k[0][i]);
    stage(model, lanes, nd, nu, 2, |k, i| A31 * k[0][i] + A32 * k[1][i]);
    stage(model, lanes, nd, nu, 3, |k, i| A41 * k[0][i] + A42 * k[1][i] + A43 * k[2][i]);
    stage(model, lanes, nd, nu, 4, |k, i| A51 * k[0][i] + A52 * k[1][i] + A53 * k[2][i] + A54 * k[3][i]);
    stage(model, lanes, nd, nu, 5, |k, i| {
        A61 * k[0][i] + A62 * k[1][i] + A63 * k[2][i] + A64 * k[3][i] + A65 * k[4][i]
    });
    for lane in lanes.iter_mut() {
        if lane.go {
            let k = &lane.k;
            for i in 0..N {
                lane.ynew[i] = lane.x[i]
                    + lane.hs
                        * (B[0] * k[0][i]
                            + B[1] * k[1][i]
                            + B[2] * k[2][i]
                            + B[3] * k[3][i]
                            + B[4] * k[4][i]
                            + B[5] * k[5][i]);
            }
        }
    }
    if model.batches_lanes() {
        eval_lanes(model, lanes, nd, nu, 6, true);
    } else {
        for lane in lanes.iter_mut() {
            if lane.go {
                let Lane { derived, ynew, u, rate, infusing, k, .. } = lane;
                eval(model, ynew, &derived[..nd], &u[..nu], rate, *infusing, &mut k[6]);
            }
        }
    }
    for lane in lanes.iter_mut() {
        if lane.go {
            for i in 0..N {
                let mut s = 0.0;
                for (j, bt) in BTILDE.iter().enumerate() {
                    s += bt * lane.k[j][i];
                }
                lane.e[i] = lane.hs * s;
            }
            lane.fnew = lane.k[6];
            lane.err = err_norm(&lane.e, &lane.x, &lane.ynew, tol);
        }
    }
}

/// One Rosenbrock step of every stepping lane (a singular matrix ends the lane).
#[inline(always)]
fn rosenbrock_step<const N: usize, const L: usize, M: BatchModel<N>>(
    model: &M,
    lanes: &mut [Lane<'_, N>; L],
    nd: usize,
    nu: usize,
    tol: &Tolerances,
) {
    for lane in lanes.iter_mut() {
        if !lane.go {
            continue;
        }
        let Lane { derived, x, u, rate, infusing, k, y, ynew, e, f0, fnew, jac, piv, g, hs, st, err, .. } = lane;
        let (p, u, hs) = (&derived[..nd], &u[..nu], *hs);
        model.jacobian(x, p, u, jac);
        let d = 1.0 / (GAM * hs);
        for i in 0..N {
            for j in 0..N {
                jac[i][j] = -jac[i][j];
            }
            jac[i][i] += d;
        }
        if !lu(jac, piv) {
            st.status = Status::Singular;
            lane.active = false;
            lane.go = false;
            continue;
        }
        g[0] = *f0;
        lu_solve(jac, piv, &mut g[0]);
        for i in 0..N {
            y[i] = x[i] + RA21 * g[0][i];
        }
        eval(model, y, p, u, rate, *infusing, &mut k[1]);
        for i in 0..N {
            g[1][i] = k[1][i] + RC21 * g[0][i] / hs;
        }
        lu_solve(jac, piv, &mut g[1]);
        for i in 0..N {
            y[i] = x[i] + RA31 * g[0][i] + RA32 * g[1][i];
        }
        eval(model, y, p, u, rate, *infusing, &mut k[2]);
        for i in 0..N {
            g[2][i] = k[2][i] + (RC31 * g[0][i] + RC32 * g[1][i]) / hs;
        }
        lu_solve(jac, piv, &mut g[2]);
        for i in 0..N {
            g[3][i] = k[2][i] + (RC41 * g[0][i] + RC42 * g[1][i] + RC43 * g[2][i]) / hs;
        }
        lu_solve(jac, piv, &mut g[3]);
        for i in 0..N {
            ynew[i] = x[i] + RB[0] * g[0][i] + RB[1] * g[1][i] + RB[2] * g[2][i] + RB[3] * g[3][i];
            e[i] = RE[0] * g[0][i] + RE[1] * g[1][i] + RE[2] * g[2][i] + RE[3] * g[3][i];
        }
        *err = err_norm(e, x, ynew, tol);
        if *err <= 1.0 {
            eval(model, ynew, p, u, rate, *infusing, fnew);
        }
    }
}

/// Error test of a lane's attempted step; on acceptance, dense output at the
/// requested times inside it, then the next step size.
#[inline(always)]
fn finish_step<const N: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    stepper: Stepper,
    lane: &mut Lane<'_, N>,
    nd: usize,
    times: &[f64],
    obs: &mut O,
) {
    let (hs, t, err) = (lane.hs, lane.t, lane.err);
    if !err.is_finite() || lane.ynew.iter().any(|v| !v.is_finite()) {
        if hs <= 1e-14 * t.abs().max(1.0) {
            lane.st.status = Status::NonFinite;
            lane.active = false;
            return;
        }
        lane.h = 0.25 * hs;
        lane.st.rejected += 1;
        return;
    }
    if err > 1.0 {
        lane.h = hs * (0.9 * controller(err)).max(0.2);
        lane.st.rejected += 1;
        return;
    }
    // Accepted: dense output at the requested times inside (t, t+hs],
    // leaving a time equal to the breakpoint for after its events.
    let t_seg = lane.t_seg;
    let t_new = if lane.last { t_seg } else { t + hs };
    while lane.gi < times.len() && times[lane.gi] <= t_new && times[lane.gi] < t_seg {
        let gi = lane.gi;
        lane.gi += 1;
        if !obs.wants(gi, times[gi]) {
            continue;
        }
        let th = (times[gi] - t) / hs;
        let mut xo = [0.0; N];
        let Lane { x, k, f0, ynew, fnew, .. } = &*lane;
        match stepper {
            Stepper::Tsit5 => {
                let bd = tsit5_dense(th);
                for i in 0..N {
                    let mut s = 0.0;
                    for j in 0..7 {
                        s += bd[j] * k[j][i];
                    }
                    xo[i] = x[i] + hs * s;
                }
            }
            Stepper::Rosenbrock => {
                let (h00, h10, h01, h11) = (
                    (1.0 + 2.0 * th) * (1.0 - th) * (1.0 - th),
                    th * (1.0 - th) * (1.0 - th),
                    th * th * (3.0 - 2.0 * th),
                    th * th * (th - 1.0),
                );
                for i in 0..N {
                    xo[i] = h00 * x[i] + h10 * hs * f0[i] + h01 * ynew[i] + h11 * hs * fnew[i];
                }
            }
        }
        obs.observe(gi, times[gi], model.output(&xo, &lane.derived[..nd]));
    }
    lane.x = lane.ynew;
    lane.f0 = lane.fnew;
    lane.t = t_new;
    lane.st.steps += 1;
    // Grow at most 5x; a step clipped to a breakpoint keeps the controller's h.
    let grow = (0.9 * controller(err.max(1e-10))).clamp(0.2, 5.0);
    if !lane.last {
        lane.h = hs * grow;
    } else {
        lane.h = lane.h.max(hs * grow).min(lane.h * 5.0);
    }
    if lane.first_after_jump {
        lane.h_post_jump = lane.h;
        lane.first_after_jump = false;
    }
}
