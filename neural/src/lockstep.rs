//! Lockstep integration of several subjects: the fast path's DOPRI5 and
//! discrete adjoint ([`crate::fast`]) run for [`LANES`] subjects at once,
//! with one shared step size, so that the network of a [`FluxResidual`]
//! is evaluated for all of them in one call of a lane kernel (each value a
//! `[f64; LANES]`, one lane per subject). A `1 → H → H → 1` tanh network's
//! forward pass is a chain of two dependent tanh layers; evaluated for one
//! subject it waits on that chain, evaluated for four it runs at the SIMD
//! units' throughput. The backward sweep also gathers the weight gradients of
//! all stages of a step into one small matrix product per step.
//!
//! The shared step is accepted when every lane's own error norm (the one
//! [`Plan::gradient`] uses) is within tolerance, and the next step size comes
//! from the largest of them, so each lane is integrated at least as
//! accurately as on its own. The integrator stops at every lane's events
//! (each lane applies only its own) and runs to the latest horizon; each
//! lane's observations are read from the dense output as on the
//! single-subject path. Per-lane losses, gradients and predictions are
//! returned separately, so a caller can still add subjects in its own order.
//!
//! The gradient is the exact derivative of what the forward sweep computes
//! (step sizes held fixed). One change of bookkeeping against
//! [`Plan::gradient`]: the VJP of a step's first stage, which FSAL made the
//! previous step's last stage (same point, same tape), is merged into that
//! stage's VJP (the VJP is linear in the cotangent), so each step costs six
//! network VJPs instead of seven.
//!
//! Supported: a [`FluxResidual`] with one feature (a state, an output or
//! time), one channel (rate or saturating form) and a `1 → H1 → H2 → 1` tanh [`Mlp`] with a
//! specialised kernel ([`FastRhs::lockstep`] returns `None` otherwise), over
//! any wrapped [`System`] with at most 8 states and 16 parameters; lanes
//! must share the start time and the network weights (mechanistic parameters
//! may differ, as with random effects).
//!
//! [`FastRhs::lockstep`]: crate::fast::FastRhs::lockstep
//! [`FluxResidual`]: crate::FluxResidual

use insilico_solvers::{Loss, Options, System};

use crate::coupling::{Channel, Feature};
use crate::fast::{dense_weights, initial_step, Ev, FastError, FastGradient, FastRhs, Plan, A, B7, C, E};
use crate::mlp::Mlp;
use crate::small::{self, Lanes};

/// Number of subjects integrated together (lanes of the network kernels).
pub use crate::small::LANES;

/// Most states of a wrapped system on the lockstep path.
const NMAX: usize = 8;
/// Most parameters of a wrapped system on the lockstep path.
const MMAX: usize = 16;

/// Lockstep losses and gradients of up to [`LANES`] subjects: what
/// [`crate::fast::FastRhs::lockstep`] returns (a
/// [`Lockstep`] built for the wrapped system's own type, so that its methods
/// inline into the lane loops).
pub trait LockstepGradient: Send + Sync {
    /// Losses, gradients (discrete adjoint) and predictions of up to
    /// [`LANES`] subjects integrated in lockstep: subject `l` has plan
    /// `plans[l]`, parameters `params[l]` (mechanistic parameters, then the
    /// network weights, which must be the same for every subject) and loss
    /// `losses[l]`; all start from `x0`. Results are in the same order.
    fn gradient(
        &self,
        plans: &[&Plan],
        params: &[&[f64]],
        x0: &[f64],
        opts: &Options,
        losses: &[&Loss],
        ws: &mut LockWorkspace,
    ) -> Result<Vec<FastGradient>, FastError>;
}

/// The lockstep form of a flux residual over a system of type `S` (see the
/// [module](self) docs).
pub struct Lockstep<'a, S: ?Sized = dyn System> {
    sys: &'a S,
    h1: usize,
    h2: usize,
    feature: Feature,
    fscale: f64,
    channel: Channel,
    n: usize,
    m0: usize,
}

impl<S: ?Sized> Clone for Lockstep<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ?Sized> Copy for Lockstep<'_, S> {}

impl<S: ?Sized> std::fmt::Debug for Lockstep<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lockstep")
            .field("hidden", &(self.h1, self.h2))
            .field("feature", &self.feature)
            .field("channel", &self.channel)
            .finish()
    }
}

/// The channel's gate `a(x)` and `a'(x)` (flux = `s · a(x_from) · softplus(g)`):
/// [`Channel::gate`], so every channel form of the coupling (rate, saturating)
/// is integrated here exactly as on the one-subject path.
#[inline(always)]
fn gate(c: &Channel, x: f64) -> (f64, f64) {
    c.gate(x)
}

#[inline(always)]
fn gather(v: &[Lanes], l: usize, out: &mut [f64]) {
    for (o, a) in out.iter_mut().zip(v) {
        *o = a[l];
    }
}

/// Reusable buffers of the lockstep path (one per thread).
#[derive(Debug, Clone, Default)]
pub struct LockWorkspace {
    x: Vec<Lanes>,
    xn: Vec<Lanes>,
    k: Vec<Lanes>,
    y: Vec<Lanes>,
    rates: Vec<Lanes>,
    /// Per accepted step: (t, h, whether its first stage was evaluated afresh).
    th: Vec<(f64, f64, bool)>,
    /// Per accepted step: start state (n) and stages (7n).
    xs: Vec<Lanes>,
    ks: Vec<Lanes>,
    /// Per accepted step: the 7 stage tapes; the current attempt writes its
    /// stages in place after the last accepted step's.
    tapes: Vec<Lanes>,
    items: Vec<Item>,
    obs_x: Vec<f64>,
    weights: [Vec<f64>; LANES],
    lam: Vec<Lanes>,
    mu: Vec<Lanes>,
    kap: Vec<Lanes>,
    pend: Vec<Lanes>,
    acc_x: Vec<Lanes>,
    acc_k: Vec<Lanes>,
    gp: Vec<Lanes>,
    recs: Vec<Lanes>,
    /// The network weights splatted across lanes (for the AVX-512F kernels).
    wl: Vec<Lanes>,
}

thread_local! {
    static THREAD_WS: std::cell::RefCell<LockWorkspace> = std::cell::RefCell::new(LockWorkspace::default());
}

impl LockWorkspace {
    /// Runs `f` with this thread's workspace, which keeps its buffers from
    /// call to call (a fresh one if it is in use by an enclosing call). The
    /// step and tape records of a subject group run to a few hundred kB: a
    /// new workspace per gradient would have them allocated and paged in
    /// every time.
    pub fn with_thread_local<R>(f: impl FnOnce(&mut LockWorkspace) -> R) -> R {
        THREAD_WS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut ws) => f(&mut ws),
            Err(_) => f(&mut LockWorkspace::default()),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Step(usize),
    Obs { lane: usize, j: usize, k: usize, t: f64, slot: usize, theta: Option<f64> },
    Reset(usize),
}

fn unsup(s: &str) -> FastError {
    FastError::Unsupported(s.to_string())
}

impl<S: System + ?Sized> LockstepGradient for Lockstep<'_, S> {
    fn gradient(
        &self,
        plans: &[&Plan],
        params: &[&[f64]],
        x0: &[f64],
        opts: &Options,
        losses: &[&Loss],
        ws: &mut LockWorkspace,
    ) -> Result<Vec<FastGradient>, FastError> {
        Lockstep::gradient(self, plans, params, x0, opts, losses, ws)
    }
}

impl<'a, S: System + ?Sized> Lockstep<'a, S> {
    /// The lockstep form of a flux residual over `sys` with network `net`,
    /// `features` and `channels`; `None` when it is not supported (see the
    /// [module](self) docs).
    pub fn new(sys: &'a S, net: &'a Mlp, features: &[(Feature, f64)], channels: &[Channel]) -> Option<Self> {
        let (h1, h2) = net.small_shape()?;
        let (&[(feature, fscale)], &[channel]) = (features, channels) else {
            return None;
        };
        let (n, m0) = (sys.nstates(), sys.nparams());
        let feature_ok = match feature {
            Feature::State(i) => i < n,
            Feature::Output(k) => k < sys.noutputs(),
            Feature::Time => true,
            Feature::Input(_) => false,
        };
        // Any channel form (`FluxResidual::new` validated its constants); `gate` evaluates it.
        let channel_ok = channel.from < n && channel.to.is_none_or(|b| b < n && b != channel.from);
        if !feature_ok || !channel_ok || sys.ninputs() > 0 || n > NMAX || m0 > MMAX || fscale == 0.0 {
            return None;
        }
        Some(Lockstep { sys, h1, h2, feature, fscale, channel, n, m0 })
    }

    /// Number of parameters (mechanistic, then the network's weights).
    pub fn nparams(&self) -> usize {
        self.m0 + small::n_params(self.h1, self.h2)
    }

    /// Stage tape length in lanes values: `[φ, softplus(g), sigmoid(g), a1, a2]`.
    fn tape_len(&self) -> usize {
        3 + self.h1 + self.h2
    }

    /// `dx = f(t, y)` for every lane, keeping the stage tape.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rhs_lanes(&self, t: f64, y: &[Lanes], p: &[&[f64]; LANES], wl: &[Lanes], dx: &mut [Lanes], tape: &mut [Lanes]) {
        let (n, m0) = (self.n, self.m0);
        let (head, a) = tape.split_at_mut(3);
        let mut phi = [0.0f64; LANES];
        for l in 0..LANES {
            let mut yl = [0.0f64; NMAX];
            let mut dl = [0.0f64; NMAX];
            gather(y, l, &mut yl[..n]);
            let p0 = &p[l][..m0];
            self.sys.rhs(t, &yl[..n], &[], p0, &mut dl[..n]);
            let raw = match self.feature {
                Feature::State(i) => yl[i],
                Feature::Output(k) => self.sys.output(k, t, &yl[..n], p0),
                Feature::Time => t,
                Feature::Input(_) => 0.0,
            };
            phi[l] = raw / self.fscale;
            for (d, v) in dx.iter_mut().zip(&dl[..n]) {
                d[l] = *v;
            }
        }
        let w = &p[0][m0..];
        let g = small::forward_lanes(self.h1, self.h2, w, wl, &phi, a).unwrap_or([f64::NAN; LANES]);
        head[0] = phi;
        let c = &self.channel;
        (head[1], head[2]) = small::softplus_sigmoid_lanes(&g);
        for l in 0..LANES {
            let sp = head[1][l];
            let r = c.scale * gate(c, y[c.from][l]).0 * sp;
            dx[c.from][l] -= r;
            if let Some(b) = c.to {
                dx[b][l] += r;
            }
        }
    }

    /// `mu = (∂f/∂x)ᵀ kap` (overwritten) and the mechanistic part of
    /// `(∂f/∂θ)ᵀ kap` added into `gp`, per lane, at a point whose tape
    /// [`Lockstep::rhs_lanes`] wrote; the network's weight-gradient record of
    /// this stage goes to `rec` (see `small::weight_grads_lanes`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn vjp_lanes(
        &self,
        t: f64,
        y: &[Lanes],
        p: &[&[f64]; LANES],
        wl: &[Lanes],
        kap: &[Lanes],
        mu: &mut [Lanes],
        gp: &mut [Lanes],
        tape: &[Lanes],
        rec: &mut [Lanes],
    ) {
        let (n, m0, h) = (self.n, self.m0, self.h1 + self.h2);
        let (head, a) = tape.split_at(3);
        let (sp, sg) = (&head[1], &head[2]);
        let c = &self.channel;
        let mut gy = [0.0f64; LANES];
        let mut ys = [[0.0f64; NMAX]; LANES];
        for (l, yl) in ys.iter_mut().enumerate() {
            let mut kl = [0.0f64; NMAX];
            let mut gx = [0.0f64; NMAX];
            let mut tp = [0.0f64; MMAX];
            gather(y, l, &mut yl[..n]);
            gather(kap, l, &mut kl[..n]);
            let p0 = &p[l][..m0];
            self.sys.vjp_state(t, &yl[..n], &[], p0, &kl[..n], &mut gx[..n]);
            self.sys.vjp_params(t, &yl[..n], &[], p0, &kl[..n], &mut tp[..m0]);
            for (g, v) in gp.iter_mut().zip(&tp[..m0]) {
                g[l] += v;
            }
            let om = c.to.map_or(0.0, |b| kl[b]) - kl[c.from];
            let (ga, da) = gate(c, yl[c.from]);
            gy[l] = om * c.scale * ga * sg[l];
            gx[c.from] += c.scale * da * sp[l] * om;
            for (m, v) in mu.iter_mut().zip(&gx[..n]) {
                m[l] = *v;
            }
        }
        rec[0] = head[0];
        rec[1] = gy;
        rec[2..2 + h].copy_from_slice(&a[..h]);
        let w = &p[0][m0..];
        let gphi = small::backward_lanes(self.h1, self.h2, w, wl, a, &gy, &mut rec[2 + h..2 + 2 * h])
            .unwrap_or([f64::NAN; LANES]);
        for (l, yl) in ys.iter().enumerate() {
            let cf = gphi[l] / self.fscale;
            match self.feature {
                Feature::State(i) => mu[i][l] += cf,
                Feature::Output(k) => {
                    let mut tx = [0.0f64; NMAX];
                    let mut tp = [0.0f64; MMAX];
                    self.sys.output_grad(k, t, &yl[..n], &p[l][..m0], &mut tx[..n], &mut tp[..m0]);
                    for (m, v) in mu.iter_mut().zip(&tx[..n]) {
                        m[l] += cf * v;
                    }
                    for (g, v) in gp.iter_mut().zip(&tp[..m0]) {
                        g[l] += cf * v;
                    }
                }
                Feature::Time | Feature::Input(_) => {}
            }
        }
    }

    /// Losses, gradients (discrete adjoint) and predictions of up to
    /// [`LANES`] subjects integrated in lockstep: subject `l` has plan
    /// `plans[l]`, parameters `params[l]` (mechanistic parameters, then the
    /// network weights, which must be the same for every subject) and loss
    /// `losses[l]`; all start from `x0`. Results are in the same order.
    pub fn gradient(
        &self,
        plans: &[&Plan],
        params: &[&[f64]],
        x0: &[f64],
        opts: &Options,
        losses: &[&Loss],
        ws: &mut LockWorkspace,
    ) -> Result<Vec<FastGradient>, FastError> {
        let nl = plans.len();
        let (n, m0, np) = (self.n, self.m0, self.nparams());
        if nl == 0 || nl > LANES || params.len() != nl || losses.len() != nl {
            return Err(unsup("lockstep needs 1 to LANES subjects with parameters and losses"));
        }
        if x0.len() != n || plans.iter().any(|pl| pl.n != n || pl.t0 != plans[0].t0) {
            return Err(unsup("lockstep subjects must share the state size and the start time"));
        }
        // Bitwise, so that NaN weights (reported by the integrator) do not read as "different".
        let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        if params.iter().any(|p| p.len() != np || !same(&p[m0..], &params[0][m0..])) {
            return Err(unsup("lockstep subjects must share the network weights"));
        }
        // Lanes beyond `nl` repeat the last subject and are discarded.
        let plans: [&Plan; LANES] = std::array::from_fn(|l| plans[l.min(nl - 1)]);
        let p: [&[f64]; LANES] = std::array::from_fn(|l| params[l.min(nl - 1)]);
        let mut out: Vec<FastGradient> = (0..nl)
            .map(|l| FastGradient {
                loss: 0.0,
                d_params: vec![0.0; np],
                d_x0: vec![0.0; n],
                predictions: vec![0.0; plans[l].obs.len()],
                steps: 0,
            })
            .collect();
        small::splat_weights(&p[0][m0..], &mut ws.wl);
        let steps = self.forward(&plans, &p, nl, x0, opts, losses, &mut out, ws)?;
        self.backward(&p, ws);
        for (l, g) in out.iter_mut().enumerate() {
            g.steps = steps;
            for (d, v) in g.d_params.iter_mut().zip(&ws.gp) {
                *d = v[l];
            }
            for (d, v) in g.d_x0.iter_mut().zip(&ws.lam) {
                *d = v[l];
            }
        }
        Ok(out)
    }

    /// The forward sweep (an AVX2 build when the CPU has it: the lane loops
    /// then run on whole vectors).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        plans: &[&Plan; LANES],
        p: &[&[f64]; LANES],
        nl: usize,
        x0: &[f64],
        opts: &Options,
        losses: &[&Loss],
        out: &mut [FastGradient],
        ws: &mut LockWorkspace,
    ) -> Result<usize, FastError> {
        #[cfg(target_arch = "x86_64")]
        if small::has_avx2() {
            // SAFETY: AVX2 is available on this CPU (checked above).
            return unsafe { self.forward_avx2(plans, p, nl, x0, opts, losses, out, ws) };
        }
        self.forward_body(plans, p, nl, x0, opts, losses, out, ws)
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    unsafe fn forward_avx2(
        &self,
        plans: &[&Plan; LANES],
        p: &[&[f64]; LANES],
        nl: usize,
        x0: &[f64],
        opts: &Options,
        losses: &[&Loss],
        out: &mut [FastGradient],
        ws: &mut LockWorkspace,
    ) -> Result<usize, FastError> {
        self.forward_body(plans, p, nl, x0, opts, losses, out, ws)
    }

    /// The backward sweep (an AVX2 build when the CPU has it).
    fn backward(&self, p: &[&[f64]; LANES], ws: &mut LockWorkspace) {
        #[cfg(target_arch = "x86_64")]
        if small::has_avx2() {
            // SAFETY: AVX2 is available on this CPU (checked above).
            return unsafe { self.backward_avx2(p, ws) };
        }
        self.backward_body(p, ws)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn backward_avx2(&self, p: &[&[f64]; LANES], ws: &mut LockWorkspace) {
        self.backward_body(p, ws)
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn forward_body(
        &self,
        plans: &[&Plan; LANES],
        p: &[&[f64]; LANES],
        nl: usize,
        x0: &[f64],
        opts: &Options,
        losses: &[&Loss],
        out: &mut [FastGradient],
        ws: &mut LockWorkspace,
    ) -> Result<usize, FastError> {
        let n = self.n;
        let tl = self.tape_len();
        let m0 = self.m0;
        ws.x.clear();
        ws.x.extend(x0.iter().map(|&v| [v; LANES]));
        ws.xn.resize(n, [0.0; LANES]);
        ws.k.resize(7 * n, [0.0; LANES]);
        ws.y.resize(n, [0.0; LANES]);
        ws.rates.clear();
        ws.rates.resize(n, [0.0; LANES]);
        ws.th.clear();
        ws.xs.clear();
        ws.ks.clear();
        // `ws.tapes` keeps its length between calls (only what the steps wrote is read).
        if ws.tapes.len() < 7 * tl {
            ws.tapes.resize(7 * tl, [0.0; LANES]);
        }
        // Start of the current attempt's tapes in `ws.tapes`.
        let mut base = 0usize;
        ws.items.clear();
        ws.obs_x.clear();
        for (wl, pl) in ws.weights.iter_mut().zip(plans) {
            wl.clear();
            wl.resize(pl.obs.len(), 0.0);
        }
        let horizon = plans.iter().map(|pl| pl.horizon).fold(f64::NEG_INFINITY, f64::max);
        let mut t = plans[0].t0;
        let mut ei = [0usize; LANES];
        let mut oi = [0usize; LANES];
        let mut h = 0.0f64;
        let mut steps = 0usize;
        let mut fresh = true;
        let mut step_fresh = true;
        // Records an observation of lane `l` (`y` at state `xl`): loss and weight.
        let mut observe = |l: usize, j: usize, y: f64, ws: &mut LockWorkspace| {
            if l < nl {
                out[l].predictions[j] = y;
                let (lv, wv) = losses[l](j, y);
                out[l].loss += lv;
                ws.weights[l][j] = wv;
            }
        };
        loop {
            for l in 0..LANES {
                let pl = plans[l];
                while ei[l] < pl.events.len() && pl.events[ei[l]].0 <= t {
                    match pl.events[ei[l]].1 {
                        Ev::Jump { cmt, amount } => ws.x[cmt][l] += amount,
                        Ev::Rate { cmt, delta } => {
                            ws.rates[cmt][l] += delta;
                            if ws.rates[cmt][l].abs() < 1e-12 * delta.abs() {
                                ws.rates[cmt][l] = 0.0;
                            }
                        }
                        Ev::Reset => {
                            ws.x.iter_mut().for_each(|v| v[l] = 0.0);
                            ws.rates.iter_mut().for_each(|v| v[l] = 0.0);
                            ws.items.push(Item::Reset(l));
                        }
                    }
                    fresh = true;
                    ei[l] += 1;
                }
                while oi[l] < pl.obs.len() && pl.obs[oi[l]].0 <= t {
                    let (_, k, j) = pl.obs[oi[l]];
                    let mut xl = [0.0f64; NMAX];
                    gather(&ws.x, l, &mut xl[..n]);
                    let y = self.sys.output(k, t, &xl[..n], &p[l][..m0]);
                    observe(l, j, y, ws);
                    ws.items.push(Item::Obs { lane: l, j, k, t, slot: ws.obs_x.len(), theta: None });
                    ws.obs_x.extend_from_slice(&xl[..n]);
                    oi[l] += 1;
                }
            }
            if t >= horizon {
                break;
            }
            let next_ev = (0..LANES)
                .map(|l| plans[l].events.get(ei[l]).map_or(f64::INFINITY, |e| e.0))
                .fold(f64::INFINITY, f64::min);
            let stop = next_ev.min(horizon);
            if fresh {
                self.rhs_lanes(t, &ws.x, p, &ws.wl, &mut ws.k[..n], &mut ws.tapes[base..base + tl]);
                for (a, r) in ws.k[..n].iter_mut().zip(&ws.rates) {
                    for l in 0..LANES {
                        a[l] += r[l];
                    }
                }
                if h == 0.0 {
                    h = f64::INFINITY;
                    for l in 0..LANES {
                        let next_obs = plans[l].obs.get(oi[l]).map_or(f64::INFINITY, |o| o.0);
                        let (mut xl, mut fl) = ([0.0f64; NMAX], [0.0f64; NMAX]);
                        gather(&ws.x, l, &mut xl[..n]);
                        gather(&ws.k[..n], l, &mut fl[..n]);
                        h = h.min(initial_step(&xl[..n], &fl[..n], opts, next_obs.min(stop) - t));
                    }
                }
                fresh = false;
                step_fresh = true;
            }
            while t < stop {
                let mut hh = h.min(stop - t);
                if stop - t - hh < 1e-10 * (stop - t) {
                    hh = stop - t;
                }
                if hh <= 1e-14 * t.abs().max(1.0) {
                    return Err(FastError::StepSizeTooSmall { t });
                }
                for s in 1..7 {
                    for i in 0..n {
                        let mut acc = ws.x[i];
                        for (jj, a) in A[s][..s].iter().enumerate() {
                            let kj = ws.k[jj * n + i];
                            for l in 0..LANES {
                                acc[l] += hh * a * kj[l];
                            }
                        }
                        ws.y[i] = acc;
                    }
                    let (_, ks) = ws.k.split_at_mut(s * n);
                    let tape = &mut ws.tapes[base + s * tl..base + (s + 1) * tl];
                    self.rhs_lanes(t + C[s] * hh, &ws.y, p, &ws.wl, &mut ks[..n], tape);
                    for (a, r) in ks[..n].iter_mut().zip(&ws.rates) {
                        for l in 0..LANES {
                            a[l] += r[l];
                        }
                    }
                    if s == 6 {
                        ws.xn.copy_from_slice(&ws.y);
                    }
                }
                // Error estimate: each lane's norm; the step needs all of them within tolerance.
                let mut e2 = [0.0f64; LANES];
                let mut finite = true;
                for i in 0..n {
                    let mut e = [0.0f64; LANES];
                    for (s, es) in E.iter().enumerate() {
                        let ks = ws.k[s * n + i];
                        for l in 0..LANES {
                            e[l] += es * ks[l];
                        }
                    }
                    for l in 0..LANES {
                        let sc = opts.atol + opts.rtol * ws.x[i][l].abs().max(ws.xn[i][l].abs());
                        let r = hh * e[l] / sc;
                        e2[l] += r * r;
                        finite &= ws.xn[i][l].is_finite();
                    }
                }
                let err = e2.iter().map(|v| (v / n as f64).sqrt()).fold(0.0f64, f64::max);
                finite &= e2.iter().all(|v| v.is_finite());
                if !err.is_finite() || !finite {
                    if hh <= 1e-10 {
                        return Err(FastError::NonFinite { t });
                    }
                    h = hh * 0.1;
                    continue;
                }
                let fac = if err == 0.0 { 5.0 } else { (0.9 * err.powf(-0.2)).clamp(0.2, 5.0) };
                if err <= 1.0 {
                    steps += 1;
                    if steps > opts.max_steps {
                        return Err(FastError::MaxSteps { t, max_steps: opts.max_steps });
                    }
                    let t_new = if hh == stop - t { stop } else { t + hh };
                    ws.items.push(Item::Step(ws.th.len()));
                    ws.th.push((t, hh, step_fresh));
                    step_fresh = false;
                    ws.xs.extend_from_slice(&ws.x);
                    ws.ks.extend_from_slice(&ws.k[..7 * n]);
                    base += 7 * tl;
                    if ws.tapes.len() < base + 7 * tl {
                        ws.tapes.resize(base + 7 * tl, [0.0; LANES]);
                    }
                    // Each lane's observations inside this step (those at `stop` wait for its events).
                    for l in 0..LANES {
                        let pl = plans[l];
                        while oi[l] < pl.obs.len() && pl.obs[oi[l]].0 <= t_new && pl.obs[oi[l]].0 < stop {
                            let (to, k, j) = pl.obs[oi[l]];
                            let theta = ((to - t) / hh).clamp(0.0, 1.0);
                            let bw = dense_weights(theta);
                            let mut yl = [0.0f64; NMAX];
                            for (i, yi) in yl[..n].iter_mut().enumerate() {
                                let mut acc = 0.0;
                                for (s, b) in bw.iter().enumerate() {
                                    acc += b * ws.k[s * n + i][l];
                                }
                                *yi = ws.x[i][l] + hh * acc;
                            }
                            let yv = self.sys.output(k, to, &yl[..n], &p[l][..m0]);
                            observe(l, j, yv, ws);
                            ws.items.push(Item::Obs { lane: l, j, k, t: to, slot: ws.obs_x.len(), theta: Some(theta) });
                            ws.obs_x.extend_from_slice(&yl[..n]);
                            oi[l] += 1;
                        }
                    }
                    t = t_new;
                    std::mem::swap(&mut ws.x, &mut ws.xn);
                    ws.k.copy_within(6 * n..7 * n, 0);
                    ws.tapes.copy_within(base - tl..base, base);
                    h = if hh < h { h.max(hh * fac) } else { hh * fac };
                } else {
                    h = hh * fac.min(1.0);
                }
            }
        }
        Ok(steps)
    }

    /// The backward sweep: per-lane parameter gradients into `ws.gp`, and
    /// the adjoint of the initial state into `ws.lam`.
    #[inline(always)]
    fn backward_body(&self, p: &[&[f64]; LANES], ws: &mut LockWorkspace) {
        let (n, m0, np) = (self.n, self.m0, self.nparams());
        let tl = self.tape_len();
        let rl = small::lanes_record_len(self.h1, self.h2);
        let z = [0.0f64; LANES];
        let LockWorkspace {
            th,
            xs,
            ks,
            tapes,
            items,
            obs_x,
            weights,
            lam,
            mu,
            kap,
            pend,
            acc_x,
            acc_k,
            gp,
            recs,
            y,
            wl,
            ..
        } = ws;
        for v in [&mut *lam, &mut *kap, &mut *pend, &mut *acc_x, &mut *y] {
            v.clear();
            v.resize(n, z);
        }
        for v in [&mut *mu, &mut *acc_k] {
            v.clear();
            v.resize(7 * n, z);
        }
        gp.clear();
        gp.resize(np, z);
        recs.clear();
        recs.resize(7 * rl, z);
        let mut pending = false;
        for item in items.iter().rev() {
            match *item {
                Item::Obs { lane, j, k, t, slot, theta } => {
                    let w = weights[lane][j];
                    if w != 0.0 {
                        let (mut tx, mut tp) = ([0.0f64; NMAX], [0.0f64; MMAX]);
                        let x = &obs_x[slot..slot + n];
                        self.sys.output_grad(k, t, x, &p[lane][..m0], &mut tx[..n], &mut tp[..m0]);
                        for (g, v) in gp.iter_mut().zip(&tp[..m0]) {
                            g[lane] += w * v;
                        }
                        match theta {
                            None => {
                                for (a, v) in lam.iter_mut().zip(&tx[..n]) {
                                    a[lane] += w * v;
                                }
                            }
                            Some(theta) => {
                                let bw = dense_weights(theta);
                                for i in 0..n {
                                    let g = w * tx[i];
                                    acc_x[i][lane] += g;
                                    for (s, b) in bw.iter().enumerate() {
                                        acc_k[s * n + i][lane] += b * g;
                                    }
                                }
                            }
                        }
                    }
                }
                Item::Reset(l) => lam.iter_mut().for_each(|v| v[l] = 0.0),
                Item::Step(idx) => {
                    let (t, h, fresh) = th[idx];
                    let x0 = &xs[idx * n..(idx + 1) * n];
                    let kst = &ks[idx * 7 * n..(idx + 1) * 7 * n];
                    let tps = &tapes[idx * 7 * tl..(idx + 1) * 7 * tl];
                    let mut nrec = 0;
                    for s in (0..7).rev() {
                        let mut any = false;
                        for i in 0..n {
                            let mut acc = [0.0f64; LANES];
                            for l in 0..LANES {
                                acc[l] = B7[s] * lam[i][l] + acc_k[s * n + i][l];
                            }
                            for jj in s + 1..7 {
                                let a = A[jj][s];
                                let mj = mu[jj * n + i];
                                for l in 0..LANES {
                                    acc[l] += a * mj[l];
                                }
                            }
                            for l in 0..LANES {
                                kap[i][l] = h * acc[l];
                            }
                            if s == 6 && pending {
                                for l in 0..LANES {
                                    kap[i][l] += pend[i][l];
                                }
                            }
                            any |= kap[i].iter().any(|v| *v != 0.0);
                        }
                        if s == 6 {
                            pending = false;
                        }
                        let mus = &mut mu[s * n..(s + 1) * n];
                        if s == 0 && !fresh {
                            // FSAL: this stage is the previous step's last one; its VJP joins that one.
                            pend.copy_from_slice(kap);
                            pending = true;
                            mus.iter_mut().for_each(|v| *v = z);
                            continue;
                        }
                        if !any {
                            mus.iter_mut().for_each(|v| *v = z);
                            continue;
                        }
                        for i in 0..n {
                            let mut acc = x0[i];
                            for (jj, a) in A[s][..s].iter().enumerate() {
                                let kj = kst[jj * n + i];
                                for l in 0..LANES {
                                    acc[l] += h * a * kj[l];
                                }
                            }
                            y[i] = acc;
                        }
                        let tape = &tps[s * tl..(s + 1) * tl];
                        let rec = &mut recs[nrec * rl..(nrec + 1) * rl];
                        self.vjp_lanes(t + C[s] * h, y, p, wl, kap, mus, gp, tape, rec);
                        nrec += 1;
                    }
                    if nrec > 0 {
                        // The records are valid for these shapes (checked in `new`).
                        let _ = small::weight_grads_lanes(self.h1, self.h2, &recs[..nrec * rl], &mut gp[m0..]);
                    }
                    for i in 0..n {
                        let mut acc = acc_x[i];
                        for s in 0..7 {
                            let ms = mu[s * n + i];
                            for l in 0..LANES {
                                acc[l] += ms[l];
                            }
                        }
                        for l in 0..LANES {
                            lam[i][l] += acc[l];
                        }
                    }
                    acc_x.iter_mut().for_each(|v| *v = z);
                    acc_k.iter_mut().for_each(|v| *v = z);
                }
            }
        }
    }
}

/// A fast-path right-hand side without its lockstep form: `fit` then runs
/// its subjects one at a time, each with its own step sizes (for
/// comparisons, or results that do not depend on which subjects are grouped).
///
/// ```
/// use insilico_neural::fast::FastRhs;
/// use insilico_neural::lockstep::OneByOne;
/// use insilico_neural::{Activation, Channel, Feature, FluxResidual, Mlp};
/// use insilico_mechanistic::PkModel;
/// let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
/// let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh).unwrap();
/// let h = FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![Channel::new(1, Some(2), 0.2)]).unwrap();
/// assert!(FastRhs::lockstep(&h).is_some());
/// assert!(OneByOne(&h).lockstep().is_none());
/// ```
pub struct OneByOne<'a>(pub &'a dyn FastRhs);

impl FastRhs for OneByOne<'_> {
    fn nstates(&self) -> usize {
        self.0.nstates()
    }
    fn nparams(&self) -> usize {
        self.0.nparams()
    }
    fn rhs(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64]) {
        self.0.rhs(t, x, p, dx)
    }
    fn vjp_both(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        self.0.vjp_both(t, x, p, w, gx, gp)
    }
    fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
        self.0.output(k, t, x, p)
    }
    fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        self.0.output_grad(k, t, x, p, gx, gp)
    }
    fn tape_len(&self) -> usize {
        self.0.tape_len()
    }
    fn rhs_tape(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64], tape: &mut [f64]) {
        self.0.rhs_tape(t, x, p, dx, tape)
    }
    fn vjp_tape(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64], tape: &[f64]) {
        self.0.vjp_tape(t, x, p, w, gx, gp, tape)
    }
}

/// Groups subjects for lockstep integration: plans that start at the same
/// time, ordered by their events and horizon (so that a group's subjects
/// stop at the same times and need similar steps), in chunks of [`LANES`].
/// Returns indices into `plans`; depends on the plans only, not on the
/// number of threads. The groups come in zigzag order over that sort (first,
/// last, second, second last, …): work tends to grow along it (larger
/// doses, later horizons), and a parallel iterator that halves the list
/// then hands each thread a similar share.
pub fn groups(plans: &[&Plan]) -> Vec<Vec<usize>> {
    let key = |pl: &Plan| -> Vec<f64> {
        let mut k = vec![pl.t0];
        for (t, ev) in &pl.events {
            k.push(*t);
            match *ev {
                Ev::Jump { cmt, amount } => k.extend([0.0, cmt as f64, amount]),
                Ev::Rate { cmt, delta } => k.extend([1.0, cmt as f64, delta]),
                Ev::Reset => k.extend([2.0, 0.0, 0.0]),
            }
        }
        k.push(f64::INFINITY); // ends the events, so that a prefix sorts first
        k.push(pl.horizon);
        k
    };
    let keys: Vec<Vec<f64>> = plans.iter().map(|pl| key(pl)).collect();
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by(|&a, &b| {
        let (ka, kb) = (&keys[a], &keys[b]);
        ka.iter().zip(kb).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(ka.len().cmp(&kb.len()))
    });
    let mut sorted: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match sorted.last_mut() {
            Some(g) if g.len() < LANES && plans[g[0]].t0 == plans[i].t0 => g.push(i),
            _ => sorted.push(vec![i]),
        }
    }
    let mut out = Vec::with_capacity(sorted.len());
    let (mut lo, mut hi) = (0usize, sorted.len());
    while lo < hi {
        out.push(std::mem::take(&mut sorted[lo]));
        lo += 1;
        if lo < hi {
            hi -= 1;
            out.push(std::mem::take(&mut sorted[hi]));
        }
    }
    out
}
