//! Exact sensitivities of the Markov-chain outputs ([`markov`](super::markov))
//! by adjoint linear solves and eigenvalue perturbation theory.
//!
//! Every output `y` is a function of the chain's off-diagonal rates `k_e`.
//! Each function here returns `y` and `∂y/∂k_e` for every entry `e` of
//! [`Chain::entries`], from one extra sparse solve:
//! * `y = cᵀπ` (macrostate populations, observables): the grounded
//!   stationary system `Aπ = e_r` gives `∂y/∂k_ij = −π_i(λ_j − λ_i)` with
//!   `Aᵀλ = c` (`λ_r` set to 0) — stationary-distribution perturbation theory;
//! * implied timescales: `∂λ/∂k_ij = l_i(r_j − r_i)` with the left/right
//!   eigenvectors `l = u√π`, `r = u/√π` of the symmetrised chain;
//! * MFPT `A → B`: the adjoint of `K_II m = −1` plus the π-weights over A;
//! * TPT rate `A → B` (reversible chains, `q⁻ = 1 − q⁺`): the adjoint of
//!   the committor equations plus the π-dependence of flux and normaliser.
//!
//! [`free_energy_gradient`] and [`parameter_gradient`] then apply the chain
//! rule through `k_ij = a_ij exp(−(G_j − G_i)/(2kT))`: the derivative with
//! respect to each state's free energy (the hot-spot ranking: which
//! states' ΔΔG move an output most) and to each parameter `[kT,
//! amplitudes…]` of a [`MasterEquation`].
//!
//! For the rate of a reversible chain the backward committor is `1 − q⁺`;
//! this holds along perturbations that keep detailed balance (every
//! free-energy perturbation of a reversible model), which is what the
//! chain rule applies it to.

use faer::sparse::Triplet;

use super::markov::{Chain, Clock, Factor};
use super::master::MasterEquation;
use super::ConformationError;

fn invalid(s: impl Into<String>) -> ConformationError {
    ConformationError::Invalid(s.into())
}

/// An output and its gradient with respect to the chain's rates.
#[derive(Debug, Clone, PartialEq)]
pub struct RateGradient {
    /// The output.
    pub value: f64,
    /// `∂y/∂k_e`, in the order of [`Chain::entries`].
    pub d_rates: Vec<f64>,
}

fn entries(c: &Chain) -> Vec<(usize, usize, f64)> {
    c.entries().collect()
}

/// `∂(cᵀπ)/∂k_e` by the adjoint of the grounded stationary system.
pub fn stationary_linear(chain: &Chain, pi: &[f64], c: &[f64]) -> Result<RateGradient, ConformationError> {
    let n = chain.len();
    let e = entries(chain);
    let value: f64 = c.iter().zip(pi).map(|(a, b)| a * b).sum();
    if n == 1 {
        return Ok(RateGradient { value, d_rates: vec![0.0; e.len()] });
    }
    // A = Kᵀ with row r replaced by ones; Aᵀ = K (row convention) with column r ones.
    let r = n - 1;
    let exit = chain.exit_rates();
    let mut trip = Vec::with_capacity(2 * n + e.len());
    for (i, &ex) in exit.iter().enumerate() {
        if i != r {
            trip.push(Triplet::new(i, i, -ex));
        }
        trip.push(Triplet::new(i, r, 1.0));
    }
    for &(i, j, k) in &e {
        if j != r {
            trip.push(Triplet::new(i, j, k));
        }
    }
    let mut lam = Factor::new(n, &trip)?.solve(c);
    lam[r] = 0.0;
    let d_rates = e.iter().map(|&(i, j, _)| -pi[i] * (lam[j] - lam[i])).collect();
    Ok(RateGradient { value, d_rates })
}

/// `∂t_m/∂k_e` for the `k` slowest implied timescales (reversible chains).
pub fn timescales(chain: &Chain, pi: &[f64], k: usize) -> Result<Vec<RateGradient>, ConformationError> {
    let e = entries(chain);
    let sq: Vec<f64> = pi.iter().map(|p| p.sqrt()).collect();
    let mut out = Vec::new();
    for (lam, u) in chain.slowest_eigenpairs(pi, k)? {
        let t = chain.timescale(lam);
        let dt_dl = match chain.clock() {
            Clock::Continuous => 1.0 / (lam * lam),
            Clock::Discrete { lag } => {
                let mu = 1.0 + lag * lam;
                let l = mu.abs().ln();
                lag * lag / (mu * l * l)
            }
        };
        let d_rates = e.iter().map(|&(i, j, _)| dt_dl * u[i] * sq[i] * (u[j] / sq[j] - u[i] / sq[i])).collect();
        out.push(RateGradient { value: t, d_rates });
    }
    Ok(out)
}

fn mask(n: usize, set: &[usize]) -> Vec<bool> {
    let mut m = vec![false; n];
    set.iter().for_each(|&i| m[i] = true);
    m
}

/// Solves `K_FF x = b_F` or its transpose on the free states `F` (mask).
fn restricted(chain: &Chain, free: &[bool], b: &[f64], transpose: bool) -> Result<Vec<f64>, ConformationError> {
    let n = chain.len();
    let mut idx = vec![usize::MAX; n];
    let mut m = 0;
    for i in 0..n {
        if free[i] {
            idx[i] = m;
            m += 1;
        }
    }
    let exit = chain.exit_rates();
    let mut trip = Vec::new();
    for i in 0..n {
        if free[i] {
            trip.push(Triplet::new(idx[i], idx[i], -exit[i]));
        }
    }
    for (i, j, k) in chain.entries() {
        if free[i] && free[j] {
            if transpose {
                trip.push(Triplet::new(idx[j], idx[i], k));
            } else {
                trip.push(Triplet::new(idx[i], idx[j], k));
            }
        }
    }
    let rhs: Vec<f64> = (0..n).filter(|&i| free[i]).map(|i| b[i]).collect();
    let y = Factor::new(m, &trip)?.solve(&rhs);
    let mut x = vec![0.0; n];
    for i in 0..n {
        if free[i] {
            x[i] = y[idx[i]];
        }
    }
    Ok(x)
}

/// `∂MFPT(A → B)/∂k_e` (origin weighted by `π` over A).
pub fn mfpt(chain: &Chain, pi: &[f64], a: &[usize], b: &[usize]) -> Result<RateGradient, ConformationError> {
    let n = chain.len();
    let m = chain.mfpt_vector(b)?;
    let in_b = mask(n, b);
    let free: Vec<bool> = in_b.iter().map(|x| !x).collect();
    let za: f64 = a.iter().map(|&i| pi[i]).sum();
    if za <= 0.0 {
        return Err(invalid("the origin set has zero stationary probability"));
    }
    let value: f64 = a.iter().map(|&i| pi[i] * m[i]).sum::<f64>() / za;
    let mut w = vec![0.0; n];
    for &i in a {
        if !in_b[i] {
            w[i] += pi[i] / za;
        }
    }
    let mu = restricted(chain, &free, &w, true)?;
    let mut c = vec![0.0; n];
    for &i in a {
        c[i] += (m[i] - value) / za;
    }
    let via_pi = stationary_linear(chain, pi, &c)?;
    let d_rates = chain
        .entries()
        .zip(&via_pi.d_rates)
        .map(|((i, j, _), dp)| dp + if in_b[i] { 0.0 } else { -mu[i] * (m[j] - m[i]) })
        .collect();
    Ok(RateGradient { value, d_rates })
}

/// `∂k_AB/∂k_e` for the TPT rate of a reversible chain.
pub fn tpt_rate(chain: &Chain, pi: &[f64], a: &[usize], b: &[usize]) -> Result<RateGradient, ConformationError> {
    let n = chain.len();
    if chain.reversibility_defect(pi) >= 1e-8 {
        return Err(invalid("rate sensitivities need a reversible chain"));
    }
    let q = chain.committor_forward(a, b)?;
    let (in_a, in_b) = (mask(n, a), mask(n, b));
    let z: f64 = pi.iter().zip(&q).map(|(p, x)| p * (1.0 - x)).sum();
    let mut f = 0.0;
    let mut out_a = vec![0.0; n]; // Σ_{j∉A} k_ij q_j for i ∈ A
    for (i, j, k) in chain.entries() {
        if in_a[i] && !in_a[j] {
            f += pi[i] * k * q[j];
            out_a[i] += k * q[j];
        }
    }
    let value = f / z;
    // dπ coefficients
    let c: Vec<f64> = (0..n).map(|i| out_a[i] / z - value * (1.0 - q[i]) / z).collect();
    let via_pi = stationary_linear(chain, pi, &c)?;
    // dq coefficients on U = not (A ∪ B)
    let free: Vec<bool> = (0..n).map(|i| !in_a[i] && !in_b[i]).collect();
    let mut cq = vec![0.0; n];
    for (i, j, k) in chain.entries() {
        if in_a[i] && free[j] {
            cq[j] += pi[i] * k / z;
        }
    }
    for j in 0..n {
        if free[j] {
            cq[j] += value * pi[j] / z;
        }
    }
    let nu = if free.iter().any(|x| *x) { restricted(chain, &free, &cq, true)? } else { vec![0.0; n] };
    let d_rates = chain
        .entries()
        .zip(&via_pi.d_rates)
        .map(|((i, j, _), dp)| {
            let direct = if in_a[i] && !in_a[j] { pi[i] * q[j] / z } else { 0.0 };
            let via_q = if free[i] { -nu[i] * (q[j] - q[i]) } else { 0.0 };
            dp + direct + via_q
        })
        .collect();
    Ok(RateGradient { value, d_rates })
}

/// `∂y/∂G_m` for every state `m` of the master equation at `p` whose chain
/// is `chain` (`k_ij ∝ exp(−(G_j − G_i)/(2kT))`).
pub fn free_energy_gradient(chain: &Chain, kt: f64, g: &RateGradient) -> Vec<f64> {
    let mut out = vec![0.0; chain.len()];
    for ((i, j, k), d) in chain.entries().zip(&g.d_rates) {
        let c = d * k / (2.0 * kt);
        out[j] -= c;
        out[i] += c;
    }
    out
}

/// `∂y/∂θ` for every parameter `[kT, amplitudes…]` of `me` at `p` (the
/// chain must be `Chain::from_master(me, p, …)`).
pub fn parameter_gradient(me: &MasterEquation, p: &[f64], chain: &Chain, g: &RateGradient) -> Vec<f64> {
    let kt = p[0];
    let gen = me.generator(p);
    let dg = free_energy_gradient(chain, kt, g);
    let mut out = Vec::with_capacity(p.len());
    for k in 0..p.len() {
        let dgk = me.free_energy_derivative(p, k);
        let mut s: f64 = dg.iter().zip(&dgk).map(|(a, b)| a * b).sum();
        if k == 0 {
            // explicit kT in the rates
            for ((i, j, rate), d) in chain.entries().zip(&g.d_rates) {
                s += d * rate * (gen.g[j] - gen.g[i]) / (2.0 * kt * kt);
            }
        }
        out.push(s);
    }
    out
}
