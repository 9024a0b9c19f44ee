//! Time integration of a reversible master equation by shift-and-invert
//! Krylov: `p(t) = p₀ exp(tK)` at any set of times, from scratch (no cached
//! eigendecomposition), with an a-posteriori error control.
//!
//! ## Why this method
//! A master equation is linear and autonomous, and a reversible one (detailed
//! balance, `π_i k_ij = π_j k_ji`) is symmetrisable: with `u = p Π^{−1/2}`,
//! `u(t)ᵀ = exp(tS) u₀ᵀ` for the symmetric negative semi-definite
//! `S = Π^{1/2} K Π^{−1/2}` (`S_ij = √(k_ij k_ji)`). Its spectrum spans many
//! decades (P3: relaxation rates from 0.2 to ~10⁵ per unit time), which makes
//! explicit methods and plain (polynomial) Krylov take steps of the fastest
//! scale. The shift-and-invert ("restricted-denominator rational") Krylov
//! method of van den Eshof & Hochbruck (SIAM J. Sci. Comput. 27, 2006) builds
//! the Krylov space of `A = (I − γS)⁻¹` instead, whose convergence for
//! `exp(tS)` does not depend on `‖S‖`: with `γ ≈ t/10` a few tens of sparse
//! Cholesky solves reach round-off. One factorisation serves every output
//! time in a window of about a decade (`t ∈ [γ, 10γ]`), so a whole P3 solve
//! (11 times over five decades) costs a handful of factorisations instead of
//! the tens that an implicit multistep method spends on step-size changes.
//!
//! ## The approximation and its error control
//! Lanczos with full reorthogonalisation on `A` from `v₁ = u₀/‖u₀‖` gives an
//! orthonormal `V_m` and a tridiagonal `T_m = V_mᵀ A V_m` (eigenvalues in
//! `(0, 1]`). Then `exp(tS) u₀ ≈ ‖u₀‖ V_m exp(t S_m) e₁` with
//! `S_m = (I − T_m⁻¹)/γ`, evaluated through the eigendecomposition of `T_m`
//! (size m ≤ 60). The error estimate is the change of the coefficient vector
//! when the space grows by one vector (the norm in `Rⁿ`, `V` being
//! orthonormal); the iteration stops when it is below `tol` (relative to
//! `‖u₀‖`) for every time of the window on two consecutive steps. An invariant subspace
//! (breakdown) is exact. Populations are recovered as `p_i = u_i √π_i`,
//! then clipped at 0 (round-off only) — `Σp = 1` holds to round-off because
//! `√π` is an eigenvector of `A` and so is represented exactly.

use faer::sparse::Triplet;
use faer::Side;

use super::markov::{tridiagonal, Chain, Clock, Factor};
use super::ConformationError;

/// Largest Krylov dimension per window before giving up.
const MAX_DIM: usize = 80;
/// `γ = t_max / TAU_MAX` for a window ending at `t_max`.
const TAU_MAX: f64 = 10.0;
/// A window covers `[t_max / WINDOW, t_max]`.
const WINDOW: f64 = 12.0;

/// Counters of one [`Chain::propagate`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PropagateStats {
    /// Sparse Cholesky factorisations (one per time window).
    pub factorisations: usize,
    /// Linear solves with the factor (Krylov vectors built).
    pub solves: usize,
}

fn invalid(s: impl Into<String>) -> ConformationError {
    ConformationError::Invalid(s.into())
}

/// Dot product with four partial sums, so that the compiler vectorises it
/// (the Gram–Schmidt passes are a third of the solve otherwise).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0.0; 4];
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

impl Chain {
    /// Populations `p(t) = p₀ exp(tK)` at each of `times` (≥ 0, any order)
    /// for a reversible continuous-time chain with stationary distribution
    /// `pi`, by shift-and-invert Krylov (see the [module
    /// docs](crate::conformation::propagate)). `tol` bounds the estimated
    /// error of `u = p Π^{−1/2}` relative to `‖u₀‖` (populations are then
    /// accurate to about `tol`); 1e-12 is a sensible choice.
    ///
    /// Errors: a discrete-time chain (use powers of `T`), a non-reversible
    /// chain (detailed-balance defect above 1e-8: use an ODE solver), `p₀` or
    /// `pi` of the wrong length or not finite, a negative or non-finite time,
    /// or no convergence within 80 Krylov vectors.
    ///
    /// ```
    /// use insilico_mechanistic::conformation::{Chain, Clock};
    /// // Two states, 0 → 1 at rate 2, 1 → 0 at rate 1: p₁(t) = 2/3 (1 − e^{−3t}).
    /// let chain = Chain::from_rates(2, &[(0, 1, 2.0), (1, 0, 1.0)], Clock::Continuous)?;
    /// let pi = chain.stationary()?;
    /// let (p, _) = chain.propagate(&pi, &[1.0, 0.0], &[0.0, 0.1, 1.0], 1e-12)?;
    /// for (t, row) in [0.0f64, 0.1, 1.0].iter().zip(&p) {
    ///     let exact = 2.0 / 3.0 * (1.0 - (-3.0 * t).exp());
    ///     assert!((row[1] - exact).abs() < 1e-12);
    /// }
    /// # Ok::<(), insilico_mechanistic::conformation::ConformationError>(())
    /// ```
    pub fn propagate(
        &self,
        pi: &[f64],
        p0: &[f64],
        times: &[f64],
        tol: f64,
    ) -> Result<(Vec<Vec<f64>>, PropagateStats), ConformationError> {
        let n = self.len();
        if self.clock() != Clock::Continuous {
            return Err(invalid("Krylov propagation needs a rate matrix (continuous time)"));
        }
        if pi.len() != n || p0.len() != n {
            return Err(invalid(format!("propagate: {n} states but pi has {} entries and p0 {}", pi.len(), p0.len())));
        }
        if pi.iter().any(|p| !(p.is_finite() && *p > 0.0)) {
            return Err(invalid("propagate: the stationary distribution must be finite and positive"));
        }
        if p0.iter().any(|p| !p.is_finite()) {
            return Err(invalid("propagate: the initial populations must be finite"));
        }
        if let Some(t) = times.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(invalid(format!("propagate: time {t} must be finite and non-negative")));
        }
        if !(tol.is_finite() && tol > 0.0) {
            return Err(invalid(format!("propagate: tolerance {tol} must be finite and positive")));
        }
        let defect = self.reversibility_defect(pi);
        if defect > 1e-8 {
            return Err(invalid(format!(
                "propagate: the chain is not reversible (detailed-balance defect {defect:.2e}); \
                 integrate it with an ODE solver instead"
            )));
        }
        let sqrt_pi: Vec<f64> = pi.iter().map(|p| p.sqrt()).collect();
        let u0: Vec<f64> = p0.iter().zip(&sqrt_pi).map(|(p, s)| p / s).collect();
        let norm0 = dot(&u0, &u0).sqrt();
        let mut out = vec![Vec::new(); times.len()];
        let mut stats = PropagateStats::default();
        // Times in ascending order, grouped into windows [t_max / WINDOW, t_max].
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by(|&a, &b| times[a].total_cmp(&times[b]));
        let mut rest: &[usize] = &order;
        while let Some(&first) = rest.first() {
            if times[first] == 0.0 || norm0 == 0.0 {
                out[first] = p0.to_vec();
                rest = &rest[1..];
                continue;
            }
            let t_min = times[first];
            let len = rest.iter().take_while(|&&k| times[k] <= t_min * WINDOW).count();
            let (window, tail) = rest.split_at(len);
            rest = tail;
            let ts: Vec<f64> = window.iter().map(|&k| times[k]).collect();
            let us = self.krylov_window(&u0, norm0, &ts, tol, &mut stats)?;
            for (&k, u) in window.iter().zip(us) {
                out[k] = u.iter().zip(&sqrt_pi).map(|(x, s)| (x * s).max(0.0)).collect();
            }
        }
        Ok((out, stats))
    }

    /// `exp(t S) u₀` for every `t` of one window, through the Krylov space of
    /// `(I − γS)⁻¹` with `γ = t_max / TAU_MAX`.
    fn krylov_window(
        &self,
        u0: &[f64],
        norm0: f64,
        ts: &[f64],
        tol: f64,
        stats: &mut PropagateStats,
    ) -> Result<Vec<Vec<f64>>, ConformationError> {
        let n = self.len();
        let t_max = ts.iter().copied().fold(0.0, f64::max);
        let gamma = t_max / TAU_MAX;
        // I − γS: diagonal 1 + γ·exit_i, off-diagonal −γ·√(k_ij k_ji).
        let exit = self.exit_rates();
        let mut trip = Vec::with_capacity(n + self.nnz());
        for (i, &ex) in exit.iter().enumerate() {
            trip.push(Triplet::new(i, i, 1.0 + gamma * ex));
        }
        for (i, j, k) in self.entries() {
            let s = (k * self.rate(j, i)).sqrt();
            if s > 0.0 {
                trip.push(Triplet::new(i, j, -gamma * s));
            }
        }
        let factor = Factor::new_spd(n, &trip)?;
        stats.factorisations += 1;

        let mut basis: Vec<Vec<f64>> = vec![u0.iter().map(|x| x / norm0).collect()];
        let mut alpha: Vec<f64> = Vec::new();
        let mut beta: Vec<f64> = Vec::new();
        let mut previous: Option<Vec<Vec<f64>>> = None;
        let mut passed = 0;
        for m in 1..=MAX_DIM.min(n) {
            let mut w = factor.solve(&basis[m - 1]);
            stats.solves += 1;
            alpha.push(dot(&w, &basis[m - 1]));
            for _ in 0..2 {
                for b in &basis {
                    let d = dot(&w, b);
                    w.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
                }
            }
            let bn = dot(&w, &w).sqrt();
            let breakdown = bn <= 1e-13 * alpha[0].abs().max(f64::MIN_POSITIVE) || m == n;
            if m >= 2 || breakdown {
                let coeffs = coefficients(&alpha, &beta, gamma, ts)?;
                let converged = match &previous {
                    Some(prev) => coeffs.iter().zip(prev).all(|(c, p)| {
                        let diff: f64 = c
                            .iter()
                            .enumerate()
                            .map(|(i, x)| (x - p.get(i).copied().unwrap_or(0.0)).powi(2))
                            .sum::<f64>()
                            .sqrt();
                        diff <= tol
                    }),
                    None => false,
                };
                passed = if converged { passed + 1 } else { 0 };
                if passed >= 2 || breakdown {
                    return Ok(coeffs
                        .iter()
                        .map(|c| {
                            let mut u = vec![0.0; n];
                            for (q, &y) in basis.iter().zip(c) {
                                u.iter_mut().zip(q).for_each(|(a, b)| *a += norm0 * y * b);
                            }
                            u
                        })
                        .collect());
                }
                previous = Some(coeffs);
            }
            beta.push(bn);
            w.iter_mut().for_each(|x| *x /= bn);
            basis.push(w);
        }
        Err(invalid(format!(
            "Krylov propagation did not converge within {MAX_DIM} vectors for t up to {t_max:e} \
             (tolerance {tol:e}); loosen the tolerance or integrate with an ODE solver"
        )))
    }
}

/// `exp(t S_m) e₁` for each `t`, `S_m = (I − T⁻¹)/γ`, `T` the Lanczos
/// tridiagonal of `alpha` (diagonal) and `beta` (off-diagonal).
fn coefficients(alpha: &[f64], beta: &[f64], gamma: f64, ts: &[f64]) -> Result<Vec<Vec<f64>>, ConformationError> {
    let m = alpha.len();
    let t = tridiagonal(alpha, beta);
    let evd =
        t.self_adjoint_eigen(Side::Lower).map_err(|e| invalid(format!("Krylov eigendecomposition failed: {e:?}")))?;
    let (w, theta) = (evd.U(), evd.S());
    Ok(ts
        .iter()
        .map(|&t| {
            let mut c = vec![0.0; m];
            for k in 0..m {
                let th = theta[k];
                // eigenvalue of S_m: (1 − 1/θ)/γ ≤ 0; θ ≤ 0 only from round-off on a
                // numerically singular direction, whose weight exp(−∞) is 0.
                let g = if th > 0.0 { (t * (1.0 - 1.0 / th) / gamma).exp() } else { 0.0 };
                let weight = g * w[(0, k)];
                for (i, ci) in c.iter_mut().enumerate() {
                    *ci += w[(i, k)] * weight;
                }
            }
            c
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformation::p3;
    use faer::Mat;

    /// A random reversible chain on a ring with chords: π random, symmetric
    /// conductances random, k_ij = c_ij / π_i.
    fn random_reversible(n: usize, seed: u64) -> (Chain, Vec<f64>) {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64) / ((1u64 << 53) as f64)
        };
        let pi_raw: Vec<f64> = (0..n).map(|_| (4.0 * next()).exp()).collect();
        let total: f64 = pi_raw.iter().sum();
        let pi: Vec<f64> = pi_raw.iter().map(|p| p / total).collect();
        let mut e = Vec::new();
        for i in 0..n {
            for j in [(i + 1) % n, (i + 7) % n] {
                let c = (6.0 * next()).exp() * 1e-3;
                e.push((i, j, c / pi[i]));
                e.push((j, i, c / pi[j]));
            }
        }
        (Chain::from_rates(n, &e, Clock::Continuous).unwrap(), pi)
    }

    /// Against the dense spectral solution of the symmetrised generator on a
    /// stiff random chain (rates over ~6 decades): 1e-11 absolute on every
    /// population, the stated tolerance 1e-12 plus the round-off of the dense
    /// reference.
    #[test]
    fn matches_dense_exponential_on_a_stiff_random_chain() {
        let n = 60;
        let (chain, _) = random_reversible(n, 3);
        let pi = chain.stationary().unwrap();
        let mut p0 = vec![0.0; n];
        p0[5] = 0.7;
        p0[40] = 0.3;
        let times = [1e-3, 3e-3, 0.05, 1.0, 20.0, 500.0];
        let (p, stats) = chain.propagate(&pi, &p0, &times, 1e-12).unwrap();
        // dense reference: S = Π^{1/2} K Π^{-1/2}, exp(tS) by eigendecomposition
        let exit = chain.exit_rates();
        let s = Mat::from_fn(n, n, |i, j| if i == j { -exit[i] } else { (chain.rate(i, j) * chain.rate(j, i)).sqrt() });
        let evd = s.self_adjoint_eigen(Side::Lower).unwrap();
        let (u, lam) = (evd.U(), evd.S());
        let u0: Vec<f64> = (0..n).map(|i| p0[i] / pi[i].sqrt()).collect();
        for (row, &t) in p.iter().zip(&times) {
            let mut worst: f64 = 0.0;
            for i in 0..n {
                let mut ui = 0.0;
                for k in 0..n {
                    let proj: f64 = (0..n).map(|j| u[(j, k)] * u0[j]).sum();
                    ui += u[(i, k)] * (t * lam[k]).exp() * proj;
                }
                worst = worst.max((ui * pi[i].sqrt() - row[i]).abs());
            }
            assert!(worst < 1e-11, "t = {t}: error {worst:e}");
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert!(stats.factorisations <= 6 && stats.solves < 6 * MAX_DIM, "{stats:?}");
    }

    /// P3 on a coarse grid: agrees with the solve layer's BDF at rtol 1e-10
    /// to 1e-8 (BDF's own error), and conserves probability to round-off.
    #[test]
    fn agrees_with_bdf_on_coarse_p3() {
        use crate::conformation::Grid;
        use insilico_solvers::{solve, Method, Options, Problem};
        let model = p3::model_on(Grid::new_2d(16, 16, (-1.5, 1.2), (-0.2, 2.0)).unwrap());
        let pert = p3::perturbed_params();
        let p0 = model.boltzmann(&p3::unperturbed_params());
        let chain = Chain::from_master(&model, &pert, Clock::Continuous).unwrap();
        let pi = model.boltzmann(&pert);
        let times = p3::times();
        let (p, _) = chain.propagate(&pi, &p0, &times, 1e-12).unwrap();
        let mut prob = Problem::new(&model, pert.clone()).with_x0(p0.clone());
        for basin in 0..3 {
            prob = prob.observe(basin, &times);
        }
        let opts = Options { rtol: 1e-10, atol: 1e-14, ..Options::default() };
        let sol = solve(&prob, Method::Bdf, &opts).unwrap();
        let k = times.len();
        for (i, row) in p.iter().enumerate() {
            let b = model.basin_populations(row);
            for (basin, pop) in b.iter().enumerate().take(3) {
                let d = (pop - sol.outputs[basin * k + i]).abs();
                assert!(d < 1e-8, "t = {}, basin {basin}: {d:e}", times[i]);
            }
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let chain = Chain::from_rates(2, &[(0, 1, 1.0), (1, 0, 1.0)], Clock::Discrete { lag: 1.0 }).unwrap();
        assert!(chain.propagate(&[0.5, 0.5], &[1.0, 0.0], &[1.0], 1e-12).is_err());
        // a cycle 0 → 1 → 2 → 0 is not reversible
        let cyc = Chain::from_rates(3, &[(0, 1, 1.0), (1, 2, 1.0), (2, 0, 1.0)], Clock::Continuous).unwrap();
        let pi = cyc.stationary().unwrap();
        let e = cyc.propagate(&pi, &[1.0, 0.0, 0.0], &[1.0], 1e-12).unwrap_err().to_string();
        assert!(e.contains("not reversible"), "{e}");
        let ok = Chain::from_rates(2, &[(0, 1, 1.0), (1, 0, 1.0)], Clock::Continuous).unwrap();
        assert!(ok.propagate(&[0.5, 0.5], &[1.0, 0.0], &[-1.0], 1e-12).is_err());
        assert!(ok.propagate(&[0.5, 0.5], &[1.0, 0.0], &[f64::NAN], 1e-12).is_err());
        assert!(ok.propagate(&[0.5, 0.5], &[1.0], &[1.0], 1e-12).is_err());
    }
}
