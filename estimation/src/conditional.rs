//! The individual (conditional) objective of one subject at fixed population
//! values, shared by FOCE-I's inner problem and the individual posterior:
//! NONMEM's POSTHOC objective
//!
//! ```text
//! O(η) = Σ_j w_j·[(y_j − f_j)²/V_j + ln V_j] + Σ_{j censored} w_j·(−2 ln Φ((L_j − f_j)/√V_j)) + ηᵀΩ⁻¹η
//! ```
//!
//! with `f_j(η)` the individual predictions (comparison scale), `V_j` the
//! residual variance of the output observation `j` feeds, `L_j` the limit of
//! a censored observation (Beal's M3) and `w_j` optional weights (1 by
//! default; the sequential down-weighting and "not yet seen" use them). Its
//! exact gradient comes from forward sensitivities of the ODE solution;
//! Levenberg–Marquardt minimises it with the expected (Fisher) curvature.

use std::sync::atomic::{AtomicUsize, Ordering};

use nalgebra::{DMatrix, DVector};

use crate::population::{Layout, PopValues, SolveSettings, SubjectData};

/// One evaluation of O at η.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub eta: DVector<f64>,
    pub o: f64,
    pub g: DVector<f64>,
    /// The expected (Fisher) Hessian of O: `Σ w (2/V + (V'/V)²) FᵀF + 2Ω⁻¹`
    /// (and `2λ(z + λ)(dz/df)²·FᵀF` for a censored observation).
    pub h: DMatrix<f64>,
    /// `Σ w F_jᵀF_j / V_j` over uncensored observations.
    pub ftvf: DMatrix<f64>,
    /// The predictions at η (comparison scale).
    pub f: Vec<f64>,
}

/// The machinery to evaluate and minimise one subject's conditional objective.
pub(crate) struct Conditional<'a> {
    pub layout: &'a Layout,
    pub settings: &'a SolveSettings,
    /// ODE solves so far (each with sensitivities by η).
    pub solves: &'a AtomicUsize,
    /// Maximum Levenberg–Marquardt iterations per start.
    pub max_iterations: usize,
    /// Convergence: the largest |Δη| of the last step.
    pub tolerance: f64,
    /// Add a structured secant correction `S` to the expected curvature
    /// (Dennis, Gay & Welsch 1981, NL2SOL), so that `h + S` tends to the
    /// full Hessian and the iterations converge superlinearly where the
    /// expected curvature alone converges linearly; and stop (converged) when
    /// no step decreases O any more (the minimum to the objective's
    /// precision). FOCE-I's inner problem keeps the plain Levenberg–Marquardt.
    pub secant: bool,
}

/// `(ln Φ(z), φ(z)/Φ(z))` for the standard normal, accurate in the far left tail.
pub(crate) fn log_cdf_and_mills(z: f64) -> (f64, f64) {
    const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
    if z > -35.0 {
        let cdf = 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
        let pdf = (-0.5 * z * z - LN_SQRT_2PI).exp();
        (cdf.ln(), pdf / cdf)
    } else {
        // Φ(z) = φ(z)/(−z)·(1 − 1/z² + 3/z⁴ − 15/z⁶ + 105/z⁸ − …); the next
        // term, 945/z¹⁰, is below 4e-13 relative at z = −35.
        let u = 1.0 / (z * z);
        let series = 1.0 - u * (1.0 - u * (3.0 - u * (15.0 - 105.0 * u)));
        (-0.5 * z * z - LN_SQRT_2PI - (-z).ln() + series.ln(), -z / series)
    }
}

impl Conditional<'_> {
    /// Individual predictions at (θ, η) and their Jacobian by η (row-major `n × q`).
    pub fn predict_at(&self, s: &SubjectData, theta: &[f64], eta: &DVector<f64>) -> Option<(Vec<f64>, Vec<f64>)> {
        self.solves.fetch_add(1, Ordering::Relaxed);
        let q = self.layout.n_eta();
        let (p, scale) = self.layout.individual(theta, eta.as_slice());
        let mut sens = s.predict(&p, &self.layout.eta_idx, self.settings).ok()?;
        for row in sens.jacobian.chunks_mut(q.max(1)) {
            for (v, sc) in row.iter_mut().zip(&scale) {
                *v *= sc;
            }
        }
        Some((sens.predictions, sens.jacobian))
    }

    /// O at η (no gradient), from predictions only: one ODE solve without sensitivities.
    pub fn value(&self, s: &SubjectData, pop: &PopValues, eta: &[f64], weights: Option<&[f64]>) -> Option<f64> {
        self.solves.fetch_add(1, Ordering::Relaxed);
        let (p, _) = self.layout.individual(&pop.theta, eta);
        let f = s.predict(&p, &[], self.settings).ok()?.predictions;
        let e = DVector::from_column_slice(eta);
        let mut o = e.dot(&(&pop.omega_inv * &e));
        for j in 0..f.len() {
            let w = weights.map_or(1.0, |w| w[j]);
            if w == 0.0 {
                continue;
            }
            let (t, _, _) = self.term(s, pop, j, f[j])?;
            o += w * t;
        }
        o.is_finite().then_some(o)
    }

    /// Observation `j`'s term of O at prediction `f`, its derivative by `f`
    /// and the expected curvature weight: `(term, dterm/df, curvature)`.
    fn term(&self, s: &SubjectData, pop: &PopValues, j: usize, f: f64) -> Option<(f64, f64, f64)> {
        let out = &self.layout.outputs[s.kind[j]];
        let (var, dv) = out.error.variance(f, &pop.sigma[out.sigma.clone()]);
        if !(var > 0.0 && var.is_finite()) {
            return None;
        }
        let y = s.y[j];
        if s.cens[j] {
            // −2 ln Φ(z), z = (L − f)/√V: dz/df = −1/√V − z·V'/(2V).
            let sd = var.sqrt();
            let z = (y - f) / sd;
            let (lp, lambda) = log_cdf_and_mills(z);
            let dz = -1.0 / sd - 0.5 * z * dv / var;
            // d²(−ln Φ)/dz² = λ(z + λ) ∈ (0, 1).
            Some((-2.0 * lp, -2.0 * lambda * dz, 2.0 * lambda * (z + lambda) * dz * dz))
        } else {
            let r = y - f;
            let t = r * r / var + var.ln();
            let c = -2.0 * r / var + (1.0 / var - r * r / (var * var)) * dv;
            Some((t, c, 2.0 / var + (dv / var) * (dv / var)))
        }
    }

    /// O, its exact gradient and expected curvature at η from predictions `f` and their Jacobian.
    pub fn point_from(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        eta: &DVector<f64>,
        f: Vec<f64>,
        jac: &[f64],
        weights: Option<&[f64]>,
    ) -> Option<Point> {
        let q = self.layout.n_eta();
        let oi = &pop.omega_inv;
        let oe = oi * eta;
        let mut o = eta.dot(&oe);
        let mut g = 2.0 * &oe;
        let mut h = 2.0 * oi;
        let mut ftvf = DMatrix::zeros(q, q);
        let mut fj = DVector::zeros(q);
        for (j, &fv) in f.iter().enumerate() {
            let w = weights.map_or(1.0, |w| w[j]);
            if w == 0.0 {
                continue;
            }
            for k in 0..q {
                fj[k] = jac[j * q + k];
            }
            let (t, c, curv) = self.term(s, pop, j, fv)?;
            o += w * t;
            g.axpy(w * c, &fj, 1.0);
            h.ger(w * curv, &fj, &fj, 1.0);
            if !s.cens[j] {
                let out = &self.layout.outputs[s.kind[j]];
                let var = out.error.variance(fv, &pop.sigma[out.sigma.clone()]).0;
                ftvf.ger(w / var, &fj, &fj, 1.0);
            }
        }
        if !o.is_finite() {
            return None;
        }
        Some(Point { eta: eta.clone(), o, g, h, ftvf, f })
    }

    /// O with its gradient at η (one ODE solve with sensitivities).
    pub fn point(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        eta: &DVector<f64>,
        weights: Option<&[f64]>,
    ) -> Option<Point> {
        let (f, jac) = self.predict_at(s, &pop.theta, eta)?;
        self.point_from(s, pop, eta, f, &jac, weights)
    }

    /// Levenberg–Marquardt from `start`; `(point, converged)`.
    pub fn minimise(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        start: &[f64],
        weights: Option<&[f64]>,
    ) -> Option<(Point, bool)> {
        let cur = self.point(s, pop, &DVector::from_column_slice(start), weights)?;
        self.minimise_from(s, pop, cur, weights)
    }

    /// Levenberg–Marquardt from an evaluated point.
    pub fn minimise_from(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        mut cur: Point,
        weights: Option<&[f64]>,
    ) -> Option<(Point, bool)> {
        let q = cur.eta.len();
        let mut lambda = 1e-4;
        let tol = self.tolerance;
        // The secant correction of the curvature (zero without `secant`).
        let mut corr = DMatrix::<f64>::zeros(q, q);
        for _ in 0..self.max_iterations {
            let mut accepted = None;
            let mut model = &cur.h + &corr;
            if model.clone().cholesky().is_none() {
                corr.fill(0.0);
                model = cur.h.clone();
            }
            for _ in 0..40 {
                let mut a = model.clone();
                for k in 0..a.nrows() {
                    a[(k, k)] *= 1.0 + lambda;
                }
                let Some(chol) = a.cholesky() else {
                    lambda *= 10.0;
                    continue;
                };
                let step = chol.solve(&(-&cur.g));
                // Keep steps on the η scale moderate (η of 5 is a factor e^5).
                let big = step.amax();
                // Converged without another solve when the (nearly undamped)
                // Gauss–Newton step is already below the tolerance.
                if lambda <= 1e-3 && big <= tol * (1.0 + cur.eta.amax()) {
                    return Some((cur, true));
                }
                let step = if big > 2.0 { step * (2.0 / big) } else { step };
                let trial_eta = &cur.eta + &step;
                match self.point(s, pop, &trial_eta, weights) {
                    Some(t) if t.o <= cur.o + 1e-12 * cur.o.abs() => {
                        accepted = Some((t, step));
                        lambda = (lambda / 10.0).max(1e-12);
                        break;
                    }
                    _ => lambda *= 10.0,
                }
            }
            let Some((next, step)) = accepted else {
                // No decrease even along a tiny gradient step: with the secant
                // variant, the minimum to the precision of O.
                return self.secant.then_some((cur, true));
            };
            if self.secant {
                secant_update(&mut corr, &next.h, &step, &(&next.g - &cur.g));
            }
            let small_step = step.amax() <= tol * (1.0 + next.eta.amax());
            cur = next;
            if small_step {
                return Some((cur, true));
            }
        }
        Some((cur, false))
    }

    /// The starts `warm`, 0 (when `warm` is not 0) and ±½ω along each axis.
    pub fn starts(&self, pop: &PopValues, warm: &[f64]) -> Vec<Vec<f64>> {
        let q = self.layout.n_eta();
        let mut starts: Vec<Vec<f64>> = vec![warm.to_vec()];
        if warm.iter().any(|v| *v != 0.0) {
            starts.push(vec![0.0; q]);
        }
        let om = pop.omega.matrix();
        for k in 0..q {
            for sign in [0.5, -0.5] {
                let mut e = vec![0.0; q];
                e[k] = sign * om[(k, k)].sqrt();
                starts.push(e);
            }
        }
        starts
    }

    /// The best minimum over the starts of [`Conditional::starts`]: with
    /// `all` every start runs and the lowest converged objective wins;
    /// otherwise the first converged start ends the search.
    pub fn multistart(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        warm: &[f64],
        weights: Option<&[f64]>,
        all: bool,
    ) -> Option<(Point, bool)> {
        self.multistart_from(s, pop, warm, None, weights, all)
    }

    /// As [`Conditional::multistart`], with the objective at `warm` already
    /// evaluated (`first`, when given).
    pub fn multistart_from(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        warm: &[f64],
        mut first: Option<Point>,
        weights: Option<&[f64]>,
        all: bool,
    ) -> Option<(Point, bool)> {
        let mut best: Option<(Point, bool)> = None;
        for st in &self.starts(pop, warm) {
            let res = match first.take() {
                Some(p) => self.minimise_from(s, pop, p, weights),
                None => self.minimise(s, pop, st, weights),
            };
            if let Some((p, conv)) = res {
                let better = best.as_ref().is_none_or(|(b, bc)| (conv && !bc) || (conv == *bc && p.o < b.o));
                if better {
                    best = Some((p, conv));
                }
                if conv && !all {
                    break;
                }
            }
        }
        best
    }
}

/// The structured secant update of NL2SOL (Dennis, Gay & Welsch 1981):
/// with step `s`, gradient change `y` and the new expected curvature `h`,
/// `S` is first sized by `min(1, |sᵀy♯|/|sᵀSs|)`, `y♯ = y − h·s`, then
/// updated so that `(h + S)·s = y`:
/// `S ← S + (w yᵀ + y wᵀ)/(yᵀs) − (wᵀs) y yᵀ/(yᵀs)²` with `w = y♯ − S s`.
/// Skipped when `yᵀs ≤ 0` (no positive curvature along the step).
fn secant_update(corr: &mut DMatrix<f64>, h: &DMatrix<f64>, s: &DVector<f64>, y: &DVector<f64>) {
    let ys = y.dot(s);
    if !(ys.is_finite() && ys > 1e-300) {
        return;
    }
    let ysharp = y - h * s;
    let sss = s.dot(&(&*corr * s));
    if sss.abs() > 0.0 {
        let tau = (s.dot(&ysharp).abs() / sss.abs()).min(1.0);
        *corr *= tau;
    }
    let w = &ysharp - &*corr * s;
    let ws = w.dot(s);
    *corr += (&w * y.transpose() + y * w.transpose()) / ys - (y * y.transpose()) * (ws / (ys * ys));
}

#[cfg(test)]
mod tests {
    use super::{log_cdf_and_mills, secant_update};
    use nalgebra::{DMatrix, DVector};

    /// After the structured secant update, `(h + S)·s = y` (the secant
    /// condition) holds to round-off and `S` stays symmetric.
    #[test]
    fn secant_update_meets_the_secant_condition() {
        let h = DMatrix::from_row_slice(2, 2, &[4.0, 1.0, 1.0, 3.0]);
        let mut corr = DMatrix::from_row_slice(2, 2, &[0.5, 0.1, 0.1, -0.2]);
        let s = DVector::from_column_slice(&[0.3, -0.2]);
        let y = DVector::from_column_slice(&[1.7, -0.1]);
        secant_update(&mut corr, &h, &s, &y);
        let r = (&h + &corr) * &s - &y;
        assert!(r.amax() < 1e-14, "{r}");
        assert!((corr[(0, 1)] - corr[(1, 0)]).abs() < 1e-15);
    }

    /// ln Φ and the inverse Mills ratio against reference values and the
    /// identity d ln Φ/dz = φ/Φ (central differences), on both sides of the
    /// switch to the asymptotic series at z = −35.
    #[test]
    fn log_cdf_matches_references() {
        // Φ(−1) = 0.15865525393145707, Φ(1.5) = 0.9331927987311419 (R pnorm).
        assert!((log_cdf_and_mills(-1.0).0 - 0.158_655_253_931_457_07f64.ln()).abs() < 1e-14);
        assert!((log_cdf_and_mills(1.5).0 - 0.933_192_798_731_141_9f64.ln()).abs() < 1e-14);
        // pnorm(-40, log.p = TRUE) = -804.6084420137538.
        assert!((log_cdf_and_mills(-40.0).0 + 804.608_442_013_753_8).abs() < 1e-10);
        for z in [-60.0, -35.5, -34.5, -8.0, -1.0, 0.0, 2.0, 6.0] {
            let h = 1e-5 * (1.0 + f64::abs(z));
            let fd = (log_cdf_and_mills(z + h).0 - log_cdf_and_mills(z - h).0) / (2.0 * h);
            let m = log_cdf_and_mills(z).1;
            assert!((fd - m).abs() < 1e-7 * m.abs().max(1e-3), "z = {z}: fd {fd} vs {m}");
        }
        // Both sides of the switch agree (first-order Taylor across the 2e-9 gap).
        let (a, b) = (log_cdf_and_mills(-35.0 + 1e-9), log_cdf_and_mills(-35.0 - 1e-9));
        assert!((a.0 - b.0 - 2e-9 * a.1).abs() < 1e-10 && (a.1 - b.1).abs() < 1e-8, "{a:?} {b:?}");
        // pnorm(-34.5, log.p = TRUE) = -599.5857362594724 (mpmath, 30 digits).
        assert!((log_cdf_and_mills(-34.5).0 + 599.585_736_259_472_4).abs() < 1e-9);
    }
}
