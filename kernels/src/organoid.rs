//! A small organoid drug-response model for regimen sweeps: drug in the
//! culture medium set by exposure windows, uptake into the cells, logistic
//! growth of viable tumour cells with an Emax kill, a damaged/dead
//! compartment, and a healthy-tissue toxicity proxy.
//!
//! # Equations
//!
//! Time in hours, concentrations in µM, cell amounts as fractions of the
//! carrying capacity. The input `u` (= `u[0]`) is the medium drug
//! concentration, `L` during each exposure window `[k·P, k·P + E)` and 0
//! otherwise ([`crate::WindowTrain`]).
//!
//! ```text
//! d'   = k_in·(u − d) − k_el·d                     effect-site (intracellular) drug, µM
//! v'   = ρ·v·(1 − v/K) − kill(d)·v                  viable tumour cells
//! m'   = kill(d)·v − k_clr·m                        damaged / dying cells
//! h'   = k_h·(u − h)                                drug in a healthy-tissue compartment, µM
//! T'   = g(h)·(1 − T) − k_rep·T                     healthy-tissue damage fraction (toxicity proxy)
//! A'   = d                                          effect-site exposure AUC, µM·h
//!
//! kill(d) = Emax·d^n / (EC50^n + d^n)               (0 for d ≤ 0)
//! g(h)    = Etox·h / (EC50tox + h)
//! ```
//!
//! States `[d, v, m, h, T, A]`, all zero at t = 0 except `v(0) = v0`
//! ([`Organoid::initial_state`]). Crowding acts on viable cells only, so the
//! viable burden at any time can only fall when the kill rate rises: higher
//! dose levels and longer exposures never leave more viable cells (the
//! comparison principle on a scalar ODE; tested). Without drug
//! `v(t) = K·v0·e^{ρt} / (K + v0·(e^{ρt} − 1))` ([`Organoid::untreated_viable`]),
//! the reference of an efficacy `1 − v(T)/v_untreated(T)`.
//!
//! # Parameters and defaults ([`ORGANOID_PARAMS`])
//!
//! | name | default | unit | meaning |
//! |---|---|---|---|
//! | `rho` | 0.025 | 1/h | growth rate of viable cells (doubling ≈ 28 h) |
//! | `K` | 1 | – | carrying capacity |
//! | `v0` | 0.05 | – | initial viable burden |
//! | `k_in` | 0.5 | 1/h | uptake/equilibration rate into the effect site |
//! | `k_el` | 0.1 | 1/h | intracellular clearance (efflux, metabolism) |
//! | `Emax` | 0.06 | 1/h | maximal kill rate |
//! | `EC50` | 5 | µM | effect-site concentration of half-maximal kill |
//! | `hill` | 2 | – | Hill coefficient (≥ 1) |
//! | `k_clr` | 0.02 | 1/h | clearance of damaged cells |
//! | `k_h` | 0.3 | 1/h | equilibration of the healthy-tissue compartment |
//! | `Etox` | 0.01 | 1/h | maximal damage rate of healthy tissue |
//! | `EC50tox` | 20 | µM | healthy-tissue concentration of half-maximal damage |
//! | `k_rep` | 0.005 | 1/h | repair rate of healthy tissue |
//!
//! The defaults are illustrative (of the order of the spheroid problem P2's
//! growth and kill rates), not fitted to data.

use crate::model::{BatchModel, CudaSource};

/// Parameter names of [`Organoid`], in order.
pub const ORGANOID_PARAMS: [&str; 13] =
    ["rho", "K", "v0", "k_in", "k_el", "Emax", "EC50", "hill", "k_clr", "k_h", "Etox", "EC50tox", "k_rep"];

/// Default parameter values of [`Organoid`] (see the module documentation).
pub const ORGANOID_DEFAULTS: [f64; 13] = [0.025, 1.0, 0.05, 0.5, 0.1, 0.06, 5.0, 2.0, 0.02, 0.3, 0.01, 20.0, 0.005];

/// State names of [`Organoid`], in order.
pub const ORGANOID_STATES: [&str; 6] = ["effect", "viable", "damaged", "healthy_drug", "toxicity", "effect_auc"];

/// What [`Organoid`] reports as its output (the integrators observe one
/// output per trajectory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OrganoidOutput {
    /// Viable tumour burden `v`.
    #[default]
    Viable,
    /// Damaged cells `m`.
    Damaged,
    /// Total burden `v + m`.
    Total,
    /// Effect-site drug `d` (µM).
    Effect,
    /// Healthy-tissue drug `h` (µM).
    HealthyDrug,
    /// Healthy-tissue damage fraction `T` (toxicity proxy).
    Toxicity,
    /// Effect-site exposure AUC `A` (µM·h).
    EffectAuc,
}

impl OrganoidOutput {
    /// Every output, in a stable order.
    pub const ALL: [OrganoidOutput; 7] = [
        OrganoidOutput::Viable,
        OrganoidOutput::Damaged,
        OrganoidOutput::Total,
        OrganoidOutput::Effect,
        OrganoidOutput::HealthyDrug,
        OrganoidOutput::Toxicity,
        OrganoidOutput::EffectAuc,
    ];
    /// Name in configs: `viable`, `damaged`, `total`, `effect`, `healthy_drug`, `toxicity`, `effect_auc`.
    pub fn name(self) -> &'static str {
        match self {
            OrganoidOutput::Viable => "viable",
            OrganoidOutput::Damaged => "damaged",
            OrganoidOutput::Total => "total",
            OrganoidOutput::Effect => "effect",
            OrganoidOutput::HealthyDrug => "healthy_drug",
            OrganoidOutput::Toxicity => "toxicity",
            OrganoidOutput::EffectAuc => "effect_auc",
        }
    }
    /// Parses [`OrganoidOutput::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name().eq_ignore_ascii_case(s))
    }
    /// The output as a C expression of the state `x`.
    fn c_expr(self) -> &'static str {
        match self {
            OrganoidOutput::Viable => "x[1]",
            OrganoidOutput::Damaged => "x[2]",
            OrganoidOutput::Total => "x[1] + x[2]",
            OrganoidOutput::Effect => "x[0]",
            OrganoidOutput::HealthyDrug => "x[3]",
            OrganoidOutput::Toxicity => "x[4]",
            OrganoidOutput::EffectAuc => "x[5]",
        }
    }
}

/// The organoid drug-response model (see the [module documentation](self)):
/// 6 states, 13 parameters ([`ORGANOID_PARAMS`]), one input (the medium
/// concentration), exact Jacobian, CUDA twin.
///
/// ```
/// use insilico_kernels::organoid::{Organoid, OrganoidOutput, ORGANOID_DEFAULTS};
/// use insilico_kernels::{integrate, Regimen, Stepper, Tolerances, WindowTrain};
/// let m = Organoid::new(OrganoidOutput::Viable);
/// let p = ORGANOID_DEFAULTS;
/// // 10 µM for 24 h every 72 h over two weeks.
/// let w = WindowTrain { start: 0.0, period: 72.0, count: 5, duration: 24.0, level: 10.0, input: 0 };
/// let reg = Regimen::new().with_windows(w).unwrap();
/// let mut v = [0.0];
/// integrate(&m, Stepper::Tsit5, &p, &m.initial_state(&p), &reg, &[336.0], 336.0, &Tolerances::default(), &mut v[..]);
/// assert!(v[0] < Organoid::untreated_viable(&p, 336.0), "treated organoids keep fewer viable cells");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Organoid {
    /// The reported output.
    pub output: OrganoidOutput,
}

impl Organoid {
    /// The model reporting `output`.
    pub fn new(output: OrganoidOutput) -> Self {
        Organoid { output }
    }
    /// The initial state for parameters `p` (all zero but `v = v0`).
    pub fn initial_state(&self, p: &[f64]) -> [f64; 6] {
        [0.0, p[2], 0.0, 0.0, 0.0, 0.0]
    }
    /// Viable burden without drug at time `t` (closed-form logistic growth).
    pub fn untreated_viable(p: &[f64], t: f64) -> f64 {
        let (rho, k, v0) = (p[0], p[1], p[2]);
        let e = (rho * t).exp_m1();
        k * v0 * (e + 1.0) / (k + v0 * e)
    }
}

impl BatchModel<6> for Organoid {
    fn nparams(&self) -> usize {
        13
    }
    fn nderived(&self) -> usize {
        12
    }
    /// `[ρ, ρ/K, k_in, k_in + k_el, Emax, EC50^n, n, k_clr, k_h, Etox, EC50tox, k_rep]`.
    fn prepare(&self, p: &[f64], d: &mut [f64]) {
        d[0] = p[0];
        d[1] = p[0] / p[1];
        d[2] = p[3];
        d[3] = p[3] + p[4];
        d[4] = p[5];
        d[5] = p[6].powf(p[7]);
        d[6] = p[7];
        d[7] = p[8];
        d[8] = p[9];
        d[9] = p[10];
        d[10] = p[11];
        d[11] = p[12];
    }
    fn ninputs(&self) -> usize {
        1
    }
    #[inline]
    fn rhs(&self, x: &[f64; 6], d: &[f64], u: &[f64], dx: &mut [f64; 6]) {
        let c = u[0];
        let e = x[0];
        let v = x[1];
        let en = if e > 0.0 { e.powf(d[6]) } else { 0.0 };
        let kill = d[4] * en / (d[5] + en);
        let g = d[9] * x[3] / (d[10] + x[3]);
        dx[0] = d[2] * c - d[3] * e;
        dx[1] = d[0] * v - d[1] * v * v - kill * v;
        dx[2] = kill * v - d[7] * x[2];
        dx[3] = d[8] * (c - x[3]);
        dx[4] = g * (1.0 - x[4]) - d[11] * x[4];
        dx[5] = e;
    }
    #[inline]
    fn jacobian(&self, x: &[f64; 6], d: &[f64], _u: &[f64], j: &mut [[f64; 6]; 6]) {
        let e = x[0];
        let v = x[1];
        let en = if e > 0.0 { e.powf(d[6]) } else { 0.0 };
        let den = d[5] + en;
        let kill = d[4] * en / den;
        // d kill / d e = Emax·EC50^n·n·e^(n−1) / (EC50^n + e^n)².
        let dkill = if e > 0.0 { d[4] * d[5] * d[6] * (en / e) / (den * den) } else { 0.0 };
        let hd = d[10] + x[3];
        let g = d[9] * x[3] / hd;
        let dg = d[9] * d[10] / (hd * hd);
        *j = [[0.0; 6]; 6];
        j[0][0] = -d[3];
        j[1][0] = -dkill * v;
        j[1][1] = d[0] - 2.0 * d[1] * v - kill;
        j[2][0] = dkill * v;
        j[2][1] = kill;
        j[2][2] = -d[7];
        j[3][3] = -d[8];
        j[4][3] = dg * (1.0 - x[4]);
        j[4][4] = -g - d[11];
        j[5][0] = 1.0;
    }
    #[inline]
    fn output(&self, x: &[f64; 6], _d: &[f64]) -> f64 {
        match self.output {
            OrganoidOutput::Viable => x[1],
            OrganoidOutput::Damaged => x[2],
            OrganoidOutput::Total => x[1] + x[2],
            OrganoidOutput::Effect => x[0],
            OrganoidOutput::HealthyDrug => x[3],
            OrganoidOutput::Toxicity => x[4],
            OrganoidOutput::EffectAuc => x[5],
        }
    }
    fn cuda_source(&self) -> CudaSource {
        CudaSource {
            code: format!(
                r#"
__device__ __forceinline__ void model_prepare(const double* p, double* d) {{
    d[0] = p[0]; d[1] = p[0] / p[1]; d[2] = p[3]; d[3] = p[3] + p[4]; d[4] = p[5]; d[5] = pow(p[6], p[7]);
    d[6] = p[7]; d[7] = p[8]; d[8] = p[9]; d[9] = p[10]; d[10] = p[11]; d[11] = p[12];
}}
__device__ __forceinline__ void model_rhs(const double* x, const double* d, const double* u, const double* w, double* dx) {{
    double c = u[0];
    double e = x[0];
    double v = x[1];
    double en = e > 0.0 ? pow(e, d[6]) : 0.0;
    double kill = d[4] * en / (d[5] + en);
    double g = d[9] * x[3] / (d[10] + x[3]);
    dx[0] = d[2] * c - d[3] * e;
    dx[1] = d[0] * v - d[1] * v * v - kill * v;
    dx[2] = kill * v - d[7] * x[2];
    dx[3] = d[8] * (c - x[3]);
    dx[4] = g * (1.0 - x[4]) - d[11] * x[4];
    dx[5] = e;
}}
__device__ __forceinline__ void model_jac(const double* x, const double* d, const double* u, const double* w, double* j) {{
    double e = x[0];
    double v = x[1];
    double en = e > 0.0 ? pow(e, d[6]) : 0.0;
    double den = d[5] + en;
    double kill = d[4] * en / den;
    double dkill = e > 0.0 ? d[4] * d[5] * d[6] * (en / e) / (den * den) : 0.0;
    double hd = d[10] + x[3];
    double g = d[9] * x[3] / hd;
    double dg = d[9] * d[10] / (hd * hd);
    for (int k = 0; k < 36; ++k) j[k] = 0.0;
    j[0 * 6 + 0] = -d[3];
    j[1 * 6 + 0] = -dkill * v;
    j[1 * 6 + 1] = d[0] - 2.0 * d[1] * v - kill;
    j[2 * 6 + 0] = dkill * v;
    j[2 * 6 + 1] = kill;
    j[2 * 6 + 2] = -d[7];
    j[3 * 6 + 3] = -d[8];
    j[4 * 6 + 3] = dg * (1.0 - x[4]);
    j[4 * 6 + 4] = -g - d[11];
    j[5 * 6 + 0] = 1.0;
}}
__device__ __forceinline__ double model_output(const double* x, const double* d, const double* w) {{ return {out}; }}
"#,
                out = self.output.c_expr()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::jacobian_fd_error;
    use crate::{integrate, Regimen, Stepper, Tolerances, WindowTrain};

    fn derived(p: &[f64]) -> [f64; 12] {
        let mut d = [0.0; 12];
        Organoid::default().prepare(p, &mut d);
        d
    }

    #[test]
    fn jacobian_matches_finite_differences() {
        let m = Organoid::default();
        for hill in [1.0, 2.0, 3.5] {
            let mut p = ORGANOID_DEFAULTS;
            p[7] = hill;
            let d = derived(&p);
            for (x, u) in [
                ([3.0, 0.4, 0.1, 5.0, 0.2, 10.0], 10.0),
                ([0.2, 0.9, 0.3, 0.5, 0.01, 1.0], 0.0),
                ([12.0, 0.05, 0.6, 30.0, 0.7, 100.0], 50.0),
            ] {
                let err = jacobian_fd_error(&m, &x, &d, &[u]);
                assert!(err < 1e-7, "hill {hill}, x {x:?}: {err:.2e}");
            }
        }
    }

    #[test]
    fn untreated_growth_matches_the_closed_form() {
        let m = Organoid::default();
        let p = ORGANOID_DEFAULTS;
        let times: Vec<f64> = (0..=14).map(|k| 24.0 * k as f64).collect();
        let mut v = vec![0.0; times.len()];
        let tol = Tolerances { rtol: 1e-9, atol: 1e-12, max_steps: 100_000 };
        for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
            integrate(&m, stepper, &p, &m.initial_state(&p), &Regimen::new(), &times, 336.0, &tol, &mut v[..]);
            for (t, v) in times.iter().zip(&v) {
                let exact = Organoid::untreated_viable(&p, *t);
                assert!((v - exact).abs() <= 1e-7 * exact, "{stepper:?} t {t}: {v} vs {exact}");
            }
        }
    }

    /// Final viable burden of the typical organoid at level `l`, exposure `e`, period `per`.
    fn final_viable(l: f64, e: f64, per: f64) -> f64 {
        let m = Organoid::default();
        let p = ORGANOID_DEFAULTS;
        let reg = if e >= per {
            Regimen::new().with_windows(WindowTrain {
                start: 0.0,
                period: 336.0,
                count: 1,
                duration: 336.0,
                level: l,
                input: 0,
            })
        } else {
            let count = (336.0 / per).ceil() as u32;
            Regimen::new().with_windows(WindowTrain { start: 0.0, period: per, count, duration: e, level: l, input: 0 })
        }
        .unwrap();
        let mut v = [0.0];
        integrate(
            &m,
            Stepper::Tsit5,
            &p,
            &m.initial_state(&p),
            &reg,
            &[336.0],
            336.0,
            &Tolerances::default(),
            &mut v[..],
        );
        v[0]
    }

    #[test]
    fn dose_response_is_monotone_for_the_typical_organoid() {
        for per in [72.0, 168.0] {
            for e in [6.0, 24.0, 72.0] {
                let mut prev = f64::INFINITY;
                for l in [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0] {
                    let v = final_viable(l, e, per);
                    assert!(v <= prev * (1.0 + 1e-6), "P {per}, E {e}: level {l} leaves {v} > {prev}");
                    prev = v;
                }
            }
        }
        for l in [2.0, 10.0, 50.0] {
            let mut prev = f64::INFINITY;
            for e in [6.0, 12.0, 24.0, 48.0, 72.0] {
                let v = final_viable(l, e, 72.0);
                assert!(v <= prev * (1.0 + 1e-6), "level {l}: exposure {e} leaves {v} > {prev}");
                prev = v;
            }
        }
        assert!(final_viable(50.0, 72.0, 72.0) < 0.5 * final_viable(0.0, 72.0, 72.0), "continuous high dose works");
    }

    #[test]
    fn outputs_and_names_round_trip() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let d = derived(&ORGANOID_DEFAULTS);
        for o in OrganoidOutput::ALL {
            assert_eq!(OrganoidOutput::parse(o.name()), Some(o));
            let m = Organoid::new(o);
            let y = m.output(&x, &d);
            assert!((1.0..=6.0).contains(&y));
            assert!(m.cuda_source().code.contains(o.c_expr()));
        }
        assert_eq!(Organoid::new(OrganoidOutput::Total).output(&x, &d), 5.0);
    }
}
