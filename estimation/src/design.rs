//! Population design: the Fisher information matrix of a population model
//! under the first-order (FO) approximation, design criteria, and the
//! optimisation of sampling times — what PopED and PFIM compute, for any
//! model written in the model language.
//!
//! # The FO Fisher information
//! For one elementary design (a group of identical subjects: doses,
//! covariates, sampling times `t_1..t_n`), FO linearises the model in η at
//! η = 0, so the observations are normal with
//!
//! * mean `μ(θ) = f(θ, η = 0)`,
//! * covariance `V = F Ω Fᵀ + diag(σ²_prop·μ² + σ²_add)`, with
//!   `F = ∂f/∂η` at η = 0 (for a log-normal effect on parameter `P`,
//!   `F_k = P·∂f/∂P`).
//!
//! For ψ = (θ, ω², σ²) the information of one subject is
//! `M_ab = ∂μᵀ/∂ψ_a V⁻¹ ∂μ/∂ψ_b + ½ tr(V⁻¹ ∂V/∂ψ_a V⁻¹ ∂V/∂ψ_b)`, and a
//! group contributes its size times that.
//!
//! * [`FimType::Full`] (PopED's `fim.calc.type = 0`) keeps every term,
//!   including `∂V/∂θ`.
//! * [`FimType::Reduced`] (PopED's `fim.calc.type = 1`, its default) drops
//!   `∂V/∂θ`: the θ block is `∂μᵀ/∂θ V⁻¹ ∂μ/∂θ` and the θ–variance block is
//!   zero.
//!
//! `∂μ/∂θ` and `F` are exact forward sensitivities of the ODE solution
//! ([`insilico_solvers::sensitivities`]); `∂F/∂θ` (full FIM only) is a central
//! difference of those exact sensitivities with a relative step of 1e-3, at
//! ODE tolerances of 1e-10 (rtol) by default: the truncation error is
//! `O(h²) ≈ 1e-6` relative and the solver noise `rtol/h ≈ 1e-7`.
//!
//! Parameters are on their natural scale (θ as given, Ω's diagonal as
//! variances `omega2_<name>`, residual variances `sigma2_prop`,
//! `sigma2_add`), so `RSE% = 100·sqrt((M⁻¹)_aa)/|ψ_a|` is PopED's.
//!
//! # Example
//! PopED's warfarin example (1-cmt oral, 32 subjects, 8 samples):
//! ```
//! use insilico_estimation::design::{Design, FimType};
//! use insilico_estimation::{ErrorModel, PopulationSpec};
//! use insilico_solvers::data::{Dataset, ReadOptions};
//! let model = insilico_model::Model::parse(
//!     "parameters: CL in (0, inf), V in (0, inf), KA in (0, inf)\nstates: depot, central\n\
//!      flux depot -> central = KA * depot\nflux central -> out = CL / V * central\noutput: cp = central / V", "warfarin")?;
//! let mut csv = String::from("ID,TIME,AMT,DV,EVID,CMT\n1,0,70,.,1,1\n");
//! for t in [0.5, 1.0, 2.0, 6.0, 24.0, 36.0, 72.0, 120.0] {
//!     csv += &format!("1,{t},0,.,0,2\n");
//! }
//! let data = Dataset::from_str("warfarin.csv", &csv, &ReadOptions::default()).unwrap();
//! let spec = PopulationSpec::log_normal(&[("CL", 0.15), ("V", 8.0), ("KA", 1.0)],
//!     &[("CL", 0.07), ("V", 0.02), ("KA", 0.6)], ErrorModel::Proportional, &[0.1])?;
//! let design = Design::new(&model, &data, &[32.0], &spec)?;
//! let fim = design.fim(FimType::Reduced)?;
//! assert!((fim.det() / 5.996147e22 - 1.0).abs() < 1e-4);  // PopED's value
//! # Ok::<(), insilico_estimation::EstimationError>(())
//! ```

use std::sync::Arc;

use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;

use insilico_model::subject::{subject_covariates, subject_dose_mapping};
use insilico_model::{Compiled, Model, ModelSystem};
use insilico_solvers::data::{Dataset, DoseMapping};
use insilico_solvers::{sensitivities, Method, ObservationPoint, Options, Problem, Schedule};

use crate::error::EstimationError;
use crate::population::Layout;
use crate::spec::{ErrorModel, OmegaStructure, PopulationSpec};

/// Which FO Fisher information (PopED's `fim.calc.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FimType {
    /// Every term, including the variance's dependence on θ (PopED type 0).
    Full,
    /// No `∂V/∂θ`; block-diagonal between θ and the variances (PopED type 1, its default).
    Reduced,
}

impl FimType {
    /// `"full"` or `"reduced"`.
    pub fn name(&self) -> &'static str {
        match self {
            FimType::Full => "full",
            FimType::Reduced => "reduced",
        }
    }
    /// Parses `"full"` / `"reduced"` (any case).
    pub fn parse(s: &str) -> Option<FimType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Some(FimType::Full),
            "reduced" => Some(FimType::Reduced),
            _ => None,
        }
    }
}

/// A design criterion (all to be maximised as [`Criterion::value`] reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// `det M`.
    D,
    /// `ln det M` (the same optimum as D, on a usable scale).
    LnD,
    /// `−tr(M⁻¹)`: minus the summed variances (A-optimality).
    A,
}

impl Criterion {
    /// `"D"`, `"lnD"` or `"A"`.
    pub fn name(&self) -> &'static str {
        match self {
            Criterion::D => "D",
            Criterion::LnD => "lnD",
            Criterion::A => "A",
        }
    }
    /// Parses `D`, `lnD` or `A` (any case).
    pub fn parse(s: &str) -> Option<Criterion> {
        match s.trim().to_ascii_lowercase().as_str() {
            "d" => Some(Criterion::D),
            "lnd" => Some(Criterion::LnD),
            "a" => Some(Criterion::A),
            _ => None,
        }
    }
    /// The criterion of `fim` (larger is better; `−∞` when M is singular).
    pub fn value(&self, fim: &Fim) -> f64 {
        match self {
            Criterion::D => fim.det(),
            Criterion::LnD => fim.ln_det(),
            Criterion::A => fim.covariance().map_or(f64::NEG_INFINITY, |c| -c.trace()),
        }
    }
}

/// A Fisher information matrix with the names and values of its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Fim {
    /// Which FIM.
    pub fim_type: FimType,
    /// Parameter names: θ by name, `omega2_<target>`, `sigma2_prop`, `sigma2_add`.
    pub names: Vec<String>,
    /// Parameter values (natural scale), in the order of `names`.
    pub values: Vec<f64>,
    /// The information matrix, summed over groups.
    pub matrix: DMatrix<f64>,
}

impl Fim {
    /// `ln det M` by Cholesky; `−∞` when M is not positive definite.
    pub fn ln_det(&self) -> f64 {
        match self.matrix.clone().cholesky() {
            Some(c) => 2.0 * c.l().diagonal().iter().map(|d| d.ln()).sum::<f64>(),
            None => f64::NEG_INFINITY,
        }
    }
    /// `det M` (0 when M is not positive definite).
    pub fn det(&self) -> f64 {
        self.ln_det().exp()
    }
    /// `M⁻¹`, the lower bound of the estimates' covariance; `None` when M is singular.
    pub fn covariance(&self) -> Option<DMatrix<f64>> {
        self.matrix.clone().cholesky().map(|c| c.inverse())
    }
    /// `100·SE/|value|` per parameter; an error naming the cause when M is singular.
    pub fn rse_percent(&self) -> Result<Vec<f64>, EstimationError> {
        let cov = self.covariance().ok_or_else(|| EstimationError::Covariance {
            reason: "singular: the design does not inform every parameter (add samples or fix parameters)".into(),
        })?;
        Ok(self.values.iter().enumerate().map(|(a, v)| 100.0 * cov[(a, a)].sqrt() / v.abs()).collect())
    }
}

/// One elementary design: a subject template bound to the model.
#[derive(Debug, Clone)]
struct Group {
    id: String,
    size: f64,
    sys: ModelSystem,
    schedule: Schedule,
    t0: f64,
    times: Vec<f64>,
}

/// A population design: groups of identical subjects (one dataset subject
/// each: its doses, covariates and observation times) under a population model.
#[derive(Debug, Clone)]
pub struct Design {
    layout: Layout,
    groups: Vec<Group>,
    /// Ω's diagonal (variances) and the names of the random effects' targets.
    omega2: Vec<f64>,
    eta_targets: Vec<String>,
    sigma2_prop: Option<f64>,
    sigma2_add: Option<f64>,
    method: Method,
    options: Options,
}

/// Per-group predictions and derivatives at one θ.
struct Linearised {
    mu: Vec<f64>,
    /// `∂μ/∂θ_j`, per θ.
    dmu: Vec<DVector<f64>>,
    /// `F` (n × q).
    f: DMatrix<f64>,
}

impl Design {
    /// Binds `spec` to `model` and the subjects of `data` (one group each,
    /// of `sizes[i]` subjects; observation records give the sampling
    /// times). The residual error model must be additive, proportional or
    /// combined2 (`V = a² + b²f²`); Ω must be diagonal.
    pub fn new(model: &Model, data: &Dataset, sizes: &[f64], spec: &PopulationSpec) -> Result<Design, EstimationError> {
        if spec.outputs.len() > 1 {
            return Err(EstimationError::Spec(
                "the design's FIM takes one sampled output; several observed outputs are not supported yet".into(),
            ));
        }
        let layout = Layout::new(model, spec)?;
        if spec.omega.structure() != OmegaStructure::Diagonal {
            return Err(EstimationError::Spec(
                "the design's FIM takes a diagonal Ω (variances omega2_<name>); a full block is not supported yet"
                    .into(),
            ));
        }
        let (error, sigma) = match spec.outputs.first() {
            Some(o) => (o.error, o.sigma.as_slice()),
            None => (spec.error, spec.sigma.as_slice()),
        };
        let (sigma2_prop, sigma2_add) = match (error, sigma) {
            (ErrorModel::Additive, [a]) => (None, Some(a * a)),
            (ErrorModel::Proportional, [b]) => (Some(b * b), None),
            (ErrorModel::Combined2, [a, b]) => (Some(b * b), Some(a * a)),
            (e, _) => {
                return Err(EstimationError::Spec(format!(
                    "the design's FIM takes an additive, proportional or combined2 residual error, not {}",
                    e.name()
                )))
            }
        };
        if data.subjects.is_empty() {
            return Err(EstimationError::EmptyDataset { file: data.file.clone() });
        }
        if sizes.len() != data.subjects.len() {
            return Err(EstimationError::Spec(format!(
                "{} group sizes given for the {} subjects (groups) of {}",
                sizes.len(),
                data.subjects.len(),
                data.file
            )));
        }
        let compiled: Arc<Compiled> = Compiled::new(model.clone());
        let n = model.nstates();
        let central = model.state_names().iter().position(|s| *s == "central").map_or(1, |i| i + 1);
        let mapping = DoseMapping::new(n, spec.dose_cmt.unwrap_or(1), spec.obs_cmt.unwrap_or(central));
        let mut groups = Vec::with_capacity(sizes.len());
        for (subj, &size) in data.subjects.iter().zip(sizes) {
            if !(size.is_finite() && size > 0.0) {
                return Err(EstimationError::Spec(format!("group `{}` has size {size}; it must be positive", subj.id)));
            }
            let cov = subject_covariates(model, data, subj)?;
            let sys = ModelSystem::from_compiled(compiled.clone(), &cov)?;
            let (schedule, obs) = subj.to_schedule(data, &subject_dose_mapping(&sys, &mapping, &layout.base))?;
            let times: Vec<f64> = obs.iter().map(|o| o.time).collect();
            if times.is_empty() {
                return Err(EstimationError::NoObservations { file: data.file.clone(), subject: subj.id.clone() });
            }
            let t0 = subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min);
            groups.push(Group { id: subj.id.clone(), size, sys, schedule, t0, times });
        }
        Ok(Design {
            layout,
            groups,
            omega2: spec.omega.matrix().diagonal().iter().copied().collect(),
            eta_targets: spec.random.iter().map(|r| r.target().to_string()).collect(),
            sigma2_prop,
            sigma2_add,
            method: Method::Tsit45,
            options: Options { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 },
        })
    }

    /// Uses another ODE method and tolerances (default Tsit45, rtol 1e-10, atol 1e-12).
    pub fn with_solver(mut self, method: Method, options: Options) -> Design {
        self.method = method;
        self.options = options;
        self
    }

    /// The groups' names (dataset IDs), in order.
    pub fn group_ids(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.id.clone()).collect()
    }

    /// The sampling times of each group.
    pub fn times(&self) -> Vec<Vec<f64>> {
        self.groups.iter().map(|g| g.times.clone()).collect()
    }

    /// Replaces the sampling times (same count per group as before).
    pub fn set_times(&mut self, times: &[Vec<f64>]) -> Result<(), EstimationError> {
        if times.len() != self.groups.len() {
            return Err(EstimationError::Spec(format!(
                "{} groups of times given for {} groups",
                times.len(),
                self.groups.len()
            )));
        }
        for (g, t) in self.groups.iter_mut().zip(times) {
            if t.iter().any(|v| !v.is_finite()) {
                return Err(EstimationError::Spec(format!("group `{}`: a sampling time is not finite", g.id)));
            }
            g.times = t.clone();
        }
        Ok(())
    }

    /// Parameter names and values of the FIM, in its order.
    pub fn parameters(&self) -> (Vec<String>, Vec<f64>) {
        let l = &self.layout;
        let mut names: Vec<String> = l.theta_names.clone();
        let mut values: Vec<f64> = l.theta_idx.iter().map(|&i| l.base[i]).collect();
        for (target, &v) in self.eta_targets.iter().zip(&self.omega2) {
            names.push(format!("omega2_{target}"));
            values.push(v);
        }
        if let Some(v) = self.sigma2_prop {
            names.push("sigma2_prop".into());
            values.push(v);
        }
        if let Some(v) = self.sigma2_add {
            names.push("sigma2_add".into());
            values.push(v);
        }
        (names, values)
    }

    /// Predictions, `∂μ/∂θ` and `F` of group `g` at typical values `theta` (η = 0).
    fn linearise(&self, g: &Group, theta: &[f64]) -> Result<Linearised, EstimationError> {
        let l = &self.layout;
        let mut p = l.base.clone();
        for (&i, &v) in l.theta_idx.iter().zip(theta) {
            p[i] = v;
        }
        let mut dirs: Vec<usize> = l.theta_idx.clone();
        for &i in &l.eta_idx {
            if !dirs.contains(&i) {
                dirs.push(i);
            }
        }
        let mut prob = Problem::new(&g.sys, p.clone()).with_schedule(g.schedule.clone());
        let x0 = g.sys.initial_state(&p);
        if x0.iter().any(|v| *v != 0.0) {
            prob = prob.with_x0(x0);
        }
        prob.t0 = g.t0;
        prob.observations = g.times.iter().map(|&time| ObservationPoint { time, output: l.outputs[0].index }).collect();
        let s = sensitivities(&prob, self.method, &self.options, &dirs)
            .map_err(|error| EstimationError::Solve { subject: g.id.clone(), error })?;
        let n = g.times.len();
        let m = dirs.len();
        let col = |param: usize| -> DVector<f64> {
            let c = dirs.iter().position(|&d| d == param).unwrap_or(0);
            DVector::from_iterator(n, (0..n).map(|j| s.jacobian[j * m + c]))
        };
        let dmu = l.theta_idx.iter().map(|&i| col(i)).collect();
        let mut f = DMatrix::zeros(n, l.eta_idx.len());
        for (k, &i) in l.eta_idx.iter().enumerate() {
            let scale = if l.eta_lognormal[k] { p[i] } else { 1.0 };
            f.set_column(k, &(col(i) * scale));
        }
        if s.predictions.iter().any(|v| !v.is_finite()) {
            return Err(EstimationError::Spec(format!("group `{}`: a prediction is not finite", g.id)));
        }
        Ok(Linearised { mu: s.predictions, dmu, f })
    }

    /// `V = F Ω Fᵀ + diag(σ²_prop μ² + σ²_add)`.
    fn variance(&self, lin: &Linearised) -> DMatrix<f64> {
        let omega = DMatrix::from_diagonal(&DVector::from_column_slice(&self.omega2));
        let mut v = &lin.f * omega * lin.f.transpose();
        for (j, mu) in lin.mu.iter().enumerate() {
            v[(j, j)] += self.sigma2_prop.unwrap_or(0.0) * mu * mu + self.sigma2_add.unwrap_or(0.0);
        }
        v
    }

    /// The information of one subject of group `g`.
    fn group_fim(&self, g: &Group, fim_type: FimType) -> Result<DMatrix<f64>, EstimationError> {
        let l = &self.layout;
        let theta: Vec<f64> = l.theta_idx.iter().map(|&i| l.base[i]).collect();
        let nt = theta.len();
        let q = l.eta_idx.len();
        let lin = self.linearise(g, &theta)?;
        let n = lin.mu.len();
        let v = self.variance(&lin);
        let vinv = v.clone().cholesky().map(|c| c.inverse()).ok_or_else(|| EstimationError::Covariance {
            reason: format!("the FO variance of group `{}` is not positive definite (a zero residual variance?)", g.id),
        })?;
        // ∂V/∂λ for the variance parameters λ = (ω², σ²).
        let mut dv_var: Vec<DMatrix<f64>> = (0..q).map(|k| lin.f.column(k) * lin.f.column(k).transpose()).collect();
        if self.sigma2_prop.is_some() {
            dv_var.push(DMatrix::from_diagonal(&DVector::from_iterator(n, lin.mu.iter().map(|m| m * m))));
        }
        if self.sigma2_add.is_some() {
            dv_var.push(DMatrix::identity(n, n));
        }
        // ∂V/∂θ (full FIM): central differences of exact F, exact ∂μ/∂θ in the residual part.
        let dv_theta: Vec<DMatrix<f64>> = match fim_type {
            FimType::Reduced => Vec::new(),
            FimType::Full => (0..nt)
                .map(|j| {
                    let h = 1e-3 * theta[j].abs().max(1e-8);
                    let mut up = theta.clone();
                    up[j] += h;
                    let mut down = theta.clone();
                    down[j] -= h;
                    let vu = self.linear_part(&self.linearise(g, &up)?);
                    let vd = self.linear_part(&self.linearise(g, &down)?);
                    let mut dv = (vu - vd) / (2.0 * h);
                    let sp = self.sigma2_prop.unwrap_or(0.0);
                    for r in 0..n {
                        dv[(r, r)] += 2.0 * sp * lin.mu[r] * lin.dmu[j][r];
                    }
                    Ok(dv)
                })
                .collect::<Result<_, EstimationError>>()?,
        };
        let half_trace = |a: &DMatrix<f64>, b: &DMatrix<f64>| 0.5 * (&vinv * a * &vinv * b).trace();
        let nv = dv_var.len();
        let mut m = DMatrix::zeros(nt + nv, nt + nv);
        for a in 0..nt {
            for b in 0..nt {
                let mut x = lin.dmu[a].dot(&(&vinv * &lin.dmu[b]));
                if fim_type == FimType::Full {
                    x += half_trace(&dv_theta[a], &dv_theta[b]);
                }
                m[(a, b)] = x;
            }
        }
        for a in 0..nv {
            for b in 0..nv {
                m[(nt + a, nt + b)] = half_trace(&dv_var[a], &dv_var[b]);
            }
        }
        if fim_type == FimType::Full {
            for a in 0..nt {
                for b in 0..nv {
                    let x = half_trace(&dv_theta[a], &dv_var[b]);
                    m[(a, nt + b)] = x;
                    m[(nt + b, a)] = x;
                }
            }
        }
        Ok(m)
    }

    /// `F Ω Fᵀ` (the part of V that moves with θ through F).
    fn linear_part(&self, lin: &Linearised) -> DMatrix<f64> {
        let omega = DMatrix::from_diagonal(&DVector::from_column_slice(&self.omega2));
        &lin.f * omega * lin.f.transpose()
    }

    /// The population FIM: `Σ_groups size · M_group`. Groups run in
    /// parallel and are summed in order (identical for any thread count).
    pub fn fim(&self, fim_type: FimType) -> Result<Fim, EstimationError> {
        let per: Vec<DMatrix<f64>> =
            self.groups.par_iter().map(|g| self.group_fim(g, fim_type)).collect::<Result<_, _>>()?;
        let (names, values) = self.parameters();
        let mut m = DMatrix::zeros(names.len(), names.len());
        for (g, mg) in self.groups.iter().zip(per) {
            m += mg * g.size;
        }
        Ok(Fim { fim_type, names, values, matrix: m })
    }
}

/// Where each sampling time may move, and how close two may be.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeConstraints {
    /// Per group, per sample: `(lower, upper)`; times keep their order.
    pub windows: Vec<Vec<(f64, f64)>>,
    /// The smallest gap between consecutive samples of a group (0: replicates allowed).
    pub min_spacing: f64,
}

/// What [`optimise_times`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeOptimum {
    /// Times before (sorted) and after, per group.
    pub times_before: Vec<Vec<f64>>,
    /// The optimised times, per group.
    pub times: Vec<Vec<f64>>,
    /// The criterion before and after.
    pub criterion_before: f64,
    /// The criterion after.
    pub criterion_after: f64,
    /// FIM before and after.
    pub fim_before: Fim,
    /// The FIM at the optimum.
    pub fim_after: Fim,
    /// Coordinate sweeps done.
    pub sweeps: usize,
    /// FIM evaluations done.
    pub evaluations: usize,
}

/// Optimises the sampling times of `design` for `criterion` within the
/// windows and spacing of `constraints`, by cyclic coordinate search: each
/// time in turn is set to the best of a 65-point grid over its window
/// (points closer than the spacing to another sample of its group are
/// skipped, so samples may pass each other), refined by golden-section
/// search inside the feasible interval around it, until a sweep improves
/// the criterion by less than 1e-9 relative. Candidates whose FIM cannot be
/// formed (a zero FO variance) count as −∞. Deterministic; a local method
/// with a global grid per coordinate. `design` is left at the optimum, with
/// each group's times sorted where its samples share one window.
pub fn optimise_times(
    design: &mut Design,
    fim_type: FimType,
    criterion: Criterion,
    constraints: &TimeConstraints,
) -> Result<TimeOptimum, EstimationError> {
    let ng = design.groups.len();
    if constraints.windows.len() != ng {
        return Err(EstimationError::Spec(format!(
            "windows given for {} groups, the design has {ng}",
            constraints.windows.len()
        )));
    }
    let gap = constraints.min_spacing;
    if !(gap.is_finite() && gap >= 0.0) {
        return Err(EstimationError::Spec(format!("min_spacing = {gap}; it must be ≥ 0")));
    }
    let mut times = design.times();
    for (g, (t, w)) in times.iter_mut().zip(&constraints.windows).enumerate() {
        let id = &design.groups[g].id;
        if w.len() != t.len() {
            return Err(EstimationError::Spec(format!("group `{id}`: {} windows for {} samples", w.len(), t.len())));
        }
        t.sort_by(f64::total_cmp);
        for (k, (&(lo, hi), x)) in w.iter().zip(t.iter_mut()).enumerate() {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(EstimationError::Spec(format!(
                    "group `{id}`, sample {}: window [{lo}, {hi}] is empty",
                    k + 1
                )));
            }
            *x = x.clamp(lo, hi);
        }
        for k in 1..t.len() {
            if t[k] < t[k - 1] + gap {
                t[k] = t[k - 1] + gap;
            }
            if t[k] > w[k].1 + 1e-12 {
                return Err(EstimationError::Spec(format!(
                    "group `{id}`: the windows cannot hold {} samples {gap} apart (contradictory constraints)",
                    t.len()
                )));
            }
        }
    }
    let mut evaluations = 0usize;
    let mut eval = |d: &mut Design, t: &Vec<Vec<f64>>| -> Result<(f64, Fim), EstimationError> {
        evaluations += 1;
        d.set_times(t)?;
        let f = d.fim(fim_type)?;
        Ok((criterion.value(&f), f))
    };
    let (c0, fim0) = eval(design, &times)?;
    let times_before = times.clone();
    // Two starts: the given times, and times spread geometrically over each
    // window (where that fits the spacing); the better optimum is kept.
    let mut starts = vec![times.clone()];
    if let Some(spread) = spread_start(&times, constraints) {
        starts.push(spread);
    }
    let mut overall: Option<(Vec<Vec<f64>>, f64, Fim)> = None;
    let mut sweeps = 0;
    for mut times in starts {
        let (mut best, mut best_fim) = match eval(design, &times) {
            Ok(v) => v,
            Err(EstimationError::Covariance { .. }) => (f64::NEG_INFINITY, fim0.clone()),
            Err(e) => return Err(e),
        };
        for _ in 0..50 {
            sweeps += 1;
            let start = best;
            for g in 0..ng {
                for k in 0..times[g].len() {
                    let (wlo, whi) = constraints.windows[g][k];
                    // Sample k may go anywhere in its window at least `gap` away
                    // from the group's other samples (so samples can pass each other).
                    let others: Vec<f64> =
                        times[g].iter().enumerate().filter(|(j, _)| *j != k).map(|(_, &t)| t).collect();
                    let feasible = |x: f64| others.iter().all(|&t| (x - t).abs() >= gap - 1e-12);
                    // The feasible interval around x: the window cut by the nearest blocked neighbours.
                    let interval = |x: f64| -> (f64, f64) {
                        if gap == 0.0 {
                            return (wlo, whi);
                        }
                        let lo = others.iter().map(|&t| t + gap).filter(|&b| b <= x + 1e-12).fold(wlo, f64::max);
                        let hi = others.iter().map(|&t| t - gap).filter(|&b| b >= x - 1e-12).fold(whi, f64::min);
                        (lo, hi)
                    };
                    if whi <= wlo {
                        continue;
                    }
                    // A candidate whose FIM cannot be formed (a sample where the
                    // prediction and so the FO variance is 0, say) is infeasible: −∞.
                    let mut value_at =
                        |x: f64, t: &mut Vec<Vec<f64>>, d: &mut Design| -> Result<(f64, Fim), EstimationError> {
                            let old = t[g][k];
                            t[g][k] = x;
                            let r = eval(d, t);
                            t[g][k] = old;
                            match r {
                                Err(EstimationError::Covariance { .. }) => Ok((f64::NEG_INFINITY, best_fim.clone())),
                                r => r,
                            }
                        };
                    let grid = 64;
                    let mut cand = (times[g][k], best, best_fim.clone());
                    let mut improved = false;
                    // A linear grid over the window, and a geometric one near its start
                    // (early samples of absorption phases sit close to the dose).
                    let points = (0..=grid)
                        .map(|s| wlo + (whi - wlo) * s as f64 / grid as f64)
                        .chain((0..16).map(|s| wlo + (whi - wlo) * 10f64.powf(-4.0 + 3.0 * s as f64 / 16.0)));
                    for x in points {
                        if !feasible(x) {
                            continue;
                        }
                        let (c, f) = value_at(x, &mut times, design)?;
                        if c > cand.1 {
                            cand = (x, c, f);
                            improved = true;
                        }
                    }
                    // Golden-section refinement in the bracket around the best grid
                    // point, inside its feasible interval.
                    if improved {
                        let h = (whi - wlo) / grid as f64;
                        let (flo, fhi) = interval(cand.0);
                        let (mut a, mut b) = ((cand.0 - h).max(flo), (cand.0 + h).min(fhi));
                        let r = 0.5 * (5f64.sqrt() - 1.0);
                        let mut x1 = b - r * (b - a);
                        let mut x2 = a + r * (b - a);
                        let (mut f1, mut m1) = value_at(x1, &mut times, design)?;
                        let (mut f2, mut m2) = value_at(x2, &mut times, design)?;
                        for _ in 0..40 {
                            if (b - a) <= 1e-7 * (1.0 + cand.0.abs()) {
                                break;
                            }
                            if f1 >= f2 {
                                b = x2;
                                x2 = x1;
                                f2 = f1;
                                m2 = m1.clone();
                                x1 = b - r * (b - a);
                                (f1, m1) = value_at(x1, &mut times, design)?;
                            } else {
                                a = x1;
                                x1 = x2;
                                f1 = f2;
                                m1 = m2.clone();
                                x2 = a + r * (b - a);
                                (f2, m2) = value_at(x2, &mut times, design)?;
                            }
                        }
                        for (x, f, m) in [(x1, f1, m1), (x2, f2, m2)] {
                            if f > cand.1 {
                                cand = (x, f, m);
                            }
                        }
                    }
                    if cand.1 > best {
                        times[g][k] = cand.0;
                        best = cand.1;
                        best_fim = cand.2;
                    }
                }
            }
            if (best - start).abs() <= 1e-9 * (1.0 + start.abs()) {
                break;
            }
        }
        if overall.as_ref().is_none_or(|o| best > o.1) {
            overall = Some((times, best, best_fim));
        }
    }
    let (mut times, best, best_fim) = overall.unwrap_or((times_before.clone(), c0, fim0.clone()));
    // Report each group's times in order where its samples share one window.
    for (t, w) in times.iter_mut().zip(&constraints.windows) {
        if w.windows(2).all(|p| p[0] == p[1]) {
            t.sort_by(f64::total_cmp);
        }
    }
    design.set_times(&times)?;
    Ok(TimeOptimum {
        times_before,
        times,
        criterion_before: c0,
        criterion_after: best,
        fim_before: fim0,
        fim_after: best_fim,
        sweeps,
        evaluations,
    })
}

/// Times spread geometrically over each group's window (`lo + (hi − lo)·10^u`,
/// u from −2 to 0), pushed apart to the spacing; `None` where a group's samples
/// do not share one window or do not fit.
fn spread_start(times: &[Vec<f64>], c: &TimeConstraints) -> Option<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(times.len());
    for (t, w) in times.iter().zip(&c.windows) {
        let n = t.len();
        let &(lo, hi) = w.first()?;
        if w.iter().any(|&x| x != (lo, hi)) {
            return None;
        }
        let mut s: Vec<f64> = (0..n)
            .map(|i| {
                let u = if n > 1 { -2.0 + 2.0 * i as f64 / (n - 1) as f64 } else { -1.0 };
                lo + (hi - lo) * 10f64.powf(u)
            })
            .collect();
        for i in 1..n {
            s[i] = s[i].max(s[i - 1] + c.min_spacing);
        }
        if s.last().is_some_and(|&x| x > hi + 1e-12) {
            return None;
        }
        out.push(s);
    }
    Some(out)
}
