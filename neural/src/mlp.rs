//! Dense multilayer perceptrons written by hand over one flat parameter slice.
//!
//! # Parameter layout
//! A network with widths `[n0, n1, ..., nL]` has `L` layers; layer `l` maps
//! `n_l` inputs to `n_{l+1}` outputs as `z = W a + b`. The flat slice holds,
//! layer after layer, `W` **column-major** (`W[i + j·n_{l+1}]` is the weight
//! from input `j` to output `i`) followed by `b`. Hidden layers apply the
//! activation; the last layer is affine.
//!
//! The parameters are never owned by the network: every method takes them as
//! `&[f64]`, so an optimiser's vector, a slice of a solver's parameter vector
//! and a file's contents all work without copies.
//!
//! # Hot path
//! [`Mlp::forward`], [`Mlp::jvp_input`], [`Mlp::jvp_params`] and
//! [`Mlp::vjp`] take a preallocated [`Workspace`] and allocate nothing.
//! [`Mlp::backward`] reuses the activations of the last `forward` in the
//! workspace, so a forward followed by a VJP costs one forward pass.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::NeuralError;

/// Hidden-layer activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `tanh(z)`.
    Tanh,
    /// `softplus(z) = ln(1 + e^z)` (computed stably).
    Softplus,
}

impl Activation {
    /// Parses `tanh` or `softplus` (any case).
    pub fn parse(s: &str) -> Option<Activation> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tanh" => Some(Activation::Tanh),
            "softplus" => Some(Activation::Softplus),
            _ => None,
        }
    }
    /// Canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Softplus => "softplus",
        }
    }
    /// `(σ(z), σ'(z))`.
    #[inline(always)]
    pub fn eval(&self, z: f64) -> (f64, f64) {
        match self {
            Activation::Tanh => {
                let a = tanh_fast(z);
                (a, 1.0 - a * a)
            }
            Activation::Softplus => (softplus(z), sigmoid(z)),
        }
    }
    /// `σ''(z)` (used by tests and by callers that need curvature).
    pub fn second_derivative(&self, z: f64) -> f64 {
        match self {
            Activation::Tanh => {
                let a = z.tanh();
                -2.0 * a * (1.0 - a * a)
            }
            Activation::Softplus => {
                let s = sigmoid(z);
                s * (1.0 - s)
            }
        }
    }
}

/// `e^x` for `x` in about `[-700, 700]`, branch-free so that loops over it
/// vectorise: `x = k ln2 + r`, a degree-13 Taylor polynomial for `e^r`
/// (`|r| ≤ ln2/2`, truncation below 1e-17; evaluated by Estrin's scheme),
/// and `2^k` from the exponent bits.
/// Relative error within a few ulp of `f64::exp`.
#[inline(always)]
pub fn exp_fast(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52: rounds to an integer
    let x = x.clamp(-700.0, 700.0);
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Degree-13 Taylor polynomial by Estrin's scheme: the same terms as
    // Horner's rule, but a dependency chain of 5 multiply-adds instead of 13
    // (this is on the critical path of every tanh layer).
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let q0 = 1.0 + r;
    let q1 = 1.0 / 2.0 + r * (1.0 / 6.0);
    let q2 = 1.0 / 24.0 + r * (1.0 / 120.0);
    let q3 = 1.0 / 720.0 + r * (1.0 / 5_040.0);
    let q4 = 1.0 / 40_320.0 + r * (1.0 / 362_880.0);
    let q5 = 1.0 / 3_628_800.0 + r * (1.0 / 39_916_800.0);
    let q6 = 1.0 / 479_001_600.0 + r * (1.0 / 6_227_020_800.0);
    let s0 = q0 + r2 * q1;
    let s1 = q2 + r2 * q3;
    let s2 = q4 + r2 * q5;
    let u0 = s0 + r4 * s1;
    let u1 = s2 + r4 * q6;
    let p = u0 + r8 * u1;
    // The low bits of `t` hold k (two's complement); add the bias and shift into the exponent.
    let bits = (t.to_bits().wrapping_add(1023)) << 52;
    p * f64::from_bits(bits)
}

/// `tanh(z)` through [`exp_fast`]: `(e^{2z} − 1)/(e^{2z} + 1)`, absolute
/// error below 3e-16 (relative error grows as `1e-16/|z|` for tiny `|z|`,
/// far below what a network can resolve), branch-free.
#[inline(always)]
pub fn tanh_fast(z: f64) -> f64 {
    let e = exp_fast(2.0 * z.clamp(-20.0, 20.0));
    (e - 1.0) / (e + 1.0)
}

/// Dot product with four independent partial sums (so it pipelines and
/// vectorises instead of waiting on one long chain of additions).
#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let ca = a.chunks_exact(4);
    let cb = b.chunks_exact(4);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `ln(1 + e^z)` without overflow or loss of precision for large `|z|`.
#[inline(always)]
pub fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// `1 / (1 + e^{−z})` without overflow.
#[inline(always)]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// A dense network: widths, activation and the parameter layout derived from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MlpSpec", into = "MlpSpec")]
pub struct Mlp {
    widths: Vec<usize>,
    activation: Activation,
    /// Offset of each layer's `W` in the flat slice (one past the end last).
    offsets: Vec<usize>,
}

/// The serialised form of an [`Mlp`] (its widths and activation).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MlpSpec {
    widths: Vec<usize>,
    activation: Activation,
}

impl TryFrom<MlpSpec> for Mlp {
    type Error = NeuralError;
    fn try_from(s: MlpSpec) -> Result<Self, NeuralError> {
        Mlp::new(&s.widths, s.activation)
    }
}

impl From<Mlp> for MlpSpec {
    fn from(m: Mlp) -> Self {
        MlpSpec { widths: m.widths, activation: m.activation }
    }
}

/// Preallocated buffers for one network (or any smaller one).
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    /// Activations of every layer (input copy first), concatenated.
    acts: Vec<f64>,
    /// Activation derivatives of every hidden layer, aligned with `acts`.
    dacts: Vec<f64>,
    /// Two ping-pong buffers for tangents and cotangents.
    t0: Vec<f64>,
    t1: Vec<f64>,
}

impl Workspace {
    /// A workspace sized for `mlp`.
    pub fn new(mlp: &Mlp) -> Self {
        let mut ws = Workspace::default();
        ws.ensure(mlp);
        ws
    }
    /// Grows the buffers if `mlp` needs more (never shrinks; allocates only
    /// the first time a larger network is seen).
    pub fn ensure(&mut self, mlp: &Mlp) {
        let total: usize = mlp.widths.iter().sum();
        let maxw = mlp.widths.iter().copied().max().unwrap_or(0);
        if self.acts.len() < total {
            self.acts.resize(total, 0.0);
            self.dacts.resize(total, 0.0);
        }
        if self.t0.len() < maxw {
            self.t0.resize(maxw, 0.0);
            self.t1.resize(maxw, 0.0);
        }
    }
}

impl Mlp {
    /// A network with layer widths `widths` (input first, output last, at
    /// least two entries, all positive) and hidden activation `activation`.
    ///
    /// ```
    /// use insilico_neural::{Activation, Mlp};
    /// let net = Mlp::new(&[4, 32, 32, 3], Activation::Tanh).unwrap();
    /// assert_eq!(net.n_params(), 4 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3);
    /// ```
    pub fn new(widths: &[usize], activation: Activation) -> Result<Mlp, NeuralError> {
        if widths.len() < 2 || widths.contains(&0) {
            return Err(NeuralError::Shape(format!(
                "an MLP needs at least an input and an output width, all positive; got {widths:?}"
            )));
        }
        let mut offsets = Vec::with_capacity(widths.len());
        let mut off = 0;
        for l in 0..widths.len() - 1 {
            offsets.push(off);
            off += widths[l] * widths[l + 1] + widths[l + 1];
        }
        offsets.push(off);
        Ok(Mlp { widths: widths.to_vec(), activation, offsets })
    }

    /// Layer widths, input first.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }
    /// Hidden activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// Input width.
    pub fn n_inputs(&self) -> usize {
        self.widths[0]
    }
    /// Output width.
    pub fn n_outputs(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }
    /// Length of the flat parameter slice.
    pub fn n_params(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }
    /// Number of layers (weight matrices).
    pub fn n_layers(&self) -> usize {
        self.widths.len() - 1
    }
    /// Offsets in the flat slice of layer `l`'s weight matrix and bias.
    pub fn layer_offsets(&self, l: usize) -> (usize, usize) {
        let w = self.offsets[l];
        (w, w + self.widths[l] * self.widths[l + 1])
    }

    /// Seeded initialisation: Glorot-uniform weights (scaled by `gain`),
    /// zero biases; the output layer is scaled by `out_scale` (a small value
    /// makes a residual start near zero). Same seed, same weights, on every
    /// platform and thread count.
    pub fn init(&self, seed: u64, out_scale: f64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = vec![0.0; self.n_params()];
        for l in 0..self.n_layers() {
            let (ni, no) = (self.widths[l], self.widths[l + 1]);
            let (w0, _) = self.layer_offsets(l);
            let mut bound = (6.0 / (ni + no) as f64).sqrt();
            if l + 1 == self.n_layers() {
                bound *= out_scale;
            }
            for v in &mut p[w0..w0 + ni * no] {
                *v = rng.random_range(-1.0..1.0) * bound;
            }
        }
        p
    }

    /// `(h1, h2)` when this is a `1 → h1 → h2 → 1` tanh network with a
    /// specialised kernel ([`crate::small`]).
    pub(crate) fn small_shape(&self) -> Option<(usize, usize)> {
        match (self.activation, self.widths.as_slice()) {
            (Activation::Tanh, &[1, h1, h2, 1]) if crate::small::supported(h1, h2) => Some((h1, h2)),
            _ => None,
        }
    }

    /// Length of the tape of one evaluation (see [`crate::Residual::eval_tape`]):
    /// the hidden activations, and their derivatives unless a specialised
    /// kernel recomputes them.
    pub fn tape_len(&self) -> usize {
        if let Some((h1, h2)) = self.small_shape() {
            return h1 + h2;
        }
        2 * self.hidden_len()
    }

    fn hidden_len(&self) -> usize {
        let total: usize = self.widths.iter().sum();
        total - self.n_inputs() - self.n_outputs()
    }

    /// Copies the hidden activations and their derivatives from `ws` (after [`Mlp::forward`]).
    pub(crate) fn save_tape(&self, ws: &Workspace, tape: &mut [f64]) {
        let (ni, hid) = (self.n_inputs(), self.hidden_len());
        tape[..hid].copy_from_slice(&ws.acts[ni..ni + hid]);
        tape[hid..2 * hid].copy_from_slice(&ws.dacts[ni..ni + hid]);
    }

    /// Restores `ws` to its state after [`Mlp::forward`] at `x` from a [`Mlp::save_tape`] tape.
    pub(crate) fn load_tape(&self, x: &[f64], tape: &[f64], ws: &mut Workspace) {
        let (ni, hid) = (self.n_inputs(), self.hidden_len());
        ws.acts[..ni].copy_from_slice(&x[..ni]);
        ws.acts[ni..ni + hid].copy_from_slice(&tape[..hid]);
        ws.dacts[ni..ni + hid].copy_from_slice(&tape[hid..2 * hid]);
    }

    fn check(&self, w: &[f64], x: &[f64]) {
        debug_assert_eq!(w.len(), self.n_params(), "weight slice length");
        debug_assert_eq!(x.len(), self.n_inputs(), "input length");
    }

    /// `y = net(x)`; stores the activations in `ws` for a later
    /// [`Mlp::backward`]. `y` has length [`Mlp::n_outputs`].
    #[inline]
    pub fn forward(&self, w: &[f64], x: &[f64], ws: &mut Workspace, y: &mut [f64]) {
        self.check(w, x);
        let nl = self.n_layers();
        let acts = &mut ws.acts;
        let dacts = &mut ws.dacts;
        acts[..x.len()].copy_from_slice(x);
        let mut a0 = 0; // offset of the current layer's input activations
        for l in 0..nl {
            let (ni, no) = (self.widths[l], self.widths[l + 1]);
            let (wo, bo) = self.layer_offsets(l);
            let wm = &w[wo..wo + ni * no];
            let b = &w[bo..bo + no];
            let (inp, rest) = acts.split_at_mut(a0 + ni);
            let inp = &inp[a0..];
            let z: &mut [f64] = if l + 1 == nl { &mut y[..no] } else { &mut rest[..no] };
            z.copy_from_slice(b);
            for (j, &aj) in inp.iter().enumerate() {
                let col = &wm[j * no..(j + 1) * no];
                for (zi, &wij) in z.iter_mut().zip(col) {
                    *zi += wij * aj;
                }
            }
            if l + 1 < nl {
                let d = &mut dacts[a0 + ni..a0 + ni + no];
                match self.activation {
                    Activation::Tanh => {
                        for (zi, di) in z.iter_mut().zip(d.iter_mut()) {
                            let a = tanh_fast(*zi);
                            *zi = a;
                            *di = 1.0 - a * a;
                        }
                    }
                    Activation::Softplus => {
                        for (zi, di) in z.iter_mut().zip(d.iter_mut()) {
                            let s = *zi;
                            *zi = softplus(s);
                            *di = sigmoid(s);
                        }
                    }
                }
            }
            a0 += ni;
        }
    }

    /// Backpropagates `gy` (length `n_outputs`) through the activations
    /// stored by the last [`Mlp::forward`] on `ws` with the same weights:
    /// `gx = Jᵀ gy` (overwritten, if given) and `gw += (∂y/∂w)ᵀ gy` (accumulated, if given).
    #[inline]
    pub fn backward(
        &self,
        w: &[f64],
        gy: &[f64],
        ws: &mut Workspace,
        gx: Option<&mut [f64]>,
        mut gw: Option<&mut [f64]>,
    ) {
        let nl = self.n_layers();
        let total: usize = self.widths.iter().sum();
        let mut a_end = total - self.n_outputs(); // end of the current layer's inputs
        let Workspace { acts, dacts, t0, t1 } = ws;
        let (mut g, mut h) = (t0, t1);
        g[..gy.len()].copy_from_slice(gy);
        let want_gx = gx.is_some();
        for l in (0..nl).rev() {
            let (ni, no) = (self.widths[l], self.widths[l + 1]);
            let a0 = a_end - ni;
            let (wo, bo) = self.layer_offsets(l);
            let wm = &w[wo..wo + ni * no];
            let inp = &acts[a0..a_end];
            let gz = &g[..no];
            if let Some(gw) = gw.as_deref_mut() {
                for (gb, &gi) in gw[bo..bo + no].iter_mut().zip(gz) {
                    *gb += gi;
                }
                let gwm = &mut gw[wo..wo + ni * no];
                for (j, &aj) in inp.iter().enumerate() {
                    for (gwij, &gi) in gwm[j * no..(j + 1) * no].iter_mut().zip(gz) {
                        *gwij += gi * aj;
                    }
                }
            }
            if l == 0 && !want_gx {
                break;
            }
            // h = Wᵀ g, then times σ'(z) of the layer below (if hidden).
            let hn = &mut h[..ni];
            for (j, hj) in hn.iter_mut().enumerate() {
                *hj = dot(&wm[j * no..(j + 1) * no], gz);
            }
            if l > 0 {
                for (hj, &dj) in hn.iter_mut().zip(&dacts[a0..a_end]) {
                    *hj *= dj;
                }
            }
            std::mem::swap(&mut g, &mut h);
            a_end = a0;
        }
        if let Some(gx) = gx {
            gx.copy_from_slice(&g[..self.n_inputs()]);
        }
    }

    /// `gx = (∂y/∂x)ᵀ gy` (overwritten, if given) and `gw += (∂y/∂w)ᵀ gy`
    /// (accumulated, if given): a forward pass followed by [`Mlp::backward`].
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn vjp(
        &self,
        w: &[f64],
        x: &[f64],
        gy: &[f64],
        ws: &mut Workspace,
        y: &mut [f64],
        gx: Option<&mut [f64]>,
        gw: Option<&mut [f64]>,
    ) {
        self.forward(w, x, ws, y);
        self.backward(w, gy, ws, gx, gw);
    }

    /// `y = net(x)` and `jv = (∂y/∂x) v` in one pass (forward-mode).
    #[inline]
    pub fn jvp_input(&self, w: &[f64], x: &[f64], v: &[f64], ws: &mut Workspace, y: &mut [f64], jv: &mut [f64]) {
        self.jvp_impl(w, x, Some(v), None, ws, y, jv);
    }

    /// `y = net(x)` and `jv = (∂y/∂w) vw` in one pass (forward-mode in the weights).
    #[inline]
    pub fn jvp_params(&self, w: &[f64], x: &[f64], vw: &[f64], ws: &mut Workspace, y: &mut [f64], jv: &mut [f64]) {
        self.jvp_impl(w, x, None, Some(vw), ws, y, jv);
    }

    /// `y = net(x)` and `jv = (∂y/∂x) vx + (∂y/∂w) vw` (either tangent may be absent).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn jvp_impl(
        &self,
        w: &[f64],
        x: &[f64],
        vx: Option<&[f64]>,
        vw: Option<&[f64]>,
        ws: &mut Workspace,
        y: &mut [f64],
        jv: &mut [f64],
    ) {
        self.check(w, x);
        let nl = self.n_layers();
        let Workspace { acts, t0, t1, .. } = ws;
        let (mut ta, mut tz) = (t0, t1);
        acts[..x.len()].copy_from_slice(x);
        match vx {
            Some(v) => ta[..v.len()].copy_from_slice(v),
            None => ta[..x.len()].iter_mut().for_each(|t| *t = 0.0),
        }
        let mut a0 = 0;
        for l in 0..nl {
            let (ni, no) = (self.widths[l], self.widths[l + 1]);
            let (wo, bo) = self.layer_offsets(l);
            let wm = &w[wo..wo + ni * no];
            let (inp, rest) = acts.split_at_mut(a0 + ni);
            let inp = &inp[a0..];
            let last = l + 1 == nl;
            let z: &mut [f64] = if last { &mut y[..no] } else { &mut rest[..no] };
            let dz: &mut [f64] = if last { &mut jv[..no] } else { &mut tz[..no] };
            z.copy_from_slice(&w[bo..bo + no]);
            match vw {
                Some(vw) => dz.copy_from_slice(&vw[bo..bo + no]),
                None => dz.iter_mut().for_each(|d| *d = 0.0),
            }
            for j in 0..ni {
                let (aj, tj) = (inp[j], ta[j]);
                let col = &wm[j * no..(j + 1) * no];
                for i in 0..no {
                    z[i] += col[i] * aj;
                    dz[i] += col[i] * tj;
                }
                if let Some(vw) = vw {
                    let vcol = &vw[wo + j * no..wo + (j + 1) * no];
                    for i in 0..no {
                        dz[i] += vcol[i] * aj;
                    }
                }
            }
            if !last {
                for i in 0..no {
                    let (a, d) = self.activation.eval(z[i]);
                    z[i] = a;
                    dz[i] *= d;
                }
                std::mem::swap(&mut ta, &mut tz);
            }
            a0 += ni;
        }
    }

    /// Reads a network and its weights from JSON written by [`Mlp::to_json`].
    pub fn from_json(text: &str) -> Result<(Mlp, Vec<f64>), NeuralError> {
        let saved: SavedMlp = serde_json::from_str(text).map_err(|e| NeuralError::Format(e.to_string()))?;
        if saved.weights.len() != saved.net.n_params() {
            return Err(NeuralError::Format(format!(
                "the file holds {} weights, a {:?} network has {}",
                saved.weights.len(),
                saved.net.widths,
                saved.net.n_params()
            )));
        }
        if saved.weights.iter().any(|w| !w.is_finite()) {
            return Err(NeuralError::Format("a weight is not finite".into()));
        }
        Ok((saved.net, saved.weights))
    }

    /// The network and its weights as JSON (widths, activation, flat weights
    /// in the documented layout; numbers round-trip exactly).
    pub fn to_json(&self, weights: &[f64]) -> Result<String, NeuralError> {
        if weights.len() != self.n_params() {
            return Err(NeuralError::Shape(format!("{} weights for a network of {}", weights.len(), self.n_params())));
        }
        let saved = SavedMlpRef { net: self, weights };
        serde_json::to_string_pretty(&saved).map_err(|e| NeuralError::Format(e.to_string()))
    }

    /// Draws `n` weight vectors' worth of random numbers: a convenience for tests.
    #[doc(hidden)]
    pub fn random_weights(&self, rng: &mut impl Rng, scale: f64) -> Vec<f64> {
        (0..self.n_params()).map(|_| rng.random_range(-1.0..1.0) * scale).collect()
    }
}

#[derive(Deserialize)]
struct SavedMlp {
    net: Mlp,
    weights: Vec<f64>,
}

#[derive(Serialize)]
struct SavedMlpRef<'a> {
    net: &'a Mlp,
    weights: &'a [f64],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_check(net: &Mlp, w: &[f64], x: &[f64]) -> f64 {
        let mut ws = Workspace::new(net);
        let (ni, no, np) = (net.n_inputs(), net.n_outputs(), net.n_params());
        let mut y = vec![0.0; no];
        let h = 1e-6;
        let mut err: f64 = 0.0;
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
        // Jacobians by central differences
        let f = |w: &[f64], x: &[f64]| {
            let mut ws = Workspace::new(net);
            let mut y = vec![0.0; no];
            net.forward(w, x, &mut ws, &mut y);
            y
        };
        let mut jx = vec![vec![0.0; ni]; no];
        for j in 0..ni {
            let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
            xp[j] += h;
            xm[j] -= h;
            let (yp, ym) = (f(w, &xp), f(w, &xm));
            for i in 0..no {
                jx[i][j] = (yp[i] - ym[i]) / (2.0 * h);
            }
        }
        let mut jw = vec![vec![0.0; np]; no];
        for j in 0..np {
            let (mut wp, mut wm) = (w.to_vec(), w.to_vec());
            wp[j] += h;
            wm[j] -= h;
            let (yp, ym) = (f(&wp, x), f(&wm, x));
            for i in 0..no {
                jw[i][j] = (yp[i] - ym[i]) / (2.0 * h);
            }
        }
        for k in 0..no {
            let mut gy = vec![0.0; no];
            gy[k] = 1.0;
            let mut gx = vec![0.0; ni];
            let mut gw = vec![0.0; np];
            net.vjp(w, x, &gy, &mut ws, &mut y, Some(&mut gx), Some(&mut gw));
            for j in 0..ni {
                err = err.max(rel(gx[j], jx[k][j]));
            }
            for j in 0..np {
                err = err.max(rel(gw[j], jw[k][j]));
            }
        }
        let mut jv = vec![0.0; no];
        for j in 0..ni {
            let mut v = vec![0.0; ni];
            v[j] = 1.0;
            net.jvp_input(w, x, &v, &mut ws, &mut y, &mut jv);
            for i in 0..no {
                err = err.max(rel(jv[i], jx[i][j]));
            }
        }
        for j in (0..np).step_by(3) {
            let mut v = vec![0.0; np];
            v[j] = 1.0;
            net.jvp_params(w, x, &v, &mut ws, &mut y, &mut jv);
            for i in 0..no {
                err = err.max(rel(jv[i], jw[i][j]));
            }
        }
        err
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [Activation::Tanh, Activation::Softplus] {
            for widths in [vec![1, 1], vec![1, 16, 16, 1], vec![4, 7, 5, 3], vec![3, 8, 2]] {
                let net = Mlp::new(&widths, act).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(7);
                let w = net.random_weights(&mut rng, 0.8);
                let x: Vec<f64> = (0..net.n_inputs()).map(|i| 0.3 * i as f64 - 0.4).collect();
                let e = fd_check(&net, &w, &x);
                assert!(e < 1e-7, "{act:?} {widths:?}: {e}");
            }
        }
    }

    #[test]
    fn activation_derivatives_match_finite_differences() {
        for act in [Activation::Tanh, Activation::Softplus] {
            for &z in &[-40.0, -5.0, -1.3, -1e-3, 0.0, 0.2, 1.7, 6.0, 40.0] {
                let h = 1e-6;
                let (a, d) = act.eval(z);
                let fd = (act.eval(z + h).0 - act.eval(z - h).0) / (2.0 * h);
                assert!((d - fd).abs() < 1e-8, "{act:?} at {z}: {d} vs {fd}");
                let fd2 = (act.eval(z + h).1 - act.eval(z - h).1) / (2.0 * h);
                assert!((act.second_derivative(z) - fd2).abs() < 1e-8, "{act:?}'' at {z}");
                assert!(a.is_finite());
            }
        }
        // softplus is exact far out
        assert_eq!(softplus(800.0), 800.0);
        assert!(softplus(-800.0) >= 0.0);
    }

    #[test]
    fn fast_exp_and_tanh_match_std() {
        let mut worst_exp: f64 = 0.0;
        let mut worst_tanh: f64 = 0.0;
        for i in -200_000..=200_000 {
            let x = i as f64 * 1e-4 * 3.7;
            worst_exp = worst_exp.max((exp_fast(x) - x.exp()).abs() / x.exp());
            worst_tanh = worst_tanh.max((tanh_fast(x) - x.tanh()).abs());
        }
        assert!(worst_exp < 1e-15, "{worst_exp}");
        assert!(worst_tanh < 4e-16, "{worst_tanh}");
        assert_eq!(tanh_fast(1e3), 1.0);
        assert_eq!(tanh_fast(-1e3), -1.0);
        assert_eq!(tanh_fast(0.0), 0.0);
    }

    #[test]
    fn init_is_seeded_and_save_load_round_trips() {
        let net = Mlp::new(&[2, 5, 1], Activation::Softplus).unwrap();
        let a = net.init(42, 0.1);
        assert_eq!(a, net.init(42, 0.1));
        assert_ne!(a, net.init(43, 0.1));
        let text = net.to_json(&a).unwrap();
        let (net2, b) = Mlp::from_json(&text).unwrap();
        assert_eq!(net2, net);
        assert_eq!(a, b);
        assert!(Mlp::from_json("{\"net\":{\"widths\":[2,0],\"activation\":\"tanh\"},\"weights\":[]}").is_err());
        assert!(Mlp::from_json("{\"net\":{\"widths\":[1,1],\"activation\":\"tanh\"},\"weights\":[1]}").is_err());
        assert!(Mlp::new(&[3], Activation::Tanh).is_err());
    }

    #[test]
    fn layout_is_column_major() {
        // 2 -> 2 affine: y = W x + b with W = [[1, 2], [3, 4]] stored column-major.
        let net = Mlp::new(&[2, 2], Activation::Tanh).unwrap();
        let w = [1.0, 3.0, 2.0, 4.0, 0.5, -0.5];
        let mut ws = Workspace::new(&net);
        let mut y = [0.0; 2];
        net.forward(&w, &[1.0, 10.0], &mut ws, &mut y);
        assert_eq!(y, [21.5, 42.5]);
    }
}
