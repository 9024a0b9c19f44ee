//! Binding a compiled model to one subject of a NONMEM-layout dataset: its
//! covariate values and the dose attributes the model itself sets. Shared by
//! `simulate` (insilico-jobs) and the population estimators
//! (insilico-estimation).

use insilico_solvers::data::{Dataset, DoseMapping, Subject};

use crate::ast::DoseAttr;
use crate::error::ModelError;
use crate::model::Model;
use crate::system::ModelSystem;

/// The model's covariates for one subject, in [`Model::covariates`] order:
/// the dataset column of the same name (any case), else the model's default.
///
/// Errors (as [`ModelError::Model`] naming the dataset): a covariate with
/// neither a column nor a default, one missing on every record with no
/// default, or one whose value changes within the subject (time-varying
/// covariates are not supported yet).
///
/// ```
/// use insilico_model::{subject::subject_covariates, Model};
/// use insilico_solvers::data::{Dataset, ReadOptions};
/// let m = Model::parse("parameters: k = 1\ncovariates: WT = 70, AGE = 40\nstates: a\nd/dt(a) = -k * a * WT / 70", "m")?;
/// let ds = Dataset::from_str("d.csv", "ID,TIME,AMT,DV,EVID,wt\n1,0,10,.,1,80\n1,1,0,5,0,80\n", &ReadOptions::default()).unwrap();
/// assert_eq!(subject_covariates(&m, &ds, &ds.subjects[0])?, vec![80.0, 40.0]);
/// # Ok::<(), insilico_model::ModelError>(())
/// ```
pub fn subject_covariates(model: &Model, ds: &Dataset, subj: &Subject) -> Result<Vec<f64>, ModelError> {
    let err = |message: String| ModelError::Model { file: ds.file.clone(), message };
    let mut out = Vec::with_capacity(model.covariates().len());
    for cov in model.covariates() {
        let col = ds.covariate_names.iter().position(|n| n.eq_ignore_ascii_case(&cov.name));
        let value = match col {
            None => cov.default.ok_or_else(|| {
                err(format!(
                    "model {} reads covariate `{}`, which is not a column of {} and has no default in the model \
                     (write `covariates: {} = <value>` in the model, or add the column)",
                    model.name(),
                    cov.name,
                    ds.file,
                    cov.name
                ))
            })?,
            Some(k) => {
                let mut value: Option<(f64, usize)> = None;
                for r in &subj.records {
                    let Some(v) = r.covariates.get(k).copied().flatten() else { continue };
                    match value {
                        None => value = Some((v, r.line)),
                        Some((first, line)) if first != v => {
                            return Err(err(format!(
                                "covariate `{}` of subject `{}` changes from {first} (line {line}) to {v} \
                                 (line {}) in {}: time-varying covariates are not supported yet",
                                cov.name, subj.id, r.line, ds.file
                            )))
                        }
                        Some(_) => {}
                    }
                }
                match (value, cov.default) {
                    (Some((v, _)), _) => v,
                    (None, Some(d)) => d,
                    (None, None) => {
                        return Err(err(format!(
                            "covariate `{}` is missing on every record of subject `{}` in {} and the model gives no default",
                            cov.name, subj.id, ds.file
                        )))
                    }
                }
            }
        };
        out.push(value);
    }
    Ok(out)
}

/// `base` plus the dose attributes the model itself sets (`alag(s)`, `f(s)`,
/// `rate(s)`, `dur(s)`) for this subject's system at parameters `p`: a bare
/// parameter stays a parameter (so gradients flow through it), any other
/// expression is evaluated at `p`.
pub fn subject_dose_mapping(sys: &ModelSystem, base: &DoseMapping, p: &[f64]) -> DoseMapping {
    let mut mapping = base.clone();
    for s in 0..sys.model().nstates() {
        for (attr, list) in [
            (DoseAttr::Bioavailability, &mut mapping.bioavailability),
            (DoseAttr::Lag, &mut mapping.lag),
            (DoseAttr::Rate, &mut mapping.rate),
            (DoseAttr::Duration, &mut mapping.duration),
        ] {
            if let Some(src) = sys.dose_attribute(s, attr, p) {
                list.push((s + 1, src));
            }
        }
    }
    mapping
}
