//! Couplings: a mechanistic [`System`] plus a learned [`Residual`], itself a
//! [`System`] with exact derivatives, so that `solve` and `gradient` work
//! through it unchanged.
//!
//! Every coupling's parameter vector is the wrapped system's parameters
//! followed by the network's flat weights: `θ = [θ_mech..., w...]`. The
//! network sees [`Feature`]s of the state (a state, an output such as a
//! concentration, an exogenous input, or time), each divided by a fixed
//! scale.
//!
//! | coupling | learned term | invariants kept | non-negativity kept |
//! |---|---|---|---|
//! | [`FluxResidual`] | extra fluxes `s·a(x_from)·softplus(g_j)` along declared channels `from → to` (`a(x) = x`, or the bounded `x/(1+\|x\|/h)`: [`ChannelForm`]) | every declared invariant `c` with `c_from = c_to` (`c_from = 0` for a channel out of the system) | yes, if the wrapped system keeps it |
//! | [`RateModulation`] | `θ_k → θ_k·exp(g_k)` for chosen (rate) parameters | all of the wrapped system's | yes, if the wrapped system keeps it for every positive rate |
//! | [`ProjectedResidual`] | `α·P·g`, `P = I − Cᵀ(CCᵀ)⁻¹C` | all of the wrapped system's | no |
//! | [`FreeResidual`] | `α·g` | none (reported by [`Coupling::broken_invariants`]) | no |
//!
//! Kept invariants hold to round-off under any Runge–Kutta or linear
//! multistep method, because the coupled right-hand side is orthogonal to
//! them for every state and weight.
//!
//! # Example: a learned elimination pathway
//! ```
//! use insilico_neural::{Activation, Channel, Coupling, Feature, FluxResidual, Mlp};
//! use insilico_solvers::{check_derivatives, System};
//! use insilico_mechanistic::PkModel;
//!
//! // One-compartment oral PK (depot, central, eliminated) whose clearance is
//! // learned: flux central -> eliminated = 0.1 * A_c * softplus(nn(C / 5)).
//! let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
//! let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh).unwrap();
//! let hybrid = FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![Channel::new(1, Some(2), 0.1)]).unwrap();
//! assert_eq!(hybrid.kept_invariants().len(), 1); // total amount is conserved
//! let mut p = vec![1.0, 0.0, 30.0]; // ka, CL (0: all elimination is learned), V
//! p.extend(hybrid.net().init(1, 0.5));
//! let rep = check_derivatives(&hybrid, 0.0, &[50.0, 40.0, 10.0], &[], &p, 1e-6);
//! assert!(rep.max_rel_err < 1e-6);
//! ```

use std::cell::RefCell;

use insilico_solvers::System;

use crate::mlp::{sigmoid, softplus};
use crate::residual::Residual;
use crate::NeuralError;

/// A network input: a quantity of the wrapped system, divided by a scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feature {
    /// State `x_i`.
    State(usize),
    /// System output `k` (e.g. a concentration; see [`System::output`]).
    Output(usize),
    /// Exogenous input `u_i`.
    Input(usize),
    /// Time `t`.
    Time,
}

/// How a [`Channel`]'s flux depends on its source amount `x = x_from`.
///
/// The flux is `r = s · a(x) · softplus(g(φ))` with the network output `g`
/// and the gate `a` below. Both gates vanish at `x = 0`, are non-negative for
/// `x ≥ 0` and have `a'(0) = 1`, so `s · softplus(g)` is the rate constant of
/// the flux at small amounts in both forms.
///
/// | form | `a(x)` | `a'(x)` | at large `x` |
/// |---|---|---|---|
/// | [`ChannelForm::Rate`] | `x` | `1` | the flux grows like `x` times the network's rate at the far end (a tanh network tends to a constant: linear elimination) |
/// | [`ChannelForm::Saturating`] | `x / (1 + \|x\|/h)` | `1 / (1 + \|x\|/h)²` | the flux is bounded by `s · h · softplus(g)` (capacity-limited) |
///
/// With a bounded network (tanh hidden layers saturate, so `g` tends to a
/// constant as the features grow), the rate form extrapolates to a constant
/// rate and the saturating form to a constant flux.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ChannelForm {
    /// `r = s · x · softplus(g)`: the network gives a rate constant (the default).
    #[default]
    Rate,
    /// `r = s · x / (1 + |x|/half) · softplus(g)`: the gate saturates at the
    /// source amount `half` (same units as the state), so the network shapes
    /// a flux that stays below `s · half · softplus(g)`.
    Saturating {
        /// Source amount at which the gate is half of `x` (> 0, finite).
        half: f64,
    },
}

/// A channel of a [`FluxResidual`]: a learned flux from state `from` to
/// state `to` (or out of the system when `None`), scaled by `scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Channel {
    /// Source state (the flux vanishes with it).
    pub from: usize,
    /// Sink state, or `None` for a flux out of the system.
    pub to: Option<usize>,
    /// Rate scale `s` (1/time): flux = `s · a(x_from) · softplus(g)`.
    pub scale: f64,
    /// The gate `a` (see [`ChannelForm`]; [`ChannelForm::Rate`] by default).
    pub form: ChannelForm,
}

impl Channel {
    /// A rate-form channel `from → to` with rate scale `scale`:
    /// flux = `scale · x_from · softplus(g)`.
    pub fn new(from: usize, to: Option<usize>, scale: f64) -> Self {
        Channel { from, to, scale, form: ChannelForm::Rate }
    }

    /// The same channel with the gate `form`.
    ///
    /// ```
    /// use insilico_neural::{Channel, ChannelForm};
    /// let c = Channel::new(1, Some(2), 0.2).with_form(ChannelForm::Saturating { half: 50.0 });
    /// let (a, da) = c.gate(50.0);
    /// assert_eq!((a, da), (25.0, 0.25)); // x / (1 + x/h) and its derivative at x = h
    /// assert!(c.gate(1e9).0 < 50.0); // bounded by h
    /// ```
    pub fn with_form(mut self, form: ChannelForm) -> Self {
        self.form = form;
        self
    }

    /// The gate `a(x)` and its derivative `a'(x)` at source amount `x`.
    #[inline]
    pub fn gate(&self, x: f64) -> (f64, f64) {
        match self.form {
            ChannelForm::Rate => (x, 1.0),
            ChannelForm::Saturating { half } => {
                let q = 1.0 / (1.0 + x.abs() / half);
                (x * q, q * q)
            }
        }
    }

    /// The flux `s · a(x) · softplus(g)` for source amount `x` and network output `g`.
    #[inline]
    pub fn flux(&self, x: f64, g: f64) -> f64 {
        self.scale * self.gate(x).0 * softplus(g)
    }

    fn valid(&self, n: usize) -> bool {
        let form_ok = match self.form {
            ChannelForm::Rate => true,
            ChannelForm::Saturating { half } => half.is_finite() && half > 0.0,
        };
        self.from < n
            && self.to.is_none_or(|t| t < n && t != self.from)
            && self.scale.is_finite()
            && self.scale > 0.0
            && form_ok
    }
}

/// What every coupling declares about conservation and positivity.
pub trait Coupling: System {
    /// The wrapped system's invariants that the coupled system keeps (also
    /// what [`System::invariants`] returns).
    fn kept_invariants(&self) -> Vec<Vec<f64>>;
    /// The wrapped system's invariants that the learned term breaks.
    fn broken_invariants(&self) -> Vec<Vec<f64>>;
    /// Whether non-negative states stay non-negative (given that the
    /// wrapped system keeps them so).
    fn keeps_positivity(&self) -> bool;
    /// Number of parameters of the wrapped system (the weights follow them).
    fn n_mech_params(&self) -> usize;
    /// One line naming the coupling, its channels or targets, and what it keeps.
    fn describe(&self) -> String;
}

thread_local! {
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` zeroed scratch values (this thread's buffer; a fresh
/// one when it is already borrowed by an enclosing call).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            let s = &mut buf[..len];
            s.iter_mut().for_each(|v| *v = 0.0);
            f(s)
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// The wrapped system, the network and its features: shared by every coupling.
#[derive(Debug, Clone)]
struct Core<S, R> {
    sys: S,
    net: R,
    features: Vec<(Feature, f64)>,
    m0: usize,
    n: usize,
}

impl<S: System, R: Residual> Core<S, R> {
    fn new(sys: S, net: R, features: Vec<(Feature, f64)>, n_out: usize, what: &str) -> Result<Self, NeuralError> {
        let (n, m0) = (sys.nstates(), sys.nparams());
        if net.n_inputs() != features.len() {
            return Err(NeuralError::Shape(format!(
                "{what}: the network has {} inputs but {} features are given",
                net.n_inputs(),
                features.len()
            )));
        }
        if net.n_outputs() != n_out {
            return Err(NeuralError::Shape(format!(
                "{what}: the network has {} outputs, the coupling needs {n_out}",
                net.n_outputs()
            )));
        }
        for (f, s) in &features {
            let ok = match *f {
                Feature::State(i) => i < n,
                Feature::Output(k) => k < sys.noutputs(),
                Feature::Input(i) => i < sys.ninputs(),
                Feature::Time => true,
            };
            if !ok {
                return Err(NeuralError::Shape(format!("{what}: feature {f:?} does not exist in the wrapped system")));
            }
            if !(s.is_finite() && *s != 0.0) {
                return Err(NeuralError::Shape(format!("{what}: feature {f:?} has scale {s}; use a finite non-zero")));
            }
        }
        Ok(Core { sys, net, features, m0, n })
    }

    fn features(&self, t: f64, x: &[f64], u: &[f64], p0: &[f64], out: &mut [f64]) {
        for (o, (f, s)) in out.iter_mut().zip(&self.features) {
            let raw = match *f {
                Feature::State(i) => x[i],
                Feature::Output(k) => self.sys.output(k, t, x, p0),
                Feature::Input(i) => u[i],
                Feature::Time => t,
            };
            *o = raw / s;
        }
    }

    /// `out = Φx vx + Φp vp` (either may be absent). `scratch` needs `n + m0` values.
    #[allow(clippy::too_many_arguments)]
    fn features_jvp(
        &self,
        t: f64,
        x: &[f64],
        p0: &[f64],
        vx: Option<&[f64]>,
        vp: Option<&[f64]>,
        scratch: &mut [f64],
        out: &mut [f64],
    ) {
        let (n, m0) = (self.n, self.m0);
        for (o, (f, s)) in out.iter_mut().zip(&self.features) {
            *o = match *f {
                Feature::State(i) => vx.map_or(0.0, |v| v[i]) / s,
                Feature::Output(k) => {
                    let (gx, gp) = scratch[..n + m0].split_at_mut(n);
                    gx.iter_mut().for_each(|v| *v = 0.0);
                    gp.iter_mut().for_each(|v| *v = 0.0);
                    self.sys.output_grad(k, t, x, p0, gx, gp);
                    let a: f64 = vx.map_or(0.0, |v| gx.iter().zip(v).map(|(g, v)| g * v).sum());
                    let b: f64 = vp.map_or(0.0, |v| gp.iter().zip(v).map(|(g, v)| g * v).sum());
                    (a + b) / s
                }
                Feature::Input(_) | Feature::Time => 0.0,
            };
        }
    }

    /// `gx += Φxᵀ gφ`, `gp += Φpᵀ gφ` (either may be absent). `scratch`: `2 (n + m0)`.
    #[allow(clippy::too_many_arguments)]
    fn features_vjp(
        &self,
        t: f64,
        x: &[f64],
        p0: &[f64],
        gphi: &[f64],
        gx: Option<&mut [f64]>,
        gp: Option<&mut [f64]>,
        scratch: &mut [f64],
    ) {
        let (n, m0) = (self.n, self.m0);
        let (acc, tmp) = scratch[..2 * (n + m0)].split_at_mut(n + m0);
        let (sx, sp) = acc.split_at_mut(n);
        sx.iter_mut().for_each(|v| *v = 0.0);
        sp.iter_mut().for_each(|v| *v = 0.0);
        for (g, (f, s)) in gphi.iter().zip(&self.features) {
            let c = g / s;
            match *f {
                Feature::State(i) => sx[i] += c,
                Feature::Output(k) => {
                    let (tx, tp) = tmp.split_at_mut(n);
                    tx.iter_mut().for_each(|v| *v = 0.0);
                    tp.iter_mut().for_each(|v| *v = 0.0);
                    self.sys.output_grad(k, t, x, p0, tx, tp);
                    for (a, b) in sx.iter_mut().zip(tx.iter()) {
                        *a += c * b;
                    }
                    for (a, b) in sp.iter_mut().zip(tp.iter()) {
                        *a += c * b;
                    }
                }
                Feature::Input(_) | Feature::Time => {}
            }
        }
        if let Some(gx) = gx {
            for (a, b) in gx.iter_mut().zip(sx.iter()) {
                *a += b;
            }
        }
        if let Some(gp) = gp {
            for (a, b) in gp.iter_mut().zip(sp.iter()) {
                *a += b;
            }
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names = self.sys.param_names();
        names.extend((0..self.net.n_params()).map(|i| format!("w{i}")));
        names
    }
}

macro_rules! delegate_outputs {
    () => {
        fn ninputs(&self) -> usize {
            self.core.sys.ninputs()
        }
        fn noutputs(&self) -> usize {
            self.core.sys.noutputs()
        }
        fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
            self.core.sys.output(k, t, x, &p[..self.core.m0])
        }
        fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
            let m0 = self.core.m0;
            self.core.sys.output_grad(k, t, x, &p[..m0], gx, &mut gp[..m0]);
        }
        fn state_names(&self) -> Vec<String> {
            self.core.sys.state_names()
        }
        fn param_names(&self) -> Vec<String> {
            self.core.names()
        }
        fn invariants(&self) -> Vec<Vec<f64>> {
            self.kept_invariants()
        }
    };
}

// ---------------------------------------------------------------------------
// Flux residual

/// Learned fluxes along declared channels: `dx/dt = f(x) + Σ_j r_j (e_to − e_from)`
/// with `r_j = s_j · a_j(x_from) · softplus(g_j(φ))`, where the gate `a_j` is
/// the identity (rate form) or the bounded `x/(1 + |x|/h)` (saturating form,
/// see [`ChannelForm`]). Each flux is non-negative and vanishes with its
/// source, so non-negative states stay non-negative; an invariant `c` is kept
/// when `c_from = c_to`.
#[derive(Debug, Clone)]
pub struct FluxResidual<S, R> {
    core: Core<S, R>,
    channels: Vec<Channel>,
}

impl<S: System, R: Residual> FluxResidual<S, R> {
    /// Wraps `sys` with `net` (one output per channel) fed by `features`
    /// (each a [`Feature`] and the scale it is divided by).
    pub fn new(sys: S, net: R, features: Vec<(Feature, f64)>, channels: Vec<Channel>) -> Result<Self, NeuralError> {
        let n = sys.nstates();
        for c in &channels {
            if !c.valid(n) {
                return Err(NeuralError::Shape(format!(
                    "flux residual: channel {c:?} is invalid (states are 0..{n}, from ≠ to, scale > 0, \
                     saturation half > 0)"
                )));
            }
        }
        let core = Core::new(sys, net, features, channels.len(), "flux residual")?;
        Ok(FluxResidual { core, channels })
    }
    /// The wrapped system.
    pub fn system(&self) -> &S {
        &self.core.sys
    }
    /// The network.
    pub fn net(&self) -> &R {
        &self.core.net
    }
    /// The channels.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }
    /// The learned fluxes `r_j` at `(t, x, u, θ)` (appended to `out`).
    pub fn fluxes(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], out: &mut Vec<f64>) {
        let (p0, w) = p.split_at(self.core.m0);
        let mut phi = vec![0.0; self.core.features.len()];
        self.core.features(t, x, u, p0, &mut phi);
        let mut g = vec![0.0; self.channels.len()];
        self.core.net.eval(w, &phi, &mut g);
        for (c, gj) in self.channels.iter().zip(&g) {
            out.push(c.flux(x[c.from], *gj));
        }
    }
    /// The learned rate constants `s_j · softplus(g_j)` (1/time) as a
    /// function of the features `φ` alone. For a rate-form channel the flux
    /// is this times `x_from`; for a saturating one it is this times the gate
    /// `a(x_from)` ([`Channel::gate`]), and the rate constant of the flux is
    /// this times `a(x_from)/x_from`.
    pub fn rates_at_features(&self, w: &[f64], phi: &[f64]) -> Vec<f64> {
        let mut g = vec![0.0; self.channels.len()];
        self.core.net.eval(w, phi, &mut g);
        self.channels.iter().zip(&g).map(|(c, gj)| c.scale * softplus(*gj)).collect()
    }
    /// Features of the network at `(t, x, u, θ_mech)`.
    pub fn feature_values(&self, t: f64, x: &[f64], u: &[f64], p0: &[f64]) -> Vec<f64> {
        let mut phi = vec![0.0; self.core.features.len()];
        self.core.features(t, x, u, p0, &mut phi);
        phi
    }
    /// The features and their scales.
    pub fn features(&self) -> &[(Feature, f64)] {
        &self.core.features
    }

    /// `gx = (∂f/∂x)ᵀ w` (overwritten) and `gp += (∂f/∂θ)ᵀ w` (accumulated)
    /// with one network pass: what an adjoint needs at every stage.
    #[allow(clippy::too_many_arguments)]
    pub fn vjp_both(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], wv: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        let (n, m0) = (self.core.n, self.core.m0);
        let (p0, w) = p.split_at(m0);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        with_scratch(2 * nf + nc + m0 + 2 * (n + m0), |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (gphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(nc);
            let (tmp, rest) = rest.split_at_mut(m0);
            let scratch = rest;
            self.core.sys.vjp_state(t, x, u, p0, wv, gx);
            self.core.sys.vjp_params(t, x, u, p0, wv, tmp);
            for (a, b) in gp[..m0].iter_mut().zip(tmp.iter()) {
                *a += b;
            }
            self.core.features(t, x, u, p0, phi);
            let ch = &self.channels;
            let mut cot = |y: &[f64], gy: &mut [f64]| {
                for (j, c) in ch.iter().enumerate() {
                    let om = c.to.map_or(0.0, |b| wv[b]) - wv[c.from];
                    gy[j] = om * c.scale * c.gate(x[c.from]).0 * sigmoid(y[j]);
                }
            };
            self.core.net.vjp(w, phi, g, &mut cot, Some(gphi), Some(&mut gp[m0..]));
            for (j, c) in ch.iter().enumerate() {
                let om = c.to.map_or(0.0, |b| wv[b]) - wv[c.from];
                gx[c.from] += c.scale * c.gate(x[c.from]).1 * softplus(g[j]) * om;
            }
            self.core.features_vjp(t, x, p0, gphi, Some(gx), Some(&mut gp[..m0]), scratch);
        });
    }

    /// Length of the tape of [`FluxResidual::rhs_tape`]: the features, the
    /// network outputs and the network's own tape.
    pub fn tape_len(&self) -> usize {
        self.core.features.len() + 2 * self.channels.len() + self.core.net.tape_len()
    }

    /// The right-hand side (no exogenous inputs), keeping in `tape` (length
    /// [`FluxResidual::tape_len`]) what [`FluxResidual::vjp_tape`] needs.
    pub fn rhs_tape(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64], tape: &mut [f64]) {
        let (p0, w) = p.split_at(self.core.m0);
        self.core.sys.rhs(t, x, &[], p0, dx);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        let (phi, rest) = tape.split_at_mut(nf);
        let (g, rest) = rest.split_at_mut(nc);
        let (sg, net_tape) = rest.split_at_mut(nc);
        self.core.features(t, x, &[], p0, phi);
        self.core.net.eval_tape(w, phi, g, net_tape);
        for ((c, gj), sj) in self.channels.iter().zip(g.iter_mut()).zip(sg.iter_mut()) {
            // softplus(g) and sigmoid(g) from one exponential (the same values
            // as `softplus` and `sigmoid`); the tape keeps them in place of g.
            let z = *gj;
            let e = (-z.abs()).exp();
            let sp = z.max(0.0) + e.ln_1p();
            *sj = if z >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
            *gj = sp;
            let r = c.scale * c.gate(x[c.from]).0 * sp;
            dx[c.from] -= r;
            if let Some(b) = c.to {
                dx[b] += r;
            }
        }
    }

    /// [`FluxResidual::vjp_both`] (no exogenous inputs) at the point whose
    /// tape [`FluxResidual::rhs_tape`] wrote: the network is not re-evaluated.
    #[allow(clippy::too_many_arguments)]
    pub fn vjp_tape(&self, t: f64, x: &[f64], p: &[f64], wv: &[f64], gx: &mut [f64], gp: &mut [f64], tape: &[f64]) {
        let (n, m0) = (self.core.n, self.core.m0);
        let (p0, w) = p.split_at(m0);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        let (phi, rest) = tape.split_at(nf);
        let (sp, rest) = rest.split_at(nc);
        let (sg, net_tape) = rest.split_at(nc);
        let mut body = |buf: &mut [f64]| {
            let (gphi, rest) = buf.split_at_mut(nf);
            let (gy, rest) = rest.split_at_mut(nc);
            let (tmp, scratch) = rest.split_at_mut(m0);
            self.core.sys.vjp_state(t, x, &[], p0, wv, gx);
            self.core.sys.vjp_params(t, x, &[], p0, wv, tmp);
            for (a, b) in gp[..m0].iter_mut().zip(tmp.iter()) {
                *a += b;
            }
            for (j, c) in self.channels.iter().enumerate() {
                let om = c.to.map_or(0.0, |b| wv[b]) - wv[c.from];
                let (a, da) = c.gate(x[c.from]);
                gy[j] = om * c.scale * a * sg[j];
                gx[c.from] += c.scale * da * sp[j] * om;
            }
            self.core.net.backward_tape(w, phi, net_tape, gy, Some(gphi), Some(&mut gp[m0..]));
            self.core.features_vjp(t, x, p0, gphi, Some(gx), Some(&mut gp[..m0]), scratch);
        };
        let len = nf + nc + m0 + 2 * (n + m0);
        if len <= 24 {
            let mut buf = [0.0f64; 24];
            body(&mut buf[..len]);
        } else {
            with_scratch(len, body);
        }
    }
}

impl<S: System, R: Residual> System for FluxResidual<S, R> {
    fn nstates(&self) -> usize {
        self.core.n
    }
    fn nparams(&self) -> usize {
        self.core.m0 + self.core.net.n_params()
    }
    fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
        let (p0, w) = p.split_at(self.core.m0);
        self.core.sys.rhs(t, x, u, p0, dx);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        with_scratch(nf + nc, |buf| {
            let (phi, g) = buf.split_at_mut(nf);
            self.core.features(t, x, u, p0, phi);
            self.core.net.eval(w, phi, g);
            for (c, gj) in self.channels.iter().zip(g.iter()) {
                let r = c.flux(x[c.from], *gj);
                dx[c.from] -= r;
                if let Some(b) = c.to {
                    dx[b] += r;
                }
            }
        });
    }
    fn jvp(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (n, m0) = (self.core.n, self.core.m0);
        let (p0, w) = p.split_at(m0);
        self.core.sys.jvp(t, x, u, p0, v, out);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        with_scratch(2 * nf + 2 * nc + n + m0, |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (dphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(nc);
            let (dg, scratch) = rest.split_at_mut(nc);
            self.core.features(t, x, u, p0, phi);
            self.core.features_jvp(t, x, p0, Some(v), None, scratch, dphi);
            self.core.net.jvp(w, phi, Some(dphi), None, g, dg);
            for (j, c) in self.channels.iter().enumerate() {
                let (a, da) = c.gate(x[c.from]);
                let dr = c.scale * (v[c.from] * da * softplus(g[j]) + a * sigmoid(g[j]) * dg[j]);
                out[c.from] -= dr;
                if let Some(b) = c.to {
                    out[b] += dr;
                }
            }
        });
    }
    fn vjp_state(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], wv: &[f64], out: &mut [f64]) {
        let (n, m0) = (self.core.n, self.core.m0);
        let (p0, w) = p.split_at(m0);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        self.core.sys.vjp_state(t, x, u, p0, wv, out);
        with_scratch(2 * nf + nc + 2 * (n + m0), |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (gphi, rest) = rest.split_at_mut(nf);
            let (g, scratch) = rest.split_at_mut(nc);
            self.core.features(t, x, u, p0, phi);
            let ch = &self.channels;
            let mut cot = |y: &[f64], gy: &mut [f64]| {
                for (j, c) in ch.iter().enumerate() {
                    let om = c.to.map_or(0.0, |b| wv[b]) - wv[c.from];
                    gy[j] = om * c.scale * c.gate(x[c.from]).0 * sigmoid(y[j]);
                }
            };
            self.core.net.vjp(w, phi, g, &mut cot, Some(gphi), None);
            for (j, c) in ch.iter().enumerate() {
                let om = c.to.map_or(0.0, |b| wv[b]) - wv[c.from];
                out[c.from] += c.scale * c.gate(x[c.from]).1 * softplus(g[j]) * om;
            }
            self.core.features_vjp(t, x, p0, gphi, Some(out), None, scratch);
        });
    }
    fn jvp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (n, m0) = (self.core.n, self.core.m0);
        let (p0, w) = p.split_at(m0);
        let (v0, vw) = v.split_at(m0);
        self.core.sys.jvp_params(t, x, u, p0, v0, out);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        with_scratch(2 * nf + 2 * nc + n + m0, |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (dphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(nc);
            let (dg, scratch) = rest.split_at_mut(nc);
            self.core.features(t, x, u, p0, phi);
            self.core.features_jvp(t, x, p0, None, Some(v0), scratch, dphi);
            self.core.net.jvp(w, phi, Some(dphi), Some(vw), g, dg);
            for (j, c) in self.channels.iter().enumerate() {
                let dr = c.scale * c.gate(x[c.from]).0 * sigmoid(g[j]) * dg[j];
                out[c.from] -= dr;
                if let Some(b) = c.to {
                    out[b] += dr;
                }
            }
        });
    }
    fn vjp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], wv: &[f64], out: &mut [f64]) {
        let (n, m0) = (self.core.n, self.core.m0);
        let (p0, w) = p.split_at(m0);
        self.core.sys.vjp_params(t, x, u, p0, wv, &mut out[..m0]);
        out[m0..].iter_mut().for_each(|v| *v = 0.0);
        let nf = self.core.features.len();
        let nc = self.channels.len();
        with_scratch(2 * nf + nc + 2 * (n + m0), |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (gphi, rest) = rest.split_at_mut(nf);
            let (g, scratch) = rest.split_at_mut(nc);
            self.core.features(t, x, u, p0, phi);
            let ch = &self.channels;
            let mut cot = |y: &[f64], gy: &mut [f64]| {
                for (j, c) in ch.iter().enumerate() {
                    let om = c.to.map_or(0.0, |b| wv[b]) - wv[c.from];
                    gy[j] = om * c.scale * c.gate(x[c.from]).0 * sigmoid(y[j]);
                }
            };
            let (o0, ow) = out.split_at_mut(m0);
            self.core.net.vjp(w, phi, g, &mut cot, Some(gphi), Some(ow));
            self.core.features_vjp(t, x, p0, gphi, None, Some(o0), scratch);
        });
    }
    fn accumulators(&self) -> Vec<usize> {
        // Outputs never read accumulators (they would feed back otherwise), so
        // an accumulator stays one unless a channel drains it or a feature reads it.
        self.core
            .sys
            .accumulators()
            .into_iter()
            .filter(|&i| {
                !self.channels.iter().any(|c| c.from == i)
                    && !self.core.features.iter().any(|(f, _)| *f == Feature::State(i))
            })
            .collect()
    }
    delegate_outputs!();
}

impl<S: System, R: Residual> Coupling for FluxResidual<S, R> {
    fn kept_invariants(&self) -> Vec<Vec<f64>> {
        self.core.sys.invariants().into_iter().filter(|c| self.keeps(c)).collect()
    }
    fn broken_invariants(&self) -> Vec<Vec<f64>> {
        self.core.sys.invariants().into_iter().filter(|c| !self.keeps(c)).collect()
    }
    fn keeps_positivity(&self) -> bool {
        true
    }
    fn n_mech_params(&self) -> usize {
        self.core.m0
    }
    fn describe(&self) -> String {
        let names = self.core.sys.state_names();
        let ch: Vec<String> = self
            .channels
            .iter()
            .map(|c| {
                format!(
                    "{} -> {}{}",
                    names.get(c.from).cloned().unwrap_or_default(),
                    c.to.and_then(|t| names.get(t).cloned()).unwrap_or_else(|| "out".into()),
                    match c.form {
                        ChannelForm::Rate => String::new(),
                        ChannelForm::Saturating { half } => format!(" (saturating, half {half})"),
                    }
                )
            })
            .collect();
        format!(
            "flux residual on {} (keeps {} of {} invariants, keeps non-negativity)",
            ch.join(", "),
            self.kept_invariants().len(),
            self.core.sys.invariants().len()
        )
    }
}

impl<S: System, R: Residual> FluxResidual<S, R> {
    fn keeps(&self, c: &[f64]) -> bool {
        self.channels.iter().all(|ch| {
            let a = c[ch.from];
            let b = ch.to.map_or(0.0, |t| c[t]);
            (a - b).abs() <= 1e-14 * (a.abs() + b.abs()).max(1.0)
        })
    }
}

// ---------------------------------------------------------------------------
// Rate modulation

/// Learned modulation of chosen parameters (typically rate constants):
/// `θ_k → θ_k · exp(g_k(φ))`, one network output per modulated parameter.
/// The right-hand side stays the wrapped system's for *some* parameter
/// vector, so every invariant it declares is kept and, if the wrapped system
/// keeps non-negativity for every positive rate, so does the coupling
/// (modulated positive parameters stay positive). For a master equation this
/// keeps generator columns summing to zero; modulating barriers (not state
/// free energies) keeps detailed balance. Outputs use the unmodulated
/// parameters.
#[derive(Debug, Clone)]
pub struct RateModulation<S, R> {
    core: Core<S, R>,
    targets: Vec<usize>,
}

impl<S: System, R: Residual> RateModulation<S, R> {
    /// Wraps `sys`, modulating parameters `targets` (indices into its
    /// parameters) by `exp(net(φ))`.
    pub fn new(sys: S, net: R, features: Vec<(Feature, f64)>, targets: Vec<usize>) -> Result<Self, NeuralError> {
        let m0 = sys.nparams();
        for (i, &k) in targets.iter().enumerate() {
            if k >= m0 || targets[..i].contains(&k) {
                return Err(NeuralError::Shape(format!(
                    "rate modulation: target parameter {k} is out of range 0..{m0} or repeated"
                )));
            }
        }
        let core = Core::new(sys, net, features, targets.len(), "rate modulation")?;
        Ok(RateModulation { core, targets })
    }
    /// The wrapped system.
    pub fn system(&self) -> &S {
        &self.core.sys
    }
    /// The network.
    pub fn net(&self) -> &R {
        &self.core.net
    }

    /// Fills `pm` with the modulated parameters and `g` with the network outputs.
    #[allow(clippy::too_many_arguments)]
    fn modulated(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], phi: &mut [f64], g: &mut [f64], pm: &mut [f64]) {
        let (p0, w) = p.split_at(self.core.m0);
        self.core.features(t, x, u, p0, phi);
        self.core.net.eval(w, phi, g);
        pm.copy_from_slice(p0);
        for (&k, gk) in self.targets.iter().zip(g.iter()) {
            pm[k] *= gk.exp();
        }
    }
}

impl<S: System, R: Residual> System for RateModulation<S, R> {
    fn nstates(&self) -> usize {
        self.core.n
    }
    fn nparams(&self) -> usize {
        self.core.m0 + self.core.net.n_params()
    }
    fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
        let (nf, nk, m0) = (self.core.features.len(), self.targets.len(), self.core.m0);
        with_scratch(nf + nk + m0, |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (g, pm) = rest.split_at_mut(nk);
            self.modulated(t, x, u, p, phi, g, pm);
            self.core.sys.rhs(t, x, u, pm, dx);
        });
    }
    fn jvp(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (n, nf, nk, m0) = (self.core.n, self.core.features.len(), self.targets.len(), self.core.m0);
        let (p0, w) = p.split_at(m0);
        with_scratch(2 * nf + 2 * nk + 3 * m0 + 2 * n, |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (dphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(nk);
            let (dg, rest) = rest.split_at_mut(nk);
            let (pm, rest) = rest.split_at_mut(m0);
            let (dpm, rest) = rest.split_at_mut(m0);
            let (tmp, scratch) = rest.split_at_mut(n);
            self.core.features(t, x, u, p0, phi);
            self.core.features_jvp(t, x, p0, Some(v), None, scratch, dphi);
            self.core.net.jvp(w, phi, Some(dphi), None, g, dg);
            pm.copy_from_slice(p0);
            dpm.iter_mut().for_each(|d| *d = 0.0);
            for (i, &k) in self.targets.iter().enumerate() {
                pm[k] *= g[i].exp();
                dpm[k] = pm[k] * dg[i];
            }
            self.core.sys.jvp(t, x, u, pm, v, out);
            self.core.sys.jvp_params(t, x, u, pm, dpm, tmp);
            for (a, b) in out.iter_mut().zip(tmp.iter()) {
                *a += b;
            }
        });
    }
    fn vjp_state(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], wv: &[f64], out: &mut [f64]) {
        let (n, nf, nk, m0) = (self.core.n, self.core.features.len(), self.targets.len(), self.core.m0);
        let (p0, w) = p.split_at(m0);
        with_scratch(2 * nf + 2 * nk + 2 * m0 + 2 * (n + m0), |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (gphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(nk);
            let (gg, rest) = rest.split_at_mut(nk);
            let (pm, rest) = rest.split_at_mut(m0);
            let (q, scratch) = rest.split_at_mut(m0);
            self.modulated(t, x, u, p, phi, g, pm);
            self.core.sys.vjp_state(t, x, u, pm, wv, out);
            self.core.sys.vjp_params(t, x, u, pm, wv, q);
            for (i, &k) in self.targets.iter().enumerate() {
                gg[i] = q[k] * pm[k];
            }
            let gg: &[f64] = gg;
            let mut cot = |_: &[f64], gy: &mut [f64]| gy.copy_from_slice(gg);
            self.core.net.vjp(w, phi, g, &mut cot, Some(gphi), None);
            self.core.features_vjp(t, x, p0, gphi, Some(out), None, scratch);
        });
    }
    fn jvp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (n, nf, nk, m0) = (self.core.n, self.core.features.len(), self.targets.len(), self.core.m0);
        let (p0, w) = p.split_at(m0);
        let (v0, vw) = v.split_at(m0);
        with_scratch(2 * nf + 2 * nk + 2 * m0 + n + m0, |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (dphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(nk);
            let (dg, rest) = rest.split_at_mut(nk);
            let (pm, rest) = rest.split_at_mut(m0);
            let (dpm, scratch) = rest.split_at_mut(m0);
            self.core.features(t, x, u, p0, phi);
            self.core.features_jvp(t, x, p0, None, Some(v0), scratch, dphi);
            self.core.net.jvp(w, phi, Some(dphi), Some(vw), g, dg);
            pm.copy_from_slice(p0);
            dpm.copy_from_slice(v0);
            for (i, &k) in self.targets.iter().enumerate() {
                let e = g[i].exp();
                pm[k] = p0[k] * e;
                dpm[k] = v0[k] * e + pm[k] * dg[i];
            }
            self.core.sys.jvp_params(t, x, u, pm, dpm, out);
        });
    }
    fn vjp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], wv: &[f64], out: &mut [f64]) {
        let (n, nf, nk, m0) = (self.core.n, self.core.features.len(), self.targets.len(), self.core.m0);
        let (p0, w) = p.split_at(m0);
        with_scratch(2 * nf + 2 * nk + m0 + 2 * (n + m0), |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (gphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(nk);
            let (gg, rest) = rest.split_at_mut(nk);
            let (pm, scratch) = rest.split_at_mut(m0);
            self.modulated(t, x, u, p, phi, g, pm);
            let (o0, ow) = out.split_at_mut(m0);
            self.core.sys.vjp_params(t, x, u, pm, wv, o0);
            for (i, &k) in self.targets.iter().enumerate() {
                gg[i] = o0[k] * pm[k];
                o0[k] *= g[i].exp();
            }
            ow.iter_mut().for_each(|v| *v = 0.0);
            let gg: &[f64] = gg;
            let mut cot = |_: &[f64], gy: &mut [f64]| gy.copy_from_slice(gg);
            self.core.net.vjp(w, phi, g, &mut cot, Some(gphi), Some(ow));
            self.core.features_vjp(t, x, p0, gphi, None, Some(o0), scratch);
        });
    }
    fn accumulators(&self) -> Vec<usize> {
        if self.core.features.iter().any(|(f, _)| matches!(f, Feature::State(_) | Feature::Output(_))) {
            Vec::new()
        } else {
            self.core.sys.accumulators()
        }
    }
    delegate_outputs!();
}

impl<S: System, R: Residual> Coupling for RateModulation<S, R> {
    fn kept_invariants(&self) -> Vec<Vec<f64>> {
        self.core.sys.invariants()
    }
    fn broken_invariants(&self) -> Vec<Vec<f64>> {
        Vec::new()
    }
    fn keeps_positivity(&self) -> bool {
        true
    }
    fn n_mech_params(&self) -> usize {
        self.core.m0
    }
    fn describe(&self) -> String {
        let names = self.core.sys.param_names();
        let t: Vec<String> = self.targets.iter().map(|&k| names.get(k).cloned().unwrap_or_default()).collect();
        format!("rate modulation of {} (keeps every invariant)", t.join(", "))
    }
}

// ---------------------------------------------------------------------------
// Additive residuals (projected and free)

#[derive(Debug, Clone)]
struct Additive<S, R> {
    core: Core<S, R>,
    /// Projector, row-major `n × n` (identity for a free residual).
    proj: Vec<f64>,
    alpha: f64,
}

impl<S: System, R: Residual> Additive<S, R> {
    fn new(
        sys: S,
        net: R,
        features: Vec<(Feature, f64)>,
        alpha: f64,
        project: bool,
        what: &str,
    ) -> Result<Self, NeuralError> {
        let n = sys.nstates();
        if !alpha.is_finite() {
            return Err(NeuralError::Shape(format!("{what}: scale {alpha} is not finite")));
        }
        let mut proj = vec![0.0; n * n];
        for i in 0..n {
            proj[i * n + i] = 1.0;
        }
        if project {
            let c = sys.invariants();
            if !c.is_empty() {
                let k = c.len();
                let cm = nalgebra::DMatrix::from_fn(k, n, |r, col| c[r][col]);
                let cct = &cm * cm.transpose();
                let inv = cct.try_inverse().ok_or_else(|| {
                    NeuralError::Shape(format!("{what}: the declared invariants are linearly dependent"))
                })?;
                let pm = nalgebra::DMatrix::<f64>::identity(n, n) - cm.transpose() * inv * &cm;
                for r in 0..n {
                    for col in 0..n {
                        proj[r * n + col] = pm[(r, col)];
                    }
                }
            }
        }
        let core = Core::new(sys, net, features, n, what)?;
        Ok(Additive { core, proj, alpha })
    }

    /// `out += α P g`.
    fn add_projected(&self, g: &[f64], out: &mut [f64]) {
        let n = self.core.n;
        for (r, o) in out.iter_mut().enumerate() {
            let row = &self.proj[r * n..(r + 1) * n];
            *o += self.alpha * row.iter().zip(g).map(|(a, b)| a * b).sum::<f64>();
        }
    }

    fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
        let (n, nf, m0) = (self.core.n, self.core.features.len(), self.core.m0);
        let (p0, w) = p.split_at(m0);
        self.core.sys.rhs(t, x, u, p0, dx);
        with_scratch(nf + n, |buf| {
            let (phi, g) = buf.split_at_mut(nf);
            self.core.features(t, x, u, p0, phi);
            self.core.net.eval(w, phi, g);
            self.add_projected(g, dx);
        });
    }
    #[allow(clippy::too_many_arguments)]
    fn jvp_any(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], vx: Option<&[f64]>, v: Option<&[f64]>, out: &mut [f64]) {
        let (n, nf, m0) = (self.core.n, self.core.features.len(), self.core.m0);
        let (p0, w) = p.split_at(m0);
        let (v0, vw) = match v {
            Some(v) => {
                let (a, b) = v.split_at(m0);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        match (vx, v0) {
            (Some(vx), _) => self.core.sys.jvp(t, x, u, p0, vx, out),
            (None, Some(v0)) => self.core.sys.jvp_params(t, x, u, p0, v0, out),
            _ => out.iter_mut().for_each(|o| *o = 0.0),
        }
        with_scratch(2 * nf + 2 * n + n + m0, |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (dphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(n);
            let (dg, scratch) = rest.split_at_mut(n);
            self.core.features(t, x, u, p0, phi);
            self.core.features_jvp(t, x, p0, vx, v0, scratch, dphi);
            self.core.net.jvp(w, phi, Some(dphi), vw, g, dg);
            self.add_projected(dg, out);
        });
    }
    /// `out_x = Jᵀw` (if given, overwritten) and `out_p = (∂f/∂θ)ᵀ w` (if given, overwritten).
    #[allow(clippy::too_many_arguments)]
    fn vjp_any(
        &self,
        t: f64,
        x: &[f64],
        u: &[f64],
        p: &[f64],
        wv: &[f64],
        out_x: Option<&mut [f64]>,
        out_p: Option<&mut [f64]>,
    ) {
        let (n, nf, m0) = (self.core.n, self.core.features.len(), self.core.m0);
        let (p0, w) = p.split_at(m0);
        let mut out_x = out_x;
        let mut out_p = out_p;
        if let Some(o) = out_x.as_deref_mut() {
            self.core.sys.vjp_state(t, x, u, p0, wv, o);
        }
        if let Some(o) = out_p.as_deref_mut() {
            self.core.sys.vjp_params(t, x, u, p0, wv, &mut o[..m0]);
            o[m0..].iter_mut().for_each(|v| *v = 0.0);
        }
        with_scratch(2 * nf + 2 * n + 2 * (n + m0), |buf| {
            let (phi, rest) = buf.split_at_mut(nf);
            let (gphi, rest) = rest.split_at_mut(nf);
            let (g, rest) = rest.split_at_mut(n);
            let (pw, scratch) = rest.split_at_mut(n);
            self.core.features(t, x, u, p0, phi);
            // α Pᵀ w (P is symmetric, but use the transpose for clarity).
            for (c, v) in pw.iter_mut().enumerate() {
                *v = self.alpha * (0..n).map(|r| self.proj[r * n + c] * wv[r]).sum::<f64>();
            }
            let pw: &[f64] = pw;
            let mut cot = |_: &[f64], gy: &mut [f64]| gy.copy_from_slice(pw);
            let (o0, ow) = match out_p {
                Some(o) => {
                    let (a, b) = o.split_at_mut(m0);
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            self.core.net.vjp(w, phi, g, &mut cot, Some(gphi), ow);
            self.core.features_vjp(t, x, p0, gphi, out_x, o0, scratch);
        });
    }
}

macro_rules! additive_system {
    ($ty:ident) => {
        impl<S: System, R: Residual> System for $ty<S, R> {
            fn nstates(&self) -> usize {
                self.core.core.n
            }
            fn nparams(&self) -> usize {
                self.core.core.m0 + self.core.core.net.n_params()
            }
            fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
                self.core.rhs(t, x, u, p, dx)
            }
            fn jvp(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
                self.core.jvp_any(t, x, u, p, Some(v), None, out)
            }
            fn vjp_state(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
                self.core.vjp_any(t, x, u, p, w, Some(out), None)
            }
            fn jvp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
                self.core.jvp_any(t, x, u, p, None, Some(v), out)
            }
            fn vjp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
                self.core.vjp_any(t, x, u, p, w, None, Some(out))
            }
            fn ninputs(&self) -> usize {
                self.core.core.sys.ninputs()
            }
            fn noutputs(&self) -> usize {
                self.core.core.sys.noutputs()
            }
            fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
                self.core.core.sys.output(k, t, x, &p[..self.core.core.m0])
            }
            fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
                let m0 = self.core.core.m0;
                self.core.core.sys.output_grad(k, t, x, &p[..m0], gx, &mut gp[..m0]);
            }
            fn state_names(&self) -> Vec<String> {
                self.core.core.sys.state_names()
            }
            fn param_names(&self) -> Vec<String> {
                self.core.core.names()
            }
            fn invariants(&self) -> Vec<Vec<f64>> {
                self.kept_invariants()
            }
        }
        impl<S: System, R: Residual> $ty<S, R> {
            /// The wrapped system.
            pub fn system(&self) -> &S {
                &self.core.core.sys
            }
            /// The network.
            pub fn net(&self) -> &R {
                &self.core.core.net
            }
        }
    };
}

/// A free residual projected onto the subspace that keeps the wrapped
/// system's invariants: `dx/dt = f(x) + α P g(φ)`, `P = I − Cᵀ(CCᵀ)⁻¹C`
/// with `C` the declared invariants. Keeps all of them; does not keep
/// non-negativity. The network has one output per state.
#[derive(Debug, Clone)]
pub struct ProjectedResidual<S, R> {
    core: Additive<S, R>,
}

impl<S: System, R: Residual> ProjectedResidual<S, R> {
    /// Wraps `sys` with `alpha · P · net(φ)`.
    pub fn new(sys: S, net: R, features: Vec<(Feature, f64)>, alpha: f64) -> Result<Self, NeuralError> {
        Ok(ProjectedResidual { core: Additive::new(sys, net, features, alpha, true, "projected residual")? })
    }
}

additive_system!(ProjectedResidual);

impl<S: System, R: Residual> Coupling for ProjectedResidual<S, R> {
    fn kept_invariants(&self) -> Vec<Vec<f64>> {
        self.core.core.sys.invariants()
    }
    fn broken_invariants(&self) -> Vec<Vec<f64>> {
        Vec::new()
    }
    fn keeps_positivity(&self) -> bool {
        false
    }
    fn n_mech_params(&self) -> usize {
        self.core.core.m0
    }
    fn describe(&self) -> String {
        format!(
            "projected residual (keeps all {} invariants, may break non-negativity)",
            self.core.core.sys.invariants().len()
        )
    }
}

/// An unconstrained residual `dx/dt = f(x) + α g(φ)`: allowed, and reported
/// as breaking every invariant the wrapped system declares (and
/// non-negativity). The network has one output per state.
#[derive(Debug, Clone)]
pub struct FreeResidual<S, R> {
    core: Additive<S, R>,
}

impl<S: System, R: Residual> FreeResidual<S, R> {
    /// Wraps `sys` with `alpha · net(φ)`.
    pub fn new(sys: S, net: R, features: Vec<(Feature, f64)>, alpha: f64) -> Result<Self, NeuralError> {
        Ok(FreeResidual { core: Additive::new(sys, net, features, alpha, false, "free residual")? })
    }
}

additive_system!(FreeResidual);

impl<S: System, R: Residual> Coupling for FreeResidual<S, R> {
    fn kept_invariants(&self) -> Vec<Vec<f64>> {
        Vec::new()
    }
    fn broken_invariants(&self) -> Vec<Vec<f64>> {
        self.core.core.sys.invariants()
    }
    fn keeps_positivity(&self) -> bool {
        false
    }
    fn n_mech_params(&self) -> usize {
        self.core.core.m0
    }
    fn describe(&self) -> String {
        format!(
            "free residual (breaks all {} invariants and non-negativity: reported, not prevented)",
            self.core.core.sys.invariants().len()
        )
    }
}
