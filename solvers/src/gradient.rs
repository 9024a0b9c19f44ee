//! Gradients of a sum of per-observation losses with respect to the
//! parameters and the initial state, by forward sensitivities or by adjoint.
//!
//! Both are chained across every segment of the schedule: through dose
//! jumps, bioavailability, infusion rates, and event times that depend on
//! parameters (lags, modelled durations), and through steady states (by the
//! implicit-function theorem on the periodic map).
//!
//! * **Forward**: the state is augmented with `S = ∂x/∂(θ, x₀)` and the
//!   system `[x, S]' = [f + R, J S + ∂f/∂θ + ∂R/∂θ]` is integrated by the
//!   chosen diffsol method with error control on `S` too. Cost grows with
//!   the number of parameters; best for a handful.
//! * **Adjoint**: one forward pass stores a dense trajectory (every step and
//!   its midpoint, cubic Hermite in between); one backward pass integrates
//!   `λ' = −Jᵀλ`, `μ' = −(∂f/∂θ)ᵀλ` and `ν' = −λ` (for the infusion rates)
//!   per segment with the same diffsol method in reversed time, adding the
//!   observation jumps `∂ℓ/∂x` and, at each event, the terms of its size and
//!   timing. Cost is independent of the number of parameters.

use std::cell::RefCell;

use crate::driver::{self, full_rhs, Dir, Knot, ObsSink, Tape, TapeItem};
use crate::events::Action;
use crate::integrator::{with_stepper, Rhs, Stepper};
use crate::schedule::SteadyState;
use crate::solve::{Error, Method, Observation, Options, Problem};
use crate::system::System;

/// How to compute a gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientMethod {
    /// Forward sensitivities.
    Forward,
    /// Adjoint (backward) sensitivities.
    Adjoint,
    /// Forward when parameters and states together number at most 16, else adjoint.
    Auto,
}

/// A loss value with its gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient {
    /// `L = Σ_j ℓ_j(y_j)`.
    pub loss: f64,
    /// `∂L/∂θ`.
    pub d_params: Vec<f64>,
    /// `∂L/∂x₀`.
    pub d_x0: Vec<f64>,
    /// Predictions `y_j` in the order of `Problem::observations`.
    pub predictions: Vec<f64>,
}

/// Per-observation loss: given the observation index `j` and the prediction
/// `y_j`, returns `(ℓ_j, dℓ_j/dy_j)`.
pub type Loss<'a> = dyn Fn(usize, f64) -> (f64, f64) + 'a;

struct LossSink<'a> {
    sys: &'a dyn System,
    p: &'a [f64],
    loss: &'a Loss<'a>,
    n: usize,
    dirs: &'a [Dir],
    total: f64,
    grad_dirs: Vec<f64>,
    preds: Vec<f64>,
    weights: Vec<f64>,
}

impl ObsSink for LossSink<'_> {
    fn observe(&mut self, idx: usize, obs: &Observation, x: &[f64], s: &[f64]) {
        let y = self.sys.output(obs.output, obs.time, x, self.p);
        let (l, w) = (self.loss)(idx, y);
        self.total += l;
        self.preds[idx] = y;
        self.weights[idx] = w;
        if self.dirs.is_empty() || w == 0.0 {
            return;
        }
        let n = self.n;
        let mut gx = vec![0.0; n];
        let mut gp = vec![0.0; self.p.len()];
        self.sys.output_grad(obs.output, obs.time, x, self.p, &mut gx, &mut gp);
        for (j, d) in self.dirs.iter().enumerate() {
            let mut v: f64 = (0..n).map(|r| gx[r] * s[j * n + r]).sum();
            if let Dir::Param(i) = *d {
                v += gp[i];
            }
            self.grad_dirs[j] += w * v;
        }
    }
}

/// Loss and gradient of `Σ_j loss(j, y_j)` over the problem's observations.
///
/// # Example
/// ```
/// use insilico_solvers::{gradient, Dose, GradientMethod, Method, Options, Problem, Schedule, System};
/// struct Decay;
/// impl System for Decay {
///     fn nstates(&self) -> usize { 1 }
///     fn nparams(&self) -> usize { 1 }
///     fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) { dx[0] = -p[0] * x[0]; }
///     fn jvp(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -p[0] * v[0]; }
///     fn vjp_state(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -p[0] * w[0]; }
///     fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -x[0] * v[0]; }
///     fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -x[0] * w[0]; }
/// }
/// let prob = Problem::new(&Decay, vec![0.2])
///     .with_schedule(Schedule::new().dose(Dose::bolus(0.0, 0, 10.0)))
///     .observe(0, &[5.0]);
/// // L = y(5) = 10 e^{-5k}; dL/dk = -50 e^{-5k}
/// let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
/// for how in [GradientMethod::Forward, GradientMethod::Adjoint] {
///     let g = gradient(&prob, Method::Bdf, &opts, &|_, y| (y, 1.0), how).unwrap();
///     assert!((g.d_params[0] + 50.0 * (-1.0f64).exp()).abs() < 1e-6);
/// }
/// ```
pub fn gradient(
    problem: &Problem,
    method: Method,
    opts: &Options,
    loss: &Loss,
    how: GradientMethod,
) -> Result<Gradient, Error> {
    problem.validate()?;
    let sys = problem.system;
    let (n, m) = (sys.nstates(), sys.nparams());
    let how = match how {
        GradientMethod::Auto if n + m <= 16 => GradientMethod::Forward,
        GradientMethod::Auto => GradientMethod::Adjoint,
        h => h,
    };
    let nobs = problem.observations.len();
    let dirs: Vec<Dir> = match how {
        GradientMethod::Forward => (0..m).map(Dir::Param).chain((0..n).map(Dir::State)).collect(),
        _ => Vec::new(),
    };
    let mut sink = LossSink {
        sys,
        p: &problem.params,
        loss,
        n,
        dirs: &dirs,
        total: 0.0,
        grad_dirs: vec![0.0; dirs.len()],
        preds: vec![0.0; nobs],
        weights: vec![0.0; nobs],
    };
    if how == GradientMethod::Forward {
        driver::forward(problem, method, opts, &dirs, &mut sink, None)?;
        return Ok(Gradient {
            loss: sink.total,
            d_params: sink.grad_dirs[..m].to_vec(),
            d_x0: sink.grad_dirs[m..].to_vec(),
            predictions: sink.preds,
        });
    }
    let mut tape = Tape::default();
    driver::forward(problem, method, opts, &dirs, &mut sink, Some(&mut tape))?;
    let (d_params, d_x0) = backward(problem, method, opts, &tape, &sink.weights)?;
    Ok(Gradient { loss: sink.total, d_params, d_x0, predictions: sink.preds })
}

/// Cubic Hermite interpolation of the stored trajectory.
fn hermite(knots: &[Knot], t: f64, out: &mut [f64]) {
    let i = match knots.binary_search_by(|k| k.t.total_cmp(&t)) {
        Ok(i) => {
            out.copy_from_slice(&knots[i].x);
            return;
        }
        Err(i) => i.clamp(1, knots.len().saturating_sub(1).max(1)),
    };
    if knots.len() < 2 {
        out.copy_from_slice(&knots[0].x);
        return;
    }
    let (a, b) = (&knots[i - 1], &knots[i]);
    let h = b.t - a.t;
    let s = (t - a.t) / h;
    let h00 = (1.0 + 2.0 * s) * (1.0 - s) * (1.0 - s);
    let h10 = s * (1.0 - s) * (1.0 - s);
    let h01 = s * s * (3.0 - 2.0 * s);
    let h11 = s * s * (s - 1.0);
    for (r, o) in out.iter_mut().enumerate() {
        *o = h00 * a.x[r] + h10 * h * a.f[r] + h01 * b.x[r] + h11 * h * b.f[r];
    }
}

/// `z = [λ, μ, ν]`, in reversed time `τ = T − t`:
/// `dλ/dτ = Jᵀλ`, `dμ/dτ = (∂f/∂θ)ᵀλ`, `dν/dτ = λ`.
struct AdjointRhs<'a> {
    sys: &'a dyn System,
    p: &'a [f64],
    n: usize,
    m: usize,
    horizon: f64,
    seg: RefCell<Option<(&'a [Knot], &'a [f64])>>,
    scratch: RefCell<Vec<f64>>,
}

impl Rhs for AdjointRhs<'_> {
    fn size(&self) -> usize {
        2 * self.n + self.m
    }
    fn rhs(&self, tau: f64, z: &[f64], dz: &mut [f64]) {
        self.jvp(tau, z, z, dz);
    }
    fn jvp(&self, tau: f64, _z: &[f64], v: &[f64], out: &mut [f64]) {
        // The adjoint is linear in λ, so its Jacobian-vector product is the
        // right-hand side applied to v.
        let (n, m) = (self.n, self.m);
        let seg = self.seg.borrow();
        let Some((knots, u)) = *seg else { return };
        let mut x = self.scratch.borrow_mut();
        hermite(knots, self.horizon - tau, &mut x);
        let t = self.horizon - tau;
        let lam = &v[..n];
        let (o_l, rest) = out.split_at_mut(n);
        let (o_m, o_n) = rest.split_at_mut(m);
        self.sys.vjp_state(t, &x, u, self.p, lam, o_l);
        self.sys.vjp_params(t, &x, u, self.p, lam, o_m);
        o_n.copy_from_slice(lam);
    }
}

fn backward(
    problem: &Problem,
    method: Method,
    opts: &Options,
    tape: &Tape,
    weights: &[f64],
) -> Result<(Vec<f64>, Vec<f64>), Error> {
    let sys = problem.system;
    let p = &problem.params[..];
    let (n, m) = (sys.nstates(), sys.nparams());
    let horizon = problem.horizon();
    let rhs = AdjointRhs { sys, p, n, m, horizon, seg: RefCell::new(None), scratch: RefCell::new(vec![0.0; n]) };
    let mut lam = vec![0.0; n];
    let mut grad = vec![0.0; m];
    let add_obs = |idx: usize, x: &[f64], t: f64, lam: &mut [f64], grad: &mut [f64]| {
        let w = weights[idx];
        if w == 0.0 {
            return;
        }
        let o = problem.observations[idx];
        let mut gx = vec![0.0; n];
        let mut gp = vec![0.0; m];
        sys.output_grad(o.output, t, x, p, &mut gx, &mut gp);
        for r in 0..n {
            lam[r] += w * gx[r];
        }
        for c in 0..m {
            grad[c] += w * gp[c];
        }
    };
    with_stepper(&rhs, method, opts, &mut |stepper: &mut dyn Stepper| {
        let mut z = vec![0.0; 2 * n + m];
        let mut dz = vec![0.0; 2 * n + m];
        for item in tape.items.iter().rev() {
            match item {
                TapeItem::Obs(idx, x) => add_obs(*idx, x, problem.observations[*idx].time, &mut lam, &mut grad),
                TapeItem::Event(ev) => {
                    let t = ev.timed.time;
                    if !ev.timed.d_time.is_empty() {
                        let fb = full_rhs(sys, t, &ev.x_before, &ev.u_before, p, &ev.r_before);
                        let fa = full_rhs(sys, t, &ev.x_after, &ev.u_after, p, &ev.r_after);
                        let c: f64 = (0..n).map(|r| lam[r] * (fb[r] - fa[r])).sum();
                        for &(i, g) in &ev.timed.d_time {
                            grad[i] += g * c;
                        }
                    }
                    match &ev.timed.action {
                        Action::Jump { cmt, d_amount, .. } => {
                            for &(i, g) in d_amount {
                                grad[i] += g * lam[*cmt];
                            }
                        }
                        Action::Reset => lam.iter_mut().for_each(|v| *v = 0.0),
                        Action::SteadyState(spec) => {
                            if let Some(s) = &ev.ss_sens {
                                for c in 0..m {
                                    grad[c] += (0..n).map(|r| lam[r] * s[c * n + r]).sum::<f64>();
                                }
                            }
                            if spec.mode == SteadyState::Reset {
                                lam.iter_mut().for_each(|v| *v = 0.0);
                            }
                        }
                        Action::RateOn { .. } | Action::RateOff { .. } | Action::Input { .. } => {}
                    }
                }
                TapeItem::Seg(seg) => {
                    *rhs.seg.borrow_mut() = Some((&seg.knots, &seg.u));
                    let mut nu = vec![0.0; n];
                    let mut hi = seg.t1;
                    // Interior observations, latest first, split the segment.
                    let mut stops: Vec<(f64, Option<usize>)> = seg
                        .obs
                        .iter()
                        .enumerate()
                        .map(|(k, (idx, _))| (problem.observations[*idx].time, Some(k)))
                        .collect();
                    stops.reverse();
                    stops.push((seg.t0, None));
                    for (lo, obs_k) in stops {
                        if hi > lo {
                            z.iter_mut().for_each(|v| *v = 0.0);
                            z[..n].copy_from_slice(&lam);
                            let tau0 = horizon - hi;
                            rhs.rhs(tau0, &z, &mut dz);
                            stepper.restart(tau0, &z, &dz);
                            stepper.advance(horizon - lo, &mut |_, _, _| Ok(()))?;
                            let y = stepper.y();
                            lam.copy_from_slice(&y[..n]);
                            for c in 0..m {
                                grad[c] += y[n + c];
                            }
                            for r in 0..n {
                                nu[r] += y[n + m + r];
                            }
                            hi = lo;
                        }
                        if let Some(k) = obs_k {
                            let (idx, x) = &seg.obs[k];
                            add_obs(*idx, x, problem.observations[*idx].time, &mut lam, &mut grad);
                        }
                    }
                    // ∂L/∂R_c = ∫ λ_c dt over the segment; chain to the parameters.
                    for (cmt, g) in &seg.active {
                        for &(i, gi) in g {
                            grad[i] += gi * nu[*cmt];
                        }
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok((grad, lam))
}

/// Predictions with their forward sensitivities to chosen parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensitivities {
    /// Predictions `y_j`, in the order of `Problem::observations`.
    pub predictions: Vec<f64>,
    /// `∂y_j/∂θ_{params[k]}`, row-major: `jacobian[j * params.len() + k]`.
    pub jacobian: Vec<f64>,
}

struct SensSink<'a> {
    sys: &'a dyn System,
    p: &'a [f64],
    n: usize,
    params: &'a [usize],
    out: Sensitivities,
}

impl ObsSink for SensSink<'_> {
    fn observe(&mut self, idx: usize, obs: &Observation, x: &[f64], s: &[f64]) {
        let n = self.n;
        self.out.predictions[idx] = self.sys.output(obs.output, obs.time, x, self.p);
        let mut gx = vec![0.0; n];
        let mut gp = vec![0.0; self.p.len()];
        self.sys.output_grad(obs.output, obs.time, x, self.p, &mut gx, &mut gp);
        let k = self.params.len();
        for (j, &i) in self.params.iter().enumerate() {
            let v: f64 = (0..n).map(|r| gx[r] * s[j * n + r]).sum();
            self.out.jacobian[idx * k + j] = v + gp[i];
        }
    }
}

/// Predictions and their exact forward sensitivities `∂y_j/∂θ_i` for the
/// parameters `params` only (the population estimators need the Jacobian of
/// every prediction with respect to a subject's random effects). The state
/// is augmented with one sensitivity column per listed parameter, chained
/// through doses, lags, bioavailability and steady states as in
/// [`gradient`].
///
/// # Example
/// ```
/// use insilico_solvers::gradient::sensitivities;
/// use insilico_solvers::{Dose, Method, Options, Problem, Schedule, System};
/// struct Decay;
/// impl System for Decay {
///     fn nstates(&self) -> usize { 1 }
///     fn nparams(&self) -> usize { 1 }
///     fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) { dx[0] = -p[0] * x[0]; }
///     fn jvp(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -p[0] * v[0]; }
///     fn vjp_state(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -p[0] * w[0]; }
///     fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -x[0] * v[0]; }
///     fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -x[0] * w[0]; }
/// }
/// let prob = Problem::new(&Decay, vec![0.2])
///     .with_schedule(Schedule::new().dose(Dose::bolus(0.0, 0, 10.0)))
///     .observe(0, &[1.0, 5.0]);
/// let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
/// let s = sensitivities(&prob, Method::Bdf, &opts, &[0]).unwrap();
/// // y = 10 e^{-kt}; dy/dk = -10 t e^{-kt}
/// assert!((s.jacobian[1] + 50.0 * (-1.0f64).exp()).abs() < 1e-6);
/// ```
pub fn sensitivities(
    problem: &Problem,
    method: Method,
    opts: &Options,
    params: &[usize],
) -> Result<Sensitivities, Error> {
    problem.validate()?;
    let sys = problem.system;
    if let Some(&bad) = params.iter().find(|&&i| i >= sys.nparams()) {
        return Err(Error::InvalidProblem(format!(
            "sensitivity to parameter #{bad} requested, the system has {}",
            sys.nparams()
        )));
    }
    let nobs = problem.observations.len();
    let dirs: Vec<Dir> = params.iter().map(|&i| Dir::Param(i)).collect();
    let mut sink = SensSink {
        sys,
        p: &problem.params,
        n: sys.nstates(),
        params,
        out: Sensitivities { predictions: vec![0.0; nobs], jacobian: vec![0.0; nobs * params.len()] },
    };
    driver::forward(problem, method, opts, &dirs, &mut sink, None)?;
    Ok(sink.out)
}
