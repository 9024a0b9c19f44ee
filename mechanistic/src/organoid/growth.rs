//! Tumour growth laws and the Simeoni tumour-growth-inhibition model.
//!
//! See the [module documentation](super) for equations, units and parameters.

use insilico_solvers::System;

use super::OrganoidError;
use crate::pk::PkModel;

/// A one-state tumour growth law `dV/dt = f(V)` (V a volume, e.g. mm³, or
/// a cell count; time in the unit of the rate constants).
///
/// | law | equation | parameters |
/// |---|---|---|
/// | `Exponential` | `dV/dt = λ·V` | `[λ]` |
/// | `Logistic` | `dV/dt = r·V·(1 − V/K)` | `[r, K]` |
/// | `Gompertz` | `dV/dt = α·V·ln(K/V)` | `[α, K]` |
///
/// Gompertz is defined for `V > 0`; at `V ≤ 0` its right-hand side and
/// derivatives are taken as zero.
///
/// # Example
/// ```
/// use insilico_mechanistic::organoid::GrowthLaw;
/// use insilico_solvers::{solve, Method, Options, Problem};
///
/// let law = GrowthLaw::Gompertz;
/// let p = vec![0.1, 1000.0]; // α 1/day, K mm³
/// let prob = Problem::new(&law, p.clone()).with_x0(vec![50.0]).observe(0, &[30.0]);
/// let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-9, atol: 1e-9, ..Options::default() }).unwrap();
/// let exact = law.closed_form(&p, 50.0, 30.0);
/// assert!((sol.outputs[0] - exact).abs() < 1e-5 * exact);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrowthLaw {
    /// `dV/dt = λ V`.
    Exponential,
    /// `dV/dt = r V (1 − V/K)`.
    Logistic,
    /// `dV/dt = α V ln(K/V)`.
    Gompertz,
}

impl GrowthLaw {
    /// The exact solution `V(t)` from `V(0) = v0`.
    pub fn closed_form(&self, p: &[f64], v0: f64, t: f64) -> f64 {
        match self {
            GrowthLaw::Exponential => v0 * (p[0] * t).exp(),
            GrowthLaw::Logistic => p[1] / (1.0 + (p[1] / v0 - 1.0) * (-p[0] * t).exp()),
            GrowthLaw::Gompertz => p[1] * ((v0 / p[1]).ln() * (-p[0] * t).exp()).exp(),
        }
    }

    /// Checks the length of `p` and that every parameter is finite and positive.
    pub fn validate_params(&self, p: &[f64]) -> Result<(), OrganoidError> {
        let names = self.param_names();
        if p.len() != names.len() {
            return Err(OrganoidError::ParamCount { model: format!("{self:?}"), expected: names.len(), got: p.len() });
        }
        for (name, &value) in names.iter().zip(p) {
            if !(value.is_finite() && value > 0.0) {
                return Err(OrganoidError::InvalidParam { name: name.clone(), value });
            }
        }
        Ok(())
    }
}

impl System for GrowthLaw {
    fn nstates(&self) -> usize {
        1
    }
    fn nparams(&self) -> usize {
        match self {
            GrowthLaw::Exponential => 1,
            _ => 2,
        }
    }
    fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) {
        let v = x[0];
        dx[0] = match self {
            GrowthLaw::Exponential => p[0] * v,
            GrowthLaw::Logistic => p[0] * v * (1.0 - v / p[1]),
            GrowthLaw::Gompertz if v > 0.0 => p[0] * v * (p[1] / v).ln(),
            GrowthLaw::Gompertz => 0.0,
        };
    }
    fn jvp(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        out[0] = self.dfdv(x[0], p) * v[0];
    }
    fn vjp_state(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        out[0] = self.dfdv(x[0], p) * w[0];
    }
    fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let g = self.dfdp(x[0], p);
        out[0] = g[0] * v[0] + if p.len() > 1 { g[1] * v[1] } else { 0.0 };
    }
    fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let g = self.dfdp(x[0], p);
        for (o, gi) in out.iter_mut().zip(g) {
            *o = gi * w[0];
        }
    }
    fn jacobian_sparsity(&self) -> Option<Vec<(usize, usize)>> {
        Some(vec![(0, 0)])
    }
    fn state_names(&self) -> Vec<String> {
        vec!["V".into()]
    }
    fn param_names(&self) -> Vec<String> {
        match self {
            GrowthLaw::Exponential => vec!["lambda".into()],
            GrowthLaw::Logistic => vec!["r".into(), "K".into()],
            GrowthLaw::Gompertz => vec!["alpha".into(), "K".into()],
        }
    }
}

impl GrowthLaw {
    fn dfdv(&self, v: f64, p: &[f64]) -> f64 {
        match self {
            GrowthLaw::Exponential => p[0],
            GrowthLaw::Logistic => p[0] * (1.0 - 2.0 * v / p[1]),
            GrowthLaw::Gompertz if v > 0.0 => p[0] * ((p[1] / v).ln() - 1.0),
            GrowthLaw::Gompertz => 0.0,
        }
    }
    fn dfdp(&self, v: f64, p: &[f64]) -> [f64; 2] {
        match self {
            GrowthLaw::Exponential => [v, 0.0],
            GrowthLaw::Logistic => [v * (1.0 - v / p[1]), p[0] * v * v / (p[1] * p[1])],
            GrowthLaw::Gompertz if v > 0.0 => [v * (p[1] / v).ln(), p[0] * v / p[1]],
            GrowthLaw::Gompertz => [0.0, 0.0],
        }
    }
}

/// Where the Simeoni model's drug concentration `c(t)` comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DrugSource {
    /// The central concentration of a PK model integrated in the same
    /// system (its states first, its parameters first).
    Pk(PkModel),
    /// Exogenous input `u[0]` (e.g. a medium concentration set by exposure windows).
    Input,
}

/// Simeoni tumour-growth-inhibition model (Simeoni et al., Cancer Res 2004)
/// with `transit` compartments of damaged cells, driven by a drug
/// concentration `c(t)` from a [`PkModel`] solved in the same system, or
/// from an input.
///
/// ```text
/// w       = x₁ + x₂ + … + x_{1+transit}                         tumour weight/volume
/// dx₁/dt  = λ₀ x₁ / [1 + (λ₀ w / λ₁)^ψ]^{1/ψ} − k₂ c(t) x₁     exponential, then linear growth
/// dx₂/dt  = k₂ c(t) x₁ − k₁ x₂                                  damaged cells
/// dx_j/dt = k₁ (x_{j−1} − x_j),  j = 3 … 1+transit              transit to death
/// ```
///
/// State: the PK states (if any), then `x₁ … x_{1+transit}`. Parameters:
/// the PK parameters (if any), then `[λ0, λ1, k1, k2, psi]`. Units: `λ0`
/// 1/time, `λ1` weight/time, `k1` 1/time, `k2` 1/(concentration·time),
/// `ψ` dimensionless (20 in Simeoni's paper: a sharp switch). Outputs: 0 =
/// tumour weight `w`, 1 = the concentration `c(t)` driving it.
///
/// # Example
/// ```
/// use insilico_mechanistic::organoid::{DrugSource, SimeoniTgi};
/// use insilico_mechanistic::PkModel;
/// use insilico_solvers::{solve, Dose, Method, Options, Problem, Schedule, System};
///
/// let pk = PkModel::from_name("pk-1cmt-iv").unwrap();
/// let tgi = SimeoniTgi::new(DrugSource::Pk(pk), 3);
/// // CL 1 L/day, V 10 L; λ0 0.3/day, λ1 0.7 g/day, k1 1/day, k2 0.05 L/(mg·day), ψ 20
/// let p = vec![1.0, 10.0, 0.3, 0.7, 1.0, 0.05, 20.0];
/// let mut x0 = vec![0.0; tgi.nstates()];
/// x0[tgi.proliferating()] = 0.1; // g
/// let treated = Problem::new(&tgi, p.clone())
///     .with_x0(x0.clone())
///     .with_schedule(Schedule::new().dose(Dose::bolus(5.0, 0, 500.0)))
///     .observe(0, &[20.0]);
/// let control = Problem::new(&tgi, p).with_x0(x0).observe(0, &[20.0]);
/// let opts = Options { rtol: 1e-8, atol: 1e-10, ..Options::default() };
/// let wt = solve(&treated, Method::Bdf, &opts).unwrap().outputs[0];
/// let wc = solve(&control, Method::Bdf, &opts).unwrap().outputs[0];
/// assert!(wt < wc);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimeoniTgi {
    source: DrugSource,
    transit: usize,
}

impl SimeoniTgi {
    /// A Simeoni model with `transit` damaged-cell compartments (3 in the
    /// original paper; at least 1).
    pub fn new(source: DrugSource, transit: usize) -> Self {
        SimeoniTgi { source, transit: transit.max(1) }
    }
    fn npk(&self) -> usize {
        match self.source {
            DrugSource::Pk(pk) => pk.nstates(),
            DrugSource::Input => 0,
        }
    }
    fn npk_params(&self) -> usize {
        match self.source {
            DrugSource::Pk(pk) => pk.nparams(),
            DrugSource::Input => 0,
        }
    }
    /// State index of the proliferating cells `x₁`.
    pub fn proliferating(&self) -> usize {
        self.npk()
    }
    /// Index of the first TGI parameter (`λ0`).
    pub fn tgi_param_offset(&self) -> usize {
        self.npk_params()
    }
    /// Tumour weight `w = Σ x_j`.
    pub fn weight(&self, x: &[f64]) -> f64 {
        x[self.npk()..].iter().sum()
    }
    /// Drug concentration `c` and its sensitivity: `(c, ∂c/∂x_central, central index, ∂c/∂V1, V1 index)`.
    fn conc(&self, x: &[f64], u: &[f64], p: &[f64]) -> (f64, f64, usize, f64, usize) {
        match self.source {
            DrugSource::Pk(pk) => {
                let (ic, iv) = (pk.central(), pk.v1_index());
                let v1 = p[iv];
                (x[ic] / v1, 1.0 / v1, ic, -x[ic] / (v1 * v1), iv)
            }
            DrugSource::Input => (u.first().copied().unwrap_or(0.0), 0.0, usize::MAX, 0.0, usize::MAX),
        }
    }
    /// Growth term `G = λ₀ x₁ / D`, with `s = ∂(ln D)/∂w` and pieces for the parameter derivatives.
    fn growth(&self, x: &[f64], p: &[f64]) -> Growth {
        let o = self.npk_params();
        let (l0, l1, psi) = (p[o], p[o + 1], p[o + 4]);
        let x1 = x[self.npk()];
        let w = self.weight(x);
        let z = l0 * w / l1;
        let (ln_d, r, lnz) = if z > 0.0 {
            let lnz = z.ln();
            let lz = psi * lnz;
            let ln1p = if lz > 0.0 { lz + (-lz).exp().ln_1p() } else { lz.exp().ln_1p() };
            (ln1p / psi, 1.0 / (1.0 + (-lz).exp()), lnz)
        } else {
            (0.0, 0.0, 0.0)
        };
        let inv_d = (-ln_d).exp();
        let g = l0 * x1 * inv_d;
        let s = if z > 0.0 { r / z * l0 / l1 } else { 0.0 };
        Growth { g, inv_d, s, r, ln_d, lnz, x1, l0, l1, psi }
    }
}

struct Growth {
    g: f64,
    inv_d: f64,
    s: f64,
    r: f64,
    ln_d: f64,
    lnz: f64,
    x1: f64,
    l0: f64,
    l1: f64,
    psi: f64,
}

impl Growth {
    /// `∂G/∂(λ0, λ1, ψ)`.
    fn dparams(&self) -> [f64; 3] {
        let d_l0 = self.x1 * (1.0 - self.r) * self.inv_d;
        let d_l1 = self.g * self.r / self.l1;
        let d_psi = -self.g * (-self.ln_d / self.psi + self.r * self.lnz / self.psi);
        let _ = self.l0;
        [d_l0, d_l1, d_psi]
    }
}

impl System for SimeoniTgi {
    fn nstates(&self) -> usize {
        self.npk() + 1 + self.transit
    }
    fn nparams(&self) -> usize {
        self.npk_params() + 5
    }
    fn ninputs(&self) -> usize {
        match self.source {
            DrugSource::Pk(_) => 0,
            DrugSource::Input => 1,
        }
    }
    fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
        let (np, o) = (self.npk(), self.npk_params());
        if let DrugSource::Pk(pk) = self.source {
            pk.rhs(t, &x[..np], u, &p[..o], &mut dx[..np]);
        }
        let (c, ..) = self.conc(x, u, p);
        let (k1, k2) = (p[o + 2], p[o + 3]);
        let gr = self.growth(x, p);
        let kill = k2 * c * x[np];
        dx[np] = gr.g - kill;
        dx[np + 1] = kill - k1 * x[np + 1];
        for j in np + 2..np + 1 + self.transit {
            dx[j] = k1 * (x[j - 1] - x[j]);
        }
    }
    fn jvp(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (np, o) = (self.npk(), self.npk_params());
        if let DrugSource::Pk(pk) = self.source {
            pk.jvp(t, &x[..np], u, &p[..o], &v[..np], &mut out[..np]);
        }
        let (c, dc_dx, ic, ..) = self.conc(x, u, p);
        let (k1, k2) = (p[o + 2], p[o + 3]);
        let gr = self.growth(x, p);
        let vw: f64 = v[np..].iter().sum();
        let dc = if ic == usize::MAX { 0.0 } else { dc_dx * v[ic] };
        let dkill = k2 * (c * v[np] + dc * x[np]);
        out[np] = gr.l0 * gr.inv_d * v[np] - gr.g * gr.s * vw - dkill;
        out[np + 1] = dkill - k1 * v[np + 1];
        for j in np + 2..np + 1 + self.transit {
            out[j] = k1 * (v[j - 1] - v[j]);
        }
    }
    fn vjp_state(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let (np, o) = (self.npk(), self.npk_params());
        if let DrugSource::Pk(pk) = self.source {
            pk.vjp_state(t, &x[..np], u, &p[..o], &w[..np], &mut out[..np]);
        }
        let (c, dc_dx, ic, ..) = self.conc(x, u, p);
        let (k1, k2) = (p[o + 2], p[o + 3]);
        let gr = self.growth(x, p);
        let n = self.nstates();
        // growth row np depends on every x_j through w
        let gw = -gr.g * gr.s * w[np];
        out[np..n].iter_mut().for_each(|o| *o = gw);
        out[np] += gr.l0 * gr.inv_d * w[np] + k2 * c * (w[np + 1] - w[np]);
        if ic != usize::MAX {
            out[ic] += k2 * dc_dx * x[np] * (w[np + 1] - w[np]);
        }
        out[np + 1] -= k1 * w[np + 1];
        for j in np + 2..n {
            out[j - 1] += k1 * w[j];
            out[j] -= k1 * w[j];
        }
    }
    fn jvp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let (np, o) = (self.npk(), self.npk_params());
        if let DrugSource::Pk(pk) = self.source {
            pk.jvp_params(t, &x[..np], u, &p[..o], &v[..o], &mut out[..np]);
        }
        let (c, _, _, dc_dv1, iv) = self.conc(x, u, p);
        let k2 = p[o + 3];
        let gr = self.growth(x, p);
        let [g0, g1, gpsi] = gr.dparams();
        let dc = if iv == usize::MAX { 0.0 } else { dc_dv1 * v[iv] };
        let dkill = (v[o + 3] * c + k2 * dc) * x[np];
        out[np] = g0 * v[o] + g1 * v[o + 1] + gpsi * v[o + 4] - dkill;
        out[np + 1] = dkill - v[o + 2] * x[np + 1];
        for j in np + 2..np + 1 + self.transit {
            out[j] = v[o + 2] * (x[j - 1] - x[j]);
        }
    }
    fn vjp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let (np, o) = (self.npk(), self.npk_params());
        if let DrugSource::Pk(pk) = self.source {
            pk.vjp_params(t, &x[..np], u, &p[..o], &w[..np], &mut out[..o]);
        }
        let (c, _, _, dc_dv1, iv) = self.conc(x, u, p);
        let k2 = p[o + 3];
        let gr = self.growth(x, p);
        let [g0, g1, gpsi] = gr.dparams();
        let wk = (w[np + 1] - w[np]) * x[np];
        out[o] = g0 * w[np];
        out[o + 1] = g1 * w[np];
        out[o + 4] = gpsi * w[np];
        out[o + 3] = c * wk;
        if iv != usize::MAX {
            out[iv] += k2 * dc_dv1 * wk;
        }
        let mut k1 = -x[np + 1] * w[np + 1];
        for j in np + 2..np + 1 + self.transit {
            k1 += (x[j - 1] - x[j]) * w[j];
        }
        out[o + 2] = k1;
    }
    fn jacobian_sparsity(&self) -> Option<Vec<(usize, usize)>> {
        let np = self.npk();
        let n = self.nstates();
        let mut s = match self.source {
            DrugSource::Pk(pk) => pk.jacobian_sparsity().unwrap_or_default(),
            DrugSource::Input => Vec::new(),
        };
        for j in np..n {
            s.push((np, j));
        }
        s.push((np + 1, np));
        s.push((np + 1, np + 1));
        if let DrugSource::Pk(pk) = self.source {
            s.push((np, pk.central()));
            s.push((np + 1, pk.central()));
        }
        for j in np + 2..n {
            s.push((j, j - 1));
            s.push((j, j));
        }
        Some(s)
    }
    fn noutputs(&self) -> usize {
        2
    }
    fn output(&self, k: usize, _t: f64, x: &[f64], p: &[f64]) -> f64 {
        if k == 0 {
            self.weight(x)
        } else {
            match self.source {
                DrugSource::Pk(pk) => x[pk.central()] / p[pk.v1_index()],
                DrugSource::Input => 0.0,
            }
        }
    }
    fn output_grad(&self, k: usize, _t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        if k == 0 {
            for g in &mut gx[self.npk()..] {
                *g += 1.0;
            }
        } else if let DrugSource::Pk(pk) = self.source {
            let (ic, iv) = (pk.central(), pk.v1_index());
            gx[ic] += 1.0 / p[iv];
            gp[iv] -= x[ic] / (p[iv] * p[iv]);
        }
    }
    fn state_names(&self) -> Vec<String> {
        let mut names = match self.source {
            DrugSource::Pk(pk) => pk.state_names(),
            DrugSource::Input => Vec::new(),
        };
        names.push("x1".into());
        for j in 0..self.transit {
            names.push(format!("x{}", j + 2));
        }
        names
    }
    fn param_names(&self) -> Vec<String> {
        let mut names = match self.source {
            DrugSource::Pk(pk) => pk.param_names(),
            DrugSource::Input => Vec::new(),
        };
        names.extend(["lambda0", "lambda1", "k1", "k2", "psi"].map(String::from));
        names
    }
}
