//! Shape constraints on a learned flux, as a penalty of the fitting
//! objective ([`crate::fit::Penalty`]).
//!
//! A network fitted to data constrains the learned term only where the data
//! are. [`FluxShape`] adds prior knowledge about its *shape* on a grid that
//! extends past the data, so that what the model predicts outside the data
//! range is governed by that knowledge rather than by where the tanh units
//! happen to bend. For an elimination pathway the knowledge is:
//!
//! * [`Shape::Monotone`]: the flux `J(C)` does not decrease when the
//!   concentration rises (more drug is never eliminated more slowly);
//! * [`Shape::Saturable`]: in addition, the rate constant `J(C)/C` does not
//!   increase (clearance is first-order or saturates, as with linear,
//!   Michaelis–Menten, linear + Michaelis–Menten or several parallel
//!   saturable pathways; cooperative, sigmoid elimination is excluded).
//!
//! # The penalty
//! On a grid `u_1 < … < u_n` of the network's (single) input, with
//! `L_i = ln J(u_i)` (the channel's flux at the source amount that input
//! corresponds to) and `Δ_i = L_{i+1} − L_i`, `ℓ_i = ln(u_{i+1}/u_i)`:
//!
//! `P = λ Σ_i [ max(0, −Δ_i)² + max(0, Δ_i − ℓ_i)² ]`
//!
//! (the second term for [`Shape::Saturable`] only). It is zero exactly when
//! the flux is non-decreasing (and its rate non-increasing) between grid
//! points, does not depend on the flux's units, and a large `λ` makes it a
//! hard constraint in practice ([`FluxShape::max_violation`] reports what is
//! left). Its gradient with respect to the weights is exact (one network VJP
//! per grid point) and so is that with respect to the volume that maps
//! inputs to amounts.

use crate::coupling::FluxResidual;
use crate::fit::Penalty;
use crate::mlp::{sigmoid, softplus};
use crate::residual::Residual;
use crate::NeuralError;
use insilico_solvers::System;

/// Which shape [`FluxShape`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Flux non-decreasing in the input.
    Monotone,
    /// Flux non-decreasing and flux/input non-increasing.
    Saturable,
}

impl Shape {
    /// Parses `monotone` or `saturable`.
    pub fn parse(s: &str) -> Option<Shape> {
        match s.trim().to_ascii_lowercase().as_str() {
            "monotone" => Some(Shape::Monotone),
            "saturable" => Some(Shape::Saturable),
            _ => None,
        }
    }
}

/// A shape penalty on channel `channel` of a [`FluxResidual`] whose network
/// has one input `u` (e.g. a concentration divided by its feature scale).
///
/// The source amount at input `u` is `x = u · amount_per_unit · θ[v_index]`
/// (without the last factor when `v_index` is `None`); for a PK model whose
/// network reads `C/fs` with `C = scale · A/V`, that is
/// `amount_per_unit = fs/scale` and `v_index` the index of `V`.
///
/// # Example
/// ```
/// use insilico_mechanistic::PkModel;
/// use insilico_neural::fit::Penalty;
/// use insilico_neural::shape::{FluxShape, Shape};
/// use insilico_neural::{Activation, Channel, Feature, FluxResidual, Mlp};
///
/// let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
/// let net = Mlp::new(&[1, 8, 1], Activation::Tanh).unwrap();
/// let h = FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![Channel::new(1, Some(2), 0.2)]).unwrap();
/// // Grid from C = 0.05 to 100 (inputs C/5), volume is parameter 2.
/// let shape = FluxShape::new(&h, 0, Shape::Saturable, 0.01, 20.0, 40, 5.0, Some(2), 1e3).unwrap();
/// let theta = [1.0, 0.0, 20.0];
/// let w = vec![0.0; h.net().n_params()]; // constant network: a linear flux
/// let (mut gt, mut gw) = (vec![0.0; 3], vec![0.0; w.len()]);
/// assert!(shape.value_grad(&theta, &w, &mut gt, &mut gw) < 1e-20); // linear is allowed
/// assert!(shape.max_violation(&theta, &w) < 1e-12);
/// ```
#[derive(Debug, Clone)]
pub struct FluxShape<'a, S, R> {
    coupling: &'a FluxResidual<S, R>,
    channel: usize,
    shape: Shape,
    grid: Vec<f64>,
    amount_per_unit: f64,
    v_index: Option<usize>,
    weight: f64,
}

impl<'a, S: System, R: Residual> FluxShape<'a, S, R> {
    /// A penalty of weight `weight` (λ) on `n ≥ 2` inputs spaced
    /// geometrically from `u_min` to `u_max` (`0 < u_min < u_max`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        coupling: &'a FluxResidual<S, R>,
        channel: usize,
        shape: Shape,
        u_min: f64,
        u_max: f64,
        n: usize,
        amount_per_unit: f64,
        v_index: Option<usize>,
        weight: f64,
    ) -> Result<Self, NeuralError> {
        let bad = |s: String| Err(NeuralError::Shape(format!("flux shape: {s}")));
        if channel >= coupling.channels().len() {
            return bad(format!("channel {channel} does not exist"));
        }
        if coupling.features().len() != 1 || coupling.net().n_inputs() != 1 {
            return bad("the network must have exactly one input".into());
        }
        if !(u_min.is_finite() && u_max.is_finite() && 0.0 < u_min && u_min < u_max && n >= 2) {
            return bad(format!("grid {u_min}..{u_max} with {n} points: need 0 < u_min < u_max and n ≥ 2"));
        }
        if !(amount_per_unit.is_finite() && amount_per_unit > 0.0 && weight.is_finite() && weight >= 0.0) {
            return bad(format!("amount_per_unit {amount_per_unit} must be > 0 and weight {weight} ≥ 0"));
        }
        if v_index.is_some_and(|k| k >= coupling.nparams() - coupling.net().n_params()) {
            return bad(format!("volume index {v_index:?} is not a mechanistic parameter"));
        }
        let r = (u_max / u_min).powf(1.0 / (n - 1) as f64);
        let grid = (0..n).map(|i| u_min * r.powi(i as i32)).collect();
        Ok(FluxShape { coupling, channel, shape, grid, amount_per_unit, v_index, weight })
    }

    /// The grid of network inputs.
    pub fn grid(&self) -> &[f64] {
        &self.grid
    }

    fn volume(&self, theta: &[f64]) -> f64 {
        self.v_index.map_or(1.0, |k| theta[k])
    }

    /// `(ln J_i, ∂ln J_i/∂g_i, ∂ln J_i/∂V)` at every grid point.
    fn logs(&self, theta: &[f64], w: &[f64]) -> Vec<(f64, f64, f64)> {
        let ch = self.coupling.channels()[self.channel];
        let net = self.coupling.net();
        let no = net.n_outputs();
        let v = self.volume(theta);
        let mut y = vec![0.0; no];
        self.grid
            .iter()
            .map(|&u| {
                net.eval(w, &[u], &mut y);
                let g = y[self.channel];
                // ln softplus(g) without underflow; d/dg = sigmoid/softplus (→ 1 for g ≪ 0).
                let (lsp, dlsp) = if g < -30.0 { (g, 1.0) } else { (softplus(g).ln(), sigmoid(g) / softplus(g)) };
                let x = u * self.amount_per_unit * v;
                let (a, da) = ch.gate(x);
                (ch.scale.ln() + a.ln() + lsp, dlsp, da * x / (a * v))
            })
            .collect()
    }

    /// `∂P/∂L_i` for the log-fluxes `l`, and `P`.
    fn dp_dl(&self, l: &[f64]) -> (f64, Vec<f64>) {
        log_flux_penalty(l, &self.grid, self.shape, self.weight)
    }

    /// The largest violation on the grid, in log units: how far (as
    /// `ln(J_i/J_{i+1})`, or the excess of `ln(k_{i+1}/k_i)` for
    /// [`Shape::Saturable`]) the flux breaks the shape between neighbours.
    pub fn max_violation(&self, theta: &[f64], w: &[f64]) -> f64 {
        let l: Vec<f64> = self.logs(theta, w).into_iter().map(|t| t.0).collect();
        log_flux_max_violation(&l, &self.grid, self.shape)
    }
}

impl<S: System, R: Residual> Penalty for FluxShape<'_, S, R> {
    fn value_grad(&self, theta: &[f64], w: &[f64], g_theta: &mut [f64], g_w: &mut [f64]) -> f64 {
        let logs = self.logs(theta, w);
        let l: Vec<f64> = logs.iter().map(|t| t.0).collect();
        let (p, d) = self.dp_dl(&l);
        if p == 0.0 {
            return 0.0;
        }
        let net = self.coupling.net();
        let mut y = vec![0.0; net.n_outputs()];
        for (i, &u) in self.grid.iter().enumerate() {
            if d[i] == 0.0 {
                continue;
            }
            let (_, dlsp, dv) = logs[i];
            if let Some(k) = self.v_index {
                g_theta[k] += d[i] * dv;
            }
            let c = self.channel;
            let gi = d[i] * dlsp;
            let mut cot = |_: &[f64], gy: &mut [f64]| {
                gy.iter_mut().for_each(|v| *v = 0.0);
                gy[c] = gi;
            };
            net.vjp(w, &[u], &mut y, &mut cot, None, Some(g_w));
        }
        p
    }
}

/// The largest violation of the shape by log-fluxes `l` at the
/// concentrations `grid`, in log units: `max_i max(−Δ_i, Δ_i − ℓ_i)` (the
/// second term for [`Shape::Saturable`] only), 0 when the shape holds.
/// Shared by [`FluxShape`] and the `fit` command's penalty on model files.
pub fn log_flux_max_violation(l: &[f64], grid: &[f64], shape: Shape) -> f64 {
    let mut worst = 0.0f64;
    for i in 0..l.len().saturating_sub(1) {
        let delta = l[i + 1] - l[i];
        worst = worst.max(-delta);
        if shape == Shape::Saturable {
            worst = worst.max(delta - (grid[i + 1] / grid[i]).ln());
        }
    }
    worst
}

/// The shape penalty on log-fluxes `l` at the concentrations `grid`
/// (increasing): `P = weight · Σ_i [max(0, −Δ_i)² + max(0, Δ_i − ℓ_i)²]` with
/// `Δ_i = l_{i+1} − l_i`, `ℓ_i = ln(grid_{i+1}/grid_i)` (the second term for
/// [`Shape::Saturable`] only), and `∂P/∂l_i`. Shared by [`FluxShape`] and the
/// `fit` command's penalty on model files.
///
/// ```
/// use insilico_neural::shape::{log_flux_penalty, Shape};
/// // a flux that falls between the first two points
/// let (p, d) = log_flux_penalty(&[0.0, -0.5, 1.0], &[1.0, 2.0, 4.0], Shape::Monotone, 2.0);
/// assert!((p - 2.0 * 0.25).abs() < 1e-15);
/// assert_eq!(d, vec![2.0, -2.0, 0.0]);
/// ```
pub fn log_flux_penalty(l: &[f64], grid: &[f64], shape: Shape, weight: f64) -> (f64, Vec<f64>) {
    let mut d = vec![0.0; l.len()];
    let mut p = 0.0;
    for i in 0..l.len().saturating_sub(1) {
        let delta = l[i + 1] - l[i];
        let lim = (grid[i + 1] / grid[i]).ln();
        let mut dd = 0.0;
        if delta < 0.0 {
            p += delta * delta;
            dd += 2.0 * delta;
        }
        if shape == Shape::Saturable && delta > lim {
            p += (delta - lim) * (delta - lim);
            dd += 2.0 * (delta - lim);
        }
        d[i + 1] += weight * dd;
        d[i] -= weight * dd;
    }
    (weight * p, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coupling::{Channel, ChannelForm, Feature};
    use crate::mlp::{Activation, Mlp};
    use insilico_mechanistic::PkModel;

    fn hybrid(form: ChannelForm) -> FluxResidual<PkModel, Mlp> {
        let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
        let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh).unwrap();
        let ch = Channel::new(1, Some(2), 0.2).with_form(form);
        FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![ch]).unwrap()
    }

    /// The penalty's gradient (weights and volume) against central
    /// differences, for both channel forms and both shapes, at random
    /// weights that violate the shape (relative error < 1e-5 of the largest
    /// component).
    #[test]
    fn gradient_matches_fd() {
        for form in [ChannelForm::Rate, ChannelForm::Saturating { half: 50.0 }] {
            let h = hybrid(form);
            for shape in [Shape::Monotone, Shape::Saturable] {
                let pen = FluxShape::new(&h, 0, shape, 0.005, 20.0, 32, 5.0, Some(2), 10.0).unwrap();
                let theta = [1.0, 0.0, 21.0];
                // Large random weights (wiggly flux); the first seed that violates the shape.
                let w = (0..50u64)
                    .map(|seed| h.net().init(seed, 4.0).iter().map(|v| 3.0 * v).collect::<Vec<f64>>())
                    .find(|w| pen.max_violation(&theta, w) > 1e-3)
                    .expect("some random weights violate the shape");
                let (mut gt, mut gw) = (vec![0.0; 3], vec![0.0; w.len()]);
                let p = pen.value_grad(&theta, &w, &mut gt, &mut gw);
                assert!(p > 0.0, "{form:?} {shape:?}: violated shape, zero penalty");
                let val = |t: &[f64], w: &[f64]| {
                    let (mut a, mut b) = (vec![0.0; 3], vec![0.0; w.len()]);
                    pen.value_grad(t, w, &mut a, &mut b)
                };
                let scale = gw.iter().chain(&gt).map(|v| v.abs()).fold(0.0, f64::max);
                for k in (0..w.len()).step_by(5) {
                    let hs = 1e-6;
                    let (mut wp, mut wm) = (w.clone(), w.clone());
                    wp[k] += hs;
                    wm[k] -= hs;
                    let fd = (val(&theta, &wp) - val(&theta, &wm)) / (2.0 * hs);
                    assert!((fd - gw[k]).abs() <= 1e-5 * scale, "{form:?} {shape:?} w{k}: {fd} vs {}", gw[k]);
                }
                let (mut tp, mut tm) = (theta, theta);
                tp[2] += 1e-5;
                tm[2] -= 1e-5;
                let fd = (val(&tp, &w) - val(&tm, &w)) / 2e-5;
                assert!((fd - gt[2]).abs() <= 1e-5 * scale, "{form:?} {shape:?} V: {fd} vs {}", gt[2]);
                if form == ChannelForm::Rate {
                    assert!(gt[2].abs() <= 1e-9 * scale, "the rate form's shape does not depend on V");
                }
            }
        }
    }

    /// Zero for shapes that satisfy the constraint, positive for ones that
    /// do not: a Michaelis–Menten-like rate (allowed by both), a rate that
    /// rises with C (flux superlinear: not saturable, still monotone).
    #[test]
    fn value_on_known_shapes() {
        let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
        // A one-weight "network" g(u) = w0·u through the softplus: rate s·softplus(w0·u).
        let net = Mlp::new(&[1, 1], Activation::Tanh).unwrap();
        let h =
            FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![Channel::new(1, Some(2), 0.2)]).unwrap();
        let sat = FluxShape::new(&h, 0, Shape::Saturable, 0.01, 10.0, 30, 5.0, Some(2), 1.0).unwrap();
        let mono = FluxShape::new(&h, 0, Shape::Monotone, 0.01, 10.0, 30, 5.0, Some(2), 1.0).unwrap();
        let theta = [1.0, 0.0, 20.0];
        // w = [weight, bias]: a falling rate (w0 < 0) is saturable, and its flux is monotone as
        // long as u·softplus(w0·u) keeps rising, i.e. |w0|·u ≤ 1.2 (holds for w0 = -0.1, u ≤ 10).
        let falling = [-0.1, 0.0];
        let rising = [0.8, 0.0];
        assert_eq!(sat.max_violation(&theta, &falling), 0.0);
        assert_eq!(mono.max_violation(&theta, &falling), 0.0);
        assert!(sat.max_violation(&theta, &rising) > 0.01);
        assert_eq!(mono.max_violation(&theta, &rising), 0.0);
        // Strongly falling rate: the flux itself falls at large u.
        assert!(mono.max_violation(&theta, &[-3.0, 0.0]) > 0.1);
    }
}
