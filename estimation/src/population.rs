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

/// One observed output: the model output it reads, its error model, where
/// its σ sit in [`PopValues::sigma`], and which records feed it.
#[derive(Debug, Clone)]
pub(crate) struct OutputLayout {
    /// The model output's name.
    pub name: String,
    /// The model output's index.
    pub index: usize,
    pub error: ErrorModel,
    /// Its σ in the concatenated σ vector.
    pub sigma: std::ops::Range<usize>,
    pub cmt: Option<usize>,
    pub dvid: Option<f64>,
    pub lloq: Option<f64>,
}

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
    /// The error model of the first observed output (FOCE-I takes one).
    pub error: ErrorModel,
    /// The observed outputs (one unless the spec lists several).
    pub outputs: Vec<OutputLayout>,
    /// The initial σ of every output, concatenated.
    pub sigma0: Vec<f64>,
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
        let names = model.output_names();
        if names.is_empty() {
            return Err(EstimationError::Spec(format!("model {} has no output", model.name())));
        }
        let find_output = |o: &str| {
            names.iter().position(|n| *n == o).ok_or_else(|| {
                EstimationError::Spec(format!(
                    "model {} has no output `{o}` (outputs: {})",
                    model.name(),
                    names.join(", ")
                ))
            })
        };
        let check_sigma = |error: ErrorModel, sigma: &[f64], what: &str| {
            let n_sigma = error.sigma_names().len();
            if sigma.len() != n_sigma || sigma.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(EstimationError::Spec(format!(
                    "{what}the {} error model takes {n_sigma} positive σ ({}), given {sigma:?}",
                    error.name(),
                    error.sigma_names().join(", "),
                )));
            }
            Ok(())
        };
        let mut outputs = Vec::new();
        let mut sigma0 = Vec::new();
        if spec.outputs.is_empty() {
            check_sigma(spec.error, &spec.sigma, "")?;
            let index = match &spec.output {
                None => 0,
                Some(o) => find_output(o)?,
            };
            outputs.push(OutputLayout {
                name: names[index].to_string(),
                index,
                error: spec.error,
                sigma: 0..spec.sigma.len(),
                cmt: None,
                dvid: None,
                lloq: None,
            });
            sigma0 = spec.sigma.clone();
        } else {
            if let Some(o) = &spec.output {
                return Err(EstimationError::Spec(format!(
                    "both `output` ({o}) and a list of observed outputs are given; name the outputs in the list only"
                )));
            }
            let several = spec.outputs.len() > 1;
            for (k, o) in spec.outputs.iter().enumerate() {
                let what = format!("observed output {} (`{}`): ", k + 1, o.name);
                let index = find_output(&o.name)?;
                check_sigma(o.error, &o.sigma, &what)?;
                if several && o.cmt.is_none() && o.dvid.is_none() {
                    return Err(EstimationError::Spec(format!(
                        "{what}with several observed outputs each needs a CMT or a DVID to select its observation records"
                    )));
                }
                if let Some(l) = o.lloq {
                    if !(l.is_finite() && l > 0.0) {
                        return Err(EstimationError::Spec(format!("{what}lloq = {l} must be positive")));
                    }
                }
                if let Some(d) = o.dvid {
                    if !d.is_finite() {
                        return Err(EstimationError::Spec(format!("{what}dvid = {d} is not finite")));
                    }
                }
                if outputs.iter().any(|p: &OutputLayout| p.cmt == o.cmt && p.dvid == o.dvid) {
                    return Err(EstimationError::Spec(format!(
                        "{what}selects the same observation records as an earlier output"
                    )));
                }
                let start = sigma0.len();
                sigma0.extend(&o.sigma);
                outputs.push(OutputLayout {
                    name: o.name.clone(),
                    index,
                    error: o.error,
                    sigma: start..sigma0.len(),
                    cmt: o.cmt,
                    dvid: o.dvid,
                    lloq: o.lloq,
                });
            }
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
            error: outputs[0].error,
            outputs,
            sigma0,
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
    /// Observations on the comparison scale (log for the exponential error
    /// model); for a censored observation, its limit of quantification.
    pub y: Vec<f64>,
    /// Observations as in the dataset (the limit for a censored one).
    pub dv: Vec<f64>,
    /// Per observation: the observed output it feeds (index into `Layout::outputs`).
    pub kind: Vec<usize>,
    /// Per observation: censored below `y` (M3).
    pub cens: Vec<bool>,
    /// Per observation: compared on the log scale.
    log: Vec<bool>,
    /// Dataset lines of the observations.
    pub lines: Vec<usize>,
    /// What looks wrong but does not stop the analysis (an observation before any dose).
    pub warnings: Vec<String>,
    t0: f64,
}

/// Solver settings of a fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SolveSettings {
    pub method: Method,
    pub options: Options,
}

impl SubjectData {
    /// Binds every subject; a subject without observations is an error
    /// unless `allow_empty`.
    pub fn build_all(
        model: &Model,
        ds: &Dataset,
        layout: &Layout,
        spec: &PopulationSpec,
        allow_empty: bool,
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
        let cens_col = ds.covariate("CENS");
        let dvid_col = ds.covariate("DVID");
        if layout.outputs.iter().any(|o| o.dvid.is_some()) && dvid_col.is_none() {
            return Err(EstimationError::Spec(format!(
                "an observed output is selected by DVID, but {} has no DVID column",
                ds.file
            )));
        }
        let describe = || {
            layout
                .outputs
                .iter()
                .map(|o| match (o.dvid, o.cmt) {
                    (Some(d), _) => format!("{} (DVID {d})", o.name),
                    (None, Some(c)) => format!("{} (CMT {c})", o.name),
                    (None, None) => o.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = Vec::with_capacity(ds.subjects.len());
        for subj in &ds.subjects {
            let cov = subject_covariates(model, ds, subj)?;
            let sys = ModelSystem::from_compiled(compiled.clone(), &cov)?;
            let (schedule, obs) = subj.to_schedule(ds, &subject_dose_mapping(&sys, &base_mapping, &layout.base))?;
            let obs_records = subj.records.iter().filter(|r| r.evid == 0);
            let first_dose = subj.records.iter().position(|r| r.evid == 1 || r.evid == 4);
            let bad = |line: usize, reason: String| EstimationError::Observation {
                file: ds.file.clone(),
                subject: subj.id.clone(),
                line,
                reason,
            };
            let mut sd = SubjectData {
                id: subj.id.clone(),
                sys,
                subject: subj.clone(),
                header: header.clone(),
                mapping: base_mapping.clone(),
                schedule: None,
                obs: Vec::new(),
                y: Vec::new(),
                dv: Vec::new(),
                kind: Vec::new(),
                cens: Vec::new(),
                log: Vec::new(),
                lines: Vec::new(),
                warnings: Vec::new(),
                t0: subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min),
            };
            for (o, rec) in obs.iter().zip(obs_records) {
                let Some(dv) = o.dv.filter(|_| !o.mdv) else { continue };
                let cell = |col: Option<usize>| col.and_then(|k| rec.covariates.get(k).copied().flatten());
                let dvid = cell(dvid_col);
                let kind = layout
                    .outputs
                    .iter()
                    .position(|out| match (out.dvid, out.cmt) {
                        (Some(d), _) => dvid == Some(d),
                        (None, Some(c)) => o.cmt == c,
                        (None, None) => true,
                    })
                    .ok_or_else(|| {
                        let sel = match dvid {
                            Some(d) if dvid_col.is_some() => format!("DVID {d}, CMT {}", o.cmt),
                            _ => format!("CMT {}", o.cmt),
                        };
                        bad(
                            o.line,
                            format!("the observation ({sel}) maps to no observed output (outputs: {})", describe()),
                        )
                    })?;
                let out = &layout.outputs[kind];
                let censored = match cell(cens_col) {
                    None => false,
                    Some(0.0) => false,
                    Some(1.0) => true,
                    Some(c) => {
                        return Err(bad(
                            o.line,
                            format!("CENS = {c}: only 0 and 1 (below the limit of quantification, DV = the limit) are supported"),
                        ))
                    }
                };
                let (censored, dv) = match out.lloq {
                    Some(l) if !censored && dv < l => (true, l),
                    _ => (censored, dv),
                };
                let log = out.error.log_scale();
                let yv = if log {
                    if dv <= 0.0 {
                        return Err(bad(
                            o.line,
                            format!("DV = {dv} cannot be log-transformed for the exponential error model"),
                        ));
                    }
                    dv.ln()
                } else {
                    dv
                };
                if first_dose.is_none_or(|d| subj.records[..d].iter().any(|r| r.line == o.line)) {
                    sd.warnings.push(format!(
                        "subject `{}`, line {} of {}: observation at time {} before any dose",
                        subj.id, o.line, ds.file, o.time
                    ));
                }
                sd.obs.push(ObservationPoint { time: o.time, output: out.index });
                sd.y.push(yv);
                sd.dv.push(dv);
                sd.kind.push(kind);
                sd.cens.push(censored);
                sd.log.push(log);
                sd.lines.push(o.line);
            }
            if sd.obs.is_empty() && !allow_empty {
                return Err(EstimationError::NoObservations { file: ds.file.clone(), subject: subj.id.clone() });
            }
            if !has_attrs {
                sd.schedule = Some(schedule);
            }
            out.push(sd);
        }
        Ok(out)
    }

    /// Predictions (on the comparison scale) and their Jacobian by the
    /// parameters `dirs` (row-major, `n_obs × dirs.len()`), at individual
    /// parameters `p`.
    pub fn predict(&self, p: &[f64], dirs: &[usize], st: &SolveSettings) -> Result<Sensitivities, String> {
        let mut s = self.predict_natural(p, dirs, st)?;
        let k = dirs.len();
        for (j, f) in s.predictions.iter_mut().enumerate() {
            if self.log[j] {
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

    /// Predictions on the model's scale and their Jacobian by `dirs`.
    pub fn predict_natural(&self, p: &[f64], dirs: &[usize], st: &SolveSettings) -> Result<Sensitivities, String> {
        if self.obs.is_empty() {
            return Ok(Sensitivities { predictions: Vec::new(), jacobian: Vec::new() });
        }
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
        sensitivities(&prob, st.method, &st.options, dirs).map_err(|e| e.to_string())
    }
}
