//! The exact path for linear models: `dx/dt = A x + r` with `r` piecewise
//! constant and bolus jumps, propagated with the matrix exponential of the
//! augmented matrix `[[A, r], [0, 0]]` between consecutive breakpoints and
//! output times. Exact up to round-off (no truncation error), so it is the
//! limit every integrator is measured against — and fast: one small
//! matrix-vector product per output time.

use rayon::prelude::*;

use crate::ensemble::{Batch, MAX_PARAMS};
use crate::integrate::{Observer, MAX_INPUTS};
use crate::model::BatchModel;
use crate::schedule::{Cursor, Regimen};

/// A [`BatchModel`] whose right-hand side is linear in the state and does
/// not depend on the inputs `u`: `f(x) = A(θ) x`, with `A` its Jacobian.
pub trait LinearModel<const N: usize>: BatchModel<N> {}

impl LinearModel<4> for crate::model::TwoCmtOral {}

type Mat<const N: usize> = [[f64; N]; N];

fn matmul<const N: usize>(a: &Mat<N>, b: &Mat<N>) -> Mat<N> {
    let mut c = [[0.0; N]; N];
    for i in 0..N {
        for k in 0..N {
            let aik = a[i][k];
            if aik != 0.0 {
                for j in 0..N {
                    c[i][j] += aik * b[k][j];
                }
            }
        }
    }
    c
}

/// `(e^{A dt}, ∫₀^dt e^{A s} ds)` by scaling and squaring of a Taylor series
/// (terms until they fall below 1e-17 relative), applied to the augmented
/// form so that both blocks come out together and exactly consistent.
pub fn propagators<const N: usize>(a: &Mat<N>, dt: f64) -> (Mat<N>, Mat<N>) {
    // Scale so that ‖A dt / 2^s‖∞ ≤ 1/2.
    let norm = a.iter().map(|r| r.iter().map(|v| v.abs()).sum::<f64>()).fold(0.0, f64::max) * dt;
    let s = if norm > 0.5 { (norm / 0.5).log2().ceil() as i32 } else { 0 };
    let h = dt / 2f64.powi(s);
    // E = Σ (A h)^k / k!, F = h Σ (A h)^k / (k+1)!
    let mut e = [[0.0; N]; N];
    let mut f = [[0.0; N]; N];
    let mut term = [[0.0; N]; N];
    for i in 0..N {
        term[i][i] = 1.0;
    }
    let mut ah = *a;
    for row in ah.iter_mut() {
        for v in row.iter_mut() {
            *v *= h;
        }
    }
    for k in 0..30 {
        let kf = k as f64;
        let mut biggest = 0.0f64;
        for i in 0..N {
            for j in 0..N {
                e[i][j] += term[i][j];
                f[i][j] += h * term[i][j] / (kf + 1.0);
                biggest = biggest.max(term[i][j].abs());
            }
        }
        if biggest < 1e-18 {
            break;
        }
        term = matmul(&term, &ah);
        for row in term.iter_mut() {
            for v in row.iter_mut() {
                *v /= kf + 1.0;
            }
        }
    }
    // Squaring: E(2h) = E(h)², F(2h) = F(h) + E(h) F(h).
    for _ in 0..s {
        let ef = matmul(&e, &f);
        for i in 0..N {
            for j in 0..N {
                f[i][j] += ef[i][j];
            }
        }
        e = matmul(&e, &e);
    }
    (e, f)
}

/// A small cache of propagators keyed by step length (uniform output grids
/// reuse one entry for almost every step).
struct Cache<const N: usize> {
    a: Mat<N>,
    entries: Vec<(f64, Mat<N>, Mat<N>)>,
}

impl<const N: usize> Cache<N> {
    /// Index of the propagators for `dt`, computing them on a miss.
    #[inline]
    fn get(&mut self, dt: f64) -> usize {
        if let Some(i) = self.entries.iter().position(|e| e.0 == dt) {
            return i;
        }
        let (e, f) = propagators(&self.a, dt);
        if self.entries.len() >= 8 {
            self.entries.remove(0);
        }
        self.entries.push((dt, e, f));
        self.entries.len() - 1
    }
}

#[inline(always)]
fn step<const N: usize>(x: &mut [f64; N], rate: &[f64; N], e: &Mat<N>, f: &Mat<N>) {
    let mut y = [0.0; N];
    if rate.iter().all(|r| *r == 0.0) {
        // No infusion running: x ← e^{A dt} x.
        for i in 0..N {
            let mut s = 0.0;
            for j in 0..N {
                s += e[i][j] * x[j];
            }
            y[i] = s;
        }
    } else {
        for i in 0..N {
            let mut s = 0.0;
            for j in 0..N {
                s += e[i][j] * x[j] + f[i][j] * rate[j];
            }
            y[i] = s;
        }
    }
    *x = y;
}

/// Exact outputs of one trajectory of a linear model at the sorted `times`.
pub fn solve_linear<const N: usize, M: LinearModel<N>, O: Observer + ?Sized>(
    model: &M,
    p: &[f64],
    x0: &[f64; N],
    regimen: &Regimen,
    times: &[f64],
    t_end: f64,
    obs: &mut O,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { solve_linear_avx2(model, p, x0, regimen, times, t_end, obs) };
        }
    }
    solve_linear_impl(model, p, x0, regimen, times, t_end, obs)
}

/// [`solve_linear`] compiled for AVX2 (same results: no FMA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn solve_linear_avx2<const N: usize, M: LinearModel<N>, O: Observer + ?Sized>(
    model: &M,
    p: &[f64],
    x0: &[f64; N],
    regimen: &Regimen,
    times: &[f64],
    t_end: f64,
    obs: &mut O,
) {
    solve_linear_impl(model, p, x0, regimen, times, t_end, obs)
}

#[inline(always)]
fn solve_linear_impl<const N: usize, M: LinearModel<N>, O: Observer + ?Sized>(
    model: &M,
    p: &[f64],
    x0: &[f64; N],
    regimen: &Regimen,
    times: &[f64],
    t_end: f64,
    obs: &mut O,
) {
    let mut derived = [0.0; 64];
    let nd = model.nderived().min(64);
    model.prepare(p, &mut derived[..nd]);
    let p = &derived[..nd];
    let mut a = [[0.0; N]; N];
    model.jacobian(&[0.0; N], p, &[], &mut a);
    let mut cache = Cache { a, entries: Vec::new() };
    let mut x = *x0;
    let mut rate = [0.0; N];
    let mut u = [0.0; MAX_INPUTS];
    let mut cur = Cursor::default();
    let mut t = 0.0;
    cur.apply(regimen, t, &mut x, &mut rate, &mut u[..0]);
    let mut gi = 0;
    while gi < times.len() && times[gi] <= t {
        obs.observe(gi, times[gi], model.output(&x, p));
        gi += 1;
    }
    while t < t_end {
        let t_ev = cur.next_time(regimen);
        let t_obs = times.get(gi).copied().unwrap_or(f64::INFINITY);
        let t_next = t_ev.min(t_obs).min(t_end);
        if t_next > t {
            let i = cache.get(t_next - t);
            let (_, e, f) = &cache.entries[i];
            step(&mut x, &rate, e, f);
            t = t_next;
        }
        if t_ev <= t {
            cur.apply(regimen, t, &mut x, &mut rate, &mut u[..0]);
        }
        while gi < times.len() && times[gi] <= t {
            obs.observe(gi, times[gi], model.output(&x, p));
            gi += 1;
        }
    }
}

/// [`solve_linear`] for every trajectory of a batch, in parallel; outputs
/// `n × times.len()`, trajectory-major.
pub fn solve_linear_grid<const N: usize, M: LinearModel<N>>(
    model: &M,
    batch: &Batch<N>,
    times: &[f64],
    t_end: f64,
) -> Vec<f64> {
    let nt = times.len().max(1);
    let mut values = vec![0.0; batch.n * times.len()];
    values.par_chunks_mut(nt).enumerate().for_each(|(i, out)| {
        let mut p = [0.0; MAX_PARAMS];
        batch.params_of(i, &mut p[..batch.nparams]);
        solve_linear(model, &p[..batch.nparams], &batch.x0_of(i), &batch.regimens[i], times, t_end, out);
    });
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TwoCmtOral;

    #[test]
    fn exponential_of_a_scalar_and_its_integral() {
        let (e, f) = propagators(&[[-0.3]], 7.0);
        assert!((e[0][0] - (-2.1f64).exp()).abs() < 1e-15);
        assert!((f[0][0] - (1.0 - (-2.1f64).exp()) / 0.3).abs() < 1e-14);
    }

    #[test]
    fn one_dose_matches_the_bateman_function() {
        // Gut → central only (Q = 0): C = D ka/(V(ka−k)) (e^{−kt} − e^{−ka t}).
        let p = [1.2, 5.0, 30.0, 0.0, 50.0];
        let r = Regimen::repeated_bolus(100.0, 0, 1000.0, 10.0).unwrap();
        let times: Vec<f64> = (0..=20).map(|k| k as f64 * 0.5).collect();
        let mut out = vec![0.0; times.len()];
        solve_linear(&TwoCmtOral, &p, &[0.0; 4], &r, &times, 10.0, &mut out[..]);
        let (ka, k) = (1.2f64, 5.0 / 30.0);
        for (t, c) in times.iter().zip(&out) {
            let exact = 100.0 * ka / (30.0 * (ka - k)) * ((-k * t).exp() - (-ka * t).exp());
            assert!((c - exact).abs() <= 1e-13 * exact.abs().max(1e-3), "t={t}: {c} vs {exact}");
        }
    }
}
