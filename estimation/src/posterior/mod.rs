//! Individual posteriors at a fixed population: what a model-informed
//! precision-dosing tool does with a NONMEM-style model (mapbayr, posologyr,
//! PKPDmap).
//!
//! # The objective
//! For one subject, with the population (θ, Ω, σ and the error model of
//! each observed output) held fixed, the posterior of the random effects is
//! `p(η | y) ∝ exp(−½·O(η))` with NONMEM's POSTHOC objective
//!
//! ```text
//! O(η) = Σ_j [(y_j − f_j)²/V_j + ln V_j] + Σ_{j censored} −2 ln Φ((LLOQ_j − f_j)/√V_j) + ηᵀΩ⁻¹η
//! ```
//!
//! (no `ln(2π)` or `ln det Ω` constants; on the log scale for the exponential
//! error model; censored observations by Beal's M3). [`SubjectPosterior::ofv`]
//! is `O(η̂)`.
//!
//! * **MAP** ([`Posterior::map_subject`]): Levenberg–Marquardt on `O` with
//!   its exact gradient (forward sensitivities of the ODE solution, the
//!   machinery of FOCE-I's inner problem) and the expected (Fisher)
//!   curvature, from η = 0, then (if that start does not converge, or
//!   always with [`PosteriorOptions::multistart`]) from ±½ω along each axis.
//! * **Laplace covariance** of η: the inverse of half the Hessian of `O` at
//!   the MAP. With [`LaplaceHessian::Observed`] (the default) it is the
//!   **full (observed) Hessian**, central differences of the exact gradient
//!   (`2·dim η` extra ODE solves); with [`LaplaceHessian::Expected`] the
//!   expected (Gauss–Newton / Fisher) one, `Ω⁻¹ + Σ_j (1/V_j + ½(V'_j/V_j)²) F_jᵀF_j`,
//!   free at the MAP. They coincide when the predictions are linear in η
//!   and the error additive.
//! * **Sampling** ([`Posterior::sample`]): importance resampling from the
//!   Laplace approximation (multivariate t or normal proposal), with its
//!   effective sample size, and random-walk Metropolis when that ESS is too
//!   low ([`SamplingMethod::Auto`]).
//! * **Sequential updating** ([`Posterior::sequential`]): prospective
//!   evaluation (tdmore's `proseval`), with optional down-weighting of old
//!   observations.
//!
//! # Example
//! mapbayr's README example (two-compartment infusion, combined error): the
//! MAP is η = (0.3872104, 0.1569604).
//! ```
//! use insilico_estimation::posterior::{Posterior, PosteriorOptions};
//! use insilico_estimation::{ErrorModel, PopulationSpec};
//! use insilico_solvers::data::{Dataset, ReadOptions};
//! let model = insilico_model::Model::parse(
//!     "parameters: CL in (0, inf), V1 in (0, inf), Q in (0, inf), V2 in (0, inf)\ncovariates: BW = 70\n\
//!      states: central, peripheral\ncp = central / V1\nflux central -> out = CL * (BW / 70)^1.2 * cp\n\
//!      flux central -> peripheral = Q * (cp - peripheral / V2)\noutput: cp", "mapbayr")?;
//! let data = Dataset::from_str("mapbayr.csv",
//!     "ID,TIME,EVID,CMT,AMT,RATE,DV,BW\n1,0,1,1,100,20,.,90\n1,6,0,1,0,0,3.9,90\n1,15,0,1,0,0,1.1,90\n",
//!     &ReadOptions::default()).unwrap();
//! let spec = PopulationSpec::log_normal(&[("CL", 0.9), ("V1", 10.0), ("Q", 1.0), ("V2", 10.0)],
//!     &[("CL", 0.3), ("V1", 0.3)], ErrorModel::Combined2, &[0.1f64.sqrt(), 0.05f64.sqrt()])?;
//! let post = Posterior::new(&model, &data, &spec, &PosteriorOptions::default())?;
//! assert_eq!(post.eta_names(), ["ETA_CL", "ETA_V1"]);
//! let map = post.map_subject(0);
//! assert!((map.eta[0] - 0.3872104).abs() < 1e-4 && (map.eta[1] - 0.1569604).abs() < 1e-4);
//! # Ok::<(), insilico_estimation::EstimationError>(())
//! ```

mod sampling;
mod sequential;

use std::sync::atomic::{AtomicUsize, Ordering};

use insilico_model::Model;
use insilico_solvers::data::Dataset;
use insilico_solvers::{Method, Options};
use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;

use crate::conditional::{Conditional, Point};
use crate::error::EstimationError;
use crate::population::{Layout, PopValues, SolveSettings, SubjectData};
use crate::spec::{EtaOn, ObservedOutput, PopulationSpec};

pub use sequential::SequentialStep;

/// How [`Posterior::sample`] draws from the posterior.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingMethod {
    /// From the Laplace approximation `N(η̂, Σ)` itself.
    Laplace,
    /// Importance resampling from the Laplace proposal.
    Sir,
    /// Random-walk Metropolis with the Laplace covariance as proposal scale.
    Mcmc,
    /// SIR, then MCMC when SIR's effective sample size is below
    /// [`PosteriorOptions::ess_min`].
    Auto,
}

impl SamplingMethod {
    /// Parses `laplace`, `sir`, `mcmc`, `auto` (any case).
    ///
    /// ```
    /// use insilico_estimation::posterior::SamplingMethod;
    /// assert_eq!(SamplingMethod::parse("SIR"), Some(SamplingMethod::Sir));
    /// assert_eq!(SamplingMethod::parse("nuts"), None);
    /// ```
    pub fn parse(s: &str) -> Option<SamplingMethod> {
        match s.to_ascii_lowercase().as_str() {
            "laplace" => Some(SamplingMethod::Laplace),
            "sir" => Some(SamplingMethod::Sir),
            "mcmc" => Some(SamplingMethod::Mcmc),
            "auto" => Some(SamplingMethod::Auto),
            _ => None,
        }
    }
    /// Canonical name (`laplace`, `sir`, `mcmc`, `auto`).
    pub fn name(&self) -> &'static str {
        match self {
            SamplingMethod::Laplace => "laplace",
            SamplingMethod::Sir => "sir",
            SamplingMethod::Mcmc => "mcmc",
            SamplingMethod::Auto => "auto",
        }
    }
}

/// Which Hessian of the objective gives the Laplace covariance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaplaceHessian {
    /// The full (observed) Hessian: central differences of the exact gradient.
    Observed,
    /// The expected (Gauss–Newton / Fisher) Hessian, free at the MAP.
    Expected,
}

/// The proposal of importance resampling, centred at η̂ with the Laplace covariance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Proposal {
    /// Multivariate normal.
    Normal,
    /// Multivariate Student t with this many degrees of freedom (heavier tails).
    StudentT {
        /// Degrees of freedom (a whole number ≥ 1).
        dof: u32,
    },
}

/// Knobs of [`Posterior`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosteriorOptions {
    /// How [`Posterior::sample`] draws (default [`SamplingMethod::Auto`]).
    pub method: SamplingMethod,
    /// Equal-weight draws per subject (default 1000).
    pub draws: usize,
    /// Seed; subject `i` uses stream `i` of ChaCha8 seeded with it (default 20261207).
    pub seed: u64,
    /// Auto: MCMC when SIR's effective sample size is below this (default 500).
    pub ess_min: f64,
    /// Sequential updating: observation `j` seen at `t_j` counts with weight
    /// `0.5^((t_now − t_j)/half_life)` (default none: all count fully).
    pub half_life: Option<f64>,
    /// Which Hessian gives the Laplace covariance (default observed).
    pub hessian: LaplaceHessian,
    /// Run every start of the MAP search and keep the best (default: the
    /// ±½ω starts only when η = 0 does not converge).
    pub multistart: bool,
    /// SIR proposal (default Student t with 4 degrees of freedom).
    pub proposal: Proposal,
    /// SIR: proposals per retained draw (default 5).
    pub sir_factor: usize,
    /// MCMC: iterations discarded at the start (default 500).
    pub burn_in: usize,
    /// MCMC: keep every `thin`-th iteration (default 5).
    pub thin: usize,
    /// ODE method (default Tsit45; BDF for stiff models).
    pub ode_method: Method,
    /// ODE tolerances (default rtol 1e-6, atol 1e-9, as FOCE-I; on
    /// `pk-2cmt-oral` the MAP moves by < 1e-6 from rtol 1e-8).
    pub ode: Options,
    /// Maximum Levenberg–Marquardt iterations per start (default 100).
    pub max_iterations: usize,
    /// MAP convergence: the largest |Δη| of the last step (default 1e-8).
    pub tolerance: f64,
}

impl Default for PosteriorOptions {
    fn default() -> Self {
        PosteriorOptions {
            method: SamplingMethod::Auto,
            draws: 1000,
            seed: 20261207,
            ess_min: 500.0,
            half_life: None,
            hessian: LaplaceHessian::Observed,
            multistart: false,
            proposal: Proposal::StudentT { dof: 4 },
            sir_factor: 5,
            burn_in: 500,
            thin: 5,
            ode_method: Method::Tsit45,
            ode: Options { rtol: 1e-6, atol: 1e-9, max_steps: 1_000_000 },
            max_iterations: 100,
            tolerance: 1e-8,
        }
    }
}

/// One observation with its population and individual predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    /// Observation time.
    pub time: f64,
    /// The observed output's name.
    pub output: String,
    /// The observation (for a censored one: its limit of quantification).
    pub dv: f64,
    /// Population prediction (η = 0).
    pub pred: f64,
    /// Individual prediction (η = η̂).
    pub ipred: f64,
    /// Below the limit of quantification (M3).
    pub censored: bool,
    /// Dataset line of the record.
    pub line: usize,
}

/// One subject's MAP and Laplace approximation.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectPosterior {
    /// Subject ID.
    pub id: String,
    /// η̂ (MAP), in the order of [`Posterior::eta_names`].
    pub eta: Vec<f64>,
    /// Laplace covariance of η, `q × q` row-major: the inverse of half the
    /// Hessian of the objective at η̂ (see [`LaplaceHessian`]).
    pub covariance: Vec<f64>,
    /// Square roots of the covariance's diagonal.
    pub sd: Vec<f64>,
    /// The objective `O(η̂)` (NONMEM's POSTHOC objective, no constants).
    pub ofv: f64,
    /// Whether the MAP search converged.
    pub converged: bool,
    /// The model's full parameter vector at η̂.
    pub parameters: Vec<f64>,
    /// Number of observations used.
    pub n_obs: usize,
    /// Per observation: PRED, IPRED.
    pub predictions: Vec<PredictionRow>,
    /// What the analyst should know (no observations, an observation before any dose, a fallback).
    pub warnings: Vec<String>,
}

/// Posterior draws of η for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Draws {
    /// Equal-weight draws, each in the order of [`Posterior::eta_names`]
    /// (empty from SIR when no proposal has a finite objective: the model
    /// cannot be solved near η̂; `ess` is then 0).
    pub eta: Vec<Vec<f64>>,
    /// The method that produced them (SIR or MCMC when the option was Auto).
    pub method: SamplingMethod,
    /// Effective sample size: of the SIR importance weights
    /// `(Σw)²/Σw²` over the proposals, or of the MCMC chain (the smallest
    /// over the components, by Geyer's initial positive sequence).
    pub ess: Option<f64>,
    /// MCMC acceptance rate.
    pub acceptance: Option<f64>,
}

/// A model, a dataset and a fixed population, ready for individual posteriors.
#[derive(Debug)]
pub struct Posterior {
    layout: Layout,
    subjects: Vec<SubjectData>,
    settings: SolveSettings,
    opts: PosteriorOptions,
    pop: PopValues,
    eta_names: Vec<String>,
    parameter_names: Vec<String>,
    solves: AtomicUsize,
}

impl Posterior {
    /// Binds `spec` (θ taken as the fixed typical values, Ω, σ) to `model`
    /// and every subject of `data`.
    ///
    /// Errors: those of the spec (unknown parameters or outputs, σ counts,
    /// a non-positive-definite Ω), of the dataset (an observation that maps
    /// to no observed output, naming subject and line), and of the options.
    /// A subject without observations is not an error: its posterior is
    /// the prior, with a warning.
    pub fn new(
        model: &Model,
        data: &Dataset,
        spec: &PopulationSpec,
        opts: &PosteriorOptions,
    ) -> Result<Posterior, EstimationError> {
        let chol = spec.omega.cholesky();
        if let Some(k) = (0..chol.nrows()).find(|&k| !(chol[(k, k)].is_finite() && chol[(k, k)] > 0.0)) {
            return Err(EstimationError::OmegaNotPositiveDefinite {
                reason: format!("pivot {} of its Cholesky factor is {}", k + 1, chol[(k, k)]),
            });
        }
        let bad = |m: String| Err(EstimationError::Spec(m));
        if opts.draws == 0 {
            return bad("draws must be at least 1".into());
        }
        if let Some(h) = opts.half_life {
            if !(h.is_finite() && h > 0.0) {
                return bad(format!("half_life = {h} must be positive"));
            }
        }
        if !(opts.ess_min.is_finite() && opts.ess_min >= 0.0) {
            return bad(format!("ess_min = {} must be a number ≥ 0", opts.ess_min));
        }
        if opts.sir_factor == 0 || opts.thin == 0 {
            return bad("sir_factor and thin must be at least 1".into());
        }
        if let Proposal::StudentT { dof: 0 } = opts.proposal {
            return bad("the Student t proposal needs at least 1 degree of freedom".into());
        }
        let layout = Layout::new(model, spec)?;
        let subjects = SubjectData::build_all(model, data, &layout, spec, true)?;
        let theta = spec.theta.iter().map(|(_, v)| *v).collect();
        let pop = PopValues {
            theta,
            omega: spec.omega.clone(),
            omega_inv: spec.omega.inverse(),
            sigma: layout.sigma0.clone(),
        };
        let eta_names = spec
            .random
            .iter()
            .map(|r| match &r.on {
                EtaOn::LogNormal(p) => format!("ETA_{p}"),
                EtaOn::Declared(n) => n.clone(),
            })
            .collect();
        Ok(Posterior {
            layout,
            subjects,
            settings: SolveSettings { method: opts.ode_method, options: opts.ode },
            opts: *opts,
            pop,
            eta_names,
            parameter_names: model.scalar_param_names().iter().map(|s| s.to_string()).collect(),
            solves: AtomicUsize::new(0),
        })
    }

    /// Names of the random effects: `ETA_<param>` for a log-normal effect on
    /// a parameter, the declared name for a `random:` parameter.
    pub fn eta_names(&self) -> &[String] {
        &self.eta_names
    }

    /// The subjects' IDs, in dataset order.
    pub fn subject_ids(&self) -> Vec<String> {
        self.subjects.iter().map(|s| s.id.clone()).collect()
    }

    /// Names of the model's scalar parameters: the leading entries of
    /// [`Posterior::individual_parameters`] (network weights follow).
    pub fn parameter_names(&self) -> &[String] {
        &self.parameter_names
    }

    /// The observed outputs with their error models and σ (one entry
    /// without CMT/DVID for a single-output spec).
    pub fn observed_outputs(&self) -> Vec<ObservedOutput> {
        self.layout
            .outputs
            .iter()
            .map(|o| ObservedOutput {
                name: o.name.clone(),
                cmt: o.cmt,
                dvid: o.dvid,
                error: o.error,
                sigma: self.pop.sigma[o.sigma.clone()].to_vec(),
                lloq: o.lloq,
            })
            .collect()
    }

    /// The options in force.
    pub fn options(&self) -> &PosteriorOptions {
        &self.opts
    }

    /// ODE solves so far (MAP, Laplace, sampling), over all subjects.
    pub fn ode_solves(&self) -> usize {
        self.solves.load(Ordering::Relaxed)
    }

    /// The model's full parameter vector of subject `index` at random effects `eta`.
    /// (Covariates enter through the subject's model binding, not this vector.)
    pub fn individual_parameters(&self, _index: usize, eta: &[f64]) -> Vec<f64> {
        self.layout.individual(&self.pop.theta, eta).0
    }

    /// Subject `index`'s predictions (natural scale) of its observations at
    /// random effects `eta`, in the order of [`SubjectPosterior::predictions`],
    /// or why the model could not be solved.
    pub fn predictions_at(&self, index: usize, eta: &[f64]) -> Result<Vec<f64>, EstimationError> {
        let s = &self.subjects[index];
        self.solves.fetch_add(1, Ordering::Relaxed);
        let (p, _) = self.layout.individual(&self.pop.theta, eta);
        s.predict_natural(&p, &[], &self.settings).map(|v| v.predictions).map_err(|reason| {
            EstimationError::Prediction { subject: s.id.clone(), reason: format!("{reason} (at η = {eta:?})") }
        })
    }

    pub(crate) fn cond(&self) -> Conditional<'_> {
        Conditional {
            layout: &self.layout,
            settings: &self.settings,
            solves: &self.solves,
            max_iterations: self.opts.max_iterations,
            tolerance: self.opts.tolerance,
            secant: true,
        }
    }

    /// The objective `O(η)` of subject `index` (NONMEM's POSTHOC objective;
    /// `+∞` where the model cannot be solved). `exp(−½·O)` is the
    /// unnormalised posterior density.
    pub fn objective(&self, index: usize, eta: &[f64]) -> f64 {
        self.cond().value(&self.subjects[index], &self.pop, eta, None).unwrap_or(f64::INFINITY)
    }

    /// `O(η)` and its exact gradient (forward sensitivities), or `None`
    /// where the model cannot be solved.
    pub fn objective_gradient(&self, index: usize, eta: &[f64]) -> Option<(f64, Vec<f64>)> {
        let p = self.cond().point(&self.subjects[index], &self.pop, &DVector::from_column_slice(eta), None)?;
        Some((p.o, p.g.as_slice().to_vec()))
    }

    /// MAP and Laplace covariance of subject `index` (panics if `index` is
    /// not below the number of subjects).
    pub fn map_subject(&self, index: usize) -> SubjectPosterior {
        let s = &self.subjects[index];
        let q = self.layout.n_eta();
        // The first point of the MAP search, η = 0, gives PRED too.
        let zero = vec![0.0; q];
        let first = if s.obs.is_empty() {
            None
        } else {
            self.cond().point(s, &self.pop, &DVector::from_column_slice(&zero), None)
        };
        let pred = first.as_ref().map(|p| p.f.clone());
        let res = self.map_weighted(s, &zero, first, None);
        let mut warnings = s.warnings.clone();
        warnings.extend(res.warnings);
        let predictions = self.prediction_rows(s, &res.eta, pred.as_deref(), res.f.as_deref());
        SubjectPosterior {
            id: s.id.clone(),
            parameters: self.individual_parameters(index, &res.eta),
            sd: (0..q).map(|k| res.covariance[k * q + k].sqrt()).collect(),
            eta: res.eta,
            covariance: res.covariance,
            ofv: res.ofv,
            converged: res.converged,
            n_obs: s.obs.len(),
            predictions,
            warnings,
        }
    }

    /// [`Posterior::map_subject`] for every subject, in parallel; the result is
    /// in subject order and does not depend on the thread count.
    pub fn map_all(&self) -> Vec<SubjectPosterior> {
        (0..self.subjects.len()).into_par_iter().map(|i| self.map_subject(i)).collect()
    }

    /// The MAP with observation weights (`None`: all 1) from `warm`.
    /// `first` is the objective at `warm`, when already evaluated.
    pub(crate) fn map_weighted(
        &self,
        s: &SubjectData,
        warm: &[f64],
        first: Option<Point>,
        weights: Option<&[f64]>,
    ) -> MapResult {
        let q = self.layout.n_eta();
        let om = self.pop.omega.matrix();
        let prior = |warnings: Vec<String>, converged: bool| MapResult {
            eta: vec![0.0; q],
            covariance: om.transpose().as_slice().to_vec(),
            ofv: 0.0,
            converged,
            f: None,
            warnings,
        };
        let used = weights.map_or(s.obs.len(), |w| w.iter().filter(|v| **v > 0.0).count());
        if used == 0 {
            let w = if s.obs.is_empty() {
                format!("subject `{}` has no observations: its posterior is the prior", s.id)
            } else {
                format!("subject `{}`: no observation used yet: the posterior is the prior", s.id)
            };
            return prior(vec![w], true);
        }
        let cond = self.cond();
        let Some((point, converged)) = cond.multistart_from(s, &self.pop, warm, first, weights, self.opts.multistart)
        else {
            return MapResult {
                ofv: f64::INFINITY,
                ..prior(
                    vec![format!(
                        "subject `{}`: the objective could not be evaluated at any start of the MAP search (the ODE solve failed or a residual variance is not positive); η = 0 and the prior covariance are reported",
                        s.id
                    )],
                    false,
                )
            };
        };
        let mut warnings = Vec::new();
        if !converged {
            warnings.push(format!(
                "subject `{}`: the MAP search did not converge in {} iterations",
                s.id, self.opts.max_iterations
            ));
        }
        let covariance = self.laplace(s, &point, weights, &mut warnings);
        MapResult {
            eta: point.eta.as_slice().to_vec(),
            covariance,
            ofv: point.o,
            converged,
            f: Some(point.f),
            warnings,
        }
    }

    /// The Laplace covariance `(½H)⁻¹` at the MAP `point`, row-major.
    fn laplace(&self, s: &SubjectData, point: &Point, weights: Option<&[f64]>, warnings: &mut Vec<String>) -> Vec<f64> {
        let q = self.layout.n_eta();
        let expected = point.h.clone();
        let h = match self.opts.hessian {
            LaplaceHessian::Expected => expected.clone(),
            LaplaceHessian::Observed => self.observed_hessian(s, &point.eta, weights).unwrap_or_else(|| {
                warnings.push(format!(
                    "subject `{}`: the observed Hessian could not be evaluated near η̂; the expected one is used",
                    s.id
                ));
                expected.clone()
            }),
        };
        let inv = match (0.5 * &h).cholesky() {
            Some(c) => c.inverse(),
            None => {
                warnings.push(format!(
                    "subject `{}`: the observed Hessian is not positive definite at η̂; the expected (Gauss–Newton) one gives the Laplace covariance",
                    s.id
                ));
                (0.5 * &expected).cholesky().map_or_else(|| self.pop.omega.matrix(), |c| c.inverse())
            }
        };
        let mut out = Vec::with_capacity(q * q);
        for i in 0..q {
            for j in 0..q {
                out.push(0.5 * (inv[(i, j)] + inv[(j, i)]));
            }
        }
        out
    }

    /// The full Hessian of O at η by central differences of the exact gradient.
    fn observed_hessian(&self, s: &SubjectData, eta: &DVector<f64>, weights: Option<&[f64]>) -> Option<DMatrix<f64>> {
        let q = eta.len();
        let cond = self.cond();
        let mut h = DMatrix::zeros(q, q);
        for m in 0..q {
            // Step ~ ε^(1/3) for central differences of an exact gradient.
            let step = 1e-4 * (1.0 + eta[m].abs());
            let mut ep = eta.clone();
            ep[m] += step;
            let mut em = eta.clone();
            em[m] -= step;
            let gp = cond.point(s, &self.pop, &ep, weights)?.g;
            let gm = cond.point(s, &self.pop, &em, weights)?.g;
            h.set_column(m, &((gp - gm) / (2.0 * step)));
        }
        Some(0.5 * (&h + h.transpose()))
    }

    /// PRED and IPRED rows (natural scale) of subject `s` at η̂; `f0` and `f`
    /// are the comparison-scale predictions at η = 0 and η̂ when already computed.
    fn prediction_rows(
        &self,
        s: &SubjectData,
        eta: &[f64],
        f0: Option<&[f64]>,
        f: Option<&[f64]>,
    ) -> Vec<PredictionRow> {
        if s.obs.is_empty() {
            return Vec::new();
        }
        let natural = |eta: &[f64]| -> Vec<f64> {
            self.solves.fetch_add(1, Ordering::Relaxed);
            let (p, _) = self.layout.individual(&self.pop.theta, eta);
            s.predict_natural(&p, &[], &self.settings).map_or_else(|_| vec![f64::NAN; s.obs.len()], |v| v.predictions)
        };
        let back = |f: &[f64]| -> Vec<f64> {
            f.iter()
                .enumerate()
                .map(|(j, &v)| if self.layout.outputs[s.kind[j]].error.log_scale() { v.exp() } else { v })
                .collect()
        };
        let pred = f0.map_or_else(|| natural(&vec![0.0; eta.len()]), back);
        let ipred = f.map_or_else(|| natural(eta), back);
        (0..s.obs.len())
            .map(|j| PredictionRow {
                time: s.obs[j].time,
                output: self.layout.outputs[s.kind[j]].name.clone(),
                dv: s.dv[j],
                pred: pred[j],
                ipred: ipred[j],
                censored: s.cens[j],
                line: s.lines[j],
            })
            .collect()
    }
}

/// The MAP (or the prior, when nothing is observed) with its covariance.
pub(crate) struct MapResult {
    eta: Vec<f64>,
    covariance: Vec<f64>,
    ofv: f64,
    converged: bool,
    /// Comparison-scale predictions at η̂ (none for the prior).
    f: Option<Vec<f64>>,
    warnings: Vec<String>,
}
