//! A thin, object-safe wrapper over diffsol's steppers.
//!
//! The solve layer integrates piecewise-smooth problems segment by segment:
//! between breakpoints it needs only "restart at (t, y) and advance to t1,
//! reporting every accepted step". [`Stepper`] is exactly that, implemented
//! for every diffsol method, so the drivers in [`crate::solve`] and
//! [`crate::gradient`] are written once.

use std::cell::RefCell;

use diffsol::{
    ConstantOp, FaerContext, FaerSparseMat, FaerVec, JacobianColoring, Matrix, NalgebraLU, NalgebraMat, NalgebraVec,
    NonLinearOp, NonLinearOpJacobian, OdeBuilder, OdeEquations, OdeEquationsRef, OdeSolverMethod, Op, ParameterisedOp,
    UnitCallable, Vector, VectorCommon,
};
use faer::sparse::SymbolicSparseColMat;

use crate::linsolve::SparseSolver;
use crate::solve::{Error, Method, Options};

/// Dense output of the last step: `interp(s, out)` for `s` in the step.
pub(crate) type Interp<'a> = dyn Fn(f64, &mut [f64]) -> Result<(), Error> + 'a;
/// Called after every accepted step with `(t_prev, t_now, interp)`.
pub(crate) type OnStep<'a> = dyn FnMut(f64, f64, &Interp) -> Result<(), Error> + 'a;

/// Restart-and-advance access to a diffsol solver.
pub(crate) trait Stepper {
    /// Puts the solver at `(t, y)` with derivative `dy` (a restart: no
    /// history is kept across a breakpoint).
    fn restart(&mut self, t: f64, y: &[f64], dy: &[f64]);
    /// Advances to exactly `t1`, calling `on_step(t_prev, t, interp)` after
    /// every accepted step, where `interp(s, out)` evaluates the dense output
    /// at any `s` in `[t_prev, t]`. Stops with an error carrying the time of
    /// failure, including a non-finite state (diffsol's explicit methods let
    /// NaN through silently).
    fn advance(&mut self, t1: f64, on_step: &mut OnStep) -> Result<(), Error>;
    /// Current state.
    fn y(&self) -> &[f64];
    /// Number of accepted steps so far.
    fn steps(&self) -> usize;
}

/// Plain-slice access to the first (only) batch of a diffsol vector.
trait Slices {
    fn slice(&self) -> &[f64];
    fn slice_mut(&mut self) -> &mut [f64];
}

impl Slices for NalgebraVec<f64> {
    fn slice(&self) -> &[f64] {
        self.batch_as_slice(0)
    }
    fn slice_mut(&mut self) -> &mut [f64] {
        self.batch_as_mut_slice(0)
    }
}

impl Slices for FaerVec<f64> {
    fn slice(&self) -> &[f64] {
        self.inner().col_as_slice(0)
    }
    fn slice_mut(&mut self) -> &mut [f64] {
        self.inner_mut().col_as_slice_mut(0)
    }
}

struct Wrap<'a, Eqn, S> {
    solver: S,
    _eqn: std::marker::PhantomData<&'a Eqn>,
    steps: usize,
    max_steps: usize,
    rtol: f64,
    atol: f64,
    /// State at the end of the last `advance`, interpolated when the last
    /// step went past it.
    y_end: Vec<f64>,
    have_end: bool,
}

impl<Eqn, S> Wrap<'_, Eqn, S> {
    /// A freshly built diffsol solver with the shared knobs of `opts`.
    fn new(solver: S, opts: &Options) -> Self {
        Wrap {
            solver,
            _eqn: std::marker::PhantomData,
            steps: 0,
            max_steps: opts.max_steps,
            rtol: opts.rtol,
            atol: opts.atol,
            y_end: Vec::new(),
            have_end: false,
        }
    }
}

fn diffsol_err(e: diffsol::error::DiffsolError, t: f64) -> Error {
    let msg = e.to_string();
    if msg.contains("too small") || msg.contains("TooSmall") {
        Error::StepSizeTooSmall { t }
    } else {
        Error::Solver { t, reason: msg }
    }
}

impl<'a, Eqn, S> Stepper for Wrap<'a, Eqn, S>
where
    Eqn: diffsol::OdeEquations<T = f64> + 'a,
    Eqn::V: Slices,
    S: OdeSolverMethod<'a, Eqn>,
{
    fn restart(&mut self, t: f64, y: &[f64], dy: &[f64]) {
        // A step size carried over from a long, smooth stretch is far too
        // large for the transient right after a dose: cap it by the usual
        // first-step guess h0 = 0.01·‖y‖/‖y'‖ (weighted RMS norms, Hairer,
        // Nørsett & Wanner II.4), so the first steps after a breakpoint are
        // accepted on merit rather than after rejections at the edge of the
        // tolerance.
        let (rtol, atol) = (self.rtol, self.atol);
        let norm = |v: &[f64]| {
            let s: f64 = v.iter().zip(y).map(|(a, b)| (a / (atol + rtol * b.abs())).powi(2)).sum();
            (s / v.len().max(1) as f64).sqrt()
        };
        let (d0, d1) = (norm(y), norm(dy));
        let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
        let st = self.solver.state_mut();
        st.y.slice_mut().copy_from_slice(y);
        st.dy.slice_mut().copy_from_slice(dy);
        *st.t = t;
        if st.h.is_nan() || *st.h <= 0.0 || *st.h > h0 {
            *st.h = h0;
        }
    }

    fn advance(&mut self, t1: f64, on_step: &mut OnStep) -> Result<(), Error> {
        let t0 = self.solver.state().t;
        if t1 <= t0 {
            return Ok(());
        }
        if t1 - t0 <= 1e3 * f64::EPSILON * (t0.abs() + t1.abs() + 1.0) {
            self.have_end = false;
            // A round-off sliver between two breakpoints (diffsol would refuse
            // the stop time): one explicit Euler step is exact to round-off.
            let st = self.solver.state_mut();
            let dt = t1 - t0;
            let dy: Vec<f64> = st.dy.slice().to_vec();
            for (y, d) in st.y.slice_mut().iter_mut().zip(dy) {
                *y += dt * d;
            }
            *st.t = t1;
            return Ok(());
        }
        {
            let st = self.solver.state_mut();
            let span = t1 - t0;
            if st.h.is_nan() || *st.h <= 0.0 || *st.h > span {
                *st.h = span;
            }
        }
        // No stop time: the last step may go past t1 and the state at t1 (and
        // at observations before it) is read from the dense output. diffsol's
        // BDF rescales its step after a step clipped to a stop time without
        // keeping the interpolant consistent, so observations inside such a
        // step came out wrong (5e-4 relative in one P1 case); interior points
        // of an ordinary step are fine. The right-hand side is smooth up to
        // t1 and may be continued past it: what lies beyond is discarded, and
        // the next segment restarts from the state at t1.
        self.have_end = false;
        loop {
            let t_prev = self.solver.state().t;
            self.solver.step().map_err(|e| diffsol_err(e, self.solver.state().t))?;
            self.steps += 1;
            let t_now = self.solver.state().t;
            if !self.solver.state().y.slice().iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite { t: t_now.min(t1) });
            }
            if self.steps > self.max_steps {
                return Err(Error::MaxSteps { t: t_now.min(t1), max_steps: self.max_steps });
            }
            let solver = &self.solver;
            let interp = |s: f64, out: &mut [f64]| -> Result<(), Error> {
                if s == t_now {
                    out.copy_from_slice(solver.state().y.slice());
                    return Ok(());
                }
                let v = solver.interpolate(s).map_err(|e| diffsol_err(e, s))?;
                out.copy_from_slice(v.slice());
                Ok(())
            };
            let t_hi = t_now.min(t1);
            on_step(t_prev, t_hi, &interp)?;
            if t_now >= t1 {
                self.y_end.resize(self.solver.state().y.slice().len(), 0.0);
                let mut y_end = std::mem::take(&mut self.y_end);
                interp(t1, &mut y_end)?;
                if !y_end.iter().all(|v| v.is_finite()) {
                    return Err(Error::NonFinite { t: t1 });
                }
                self.y_end = y_end;
                self.have_end = true;
                return Ok(());
            }
        }
    }

    fn y(&self) -> &[f64] {
        if self.have_end {
            &self.y_end
        } else {
            self.solver.state().y.slice()
        }
    }

    fn steps(&self) -> usize {
        self.steps
    }
}

/// A right-hand side and its Jacobian-vector product over plain slices, the
/// form every augmented system of the solve layer takes.
pub(crate) trait Rhs {
    /// Size of the integrated vector.
    fn size(&self) -> usize;
    /// `dy = F(t, y)`.
    fn rhs(&self, t: f64, y: &[f64], dy: &mut [f64]);
    /// `out = (∂F/∂y) v` (may be approximate: it only drives Newton).
    fn jvp(&self, t: f64, y: &[f64], v: &[f64], out: &mut [f64]);
    /// Structural nonzeros `(row, col)` of `∂F/∂y`, if known (`None`: dense).
    /// Entries outside the pattern must be zero in every `jvp`.
    fn sparsity(&self) -> Option<Vec<(usize, usize)>> {
        None
    }
    /// Writes `∂F/∂y` at the entries of [`Rhs::sparsity`], in that order
    /// (repeated entries add). Returns `false` when the values are not
    /// available, in which case they are recovered from `jvp` by column
    /// colouring.
    fn jacobian_values(&self, _t: f64, _y: &[f64], _values: &mut [f64]) -> bool {
        false
    }
}

/// Systems at least this large that declare a Jacobian sparsity pattern are
/// integrated with faer's sparse LU by the implicit methods; smaller ones (and
/// every explicit solve) use dense nalgebra matrices, which win below this.
pub(crate) const SPARSE_MIN_SIZE: usize = 64;

/// Builds a diffsol problem for `rhs` with the method and tolerances asked
/// for and hands a [`Stepper`] over it to `body`.
///
/// Implicit methods on a system of at least [`SPARSE_MIN_SIZE`] states that
/// declares [`Rhs::sparsity`] get a sparse problem (faer sparse matrices and
/// sparse LU, pattern supplied, values written directly when the system
/// provides them); everything else a dense one.
pub(crate) fn with_stepper<R>(
    rhs: &dyn Rhs,
    method: Method,
    opts: &Options,
    body: &mut dyn FnMut(&mut dyn Stepper) -> Result<R, Error>,
) -> Result<R, Error> {
    let n = rhs.size();
    if method != Method::Tsit45 && n >= SPARSE_MIN_SIZE {
        if let Some(pattern) = rhs.sparsity() {
            return with_sparse_stepper(rhs, pattern, method, opts, body);
        }
    }
    let builder = OdeBuilder::<NalgebraMat<f64>>::new()
        .rtol(opts.rtol)
        .atol(vec![opts.atol; n])
        .rhs_implicit(
            |x: &[f64], _p: &[f64], t: f64, y: &mut [f64]| rhs.rhs(t, x, y),
            |x: &[f64], _p: &[f64], t: f64, v: &[f64], y: &mut [f64]| rhs.jvp(t, x, v, y),
        )
        .init(|_p: &[f64], _t: f64, y: &mut [f64]| y.iter_mut().for_each(|v| *v = 0.0), n);
    let problem = builder.build().map_err(|e| Error::Solver { t: 0.0, reason: e.to_string() })?;
    let mk = |e: diffsol::error::DiffsolError| Error::Solver { t: 0.0, reason: e.to_string() };
    match method {
        Method::Bdf => {
            let s = problem.bdf::<NalgebraLU<f64>>().map_err(mk)?;
            body(&mut Wrap::new(s, opts))
        }
        Method::Esdirk34 => {
            let s = problem.esdirk34::<NalgebraLU<f64>>().map_err(mk)?;
            body(&mut Wrap::new(s, opts))
        }
        Method::TrBdf2 => {
            let s = problem.tr_bdf2::<NalgebraLU<f64>>().map_err(mk)?;
            body(&mut Wrap::new(s, opts))
        }
        Method::Tsit45 => {
            let s = problem.tsit45().map_err(mk)?;
            body(&mut Wrap::new(s, opts))
        }
    }
}

fn with_sparse_stepper<R>(
    rhs: &dyn Rhs,
    pattern: Vec<(usize, usize)>,
    method: Method,
    opts: &Options,
    body: &mut dyn FnMut(&mut dyn Stepper) -> Result<R, Error>,
) -> Result<R, Error> {
    let n = rhs.size();
    let mk = |e: diffsol::error::DiffsolError| Error::Solver { t: 0.0, reason: e.to_string() };
    let eqn = SparseEqn::new(rhs, &pattern)?;
    let problem = OdeBuilder::<FaerSparseMat<f64>>::new()
        .rtol(opts.rtol)
        .atol(vec![opts.atol; n])
        .build_from_eqn(eqn)
        .map_err(mk)?;
    match method {
        Method::Bdf => {
            let s = problem.bdf::<SparseSolver>().map_err(mk)?;
            body(&mut Wrap::new(s, opts))
        }
        Method::Esdirk34 => {
            let s = problem.esdirk34::<SparseSolver>().map_err(mk)?;
            body(&mut Wrap::new(s, opts))
        }
        Method::TrBdf2 => {
            let s = problem.tr_bdf2::<SparseSolver>().map_err(mk)?;
            body(&mut Wrap::new(s, opts))
        }
        Method::Tsit45 => Err(Error::Solver { t: 0.0, reason: "explicit methods take the dense path".into() }),
    }
}

type SparseM = FaerSparseMat<f64>;

/// A diffsol equation set over faer sparse matrices whose Jacobian pattern
/// comes from [`Rhs::sparsity`] (no NaN probing at build time) and whose
/// values come from [`Rhs::jacobian_values`] when the system has them, by
/// colouring otherwise.
struct SparseEqn<'r> {
    rhs: &'r dyn Rhs,
    n: usize,
    ctx: FaerContext,
    sparsity: SymbolicSparseColMat<usize>,
    /// For entry `k` of the declared pattern, its position among the CSC values.
    csc_pos: Vec<usize>,
    /// Scratch for the values in the declared order.
    values: RefCell<Vec<f64>>,
    /// Colouring, built on first use if the system does not give values.
    coloring: std::cell::OnceCell<JacobianColoring<SparseM>>,
    /// Whether the system gives values (known after the first Jacobian).
    direct: std::cell::Cell<bool>,
}

impl<'r> SparseEqn<'r> {
    fn new(rhs: &'r dyn Rhs, pattern: &[(usize, usize)]) -> Result<Self, Error> {
        let n = rhs.size();
        let bad = |reason: String| Error::InvalidProblem(format!("Jacobian sparsity pattern: {reason}"));
        if let Some(&(r, c)) = pattern.iter().find(|&&(r, c)| r >= n || c >= n) {
            return Err(bad(format!("entry ({r}, {c}) is outside a {n} x {n} matrix")));
        }
        // Unique entries in CSC order.
        let mut sorted: Vec<(usize, usize)> = pattern.iter().map(|&(r, c)| (c, r)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut col_ptr = vec![0usize; n + 1];
        for &(c, _) in &sorted {
            col_ptr[c + 1] += 1;
        }
        for c in 0..n {
            col_ptr[c + 1] += col_ptr[c];
        }
        let row_idx: Vec<usize> = sorted.iter().map(|&(_, r)| r).collect();
        let csc_pos = pattern.iter().map(|&(r, c)| sorted.binary_search(&(c, r)).unwrap_or(0)).collect::<Vec<_>>();
        let sparsity = SymbolicSparseColMat::new_checked(n, n, col_ptr, None, row_idx);
        let ctx = FaerContext::default();
        let values = RefCell::new(vec![0.0; pattern.len()]);
        let (coloring, direct) = (std::cell::OnceCell::new(), std::cell::Cell::new(true));
        Ok(SparseEqn { rhs, n, ctx, sparsity, csc_pos, values, coloring, direct })
    }
}

macro_rules! sparse_op {
    ($name:ident) => {
        impl Op for $name<'_, '_> {
            type T = f64;
            type V = FaerVec<f64>;
            type M = SparseM;
            type C = FaerContext;
            fn context(&self) -> &FaerContext {
                &self.0.ctx
            }
            fn nstates(&self) -> usize {
                self.0.n
            }
            fn nout(&self) -> usize {
                self.0.n
            }
            fn nparams(&self) -> usize {
                0
            }
        }
    };
}

struct SparseRhsOp<'a, 'r>(&'a SparseEqn<'r>);
struct SparseInitOp<'a, 'r>(&'a SparseEqn<'r>);
sparse_op!(SparseRhsOp);
sparse_op!(SparseInitOp);

impl NonLinearOp for SparseRhsOp<'_, '_> {
    fn call_inplace(&self, x: &FaerVec<f64>, t: f64, y: &mut FaerVec<f64>) {
        y.for_each_batch_host([x], |y, [x], _| self.0.rhs.rhs(t, x, y));
    }
}

impl NonLinearOpJacobian for SparseRhsOp<'_, '_> {
    fn jac_mul_inplace(&self, x: &FaerVec<f64>, t: f64, v: &FaerVec<f64>, y: &mut FaerVec<f64>) {
        y.for_each_batch_host([x, v], |y, [x, v], _| self.0.rhs.jvp(t, x, v, y));
    }
    fn jacobian_sparsity(&self) -> Option<SymbolicSparseColMat<usize>> {
        Some(self.0.sparsity.clone())
    }
    fn jacobian_inplace(&self, x: &FaerVec<f64>, t: f64, y: &mut SparseM) {
        let eqn = self.0;
        if eqn.direct.get() {
            let mut values = eqn.values.borrow_mut();
            values.iter_mut().for_each(|v| *v = 0.0);
            if eqn.rhs.jacobian_values(t, x.slice(), &mut values) {
                for mat in y.inner_mut().iter_mut() {
                    let dst = mat.val_mut();
                    dst.iter_mut().for_each(|v| *v = 0.0);
                    for (&pos, &v) in eqn.csc_pos.iter().zip(values.iter()) {
                        dst[pos] += v;
                    }
                }
                return;
            }
            eqn.direct.set(false);
        }
        // No values from the system: one `jvp` per colour of the pattern.
        let coloring = eqn.coloring.get_or_init(|| {
            let (cp, ri) = (eqn.sparsity.col_ptr(), eqn.sparsity.row_idx());
            let nz: Vec<(usize, usize)> =
                (0..eqn.n).flat_map(|c| ri[cp[c]..cp[c + 1]].iter().map(move |&r| (r, c))).collect();
            JacobianColoring::new(&eqn.sparsity, &nz, eqn.ctx)
        });
        coloring.jacobian_inplace(self, x, t, y);
    }
}

impl ConstantOp for SparseInitOp<'_, '_> {
    fn call_inplace(&self, _t: f64, y: &mut FaerVec<f64>) {
        y.fill(0.0);
    }
}

impl Op for SparseEqn<'_> {
    type T = f64;
    type V = FaerVec<f64>;
    type M = SparseM;
    type C = FaerContext;
    fn context(&self) -> &FaerContext {
        &self.ctx
    }
    fn nstates(&self) -> usize {
        self.n
    }
    fn nout(&self) -> usize {
        self.n
    }
    fn nparams(&self) -> usize {
        0
    }
}

impl<'a, 'r> OdeEquationsRef<'a> for SparseEqn<'r> {
    type Rhs = SparseRhsOp<'a, 'r>;
    type Init = SparseInitOp<'a, 'r>;
    type Mass = ParameterisedOp<'a, UnitCallable<SparseM>>;
    type Root = ParameterisedOp<'a, UnitCallable<SparseM>>;
    type Out = ParameterisedOp<'a, UnitCallable<SparseM>>;
    type Reset = ParameterisedOp<'a, UnitCallable<SparseM>>;
}

impl OdeEquations for SparseEqn<'_> {
    fn rhs(&self) -> <Self as OdeEquationsRef<'_>>::Rhs {
        SparseRhsOp(self)
    }
    fn mass(&self) -> Option<<Self as OdeEquationsRef<'_>>::Mass> {
        None
    }
    fn init(&self) -> <Self as OdeEquationsRef<'_>>::Init {
        SparseInitOp(self)
    }
    fn set_params(&mut self, _p: &FaerVec<f64>) {}
    fn get_params(&self, _p: &mut FaerVec<f64>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Method-of-lines heat equation `u' = (u_{i-1} − 2u_i + u_{i+1})/h²` on
    /// `n` cells with zero boundary values, optionally giving values.
    struct Heat {
        n: usize,
        values: bool,
    }

    impl Rhs for Heat {
        fn size(&self) -> usize {
            self.n
        }
        fn rhs(&self, _t: f64, y: &[f64], dy: &mut [f64]) {
            self.jvp(0.0, y, y, dy);
        }
        fn jvp(&self, _t: f64, _y: &[f64], v: &[f64], out: &mut [f64]) {
            let n = self.n;
            let k = (n + 1) as f64 * (n + 1) as f64;
            for i in 0..n {
                let l = if i > 0 { v[i - 1] } else { 0.0 };
                let r = if i + 1 < n { v[i + 1] } else { 0.0 };
                out[i] = k * (l - 2.0 * v[i] + r);
            }
        }
        fn sparsity(&self) -> Option<Vec<(usize, usize)>> {
            let n = self.n;
            let mut p = Vec::new();
            for i in 0..n {
                if i > 0 {
                    p.push((i, i - 1));
                }
                p.push((i, i));
                if i + 1 < n {
                    p.push((i, i + 1));
                }
            }
            Some(p)
        }
        fn jacobian_values(&self, _t: f64, _y: &[f64], values: &mut [f64]) -> bool {
            if !self.values {
                return false;
            }
            let n = self.n;
            let k = (n + 1) as f64 * (n + 1) as f64;
            let mut j = 0;
            for i in 0..n {
                if i > 0 {
                    values[j] = k;
                    j += 1;
                }
                values[j] = -2.0 * k;
                j += 1;
                if i + 1 < n {
                    values[j] = k;
                    j += 1;
                }
            }
            true
        }
    }

    /// The sparse path (values given, and by colouring) agrees with the
    /// exact solution of the first Fourier mode, `sin(πx) e^{−λt}` with the
    /// discrete eigenvalue `λ = 4(n+1)² sin²(π/(2(n+1)))`, for every implicit method.
    #[test]
    fn sparse_path_matches_the_discrete_fourier_mode() {
        let n = 200;
        let h = 1.0 / (n + 1) as f64;
        let lam = 4.0 / (h * h) * (std::f64::consts::PI * h / 2.0).sin().powi(2);
        let y0: Vec<f64> = (1..=n).map(|i| (std::f64::consts::PI * i as f64 * h).sin()).collect();
        let opts = Options { rtol: 1e-8, atol: 1e-10, ..Options::default() };
        for values in [true, false] {
            let heat = Heat { n, values };
            for method in [Method::Bdf, Method::Esdirk34, Method::TrBdf2] {
                let mut dy = vec![0.0; n];
                heat.rhs(0.0, &y0, &mut dy);
                let y = with_stepper(&heat, method, &opts, &mut |s: &mut dyn Stepper| {
                    s.restart(0.0, &y0, &dy);
                    s.advance(0.1, &mut |_, _, _| Ok(()))?;
                    Ok(s.y().to_vec())
                })
                .unwrap();
                let decay = (-lam * 0.1).exp();
                let err = y.iter().zip(&y0).map(|(a, b)| (a - b * decay).abs()).fold(0.0, f64::max);
                eprintln!("{method:?} values={values}: rel err {:e}", err / decay);
                // Global error at rtol 1e-8: measured 1.5e-8 (BDF), 2.0e-7 (ESDIRK34), 1.0e-6
                // (TR-BDF2, second order); 1e-5 leaves a 10x margin over the worst.
                assert!(err < 1e-5 * decay, "{method:?} values={values}: err {err:e} (scale {decay:e})");
            }
        }
    }

    #[test]
    fn bad_patterns_are_errors() {
        struct Bad;
        impl Rhs for Bad {
            fn size(&self) -> usize {
                100
            }
            fn rhs(&self, _t: f64, _y: &[f64], dy: &mut [f64]) {
                dy.iter_mut().for_each(|v| *v = 0.0);
            }
            fn jvp(&self, _t: f64, _y: &[f64], _v: &[f64], out: &mut [f64]) {
                out.iter_mut().for_each(|v| *v = 0.0);
            }
            fn sparsity(&self) -> Option<Vec<(usize, usize)>> {
                Some(vec![(0, 100)])
            }
        }
        let r = with_stepper(&Bad, Method::Bdf, &Options::default(), &mut |_s: &mut dyn Stepper| Ok(()));
        assert!(matches!(r, Err(Error::InvalidProblem(_))), "{r:?}");
    }
}
