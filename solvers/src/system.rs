//! The [`System`] trait: a right-hand side with exact derivatives.

/// A right-hand side `dx/dt = f(t, x, u, θ)` with its exact derivatives.
///
/// * `x` — state, length [`System::nstates`];
/// * `u` — exogenous inputs set by interventions (medium drug level, ligand
///   concentration, ...), length [`System::ninputs`], piecewise constant
///   between schedule breakpoints;
/// * `θ` — parameters, length [`System::nparams`].
///
/// Zero-order dosing (infusions) is *not* part of `u`: the solver adds each
/// infusion rate directly to the derivative of the dosed state, so every
/// system can be dosed without knowing about dosing.
///
/// Every derivative is exact (written by hand or generated); tests check
/// each against central finite differences with
/// [`crate::check_derivatives`].
///
/// # Example
/// ```
/// use insilico_solvers::System;
/// /// dx/dt = -k x
/// struct Decay;
/// impl System for Decay {
///     fn nstates(&self) -> usize { 1 }
///     fn nparams(&self) -> usize { 1 }
///     fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) { dx[0] = -p[0] * x[0]; }
///     fn jvp(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) { out[0] = -p[0] * v[0]; }
///     fn vjp_state(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) { out[0] = -p[0] * w[0]; }
///     fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], v: &[f64], out: &mut [f64]) { out[0] = -x[0] * v[0]; }
///     fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], w: &[f64], out: &mut [f64]) { out[0] = -x[0] * w[0]; }
/// }
/// let report = insilico_solvers::check_derivatives(&Decay, 0.0, &[2.0], &[], &[0.3], 1e-6);
/// assert!(report.max_rel_err < 1e-6);
/// ```
pub trait System: Send + Sync {
    /// Number of states.
    fn nstates(&self) -> usize;
    /// Number of parameters.
    fn nparams(&self) -> usize;
    /// Number of exogenous inputs `u` (0 by default).
    fn ninputs(&self) -> usize {
        0
    }
    /// `dx = f(t, x, u, θ)`; `dx` is overwritten.
    fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]);
    /// `out = (∂f/∂x) v` (length `nstates`, overwritten).
    fn jvp(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]);
    /// `out = (∂f/∂x)ᵀ w` (length `nstates`, overwritten).
    fn vjp_state(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]);
    /// `out = (∂f/∂θ) v`, `v` of length `nparams`, `out` of length `nstates` (overwritten).
    fn jvp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]);
    /// `out = (∂f/∂θ)ᵀ w`, `w` of length `nstates`, `out` of length `nparams` (overwritten).
    fn vjp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]);

    /// The forward-sensitivity right-hand side of `k = params.len()`
    /// directions at once: for each `j`,
    /// `out[j·n..(j+1)·n] = (∂f/∂x)·s[j·n..(j+1)·n] + (∂f/∂θ)·e_{params[j]}`
    /// (no parameter term where `params[j]` is `None`), `n = nstates`,
    /// `out` overwritten; returns `true`.
    ///
    /// The default returns `false`, and the solver then calls
    /// [`System::jvp`] and [`System::jvp_params`] once per direction. A
    /// system whose derivative evaluation has a fixed cost per call (a
    /// program evaluating every Jacobian entry) overrides this to evaluate
    /// `∂f/∂x` and `∂f/∂θ` once for all `k` directions; the result must
    /// equal the per-direction one.
    #[allow(clippy::too_many_arguments)]
    fn sensitivity_rhs(
        &self,
        _t: f64,
        _x: &[f64],
        _u: &[f64],
        _p: &[f64],
        _s: &[f64],
        _params: &[Option<usize>],
        _out: &mut [f64],
    ) -> bool {
        false
    }

    /// Structural nonzeros `(row, col)` of `∂f/∂x`, if the system knows them.
    /// `None` means dense.
    fn jacobian_sparsity(&self) -> Option<Vec<(usize, usize)>> {
        None
    }

    /// Writes the values of `∂f/∂x` at the entries of
    /// [`System::jacobian_sparsity`], in the same order (repeated entries
    /// add), and returns `true`. The default returns `false`: the solver then
    /// recovers the values from [`System::jvp`] by column colouring, which
    /// costs one `jvp` per colour and suffers from dense rows (an
    /// accumulator that sums over every state forces one colour per column).
    fn jacobian_values(&self, _t: f64, _x: &[f64], _u: &[f64], _p: &[f64], _values: &mut [f64]) -> bool {
        false
    }

    /// Linear invariants the system promises: each row `c` satisfies
    /// `c · f(t, x, u, θ) = 0` for all arguments, so `c · x` changes only by
    /// doses (bolus amounts and infusion rates are added to states by the
    /// solver and counted separately).
    fn invariants(&self) -> Vec<Vec<f64>> {
        Vec::new()
    }

    /// States that accumulate without feeding back into any derivative (an
    /// eliminated-amount compartment, say). They have no steady state, so a
    /// steady-state dose sets them to zero instead of solving for them.
    fn accumulators(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Number of scalar outputs (observables). Defaults to one per state.
    fn noutputs(&self) -> usize {
        self.nstates()
    }
    /// Output `k` (e.g. a concentration). Defaults to state `k`.
    fn output(&self, k: usize, _t: f64, x: &[f64], _p: &[f64]) -> f64 {
        x[k]
    }
    /// Gradient of output `k`: adds `∂y/∂x` into `gx` and `∂y/∂θ` into `gp`.
    fn output_grad(&self, k: usize, _t: f64, _x: &[f64], _p: &[f64], gx: &mut [f64], _gp: &mut [f64]) {
        gx[k] += 1.0;
    }

    /// Human-readable state names, used in errors and output headers.
    fn state_names(&self) -> Vec<String> {
        (0..self.nstates()).map(|i| format!("x{i}")).collect()
    }
    /// Human-readable parameter names.
    fn param_names(&self) -> Vec<String> {
        (0..self.nparams()).map(|i| format!("p{i}")).collect()
    }
}

/// Perturbs `(x, θ)` by `±step` in one coordinate (finite differences).
type Perturb<'a> = dyn Fn(&mut Vec<f64>, &mut Vec<f64>, f64) + 'a;

/// The largest discrepancies found by [`check_derivatives`].
#[derive(Debug, Clone, Copy)]
pub struct DerivativeReport {
    /// Largest relative error over every derivative checked
    /// (`|exact − fd| / max(|fd|, 1)`; the floor keeps near-zero entries
    /// from dominating through round-off).
    pub max_rel_err: f64,
    /// Largest error of `J·v` against central differences.
    pub jvp_err: f64,
    /// Largest error of `Jᵀ·w` against the transpose of the finite-difference Jacobian.
    pub vjp_state_err: f64,
    /// Largest error of `(∂f/∂θ)·v` against central differences.
    pub jvp_params_err: f64,
    /// Largest error of `(∂f/∂θ)ᵀ·w`.
    pub vjp_params_err: f64,
    /// Largest error of the output gradients.
    pub output_err: f64,
}

/// Checks every exact derivative of `sys` at `(t, x, u, θ)` against central
/// finite differences with relative step `h` (1e-6 is a good choice in f64:
/// truncation ~h², round-off ~1e-16/h).
///
/// Builds the full finite-difference Jacobians column by column, then compares
/// `jvp`, `vjp_state`, `jvp_params`, `vjp_params` and `output_grad` against
/// them on every unit vector, so each entry is checked, not just a random
/// projection.
pub fn check_derivatives(sys: &dyn System, t: f64, x: &[f64], u: &[f64], p: &[f64], h: f64) -> DerivativeReport {
    let n = sys.nstates();
    let m = sys.nparams();
    let err = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
    let fd_column = |which: &Perturb| {
        let mut xp = x.to_vec();
        let mut pp = p.to_vec();
        let mut fp = vec![0.0; n];
        let mut fm = vec![0.0; n];
        which(&mut xp, &mut pp, 1.0);
        sys.rhs(t, &xp, u, &pp, &mut fp);
        let mut xm = x.to_vec();
        let mut pm = p.to_vec();
        which(&mut xm, &mut pm, -1.0);
        sys.rhs(t, &xm, u, &pm, &mut fm);
        (fp, fm)
    };
    // Finite-difference Jacobians, stored column-major.
    let mut jx = vec![0.0; n * n];
    for j in 0..n {
        let hj = h * x[j].abs().max(1.0);
        let (fp, fm) = fd_column(&|xs: &mut Vec<f64>, _: &mut Vec<f64>, s: f64| xs[j] += s * hj);
        for i in 0..n {
            jx[i + j * n] = (fp[i] - fm[i]) / (2.0 * hj);
        }
    }
    let mut jp = vec![0.0; n * m];
    for j in 0..m {
        let hj = h * p[j].abs().max(1.0);
        let (fp, fm) = fd_column(&|_: &mut Vec<f64>, ps: &mut Vec<f64>, s: f64| ps[j] += s * hj);
        for i in 0..n {
            jp[i + j * n] = (fp[i] - fm[i]) / (2.0 * hj);
        }
    }
    let mut rep = DerivativeReport {
        max_rel_err: 0.0,
        jvp_err: 0.0,
        vjp_state_err: 0.0,
        jvp_params_err: 0.0,
        vjp_params_err: 0.0,
        output_err: 0.0,
    };
    let mut out = vec![0.0; n.max(m)];
    let mut e = vec![0.0; n.max(m)];
    for j in 0..n {
        e.iter_mut().for_each(|v| *v = 0.0);
        e[j] = 1.0;
        sys.jvp(t, x, u, p, &e[..n], &mut out[..n]);
        for i in 0..n {
            rep.jvp_err = rep.jvp_err.max(err(out[i], jx[i + j * n]));
        }
        sys.vjp_state(t, x, u, p, &e[..n], &mut out[..n]);
        for i in 0..n {
            rep.vjp_state_err = rep.vjp_state_err.max(err(out[i], jx[j + i * n]));
        }
        sys.vjp_params(t, x, u, p, &e[..n], &mut out[..m]);
        for i in 0..m {
            rep.vjp_params_err = rep.vjp_params_err.max(err(out[i], jp[j + i * n]));
        }
    }
    for j in 0..m {
        e.iter_mut().for_each(|v| *v = 0.0);
        e[j] = 1.0;
        sys.jvp_params(t, x, u, p, &e[..m], &mut out[..n]);
        for i in 0..n {
            rep.jvp_params_err = rep.jvp_params_err.max(err(out[i], jp[i + j * n]));
        }
    }
    for k in 0..sys.noutputs() {
        let mut gx = vec![0.0; n];
        let mut gp = vec![0.0; m];
        sys.output_grad(k, t, x, p, &mut gx, &mut gp);
        for j in 0..n {
            let hj = h * x[j].abs().max(1.0);
            let mut xp = x.to_vec();
            xp[j] += hj;
            let mut xm = x.to_vec();
            xm[j] -= hj;
            let fd = (sys.output(k, t, &xp, p) - sys.output(k, t, &xm, p)) / (2.0 * hj);
            rep.output_err = rep.output_err.max(err(gx[j], fd));
        }
        for j in 0..m {
            let hj = h * p[j].abs().max(1.0);
            let mut pp = p.to_vec();
            pp[j] += hj;
            let mut pm = p.to_vec();
            pm[j] -= hj;
            let fd = (sys.output(k, t, x, &pp) - sys.output(k, t, x, &pm)) / (2.0 * hj);
            rep.output_err = rep.output_err.max(err(gp[j], fd));
        }
    }
    rep.max_rel_err =
        rep.jvp_err.max(rep.vjp_state_err).max(rep.jvp_params_err).max(rep.vjp_params_err).max(rep.output_err);
    rep
}
