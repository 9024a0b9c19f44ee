//! A [`PopulationSpec`] bound to a model and a dataset: the layout of the
//! estimated vector ψ and, per subject, a [`ModelSystem`], its schedule and
//! observations.

use std::sync::Arc;

use insilico_model::subject::{subject_covariates, subject_dose_mapping};
use insilico_model::{Compiled, Model, ModelSystem, ParamKind};
use insilico_solvers::data::{Dataset, DoseMapping, Subject};
use insilico_solvers::{sensitivities, Method, ObservationPoint, Options, Problem, Schedule, Sensitivities};

use crate::error::EstimationError;
use crate::spec::{ErrorModel, EtaOn, Omega, OmegaStructure, PopulationSpec};

/// How the spec maps onto the model's parameter vector, and ψ (the free
/// parameters of the outer problem): `[θ (log or linear), Ω (Cholesky,
/// log-diagonal), log σ]`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub base: Vec<f64>,
    pub theta_names: Vec<String>,
    pub theta_idx: Vec<usize>,
    pub theta_log: Vec<bool>,
    pub eta_names: Vec<String>,
    pub eta_idx: Vec<usize>,
    pub eta_lognormal: Vec<bool>,
    pub omega_structure: OmegaStructure,
    pub error: ErrorModel,
    pub output: usize,
}

/// Population values unpacked from ψ.
#[derive(Debug, Clone)]
pub(crate) struct PopValues {
    pub theta: Vec<f64>,
    pub omega: Omega,
    pub omega_inv: nalgebra::DMatrix<f64>,
    pub sigma: Vec<f64>,
}

impl Layout {
    pub fn new(model: &Model, spec: &PopulationSpec) -> Result<Layout, EstimationError> {
        let params = model.params();
        let scalar = model.scalar_param_names().join(", ");
        let find =
            |name: &str| params.iter().position(|p| p.name == name && !matches!(p.kind, ParamKind::Weight { .. }));
        let perr = |param: &str, reason: String| EstimationError::Parameter {
            param: param.to_string(),
            model: model.name().to_string(),
            reason,
        };
        let mut base = model.default_params(0);
        for (name, v) in &spec.fixed {
            let i = find(name).ok_or_else(|| perr(name, format!("no such parameter (the model has: {scalar})")))?;
            base[i] = *v;
        }
        let q = spec.random.len();
        if spec.omega.dim() != q {
            return Err(EstimationError::Spec(format!(
                "Ω is {0} × {0} but {q} random effects are declared",
                spec.omega.dim()
            )));
        }
        let mut eta_idx = Vec::with_capacity(q);
        let mut eta_lognormal = Vec::with_capacity(q);
        for re in &spec.random {
            let target = re.target();
            let i = find(target).ok_or_else(|| EstimationError::UnknownParameter {
                eta: re.name.clone(),
                param: target.to_string(),
                model: model.name().to_string(),
                available: scalar.clone(),
            })?;
            let lognormal = matches!(re.on, EtaOn::LogNormal(_));
            if !lognormal && params[i].kind != ParamKind::Random {
                return Err(EstimationError::Spec(format!(
                    "random effect `{}` is declared as the model's `random:` parameter `{target}`, but `{target}` is a fixed-effect parameter; use a log-normal effect on it instead",
                    re.name
                )));
            }
            if lognormal && params[i].kind == ParamKind::Random {
                return Err(EstimationError::Spec(format!(
                    "random effect `{}` is log-normal on `{target}`, which the model declares under `random:`; use it as a declared random effect",
                    re.name
                )));
            }
            if eta_idx.contains(&i) {
                return Err(EstimationError::Spec(format!("two random effects act on `{target}`")));
            }
            eta_idx.push(i);
            eta_lognormal.push(lognormal);
        }
        let mut theta_idx = Vec::new();
        let mut theta_log = Vec::new();
        for (name, v) in &spec.theta {
            let i = find(name).ok_or_else(|| perr(name, format!("no such parameter (the model has: {scalar})")))?;
            if params[i].kind == ParamKind::Random {
                return Err(perr(name, "is a random effect (declared under `random:`), not a typical value".into()));
            }
            if theta_idx.contains(&i) {
                return Err(perr(name, "is listed twice among the estimated typical values".into()));
            }
            if !v.is_finite() {
                return Err(perr(name, format!("the initial value {v} is not finite")));
            }
            let positive = params[i].bounds.is_some_and(|b| b.lo >= 0.0);
            let log = *v > 0.0 && (positive || eta_idx.iter().zip(&eta_lognormal).any(|(&e, &l)| l && e == i));
            base[i] = *v;
            theta_idx.push(i);
            theta_log.push(log);
        }
        for (p, v) in params.iter().zip(&base) {
            if !v.is_finite() && !matches!(p.kind, ParamKind::Weight { .. }) {
                return Err(perr(&p.name, "has no value: give a typical value in `theta` or a fixed value".into()));
            }
        }
        let n_sigma = spec.error.sigma_names().len();
        if spec.sigma.len() != n_sigma || spec.sigma.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(EstimationError::Spec(format!(
                "the {} error model takes {n_sigma} positive σ ({}), given {:?}",
                spec.error.name(),
                spec.error.sigma_names().join(", "),
                spec.sigma
            )));
        }
        let names = model.output_names();
        let output = match &spec.output {
            None => 0,
            Some(o) => names.iter().position(|n| n == o).ok_or_else(|| {
                EstimationError::Spec(format!(
                    "model {} has no output `{o}` (outputs: {})",
                    model.name(),
                    names.join(", ")
                ))
            })?,
        };
        if names.is_empty() {
            return Err(EstimationError::Spec(format!("model {} has no output", model.name())));
        }
        Ok(Layout {
            base,
            theta_names: spec.theta.iter().map(|(n, _)| n.clone()).collect(),
            theta_idx,
            theta_log,
            eta_names: spec.random.iter().map(|r| r.name.clone()).collect(),
            eta_idx,
            eta_lognormal,
            omega_structure: spec.omega.structure(),
            error: spec.error,
            output,
        })
    }

    pub fn n_theta(&self) -> usize {
        self.theta_idx.len()
    }
    pub fn n_eta(&self) -> usize {
        self.eta_idx.len()
    }
    pub fn n_omega(&self) -> usize {
        Omega::count_params(self.omega_structure, self.n_eta())
    }

    /// ψ from natural-scale values.
    pub fn pack(&self, theta: &[f64], omega: &Omega, sigma: &[f64]) -> Vec<f64> {
        let mut psi: Vec<f64> = theta.iter().zip(&self.theta_log).map(|(v, &l)| if l { v.ln() } else { *v }).collect();
        psi.extend(omega.to_params());
        psi.extend(sigma.iter().map(|s| s.ln()));
        psi
    }

    /// Natural-scale values from ψ.
    pub fn unpack(&self, psi: &[f64]) -> PopValues {
        let nt = self.n_theta();
        let no = self.n_omega();
        let theta = psi[..nt].iter().zip(&self.theta_log).map(|(v, &l)| if l { v.exp() } else { *v }).collect();
        let omega = Omega::from_params(self.omega_structure, self.n_eta(), &psi[nt..nt + no]);
        let omega_inv = omega.inverse();
        let sigma = psi[nt + no..].iter().map(|v| v.exp()).collect();
        PopValues { theta, omega, omega_inv, sigma }
    }

    /// The individual parameter vector for typical values `theta` and
    /// random effects `eta`, and `∂p_{eta_idx[k]}/∂η_k`.
    pub fn individual(&self, theta: &[f64], eta: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let mut p = self.base.clone();
        for (&i, &v) in self.theta_idx.iter().zip(theta) {
            p[i] = v;
        }
        let mut scale = vec![1.0; eta.len()];
        for (k, (&i, &e)) in self.eta_idx.iter().zip(eta).enumerate() {
            if self.eta_lognormal[k] {
                p[i] *= e.exp();
                scale[k] = p[i];
            } else {
                p[i] = e;
            }
        }
        (p, scale)
    }
}

/// One subject ready to solve.
#[derive(Debug, Clone)]
pub(crate) struct SubjectData {
    pub id: String,
    pub sys: ModelSystem,
    subject: Subject,
    /// The dataset's name and columns (no subjects), to rebuild schedules.
    header: Arc<Dataset>,
    mapping: DoseMapping,
    /// The schedule when no dose attribute depends on parameters.
    schedule: Option<Schedule>,
    pub obs: Vec<ObservationPoint>,
    /// Observations on the comparison scale (log for the exponential error model).
    pub y: Vec<f64>,
    /// Dataset lines of the observations.
    pub lines: Vec<usize>,
    t0: f64,
}

/// Solver settings of a fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SolveSettings {
    pub method: Method,
    pub options: Options,
}

impl SubjectData {
    pub fn build_all(
        model: &Model,
        ds: &Dataset,
        layout: &Layout,
        spec: &PopulationSpec,
    ) -> Result<Vec<SubjectData>, EstimationError> {
        if ds.subjects.is_empty() {
            return Err(EstimationError::EmptyDataset { file: ds.file.clone() });
        }
        let compiled: Arc<Compiled> = Compiled::new(model.clone());
        let n = model.nstates();
        let states = model.state_names();
        let central = states.iter().position(|s| *s == "central").map_or(1, |i| i + 1);
        let dose_cmt = spec.dose_cmt.unwrap_or(1);
        let obs_cmt = spec.obs_cmt.unwrap_or(central);
        for (key, c) in [("dose_cmt", dose_cmt), ("obs_cmt", obs_cmt)] {
            if c == 0 || c > n {
                return Err(EstimationError::Spec(format!(
                    "{key} = {c} but model {} has compartments 1..={n}",
                    model.name()
                )));
            }
        }
        let base_mapping = DoseMapping::new(n, dose_cmt, obs_cmt);
        let has_attrs = {
            let sys = ModelSystem::from_compiled(compiled.clone(), &[])?;
            subject_dose_mapping(&sys, &base_mapping, &layout.base) != base_mapping
        };
        let header = Arc::new(Dataset {
            file: ds.file.clone(),
            covariate_names: ds.covariate_names.clone(),
            subjects: Vec::new(),
        });
        let mut out = Vec::with_capacity(ds.subjects.len());
        for subj in &ds.subjects {
            let cov = subject_covariates(model, ds, subj)?;
            let sys = ModelSystem::from_compiled(compiled.clone(), &cov)?;
            let (schedule, obs) = subj.to_schedule(ds, &subject_dose_mapping(&sys, &base_mapping, &layout.base))?;
            let mut points = Vec::new();
            let mut y = Vec::new();
            let mut lines = Vec::new();
            for o in &obs {
                let Some(dv) = o.dv.filter(|_| !o.mdv) else { continue };
                let yv = if layout.error.log_scale() {
                    if dv <= 0.0 {
                        return Err(EstimationError::Observation {
                            file: ds.file.clone(),
                            subject: subj.id.clone(),
                            line: o.line,
                            reason: format!("DV = {dv} cannot be log-transformed for the exponential error model"),
                        });
                    }
                    dv.ln()
                } else {
                    dv
                };
                points.push(ObservationPoint { time: o.time, output: layout.output });
                y.push(yv);
                lines.push(o.line);
            }
            if points.is_empty() {
                return Err(EstimationError::NoObservations { file: ds.file.clone(), subject: subj.id.clone() });
            }
            let t0 = subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min);
            out.push(SubjectData {
                id: subj.id.clone(),
                sys,
                subject: subj.clone(),
                header: header.clone(),
                mapping: base_mapping.clone(),
                schedule: if has_attrs { None } else { Some(schedule) },
                obs: points,
                y,
                lines,
                t0,
            });
        }
        Ok(out)
    }

    /// Predictions (on the comparison scale) and their Jacobian by the
    /// parameters `dirs` (row-major, `n_obs × dirs.len()`), at individual
    /// parameters `p`.
    pub fn predict(
        &self,
        p: &[f64],
        dirs: &[usize],
        log_scale: bool,
        st: &SolveSettings,
    ) -> Result<Sensitivities, String> {
        let schedule = match &self.schedule {
            Some(s) => s.clone(),
            None => {
                let map = subject_dose_mapping(&self.sys, &self.mapping, p);
                self.subject.to_schedule(&self.header, &map).map_err(|e| e.to_string())?.0
            }
        };
        let mut prob = Problem::new(&self.sys, p.to_vec()).with_schedule(schedule);
        let x0 = self.sys.initial_state(p);
        if x0.iter().any(|v| *v != 0.0) {
            prob = prob.with_x0(x0);
        }
        prob.t0 = self.t0;
        prob.observations = self.obs.clone();
        let mut s = sensitivities(&prob, st.method, &st.options, dirs).map_err(|e| e.to_string())?;
        if log_scale {
            let k = dirs.len();
            for (j, f) in s.predictions.iter_mut().enumerate() {
                for v in &mut s.jacobian[j * k..(j + 1) * k] {
                    *v /= *f;
                }
                *f = f.ln();
            }
        }
        if s.predictions.iter().chain(&s.jacobian).any(|v| !v.is_finite()) {
            return Err("a prediction or its sensitivity is not finite".into());
        }
        Ok(s)
    }
}
