//! Filtering every subject of a NONMEM-layout dataset: each subject's
//! covariates and dose records (the same binding `simulate` and the
//! population estimators use) become a [`Filter`] and a schedule; its
//! observation records become measurements, mapped to observed outputs by
//! CMT.

use insilico_model::subject::{subject_covariates, subject_dose_mapping};
use insilico_model::{Model, ModelSystem};
use insilico_solvers::data::{Dataset, DoseMapping};
use rayon::prelude::*;

use super::likelihood::{at_bound, maximize_log_scale, NoiseEstimate};
use super::{Filter, FilterMethod, FilterOptions, FilterResult, Measurement, ObservedOutput};
use crate::error::EstimationError;

/// An observed output and the compartment number (NONMEM `CMT`, 1-based) of
/// its observation records.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetOutput {
    /// The output with its error model.
    pub output: ObservedOutput,
    /// Observation records with this CMT are observations of this output.
    pub cmt: usize,
}

/// Settings of [`filter_dataset`].
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetFilterOptions {
    /// Which filter.
    pub method: FilterMethod,
    /// The filter's settings (its `t0` default: each subject's first record or 0).
    pub filter: FilterOptions,
    /// Compartment (1-based) of dose records without CMT.
    pub dose_cmt: usize,
    /// Initial covariance of the states (n × n, row-major) around the model's
    /// initial state; `None`: zero (the initial state is known).
    pub initial_cov: Option<Vec<f64>>,
}

impl Default for DatasetFilterOptions {
    fn default() -> Self {
        DatasetFilterOptions {
            method: FilterMethod::Ekf,
            filter: FilterOptions::default(),
            dose_cmt: 1,
            initial_cov: None,
        }
    }
}

/// One subject's filter output.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectFilter {
    /// The subject's ID.
    pub id: String,
    /// Steps (one per observation record; a missing DV or MDV 1 gives a
    /// prediction-only step) and the log-likelihood.
    pub result: FilterResult,
    /// Warnings naming the subject (no observations, ...).
    pub warnings: Vec<String>,
}

/// Filters every subject of `data` with `model`.
///
/// `params` holds the model's full parameter vector per subject, in dataset
/// order (or one vector shared by every subject). Observation records
/// (EVID 0) are mapped to `outputs` by their CMT (records without CMT take
/// the first output's); one with a DV and MDV 0 is assimilated, one with a
/// missing DV or MDV 1 is a prediction-only step. A record with a value
/// whose CMT maps to no output is an error naming the subject and line. Subjects run in parallel; results are in
/// dataset order and identical for any thread count.
///
/// ```
/// use insilico_estimation::filter::{filter_dataset, DatasetFilterOptions, DatasetOutput, ObservedOutput};
/// use insilico_estimation::ErrorModel;
/// use insilico_solvers::data::{Dataset, ReadOptions};
/// let model = insilico_model::Model::parse(
///     "parameters: k = 0.2, s = 0.05\nstates: a\nd/dt(a) = -k * a\nnoise: a ~ s * a\noutput: a", "decay")?;
/// let csv = "ID,TIME,AMT,DV,EVID,CMT\n1,0,10,.,1,1\n1,1,0,8.1,0,1\n1,2,0,6.9,0,1\n2,0,20,.,1,1\n2,3,0,11,0,1\n";
/// let data = Dataset::from_str("d.csv", csv, &ReadOptions::default()).unwrap();
/// let out = DatasetOutput { output: ObservedOutput::new(&model, "a", ErrorModel::Proportional, &[0.1])?, cmt: 1 };
/// let res = filter_dataset(&model, &data, &[vec![0.2, 0.05]], &[out], &DatasetFilterOptions::default())?;
/// assert_eq!((res.len(), res[0].result.steps.len(), res[1].result.steps.len()), (2, 2, 1));
/// # Ok::<(), insilico_estimation::EstimationError>(())
/// ```
pub fn filter_dataset(
    model: &Model,
    data: &Dataset,
    params: &[Vec<f64>],
    outputs: &[DatasetOutput],
    opts: &DatasetFilterOptions,
) -> Result<Vec<SubjectFilter>, EstimationError> {
    if data.subjects.is_empty() {
        return Err(EstimationError::EmptyDataset { file: data.file.clone() });
    }
    if params.len() != 1 && params.len() != data.subjects.len() {
        return Err(EstimationError::Spec(format!(
            "{} parameter vectors for the {} subjects of {} (give one per subject, or one for all)",
            params.len(),
            data.subjects.len(),
            data.file
        )));
    }
    let Some(first) = outputs.first() else {
        return Err(EstimationError::Spec("no observed output given".into()));
    };
    let n = model.nstates();
    for o in outputs {
        if o.cmt == 0 || o.cmt > n {
            return Err(EstimationError::Spec(format!(
                "output `{}` is observed in CMT {} but model {} has compartments 1..={n}",
                o.output.name,
                o.cmt,
                model.name()
            )));
        }
    }
    let base = DoseMapping::new(n, opts.dose_cmt, first.cmt);
    let observed: Vec<ObservedOutput> = outputs.iter().map(|o| o.output.clone()).collect();
    let results: Vec<Result<SubjectFilter, EstimationError>> = data
        .subjects
        .par_iter()
        .enumerate()
        .map(|(i, subj)| {
            let p = if params.len() == 1 { &params[0] } else { &params[i] };
            let cov = subject_covariates(model, data, subj)?;
            let sys = ModelSystem::new(model, &cov)?;
            let (schedule, records) = subj.to_schedule(data, &subject_dose_mapping(&sys, &base, p))?;
            let mut meas = Vec::new();
            for r in &records {
                let value = if r.mdv { None } else { r.dv };
                let Some(k) = outputs.iter().position(|o| o.cmt == r.cmt) else {
                    if value.is_none() {
                        continue; // a prediction-only record of no observed output
                    }
                    return Err(EstimationError::Observation {
                        file: data.file.clone(),
                        subject: subj.id.clone(),
                        line: r.line,
                        reason: format!(
                            "observation in CMT {}, which maps to no observed output (outputs by CMT: {})",
                            r.cmt,
                            outputs
                                .iter()
                                .map(|o| format!("{} = {}", o.cmt, o.output.name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                };
                meas.push(Measurement { time: r.time, output: k, value, line: Some(r.line) });
            }
            let mut warnings = Vec::new();
            if meas.iter().all(|m| m.value.is_none()) {
                warnings.push(format!("subject `{}` of {} has no observations: prediction only", subj.id, data.file));
            }
            let mut fopts = opts.filter;
            if fopts.t0.is_none() {
                fopts.t0 = Some(subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min));
            }
            let mut filter = Filter::new(model, p, &cov, &observed)?.with_options(fopts).with_label(&subj.id);
            if let Some(c) = &opts.initial_cov {
                let m0 = filter.mean0.clone();
                filter = filter.with_initial(&m0, c)?;
            }
            let result = filter.run(&schedule, &meas, opts.method).map_err(|e| match e {
                EstimationError::Filter(r) => {
                    EstimationError::Filter(format!("subject `{}` of {}: {r}", subj.id, data.file))
                }
                e => e,
            })?;
            Ok(SubjectFilter { id: subj.id.clone(), result, warnings })
        })
        .collect();
    results.into_iter().collect()
}

/// Maximises the summed log-likelihood of every subject of `data` over a
/// common scale `λ` of the declared noise SDs (`g → λ g`, on top of
/// `opts.filter.noise_scale`) in `[lo, hi]`, to relative precision 1e-6, with
/// the filter of `opts.method` (the EKF or UKF; the particle filter's
/// likelihood is random and not for this). `value` is the scale found.
pub fn estimate_dataset_noise_scale(
    model: &Model,
    data: &Dataset,
    params: &[Vec<f64>],
    outputs: &[DatasetOutput],
    opts: &DatasetFilterOptions,
    lo: f64,
    hi: f64,
) -> Result<NoiseEstimate, EstimationError> {
    if opts.method == FilterMethod::Particle {
        return Err(EstimationError::Spec(
            "the noise scale is estimated with the EKF or UKF likelihood, not the particle filter's".into(),
        ));
    }
    if model.noise().iter().all(|g| g.is_none()) {
        return Err(EstimationError::Spec(format!(
            "model {} declares no process noise (`noise: state ~ SD`) to scale",
            model.name()
        )));
    }
    let (value, log_likelihood, evaluations) = maximize_log_scale(
        |lambda| {
            let mut o = opts.clone();
            o.filter.noise_scale *= lambda;
            let res = filter_dataset(model, data, params, outputs, &o)?;
            Ok(res.iter().map(|s| s.result.log_likelihood).sum())
        },
        lo,
        hi,
        1e-6,
    )?;
    Ok(NoiseEstimate {
        name: "noise_scale".into(),
        value,
        log_likelihood,
        evaluations,
        at_bound: at_bound(value, lo, hi),
    })
}
