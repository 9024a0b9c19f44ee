//! FOCE-I: the first-order conditional estimation with interaction, i.e. the
//! Laplace approximation of the marginal likelihood with the first-order
//! (Gauss–Newton) Hessian, as NONMEM's `METHOD=1 INTER`.
//!
//! # The objective
//! For subject `i` with observations `y_j`, individual predictions
//! `f_j(η)`, residual variances `V_j = V(f_j; σ)` and `F = ∂f/∂η` (exact
//! forward sensitivities of the ODE solution, [`insilico_solvers::sensitivities`]):
//!
//! ```text
//! O_i(η)  = Σ_j [ (y_j − f_j)²/V_j + ln V_j ] + ηᵀΩ⁻¹η
//! η̂_i     = argmin O_i                                  (the inner problem)
//! OFV_i   = O_i(η̂_i) + ln det Ω + ln det(Ω⁻¹ + Σ_j F_jᵀF_j / V_j)
//! OFV     = Σ_i OFV_i                                   (−2LL without the constant)
//! −2LL    = OFV + N·ln(2π)                              (N observations)
//! ```
//!
//! `OFV` follows NONMEM's convention (no `N·ln(2π)`); `ofv_with_constant`
//! is the full −2 log-likelihood, the value R's `-2*logLik()` prints. With
//! interaction, `F` and `V` are evaluated at `η̂`; with the exponential error
//! model everything is on the log scale (LTBS).
//!
//! # The inner problem
//! Levenberg–Marquardt on `O_i` with the exact gradient and the expected
//! (Fisher) Hessian `Σ_j (2/V_j + (V'_j/V_j)²) F_jᵀF_j + 2Ω⁻¹`, started at
//! the previous η̂ (warm), then at 0, then at ±½ω along each axis (robust
//! starts); a subject that does not converge from any start is reported.
//!
//! # The outer problem
//! BFGS with a backtracking (Armijo) line search on
//! `ψ = [θ (log scale where positive), the Cholesky factor of Ω with log
//! diagonal, log σ]`. Its gradient is the central finite difference of the
//! exact objective: at each `ψ ± h·e_k` every inner problem is re-solved
//! from η̂ to tight tolerance, so the derivative `∂η̂/∂ψ` is carried
//! implicitly (the "finite differences of exact inner quantities" route);
//! cost: `2·dim ψ` objective evaluations per gradient. Subjects (and the
//! finite-difference directions) run in parallel with rayon; each subject's
//! result is independent of the others and sums run in subject order, so
//! the result does not depend on the thread count.
//!
//! # The covariance step
//! `R = ∇²OFV` by central second differences; the Hessian-based
//! covariance of ψ is `2·R⁻¹`, the sandwich `R⁻¹ S R⁻¹` with
//! `S = Σ_i ∇OFV_i ∇OFV_iᵀ`. Natural-scale standard errors follow by the
//! delta method.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use insilico_model::Model;
use insilico_solvers::data::Dataset;
use insilico_solvers::{Method, Options};
use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;

use crate::conditional::{Conditional, Point};
use crate::error::EstimationError;
use crate::population::{Layout, PopValues, SolveSettings, SubjectData};
use crate::spec::{OmegaStructure, PopulationSpec};

/// Which covariance step to run after the estimation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CovarianceStep {
    /// None.
    None,
    /// Standard errors from the Hessian of −2LL (`2·R⁻¹`).
    Hessian,
    /// NONMEM's default sandwich `R⁻¹ S R⁻¹` (the Hessian-based one is reported too).
    Sandwich,
}

/// How the outer gradient `∂OFV/∂ψ` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterGradient {
    /// The implicit-function theorem at η̂: `dη̂/dψ = −(∂²O/∂η²)⁻¹ ∂²O/∂η∂ψ`,
    /// with the second-order terms (`∂²O/∂η²`, `∂(ln det)/∂η`, and the
    /// θ-derivatives at fixed η) as central differences of the exact
    /// sensitivity-based gradient; `1 + 2·dim η + 2·(θ without a log-normal η)`
    /// ODE solves per subject (a log θ with a log-normal η on the same
    /// parameter reuses the η-shifted solves) and no inner re-optimisation.
    ImplicitFunction,
    /// Central differences of OFV itself, every inner problem re-solved at
    /// `ψ ± h·e_k` (warm-started): `2·dim ψ` objective evaluations.
    FiniteDifference,
}

/// Knobs of [`fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// ODE method (default: Tsit45; use BDF for stiff models).
    pub method: Method,
    /// ODE tolerances and step limit (default: rtol 1e-6, atol 1e-9).
    pub ode: Options,
    /// Maximum outer (BFGS) iterations (default 200).
    pub max_iterations: usize,
    /// Convergence: the largest |∂OFV/∂ψ_k| (default 1e-3).
    pub gradient_tolerance: f64,
    /// Convergence: relative change of OFV over an iteration (default 1e-10).
    pub objective_tolerance: f64,
    /// Maximum inner (Levenberg–Marquardt) iterations per start (default 100).
    pub max_inner_iterations: usize,
    /// Inner convergence: the largest |Δη| of the last step (default 1e-7).
    pub inner_tolerance: f64,
    /// Finite-difference step on ψ for the gradient (default 1e-4).
    pub fd_step: f64,
    /// Covariance step (default: sandwich, which reports the Hessian-based one too).
    pub covariance: CovarianceStep,
    /// Outer gradient (default: the implicit-function route).
    pub gradient: OuterGradient,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            method: Method::Tsit45,
            ode: Options { rtol: 1e-6, atol: 1e-9, max_steps: 1_000_000 },
            max_iterations: 200,
            gradient_tolerance: 1e-3,
            objective_tolerance: 1e-10,
            max_inner_iterations: 100,
            inner_tolerance: 1e-7,
            fd_step: 1e-4,
            covariance: CovarianceStep::Sandwich,
            gradient: OuterGradient::ImplicitFunction,
        }
    }
}

/// One estimated quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimated {
    /// Name (`ka`, `omega2(eta_ka)`, `omega(eta_ka,eta_CL)`, `sigma_a`).
    pub name: String,
    /// The estimate on its natural scale.
    pub value: f64,
    /// Standard error from the covariance step (sandwich when run, else Hessian).
    pub se: Option<f64>,
    /// Relative standard error, `100·se/|value|` (%).
    pub rse_percent: Option<f64>,
}

/// A random effect's variance in the forms pharmacometricians read.
#[derive(Debug, Clone, PartialEq)]
pub struct EtaVariance {
    /// The random effect.
    pub name: String,
    /// `ω²`.
    pub omega2: f64,
    /// `ω`.
    pub sd: f64,
    /// `100·sqrt(exp(ω²) − 1)` for log-normal effects; `None` for declared ones.
    pub cv_percent: Option<f64>,
    /// η-shrinkage `1 − SD(η̂)/ω` (%), SD with `n − 1`.
    pub shrinkage_percent: f64,
}

/// A subject's conditional estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectEstimate {
    /// ID.
    pub id: String,
    /// η̂ (in the order of the random effects).
    pub eta: Vec<f64>,
    /// Whether the inner problem converged.
    pub converged: bool,
    /// Its contribution to OFV.
    pub ofv: f64,
}

/// The covariance step's results on the natural scale of
/// [`Estimate::parameters`].
#[derive(Debug, Clone, PartialEq)]
pub struct Covariance {
    /// `sandwich` or `hessian`: which one the SEs of the estimates come from.
    pub kind: &'static str,
    /// Covariance matrix of the estimates (natural scale), row-major, same order as `parameters`.
    pub matrix: Vec<Vec<f64>>,
    /// Correlation matrix.
    pub correlation: Vec<Vec<f64>>,
    /// Hessian-based SEs (always computed).
    pub se_hessian: Vec<f64>,
    /// Sandwich SEs (when requested).
    pub se_sandwich: Option<Vec<f64>>,
    /// Standard errors on ψ's scale (log for θ, σ, and the Cholesky diagonal).
    pub se_psi: Vec<f64>,
    /// Condition number of the Hessian of −2LL on ψ's scale (largest/smallest eigenvalue).
    pub condition_number: f64,
}

/// The result of a FOCE-I fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// `"focei"`.
    pub method: &'static str,
    /// −2LL without the `N·ln(2π)` constant (NONMEM's OFV).
    pub ofv: f64,
    /// −2LL with `N·ln(2π)` (as R's `-2*logLik`).
    pub ofv_with_constant: f64,
    /// Number of observations `N`.
    pub n_observations: usize,
    /// Number of subjects.
    pub n_subjects: usize,
    /// Typical values θ, then Ω's entries (`omega2(..)` variances and, for a
    /// block, `omega(..,..)` covariances), then σ (`sigma_a`, `sigma_b`).
    pub parameters: Vec<Estimated>,
    /// Number of θ entries at the front of `parameters`.
    pub n_theta: usize,
    /// Ω as a matrix.
    pub omega: Vec<Vec<f64>>,
    /// Per random effect: ω², SD, CV%, shrinkage.
    pub etas: Vec<EtaVariance>,
    /// Per subject: η̂ and convergence.
    pub subjects: Vec<SubjectEstimate>,
    /// IDs of subjects whose inner problem did not converge at the final estimates.
    pub nonconverged: Vec<String>,
    /// Whether the outer optimisation met its tolerance.
    pub converged: bool,
    /// Outer (BFGS) iterations.
    pub iterations: usize,
    /// Objective evaluations outside gradients (each solves every inner problem).
    pub evaluations: usize,
    /// Outer gradient evaluations.
    pub gradients: usize,
    /// ODE solves (with sensitivities by η) over the whole fit, covariance step included.
    pub ode_solves: usize,
    /// Wall time of the estimation (s), without the covariance step.
    pub wall_seconds: f64,
    /// Wall time of the covariance step (s).
    pub covariance_seconds: f64,
    /// The covariance step, when run and successful.
    pub covariance: Option<Covariance>,
    /// Why the covariance step failed, when it did.
    pub covariance_error: Option<String>,
    /// Per observation: PRED, IPRED, IWRES, CWRES and η̂. CWRES follows
    /// Hooker, Staatz, Karlsson (2007): with `F = ∂f/∂η` and `V` at η̂,
    /// `E[y] ≈ f(η̂) − F·η̂`, `Cov[y] ≈ F·Ω·Fᵀ + diag(V)`, and
    /// `CWRES = L⁻¹(y − E[y])` with `L` the Cholesky factor of `Cov[y]`.
    pub sdtab: Vec<SdtabRow>,
    /// ε-shrinkage `1 − SD(IWRES)` (%).
    pub eps_shrinkage_percent: f64,
    /// Names of the random effects (the η columns of `sdtab`).
    pub eta_names: Vec<String>,
}

impl Estimate {
    /// The diagnostics table as CSV: `ID,TIME,DV,PRED,IPRED,CWRES,IWRES` and one column per η.
    ///
    /// NPDE is not computed yet.
    pub fn sdtab_csv(&self) -> String {
        let mut s = String::from("ID,TIME,DV,PRED,IPRED,CWRES,IWRES");
        for n in &self.eta_names {
            s.push(',');
            s.push_str(n);
        }
        s.push('\n');
        for r in &self.sdtab {
            s.push_str(&format!("{},{},{},{},{},{},{}", r.id, r.time, r.dv, r.pred, r.ipred, r.cwres, r.iwres));
            for e in &r.eta {
                s.push_str(&format!(",{e}"));
            }
            s.push('\n');
        }
        s
    }

    /// A plain-text table of the estimates.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "FOCE-I: OFV (−2LL, no constant) {:.4}; −2LL with N·ln(2π) {:.4}; {} subjects, {} observations; {} iterations, {} evaluations + {} gradients, {} ODE solves, {:.3} s (+{:.3} s covariance){}",
            self.ofv,
            self.ofv_with_constant,
            self.n_subjects,
            self.n_observations,
            self.iterations,
            self.evaluations,
            self.gradients,
            self.ode_solves,
            self.wall_seconds,
            self.covariance_seconds,
            if self.converged { "" } else { " (NOT CONVERGED)" }
        );
        let _ = writeln!(s, "{:<24} {:>12} {:>12} {:>8}", "parameter", "estimate", "SE", "RSE%");
        for p in &self.parameters {
            let se = p.se.map_or("-".to_string(), |v| format!("{v:.5}"));
            let rse = p.rse_percent.map_or("-".to_string(), |v| format!("{v:.1}"));
            let _ = writeln!(s, "{:<24} {:>12.6} {:>12} {:>8}", p.name, p.value, se, rse);
        }
        let _ = writeln!(s, "{:<24} {:>10} {:>10} {:>8} {:>10}", "random effect", "omega2", "SD", "CV%", "shrink%");
        for e in &self.etas {
            let cv = e.cv_percent.map_or("-".to_string(), |v| format!("{v:.1}"));
            let _ =
                writeln!(s, "{:<24} {:>10.5} {:>10.5} {:>8} {:>10.1}", e.name, e.omega2, e.sd, cv, e.shrinkage_percent);
        }
        if !self.nonconverged.is_empty() {
            let _ = writeln!(s, "inner problem not converged for subjects: {}", self.nonconverged.join(", "));
        }
        if let Some(c) = &self.covariance {
            let _ = writeln!(s, "covariance step: {} (condition number {:.3e})", c.kind, c.condition_number);
        }
        if let Some(e) = &self.covariance_error {
            let _ = writeln!(s, "covariance step failed: {e}");
        }
        let _ = writeln!(s, "ε-shrinkage (1 − SD(IWRES)): {:.1}%", self.eps_shrinkage_percent);
        s
    }
}

/// The inner solution of one subject at one ψ.
#[derive(Debug, Clone)]
pub(crate) struct Inner {
    pub eta: Vec<f64>,
    /// OFV_i (FOCE-I, no constant); +∞ when the subject could not be evaluated.
    pub ofv: f64,
    pub converged: bool,
}

/// The population problem: a model, its subjects and the layout of ψ.
pub(crate) struct Population {
    pub layout: Layout,
    pub subjects: Vec<SubjectData>,
    pub settings: SolveSettings,
    pub opts: FitOptions,
    /// ODE solves so far (each with sensitivities by η).
    pub solves: AtomicUsize,
}

impl Population {
    /// The shared conditional-objective machinery ([`crate::conditional`]).
    fn cond(&self) -> Conditional<'_> {
        Conditional {
            layout: &self.layout,
            settings: &self.settings,
            solves: &self.solves,
            max_iterations: self.opts.max_inner_iterations,
            tolerance: self.opts.inner_tolerance,
            secant: false,
        }
    }

    #[cfg(test)]
    fn point(&self, s: &SubjectData, pop: &PopValues, eta: &DVector<f64>) -> Option<Point> {
        self.cond().point(s, pop, eta, None)
    }

    /// Individual predictions at (θ, η) and their Jacobian by η (row-major `n × q`).
    fn predict_at(&self, s: &SubjectData, theta: &[f64], eta: &DVector<f64>) -> Option<(Vec<f64>, Vec<f64>)> {
        self.cond().predict_at(s, theta, eta)
    }

    /// `O_i`, its gradient and curvature at η from predictions `f` and their Jacobian.
    fn point_from(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        eta: &DVector<f64>,
        f: &[f64],
        jac: &[f64],
    ) -> Option<Point> {
        self.cond().point_from(s, pop, eta, f.to_vec(), jac, None)
    }

    /// The inner problem of subject `s` at `pop`, from `warm` then the robust starts.
    pub fn inner(&self, s: &SubjectData, pop: &PopValues, warm: &[f64]) -> Inner {
        let best = self.cond().multistart(s, pop, warm, None, false);
        match best {
            None => Inner { eta: warm.to_vec(), ofv: f64::INFINITY, converged: false },
            Some((p, converged)) => {
                let a = &pop.omega_inv + &p.ftvf;
                let logdet = match a.cholesky() {
                    Some(c) => 2.0 * c.l().diagonal().iter().map(|d| d.ln()).sum::<f64>(),
                    None => f64::INFINITY,
                };
                let ofv = p.o + pop.omega.log_det() + logdet;
                Inner { eta: p.eta.as_slice().to_vec(), ofv, converged }
            }
        }
    }

    /// Every subject's inner solution at ψ, from the warm starts `etas`.
    pub fn evaluate(&self, psi: &[f64], etas: &[Vec<f64>]) -> Vec<Inner> {
        let pop = self.layout.unpack(psi);
        self.subjects.par_iter().zip(etas.par_iter()).map(|(s, e)| self.inner(s, &pop, e)).collect()
    }

    /// Per-subject objective values at each of `points` (ψ vectors), warm-started at `etas`:
    /// `out[k][i]`. Parallel over (point, subject) pairs.
    pub fn evaluate_many(&self, points: &[Vec<f64>], etas: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = self.subjects.len();
        let pops: Vec<PopValues> = points.iter().map(|p| self.layout.unpack(p)).collect();
        let flat: Vec<f64> = (0..points.len() * n)
            .into_par_iter()
            .map(|t| {
                let (k, i) = (t / n, t % n);
                self.inner(&self.subjects[i], &pops[k], &etas[i]).ofv
            })
            .collect();
        flat.chunks(n).map(|c| c.to_vec()).collect()
    }

    fn step(&self, psi: &[f64], k: usize) -> f64 {
        self.opts.fd_step * (1.0 + psi[k].abs())
    }

    /// The gradient of OFV at ψ (η̂ at ψ in `etas`), and the per-subject gradients.
    pub fn gradient(&self, psi: &[f64], etas: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let (g, per, _) = self.gradient_and_slopes(psi, etas);
        (g, per)
    }

    /// As [`Population::gradient`], plus each subject's `dη̂/dψ` (`q × dim ψ`) on the implicit-function route.
    pub fn gradient_and_slopes(&self, psi: &[f64], etas: &[Vec<f64>]) -> GradientParts {
        if self.opts.gradient == OuterGradient::ImplicitFunction {
            let per: Option<Vec<(Vec<f64>, DMatrix<f64>)>> =
                self.subjects.par_iter().zip(etas.par_iter()).map(|(s, e)| self.subject_gradient(s, psi, e)).collect();
            if let Some(per) = per {
                let mut g = vec![0.0; psi.len()];
                for (gi, _) in &per {
                    for (a, b) in g.iter_mut().zip(gi) {
                        *a += b;
                    }
                }
                let (per, slopes): (Vec<Vec<f64>>, Vec<DMatrix<f64>>) = per.into_iter().unzip();
                return (g, per, Some(slopes));
            }
        }
        let (g, per) = self.fd_gradient(psi, etas);
        (g, per, None)
    }

    /// `(O, ln det Ω + ln det(Ω⁻¹ + FᵀV⁻¹F), ∇_η O)` at fixed η, from predictions `f`, `jac`.
    fn terms(
        &self,
        s: &SubjectData,
        pop: &PopValues,
        eta: &DVector<f64>,
        f: &[f64],
        jac: &[f64],
    ) -> Option<(f64, f64, DVector<f64>)> {
        let p = self.point_from(s, pop, eta, f, jac)?;
        let a = &pop.omega_inv + &p.ftvf;
        let l = 2.0 * a.cholesky()?.l().diagonal().iter().map(|d| d.ln()).sum::<f64>() + pop.omega.log_det();
        Some((p.o, l, p.g))
    }

    /// `dOFV_i/dψ` by the implicit-function theorem at η̂ (see [`OuterGradient::ImplicitFunction`]).
    fn subject_gradient(&self, s: &SubjectData, psi: &[f64], eta_hat: &[f64]) -> Option<(Vec<f64>, DMatrix<f64>)> {
        let d = psi.len();
        let q = self.layout.n_eta();
        let nt = self.layout.n_theta();
        let pop0 = self.layout.unpack(psi);
        let eta0 = DVector::from_column_slice(eta_hat);
        let (f0, j0) = self.predict_at(s, &pop0.theta, &eta0)?;
        let (_, _, g0) = self.terms(s, &pop0, &eta0, &f0, &j0)?;
        // ∂²O/∂η² and ∂L/∂η by central differences of exact quantities in η.
        let mut hess = DMatrix::zeros(q, q);
        let mut dl_deta = DVector::zeros(q);
        // Predictions at η ± h·e_m, reused for log θ of the same parameter.
        let mut shifted = Vec::with_capacity(q);
        for m in 0..q {
            let h = self.opts.fd_step * (1.0 + eta0[m].abs());
            let mut ep = eta0.clone();
            ep[m] += h;
            let mut em = eta0.clone();
            em[m] -= h;
            let (fp, jp) = self.predict_at(s, &pop0.theta, &ep)?;
            let (fm, jm) = self.predict_at(s, &pop0.theta, &em)?;
            let (_, lp, gp) = self.terms(s, &pop0, &ep, &fp, &jp)?;
            let (_, lm, gm) = self.terms(s, &pop0, &em, &fm, &jm)?;
            hess.set_column(m, &((gp - gm) / (2.0 * h)));
            dl_deta[m] = (lp - lm) / (2.0 * h);
            shifted.push((h, fp, jp, fm, jm));
        }
        let hess = 0.5 * (&hess + hess.transpose());
        // Partial derivatives in ψ at fixed η; Ω and σ do not move the predictions.
        let mut do_dpsi = vec![0.0; d];
        let mut d2 = DMatrix::zeros(q, d);
        for k in 0..d {
            // "Mu-referencing": with P = θ·exp(η), moving log θ by h moves the
            // predictions exactly as moving η by h, and O's prior term and L do
            // not read θ, so the η-shifted solves serve.
            let mu = (k < nt && self.layout.theta_log[k])
                .then(|| {
                    (0..q).find(|&m| self.layout.eta_lognormal[m] && self.layout.eta_idx[m] == self.layout.theta_idx[k])
                })
                .flatten();
            if let Some(m) = mu {
                let (h, fp, jp, fm, jm) = &shifted[m];
                let (op, lp, gp) = self.terms(s, &pop0, &eta0, fp, jp)?;
                let (om, lm, gm) = self.terms(s, &pop0, &eta0, fm, jm)?;
                do_dpsi[k] = (op + lp - om - lm) / (2.0 * h);
                d2.set_column(k, &((gp - gm) / (2.0 * h)));
                continue;
            }
            let h = self.step(psi, k);
            let mut vals = Vec::with_capacity(2);
            for sign in [1.0, -1.0] {
                let mut pk = psi.to_vec();
                pk[k] += sign * h;
                let pop = self.layout.unpack(&pk);
                let t = if k < nt {
                    let (f, j) = self.predict_at(s, &pop.theta, &eta0)?;
                    self.terms(s, &pop, &eta0, &f, &j)?
                } else {
                    self.terms(s, &pop, &eta0, &f0, &j0)?
                };
                vals.push(t);
            }
            let ((op, lp, gp), (om, lm, gm)) = (&vals[0], &vals[1]);
            do_dpsi[k] = (op + lp - om - lm) / (2.0 * h);
            d2.set_column(k, &((gp - gm) / (2.0 * h)));
        }
        // dη̂/dψ = −(∂²O/∂η²)⁻¹ ∂²O/∂η∂ψ; the total derivative adds ∂(O + L)/∂η · dη̂/dψ.
        let deta = -hess.cholesky()?.solve(&d2);
        let w = dl_deta + g0;
        Some(((0..d).map(|k| do_dpsi[k] + w.dot(&deta.column(k))).collect(), deta))
    }

    /// Central-difference gradient of OFV at ψ; also the per-subject gradients.
    pub fn fd_gradient(&self, psi: &[f64], etas: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let d = psi.len();
        let mut points = Vec::with_capacity(2 * d);
        for k in 0..d {
            let h = self.step(psi, k);
            for sign in [1.0, -1.0] {
                let mut p = psi.to_vec();
                p[k] += sign * h;
                points.push(p);
            }
        }
        let vals = self.evaluate_many(&points, etas);
        let n = self.subjects.len();
        let mut per_subject = vec![vec![0.0; d]; n];
        let mut g = vec![0.0; d];
        for k in 0..d {
            let h = self.step(psi, k);
            for i in 0..n {
                let gi = (vals[2 * k][i] - vals[2 * k + 1][i]) / (2.0 * h);
                per_subject[i][k] = gi;
                g[k] += gi;
            }
        }
        (g, per_subject)
    }
}

/// One row of the diagnostics table (NONMEM's sdtab), per observation.
#[derive(Debug, Clone, PartialEq)]
pub struct SdtabRow {
    /// Subject ID.
    pub id: String,
    /// Observation time.
    pub time: f64,
    /// The observation.
    pub dv: f64,
    /// Population prediction (η = 0).
    pub pred: f64,
    /// Individual prediction (η = η̂).
    pub ipred: f64,
    /// `(y − IPRED)/sqrt(V(IPRED))` (on the log scale for the exponential error model).
    pub iwres: f64,
    /// Conditional weighted residual (Hooker et al. 2007), see [`Estimate::sdtab`].
    pub cwres: f64,
    /// The subject's η̂.
    pub eta: Vec<f64>,
    /// Dataset line of the observation.
    pub line: usize,
}

/// The total gradient, the per-subject gradients and (implicit-function route) each subject's `dη̂/dψ`.
type GradientParts = (Vec<f64>, Vec<Vec<f64>>, Option<Vec<DMatrix<f64>>>);

#[derive(Debug, Clone, Copy)]
struct Counts {
    iterations: usize,
    evaluations: usize,
    gradients: usize,
    solves: usize,
}

fn total(inner: &[Inner]) -> f64 {
    inner.iter().map(|r| r.ofv).sum()
}

/// The population problem and the initial ψ.
pub(crate) fn setup(
    model: &Model,
    data: &Dataset,
    spec: &PopulationSpec,
    options: &FitOptions,
) -> Result<(Population, Vec<f64>), EstimationError> {
    let layout = Layout::new(model, spec)?;
    if layout.outputs.len() > 1 {
        return Err(EstimationError::Spec(
            "FOCE-I fits one observed output; several (each with its own error model) are supported by the individual posterior only".into(),
        ));
    }
    let subjects = SubjectData::build_all(model, data, &layout, spec, false)?;
    if let Some((s, j)) = subjects.iter().find_map(|s| s.cens.iter().position(|&c| c).map(|j| (s, j))) {
        return Err(EstimationError::Observation {
            file: data.file.clone(),
            subject: s.id.clone(),
            line: s.lines[j],
            reason: "censored observation (CENS = 1 or below lloq): FOCE-I does not take M3 censoring yet (the individual posterior does)".into(),
        });
    }
    let theta0: Vec<f64> = spec.theta.iter().map(|(_, v)| *v).collect();
    let psi = layout.pack(&theta0, &spec.omega, &layout.sigma0);
    let pop = Population {
        layout,
        subjects,
        settings: SolveSettings { method: options.method, options: options.ode },
        opts: *options,
        solves: AtomicUsize::new(0),
    };
    Ok((pop, psi))
}

/// Fits the population model `spec` of `model` to `data` by FOCE-I.
///
/// ```
/// use insilico_estimation::{focei, ErrorModel, PopulationSpec};
/// use insilico_model::Model;
/// use insilico_solvers::data::{Dataset, ReadOptions};
/// let model = Model::parse("parameters: k in (0, inf), V in (0, inf)\nstates: c\nd/dt(c) = -k * c\noutput: cp = c / V", "iv")?;
/// // Two subjects with elimination rates 0.2 and 0.3, V = 10, dose 100.
/// let mut csv = String::from("ID,TIME,AMT,DV,EVID\n");
/// for (id, k) in [(1, 0.2f64), (2, 0.3), (3, 0.25)] {
///     csv += &format!("{id},0,100,.,1\n");
///     for t in [1.0, 2.0, 4.0, 8.0] {
///         csv += &format!("{id},{t},0,{},0\n", 10.0 * (-k * t).exp() * (1.0 + 0.01 * (t - 4.0)));
///     }
/// }
/// let data = Dataset::from_str("iv.csv", &csv, &ReadOptions::default()).unwrap();
/// let spec = PopulationSpec::log_normal(&[("k", 0.2), ("V", 12.0)], &[("k", 0.1)], ErrorModel::Proportional, &[0.05])?;
/// let opts = focei::FitOptions { covariance: focei::CovarianceStep::None, ..Default::default() };
/// let est = focei::fit(&model, &data, &spec, &opts)?;
/// assert!((est.parameters[1].value - 10.0).abs() < 0.5);
/// # Ok::<(), insilico_estimation::EstimationError>(())
/// ```
pub fn fit(
    model: &Model,
    data: &Dataset,
    spec: &PopulationSpec,
    options: &FitOptions,
) -> Result<Estimate, EstimationError> {
    let start = Instant::now();
    let (pop, mut psi) = setup(model, data, spec, options)?;
    let q = pop.layout.n_eta();
    let n = pop.subjects.len();
    let mut etas = vec![vec![0.0; q]; n];
    let mut cur = pop.evaluate(&psi, &etas);
    let mut evaluations = 1;
    if let Some((i, _)) = cur.iter().enumerate().find(|(_, r)| !r.ofv.is_finite()) {
        // Name the subject and the solver's reason at the typical values.
        let s = &pop.subjects[i];
        let p0 = pop.layout.unpack(&psi);
        let (p, _) = pop.layout.individual(&p0.theta, &vec![0.0; q]);
        if let Err(reason) = s.predict(&p, &pop.layout.eta_idx, &pop.settings) {
            return Err(EstimationError::InitialObjective { reason: format!("subject `{}`: {reason}", s.id) });
        }
        return Err(EstimationError::InitialObjective {
            reason: format!("subject `{}` has a non-finite objective (a zero or negative residual variance?)", s.id),
        });
    }
    let mut f = total(&cur);
    etas = cur.iter().map(|r| r.eta.clone()).collect();
    let (mut g, _, mut slopes) = pop.gradient_and_slopes(&psi, &etas);
    let mut gradients = 1;
    let d = psi.len();
    let mut hinv = DMatrix::<f64>::identity(d, d);
    let mut converged = false;
    let mut iterations = 0;
    while iterations < options.max_iterations {
        let gv = DVector::from_column_slice(&g);
        if gv.amax() < options.gradient_tolerance {
            converged = true;
            break;
        }
        iterations += 1;
        let mut dir = -(&hinv * &gv);
        let mut slope = gv.dot(&dir);
        if slope >= 0.0 || !slope.is_finite() {
            hinv = DMatrix::identity(d, d);
            dir = -gv.clone();
            slope = gv.dot(&dir);
        }
        let big = dir.amax();
        if big > 1.0 {
            dir *= 1.0 / big;
            slope /= big;
        }
        let mut alpha = 1.0;
        let mut next = None;
        for _ in 0..30 {
            let trial: Vec<f64> = psi.iter().zip(dir.iter()).map(|(p, s)| p + alpha * s).collect();
            // Warm starts predicted to first order by dη̂/dψ (implicit-function route).
            let starts: Vec<Vec<f64>> = match &slopes {
                Some(sl) => etas
                    .iter()
                    .zip(sl)
                    .map(|(e, m)| {
                        let dpsi = DVector::from_iterator(d, trial.iter().zip(&psi).map(|(a, b)| a - b));
                        let pred = DVector::from_column_slice(e) + m * dpsi;
                        if pred.iter().all(|v| v.is_finite()) && (&pred - DVector::from_column_slice(e)).amax() < 1.0 {
                            pred.as_slice().to_vec()
                        } else {
                            e.clone()
                        }
                    })
                    .collect(),
                None => etas.clone(),
            };
            let res = pop.evaluate(&trial, &starts);
            evaluations += 1;
            let ft = total(&res);
            if ft.is_finite() && ft <= f + 1e-4 * alpha * slope {
                next = Some((trial, res, ft));
                break;
            }
            // Quadratic interpolation of the step, kept in [0.1, 0.5]·α.
            let a_new = if ft.is_finite() {
                let denom = 2.0 * (ft - f - alpha * slope);
                if denom > 0.0 {
                    (-slope * alpha * alpha / denom).clamp(0.1 * alpha, 0.5 * alpha)
                } else {
                    0.5 * alpha
                }
            } else {
                0.1 * alpha
            };
            alpha = a_new;
        }
        let Some((new_psi, res, fnew)) = next else {
            // No decrease along the search direction: at the optimum to the
            // precision of the finite-difference gradient.
            converged = gv.amax() < 100.0 * options.gradient_tolerance;
            break;
        };
        let new_etas: Vec<Vec<f64>> = res.iter().map(|r| r.eta.clone()).collect();
        let (gnew, _, new_slopes) = pop.gradient_and_slopes(&new_psi, &new_etas);
        slopes = new_slopes;
        gradients += 1;
        let s = DVector::from_iterator(d, new_psi.iter().zip(&psi).map(|(a, b)| a - b));
        let y = DVector::from_iterator(d, gnew.iter().zip(&g).map(|(a, b)| a - b));
        let sy = s.dot(&y);
        if sy > 1e-12 * s.norm() * y.norm() {
            if iterations == 1 {
                hinv = DMatrix::identity(d, d) * (sy / y.dot(&y));
            }
            let rho = 1.0 / sy;
            let hy = &hinv * &y;
            let yhy = y.dot(&hy);
            // H⁺ = H − ρ(H y sᵀ + s yᵀ H) + (ρ² yᵀHy + ρ) s sᵀ
            hinv -= rho * (&hy * s.transpose() + &s * hy.transpose());
            hinv += (rho * rho * yhy + rho) * (&s * s.transpose());
        }
        let fold = f;
        psi = new_psi;
        cur = res;
        etas = new_etas;
        f = fnew;
        g = gnew;
        if (fold - f).abs() < options.objective_tolerance * (1.0 + f.abs()) && s.amax() < 1e-6 {
            converged = true;
            break;
        }
    }
    let wall_seconds = start.elapsed().as_secs_f64();
    let cov_start = Instant::now();
    let (covariance, covariance_error) = match options.covariance {
        CovarianceStep::None => (None, None),
        kind => match covariance_step(&pop, &psi, &etas, kind == CovarianceStep::Sandwich) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    let covariance_seconds = cov_start.elapsed().as_secs_f64();
    let counts = Counts { iterations, evaluations, gradients, solves: pop.solves.load(Ordering::Relaxed) };
    Ok(assemble(&pop, &psi, &cur, covariance, covariance_error, converged, counts, wall_seconds, covariance_seconds))
}

/// The natural-scale reported vector: θ, Ω entries, σ.
/// The sdtab rows of one subject at ψ with η̂.
fn subject_sdtab(pop: &Population, s: &SubjectData, pv: &PopValues, eta: &[f64]) -> Vec<SdtabRow> {
    let q = pop.layout.n_eta();
    let n = s.y.len();
    let nan_rows = || -> Vec<SdtabRow> {
        (0..n)
            .map(|j| SdtabRow {
                id: s.id.clone(),
                time: s.obs[j].time,
                dv: s.y[j],
                pred: f64::NAN,
                ipred: f64::NAN,
                iwres: f64::NAN,
                cwres: f64::NAN,
                eta: eta.to_vec(),
                line: s.lines[j],
            })
            .collect()
    };
    let e = DVector::from_column_slice(eta);
    let (Some((fi, jac)), Some((f0, _))) =
        (pop.predict_at(s, &pv.theta, &e), pop.predict_at(s, &pv.theta, &DVector::zeros(q)))
    else {
        return nan_rows();
    };
    let fmat = DMatrix::from_row_slice(n, q, &jac);
    let var: Vec<f64> = fi.iter().map(|&f| pop.layout.error.variance(f, &pv.sigma).0).collect();
    let mut cov = &fmat * pv.omega.matrix() * fmat.transpose();
    for j in 0..n {
        cov[(j, j)] += var[j];
    }
    let mean = DVector::from_iterator(n, (0..n).map(|j| fi[j] - (fmat.row(j) * &e)[0]));
    let resid = DVector::from_column_slice(&s.y) - mean;
    let cwres = match cov.cholesky() {
        Some(c) => c.l().solve_lower_triangular(&resid).unwrap_or_else(|| DVector::from_element(n, f64::NAN)),
        None => DVector::from_element(n, f64::NAN),
    };
    let back = |v: f64| if pop.layout.error.log_scale() { v.exp() } else { v };
    (0..n)
        .map(|j| SdtabRow {
            id: s.id.clone(),
            time: s.obs[j].time,
            dv: back(s.y[j]),
            pred: back(f0[j]),
            ipred: back(fi[j]),
            iwres: (s.y[j] - fi[j]) / var[j].sqrt(),
            cwres: cwres[j],
            eta: eta.to_vec(),
            line: s.lines[j],
        })
        .collect()
}

fn reported(layout: &Layout, psi: &[f64]) -> Vec<f64> {
    let pv = layout.unpack(psi);
    let mut out = pv.theta.clone();
    let om = pv.omega.matrix();
    let q = layout.n_eta();
    for i in 0..q {
        out.push(om[(i, i)]);
    }
    if layout.omega_structure == OmegaStructure::Block {
        for i in 0..q {
            for j in 0..i {
                out.push(om[(i, j)]);
            }
        }
    }
    out.extend(pv.sigma);
    out
}

fn reported_names(layout: &Layout) -> Vec<String> {
    let mut names = layout.theta_names.clone();
    let q = layout.n_eta();
    for i in 0..q {
        names.push(format!("omega2({})", layout.eta_names[i]));
    }
    if layout.omega_structure == OmegaStructure::Block {
        for i in 0..q {
            for j in 0..i {
                names.push(format!("omega({},{})", layout.eta_names[i], layout.eta_names[j]));
            }
        }
    }
    names.extend(layout.error.sigma_names().iter().map(|s| format!("sigma_{s}")));
    names
}

/// `∇²OFV` by central differences of the gradient (inner problems re-solved at each point).
fn hessian_from_gradients(pop: &Population, psi: &[f64], etas: &[Vec<f64>]) -> DMatrix<f64> {
    let d = psi.len();
    let mut hess = DMatrix::zeros(d, d);
    for k in 0..d {
        let h = 10.0 * pop.step(psi, k);
        let mut cols = Vec::with_capacity(2);
        for sign in [1.0, -1.0] {
            let mut p = psi.to_vec();
            p[k] += sign * h;
            let res = pop.evaluate(&p, etas);
            let e: Vec<Vec<f64>> = res.iter().map(|r| r.eta.clone()).collect();
            cols.push(pop.gradient(&p, &e).0);
        }
        for l in 0..d {
            hess[(l, k)] = (cols[0][l] - cols[1][l]) / (2.0 * h);
        }
    }
    0.5 * (&hess + hess.transpose())
}

/// `∇²OFV` by central second differences of OFV.
fn hessian_from_values(pop: &Population, psi: &[f64], etas: &[Vec<f64>]) -> DMatrix<f64> {
    let d = psi.len();
    // Second differences need a larger step than the gradient.
    let h: Vec<f64> = (0..d).map(|k| 10.0 * pop.step(psi, k)).collect();
    let mut points = vec![psi.to_vec()];
    for k in 0..d {
        for sk in [1.0, -1.0] {
            let mut p = psi.to_vec();
            p[k] += sk * h[k];
            points.push(p);
        }
    }
    for k in 0..d {
        for l in 0..k {
            for (sk, sl) in [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)] {
                let mut p = psi.to_vec();
                p[k] += sk * h[k];
                p[l] += sl * h[l];
                points.push(p);
            }
        }
    }
    let vals: Vec<f64> = pop.evaluate_many(&points, etas).iter().map(|v| v.iter().sum()).collect();
    let f0 = vals[0];
    let mut hess = DMatrix::zeros(d, d);
    for k in 0..d {
        hess[(k, k)] = (vals[1 + 2 * k] - 2.0 * f0 + vals[2 + 2 * k]) / (h[k] * h[k]);
    }
    let mut idx = 1 + 2 * d;
    for k in 0..d {
        for l in 0..k {
            let v = (vals[idx] - vals[idx + 1] - vals[idx + 2] + vals[idx + 3]) / (4.0 * h[k] * h[l]);
            hess[(k, l)] = v;
            hess[(l, k)] = v;
            idx += 4;
        }
    }
    hess
}

fn covariance_step(
    pop: &Population,
    psi: &[f64],
    etas: &[Vec<f64>],
    sandwich: bool,
) -> Result<Covariance, EstimationError> {
    let d = psi.len();
    let hess = if pop.opts.gradient == OuterGradient::ImplicitFunction {
        hessian_from_gradients(pop, psi, etas)
    } else {
        hessian_from_values(pop, psi, etas)
    };
    if hess.iter().any(|v| !v.is_finite()) {
        return Err(EstimationError::Covariance {
            reason: "not finite (an inner problem failed near the estimates)".into(),
        });
    }
    let eig = hess.clone().symmetric_eigen();
    let (lo, hi) = eig.eigenvalues.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &e| (lo.min(e), hi.max(e.abs())));
    if lo <= 0.0 {
        return Err(EstimationError::Covariance {
            reason: format!("not positive definite (smallest eigenvalue {lo:.3e}, largest {hi:.3e})"),
        });
    }
    let condition_number = hi / lo;
    let rinv = hess
        .clone()
        .cholesky()
        .map(|c| c.inverse())
        .ok_or_else(|| EstimationError::Covariance { reason: "singular".into() })?;
    let cov_h = 2.0 * &rinv;
    let cov_s = if sandwich {
        let (_, per) = pop.gradient(psi, etas);
        let mut s = DMatrix::zeros(d, d);
        for gi in &per {
            let v = DVector::from_column_slice(gi);
            s.ger(1.0, &v, &v, 1.0);
        }
        Some(&rinv * s * &rinv)
    } else {
        None
    };
    // Delta method to the natural scale.
    let r0 = reported(&pop.layout, psi);
    let m = r0.len();
    let mut jac = DMatrix::zeros(m, d);
    for k in 0..d {
        let e = 1e-6 * (1.0 + psi[k].abs());
        let mut a = psi.to_vec();
        let mut b = psi.to_vec();
        a[k] += e;
        b[k] -= e;
        let (ra, rb) = (reported(&pop.layout, &a), reported(&pop.layout, &b));
        for r in 0..m {
            jac[(r, k)] = (ra[r] - rb[r]) / (2.0 * e);
        }
    }
    let nat_h = &jac * &cov_h * jac.transpose();
    let se_hessian: Vec<f64> = (0..m).map(|r| nat_h[(r, r)].max(0.0).sqrt()).collect();
    let nat_s = cov_s.as_ref().map(|c| &jac * c * jac.transpose());
    let se_sandwich = nat_s.as_ref().map(|c| (0..m).map(|r| c[(r, r)].max(0.0).sqrt()).collect::<Vec<_>>());
    let (kind, nat, cov_psi) = match (&nat_s, &cov_s) {
        (Some(n), Some(c)) => ("sandwich", n.clone(), c.clone()),
        _ => ("hessian", nat_h.clone(), cov_h.clone()),
    };
    let se_psi = (0..d).map(|k| cov_psi[(k, k)].max(0.0).sqrt()).collect();
    let matrix: Vec<Vec<f64>> = (0..m).map(|r| (0..m).map(|c| nat[(r, c)]).collect()).collect();
    let correlation = (0..m)
        .map(|r| {
            (0..m)
                .map(|c| {
                    let den = (nat[(r, r)] * nat[(c, c)]).sqrt();
                    if den > 0.0 {
                        nat[(r, c)] / den
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    Ok(Covariance { kind, matrix, correlation, se_hessian, se_sandwich, se_psi, condition_number })
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    pop: &Population,
    psi: &[f64],
    inner: &[Inner],
    covariance: Option<Covariance>,
    covariance_error: Option<String>,
    converged: bool,
    counts: Counts,
    wall_seconds: f64,
    covariance_seconds: f64,
) -> Estimate {
    let layout = &pop.layout;
    let values = reported(layout, psi);
    let names = reported_names(layout);
    let se: Vec<Option<f64>> = match &covariance {
        Some(c) => c.se_sandwich.clone().unwrap_or_else(|| c.se_hessian.clone()).into_iter().map(Some).collect(),
        None => vec![None; values.len()],
    };
    let parameters = names
        .into_iter()
        .zip(values)
        .zip(se)
        .map(|((name, value), se)| Estimated { name, value, se, rse_percent: se.map(|s| 100.0 * s / value.abs()) })
        .collect();
    let pv = layout.unpack(psi);
    let om = pv.omega.matrix();
    let q = layout.n_eta();
    let n = inner.len();
    let etas = (0..q)
        .map(|k| {
            let w2 = om[(k, k)];
            let mean = inner.iter().map(|r| r.eta[k]).sum::<f64>() / n as f64;
            let var = inner.iter().map(|r| (r.eta[k] - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
            EtaVariance {
                name: layout.eta_names[k].clone(),
                omega2: w2,
                sd: w2.sqrt(),
                cv_percent: layout.eta_lognormal[k].then(|| 100.0 * (w2.exp() - 1.0).sqrt()),
                shrinkage_percent: 100.0 * (1.0 - var.sqrt() / w2.sqrt()),
            }
        })
        .collect();
    let subjects: Vec<SubjectEstimate> = pop
        .subjects
        .iter()
        .zip(inner)
        .map(|(s, r)| SubjectEstimate { id: s.id.clone(), eta: r.eta.clone(), converged: r.converged, ofv: r.ofv })
        .collect();
    let nonconverged = subjects.iter().filter(|s| !s.converged).map(|s| s.id.clone()).collect();
    let n_observations: usize = pop.subjects.iter().map(|s| s.y.len()).sum();
    let ofv = total(inner);
    let sdtab: Vec<SdtabRow> = pop
        .subjects
        .par_iter()
        .zip(inner.par_iter())
        .map(|(s, r)| subject_sdtab(pop, s, &pv, &r.eta))
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .collect();
    let iw: Vec<f64> = sdtab.iter().map(|r| r.iwres).filter(|v| v.is_finite()).collect();
    let m = iw.len().max(2) as f64;
    let mean = iw.iter().sum::<f64>() / m;
    let sd = (iw.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0)).sqrt();
    Estimate {
        method: "focei",
        ofv,
        ofv_with_constant: ofv + n_observations as f64 * (2.0 * std::f64::consts::PI).ln(),
        n_observations,
        n_subjects: n,
        parameters,
        n_theta: layout.n_theta(),
        omega: (0..q).map(|i| (0..q).map(|j| om[(i, j)]).collect()).collect(),
        etas,
        subjects,
        nonconverged,
        converged,
        iterations: counts.iterations,
        evaluations: counts.evaluations,
        gradients: counts.gradients,
        ode_solves: counts.solves,
        wall_seconds,
        covariance_seconds,
        covariance,
        covariance_error,
        sdtab,
        eps_shrinkage_percent: 100.0 * (1.0 - sd),
        eta_names: layout.eta_names.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ErrorModel, Omega, RandomEffect};
    use insilico_solvers::data::ReadOptions;

    const THEOPH: &str = include_str!("../../examples/data/theoph.csv");

    /// Theophylline without the pre-dose samples at TIME 0 (their prediction
    /// is 0: no likelihood under the proportional and exponential models).
    fn theoph(error: ErrorModel, sigma: &[f64], block: bool) -> (Population, Vec<f64>) {
        let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
        let text: String = THEOPH
            .lines()
            .filter(|l| !l.contains(",0,0,") || l.split(',').nth(1).is_none_or(|t| t != "0"))
            .map(|l| format!("{l}\n"))
            .collect();
        let data = Dataset::from_str("theoph.csv", &text, &ReadOptions::default()).unwrap();
        let mut spec = PopulationSpec::log_normal(
            &[("ka", 1.6), ("CL", 2.7), ("V", 31.0)],
            &[("ka", 0.4), ("CL", 0.07), ("V", 0.02)],
            error,
            sigma,
        )
        .unwrap();
        if block {
            spec.omega =
                Omega::block(&[vec![0.4, 0.02, 0.01], vec![0.02, 0.07, 0.005], vec![0.01, 0.005, 0.02]]).unwrap();
        }
        let opts = FitOptions {
            ode: Options { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 },
            inner_tolerance: 1e-11,
            ..FitOptions::default()
        };
        setup(&model, &data, &spec, &opts).unwrap()
    }

    /// The exact η-gradient of the inner objective (forward sensitivities
    /// chained through the log-normal parametrisation and the error model)
    /// against central differences of the objective, for every error model.
    #[test]
    fn inner_gradient_matches_finite_differences() {
        for (error, sigma) in [
            (ErrorModel::Additive, vec![0.7]),
            (ErrorModel::Proportional, vec![0.15]),
            (ErrorModel::Combined2, vec![0.3, 0.1]),
            (ErrorModel::Combined1, vec![0.3, 0.1]),
            (ErrorModel::Exponential, vec![0.2]),
        ] {
            let (pop, psi) = theoph(error, &sigma, false);
            let pv = pop.layout.unpack(&psi);
            let s = &pop.subjects[1];
            assert_eq!(s.y.len(), 10);
            let eta = DVector::from_column_slice(&[0.2, -0.1, 0.05]);
            let p = pop.point(s, &pv, &eta).unwrap();
            for k in 0..3 {
                let h = 1e-6;
                let mut a = eta.clone();
                a[k] += h;
                let mut b = eta.clone();
                b[k] -= h;
                let fd = (pop.point(s, &pv, &a).unwrap().o - pop.point(s, &pv, &b).unwrap().o) / (2.0 * h);
                let rel = (p.g[k] - fd).abs() / fd.abs().max(1.0);
                assert!(rel < 1e-5, "{error:?} dO/deta_{k}: exact {} vs fd {fd}", p.g[k]);
            }
        }
    }

    /// The error models' dV/df against central differences.
    #[test]
    fn variance_derivatives_match_finite_differences() {
        for (e, s) in [
            (ErrorModel::Additive, vec![0.5]),
            (ErrorModel::Proportional, vec![0.2]),
            (ErrorModel::Combined2, vec![0.5, 0.2]),
            (ErrorModel::Combined1, vec![0.5, 0.2]),
            (ErrorModel::Exponential, vec![0.3]),
        ] {
            for f in [0.3, 2.0, 7.5] {
                let h = 1e-6;
                let fd = (e.variance(f + h, &s).0 - e.variance(f - h, &s).0) / (2.0 * h);
                assert!((e.variance(f, &s).1 - fd).abs() < 1e-7 * fd.abs().max(1.0), "{e:?} at {f}");
            }
        }
    }

    /// The implicit-function gradient of each subject's OFV against central
    /// differences of the re-optimised OFV, for a diagonal and a block Ω and
    /// two error models. Also the cost of each route in ODE solves.
    #[test]
    fn implicit_function_gradient_matches_finite_differences() {
        for (error, sigma, block) in
            [(ErrorModel::Additive, vec![0.7], false), (ErrorModel::Combined2, vec![0.4, 0.1], true)]
        {
            let (pop, psi) = theoph(error, &sigma, block);
            let etas = vec![vec![0.0; 3]; pop.subjects.len()];
            let res = pop.evaluate(&psi, &etas);
            let etas: Vec<Vec<f64>> = res.iter().map(|r| r.eta.clone()).collect();
            assert!(res.iter().all(|r| r.converged));
            let before = pop.solves.load(Ordering::Relaxed);
            let (g_ift, per_ift) = pop.gradient(&psi, &etas);
            let mid = pop.solves.load(Ordering::Relaxed);
            let (g_fd, per_fd) = pop.fd_gradient(&psi, &etas);
            let after = pop.solves.load(Ordering::Relaxed);
            println!("{error:?} block {block}: solves ift {} fd {}", mid - before, after - mid);
            for k in 0..psi.len() {
                let scale = g_fd[k].abs().max(1.0);
                assert!((g_ift[k] - g_fd[k]).abs() < 2e-3 * scale, "component {k}: ift {} fd {}", g_ift[k], g_fd[k]);
            }
            for (a, b) in per_ift.iter().zip(&per_fd) {
                for k in 0..psi.len() {
                    assert!((a[k] - b[k]).abs() < 2e-3 * b[k].abs().max(1.0));
                }
            }
            assert!(mid - before < after - mid, "the implicit route should need fewer solves");
        }
    }

    /// A declared `random:` effect used in the model's expressions gives the
    /// same objective as the log-normal effect on the parameter it scales.
    #[test]
    fn declared_random_effect_equals_log_normal() {
        let declared = insilico_model::Model::parse(
            "parameters: ka in (0, inf), CL in (0, inf), V in (0, inf)\nrandom: ETA_CL\nstates: depot, central\n\
             flux depot -> central = ka * depot\nflux central -> out = CL * exp(ETA_CL) / V * central\noutput: cp = central / V",
            "declared",
        )
        .unwrap();
        let plain = insilico_model::Model::parse(
            "parameters: ka in (0, inf), CL in (0, inf), V in (0, inf)\nstates: depot, central\n\
             flux depot -> central = ka * depot\nflux central -> out = CL / V * central\noutput: cp = central / V",
            "plain",
        )
        .unwrap();
        let data = Dataset::from_str("theoph.csv", THEOPH, &ReadOptions::default()).unwrap();
        let mut spec = PopulationSpec::log_normal(
            &[("ka", 1.6), ("CL", 2.7), ("V", 31.0)],
            &[("CL", 0.07)],
            ErrorModel::Additive,
            &[0.7],
        )
        .unwrap();
        let opts =
            FitOptions { ode: Options { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 }, ..FitOptions::default() };
        let (pa, psi_a) = setup(&plain, &data, &spec, &opts).unwrap();
        spec.random = vec![RandomEffect::declared("ETA_CL")];
        let (pb, psi_b) = setup(&declared, &data, &spec, &opts).unwrap();
        let z = vec![vec![0.0]; 12];
        let (a, b) = (total(&pa.evaluate(&psi_a, &z)), total(&pb.evaluate(&psi_b, &z)));
        assert!((a - b).abs() < 1e-6 * a.abs(), "{a} vs {b}");
    }
}
