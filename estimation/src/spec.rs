//! The population model: typical values θ, random effects and their
//! covariance Ω, and the residual error model with its parameters σ.

use nalgebra::DMatrix;

use crate::error::EstimationError;

/// Residual error models. `f` is the individual prediction, `y` the
/// observation, `ε ~ N(0, 1)`; the parameters `σ` are standard deviations
/// (`a` additive, `b` proportional), estimated on the log scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorModel {
    /// `y = f + a·ε`: `Var = a²`. σ = `[a]`.
    Additive,
    /// `y = f + b·f·ε`: `Var = b²f²`. σ = `[b]`.
    Proportional,
    /// NONMEM's combined error with independent terms (nlmixr2's
    /// `combined2`): `Var = a² + b²f²`. σ = `[a, b]`.
    Combined2,
    /// Combined error with summed standard deviations (nlmixr2's
    /// `combined1`): `SD = a + b·|f|`. σ = `[a, b]`.
    Combined1,
    /// Exponential error fitted as log-transform-both-sides:
    /// `log y = log f + a·ε`, `Var = a²` on the log scale. σ = `[a]`. The
    /// objective is then that of `log y` (no Jacobian term), as NONMEM's LTBS.
    Exponential,
}

impl ErrorModel {
    /// Parses `additive`, `proportional`, `combined2` (or `combined`),
    /// `combined1`, `exponential` (or `ltbs`), any case.
    ///
    /// ```
    /// use insilico_estimation::ErrorModel;
    /// assert_eq!(ErrorModel::parse("Combined2"), Some(ErrorModel::Combined2));
    /// assert_eq!(ErrorModel::parse("nope"), None);
    /// ```
    pub fn parse(s: &str) -> Option<ErrorModel> {
        match s.to_ascii_lowercase().as_str() {
            "additive" | "add" => Some(ErrorModel::Additive),
            "proportional" | "prop" => Some(ErrorModel::Proportional),
            "combined2" | "combined" => Some(ErrorModel::Combined2),
            "combined1" => Some(ErrorModel::Combined1),
            "exponential" | "exp" | "ltbs" => Some(ErrorModel::Exponential),
            _ => None,
        }
    }
    /// Canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorModel::Additive => "additive",
            ErrorModel::Proportional => "proportional",
            ErrorModel::Combined2 => "combined2",
            ErrorModel::Combined1 => "combined1",
            ErrorModel::Exponential => "exponential",
        }
    }
    /// Names of the σ parameters, in order.
    pub fn sigma_names(&self) -> &'static [&'static str] {
        match self {
            ErrorModel::Additive | ErrorModel::Exponential => &["a"],
            ErrorModel::Proportional => &["b"],
            ErrorModel::Combined2 | ErrorModel::Combined1 => &["a", "b"],
        }
    }
    /// Whether observations and predictions are compared on the log scale.
    pub fn log_scale(&self) -> bool {
        *self == ErrorModel::Exponential
    }
    /// The residual variance at prediction `f` (on the model's comparison
    /// scale) and its derivative by `f`: `(V, dV/df)`.
    ///
    /// ```
    /// use insilico_estimation::ErrorModel;
    /// let (v, dv) = ErrorModel::Combined2.variance(2.0, &[0.1, 0.2]);
    /// assert!((v - (0.01 + 0.04 * 4.0)).abs() < 1e-15 && (dv - 2.0 * 0.04 * 2.0).abs() < 1e-15);
    /// ```
    pub fn variance(&self, f: f64, sigma: &[f64]) -> (f64, f64) {
        match self {
            ErrorModel::Additive | ErrorModel::Exponential => (sigma[0] * sigma[0], 0.0),
            ErrorModel::Proportional => {
                let b2 = sigma[0] * sigma[0];
                (b2 * f * f, 2.0 * b2 * f)
            }
            ErrorModel::Combined2 => {
                let (a2, b2) = (sigma[0] * sigma[0], sigma[1] * sigma[1]);
                (a2 + b2 * f * f, 2.0 * b2 * f)
            }
            ErrorModel::Combined1 => {
                let sd = sigma[0] + sigma[1] * f.abs();
                (sd * sd, 2.0 * sd * sigma[1] * f.signum())
            }
        }
    }
}

/// What a random effect acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtaOn {
    /// Log-normal on a model parameter: `P_i = θ_P · exp(η_i)`.
    LogNormal(String),
    /// A parameter declared under `random:` in the model and used in its
    /// expressions (`CL = TVCL * exp(ETA_CL)`): its value is `η_i`.
    Declared(String),
}

/// A random effect: its name (for reports) and what it acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomEffect {
    /// Name in reports (`eta_ka`, `ETA_CL`).
    pub name: String,
    /// Where it enters the model.
    pub on: EtaOn,
}

impl RandomEffect {
    /// A log-normal random effect `eta_<param>` on `param`.
    pub fn log_normal(param: &str) -> RandomEffect {
        RandomEffect { name: format!("eta_{param}"), on: EtaOn::LogNormal(param.to_string()) }
    }
    /// The model's declared random effect `name` (a `random:` parameter).
    pub fn declared(name: &str) -> RandomEffect {
        RandomEffect { name: name.to_string(), on: EtaOn::Declared(name.to_string()) }
    }
    /// The model parameter this effect acts on.
    pub fn target(&self) -> &str {
        match &self.on {
            EtaOn::LogNormal(p) | EtaOn::Declared(p) => p,
        }
    }
}

/// How Ω is structured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OmegaStructure {
    /// Independent random effects: only the variances are estimated.
    Diagonal,
    /// One full block: every covariance is estimated.
    Block,
}

/// The covariance Ω of the random effects, held as its Cholesky factor `L`
/// (`Ω = L·Lᵀ`) with the log of its diagonal as free parameters, so any
/// parameter vector gives a positive definite Ω.
///
/// ```
/// use insilico_estimation::Omega;
/// let o = Omega::block(&[vec![0.09, 0.02], vec![0.02, 0.04]])?;
/// let back = Omega::from_params(o.structure(), 2, &o.to_params());
/// assert!((back.matrix()[(1, 0)] - 0.02).abs() < 1e-15);
/// assert!(Omega::diagonal(&[0.1, -0.2]).is_err());
/// # Ok::<(), insilico_estimation::EstimationError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Omega {
    structure: OmegaStructure,
    chol: DMatrix<f64>,
}

impl Omega {
    /// A diagonal Ω from the variances `ω²` (each positive and finite).
    pub fn diagonal(variances: &[f64]) -> Result<Omega, EstimationError> {
        if let Some((k, v)) = variances.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
            return Err(EstimationError::OmegaNotPositiveDefinite {
                reason: format!("variance {} of the diagonal is {v}; variances must be positive", k + 1),
            });
        }
        let q = variances.len();
        Ok(Omega {
            structure: OmegaStructure::Diagonal,
            chol: DMatrix::from_fn(q, q, |i, j| if i == j { variances[i].sqrt() } else { 0.0 }),
        })
    }

    /// A full block Ω from its rows (symmetric, positive definite).
    pub fn block(rows: &[Vec<f64>]) -> Result<Omega, EstimationError> {
        let q = rows.len();
        let bad = |reason: String| EstimationError::OmegaNotPositiveDefinite { reason };
        if let Some(r) = rows.iter().position(|r| r.len() != q) {
            return Err(bad(format!("row {} has {} entries, Ω is {q} × {q}", r + 1, rows[r].len())));
        }
        let m = DMatrix::from_fn(q, q, |i, j| rows[i][j]);
        for i in 0..q {
            for j in 0..i {
                let (a, b) = (m[(i, j)], m[(j, i)]);
                if !a.is_finite() || (a - b).abs() > 1e-12 * (a.abs() + b.abs()).max(1e-300) {
                    return Err(bad(format!(
                        "entries ({}, {}) = {a} and ({}, {}) = {b} differ",
                        i + 1,
                        j + 1,
                        j + 1,
                        i + 1
                    )));
                }
            }
        }
        let chol = cholesky(&m).map_err(bad)?;
        Ok(Omega { structure: OmegaStructure::Block, chol })
    }

    /// Rebuilds Ω from the parameter vector of [`Omega::to_params`].
    pub fn from_params(structure: OmegaStructure, q: usize, params: &[f64]) -> Omega {
        let mut chol = DMatrix::zeros(q, q);
        let mut k = 0;
        for i in 0..q {
            chol[(i, i)] = params[k].exp();
            k += 1;
        }
        if structure == OmegaStructure::Block {
            for i in 0..q {
                for j in 0..i {
                    chol[(i, j)] = params[k];
                    k += 1;
                }
            }
        }
        Omega { structure, chol }
    }

    /// Free parameters: `log L_ii` for each i, then (block only) `L_ij`, `j < i`, row by row.
    pub fn to_params(&self) -> Vec<f64> {
        let q = self.dim();
        let mut out: Vec<f64> = (0..q).map(|i| self.chol[(i, i)].ln()).collect();
        if self.structure == OmegaStructure::Block {
            for i in 0..q {
                for j in 0..i {
                    out.push(self.chol[(i, j)]);
                }
            }
        }
        out
    }

    /// Number of free parameters.
    pub fn n_params(&self) -> usize {
        Omega::count_params(self.structure, self.dim())
    }

    /// Number of free parameters of a `q × q` Ω of this structure.
    pub fn count_params(structure: OmegaStructure, q: usize) -> usize {
        match structure {
            OmegaStructure::Diagonal => q,
            OmegaStructure::Block => q * (q + 1) / 2,
        }
    }

    /// Its structure.
    pub fn structure(&self) -> OmegaStructure {
        self.structure
    }
    /// Its dimension (the number of random effects).
    pub fn dim(&self) -> usize {
        self.chol.nrows()
    }
    /// The Cholesky factor `L`.
    pub fn cholesky(&self) -> &DMatrix<f64> {
        &self.chol
    }
    /// Ω itself.
    pub fn matrix(&self) -> DMatrix<f64> {
        &self.chol * self.chol.transpose()
    }
    /// `log det Ω`.
    pub fn log_det(&self) -> f64 {
        2.0 * (0..self.dim()).map(|i| self.chol[(i, i)].ln()).sum::<f64>()
    }
    /// `Ω⁻¹`.
    pub fn inverse(&self) -> DMatrix<f64> {
        let q = self.dim();
        let mut inv = DMatrix::identity(q, q);
        // L⁻¹ by forward substitution, then Ω⁻¹ = L⁻ᵀ L⁻¹.
        let mut linv = DMatrix::zeros(q, q);
        for c in 0..q {
            for i in 0..q {
                let mut s = if i == c { 1.0 } else { 0.0 };
                for k in 0..i {
                    s -= self.chol[(i, k)] * linv[(k, c)];
                }
                linv[(i, c)] = s / self.chol[(i, i)];
            }
        }
        inv.gemm(1.0, &linv.transpose(), &linv, 0.0);
        inv
    }
}

/// The lower Cholesky factor of a symmetric matrix, or why it is not positive definite.
pub(crate) fn cholesky(m: &DMatrix<f64>) -> Result<DMatrix<f64>, String> {
    let q = m.nrows();
    let mut l = DMatrix::zeros(q, q);
    for j in 0..q {
        let mut d = m[(j, j)];
        for k in 0..j {
            d -= l[(j, k)] * l[(j, k)];
        }
        if !(d > 0.0 && d.is_finite()) {
            return Err(format!(
                "pivot {} of its Cholesky factorisation is {d:e} (a leading minor is not positive)",
                j + 1
            ));
        }
        let d = d.sqrt();
        l[(j, j)] = d;
        for i in j + 1..q {
            let mut s = m[(i, j)];
            for k in 0..j {
                s -= l[(i, k)] * l[(j, k)];
            }
            l[(i, j)] = s / d;
        }
    }
    Ok(l)
}

/// What to estimate: the population model on top of a compiled model.
///
/// Typical values listed in `theta` are estimated (on the log scale when the
/// start is positive and the parameter is positive by declaration or carries
/// a log-normal random effect); every other parameter keeps `fixed` or the
/// model's default. Declared `random:` parameters without an entry in
/// `random` stay 0.
#[derive(Debug, Clone, PartialEq)]
pub struct PopulationSpec {
    /// Estimated typical values and their starts, by parameter name.
    pub theta: Vec<(String, f64)>,
    /// Parameters held at a given value (others keep the model's default).
    pub fixed: Vec<(String, f64)>,
    /// The random effects, in the order of Ω's rows.
    pub random: Vec<RandomEffect>,
    /// Initial Ω (and its structure).
    pub omega: Omega,
    /// The residual error model.
    pub error: ErrorModel,
    /// Initial σ (see [`ErrorModel::sigma_names`]).
    pub sigma: Vec<f64>,
    /// The model output compared with DV (default: the first).
    pub output: Option<String>,
    /// CMT of dose records without one (default 1).
    pub dose_cmt: Option<usize>,
    /// CMT of observation records without one (default: the state `central`, else 1).
    pub obs_cmt: Option<usize>,
    /// Several observed outputs, each with its own error model and σ, mapped
    /// from observation records by CMT or a `DVID` column (see
    /// [`ObservedOutput`]). Empty (the default of every constructor): one
    /// output, `output` with `error` and `sigma`, which every observation
    /// record feeds. When not empty, `error` and `sigma` are ignored and
    /// `output` must be `None`. FOCE-I ([`crate::focei::fit`]) takes one
    /// output without censoring; the individual posterior
    /// ([`crate::posterior`]) takes any number, with M3 censoring.
    pub outputs: Vec<ObservedOutput>,
}

/// One observed model output in a multi-output [`PopulationSpec`]: which
/// observation records feed it, its residual error model and σ, and an
/// optional lower limit of quantification.
///
/// Censoring (Beal's M3): an observation is below the limit when its record
/// has `CENS = 1` (a `CENS` column; DV is then the limit) or when `lloq` is
/// set and `DV < lloq` (the limit is then `lloq`). Its likelihood term is
/// `−2 ln Φ((LLOQ − f)/√V(f))` in place of `(y − f)²/V + ln V` (on the log
/// scale for the exponential error model).
///
/// ```
/// use insilico_estimation::{ErrorModel, ObservedOutput};
/// let parent = ObservedOutput::new("cp", ErrorModel::Proportional, &[0.1]).with_cmt(2).with_lloq(0.05);
/// assert_eq!(parent.cmt, Some(2));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedOutput {
    /// The model output (by name).
    pub name: String,
    /// Observation records with this CMT feed the output (a record without
    /// CMT has the spec's `obs_cmt`).
    pub cmt: Option<usize>,
    /// Or: records whose `DVID` column has this value (takes precedence over `cmt`).
    pub dvid: Option<f64>,
    /// Its residual error model.
    pub error: ErrorModel,
    /// Its σ (see [`ErrorModel::sigma_names`]).
    pub sigma: Vec<f64>,
    /// Lower limit of quantification: `DV < lloq` is censored (M3).
    pub lloq: Option<f64>,
}

impl ObservedOutput {
    /// Output `name` with its error model and σ, fed by every observation
    /// record until [`ObservedOutput::with_cmt`] or [`ObservedOutput::with_dvid`] says otherwise.
    pub fn new(name: &str, error: ErrorModel, sigma: &[f64]) -> ObservedOutput {
        ObservedOutput { name: name.to_string(), cmt: None, dvid: None, error, sigma: sigma.to_vec(), lloq: None }
    }
    /// Fed by observation records with this CMT.
    pub fn with_cmt(mut self, cmt: usize) -> ObservedOutput {
        self.cmt = Some(cmt);
        self
    }
    /// Fed by observation records with this DVID.
    pub fn with_dvid(mut self, dvid: f64) -> ObservedOutput {
        self.dvid = Some(dvid);
        self
    }
    /// With a lower limit of quantification (M3 for `DV < lloq`).
    pub fn with_lloq(mut self, lloq: f64) -> ObservedOutput {
        self.lloq = Some(lloq);
        self
    }
}

impl PopulationSpec {
    /// A spec with log-normal random effects (diagonal Ω with variances
    /// `omega2`) on the named parameters, all of `theta` estimated.
    ///
    /// ```
    /// use insilico_estimation::{ErrorModel, PopulationSpec};
    /// let spec = PopulationSpec::log_normal(&[("ka", 1.5), ("CL", 2.8), ("V", 32.0)], &[("ka", 0.3), ("CL", 0.1), ("V", 0.02)], ErrorModel::Additive, &[0.7])?;
    /// assert_eq!(spec.random.len(), 3);
    /// # Ok::<(), insilico_estimation::EstimationError>(())
    /// ```
    pub fn log_normal(
        theta: &[(&str, f64)],
        omega2: &[(&str, f64)],
        error: ErrorModel,
        sigma: &[f64],
    ) -> Result<PopulationSpec, EstimationError> {
        Ok(PopulationSpec {
            theta: theta.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            fixed: Vec::new(),
            random: omega2.iter().map(|(n, _)| RandomEffect::log_normal(n)).collect(),
            omega: Omega::diagonal(&omega2.iter().map(|(_, v)| *v).collect::<Vec<_>>())?,
            error,
            sigma: sigma.to_vec(),
            output: None,
            dose_cmt: None,
            obs_cmt: None,
            outputs: Vec::new(),
        })
    }
}
