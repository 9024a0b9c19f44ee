//! Backend 4: the fast DOPRI5 discrete-adjoint path of `fit`
//! ([`insilico_neural::fast`]) for any compiled model, generated from its
//! right-hand-side program.
//!
//! [`ModelSystem`] implements [`FastRhs`] by reverse-mode differentiation of
//! the same straight-line [`Program`](crate::tape::Program) that computes
//! `f`: [`FastRhs::rhs_tape`] runs it and keeps every register (and each
//! network's hidden activations, through the network's own tape) as the
//! stage's tape; [`FastRhs::vjp_tape`] sweeps the instructions backwards once,
//! giving `(∂f/∂x)ᵀw` and `(∂f/∂θ)ᵀw` together, network weights through the
//! network's exact VJP (the specialised kernels of 1→h→h→1 tanh
//! [`Mlp`](insilico_neural::Mlp)s included).
//! Each instruction's local derivative is the one the symbolic
//! differentiation writes, so the result equals the model's exact Jacobian
//! products to round-off (tested against them and against central
//! differences in `tests`).

use std::cell::RefCell;

use insilico_neural::fast::FastRhs;
use insilico_neural::Residual;
use insilico_solvers::System;

use crate::expr::{eval_binary, eval_unary, powi, sigmoid, Op, Var};
use crate::system::ModelSystem;
use crate::tape::{Env, Ins};

thread_local! {
    static REGS: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
    static BAR: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with a zeroed thread-local buffer of `n` values from `cell`
/// (a fresh one on re-entrant use).
fn with_buf<R>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<f64>>>,
    n: usize,
    f: impl FnOnce(&mut [f64]) -> R,
) -> R {
    cell.with(|c| match c.try_borrow_mut() {
        Ok(mut b) => {
            if b.len() < n {
                b.resize(n, 0.0);
            }
            let b = &mut b[..n];
            b.iter_mut().for_each(|v| *v = 0.0);
            f(b)
        }
        Err(_) => f(&mut vec![0.0; n]),
    })
}

/// Where each network instruction of the rhs program keeps its tape.
#[derive(Debug, Clone, Default)]
pub(crate) struct RhsTapeLayout {
    /// Per instruction: offset of its network tape (`usize::MAX`: not a network).
    pub(crate) net_tape: Vec<usize>,
    /// Registers plus network tapes.
    pub(crate) len: usize,
    /// False when the program holds something the reverse sweep does not
    /// differentiate (a network derivative node): then no fast form.
    pub(crate) supported: bool,
}

impl RhsTapeLayout {
    pub(crate) fn new(code: &[Ins], networks: &[crate::model::Network]) -> RhsTapeLayout {
        let mut len = code.len();
        let mut supported = true;
        let net_tape = code
            .iter()
            .map(|ins| match ins {
                Ins::Net { net, grad: None, args, .. } => {
                    let mlp = &networks[*net as usize].mlp;
                    if args.len() != mlp.n_inputs() || mlp.n_outputs() > 64 || mlp.n_inputs() > 64 {
                        supported = false;
                    }
                    let off = len;
                    len += Residual::tape_len(mlp);
                    off
                }
                Ins::Net { .. } => {
                    supported = false;
                    usize::MAX
                }
                _ => usize::MAX,
            })
            .collect();
        RhsTapeLayout { net_tape, len, supported }
    }
}

impl ModelSystem {
    /// The fast-path form of this model ([`FastRhs`], this module), when its
    /// right-hand side can be differentiated by the reverse sweep and it has
    /// no exogenous inputs (the fast path has none).
    pub fn fast(&self) -> Option<&dyn FastRhs> {
        (self.compiled().rhs_layout.supported && self.model().inputs().is_empty()).then_some(self as &dyn FastRhs)
    }

    /// Runs the rhs program into `tape` (registers, then network tapes).
    fn forward_tape(&self, t: f64, x: &[f64], p: &[f64], tape: &mut [f64]) {
        let c = self.compiled();
        let nets = c.model.networks();
        let env = Env { x, p, u: &[], cov: self.covariates(), t };
        let n = c.rhs.code.len();
        let (regs, net_tapes) = tape.split_at_mut(n);
        for (k, ins) in c.rhs.code.iter().enumerate() {
            regs[k] = match ins {
                Ins::Const(v) => *v,
                Ins::Leaf(v) => leaf(&env, *v),
                Ins::Unary(op, a) => eval_unary(op, regs[*a as usize]),
                Ins::Binary(op, a, b) => eval_binary(op, regs[*a as usize], regs[*b as usize]),
                Ins::Select(cnd, a, b) => {
                    if regs[*cnd as usize] != 0.0 {
                        regs[*a as usize]
                    } else {
                        regs[*b as usize]
                    }
                }
                Ins::Net { net, out, args, .. } => {
                    let nw = &nets[*net as usize];
                    let mlp = &nw.mlp;
                    let (mut xa, mut y) = ([0.0f64; 64], [0.0f64; 64]);
                    for (d, &r) in xa.iter_mut().zip(args) {
                        *d = regs[r as usize];
                    }
                    let off = c.rhs_layout.net_tape[k] - n;
                    let tl = Residual::tape_len(mlp);
                    let Some(w) = p.get(nw.offset..nw.offset + mlp.n_params()) else {
                        regs[k] = f64::NAN;
                        continue;
                    };
                    Residual::eval_tape(
                        mlp,
                        w,
                        &xa[..args.len()],
                        &mut y[..mlp.n_outputs()],
                        &mut net_tapes[off..off + tl],
                    );
                    y[*out as usize]
                }
            };
        }
    }

    /// The reverse sweep over a tape written by [`ModelSystem::forward_tape`]:
    /// `gx = (∂f/∂x)ᵀ w` (overwritten), `gp += (∂f/∂θ)ᵀ w`.
    #[allow(clippy::too_many_arguments)]
    fn reverse(&self, p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64], tape: &[f64]) {
        let c = self.compiled();
        let nets = c.model.networks();
        let n = c.rhs.code.len();
        let (regs, net_tapes) = tape.split_at(n);
        gx.iter_mut().for_each(|v| *v = 0.0);
        with_buf(&BAR, n, |bar| {
            for (&r, &wi) in c.rhs.roots.iter().zip(w) {
                bar[r as usize] += wi;
            }
            for k in (0..n).rev() {
                let a = bar[k];
                if a == 0.0 {
                    continue;
                }
                match &c.rhs.code[k] {
                    Ins::Const(_) => {}
                    Ins::Leaf(Var::State(i)) => {
                        if let Some(g) = gx.get_mut(*i as usize) {
                            *g += a;
                        }
                    }
                    Ins::Leaf(Var::Param(i)) => {
                        if let Some(g) = gp.get_mut(*i as usize) {
                            *g += a;
                        }
                    }
                    Ins::Leaf(_) => {}
                    Ins::Unary(op, r) => {
                        let (x, f) = (regs[*r as usize], regs[k]);
                        let d = match op {
                            Op::Neg(_) => -1.0,
                            Op::Powi(_, m) => *m as f64 * powi(x, m - 1),
                            Op::Exp(_) => f,
                            Op::Log(_) => 1.0 / x,
                            Op::Sqrt(_) => 1.0 / (2.0 * f),
                            Op::Abs(_) => {
                                if x > 0.0 {
                                    1.0
                                } else if x < 0.0 {
                                    -1.0
                                } else {
                                    0.0
                                }
                            }
                            Op::Tanh(_) => 1.0 - f * f,
                            Op::Softplus(_) => sigmoid(x),
                            Op::Sigmoid(_) => f * (1.0 - f),
                            _ => 0.0,
                        };
                        bar[*r as usize] += a * d;
                    }
                    Ins::Binary(op, l, r) => {
                        let (x, y, f) = (regs[*l as usize], regs[*r as usize], regs[k]);
                        let (dl, dr) = match op {
                            Op::Add(..) => (1.0, 1.0),
                            Op::Sub(..) => (1.0, -1.0),
                            Op::Mul(..) => (y, x),
                            Op::Div(..) => (1.0 / y, -f / y),
                            Op::Pow(..) => {
                                let db = if f != 0.0 { f * x.ln() } else { 0.0 };
                                (y * x.powf(y - 1.0), db)
                            }
                            Op::Min(..) => {
                                if x <= y {
                                    (1.0, 0.0)
                                } else {
                                    (0.0, 1.0)
                                }
                            }
                            Op::Max(..) => {
                                if y <= x {
                                    (1.0, 0.0)
                                } else {
                                    (0.0, 1.0)
                                }
                            }
                            _ => (0.0, 0.0),
                        };
                        bar[*l as usize] += a * dl;
                        bar[*r as usize] += a * dr;
                    }
                    Ins::Select(cnd, l, r) => {
                        if regs[*cnd as usize] != 0.0 {
                            bar[*l as usize] += a;
                        } else {
                            bar[*r as usize] += a;
                        }
                    }
                    Ins::Net { net, out, args, .. } => {
                        let nw = &nets[*net as usize];
                        let mlp = &nw.mlp;
                        let np = mlp.n_params();
                        let (Some(wts), true) = (p.get(nw.offset..nw.offset + np), gp.len() >= nw.offset + np) else {
                            continue;
                        };
                        let (mut xa, mut gy, mut ga) = ([0.0f64; 64], [0.0f64; 64], [0.0f64; 64]);
                        for (d, &r) in xa.iter_mut().zip(args) {
                            *d = regs[r as usize];
                        }
                        gy[*out as usize] = a;
                        let off = c.rhs_layout.net_tape[k] - n;
                        let tl = Residual::tape_len(mlp);
                        let na = args.len();
                        Residual::backward_tape(
                            mlp,
                            wts,
                            &xa[..na],
                            &net_tapes[off..off + tl],
                            &gy[..mlp.n_outputs()],
                            Some(&mut ga[..na]),
                            Some(&mut gp[nw.offset..nw.offset + np]),
                        );
                        for (&r, g) in args.iter().zip(&ga[..na]) {
                            bar[r as usize] += g;
                        }
                    }
                }
            }
        })
    }
}

fn leaf(env: &Env<'_>, v: Var) -> f64 {
    let get = |s: &[f64], i: u32| s.get(i as usize).copied().unwrap_or(f64::NAN);
    match v {
        Var::State(i) => get(env.x, i),
        Var::Param(i) => get(env.p, i),
        // The fast path has no exogenous inputs.
        Var::Input(_) => 0.0,
        Var::Covariate(i) => get(env.cov, i),
        Var::Time => env.t,
    }
}

impl FastRhs for ModelSystem {
    fn nstates(&self) -> usize {
        System::nstates(self)
    }
    fn nparams(&self) -> usize {
        System::nparams(self)
    }
    fn rhs(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64]) {
        System::rhs(self, t, x, &[], p, dx)
    }
    fn vjp_both(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        let len = self.compiled().rhs_layout.len;
        with_buf(&REGS, len, |tape| {
            self.forward_tape(t, x, p, tape);
            self.reverse(p, w, gx, gp, tape);
        })
    }
    fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
        System::output(self, k, t, x, p)
    }
    fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        System::output_grad(self, k, t, x, p, gx, gp)
    }
    fn tape_len(&self) -> usize {
        self.compiled().rhs_layout.len
    }
    fn rhs_tape(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64], tape: &mut [f64]) {
        self.forward_tape(t, x, p, tape);
        for (d, &r) in dx.iter_mut().zip(&self.compiled().rhs.roots) {
            *d = tape[r as usize];
        }
    }
    fn vjp_tape(&self, _t: f64, _x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64], tape: &[f64]) {
        self.reverse(p, w, gx, gp, tape)
    }
}
