//! Posterior draws: from the Laplace approximation, by importance
//! resampling (SIR) from it, or by random-walk Metropolis.
//!
//! Randomness: ChaCha8 seeded with [`super::PosteriorOptions::seed`], stream
//! = the subject's index, so a subject's draws do not depend on which other
//! subjects are sampled or on the thread count (objective values are
//! evaluated in parallel but collected in order).

use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{Draws, Posterior, Proposal, SamplingMethod, SubjectPosterior};

/// A standard normal variate (Box–Muller, one of the pair).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn normals(rng: &mut ChaCha8Rng, q: usize) -> DVector<f64> {
    DVector::from_iterator(q, (0..q).map(|_| normal(rng)))
}

/// Effective sample size of a chain by Geyer's initial positive sequence:
/// `n / (1 + 2 Σ ρ_t)`, summing autocorrelations in pairs while a pair's sum stays positive.
pub(crate) fn chain_ess(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 4 {
        return n as f64;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let c0 = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    if c0 <= 0.0 {
        return n as f64;
    }
    let rho = |t: usize| (0..n - t).map(|i| (x[i] - mean) * (x[i + t] - mean)).sum::<f64>() / (n as f64 * c0);
    let mut sum = 0.0;
    let mut t = 1;
    while t + 1 < n {
        let pair = rho(t) + rho(t + 1);
        if pair <= 0.0 {
            break;
        }
        sum += pair;
        t += 2;
    }
    n as f64 / (1.0 + 2.0 * sum)
}

impl Posterior {
    /// Equal-weight posterior draws of subject `index`'s η around its MAP
    /// `post` ([`Posterior::map_subject`]), by [`super::PosteriorOptions::method`]:
    ///
    /// * `Laplace`: `η̂ + L·z`, `LLᵀ` the Laplace covariance.
    /// * `Sir`: `draws × sir_factor` proposals from a multivariate t (or
    ///   normal) centred at η̂ with the Laplace covariance as scale matrix,
    ///   weights `exp(−½·O(η))/proposal density`, then `draws` by systematic
    ///   resampling; the ESS of the weights is reported.
    /// * `Mcmc`: random-walk Metropolis on `exp(−½·O)`, started at η̂, with
    ///   normal steps of covariance `(2.38²/q)·Σ_Laplace`, `burn_in`
    ///   iterations discarded, every `thin`-th kept; acceptance rate and the
    ///   chain's ESS are reported.
    /// * `Auto`: SIR, then MCMC when its ESS is below `ess_min`.
    pub fn sample(&self, index: usize, post: &SubjectPosterior) -> Draws {
        let mut rng = ChaCha8Rng::seed_from_u64(self.opts.seed);
        rng.set_stream(index as u64);
        let q = self.layout.n_eta();
        let eta = DVector::from_column_slice(&post.eta);
        let cov = DMatrix::from_row_slice(q, q, &post.covariance);
        let chol = cov.cholesky().map_or_else(|| self.pop.omega.cholesky().clone(), |c| c.l());
        match self.opts.method {
            SamplingMethod::Laplace => Draws {
                eta: (0..self.opts.draws).map(|_| (&eta + &chol * normals(&mut rng, q)).as_slice().to_vec()).collect(),
                method: SamplingMethod::Laplace,
                ess: None,
                acceptance: None,
            },
            SamplingMethod::Sir => self.sir(index, &eta, &chol, &mut rng),
            SamplingMethod::Mcmc => self.mcmc(index, &eta, &chol, &mut rng),
            SamplingMethod::Auto => {
                let d = self.sir(index, &eta, &chol, &mut rng);
                if d.ess.is_some_and(|e| e >= self.opts.ess_min) {
                    d
                } else {
                    self.mcmc(index, &eta, &chol, &mut rng)
                }
            }
        }
    }

    fn sir(&self, index: usize, eta: &DVector<f64>, chol: &DMatrix<f64>, rng: &mut ChaCha8Rng) -> Draws {
        let q = eta.len();
        let m = self.opts.draws * self.opts.sir_factor;
        let mut proposals = Vec::with_capacity(m);
        let mut log_q = Vec::with_capacity(m);
        for _ in 0..m {
            let z = normals(rng, q);
            let r2 = z.norm_squared();
            let (scale, lq) = match self.opts.proposal {
                Proposal::Normal => (1.0, -0.5 * r2),
                Proposal::StudentT { dof } => {
                    let nu = dof as f64;
                    let chi2: f64 = (0..dof).map(|_| normal(rng).powi(2)).sum();
                    let scale = (nu / chi2).sqrt();
                    (scale, -0.5 * (nu + q as f64) * (r2 * scale * scale / nu).ln_1p())
                }
            };
            proposals.push(eta + chol * z * scale);
            log_q.push(lq);
        }
        let objectives: Vec<f64> = proposals.par_iter().map(|e| self.objective(index, e.as_slice())).collect();
        let log_w: Vec<f64> = objectives.iter().zip(&log_q).map(|(o, lq)| -0.5 * o - lq).collect();
        let top = log_w.iter().copied().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> =
            log_w.iter().map(|v| if v.is_finite() && top.is_finite() { (v - top).exp() } else { 0.0 }).collect();
        let sum: f64 = w.iter().sum();
        let sum2: f64 = w.iter().map(|v| v * v).sum();
        if !(sum.is_finite() && sum > 0.0) {
            return Draws { eta: Vec::new(), method: SamplingMethod::Sir, ess: Some(0.0), acceptance: None };
        }
        let ess = sum * sum / sum2;
        // Systematic resampling.
        let n = self.opts.draws;
        let u0 = rng.random::<f64>() / n as f64;
        let mut out = Vec::with_capacity(n);
        let mut cum = 0.0;
        let mut i = 0;
        for k in 0..n {
            let u = u0 + k as f64 / n as f64;
            while i + 1 < m && cum + w[i] / sum < u {
                cum += w[i] / sum;
                i += 1;
            }
            out.push(proposals[i].as_slice().to_vec());
        }
        Draws { eta: out, method: SamplingMethod::Sir, ess: Some(ess), acceptance: None }
    }

    fn mcmc(&self, index: usize, eta: &DVector<f64>, chol: &DMatrix<f64>, rng: &mut ChaCha8Rng) -> Draws {
        let q = eta.len();
        let step = 2.38 / (q.max(1) as f64).sqrt();
        let mut cur = eta.clone();
        let mut o_cur = self.objective(index, cur.as_slice());
        let total = self.opts.burn_in + self.opts.draws * self.opts.thin;
        let mut accepted = 0usize;
        let mut out = Vec::with_capacity(self.opts.draws);
        for it in 0..total {
            let prop = &cur + chol * normals(rng, q) * step;
            let o = self.objective(index, prop.as_slice());
            let u = 1.0 - rng.random::<f64>();
            if o.is_finite() && (u.ln() < -0.5 * (o - o_cur) || !o_cur.is_finite()) {
                cur = prop;
                o_cur = o;
                accepted += 1;
            }
            if it >= self.opts.burn_in && (it - self.opts.burn_in) % self.opts.thin == self.opts.thin - 1 {
                out.push(cur.as_slice().to_vec());
            }
        }
        let ess =
            (0..q).map(|k| chain_ess(&out.iter().map(|e| e[k]).collect::<Vec<_>>())).fold(f64::INFINITY, f64::min);
        Draws {
            eta: out,
            method: SamplingMethod::Mcmc,
            ess: Some(if q == 0 { self.opts.draws as f64 } else { ess }),
            acceptance: Some(accepted as f64 / total.max(1) as f64),
        }
    }
}
