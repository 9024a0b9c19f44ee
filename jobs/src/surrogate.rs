//! Surrogate "truth" models for held-out checks of `insilico fit` that the
//! mechanistic crate does not provide.
//!
//! [`OralMmLinear`] is a one-compartment oral model whose elimination is the
//! sum of a linear clearance and a Michaelis–Menten pathway,
//! `CL·C + VMAX·C/(KM + C)`: the usual description of a drug cleared both by
//! a non-saturable route (e.g. renal filtration) and by a saturable one
//! (e.g. an enzyme). Unlike pure Michaelis–Menten elimination, its flux keeps
//! growing linearly at high concentrations, so a learned elimination that
//! was built to saturate is not automatically right against it.
//!
//! # Example
//! ```
//! use insilico_jobs::surrogate::OralMmLinear;
//! use insilico_jobs::solvers::{check_derivatives, System};
//!
//! let m = OralMmLinear::default();
//! assert_eq!(m.param_names(), ["ka", "CL", "VMAX", "KM", "V"]);
//! let p = [1.0, 0.5, 8.0, 2.5, 20.0]; // 1/h, L/h, mg/h, mg/L, L
//! let x = [50.0, 60.0, 10.0]; // depot, central, eliminated (mg); C = 3 mg/L
//! let mut dx = [0.0; 3];
//! m.rhs(0.0, &x, &[], &p, &mut dx);
//! let elim = 0.5 * 3.0 + 8.0 * 3.0 / (2.5 + 3.0);
//! assert!((dx[2] - elim).abs() < 1e-12 && dx.iter().sum::<f64>().abs() < 1e-12);
//! assert!(check_derivatives(&m, 0.0, &x, &[], &p, 1e-6).max_rel_err < 1e-6);
//! ```

use insilico_solvers::System;

/// One-compartment oral PK with linear plus Michaelis–Menten elimination.
///
/// States (amounts): `depot`, `central`, `eliminated`. Parameters: `ka`
/// (1/time), `CL` (volume/time), `VMAX` (amount/time), `KM`
/// (concentration), `V` (volume). Output 0 is
/// `output_scale · central / V`.
///
/// `d depot = −ka·depot`, `d central = ka·depot − E`, `d eliminated = E`,
/// `E = CL·C + VMAX·C/(KM + C)`, `C = central/V`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OralMmLinear {
    /// Factor applied to the concentration output (1 by default).
    pub output_scale: f64,
}

impl Default for OralMmLinear {
    fn default() -> Self {
        OralMmLinear { output_scale: 1.0 }
    }
}

impl OralMmLinear {
    /// The name used in configs (`[heldout] reference_models`).
    pub const NAME: &'static str = "pk-1cmt-oral-mm-linear";

    /// `(E, ∂E/∂central, [∂E/∂CL, ∂E/∂VMAX, ∂E/∂KM, ∂E/∂V])` at `central`.
    fn elim(&self, c_amt: f64, p: &[f64]) -> (f64, f64, [f64; 4]) {
        let (cl, vmax, km, v) = (p[1], p[2], p[3], p[4]);
        let c = c_amt / v;
        let d = km + c;
        let e = cl * c + vmax * c / d;
        // dE/dC
        let de_dc = cl + vmax * km / (d * d);
        (e, de_dc / v, [c, c / d, -vmax * c / (d * d), -de_dc * c / v])
    }
}

impl std::fmt::Display for OralMmLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::NAME)
    }
}

impl System for OralMmLinear {
    fn nstates(&self) -> usize {
        3
    }
    fn nparams(&self) -> usize {
        5
    }
    fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) {
        let (e, _, _) = self.elim(x[1], p);
        let a = p[0] * x[0];
        dx[0] = -a;
        dx[1] = a - e;
        dx[2] = e;
    }
    fn jvp(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (_, ec, _) = self.elim(x[1], p);
        out[0] = -p[0] * v[0];
        out[1] = p[0] * v[0] - ec * v[1];
        out[2] = ec * v[1];
    }
    fn vjp_state(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let (_, ec, _) = self.elim(x[1], p);
        out[0] = p[0] * (w[1] - w[0]);
        out[1] = ec * (w[2] - w[1]);
        out[2] = 0.0;
    }
    fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (_, _, ep) = self.elim(x[1], p);
        let de: f64 = ep.iter().zip(&v[1..]).map(|(a, b)| a * b).sum();
        out[0] = -x[0] * v[0];
        out[1] = x[0] * v[0] - de;
        out[2] = de;
    }
    fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let (_, _, ep) = self.elim(x[1], p);
        out[0] = x[0] * (w[1] - w[0]);
        for (o, e) in out[1..].iter_mut().zip(ep) {
            *o = e * (w[2] - w[1]);
        }
    }
    fn invariants(&self) -> Vec<Vec<f64>> {
        vec![vec![1.0; 3]]
    }
    fn accumulators(&self) -> Vec<usize> {
        vec![2]
    }
    fn noutputs(&self) -> usize {
        1
    }
    fn output(&self, _k: usize, _t: f64, x: &[f64], p: &[f64]) -> f64 {
        self.output_scale * x[1] / p[4]
    }
    fn output_grad(&self, _k: usize, _t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        gx[1] += self.output_scale / p[4];
        gp[4] -= self.output_scale * x[1] / (p[4] * p[4]);
    }
    fn state_names(&self) -> Vec<String> {
        ["depot", "central", "eliminated"].map(String::from).to_vec()
    }
    fn param_names(&self) -> Vec<String> {
        ["ka", "CL", "VMAX", "KM", "V"].map(String::from).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use insilico_solvers::check_derivatives;

    /// Derivatives against central differences (relative error below 1e-6)
    /// at low, mid and saturating concentrations; and mass balance.
    #[test]
    fn derivatives_and_mass_balance() {
        let m = OralMmLinear { output_scale: 1000.0 };
        let p = [1.3, 0.7, 9.0, 2.7, 21.0];
        for x in [[100.0, 1.0, 0.0], [20.0, 60.0, 30.0], [0.0, 900.0, 10.0]] {
            let rep = check_derivatives(&m, 0.0, &x, &[], &p, 1e-6);
            assert!(rep.max_rel_err < 1e-6, "{x:?}: {rep:?}");
            let mut dx = [0.0; 3];
            m.rhs(0.0, &x, &[], &p, &mut dx);
            assert!(dx.iter().sum::<f64>().abs() <= 1e-12 * dx.iter().map(|v| v.abs()).sum::<f64>());
        }
    }
}
