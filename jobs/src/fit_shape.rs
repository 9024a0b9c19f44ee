//! The `[neural] shape` penalty of `insilico fit` for any model file: a
//! shape constraint on the flux into one state as a function of the
//! concentration of another, evaluated through the model's own programs.
//!
//! For `[neural] from = "central"`, `to = "eliminated"` the flux is
//! `J(C) = d(eliminated)/dt` with only `central` holding drug, at the amount
//! `x(C) = C / k` where `k = ∂y/∂central` of the observed output `y` (a
//! concentration, `central / V`: the output must be proportional to the
//! amount in `from`). For P4's hybrid that is exactly the learned
//! elimination flux, and the penalty is the one of
//! [`insilico_neural::shape::FluxShape`]: on a geometric grid
//! `C_1 < … < C_n`, with `L_i = ln J(C_i)`, `Δ_i = L_{i+1} − L_i` and
//! `ℓ_i = ln(C_{i+1}/C_i)`,
//!
//! `P = λ Σ_i [ max(0, −Δ_i)² + max(0, Δ_i − ℓ_i)² ]`
//!
//! (the second term for [`Shape::Saturable`] only). Its gradient is exact:
//! `∂J/∂θ` and `∂J/∂x` from the model's VJPs (network weights through the
//! network's own VJP), and `∂x/∂θ = −x/k · ∂k/∂θ` from the output's
//! parameter derivative at one unit of `from`.

use crate::model::ModelSystem;
use crate::neural::fit::Penalty;
use crate::neural::shape::{log_flux_max_violation, log_flux_penalty, Shape};
use crate::solvers::System;

/// A shape penalty on the flux into state `to` as a function of the
/// observed concentration of state `from` (see the module docs).
#[derive(Debug, Clone)]
pub struct StateFluxShape<'a> {
    sys: &'a ModelSystem,
    /// Parameters before the network weights.
    m0: usize,
    from: usize,
    to: usize,
    output: usize,
    shape: Shape,
    grid: Vec<f64>,
    weight: f64,
}

impl<'a> StateFluxShape<'a> {
    /// A penalty of weight `weight` on `n ≥ 2` concentrations spaced
    /// geometrically from `c_min` to `c_max`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sys: &'a ModelSystem,
        m0: usize,
        from: usize,
        to: usize,
        output: usize,
        shape: Shape,
        c_min: f64,
        c_max: f64,
        n: usize,
        weight: f64,
    ) -> Result<Self, String> {
        if !(c_min.is_finite() && c_max.is_finite() && 0.0 < c_min && c_min < c_max && n >= 2) {
            return Err(format!(
                "grid {c_min}..{c_max} with {n} points: need 0 < c_min < c_max (is every observation 0?)"
            ));
        }
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(format!("weight {weight} must be ≥ 0"));
        }
        let r = (c_max / c_min).powf(1.0 / (n - 1) as f64);
        let grid = (0..n).map(|i| c_min * r.powi(i as i32)).collect();
        Ok(StateFluxShape { sys, m0, from, to, output, shape, grid, weight })
    }

    /// The grid of concentrations.
    pub fn grid(&self) -> &[f64] {
        &self.grid
    }

    /// The full parameter vector: mechanistic `theta` then weights `w`.
    fn params(&self, theta: &[f64], w: &[f64]) -> Vec<f64> {
        let mut p = theta[..self.m0].to_vec();
        p.extend_from_slice(w);
        p
    }

    /// `k = ∂y/∂x_from` and `∂k/∂θ` (the output at one unit of `from`).
    fn slope(&self, p: &[f64]) -> (f64, Vec<f64>) {
        let n = self.sys.nstates();
        let mut x = vec![0.0; n];
        x[self.from] = 1.0;
        let (mut gx, mut gp) = (vec![0.0; n], vec![0.0; p.len()]);
        self.sys.output_grad(self.output, 0.0, &x, p, &mut gx, &mut gp);
        (gx[self.from], gp)
    }

    /// The flux `J` into `to` at concentration `c`: `(J, x)`.
    fn flux(&self, p: &[f64], k: f64, c: f64) -> (f64, Vec<f64>) {
        let n = self.sys.nstates();
        let mut x = vec![0.0; n];
        x[self.from] = c / k;
        let u = vec![0.0; self.sys.ninputs()];
        let mut dx = vec![0.0; n];
        self.sys.rhs(0.0, &x, &u, p, &mut dx);
        (dx[self.to], x)
    }

    /// `J(c)` for plots: the flux into `to` and the amount in `from` at
    /// concentration `c`, for mechanistic `theta` and weights `w`.
    pub fn flux_at(&self, theta: &[f64], w: &[f64], c: f64) -> (f64, f64) {
        let p = self.params(theta, w);
        let (k, _) = self.slope(&p);
        let (j, x) = self.flux(&p, k, c);
        (j, x[self.from])
    }

    /// `L_i = ln J(C_i)` and, with `grad`, `∂L_i/∂p` (every parameter).
    fn logs(&self, p: &[f64], grad: bool) -> Vec<(f64, Vec<f64>)> {
        let (k, dk) = self.slope(p);
        let n = self.sys.nstates();
        let u = vec![0.0; self.sys.ninputs()];
        let mut wv = vec![0.0; n];
        wv[self.to] = 1.0;
        self.grid
            .iter()
            .map(|&c| {
                let (j, x) = self.flux(p, k, c);
                let j = j.max(f64::MIN_POSITIVE);
                if !grad {
                    return (j.ln(), Vec::new());
                }
                let (mut gx, mut gp) = (vec![0.0; n], vec![0.0; p.len()]);
                self.sys.vjp_state(0.0, &x, &u, p, &wv, &mut gx);
                self.sys.vjp_params(0.0, &x, &u, p, &wv, &mut gp);
                let dxdk = -x[self.from] / k;
                let g = gp.iter().zip(&dk).map(|(a, b)| (a + gx[self.from] * dxdk * b) / j).collect();
                (j.ln(), g)
            })
            .collect()
    }

    /// The largest violation on the grid, in log units (as
    /// [`insilico_neural::shape::FluxShape::max_violation`]).
    pub fn max_violation(&self, theta: &[f64], w: &[f64]) -> f64 {
        let l: Vec<f64> = self.logs(&self.params(theta, w), false).into_iter().map(|t| t.0).collect();
        log_flux_max_violation(&l, &self.grid, self.shape)
    }
}

impl Penalty for StateFluxShape<'_> {
    fn value_grad(&self, theta: &[f64], w: &[f64], g_theta: &mut [f64], g_w: &mut [f64]) -> f64 {
        let p = self.params(theta, w);
        let l = self.logs(&p, true);
        let logs: Vec<f64> = l.iter().map(|(v, _)| *v).collect();
        let (pen, dl) = log_flux_penalty(&logs, &self.grid, self.shape, self.weight);
        for ((_, g), d) in l.iter().zip(&dl) {
            if *d == 0.0 {
                continue;
            }
            for (a, b) in g_theta.iter_mut().zip(&g[..self.m0]) {
                *a += d * b;
            }
            for (a, b) in g_w.iter_mut().zip(&g[self.m0..]) {
                *a += d * b;
            }
        }
        pen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The penalty's gradient against central differences (tolerance 1e-5
    /// relative to the largest entry), on P4's hybrid with a network that
    /// breaks the shape.
    #[test]
    fn gradient_matches_central_differences() {
        let model = insilico_models_zoo::load("pk-1cmt-oral-hybrid").unwrap();
        let sys = ModelSystem::new(&model, &[]).unwrap();
        let m0 = 4;
        let theta = [1.1, 18.0, 0.2, 5.0];
        let w = model.networks()[0].mlp.init(5, 2.0);
        let shape = StateFluxShape::new(&sys, m0, 1, 2, 0, Shape::Saturable, 0.01, 100.0, 24, 10.0).unwrap();
        let (mut gt, mut gw) = (vec![0.0; m0], vec![0.0; w.len()]);
        let p0 = shape.value_grad(&theta, &w, &mut gt, &mut gw);
        assert!(p0 > 0.0, "the test network should break the shape");
        let scale = gt.iter().chain(&gw).fold(0.0f64, |m, v| m.max(v.abs()));
        let f = |t: &[f64], w: &[f64]| shape.value_grad(t, w, &mut vec![0.0; m0], &mut vec![0.0; w.len()]);
        for k in 0..m0 {
            let h = 1e-6 * theta[k].abs().max(1.0);
            let (mut a, mut b) = (theta, theta);
            a[k] += h;
            b[k] -= h;
            let fd = (f(&a, &w) - f(&b, &w)) / (2.0 * h);
            assert!((fd - gt[k]).abs() <= 1e-5 * scale, "theta {k}: fd {fd} vs {}", gt[k]);
        }
        for k in (0..w.len()).step_by(17) {
            let h = 1e-6;
            let (mut a, mut b) = (w.clone(), w.clone());
            a[k] += h;
            b[k] -= h;
            let fd = (f(&theta, &a) - f(&theta, &b)) / (2.0 * h);
            assert!((fd - gw[k]).abs() <= 1e-5 * scale, "weight {k}: fd {fd} vs {}", gw[k]);
        }
    }
}
