//! Analysis of a master equation: stationary distribution, spectral
//! decomposition (exact propagator, implied timescales), mean first-passage
//! times.

use faer::linalg::solvers::Solve;
use faer::sparse::{SparseColMat, Triplet};
use faer::{Mat, Side};

use super::master::MasterEquation;
use super::ConformationError;

fn sparse_err(e: impl std::fmt::Debug) -> ConformationError {
    ConformationError::Invalid(format!("sparse factorisation failed: {e:?}"))
}

/// The stationary distribution of `K(θ)` (`K π = 0`, `Σ π = 1`), by a sparse
/// LU solve with the normalisation replacing the last equation. Works for
/// irreversible models too; for reversible ones it equals
/// [`MasterEquation::boltzmann`].
pub fn stationary(me: &MasterEquation, p: &[f64]) -> Result<Vec<f64>, ConformationError> {
    let n = me.len();
    let g = me.generator(p);
    let mut trip = Vec::with_capacity(2 * n + g.rates.len());
    for i in 0..n - 1 {
        trip.push(Triplet::new(i, i, g.diag[i]));
    }
    for ((i, j), &r) in me.edges().zip(&g.rates) {
        if j != n - 1 {
            trip.push(Triplet::new(j, i, r));
        }
    }
    for i in 0..n {
        trip.push(Triplet::new(n - 1, i, 1.0));
    }
    let a = SparseColMat::<usize, f64>::try_new_from_triplets(n, n, &trip).map_err(sparse_err)?;
    let lu = a.sp_lu().map_err(sparse_err)?;
    let mut b = Mat::<f64>::zeros(n, 1);
    b[(n - 1, 0)] = 1.0;
    lu.solve_in_place(b.as_mut());
    Ok((0..n).map(|i| b[(i, 0)]).collect())
}

/// The eigendecomposition of a reversible generator through its
/// symmetrisation `S = Π^{−1/2} K Π^{1/2}` (similar to `K`, symmetric by
/// detailed balance; its off-diagonal entries are the symmetric prefactors
/// `a_ij`, formed from the rates to round-off).
///
/// `exp(Kt) p₀ = Π^{1/2} U exp(Λt) Uᵀ Π^{−1/2} p₀` is then exact to
/// round-off for every `t`: this is the project's reference solution for the
/// master equation (reference problem P3). Cost: a dense symmetric
/// eigendecomposition, O(n³) (about 10–30 s for 4096 states on 2 cores),
/// and O(n²) per propagated time.
pub struct Spectral {
    /// Eigenvalues of `K`, nondecreasing (the last is 0).
    pub eigenvalues: Vec<f64>,
    /// Orthonormal eigenvectors of `S`, column `k` for eigenvalue `k`.
    u: Mat<f64>,
    /// `sqrt(π_i)`.
    sqrt_pi: Vec<f64>,
}

impl Spectral {
    /// Decomposes `K(θ)`. Fails if the model is not reversible.
    pub fn new(me: &MasterEquation, p: &[f64]) -> Result<Self, ConformationError> {
        let defect = me.detailed_balance_defect();
        if defect > 1e-12 {
            return Err(ConformationError::Invalid(format!(
                "the model is not reversible (prefactor asymmetry {defect:e}): no symmetric form"
            )));
        }
        let n = me.len();
        let g = me.generator(p);
        let pi = me.boltzmann(p);
        let sqrt_pi: Vec<f64> = pi.iter().map(|v| v.sqrt()).collect();
        let mut s = Mat::<f64>::zeros(n, n);
        for i in 0..n {
            s[(i, i)] = g.diag[i];
        }
        // S_ji = r_{i→j} sqrt(π_i/π_j) = a_ij: symmetric by construction.
        for ((i, j), &r) in me.edges().zip(&g.rates) {
            s[(j, i)] = r * (0.5 * (g.g[j] - g.g[i]) / g.kt).exp();
        }
        let evd = s
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| ConformationError::Invalid(format!("eigendecomposition failed: {e:?}")))?;
        let eigenvalues = (0..n).map(|k| evd.S()[k]).collect();
        Ok(Spectral { eigenvalues, u: evd.U().to_owned(), sqrt_pi })
    }

    /// `exp(K t) p₀`.
    pub fn propagate(&self, p0: &[f64], t: f64) -> Vec<f64> {
        let n = self.sqrt_pi.len();
        let y = Mat::from_fn(n, 1, |i, _| p0[i] / self.sqrt_pi[i]);
        let mut c = self.u.transpose() * &y;
        for k in 0..n {
            c[(k, 0)] *= (self.eigenvalues[k] * t).exp();
        }
        let z = &self.u * &c;
        (0..n).map(|i| self.sqrt_pi[i] * z[(i, 0)]).collect()
    }

    /// The `k` slowest implied timescales `−1/λ` (the stationary eigenvalue
    /// excluded), slowest first.
    pub fn implied_timescales(&self, k: usize) -> Vec<f64> {
        let n = self.eigenvalues.len();
        (0..k.min(n.saturating_sub(1))).map(|m| -1.0 / self.eigenvalues[n - 2 - m]).collect()
    }
}

/// The `k` slowest implied timescales of `K(θ)` (see [`Spectral`]).
pub fn implied_timescales(me: &MasterEquation, p: &[f64], k: usize) -> Result<Vec<f64>, ConformationError> {
    Ok(Spectral::new(me, p)?.implied_timescales(k))
}

/// How a perturbation moves the `k` slowest implied timescales: `(before,
/// after, after/before)` for each, slowest first.
pub fn timescale_shifts(
    me: &MasterEquation,
    p_ref: &[f64],
    p_pert: &[f64],
    k: usize,
) -> Result<Vec<(f64, f64, f64)>, ConformationError> {
    let a = implied_timescales(me, p_ref, k)?;
    let b = implied_timescales(me, p_pert, k)?;
    Ok(a.iter().zip(&b).map(|(x, y)| (*x, *y, y / x)).collect())
}

/// Mean first-passage time from the states `from` (started in the
/// stationary distribution restricted to them) to the set `to`: the
/// committor-free linear system `Σ_j L_ij τ_j = −1` for `i ∉ to`,
/// `τ_i = 0` on `to` (`L = Kᵀ`, the backward generator), solved by sparse LU.
pub fn mean_first_passage_time(
    me: &MasterEquation,
    p: &[f64],
    from: &[usize],
    to: &[usize],
) -> Result<f64, ConformationError> {
    let n = me.len();
    if to.is_empty() || from.is_empty() {
        return Err(ConformationError::Invalid("first-passage sets must not be empty".into()));
    }
    if let Some(&i) = from.iter().chain(to).find(|&&i| i >= n) {
        return Err(ConformationError::Invalid(format!("state {i} is outside the model's {n} states")));
    }
    let mut target = vec![false; n];
    for &i in to {
        target[i] = true;
    }
    // Unknowns: the states outside `to`, renumbered.
    let mut idx = vec![usize::MAX; n];
    let mut m = 0;
    for i in 0..n {
        if !target[i] {
            idx[i] = m;
            m += 1;
        }
    }
    if m == 0 {
        return Ok(0.0);
    }
    let g = me.generator(p);
    let mut trip = Vec::with_capacity(m + g.rates.len());
    for i in 0..n {
        if !target[i] {
            trip.push(Triplet::new(idx[i], idx[i], g.diag[i]));
        }
    }
    for ((i, j), &r) in me.edges().zip(&g.rates) {
        // L_ij = r_{i→j}
        if !target[i] && !target[j] {
            trip.push(Triplet::new(idx[i], idx[j], r));
        }
    }
    let a = SparseColMat::<usize, f64>::try_new_from_triplets(m, m, &trip).map_err(sparse_err)?;
    let lu = a.sp_lu().map_err(sparse_err)?;
    let mut b = Mat::<f64>::from_fn(m, 1, |_, _| -1.0);
    lu.solve_in_place(b.as_mut());
    let pi = stationary(me, p)?;
    let (mut num, mut den) = (0.0, 0.0);
    for &i in from {
        let tau = if target[i] { 0.0 } else { b[(idx[i], 0)] };
        num += pi[i] * tau;
        den += pi[i];
    }
    Ok(num / den)
}
