//! Mammillary pharmacokinetic models (1, 2 or 3 compartments, oral or IV,
//! linear or Michaelis–Menten elimination) with exact derivatives, and
//! closed-form solutions of the linear ones (see [`closed_form`]).
//!
//! The equations, state order, parameter order and units are listed in the
//! [crate documentation](crate).

pub mod closed_form;

pub use closed_form::{closed_form_amounts, closed_form_concentration, ClosedFormDose, LinearPkSolution};

use insilico_solvers::System;
use std::fmt;

/// How the drug enters the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Absorption {
    /// First-order absorption from a depot compartment (rate constant `ka`).
    Oral,
    /// Doses go straight into the central compartment (no depot).
    Iv,
}

/// How the drug leaves the central compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elimination {
    /// First order: rate `CL · C` (amount per time).
    Linear,
    /// Saturable: rate `VMAX · C / (KM + C)` (amount per time).
    MichaelisMenten,
}

/// Errors of the PK models and of their closed forms.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PkError {
    /// [`PkModel::from_name`] got a name it does not know.
    #[error("unknown PK model `{name}`; valid names are: {valid}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// Only 1, 2 or 3 compartments are supported.
    #[error("unsupported number of compartments {0} (expected 1, 2 or 3)")]
    Compartments(usize),
    /// A parameter vector of the wrong length.
    #[error("model {model} expects {expected} parameters ({names}), got {got}")]
    ParamCount {
        /// Model name.
        model: String,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
        /// Expected parameter names, comma-separated.
        names: String,
    },
    /// A parameter that is not finite and strictly positive.
    #[error("parameter {name} = {value} must be finite and positive")]
    InvalidParam {
        /// Parameter name.
        name: String,
        /// Offending value.
        value: f64,
    },
    /// Closed forms exist only for linear elimination.
    #[error("model {0} has Michaelis-Menten elimination: no closed form")]
    NotLinear(String),
    /// A dose that cannot be applied.
    #[error("dose #{index}: {reason}")]
    InvalidDose {
        /// Position of the dose in the list given.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A schedule event the closed form does not handle.
    #[error("schedule event #{index} is not supported by the closed form: {reason}")]
    UnsupportedEvent {
        /// Position of the event in the schedule.
        index: usize,
        /// What is not supported.
        reason: String,
    },
    /// An output buffer of the wrong length.
    #[error("output buffer has length {got}, expected {expected}")]
    BufferLength {
        /// Required length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// Output times that go backwards.
    #[error("output times must be finite and non-decreasing (time #{index} = {value})")]
    UnsortedTimes {
        /// Position of the first offending time.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// Disposition rate constants that coincide to working precision (only
    /// possible when an intercompartmental clearance is vanishingly small).
    #[error("disposition eigenvalues {0:?} are not distinct to working precision")]
    DegenerateDisposition(Vec<f64>),
}

const NAMES: [&str; 12] = [
    "pk-1cmt-oral",
    "pk-2cmt-oral",
    "pk-3cmt-oral",
    "pk-1cmt-iv",
    "pk-2cmt-iv",
    "pk-3cmt-iv",
    "pk-1cmt-oral-mm",
    "pk-2cmt-oral-mm",
    "pk-3cmt-oral-mm",
    "pk-1cmt-iv-mm",
    "pk-2cmt-iv-mm",
    "pk-3cmt-iv-mm",
];

/// A mammillary PK model: 1–3 disposition compartments, oral (depot) or IV
/// input, linear or Michaelis–Menten elimination from the central
/// compartment, plus a last state holding the amount eliminated.
///
/// States are amounts; the single output is the concentration
/// `output_scale · central / V1`. Every derivative required by
/// [`System`] is written by hand. Build models with [`PkModel::new`] or
/// [`PkModel::from_name`] (the fields are public for pattern matching; a
/// hand-built model with `compartments ∉ {1, 2, 3}` panics when used).
///
/// # Example
/// ```
/// use insilico_mechanistic::pk::PkModel;
/// use insilico_solvers::System;
///
/// let model = PkModel::from_name("pk-2cmt-oral").unwrap();
/// assert_eq!(model.param_names(), ["ka", "CL", "V1", "Q", "V2"]);
/// assert_eq!(model.state_names(), ["depot", "central", "peripheral1", "eliminated"]);
/// let p = [1.2, 5.0, 20.0, 3.0, 40.0]; // ka 1/h, CL L/h, V1 L, Q L/h, V2 L
/// model.validate_params(&p).unwrap();
///
/// let x = [100.0, 50.0, 10.0, 0.0]; // mg
/// let mut dx = [0.0; 4];
/// model.rhs(0.0, &x, &[], &p, &mut dx);
/// assert_eq!(dx[0], -120.0); // depot' = -ka·depot
/// assert_eq!(dx[3], 12.5); // eliminated' = CL/V1·central
/// assert!(dx.iter().sum::<f64>().abs() < 1e-12); // mass is conserved
/// assert_eq!(model.output(0, 0.0, &x, &p), 2.5); // mg/L
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PkModel {
    /// Number of disposition compartments (central + peripherals): 1, 2 or 3.
    pub compartments: usize,
    /// Oral (with depot) or IV.
    pub absorption: Absorption,
    /// Linear or Michaelis–Menten elimination.
    pub elimination: Elimination,
    /// Factor applied to the concentration output (1 by default; e.g. 1000
    /// to report µg/L from mg and L).
    pub output_scale: f64,
}

impl fmt::Display for PkModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pk-{}cmt-{}{}",
            self.compartments,
            match self.absorption {
                Absorption::Oral => "oral",
                Absorption::Iv => "iv",
            },
            match self.elimination {
                Elimination::Linear => "",
                Elimination::MichaelisMenten => "-mm",
            }
        )
    }
}

impl PkModel {
    /// A model with `compartments` ∈ {1, 2, 3} disposition compartments and
    /// output scale 1.
    pub fn new(compartments: usize, absorption: Absorption, elimination: Elimination) -> Result<Self, PkError> {
        if !(1..=3).contains(&compartments) {
            return Err(PkError::Compartments(compartments));
        }
        Ok(PkModel { compartments, absorption, elimination, output_scale: 1.0 })
    }

    /// The model called `name`, one of [`PkModel::names`]
    /// (`"pk-{1,2,3}cmt-{oral,iv}"`, optionally suffixed `"-mm"`).
    pub fn from_name(name: &str) -> Result<Self, PkError> {
        let unknown = || PkError::UnknownModel { name: name.to_string(), valid: NAMES.join(", ") };
        let rest = name.strip_prefix("pk-").ok_or_else(unknown)?;
        let (rest, elimination) = match rest.strip_suffix("-mm") {
            Some(r) => (r, Elimination::MichaelisMenten),
            None => (rest, Elimination::Linear),
        };
        let (cmt, route) = rest.split_once("cmt-").ok_or_else(unknown)?;
        let compartments = match cmt {
            "1" => 1,
            "2" => 2,
            "3" => 3,
            _ => return Err(unknown()),
        };
        let absorption = match route {
            "oral" => Absorption::Oral,
            "iv" => Absorption::Iv,
            _ => return Err(unknown()),
        };
        Self::new(compartments, absorption, elimination)
    }

    /// Every name [`PkModel::from_name`] accepts.
    pub fn names() -> &'static [&'static str] {
        &NAMES
    }

    /// The canonical name of this model (inverse of [`PkModel::from_name`]).
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Sets the factor applied to the concentration output.
    pub fn with_output_scale(mut self, s: f64) -> Self {
        self.output_scale = s;
        self
    }

    /// Number of dosable compartments (NONMEM CMT = state index + 1 for
    /// these; the eliminated-amount state, last, is not one of them).
    pub fn n_compartments(&self) -> usize {
        self.nstates() - 1
    }

    /// `1` for oral models (the depot comes first), `0` for IV ones.
    #[inline]
    fn off(&self) -> usize {
        match self.absorption {
            Absorption::Oral => 1,
            Absorption::Iv => 0,
        }
    }

    #[inline]
    fn oral(&self) -> bool {
        self.absorption == Absorption::Oral
    }

    #[inline]
    fn mm(&self) -> bool {
        self.elimination == Elimination::MichaelisMenten
    }

    /// Number of peripheral compartments (0, 1 or 2).
    #[inline]
    pub fn n_peripherals(&self) -> usize {
        self.compartments - 1
    }

    /// State index of the depot (oral models only).
    pub fn depot(&self) -> Option<usize> {
        self.oral().then_some(0)
    }

    /// State index of the central compartment.
    #[inline]
    pub fn central(&self) -> usize {
        self.off()
    }

    /// State index of peripheral compartment `k` (0-based, `k < n_peripherals()`).
    #[inline]
    pub fn peripheral(&self, k: usize) -> usize {
        self.off() + 1 + k
    }

    /// State index of the eliminated amount (the last state).
    #[inline]
    pub fn eliminated(&self) -> usize {
        self.off() + self.compartments
    }

    /// Parameter index of `ka` (oral models only).
    pub fn ka_index(&self) -> Option<usize> {
        self.oral().then_some(0)
    }

    /// Parameter index of the central volume (`V` or `V1`).
    #[inline]
    pub fn v1_index(&self) -> usize {
        self.off() + if self.mm() { 2 } else { 1 }
    }

    /// Parameter index of `CL` (linear) or `VMAX` (Michaelis–Menten); `KM`
    /// follows `VMAX`.
    #[inline]
    pub fn elimination_index(&self) -> usize {
        self.off()
    }

    /// Parameter index of the intercompartmental clearance of peripheral `k`.
    #[inline]
    pub fn q_index(&self, k: usize) -> usize {
        self.v1_index() + 1 + 2 * k
    }

    /// Parameter index of the volume of peripheral `k`.
    #[inline]
    pub fn vp_index(&self, k: usize) -> usize {
        self.v1_index() + 2 + 2 * k
    }

    /// Checks the length of `p` and that every parameter (all are rates,
    /// clearances, volumes or concentrations) is finite and strictly positive.
    pub fn validate_params(&self, p: &[f64]) -> Result<(), PkError> {
        let names = self.param_names();
        if p.len() != names.len() {
            return Err(PkError::ParamCount {
                model: self.name(),
                expected: names.len(),
                got: p.len(),
                names: names.join(", "),
            });
        }
        for (name, &value) in names.iter().zip(p) {
            if !(value.is_finite() && value > 0.0) {
                return Err(PkError::InvalidParam { name: name.clone(), value });
            }
        }
        Ok(())
    }

    /// Elimination flux `e` (amount/time) and `∂e/∂C` at concentration `c`.
    #[inline(always)]
    fn elim(&self, c: f64, p: &[f64]) -> (f64, f64) {
        let i = self.elimination_index();
        if self.mm() {
            let (vmax, km) = (p[i], p[i + 1]);
            let d = 1.0 / (km + c);
            (vmax * c * d, vmax * km * d * d)
        } else {
            (p[i] * c, p[i])
        }
    }

    /// Partial derivatives of the elimination flux with respect to its own
    /// parameters (`CL`, or `VMAX` and `KM`) at concentration `c`.
    #[inline(always)]
    fn elim_dparams(&self, c: f64, p: &[f64]) -> [f64; 2] {
        let i = self.elimination_index();
        if self.mm() {
            let (vmax, km) = (p[i], p[i + 1]);
            let d = 1.0 / (km + c);
            [c * d, -vmax * c * d * d]
        } else {
            [c, 0.0]
        }
    }
}

impl System for PkModel {
    #[inline]
    fn nstates(&self) -> usize {
        self.off() + self.compartments + 1
    }

    #[inline]
    fn nparams(&self) -> usize {
        self.off() + if self.mm() { 2 } else { 1 } + 1 + 2 * self.n_peripherals()
    }

    #[inline]
    fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) {
        let ic = self.central();
        let v1 = p[self.v1_index()];
        let c = x[ic] / v1;
        let (e, _) = self.elim(c, p);
        let mut dc = -e;
        if self.oral() {
            let a = p[0] * x[0];
            dx[0] = -a;
            dc += a;
        }
        for k in 0..self.n_peripherals() {
            let ik = self.peripheral(k);
            let f = p[self.q_index(k)] * (c - x[ik] / p[self.vp_index(k)]);
            dx[ik] = f;
            dc -= f;
        }
        dx[ic] = dc;
        dx[self.eliminated()] = e;
    }

    #[inline]
    fn jvp(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let ic = self.central();
        let v1 = p[self.v1_index()];
        let (_, de_dc) = self.elim(x[ic] / v1, p);
        let de = de_dc / v1 * v[ic];
        let mut oc = -de;
        if self.oral() {
            let a = p[0] * v[0];
            out[0] = -a;
            oc += a;
        }
        for k in 0..self.n_peripherals() {
            let ik = self.peripheral(k);
            let f = p[self.q_index(k)] * (v[ic] / v1 - v[ik] / p[self.vp_index(k)]);
            out[ik] = f;
            oc -= f;
        }
        out[ic] = oc;
        out[self.eliminated()] = de;
    }

    #[inline]
    fn vjp_state(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let ic = self.central();
        let ie = self.eliminated();
        let v1 = p[self.v1_index()];
        let (_, de_dc) = self.elim(x[ic] / v1, p);
        let mut oc = de_dc / v1 * (w[ie] - w[ic]);
        if self.oral() {
            out[0] = p[0] * (w[ic] - w[0]);
        }
        for k in 0..self.n_peripherals() {
            let ik = self.peripheral(k);
            let q = p[self.q_index(k)];
            oc += q / v1 * (w[ik] - w[ic]);
            out[ik] = q / p[self.vp_index(k)] * (w[ic] - w[ik]);
        }
        out[ic] = oc;
        out[ie] = 0.0;
    }

    fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let ic = self.central();
        let iv1 = self.v1_index();
        let ie = self.elimination_index();
        let v1 = p[iv1];
        let c = x[ic] / v1;
        let dc_dv1 = -c / v1;
        let (_, de_dc) = self.elim(c, p);
        let g = self.elim_dparams(c, p);
        let mut de = g[0] * v[ie] + de_dc * dc_dv1 * v[iv1];
        if self.mm() {
            de += g[1] * v[ie + 1];
        }
        let mut oc = -de;
        if self.oral() {
            let a = x[0] * v[0];
            out[0] = -a;
            oc += a;
        }
        for k in 0..self.n_peripherals() {
            let ik = self.peripheral(k);
            let (iq, ivk) = (self.q_index(k), self.vp_index(k));
            let (q, vk) = (p[iq], p[ivk]);
            let ck = x[ik] / vk;
            let f = (c - ck) * v[iq] + q * dc_dv1 * v[iv1] + q * ck / vk * v[ivk];
            out[ik] = f;
            oc -= f;
        }
        out[ic] = oc;
        out[self.eliminated()] = de;
    }

    #[inline]
    fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let ic = self.central();
        let iv1 = self.v1_index();
        let ie = self.elimination_index();
        let v1 = p[iv1];
        let c = x[ic] / v1;
        let dc_dv1 = -c / v1;
        let (_, de_dc) = self.elim(c, p);
        let g = self.elim_dparams(c, p);
        let we = w[self.eliminated()] - w[ic];
        if self.oral() {
            out[0] = x[0] * (w[ic] - w[0]);
        }
        out[ie] = g[0] * we;
        if self.mm() {
            out[ie + 1] = g[1] * we;
        }
        let mut ov1 = de_dc * dc_dv1 * we;
        for k in 0..self.n_peripherals() {
            let ik = self.peripheral(k);
            let (iq, ivk) = (self.q_index(k), self.vp_index(k));
            let (q, vk) = (p[iq], p[ivk]);
            let ck = x[ik] / vk;
            let wk = w[ik] - w[ic];
            out[iq] = (c - ck) * wk;
            out[ivk] = q * ck / vk * wk;
            ov1 += q * dc_dv1 * wk;
        }
        out[iv1] = ov1;
    }

    fn jacobian_sparsity(&self) -> Option<Vec<(usize, usize)>> {
        let ic = self.central();
        let mut s = Vec::with_capacity(3 + 3 * self.n_peripherals() + 2);
        if self.oral() {
            s.push((0, 0));
            s.push((ic, 0));
        }
        s.push((ic, ic));
        for k in 0..self.n_peripherals() {
            let ik = self.peripheral(k);
            s.push((ic, ik));
            s.push((ik, ic));
            s.push((ik, ik));
        }
        s.push((self.eliminated(), ic));
        Some(s)
    }

    fn invariants(&self) -> Vec<Vec<f64>> {
        vec![vec![1.0; self.nstates()]]
    }

    fn accumulators(&self) -> Vec<usize> {
        vec![self.eliminated()]
    }

    #[inline]
    fn noutputs(&self) -> usize {
        1
    }

    #[inline]
    fn output(&self, k: usize, _t: f64, x: &[f64], p: &[f64]) -> f64 {
        debug_assert_eq!(k, 0, "PK models have a single output");
        self.output_scale * x[self.central()] / p[self.v1_index()]
    }

    #[inline]
    fn output_grad(&self, k: usize, _t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        debug_assert_eq!(k, 0, "PK models have a single output");
        let ic = self.central();
        let iv1 = self.v1_index();
        let v1 = p[iv1];
        gx[ic] += self.output_scale / v1;
        gp[iv1] -= self.output_scale * x[ic] / (v1 * v1);
    }

    fn state_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.nstates());
        if self.oral() {
            names.push("depot".to_string());
        }
        names.push("central".to_string());
        for k in 0..self.n_peripherals() {
            names.push(format!("peripheral{}", k + 1));
        }
        names.push("eliminated".to_string());
        names
    }

    fn param_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(self.nparams());
        if self.oral() {
            names.push("ka".into());
        }
        if self.mm() {
            names.push("VMAX".into());
            names.push("KM".into());
        } else {
            names.push("CL".into());
        }
        match self.compartments {
            1 => names.push("V".into()),
            2 => names.extend(["V1", "Q", "V2"].map(String::from)),
            _ => names.extend(["V1", "Q2", "V2", "Q3", "V3"].map(String::from)),
        }
        names
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use insilico_solvers::check_derivatives;

    /// Deterministic pseudo-random numbers in `[lo, hi)` (SplitMix64).
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64)
        }
    }

    /// Plausible parameters for `model` (names drive the ranges).
    pub(crate) fn random_params(model: &PkModel, rng: &mut Rng) -> Vec<f64> {
        model
            .param_names()
            .iter()
            .map(|n| match n.as_str() {
                "ka" => rng.uniform(0.3, 3.0),
                "CL" => rng.uniform(1.0, 10.0),
                "VMAX" => rng.uniform(5.0, 50.0),
                "KM" => rng.uniform(0.5, 5.0),
                "V" | "V1" => rng.uniform(10.0, 50.0),
                "Q" | "Q2" | "Q3" => rng.uniform(1.0, 15.0),
                _ => rng.uniform(20.0, 150.0),
            })
            .collect()
    }

    fn all_models() -> Vec<PkModel> {
        PkModel::names().iter().map(|n| PkModel::from_name(n).unwrap()).collect()
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(PkModel::names().len(), 12);
        for name in PkModel::names() {
            let m = PkModel::from_name(name).unwrap();
            assert_eq!(&m.name(), name);
            assert_eq!(m.output_scale, 1.0);
        }
        let m = PkModel::from_name("pk-3cmt-iv-mm").unwrap();
        assert_eq!(m.compartments, 3);
        assert_eq!(m.absorption, Absorption::Iv);
        assert_eq!(m.elimination, Elimination::MichaelisMenten);
    }

    #[test]
    fn unknown_names_are_errors_listing_valid_ones() {
        for bad in ["pk-4cmt-oral", "pk-1cmt-sc", "pk-2cmt", "2cmt-oral", "pk-1cmt-oral-mmx", ""] {
            let err = PkModel::from_name(bad).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, PkError::UnknownModel { .. }), "{bad}: {msg}");
            assert!(msg.contains("pk-2cmt-oral") && msg.contains("pk-3cmt-iv-mm"), "{msg}");
        }
        assert_eq!(PkModel::new(4, Absorption::Oral, Elimination::Linear), Err(PkError::Compartments(4)));
    }

    #[test]
    fn layouts() {
        let cases: [(&str, &[&str], &[&str]); 6] = [
            ("pk-1cmt-iv", &["CL", "V"], &["central", "eliminated"]),
            ("pk-1cmt-iv-mm", &["VMAX", "KM", "V"], &["central", "eliminated"]),
            ("pk-2cmt-oral", &["ka", "CL", "V1", "Q", "V2"], &["depot", "central", "peripheral1", "eliminated"]),
            (
                "pk-3cmt-oral",
                &["ka", "CL", "V1", "Q2", "V2", "Q3", "V3"],
                &["depot", "central", "peripheral1", "peripheral2", "eliminated"],
            ),
            (
                "pk-3cmt-iv-mm",
                &["VMAX", "KM", "V1", "Q2", "V2", "Q3", "V3"],
                &["central", "peripheral1", "peripheral2", "eliminated"],
            ),
            (
                "pk-2cmt-oral-mm",
                &["ka", "VMAX", "KM", "V1", "Q", "V2"],
                &["depot", "central", "peripheral1", "eliminated"],
            ),
        ];
        for (name, params, states) in cases {
            let m = PkModel::from_name(name).unwrap();
            assert_eq!(m.param_names(), params, "{name}");
            assert_eq!(m.state_names(), states, "{name}");
            assert_eq!(m.nparams(), params.len());
            assert_eq!(m.nstates(), states.len());
            assert_eq!(m.n_compartments(), states.len() - 1);
            assert_eq!(m.central(), states.iter().position(|s| *s == "central").unwrap());
            assert_eq!(m.eliminated(), states.len() - 1);
            assert!(m.param_names()[m.v1_index()].starts_with('V'));
            assert_eq!(m.accumulators(), vec![states.len() - 1]);
            assert_eq!(m.invariants(), vec![vec![1.0; states.len()]]);
            assert_eq!(m.noutputs(), 1);
            assert_eq!(m.ninputs(), 0);
        }
    }

    #[test]
    fn validate_params_names_the_culprit() {
        let m = PkModel::from_name("pk-2cmt-oral").unwrap();
        assert!(m.validate_params(&[1.0, 2.0, 3.0, 4.0, 5.0]).is_ok());
        let e = m.validate_params(&[1.0, 2.0, 3.0]).unwrap_err();
        assert!(matches!(e, PkError::ParamCount { expected: 5, got: 3, .. }), "{e}");
        assert!(e.to_string().contains("ka, CL, V1, Q, V2"));
        let e = m.validate_params(&[1.0, 2.0, -3.0, 4.0, 5.0]).unwrap_err();
        assert_eq!(e, PkError::InvalidParam { name: "V1".into(), value: -3.0 });
        let e = m.validate_params(&[1.0, 2.0, 3.0, 4.0, f64::NAN]).unwrap_err();
        assert!(e.to_string().contains("V2"));
        let e = m.validate_params(&[0.0, 2.0, 3.0, 4.0, 5.0]).unwrap_err();
        assert!(e.to_string().contains("ka"));
    }

    #[test]
    fn derivatives_are_exact_for_every_variant() {
        let mut rng = Rng(42);
        let mut worst: f64 = 0.0;
        for model in all_models() {
            for scale in [1.0, 1000.0] {
                let model = model.with_output_scale(scale);
                for _ in 0..3 {
                    let p = random_params(&model, &mut rng);
                    model.validate_params(&p).unwrap();
                    let x: Vec<f64> = (0..model.nstates()).map(|_| rng.uniform(0.0, 200.0)).collect();
                    let rep = check_derivatives(&model, 0.0, &x, &[], &p, 1e-6);
                    assert!(rep.max_rel_err < 1e-6, "{model}: {rep:?}");
                    worst = worst.max(rep.max_rel_err);
                }
            }
        }
        eprintln!("worst derivative error over all variants: {worst:e}");
    }

    #[test]
    fn rhs_conserves_mass_and_matches_sparsity() {
        let mut rng = Rng(7);
        for model in all_models() {
            let n = model.nstates();
            let sparsity = model.jacobian_sparsity().unwrap();
            for _ in 0..20 {
                let p = random_params(&model, &mut rng);
                let x: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 500.0)).collect();
                let mut dx = vec![0.0; n];
                model.rhs(0.0, &x, &[], &p, &mut dx);
                let scale = dx.iter().map(|v| v.abs()).fold(1.0, f64::max);
                let sum: f64 = dx.iter().sum();
                assert!(sum.abs() < 1e-13 * scale, "{model}: sum {sum}");
                // Every Jacobian entry outside the declared pattern is zero.
                let mut e = vec![0.0; n];
                let mut col = vec![0.0; n];
                for j in 0..n {
                    e.iter_mut().for_each(|v| *v = 0.0);
                    e[j] = 1.0;
                    model.jvp(0.0, &x, &[], &p, &e, &mut col);
                    for (i, &v) in col.iter().enumerate() {
                        if !sparsity.contains(&(i, j)) {
                            assert_eq!(v, 0.0, "{model}: J[{i}][{j}] = {v} not declared");
                        } else {
                            assert_ne!(v, 0.0, "{model}: J[{i}][{j}] declared but zero");
                        }
                    }
                }
                // Invariant: the column sums of J and of ∂f/∂θ vanish too.
                let ones = vec![1.0; n];
                let mut g = vec![0.0; n];
                model.vjp_state(0.0, &x, &[], &p, &ones, &mut g);
                assert!(g.iter().all(|v| v.abs() < 1e-12), "{model}: {g:?}");
                let mut gp = vec![0.0; model.nparams()];
                model.vjp_params(0.0, &x, &[], &p, &ones, &mut gp);
                assert!(gp.iter().all(|v| v.abs() < 1e-10), "{model}: {gp:?}");
            }
        }
    }

    #[test]
    fn equations_by_hand() {
        // pk-2cmt-iv-mm at a hand-checked point.
        let m = PkModel::from_name("pk-2cmt-iv-mm").unwrap();
        let p = [10.0, 2.0, 20.0, 4.0, 40.0]; // VMAX KM V1 Q V2
        let x = [40.0, 80.0, 0.0]; // C = 2, C2 = 2
        let mut dx = [0.0; 3];
        m.rhs(0.0, &x, &[], &p, &mut dx);
        // elimination = 10*2/(2+2) = 5, distribution = 4*(2-2) = 0
        assert_eq!(dx, [-5.0, 0.0, 5.0]);
        assert_eq!(m.output(0, 0.0, &x, &p), 2.0);
        assert_eq!(m.with_output_scale(1000.0).output(0, 0.0, &x, &p), 2000.0);
    }
}
