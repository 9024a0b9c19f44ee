//! The bootstrap particle filter: the reference for nonlinear cases.
//!
//! Particles start from `N(m₀, P₀)` and move by Euler–Maruyama substeps
//! `x ← x + (f(x) + R) h + g(x) √h ξ` (`h` ≤ [`FilterOptions::substep`],
//! `ξ ~ N(0, I)` on the noisy states), take doses as jumps, and are weighted
//! by the observation density of their output's error model. The weighted
//! moments after each update are the filtered moments; the log-likelihood
//! increment is `log Σ w_i p(y | x_i)` with normalised prior weights.
//! Systematic resampling when the effective sample size falls below
//! [`FilterOptions::resample_below`]·N.
//!
//! Reproducibility: particle slot `i` draws its normals during interval `k`
//! from a ChaCha8 stream keyed by `(seed, k, i)`, and every sum over
//! particles runs sequentially in slot order, so the result is identical for
//! any number of threads.
//!
//! [`FilterOptions::substep`]: super::FilterOptions::substep
//! [`FilterOptions::resample_below`]: super::FilterOptions::resample_below

use insilico_model::tape::Env;
use insilico_solvers::System;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::ekf::square_root;
use super::events::Forcing;
use super::{comparison, Engine, Filter, ObservedOutput, Update};
use crate::error::EstimationError;

/// Standard normals by the Box–Muller transform (both of each pair used).
struct Normals<R> {
    rng: R,
    spare: Option<f64>,
}

impl<R: RngCore> Normals<R> {
    fn new(rng: R) -> Self {
        Normals { rng, spare: None }
    }
    fn next(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // u1 in (0, 1] so that ln u1 is finite.
        let u1 = 1.0 - self.rng.random::<f64>();
        let u2 = self.rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * a.sin());
        r * a.cos()
    }
}

/// SplitMix64: decorrelates the interval counter from the seed.
fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG of particle slot `i` in interval `k`.
fn stream(seed: u64, k: u64, i: usize) -> Normals<ChaCha8Rng> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, k));
    rng.set_stream(i as u64);
    Normals::new(rng)
}

pub(crate) struct ParticleFilter<'f> {
    f: &'f Filter,
    n: usize,
    np: usize,
    /// Particle states, `np × n` row-major.
    x: Vec<f64>,
    /// Normalised log weights.
    logw: Vec<f64>,
    /// Draws of the resampling steps.
    master: ChaCha8Rng,
    /// Interval counter (0: the initial draw).
    interval: u64,
    /// Seed of the per-particle streams.
    seed: u64,
    /// Weighted moments right after an update (before any resampling).
    after_update: Option<(Vec<f64>, Vec<f64>)>,
}

impl<'f> ParticleFilter<'f> {
    pub fn new(f: &'f Filter) -> Result<ParticleFilter<'f>, EstimationError> {
        let np = f.opts.particles;
        if np < 2 {
            return Err(EstimationError::Filter(format!("the particle filter needs at least 2 particles, given {np}")));
        }
        ParticleFilter::with(f, np, f.opts.seed)
    }

    /// `np` particles whose streams are keyed by `seed`.
    fn with(f: &'f Filter, np: usize, seed: u64) -> Result<ParticleFilter<'f>, EstimationError> {
        if !(f.opts.substep > 0.0 && f.opts.substep.is_finite()) {
            return Err(EstimationError::Filter(format!(
                "the particle filter's substep must be positive, given {}",
                f.opts.substep
            )));
        }
        let n = f.nstates();
        let s = square_root(&f.cov0);
        let mut x = vec![0.0; np * n];
        x.par_chunks_mut(n).enumerate().for_each(|(i, xi)| {
            let mut g = stream(seed, 0, i);
            let z: Vec<f64> = (0..n).map(|_| g.next()).collect();
            for r in 0..n {
                xi[r] = f.mean0[r] + (0..n).map(|c| s[(r, c)] * z[c]).sum::<f64>();
            }
        });
        Ok(ParticleFilter {
            f,
            n,
            np,
            x,
            logw: vec![-(np as f64).ln(); np],
            master: ChaCha8Rng::seed_from_u64(mix(seed, u64::MAX)),
            interval: 0,
            seed,
            after_update: None,
        })
    }

    fn weights(&self) -> Vec<f64> {
        self.logw.iter().map(|l| l.exp()).collect()
    }

    /// Weighted mean and covariance (sequential sums in slot order).
    fn weighted_moments(&self, w: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let n = self.n;
        let total: f64 = w.iter().sum();
        let mut mean = vec![0.0; n];
        for (xi, wi) in self.x.chunks(n).zip(w) {
            for r in 0..n {
                mean[r] += wi * xi[r];
            }
        }
        mean.iter_mut().for_each(|m| *m /= total);
        let mut cov = vec![0.0; n * n];
        for (xi, wi) in self.x.chunks(n).zip(w) {
            for r in 0..n {
                let dr = xi[r] - mean[r];
                for c in r..n {
                    cov[r * n + c] += wi * dr * (xi[c] - mean[c]);
                }
            }
        }
        for r in 0..n {
            for c in r..n {
                cov[r * n + c] /= total;
                cov[c * n + r] = cov[r * n + c];
            }
        }
        (mean, cov)
    }

    /// Systematic resampling with one uniform draw.
    fn resample(&mut self) {
        let np = self.np;
        let n = self.n;
        let w = self.weights();
        let total: f64 = w.iter().sum();
        let u0 = self.master.random::<f64>() / np as f64;
        let mut idx = Vec::with_capacity(np);
        let mut cum = w[0] / total;
        let mut j = 0;
        for i in 0..np {
            let u = u0 + i as f64 / np as f64;
            while u > cum && j + 1 < np {
                j += 1;
                cum += w[j] / total;
            }
            idx.push(j);
        }
        let old = std::mem::take(&mut self.x);
        self.x = idx.iter().flat_map(|&k| old[k * n..(k + 1) * n].iter().copied()).collect();
        self.logw = vec![-(np as f64).ln(); np];
    }
}

impl Engine for ParticleFilter<'_> {
    fn propagate(&mut self, t0: f64, t1: f64, forcing: &Forcing) -> Result<(), EstimationError> {
        if t1 <= t0 {
            return Ok(());
        }
        self.after_update = None;
        self.interval += 1;
        let f = self.f;
        let n = self.n;
        let steps = ((t1 - t0) / f.opts.substep).ceil().max(1.0) as usize;
        let h = (t1 - t0) / steps as f64;
        let sqrt_h = h.sqrt();
        let scale = f.opts.noise_scale;
        let (seed, k) = (self.seed, self.interval);
        let sys = &f.sys;
        let p = &f.params;
        let model = sys.model();
        let noisy = &f.noise.states;
        let failed = self
            .x
            .par_chunks_mut(n)
            .enumerate()
            .map(|(i, xi)| {
                let mut g = stream(seed, k, i);
                let mut dx = vec![0.0; n];
                let mut sd = vec![0.0; n];
                for s in 0..steps {
                    let t = t0 + s as f64 * h;
                    sys.rhs(t, xi, &forcing.u, p, &mut dx);
                    if !noisy.is_empty() {
                        let env = Env { x: xi, p, u: &forcing.u, cov: sys.covariates(), t };
                        f.noise.eval(model, &env, &mut sd, None);
                    }
                    for r in 0..n {
                        xi[r] += (dx[r] + forcing.rates[r]) * h;
                    }
                    for &r in noisy {
                        xi[r] += scale * sd[r] * sqrt_h * g.next();
                    }
                }
                xi.iter().any(|v| !v.is_finite())
            })
            .collect::<Vec<bool>>();
        if let Some(i) = failed.iter().position(|&b| b) {
            return Err(EstimationError::Filter(format!(
                "{}: particle {i} became NaN or infinite between t = {t0} and t = {t1} (reduce the substep)",
                f.label()
            )));
        }
        Ok(())
    }

    fn jump(&mut self, cmt: usize, amount: f64) {
        self.after_update = None;
        for xi in self.x.chunks_mut(self.n) {
            xi[cmt] += amount;
        }
    }

    fn reset(&mut self) {
        self.after_update = None;
        self.x.iter_mut().for_each(|v| *v = 0.0);
    }

    fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        match &self.after_update {
            Some(m) => m.clone(),
            None => self.weighted_moments(&self.weights()),
        }
    }

    fn update(&mut self, t: f64, out: &ObservedOutput, y: Option<f64>) -> Result<Update, EstimationError> {
        let f = self.f;
        let n = self.n;
        let sys = &f.sys;
        let hs: Vec<f64> = self.x.par_chunks(n).map(|xi| sys.output(out.output, t, xi, &f.params)).collect();
        let w = self.weights();
        let log = out.error.log_scale();
        // Predicted output (natural scale) and innovation variance (comparison scale).
        let mut predicted = 0.0;
        let (mut mc, mut wc) = (0.0, 0.0);
        for (hi, wi) in hs.iter().zip(&w) {
            predicted += wi * hi;
            if !log || *hi > 0.0 {
                mc += wi * comparison(out, 1.0, *hi).1;
                wc += wi;
            }
        }
        mc /= wc;
        let mut variance = 0.0;
        for (hi, wi) in hs.iter().zip(&w) {
            if !log || *hi > 0.0 {
                let d = comparison(out, 1.0, *hi).1 - mc;
                variance += wi * (d * d + out.error.variance(*hi, &out.sigma).0);
            }
        }
        variance /= wc;
        let Some(y) = y else {
            return Ok(Update { predicted, variance, log_likelihood: 0.0, ess: None });
        };
        let (yc, _, _) = comparison(out, y, 1.0);
        let ll: Vec<f64> = hs
            .iter()
            .map(|&hi| {
                if log && hi <= 0.0 {
                    return f64::NEG_INFINITY;
                }
                let v = out.error.variance(hi, &out.sigma).0;
                let e = yc - comparison(out, 1.0, hi).1;
                -0.5 * ((2.0 * std::f64::consts::PI * v).ln() + e * e / v)
            })
            .collect();
        let a: Vec<f64> = self.logw.iter().zip(&ll).map(|(lw, l)| lw + l).collect();
        let top = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !top.is_finite() {
            return Err(EstimationError::Filter(format!(
                "{}: at t = {t} no particle can explain the observation {y} of `{}` (every weight is zero)",
                f.label(),
                out.name
            )));
        }
        let lse = top + a.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
        self.logw = a.iter().map(|v| v - lse).collect();
        let w = self.weights();
        let ess = 1.0 / w.iter().map(|v| v * v).sum::<f64>();
        self.after_update = Some(self.weighted_moments(&w));
        if ess < f.opts.resample_below * self.np as f64 {
            self.resample();
        }
        Ok(Update { predicted, variance, log_likelihood: lse, ess: Some(ess) })
    }
}

/// One sample path of the SDE (Euler–Maruyama, the particle filter's
/// substeps) with residual error drawn at each measurement: what
/// [`Filter::simulate`] runs.
pub(crate) struct Path<'f> {
    pf: ParticleFilter<'f>,
    eps: Normals<ChaCha8Rng>,
    /// Simulated values, in processing order.
    pub values: Vec<f64>,
}

impl<'f> Path<'f> {
    pub fn new(f: &'f Filter) -> Result<Path<'f>, EstimationError> {
        // One path started from N(m₀, P₀), on streams of its own (a filter
        // run with the same seed does not share the path's noise).
        let pf = ParticleFilter::with(f, 1, mix(f.opts.seed, 0x005e_ed0f_9a7b))?;
        Ok(Path {
            pf,
            eps: Normals::new(ChaCha8Rng::seed_from_u64(mix(f.opts.seed, u64::MAX - 1))),
            values: Vec::new(),
        })
    }
}

impl Engine for Path<'_> {
    fn propagate(&mut self, t0: f64, t1: f64, forcing: &Forcing) -> Result<(), EstimationError> {
        self.pf.propagate(t0, t1, forcing)
    }
    fn jump(&mut self, cmt: usize, amount: f64) {
        self.pf.jump(cmt, amount)
    }
    fn reset(&mut self) {
        self.pf.reset()
    }
    fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        (self.pf.x.clone(), vec![0.0; self.pf.n * self.pf.n])
    }
    fn update(&mut self, t: f64, out: &ObservedOutput, _y: Option<f64>) -> Result<Update, EstimationError> {
        let f = self.pf.f;
        let h = f.sys.output(out.output, t, &self.pf.x, &f.params);
        let v = out.error.variance(h, &out.sigma).0;
        let z = self.eps.next();
        let y = if out.error.log_scale() {
            if h <= 0.0 {
                return Err(EstimationError::Filter(format!(
                    "at t = {t} the simulated `{}` is {h}; the exponential error model needs a positive value",
                    out.name
                )));
            }
            (h.ln() + v.sqrt() * z).exp()
        } else {
            h + v.sqrt() * z
        };
        self.values.push(y);
        Ok(Update { predicted: h, variance: v, log_likelihood: 0.0, ess: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Box–Muller normals: mean 0 and variance 1 within 5 standard errors
    /// (SE of the mean 1/√N, of the variance √(2/N), N = 10⁵).
    #[test]
    fn normals_have_unit_variance() {
        let mut g = stream(7, 3, 11);
        let n = 100_000;
        let z: Vec<f64> = (0..n).map(|_| g.next()).collect();
        let m = z.iter().sum::<f64>() / n as f64;
        let v = z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        assert!(m.abs() < 5.0 / (n as f64).sqrt());
        assert!((v - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt());
        // Different slots draw different streams.
        assert_ne!(stream(7, 3, 11).next(), stream(7, 3, 12).next());
    }
}
