//! Tumour spheroid reaction–diffusion model (reference problem P2) on
//! radial finite volumes, with an exact sparse Jacobian and a drug mass
//! balance.
//!
//! See the [module documentation](super) for the equations, units and
//! parameters.

use insilico_solvers::{Exposure, Schedule, System};

use super::OrganoidError;

/// Parameter indices of [`Spheroid`] (positions in the parameter vector θ).
pub mod param {
    /// Oxygen diffusion coefficient `Dc` (µm²/h).
    pub const DC: usize = 0;
    /// Drug diffusion coefficient `Dd` (µm²/h).
    pub const DD: usize = 1;
    /// Maximal oxygen consumption rate `qc` (1/h, per unit viable fraction).
    pub const QC: usize = 2;
    /// Half-saturation of oxygen consumption `Kc` (normalised oxygen).
    pub const KC: usize = 3;
    /// Maximal drug uptake rate `qd` (1/h, per unit viable fraction).
    pub const QD: usize = 4;
    /// Half-saturation of drug uptake `Kd` (µM).
    pub const KD: usize = 5;
    /// Proliferation rate `rho` (1/h).
    pub const RHO: usize = 6;
    /// Half-saturation of oxygen-limited growth `Ko` (normalised oxygen).
    pub const KO: usize = 7;
    /// Maximal hypoxic death rate `dh` (1/h).
    pub const DH: usize = 8;
    /// Oxygen level of half-maximal hypoxic death `Kh` (normalised oxygen).
    pub const KH: usize = 9;
    /// Maximal drug kill rate `Emax` (1/h).
    pub const EMAX: usize = 10;
    /// Drug concentration of half-maximal kill `EC50` (µM).
    pub const EC50: usize = 11;
    /// Clearance rate of dead cells `lam` (1/h).
    pub const LAM: usize = 12;
    /// Oxygen level of the medium at the surface `c_b` (normalised, 1 in P2).
    pub const CB: usize = 13;
    /// Number of parameters.
    pub const COUNT: usize = 14;
    /// Parameter names, in order.
    pub const NAMES: [&str; COUNT] =
        ["Dc", "Dd", "qc", "Kc", "qd", "Kd", "rho", "Ko", "dh", "Kh", "Emax", "EC50", "lam", "c_b"];
}

/// Parameters of the spheroid model in physical units (see [`param`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpheroidParams {
    /// Oxygen diffusion coefficient (µm²/h).
    pub dc: f64,
    /// Drug diffusion coefficient (µm²/h).
    pub dd: f64,
    /// Maximal oxygen consumption rate (1/h).
    pub qc: f64,
    /// Half-saturation of oxygen consumption (normalised oxygen).
    pub kc: f64,
    /// Maximal drug uptake rate (1/h).
    pub qd: f64,
    /// Half-saturation of drug uptake (µM).
    pub kd: f64,
    /// Proliferation rate (1/h).
    pub rho: f64,
    /// Half-saturation of oxygen-limited growth (normalised oxygen).
    pub ko: f64,
    /// Maximal hypoxic death rate (1/h).
    pub dh: f64,
    /// Oxygen level of half-maximal hypoxic death (normalised oxygen).
    pub kh: f64,
    /// Maximal drug kill rate (1/h).
    pub emax: f64,
    /// Drug concentration of half-maximal kill (µM).
    pub ec50: f64,
    /// Clearance rate of dead cells (1/h).
    pub lam: f64,
    /// Medium oxygen at the surface (normalised).
    pub c_b: f64,
}

impl SpheroidParams {
    /// The parameters of reference problem P2.
    pub fn p2() -> Self {
        SpheroidParams {
            dc: 7.2e6,
            dd: 3.6e5,
            qc: 200.0,
            kc: 0.05,
            qd: 0.5,
            kd: 10.0,
            rho: 0.03,
            ko: 0.1,
            dh: 0.02,
            kh: 0.05,
            emax: 0.05,
            ec50: 5.0,
            lam: 0.01,
            c_b: 1.0,
        }
    }

    /// The parameter vector θ in the order of [`param`].
    pub fn to_vec(&self) -> Vec<f64> {
        vec![
            self.dc, self.dd, self.qc, self.kc, self.qd, self.kd, self.rho, self.ko, self.dh, self.kh, self.emax,
            self.ec50, self.lam, self.c_b,
        ]
    }

    /// Reads a parameter vector in the order of [`param`], checking its
    /// length and that every value is finite and non-negative (and the
    /// half-saturation constants positive).
    pub fn from_slice(p: &[f64]) -> Result<Self, OrganoidError> {
        if p.len() != param::COUNT {
            return Err(OrganoidError::ParamCount { model: "spheroid".into(), expected: param::COUNT, got: p.len() });
        }
        for (i, &v) in p.iter().enumerate() {
            let positive = matches!(i, param::KC | param::KD | param::KO | param::KH | param::EC50);
            if !v.is_finite() || v < 0.0 || (positive && v == 0.0) {
                return Err(OrganoidError::InvalidParam { name: param::NAMES[i].into(), value: v });
            }
        }
        Ok(SpheroidParams {
            dc: p[0],
            dd: p[1],
            qc: p[2],
            kc: p[3],
            qd: p[4],
            kd: p[5],
            rho: p[6],
            ko: p[7],
            dh: p[8],
            kh: p[9],
            emax: p[10],
            ec50: p[11],
            lam: p[12],
            c_b: p[13],
        })
    }
}

impl Default for SpheroidParams {
    fn default() -> Self {
        Self::p2()
    }
}

/// Fields per shell, in their order within the shell's block of the state.
pub mod field {
    /// Oxygen (normalised to the medium).
    pub const C: usize = 0;
    /// Drug (µM).
    pub const D: usize = 1;
    /// Viable cell fraction.
    pub const N: usize = 2;
    /// Dead cell fraction.
    pub const M: usize = 3;
}

/// Outputs of [`Spheroid`] (indices for [`System::output`]).
pub mod output {
    /// Viable burden `B = Σ n_i V_i / Σ V_i`.
    pub const VIABLE_BURDEN: usize = 0;
    /// Dead burden `Σ m_i V_i / Σ V_i`.
    pub const DEAD_BURDEN: usize = 1;
    /// Volume-averaged drug concentration `Σ d_i V_i / Σ V_i` (µM).
    pub const MEAN_DRUG: usize = 2;
    /// Volume-averaged oxygen `Σ c_i V_i / Σ V_i`.
    pub const MEAN_OXYGEN: usize = 3;
    /// Cumulative drug that entered through the surface, per spheroid volume (µM; mass balance only).
    pub const DRUG_INFLUX: usize = 4;
    /// Cumulative drug taken up by cells (all shells), per spheroid volume (µM; mass balance only).
    pub const DRUG_UPTAKE: usize = 5;
}

/// The spheroid reaction–diffusion model of P2 as a [`System`].
///
/// State: `4·shells` values, shell by shell `[c_i, d_i, n_i, m_i]` (index
/// `4i + field`, see [`field`]), shell 0 at the centre; with the mass
/// balance on, `1 + shells` more: the cumulative drug influx through the
/// surface and, per shell, the cumulative drug uptake, all per spheroid
/// volume (µM), whose derivatives make `Σ w_i d_i − influx + Σ uptake_i`
/// (with `w_i = V_i / Σ V`) an exact invariant. (One uptake accumulator per
/// shell rather than one in total keeps every Jacobian row short: a row
/// over all shells would make the sparse LU's column ordering dense and
/// cost ten times more per step.) Input `u[0]` is
/// the drug level of the medium at the surface (µM), set by exposure
/// windows ([`Spheroid::exposure_schedule`]). Parameters: [`param`].
///
/// # Example
/// ```
/// use insilico_mechanistic::organoid::{Spheroid, SpheroidParams};
/// use insilico_solvers::{solve, Method, Options, Problem};
///
/// let model = Spheroid::new(400.0, 50).unwrap();
/// let sched = Spheroid::exposure_schedule(10.0, 24.0, 72.0, 96.0);
/// let prob = Problem::new(&model, SpheroidParams::p2().to_vec())
///     .with_x0(model.initial_state(1.0, 0.0, 0.5, 0.0))
///     .with_schedule(sched)
///     .observe(0, &[0.0, 48.0, 96.0]);
/// let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-6, atol: 1e-8, ..Options::default() }).unwrap();
/// assert!((sol.outputs[0] - 0.5).abs() < 1e-15);
/// assert!(sol.outputs[2] < sol.outputs[0]); // hypoxia and drug kill cells
/// let mb = model.mass_balance(&prob.x0, &sol.final_state);
/// assert!(mb.relative_defect() < 1e-8);
/// ```
#[derive(Debug, Clone)]
pub struct Spheroid {
    radius: f64,
    shells: usize,
    mass_balance: bool,
    /// `V_i / Σ V` per shell.
    w: Vec<f64>,
    /// Diffusive coupling of shell `i` to shell `i − 1`: `A_{i−1/2} / (dr V_i)`.
    a_in: Vec<f64>,
    /// Diffusive coupling of shell `i` to shell `i + 1` (the medium for the last): `A_{i+1/2} / (h V_i)`.
    a_out: Vec<f64>,
    /// `A_R / (dr/2) / Σ V`: surface flux per unit concentration difference, per spheroid volume.
    g_surface: f64,
}

impl Spheroid {
    /// A spheroid of `radius` (µm) on `shells` radial finite volumes of
    /// equal width, with the drug mass balance tracked.
    pub fn new(radius: f64, shells: usize) -> Result<Self, OrganoidError> {
        if !(radius.is_finite() && radius > 0.0) {
            return Err(OrganoidError::InvalidParam { name: "radius".into(), value: radius });
        }
        if shells == 0 {
            return Err(OrganoidError::InvalidParam { name: "shells".into(), value: 0.0 });
        }
        let dr = radius / shells as f64;
        // Everything is divided by 4π: V_i = (r_out³ − r_in³)/3, A = r².
        let vol: Vec<f64> = (0..shells)
            .map(|i| {
                let (a, b) = (i as f64 * dr, (i + 1) as f64 * dr);
                (b * b * b - a * a * a) / 3.0
            })
            .collect();
        let total = radius * radius * radius / 3.0;
        let w = vol.iter().map(|v| v / total).collect();
        let a_in = (0..shells)
            .map(|i| {
                let r = i as f64 * dr;
                r * r / (dr * vol[i])
            })
            .collect();
        let a_out = (0..shells)
            .map(|i| {
                let r = (i + 1) as f64 * dr;
                let h = if i + 1 == shells { dr / 2.0 } else { dr };
                r * r / (h * vol[i])
            })
            .collect();
        let g_surface = radius * radius / (dr / 2.0) / total;
        Ok(Spheroid { radius, shells, mass_balance: true, w, a_in, a_out, g_surface })
    }

    /// The P2 geometry: radius 400 µm, 200 shells.
    pub fn p2() -> Self {
        Spheroid::new(400.0, 200).unwrap_or_else(|_| unreachable!("P2 geometry is valid"))
    }

    /// Turns the two mass-balance accumulator states on or off (on by default).
    pub fn with_mass_balance(mut self, on: bool) -> Self {
        self.mass_balance = on;
        self
    }

    /// Whether the mass-balance accumulators are part of the state.
    pub fn has_mass_balance(&self) -> bool {
        self.mass_balance
    }

    /// Radius (µm).
    pub fn radius(&self) -> f64 {
        self.radius
    }

    /// Number of shells.
    pub fn shells(&self) -> usize {
        self.shells
    }

    /// Shell width (µm).
    pub fn dr(&self) -> f64 {
        self.radius / self.shells as f64
    }

    /// Radius of the centre of shell `i` (µm).
    pub fn shell_centre(&self, i: usize) -> f64 {
        (i as f64 + 0.5) * self.dr()
    }

    /// Volume fractions `V_i / Σ V` of the shells.
    pub fn volume_fractions(&self) -> &[f64] {
        &self.w
    }

    /// State index of `field` in shell `shell`.
    #[inline]
    pub fn index(&self, shell: usize, field: usize) -> usize {
        4 * shell + field
    }

    /// State index of the cumulative drug influx (mass balance only).
    pub fn influx_index(&self) -> Option<usize> {
        self.mass_balance.then_some(4 * self.shells)
    }

    /// State indices of the cumulative drug uptake of each shell (mass
    /// balance only; empty otherwise).
    pub fn uptake_indices(&self) -> std::ops::Range<usize> {
        if self.mass_balance {
            4 * self.shells + 1..5 * self.shells + 1
        } else {
            0..0
        }
    }

    /// Total cumulative drug uptake per spheroid volume (µM; 0 without the mass balance).
    pub fn total_uptake(&self, x: &[f64]) -> f64 {
        x[self.uptake_indices()].iter().sum()
    }

    /// A uniform initial state (accumulators at zero).
    pub fn initial_state(&self, c: f64, d: f64, n: f64, m: f64) -> Vec<f64> {
        let mut x = Vec::with_capacity(self.nstates());
        for _ in 0..self.shells {
            x.extend([c, d, n, m]);
        }
        if self.mass_balance {
            x.extend(std::iter::repeat_n(0.0, 1 + self.shells));
        }
        x
    }

    /// The schedule of P2: medium drug level `level` (µM) during windows
    /// `[k·period, k·period + duration)` for every `k·period < horizon`.
    /// `duration ≥ period` (or a period that is not positive) is continuous
    /// exposure (one window over the horizon); a zero or non-finite level, or
    /// a duration or horizon that is not positive, gives an empty schedule.
    pub fn exposure_schedule(level: f64, duration: f64, period: f64, horizon: f64) -> Schedule {
        let mut s = Schedule::new();
        let not_positive = |v: f64| v.is_nan() || v <= 0.0;
        if level == 0.0 || !level.is_finite() || not_positive(duration) || not_positive(horizon) {
            return s;
        }
        if not_positive(period) || duration >= period {
            return s.exposure(Exposure { input: 0, level, start: 0.0, duration: horizon, period: 0.0, repeats: 0 });
        }
        // windows k = 1, 2, … with k·period < horizon
        let repeats = ((horizon / period).ceil() - 1.0).clamp(0.0, u32::MAX as f64) as u32;
        s = s.exposure(Exposure { input: 0, level, start: 0.0, duration, period, repeats });
        s
    }

    /// Viable burden `Σ n_i V_i / Σ V_i` of state `x`.
    pub fn viable_burden(&self, x: &[f64]) -> f64 {
        self.mean(x, field::N)
    }

    /// Volume average of `field` over the spheroid.
    pub fn mean(&self, x: &[f64], field: usize) -> f64 {
        self.w.iter().enumerate().map(|(i, w)| w * x[4 * i + field]).sum()
    }

    /// Outer radius (µm) of the central region where `field` is below
    /// `threshold`, by linear interpolation between shell centres: 0 if the
    /// centre is at or above it, the full radius if every shell is below.
    /// With [`field::C`] this is the hypoxic core radius; with
    /// [`field::N`] the necrotic core (viable fraction below the threshold).
    pub fn core_radius(&self, x: &[f64], field: usize, threshold: f64) -> f64 {
        let v = |i: usize| x[4 * i + field];
        if v(0) >= threshold {
            return 0.0;
        }
        for i in 1..self.shells {
            if v(i) >= threshold {
                let (r0, r1) = (self.shell_centre(i - 1), self.shell_centre(i));
                let s = (threshold - v(i - 1)) / (v(i) - v(i - 1));
                return r0 + s * (r1 - r0);
            }
        }
        self.radius
    }

    /// Hypoxic core radius (µm): where oxygen is below `threshold` (0.1 of
    /// the medium is a common choice).
    pub fn hypoxic_radius(&self, x: &[f64], threshold: f64) -> f64 {
        self.core_radius(x, field::C, threshold)
    }

    /// Necrotic core radius (µm): where the viable fraction is below `threshold`.
    pub fn necrotic_radius(&self, x: &[f64], threshold: f64) -> f64 {
        self.core_radius(x, field::N, threshold)
    }

    /// Drug penetration profile: `(shell centre radius µm, drug µM)` from the
    /// centre out.
    pub fn drug_profile(&self, x: &[f64]) -> Vec<(f64, f64)> {
        (0..self.shells).map(|i| (self.shell_centre(i), x[4 * i + field::D])).collect()
    }

    /// Penetration depth (µm from the surface): how far in the drug stays at
    /// or above `fraction` of the medium level `d_b`, by linear
    /// interpolation between shell centres (the surface counts as `d_b`).
    pub fn penetration_depth(&self, x: &[f64], d_b: f64, fraction: f64) -> f64 {
        let target = fraction * d_b;
        let mut prev = (self.radius, d_b);
        for i in (0..self.shells).rev() {
            let cur = (self.shell_centre(i), x[4 * i + field::D]);
            if cur.1 < target {
                if prev.1 == cur.1 {
                    return self.radius - prev.0;
                }
                let s = (prev.1 - target) / (prev.1 - cur.1);
                return self.radius - (prev.0 + s * (cur.0 - prev.0));
            }
            prev = cur;
        }
        self.radius
    }

    /// The drug mass balance between `x0` and `x` (both with the mass-balance
    /// accumulators; see [`MassBalance`]).
    pub fn mass_balance(&self, x0: &[f64], x: &[f64]) -> MassBalance {
        let Some(fi) = self.influx_index() else {
            return MassBalance { initial: f64::NAN, fin: f64::NAN, influx: f64::NAN, uptake: f64::NAN };
        };
        MassBalance {
            initial: self.mean(x0, field::D),
            fin: self.mean(x, field::D),
            influx: x[fi] - x0[fi],
            uptake: self.total_uptake(x) - self.total_uptake(x0),
        }
    }

    /// Emits every structural entry of `∂f/∂x` as `(row, col, value)`, in
    /// one fixed order (the order of [`System::jacobian_sparsity`]).
    #[inline(always)]
    fn jac_entries(&self, x: &[f64], u: &[f64], p: &[f64], mut emit: impl FnMut(usize, usize, f64)) {
        let nsh = self.shells;
        let (dc, dd, qc, kc, qd, kd) = (p[0], p[1], p[2], p[3], p[4], p[5]);
        let (rho, ko, dh, kh, emax, ec50, lam) = (p[6], p[7], p[8], p[9], p[10], p[11], p[12]);
        let e2 = ec50 * ec50;
        for i in 0..nsh {
            let b = 4 * i;
            let (c, d, n, m) = (x[b], x[b + 1], x[b + 2], x[b + 3]);
            let (ai, ao) = (self.a_in[i], self.a_out[i]);
            // oxygen
            if i > 0 {
                emit(b, b - 4, dc * ai);
            }
            emit(b, b, -dc * (ai + ao) - qc * n * kc / ((kc + c) * (kc + c)));
            if i + 1 < nsh {
                emit(b, b + 4, dc * ao);
            }
            emit(b, b + 2, -qc * c / (kc + c));
            // drug
            if i > 0 {
                emit(b + 1, b - 3, dd * ai);
            }
            emit(b + 1, b + 1, -dd * (ai + ao) - qd * n * kd / ((kd + d) * (kd + d)));
            if i + 1 < nsh {
                emit(b + 1, b + 5, dd * ao);
            }
            emit(b + 1, b + 2, -qd * d / (kd + d));
            // cells
            let g = c / (ko + c);
            let gp = ko / ((ko + c) * (ko + c));
            let h = kh / (kh + c);
            let hp = -kh / ((kh + c) * (kh + c));
            let den = e2 + d * d;
            let kill = emax * d * d / den;
            let killp = 2.0 * emax * d * e2 / (den * den);
            emit(b + 2, b, (rho * n * (1.0 - n - m) - kill * n) * gp - dh * n * hp);
            emit(b + 2, b + 1, -killp * n * g);
            emit(b + 2, b + 2, rho * (1.0 - 2.0 * n - m) * g - dh * h - kill * g);
            emit(b + 2, b + 3, -rho * n * g);
            emit(b + 3, b, dh * n * hp + kill * n * gp);
            emit(b + 3, b + 1, killp * n * g);
            emit(b + 3, b + 2, dh * h + kill * g);
            emit(b + 3, b + 3, -lam);
        }
        if self.mass_balance {
            let fi = 4 * nsh;
            let _ = u;
            emit(fi, 4 * (nsh - 1) + 1, -dd * self.g_surface);
            for i in 0..nsh {
                let b = 4 * i;
                let (d, n) = (x[b + 1], x[b + 2]);
                emit(fi + 1 + i, b + 1, self.w[i] * qd * n * kd / ((kd + d) * (kd + d)));
                emit(fi + 1 + i, b + 2, self.w[i] * qd * d / (kd + d));
            }
        }
    }

    /// Emits every nonzero entry of `∂f/∂θ` as `(row, param, value)`.
    #[inline(always)]
    fn param_entries(&self, x: &[f64], u: &[f64], p: &[f64], mut emit: impl FnMut(usize, usize, f64)) {
        use param::*;
        let nsh = self.shells;
        let (dc, qc, kc, qd, kd) = (p[0], p[2], p[3], p[4], p[5]);
        let (rho, ko, dh, kh, emax, ec50) = (p[6], p[7], p[8], p[9], p[10], p[11]);
        let (c_b, d_b) = (p[13], u.first().copied().unwrap_or(0.0));
        let e2 = ec50 * ec50;
        for i in 0..nsh {
            let b = 4 * i;
            let (c, d, n, m) = (x[b], x[b + 1], x[b + 2], x[b + 3]);
            let (cl, dl) = if i > 0 { (x[b - 4], x[b - 3]) } else { (c, d) };
            let (cr, dr_) = if i + 1 < nsh { (x[b + 4], x[b + 5]) } else { (c_b, d_b) };
            let (ai, ao) = (self.a_in[i], self.a_out[i]);
            emit(b, DC, ai * (cl - c) + ao * (cr - c));
            emit(b, QC, -n * c / (kc + c));
            emit(b, KC, qc * n * c / ((kc + c) * (kc + c)));
            if i + 1 == nsh {
                emit(b, CB, dc * ao);
            }
            let upt = n * d / (kd + d);
            emit(b + 1, DD, ai * (dl - d) + ao * (dr_ - d));
            emit(b + 1, QD, -upt);
            emit(b + 1, KD, qd * n * d / ((kd + d) * (kd + d)));
            if self.mass_balance {
                emit(4 * nsh + 1 + i, QD, self.w[i] * upt);
                emit(4 * nsh + 1 + i, KD, -self.w[i] * qd * n * d / ((kd + d) * (kd + d)));
            }
            let g = c / (ko + c);
            let g_ko = -c / ((ko + c) * (ko + c));
            let h = kh / (kh + c);
            let h_kh = c / ((kh + c) * (kh + c));
            let den = e2 + d * d;
            let hill = d * d / den;
            let kill = emax * hill;
            let kill_ec50 = -2.0 * emax * d * d * ec50 / (den * den);
            emit(b + 2, RHO, n * (1.0 - n - m) * g);
            emit(b + 2, KO, (rho * n * (1.0 - n - m) - kill * n) * g_ko);
            emit(b + 2, DH, -n * h);
            emit(b + 2, KH, -dh * n * h_kh);
            emit(b + 2, EMAX, -hill * n * g);
            emit(b + 2, EC50, -kill_ec50 * n * g);
            emit(b + 3, KO, kill * n * g_ko);
            emit(b + 3, DH, n * h);
            emit(b + 3, KH, dh * n * h_kh);
            emit(b + 3, EMAX, hill * n * g);
            emit(b + 3, EC50, kill_ec50 * n * g);
            emit(b + 3, LAM, -m);
        }
        if self.mass_balance {
            emit(4 * nsh, DD, self.g_surface * (d_b - x[4 * (nsh - 1) + 1]));
        }
    }
}

/// The drug balance of a spheroid between two states, all per spheroid
/// volume (µM): `final − initial = influx − uptake` holds exactly for the
/// model and, because the accumulators make it a linear invariant, to
/// round-off for every solver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassBalance {
    /// Mean drug concentration at the start.
    pub initial: f64,
    /// Mean drug concentration at the end.
    pub fin: f64,
    /// Drug that entered through the surface.
    pub influx: f64,
    /// Drug taken up by cells.
    pub uptake: f64,
}

impl MassBalance {
    /// `final − initial − influx + uptake`.
    pub fn defect(&self) -> f64 {
        self.fin - self.initial - self.influx + self.uptake
    }
    /// The defect relative to the largest term of the balance.
    pub fn relative_defect(&self) -> f64 {
        let scale = self.initial.abs().max(self.fin.abs()).max(self.influx.abs()).max(self.uptake.abs());
        if scale == 0.0 {
            0.0
        } else {
            self.defect().abs() / scale
        }
    }
}

impl System for Spheroid {
    fn nstates(&self) -> usize {
        4 * self.shells + if self.mass_balance { 1 + self.shells } else { 0 }
    }
    fn nparams(&self) -> usize {
        param::COUNT
    }
    fn ninputs(&self) -> usize {
        1
    }

    fn rhs(&self, _t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
        let nsh = self.shells;
        let (dc, dd, qc, kc, qd, kd) = (p[0], p[1], p[2], p[3], p[4], p[5]);
        let (rho, ko, dh, kh, emax, ec50, lam, c_b) = (p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13]);
        let d_b = u[0];
        let e2 = ec50 * ec50;
        for i in 0..nsh {
            let b = 4 * i;
            let (c, d, n, m) = (x[b], x[b + 1], x[b + 2], x[b + 3]);
            let (cl, dl) = if i > 0 { (x[b - 4], x[b - 3]) } else { (c, d) };
            let (cr, dr) = if i + 1 < nsh { (x[b + 4], x[b + 5]) } else { (c_b, d_b) };
            let (ai, ao) = (self.a_in[i], self.a_out[i]);
            let lap_c = ai * (cl - c) + ao * (cr - c);
            let lap_d = ai * (dl - d) + ao * (dr - d);
            let upt = qd * n * d / (kd + d);
            if self.mass_balance {
                dx[4 * nsh + 1 + i] = self.w[i] * upt;
            }
            dx[b] = dc * lap_c - qc * n * c / (kc + c);
            dx[b + 1] = dd * lap_d - upt;
            let g = c / (ko + c);
            let hyp = dh * n * kh / (kh + c);
            let kill = emax * d * d / (e2 + d * d) * n * g;
            dx[b + 2] = rho * n * (1.0 - n - m) * g - hyp - kill;
            dx[b + 3] = hyp + kill - lam * m;
        }
        if self.mass_balance {
            dx[4 * nsh] = dd * self.g_surface * (d_b - x[4 * (nsh - 1) + 1]);
        }
    }

    fn jvp(&self, _t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        self.jac_entries(x, u, p, |r, c, j| out[r] += j * v[c]);
    }

    fn vjp_state(&self, _t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        self.jac_entries(x, u, p, |r, c, j| out[c] += j * w[r]);
    }

    fn jvp_params(&self, _t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        self.param_entries(x, u, p, |r, k, j| out[r] += j * v[k]);
    }

    fn vjp_params(&self, _t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        self.param_entries(x, u, p, |r, k, j| out[k] += j * w[r]);
    }

    fn jacobian_sparsity(&self) -> Option<Vec<(usize, usize)>> {
        let x = self.initial_state(1.0, 1.0, 0.5, 0.1);
        let p = SpheroidParams::p2().to_vec();
        let mut s = Vec::with_capacity(18 * self.shells + 1);
        self.jac_entries(&x, &[0.0], &p, |r, c, _| s.push((r, c)));
        Some(s)
    }

    fn jacobian_values(&self, _t: f64, x: &[f64], u: &[f64], p: &[f64], values: &mut [f64]) -> bool {
        let mut k = 0;
        self.jac_entries(x, u, p, |_, _, j| {
            values[k] = j;
            k += 1;
        });
        true
    }

    fn invariants(&self) -> Vec<Vec<f64>> {
        let Some(fi) = self.influx_index() else {
            return Vec::new();
        };
        let mut c = vec![0.0; self.nstates()];
        for i in 0..self.shells {
            c[4 * i + field::D] = self.w[i];
        }
        c[fi] = -1.0;
        for j in self.uptake_indices() {
            c[j] = 1.0;
        }
        vec![c]
    }

    fn accumulators(&self) -> Vec<usize> {
        self.influx_index().into_iter().chain(self.uptake_indices()).collect()
    }

    fn noutputs(&self) -> usize {
        if self.mass_balance {
            6
        } else {
            4
        }
    }

    fn output(&self, k: usize, _t: f64, x: &[f64], _p: &[f64]) -> f64 {
        match k {
            output::VIABLE_BURDEN => self.mean(x, field::N),
            output::DEAD_BURDEN => self.mean(x, field::M),
            output::MEAN_DRUG => self.mean(x, field::D),
            output::MEAN_OXYGEN => self.mean(x, field::C),
            output::DRUG_INFLUX => x[4 * self.shells],
            _ => self.total_uptake(x),
        }
    }

    fn output_grad(&self, k: usize, _t: f64, _x: &[f64], _p: &[f64], gx: &mut [f64], _gp: &mut [f64]) {
        let f = match k {
            output::VIABLE_BURDEN => field::N,
            output::DEAD_BURDEN => field::M,
            output::MEAN_DRUG => field::D,
            output::MEAN_OXYGEN => field::C,
            output::DRUG_INFLUX => {
                gx[4 * self.shells] += 1.0;
                return;
            }
            _ => {
                for j in self.uptake_indices() {
                    gx[j] += 1.0;
                }
                return;
            }
        };
        for (i, w) in self.w.iter().enumerate() {
            gx[4 * i + f] += w;
        }
    }

    fn state_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.nstates());
        for i in 0..self.shells {
            names.extend(["c", "d", "n", "m"].map(|f| format!("{f}[{i}]")));
        }
        if self.mass_balance {
            names.push("drug_influx".into());
            names.extend((0..self.shells).map(|i| format!("drug_uptake[{i}]")));
        }
        names
    }

    fn param_names(&self) -> Vec<String> {
        param::NAMES.iter().map(|s| s.to_string()).collect()
    }
}
