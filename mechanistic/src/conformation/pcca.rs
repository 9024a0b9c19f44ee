//! PCCA+ coarse-graining of a reversible Markov chain into metastable
//! macrostates (Röblitz & Weber 2013, *Fuzzy spectral clustering by
//! PCCA+*, Adv. Data Anal. Classif. 7, 147–179), as deeptime's `pcca`.
//!
//! ## Algorithm
//! 1. The `m` slowest right eigenvectors of `K` (equivalently of
//!    `T = I + τK`): the first the constant vector, then
//!    `r_k = u_k/√π` from the unit eigenvectors `u_k` of the symmetrisation
//!    ([`Chain::slowest_eigenpairs`]: dense up to
//!    [`super::markov::DENSE_MAX`] states, Lanczos above), so that
//!    `Σ_i π_i r_k(i)² = 1`.
//! 2. The inner simplex algorithm (Deuflhard & Weber 2005) picks `m`
//!    representative states (the most outlying row, then by Gram–Schmidt
//!    the farthest rows from the span of those chosen) and an initial
//!    rotation `A₀ = X[rep]⁻¹`.
//! 3. The rotation is optimised for crispness: maximise
//!    `Σ_{i,j} A_{ji}²/A_{0i}` over the free `(m−1)²` block of `A`, the first
//!    row and column filled to make `χ = X A` feasible (rows sum to one,
//!    entries ≥ 0) exactly as deeptime's `_fill_matrix`. The optimiser is
//!    Nelder–Mead with SciPy `fmin`'s defaults (initial simplex of 5 %
//!    steps, `xtol = ftol = 1e-4`, at most `200·(m−1)²` iterations), the
//!    choice of deeptime.
//! 4. `χ = X A`, clipped to `[0, 1]` and each row renormalised.
//!
//! The result does not depend on the eigenvectors' signs. The crisp
//! assignment of a state is the macrostate of its largest membership.

use super::markov::Chain;
use super::ConformationError;

/// A PCCA+ coarse-graining: fuzzy memberships of every state.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcca {
    /// `χ`, one row per state, one column per macrostate: non-negative,
    /// each row sums to one.
    pub memberships: Vec<Vec<f64>>,
    /// The optimised rotation `A` (`m × m`, row-major): `χ = X A` before the
    /// final clipping, `X` the right eigenvectors (first constant).
    pub rotation: Vec<Vec<f64>>,
    /// The representative state of each macrostate chosen by the inner
    /// simplex algorithm (the initial guess).
    pub representatives: Vec<usize>,
    /// Crispness `trace(diag(χᵀπ)⁻¹ χᵀ Π χ)/m ∈ (0, 1]` (1: crisp).
    pub crispness: f64,
}

impl Pcca {
    /// Number of macrostates `m`.
    pub fn n_metastable(&self) -> usize {
        self.rotation.len()
    }

    /// Crisp assignment: per state, the macrostate of its largest
    /// membership (the first on a tie).
    pub fn assignments(&self) -> Vec<usize> {
        self.memberships
            .iter()
            .map(|row| {
                let mut best = 0;
                for (k, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = k;
                    }
                }
                best
            })
            .collect()
    }

    /// The states of each macrostate under the crisp assignment (a
    /// macrostate no state prefers is empty).
    pub fn sets(&self) -> Vec<Vec<usize>> {
        let mut s = vec![Vec::new(); self.n_metastable()];
        for (i, a) in self.assignments().into_iter().enumerate() {
            s[a].push(i);
        }
        s
    }

    /// Fuzzy macrostate populations `χᵀπ`.
    pub fn populations(&self, pi: &[f64]) -> Vec<f64> {
        let mut p = vec![0.0; self.n_metastable()];
        for (row, &w) in self.memberships.iter().zip(pi) {
            for (a, &c) in p.iter_mut().zip(row) {
                *a += w * c;
            }
        }
        p
    }
}

fn invalid(s: impl Into<String>) -> ConformationError {
    ConformationError::Invalid(s.into())
}

/// PCCA+ of a reversible, irreducible chain into `m` macrostates; `pi` its
/// stationary distribution.
///
/// Errors: `m < 2` or `m` larger than the number of states, a reducible
/// chain, a non-reversible chain (PCCA+ here needs real eigenvectors from
/// detailed balance), or an eigenvector after the first that is constant.
///
/// ```
/// use insilico_mechanistic::conformation::{pcca::pcca, Chain, Clock};
/// // two blocks {0, 1, 2} and {3, 4, 5}, fast inside, slow (1e-3) between 2 and 3
/// let mut e = Vec::new();
/// for b in [0usize, 3] {
///     for i in b..b + 3 {
///         for j in b..b + 3 {
///             if i != j { e.push((i, j, 1.0)); }
///         }
///     }
/// }
/// e.push((2, 3, 1e-3));
/// e.push((3, 2, 1e-3));
/// let chain = Chain::from_rates(6, &e, Clock::Continuous).unwrap();
/// let pi = chain.stationary().unwrap();
/// let p = pcca(&chain, &pi, 2).unwrap();
/// let a = p.assignments();
/// assert_eq!(a[0], a[1]);
/// assert_eq!(a[0], a[2]);
/// assert_ne!(a[0], a[3]);
/// assert_eq!(a[3], a[5]);
/// assert!(p.memberships.iter().all(|r| r.iter().any(|&c| c > 0.99)));
/// ```
pub fn pcca(chain: &Chain, pi: &[f64], m: usize) -> Result<Pcca, ConformationError> {
    let n = chain.len();
    if m < 2 {
        return Err(invalid(format!("PCCA+: {m} macrostates; at least 2 are needed")));
    }
    if m > n {
        return Err(invalid(format!("PCCA+: {m} macrostates for a chain of {n} states (at most {n})")));
    }
    if pi.len() != n {
        return Err(invalid(format!("PCCA+: stationary distribution of {} entries for {n} states", pi.len())));
    }
    let comps = chain.components();
    if comps.len() > 1 {
        return Err(invalid(format!(
            "PCCA+: the chain is reducible ({} strongly connected components); restrict it to one",
            comps.len()
        )));
    }
    let defect = chain.reversibility_defect(pi);
    if defect >= 1e-8 {
        return Err(invalid(format!(
            "PCCA+ needs a reversible chain (detailed balance); this one violates it by {defect:.3e} (relative)"
        )));
    }
    let pairs = chain.slowest_eigenpairs(pi, m - 1)?;
    if pairs.len() + 1 < m {
        return Err(invalid(format!("PCCA+: only {} eigenvectors for {m} macrostates", pairs.len() + 1)));
    }
    // X: n × m, right eigenvectors, π-normalised; first column constant.
    let mut x = vec![vec![0.0; m]; n];
    for (i, row) in x.iter_mut().enumerate() {
        row[0] = 1.0;
        for (k, (_, u)) in pairs.iter().enumerate() {
            row[k + 1] = u[i] / pi[i].sqrt();
        }
    }
    pcca_from_eigenvectors(&x, pi)
}

/// PCCA+ from given right eigenvectors: `x` has one row per state and one
/// column per macrostate, the first column constant and the others
/// π-orthonormal right eigenvectors, slowest first. Used by [`pcca`].
pub fn pcca_from_eigenvectors(x: &[Vec<f64>], pi: &[f64]) -> Result<Pcca, ConformationError> {
    let n = x.len();
    let m = x.first().map_or(0, Vec::len);
    if m < 2 || n < m || x.iter().any(|r| r.len() != m) || pi.len() != n {
        return Err(invalid(format!("PCCA+: eigenvector matrix {n} × {m} does not fit {} states", pi.len())));
    }
    for k in 0..m {
        let (lo, hi) = x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| (a.min(r[k]), b.max(r[k])));
        if k == 0 && hi - lo >= 1e-6 {
            return Err(invalid("PCCA+: the first eigenvector is not constant (a reducible chain?)"));
        }
        if k > 0 && hi - lo <= 1e-6 {
            return Err(invalid(format!("PCCA+: eigenvector {k} is constant (eigenvalues ordered wrongly?)")));
        }
    }
    let (rep, a0) = inner_simplex(x)?;
    // free block of the rotation, row-major (m−1)²
    let d = m - 1;
    let v0: Vec<f64> = (1..m).flat_map(|j| (1..m).map(move |i| (j, i))).map(|(j, i)| a0[j][i]).collect();
    let objective = |v: &[f64]| -> f64 {
        let a = fill(v, x, m);
        let mut s = 0.0;
        for i in 0..m {
            for row in &a {
                s += row[i] * row[i] / a[0][i];
            }
        }
        -s
    };
    let vopt = nelder_mead(&objective, &v0, 200 * d * d, 1e-4, 1e-4);
    let a = fill(&vopt, x, m);
    let mut chi: Vec<Vec<f64>> = x
        .iter()
        .map(|r| (0..m).map(|c| (0..m).map(|k| r[k] * a[k][c]).sum::<f64>().clamp(0.0, 1.0)).collect())
        .collect();
    for row in &mut chi {
        let s: f64 = row.iter().sum();
        if s > 0.0 {
            row.iter_mut().for_each(|c| *c /= s);
        }
    }
    let pops: Vec<f64> = (0..m).map(|c| chi.iter().zip(pi).map(|(r, &w)| w * r[c]).sum()).collect();
    let crispness = (0..m)
        .map(|c| chi.iter().zip(pi).map(|(r, &w)| w * r[c] * r[c]).sum::<f64>() / pops[c])
        .filter(|v| v.is_finite())
        .sum::<f64>()
        / m as f64;
    Ok(Pcca { memberships: chi, rotation: a, representatives: rep, crispness })
}

/// Inner simplex algorithm: representatives and `X[rep]⁻¹` (deeptime's
/// `_pcca_connected_isa`, step for step).
fn inner_simplex(c: &[Vec<f64>]) -> Result<(Vec<usize>, Vec<Vec<f64>>), ConformationError> {
    let m = c[0].len();
    let norm = |r: &[f64]| r.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut ind = vec![0usize; m];
    let mut max_dist = 0.0;
    for (i, row) in c.iter().enumerate() {
        let d = norm(row);
        if d > max_dist {
            max_dist = d;
            ind[0] = i;
        }
    }
    let origin = c[ind[0]].clone();
    let mut ortho: Vec<Vec<f64>> = c.iter().map(|r| r.iter().zip(&origin).map(|(a, b)| a - b).collect()).collect();
    for k in 1..m {
        max_dist = 0.0;
        let temp = ortho[ind[k - 1]].clone();
        for (i, row) in ortho.iter_mut().enumerate() {
            let dot: f64 = temp.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
            row.iter_mut().zip(&temp).for_each(|(r, t)| *r -= dot * t);
            let dist = norm(row);
            if dist > max_dist && !ind[..k].contains(&i) {
                max_dist = dist;
                ind[k] = i;
            }
        }
        let s = norm(&ortho[ind[k]]);
        if !(s > 0.0 && s.is_finite()) {
            return Err(invalid("PCCA+: the inner simplex algorithm found no further vertex"));
        }
        ortho.iter_mut().for_each(|r| r.iter_mut().for_each(|v| *v /= s));
    }
    let sub: Vec<Vec<f64>> = ind.iter().map(|&i| c[i].clone()).collect();
    let inv = invert(&sub).ok_or_else(|| invalid("PCCA+: the representatives' eigenvector rows are singular"))?;
    Ok((ind, inv))
}

/// Completes the rotation from its free block (deeptime's `_fill_matrix`):
/// the first column makes rows of `χ` sum to one, the first row makes the
/// smallest membership of each macrostate zero, then `A` is scaled.
fn fill(v: &[f64], x: &[Vec<f64>], m: usize) -> Vec<Vec<f64>> {
    let d = m - 1;
    let mut a = vec![vec![0.0; m]; m];
    for j in 0..d {
        let s: f64 = v[j * d..(j + 1) * d].iter().sum();
        a[j + 1][0] = -s;
        a[j + 1][1..].copy_from_slice(&v[j * d..(j + 1) * d]);
    }
    let mut colmax = vec![f64::NEG_INFINITY; m];
    for r in x {
        for (c, cm) in colmax.iter_mut().enumerate() {
            let t: f64 = -(1..m).map(|k| r[k] * a[k][c]).sum::<f64>();
            *cm = cm.max(t);
        }
    }
    a[0] = colmax;
    let total: f64 = a[0].iter().sum();
    for row in &mut a {
        row.iter_mut().for_each(|v| *v /= total);
    }
    a
}

/// Gauss–Jordan inverse with partial pivoting; `None` if singular.
fn invert(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let m = a.len();
    let mut w: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut row = r.clone();
            row.extend((0..m).map(|j| if i == j { 1.0 } else { 0.0 }));
            row
        })
        .collect();
    let scale = a.iter().flatten().fold(0.0f64, |s, v| s.max(v.abs()));
    for col in 0..m {
        let p = (col..m).max_by(|&i, &j| w[i][col].abs().total_cmp(&w[j][col].abs()))?;
        let piv = w[p][col].abs();
        if piv.is_nan() || piv <= 1e-14 * scale {
            return None;
        }
        w.swap(col, p);
        let d = w[col][col];
        w[col].iter_mut().for_each(|v| *v /= d);
        for r in 0..m {
            if r != col {
                let f = w[r][col];
                if f != 0.0 {
                    let pivot = w[col].clone();
                    w[r].iter_mut().zip(&pivot).for_each(|(v, p)| *v -= f * p);
                }
            }
        }
    }
    Some(w.into_iter().map(|r| r[m..].to_vec()).collect())
}

/// Nelder–Mead minimisation as SciPy's `fmin` (default coefficients,
/// initial simplex, stopping rule `max|x_k − x_0| ≤ xatol` and
/// `max|f_k − f_0| ≤ fatol`, at most `maxiter` iterations and function
/// calls).
fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, x0: &[f64], maxiter: usize, xatol: f64, fatol: f64) -> Vec<f64> {
    let n = x0.len();
    let (rho, chi, psi, sigma) = (1.0, 2.0, 0.5, 0.5);
    let mut sim: Vec<Vec<f64>> = vec![x0.to_vec()];
    for k in 0..n {
        let mut y = x0.to_vec();
        y[k] = if y[k] != 0.0 { 1.05 * y[k] } else { 0.00025 };
        sim.push(y);
    }
    let mut calls = 0usize;
    let eval = |x: &[f64], calls: &mut usize| {
        *calls += 1;
        let v = f(x);
        if v.is_nan() {
            f64::INFINITY
        } else {
            v
        }
    };
    let mut fsim: Vec<f64> = sim.iter().map(|x| eval(x, &mut calls)).collect();
    let sort = |sim: &mut Vec<Vec<f64>>, fsim: &mut Vec<f64>| {
        let mut order: Vec<usize> = (0..fsim.len()).collect();
        order.sort_by(|&a, &b| fsim[a].total_cmp(&fsim[b])); // stable, as NumPy's for short arrays
        *sim = order.iter().map(|&i| sim[i].clone()).collect();
        *fsim = order.iter().map(|&i| fsim[i]).collect();
    };
    sort(&mut sim, &mut fsim);
    let comb =
        |a: f64, x: &[f64], b: f64, y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| a * p + b * q).collect() };
    let mut iterations = 1;
    while calls < maxiter && iterations < maxiter {
        let xspread =
            sim[1..].iter().flat_map(|s| s.iter().zip(&sim[0]).map(|(a, b)| (a - b).abs())).fold(0.0, f64::max);
        let fspread = fsim[1..].iter().map(|v| (v - fsim[0]).abs()).fold(0.0, f64::max);
        if xspread <= xatol && fspread <= fatol {
            break;
        }
        let mut xbar = vec![0.0; n];
        for s in &sim[..n] {
            xbar.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        }
        xbar.iter_mut().for_each(|a| *a /= n as f64);
        let worst = sim[n].clone();
        let xr = comb(1.0 + rho, &xbar, -rho, &worst);
        let fxr = eval(&xr, &mut calls);
        let mut shrink = false;
        if fxr < fsim[0] {
            let xe = comb(1.0 + rho * chi, &xbar, -rho * chi, &worst);
            let fxe = eval(&xe, &mut calls);
            if fxe < fxr {
                (sim[n], fsim[n]) = (xe, fxe);
            } else {
                (sim[n], fsim[n]) = (xr, fxr);
            }
        } else if fxr < fsim[n - 1] {
            (sim[n], fsim[n]) = (xr, fxr);
        } else if fxr < fsim[n] {
            let xc = comb(1.0 + psi * rho, &xbar, -psi * rho, &worst);
            let fxc = eval(&xc, &mut calls);
            if fxc <= fxr {
                (sim[n], fsim[n]) = (xc, fxc);
            } else {
                shrink = true;
            }
        } else {
            let xcc = comb(1.0 - psi, &xbar, psi, &worst);
            let fxcc = eval(&xcc, &mut calls);
            if fxcc < fsim[n] {
                (sim[n], fsim[n]) = (xcc, fxcc);
            } else {
                shrink = true;
            }
        }
        if shrink {
            let best = sim[0].clone();
            for j in 1..=n {
                sim[j] = comb(1.0 - sigma, &best, sigma, &sim[j]);
                fsim[j] = eval(&sim[j], &mut calls);
            }
        }
        iterations += 1;
        sort(&mut sim, &mut fsim);
    }
    sim.swap_remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformation::Clock;

    /// Three wells of 4, 5 and 3 states with free energies; barrier
    /// edges between wells scaled by `eps`. Reversible by construction.
    fn wells(eps: f64) -> (Chain, Vec<Vec<usize>>) {
        let sizes = [4usize, 5, 3];
        let mut sets = Vec::new();
        let mut start = 0;
        for s in sizes {
            sets.push((start..start + s).collect::<Vec<_>>());
            start += s;
        }
        let n = start;
        let g: Vec<f64> = (0..n).map(|i| 0.3 * ((i * 7 % 5) as f64) - if i == 5 { 1.0 } else { 0.0 }).collect();
        let mut e = Vec::new();
        let mut edge = |i: usize, j: usize, a: f64| {
            e.push((i, j, a * (-(g[j] - g[i]) / 2.0).exp()));
            e.push((j, i, a * (-(g[i] - g[j]) / 2.0).exp()));
        };
        for s in &sets {
            for (x, &i) in s.iter().enumerate() {
                for &j in &s[x + 1..] {
                    edge(i, j, 1.0);
                }
            }
        }
        edge(3, 4, eps);
        edge(8, 9, eps);
        edge(0, 11, 0.5 * eps);
        (Chain::from_rates(n, &e, Clock::Continuous).unwrap(), sets)
    }

    #[test]
    fn pcca_recovers_three_wells() {
        let (chain, sets) = wells(1e-4);
        let pi = chain.stationary().unwrap();
        let p = pcca(&chain, &pi, 3).unwrap();
        // rows are distributions
        for r in &p.memberships {
            assert!(r.iter().all(|&c| (0.0..=1.0).contains(&c)));
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        let mut found = p.sets();
        found.sort();
        assert_eq!(found, sets);
        // memberships within 1e-2 of 0/1 at a coupling of 1e-4
        let worst = p.memberships.iter().flatten().map(|&c| c.min(1.0 - c)).fold(0.0, f64::max);
        assert!(worst < 1e-2, "worst fuzziness {worst}");
        assert!(p.crispness > 0.98, "crispness {}", p.crispness);
    }

    #[test]
    fn pcca_errors() {
        let (chain, _) = wells(1e-3);
        let pi = chain.stationary().unwrap();
        assert!(pcca(&chain, &pi, 1).unwrap_err().to_string().contains("at least 2"));
        assert!(pcca(&chain, &pi, 13).unwrap_err().to_string().contains("at most 12"));
        // a cycle 0→1→2→0 is not reversible
        let e = [(0, 1, 1.0), (1, 2, 1.0), (2, 0, 1.0), (1, 0, 0.1), (2, 1, 0.1), (0, 2, 0.1)];
        let c = Chain::from_rates(3, &e, Clock::Continuous).unwrap();
        let pi = c.stationary().unwrap();
        let err = pcca(&c, &pi, 2).unwrap_err().to_string();
        assert!(err.contains("reversible"), "{err}");
    }

    #[test]
    fn nelder_mead_finds_a_quadratic_minimum() {
        let f = |x: &[f64]| (x[0] - 1.0).powi(2) + 3.0 * (x[1] + 2.0).powi(2);
        let x = nelder_mead(&f, &[0.0, 0.0], 400, 1e-8, 1e-12);
        assert!((x[0] - 1.0).abs() < 1e-6 && (x[1] + 2.0).abs() < 1e-6, "{x:?}");
    }
}
