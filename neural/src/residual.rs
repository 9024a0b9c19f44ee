//! The [`Residual`] trait: the seam between couplings and network types.
//!
//! A coupling ([`crate::coupling`]) needs from its learned term only a map
//! `y = g(x; w)` from `n_inputs` features to `n_outputs` values with
//! parameters `w` (a flat slice), and its exact derivatives. [`Mlp`]
//! implements it; so can any other network.
//!
//! # Plugging in your own network
//! Implement the five methods. Parameters arrive as a slice (a view into
//! the solver's or optimiser's vector): never store them. Scratch memory
//! should be preallocated (a `thread_local!` buffer, as [`Mlp`] does, keeps
//! `&self` methods allocation-free and thread-safe). Then check it against
//! finite differences with [`check_residual`]:
//!
//! ```
//! use insilico_neural::{check_residual, Residual};
//! /// y = w0 * x0^2 (a one-parameter "network")
//! struct Square;
//! impl Residual for Square {
//!     fn n_inputs(&self) -> usize { 1 }
//!     fn n_outputs(&self) -> usize { 1 }
//!     fn n_params(&self) -> usize { 1 }
//!     fn eval(&self, w: &[f64], x: &[f64], y: &mut [f64]) { y[0] = w[0] * x[0] * x[0]; }
//!     fn jvp(&self, w: &[f64], x: &[f64], vx: Option<&[f64]>, vw: Option<&[f64]>, y: &mut [f64], jv: &mut [f64]) {
//!         y[0] = w[0] * x[0] * x[0];
//!         jv[0] = 2.0 * w[0] * x[0] * vx.map_or(0.0, |v| v[0]) + x[0] * x[0] * vw.map_or(0.0, |v| v[0]);
//!     }
//!     fn vjp(&self, w: &[f64], x: &[f64], y: &mut [f64], cot: &mut dyn FnMut(&[f64], &mut [f64]),
//!            gx: Option<&mut [f64]>, gw: Option<&mut [f64]>) {
//!         y[0] = w[0] * x[0] * x[0];
//!         let mut gy = [0.0];
//!         cot(y, &mut gy);
//!         if let Some(gx) = gx { gx[0] = 2.0 * w[0] * x[0] * gy[0]; }
//!         if let Some(gw) = gw { gw[0] += x[0] * x[0] * gy[0]; }
//!     }
//! }
//! assert!(check_residual(&Square, &[1.5], &[0.7]) < 1e-8);
//! ```

use std::cell::RefCell;

use crate::mlp::{Mlp, Workspace};

/// A learned map `y = g(x; w)` with exact derivatives.
pub trait Residual: Send + Sync {
    /// Number of inputs (features).
    fn n_inputs(&self) -> usize;
    /// Number of outputs.
    fn n_outputs(&self) -> usize;
    /// Length of the flat parameter slice.
    fn n_params(&self) -> usize;
    /// `y = g(x; w)`.
    fn eval(&self, w: &[f64], x: &[f64], y: &mut [f64]);
    /// `y = g(x; w)` and `jv = (∂g/∂x) vx + (∂g/∂w) vw`; an absent tangent is zero.
    fn jvp(&self, w: &[f64], x: &[f64], vx: Option<&[f64]>, vw: Option<&[f64]>, y: &mut [f64], jv: &mut [f64]);
    /// `y = g(x; w)`, then `gy = cot(y)` from the caller, then
    /// `gx = (∂g/∂x)ᵀ gy` (overwritten, if asked) and `gw += (∂g/∂w)ᵀ gy`
    /// (**accumulated**, if asked). Taking the cotangent as a function of `y`
    /// lets a caller whose cotangent depends on the output (a coupling's
    /// chain rule) pay for one forward pass.
    fn vjp(
        &self,
        w: &[f64],
        x: &[f64],
        y: &mut [f64],
        cot: &mut dyn FnMut(&[f64], &mut [f64]),
        gx: Option<&mut [f64]>,
        gw: Option<&mut [f64]>,
    );
    /// Length of the tape [`Residual::eval_tape`] writes (0, the default:
    /// no tape, and [`Residual::backward_tape`] redoes the forward pass).
    fn tape_len(&self) -> usize {
        0
    }
    /// `y = g(x; w)`, keeping in `tape` (length [`Residual::tape_len`]) what
    /// [`Residual::backward_tape`] needs.
    fn eval_tape(&self, w: &[f64], x: &[f64], y: &mut [f64], tape: &mut [f64]) {
        let _ = tape;
        self.eval(w, x, y)
    }
    /// `gx = (∂g/∂x)ᵀ gy` (overwritten, if asked) and `gw += (∂g/∂w)ᵀ gy`
    /// (accumulated, if asked) at the point a [`Residual::eval_tape`] with the
    /// same `w` and `x` recorded in `tape`.
    fn backward_tape(
        &self,
        w: &[f64],
        x: &[f64],
        tape: &[f64],
        gy: &[f64],
        gx: Option<&mut [f64]>,
        gw: Option<&mut [f64]>,
    ) {
        let _ = tape;
        let no = self.n_outputs();
        let mut copy = |_: &[f64], g: &mut [f64]| g.copy_from_slice(&gy[..g.len()]);
        if no <= 64 {
            let mut y = [0.0f64; 64];
            self.vjp(w, x, &mut y[..no], &mut copy, gx, gw);
        } else {
            let mut y = vec![0.0; no];
            self.vjp(w, x, &mut y, &mut copy, gx, gw);
        }
    }
}

thread_local! {
    static WS: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Runs `f` with this thread's workspace sized for `net` (a fresh one if the
/// thread's is already in use, e.g. by a nested call).
fn with_ws<R>(net: &Mlp, f: impl FnOnce(&mut Workspace) -> R) -> R {
    WS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut ws) => {
            ws.ensure(net);
            f(&mut ws)
        }
        Err(_) => f(&mut Workspace::new(net)),
    })
}

impl Residual for Mlp {
    fn n_inputs(&self) -> usize {
        Mlp::n_inputs(self)
    }
    fn n_outputs(&self) -> usize {
        Mlp::n_outputs(self)
    }
    fn n_params(&self) -> usize {
        Mlp::n_params(self)
    }
    fn eval(&self, w: &[f64], x: &[f64], y: &mut [f64]) {
        with_ws(self, |ws| self.forward(w, x, ws, y));
    }
    fn jvp(&self, w: &[f64], x: &[f64], vx: Option<&[f64]>, vw: Option<&[f64]>, y: &mut [f64], jv: &mut [f64]) {
        with_ws(self, |ws| self.jvp_impl(w, x, vx, vw, ws, y, jv));
    }
    fn vjp(
        &self,
        w: &[f64],
        x: &[f64],
        y: &mut [f64],
        cot: &mut dyn FnMut(&[f64], &mut [f64]),
        gx: Option<&mut [f64]>,
        gw: Option<&mut [f64]>,
    ) {
        with_ws(self, |ws| {
            self.forward(w, x, ws, y);
            let mut gy = [0.0f64; 64];
            let no = y.len();
            if no <= gy.len() {
                cot(y, &mut gy[..no]);
                self.backward(w, &gy[..no], ws, gx, gw);
            } else {
                let mut gy = vec![0.0; no];
                cot(y, &mut gy);
                self.backward(w, &gy, ws, gx, gw);
            }
        });
    }
    fn tape_len(&self) -> usize {
        Mlp::tape_len(self)
    }
    fn eval_tape(&self, w: &[f64], x: &[f64], y: &mut [f64], tape: &mut [f64]) {
        if let Some(v) = self.small_shape().and_then(|(h1, h2)| crate::small::forward(h1, h2, w, x[0], tape)) {
            y[0] = v;
            return;
        }
        with_ws(self, |ws| {
            self.forward(w, x, ws, y);
            self.save_tape(ws, tape);
        })
    }
    fn backward_tape(
        &self,
        w: &[f64],
        x: &[f64],
        tape: &[f64],
        gy: &[f64],
        gx: Option<&mut [f64]>,
        gw: Option<&mut [f64]>,
    ) {
        if let Some((h1, h2)) = self.small_shape() {
            let np = crate::small::n_params(h1, h2);
            if gw.as_ref().is_none_or(|g| g.len() >= np) && w.len() >= np && tape.len() >= h1 + h2 {
                // The kernel runs: the shape is supported and the lengths were checked.
                let d = crate::small::backward(h1, h2, w, x[0], tape, gy[0], gw);
                if let Some(gx) = gx {
                    gx[0] = d.unwrap_or(f64::NAN);
                }
                return;
            }
        }
        with_ws(self, |ws| {
            self.load_tape(x, tape, ws);
            self.backward(w, gy, ws, gx, gw);
        })
    }
}

/// Largest relative error (`|exact − fd| / max(|fd|, 1)`) of a residual's
/// `jvp` and `vjp` against central finite differences at `(w, x)`.
pub fn check_residual(r: &dyn Residual, w: &[f64], x: &[f64]) -> f64 {
    let (ni, no, np) = (r.n_inputs(), r.n_outputs(), r.n_params());
    let h = 1e-6;
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
    let mut err: f64 = 0.0;
    let mut y = vec![0.0; no];
    let mut yp = vec![0.0; no];
    let mut ym = vec![0.0; no];
    let mut jv = vec![0.0; no];
    let mut e_all = vec![0.0; ni + np];
    for k in 0..ni + np {
        e_all.iter_mut().for_each(|v| *v = 0.0);
        e_all[k] = 1.0;
        let (mut xp, mut xm, mut wp, mut wm) = (x.to_vec(), x.to_vec(), w.to_vec(), w.to_vec());
        if k < ni {
            xp[k] += h;
            xm[k] -= h;
        } else {
            wp[k - ni] += h;
            wm[k - ni] -= h;
        }
        r.eval(&wp, &xp, &mut yp);
        r.eval(&wm, &xm, &mut ym);
        r.jvp(w, x, Some(&e_all[..ni]), Some(&e_all[ni..]), &mut y, &mut jv);
        for i in 0..no {
            let fd = (yp[i] - ym[i]) / (2.0 * h);
            err = err.max(rel(jv[i], fd));
            // vjp with unit cotangent i gives row i of the Jacobian.
            let mut gx = vec![0.0; ni];
            let mut gw = vec![0.0; np];
            let mut unit = |_: &[f64], gy: &mut [f64]| {
                gy.iter_mut().for_each(|g| *g = 0.0);
                gy[i] = 1.0;
            };
            r.vjp(w, x, &mut y, &mut unit, Some(&mut gx), Some(&mut gw));
            let exact = if k < ni { gx[k] } else { gw[k - ni] };
            err = err.max(rel(exact, fd));
        }
    }
    err
}
