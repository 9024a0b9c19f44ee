//! A thin, object-safe wrapper over diffsol's steppers.
//!
//! The solve layer integrates piecewise-smooth problems segment by segment:
//! between breakpoints it needs only "restart at (t, y) and advance to t1,
//! reporting every accepted step". [`Stepper`] is exactly that, implemented
//! for every diffsol method, so the drivers in [`crate::solve`] and
//! [`crate::gradient`] are written once.

use diffsol::{NalgebraLU, NalgebraMat, NalgebraVec, OdeBuilder, OdeSolverMethod, OdeSolverStopReason};

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

struct Wrap<'a, Eqn, S> {
    solver: S,
    _eqn: std::marker::PhantomData<&'a Eqn>,
    steps: usize,
    max_steps: usize,
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
    Eqn: diffsol::OdeEquations<T = f64, V = NalgebraVec<f64>> + 'a,
    S: OdeSolverMethod<'a, Eqn>,
{
    fn restart(&mut self, t: f64, y: &[f64], dy: &[f64]) {
        let st = self.solver.state_mut();
        st.y.batch_as_mut_slice(0).copy_from_slice(y);
        st.dy.batch_as_mut_slice(0).copy_from_slice(dy);
        *st.t = t;
    }

    fn advance(&mut self, t1: f64, on_step: &mut OnStep) -> Result<(), Error> {
        let t0 = self.solver.state().t;
        if t1 <= t0 {
            return Ok(());
        }
        if t1 - t0 <= 1e3 * f64::EPSILON * (t0.abs() + t1.abs() + 1.0) {
            // A round-off sliver between two breakpoints (diffsol would refuse
            // the stop time): one explicit Euler step is exact to round-off.
            let st = self.solver.state_mut();
            let dt = t1 - t0;
            let dy: Vec<f64> = st.dy.batch_as_slice(0).to_vec();
            for (y, d) in st.y.batch_as_mut_slice(0).iter_mut().zip(dy) {
                *y += dt * d;
            }
            *st.t = t1;
            return Ok(());
        }
        // A step size carried over from a long, smooth stretch may be far
        // too large right after a dose: restart cautiously.
        {
            let st = self.solver.state_mut();
            let span = t1 - t0;
            if st.h.is_nan() || *st.h <= 0.0 || *st.h > span {
                *st.h = span;
            }
        }
        self.solver.set_stop_time(t1).map_err(|e| diffsol_err(e, t0))?;
        loop {
            let t_prev = self.solver.state().t;
            let reason = self.solver.step().map_err(|e| diffsol_err(e, self.solver.state().t))?;
            self.steps += 1;
            let t_now = self.solver.state().t;
            if !self.solver.state().y.batch_as_slice(0).iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite { t: t_now });
            }
            if self.steps > self.max_steps {
                return Err(Error::MaxSteps { t: t_now, max_steps: self.max_steps });
            }
            let solver = &self.solver;
            let interp = |s: f64, out: &mut [f64]| -> Result<(), Error> {
                if s == t_now {
                    out.copy_from_slice(solver.state().y.batch_as_slice(0));
                    return Ok(());
                }
                let v = solver.interpolate(s).map_err(|e| diffsol_err(e, s))?;
                out.copy_from_slice(v.batch_as_slice(0));
                Ok(())
            };
            on_step(t_prev, t_now, &interp)?;
            if let OdeSolverStopReason::TstopReached = reason {
                return Ok(());
            }
        }
    }

    fn y(&self) -> &[f64] {
        self.solver.state().y.batch_as_slice(0)
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
}

/// Builds a diffsol problem for `rhs` with the method and tolerances asked
/// for and hands a [`Stepper`] over it to `body`.
pub(crate) fn with_stepper<R>(
    rhs: &dyn Rhs,
    method: Method,
    opts: &Options,
    body: &mut dyn FnMut(&mut dyn Stepper) -> Result<R, Error>,
) -> Result<R, Error> {
    let n = rhs.size();
    let builder = OdeBuilder::<NalgebraMat<f64>>::new()
        .rtol(opts.rtol)
        .atol(vec![opts.atol; n])
        .rhs_implicit(
            |x: &[f64], _p: &[f64], t: f64, y: &mut [f64]| rhs.rhs(t, x, y),
            |x: &[f64], _p: &[f64], t: f64, v: &[f64], y: &mut [f64]| rhs.jvp(t, x, v, y),
        )
        .init(|_p: &[f64], _t: f64, y: &mut [f64]| y.iter_mut().for_each(|v| *v = 0.0), n);
    let problem = builder.build().map_err(|e| Error::Solver { t: 0.0, reason: e.to_string() })?;
    let max_steps = opts.max_steps;
    let mk = |e: diffsol::error::DiffsolError| Error::Solver { t: 0.0, reason: e.to_string() };
    match method {
        Method::Bdf => {
            let s = problem.bdf::<NalgebraLU<f64>>().map_err(mk)?;
            body(&mut Wrap { solver: s, _eqn: std::marker::PhantomData, steps: 0, max_steps })
        }
        Method::Esdirk34 => {
            let s = problem.esdirk34::<NalgebraLU<f64>>().map_err(mk)?;
            body(&mut Wrap { solver: s, _eqn: std::marker::PhantomData, steps: 0, max_steps })
        }
        Method::TrBdf2 => {
            let s = problem.tr_bdf2::<NalgebraLU<f64>>().map_err(mk)?;
            body(&mut Wrap { solver: s, _eqn: std::marker::PhantomData, steps: 0, max_steps })
        }
        Method::Tsit45 => {
            let s = problem.tsit45().map_err(mk)?;
            body(&mut Wrap { solver: s, _eqn: std::marker::PhantomData, steps: 0, max_steps })
        }
    }
}
