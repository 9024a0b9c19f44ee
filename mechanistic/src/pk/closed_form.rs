//! Closed-form solutions of the linear PK models.
//!
//! For linear elimination the dosable states obey `x' = A x + r(t)` with `A`
//! constant, so the response to any schedule of boluses and zero-order
//! infusions is a superposition of single-dose responses, each a short sum
//! of exponentials.
//!
//! # Method
//! The disposition block (central + peripherals) of `-A` has the distinct
//! positive eigenvalues `λ_i` (macro rate constants `α > β > γ`), computed in
//! closed form — `k10` for one compartment, the quadratic formula (in its
//! cancellation-free form) for two, the trigonometric roots of the
//! characteristic cubic polished by Newton steps for three — together with
//! the spectral projectors `P_i` (Sylvester's formula), so that a unit bolus
//! into disposition compartment `j` leaves `Σ_i P_i[m][j] e^{-λ_i t}` in
//! compartment `m`. All of this is computed once per parameter vector by
//! [`LinearPkSolution::new`].
//!
//! Responses are built from four scalar kernels per mode, all evaluated
//! without cancellation and without dividing by `ka − λ_i`, so that the
//! degenerate case `ka = λ_i` (where the textbook formulas read 0/0) is
//! exact, not perturbed:
//!
//! | kernel | meaning | formula |
//! |---|---|---|
//! | `e^{-λt}` | bolus | |
//! | `G(λ,t)` | unit infusion | `(1 − e^{-λt}) / λ` via `expm1` |
//! | `E(a,b,t)` | depot bolus → disposition | `(e^{-at} − e^{-bt}) / (b − a) = e^{-min·t} (1 − e^{-|a−b|t}) / |a−b|`, → `t e^{-at}` as `b → a` |
//! | `F(a,b,t)` | depot infusion → disposition | `∫₀ᵗ E = (G(min) − E) / max`, Taylor series when `max·t ≤ 1` |
//!
//! After an infusion ends each mode decays from its value at the end of the
//! infusion, so late concentrations are never a difference of large terms.
//! At small elapsed times (`λ_max·t ≤ 0.7`) each response is instead split
//! into its value at `λ = 0` (shared by all modes since `Σ_i P_i = I`) plus
//! per-mode remainders computed with `expm1` and Taylor series, so that the
//! small amounts reaching a compartment other than the dosed one are not
//! differences of dose-sized terms either.
//! The eliminated amount is the total dose given so far minus the amount
//! still in the body (accurate to round-off relative to the total dose).
//!
//! [`LinearPkSolution::amounts_at`] sums the response of every dose at one
//! time (cost ∝ doses); [`LinearPkSolution::amounts_at_times`] marches through
//! sorted output times from breakpoint to breakpoint, propagating the state
//! exactly (cost ∝ doses + times), which is the fast path for dense outputs.

use super::{Absorption, Elimination, PkError, PkModel};
use insilico_solvers::{DoseKind, Event, Schedule, SteadyState};

/// A dose for the closed forms: a bolus (`duration == 0`) or a zero-order
/// infusion of `amount` spread evenly over `[time, time + duration)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClosedFormDose {
    /// Time of the bolus, or start of the infusion (h).
    pub time: f64,
    /// Dosed state index (0-based; NONMEM CMT − 1). Must be a dosable
    /// compartment, not the eliminated-amount state.
    pub cmt: usize,
    /// Amount (mg), bioavailability already applied.
    pub amount: f64,
    /// Infusion duration (h); 0 for a bolus.
    pub duration: f64,
}

impl ClosedFormDose {
    /// A bolus of `amount` into state `cmt` at `time`.
    pub fn bolus(time: f64, cmt: usize, amount: f64) -> Self {
        ClosedFormDose { time, cmt, amount, duration: 0.0 }
    }

    /// An infusion of `amount` into state `cmt` over `[time, time + duration)`.
    pub fn infusion(time: f64, cmt: usize, amount: f64, duration: f64) -> Self {
        ClosedFormDose { time, cmt, amount, duration }
    }

    /// Amount of this dose that has entered the body by time `t` (a bolus
    /// counts from its own time on).
    pub fn given_by(&self, t: f64) -> f64 {
        if t < self.time {
            0.0
        } else if self.duration > 0.0 {
            self.amount * ((t - self.time) / self.duration).min(1.0)
        } else {
            self.amount
        }
    }

    /// Expands the dosing records of `schedule` for parameters `p` into
    /// closed-form doses: bioavailability and lag applied, `ADDL` repeats
    /// unrolled, `Rate` turned into a duration.
    ///
    /// Steady-state doses, resets and exposure windows are not supported
    /// (error naming the event).
    pub fn from_schedule(schedule: &Schedule, p: &[f64]) -> Result<Vec<Self>, PkError> {
        let mut out = Vec::new();
        for (index, event) in schedule.events.iter().enumerate() {
            let unsupported = |reason: &str| PkError::UnsupportedEvent { index, reason: reason.to_string() };
            let d = match event {
                Event::Dose(d) => d,
                Event::Reset { .. } => return Err(unsupported("reset (EVID 3/4)")),
                Event::Exposure(_) => return Err(unsupported("exposure window (PK models have no inputs)")),
            };
            if d.ss != SteadyState::No {
                return Err(unsupported("steady-state dose"));
            }
            let amount = d.bioavailability.value(p) * d.amount;
            let duration = match d.kind {
                DoseKind::Bolus => 0.0,
                DoseKind::Duration(dur) => dur.value(p),
                DoseKind::Rate(rate) => {
                    let r = rate.value(p);
                    if r.is_nan() || r <= 0.0 {
                        return Err(unsupported("infusion rate must be positive"));
                    }
                    amount / r
                }
            };
            let start = d.time + d.lag.value(p);
            for k in 0..=d.addl {
                out.push(ClosedFormDose { time: start + f64::from(k) * d.ii, cmt: d.cmt, amount, duration });
            }
        }
        Ok(out)
    }
}

/// The closed-form solution of a linear [`PkModel`] for one parameter vector:
/// macro rate constants and spectral projectors, computed once, then
/// evaluated for any dosing history.
///
/// # Example
/// ```
/// use insilico_mechanistic::pk::{ClosedFormDose, LinearPkSolution, PkModel};
///
/// let model = PkModel::from_name("pk-1cmt-iv").unwrap();
/// let sol = LinearPkSolution::new(&model, &[2.0, 10.0]).unwrap(); // CL, V
/// let doses = [ClosedFormDose::bolus(0.0, 0, 100.0)];
/// let mut x = [0.0; 2];
/// sol.amounts_at(&doses, 5.0, &mut x).unwrap();
/// assert!((x[0] - 100.0 * (-1.0f64).exp()).abs() < 1e-12); // central
/// assert!((x[0] + x[1] - 100.0).abs() < 1e-12); // + eliminated = dose
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LinearPkSolution {
    model: PkModel,
    /// Number of disposition compartments.
    nd: usize,
    /// 1 for oral models (depot is state 0), else 0.
    off: usize,
    /// Absorption rate constant (0 for IV).
    ka: f64,
    /// Central volume.
    v1: f64,
    /// Macro rate constants, descending (`λ_i > 0`).
    lambda: [f64; 3],
    /// Spectral projectors: `proj[i][m][j]`.
    proj: [[[f64; 3]; 3]; 3],
}

/// `(1 − e^{-λt}) / λ`, the response to a unit-rate infusion.
#[inline(always)]
fn g1(l: f64, t: f64) -> f64 {
    let y = l * t;
    if y == 0.0 {
        t
    } else {
        -(-y).exp_m1() / l
    }
}

/// `(e^{-at} − e^{-bt}) / (b − a)`, symmetric in `a, b`, equal to `t e^{-at}`
/// at `a = b`; never overflows.
#[inline(always)]
fn e2(a: f64, b: f64, t: f64) -> f64 {
    let (m, d) = if a <= b { (a, b - a) } else { (b, a - b) };
    (-m * t).exp() * g1(d, t)
}

/// `∫₀ᵗ e2(a, b, s) ds`, the second divided difference of `e^{-zt}` on
/// `{0, a, b}`.
#[inline(always)]
fn f3(a: f64, b: f64, t: f64) -> f64 {
    let (m, big) = if a <= b { (a, b) } else { (b, a) };
    if big * t <= 1.0 {
        // t² Σ_j (−1)^j h_j(at, bt) / (j + 2)!, h_j the complete homogeneous
        // symmetric polynomial; |h_j| ≤ j + 1, so 20 terms reach 1e-19.
        let (x, y) = (a * t, b * t);
        let mut h = 1.0; // h_j(x, y)
        let mut yj = 1.0; // y^j
        let mut fact = 2.0; // (j + 2)!
        let mut sign = 1.0;
        let mut sum = 0.5;
        for j in 1..21 {
            yj *= y;
            h = x * h + yj;
            fact *= (j + 2) as f64;
            sign = -sign;
            sum += sign * h / fact;
        }
        t * t * sum
    } else {
        (g1(m, t) - e2(a, b, t)) / big
    }
}

/// `G(λ, t) − t = −λ t² φ₂(λt)` with `φ₂(y) = (e^{-y} − 1 + y) / y²`, by
/// its Taylor series when `λt ≤ 1` (no cancellation at small times).
#[inline(always)]
fn g1_minus_t(l: f64, t: f64) -> f64 {
    let y = l * t;
    if y <= 1.0 {
        let mut term = 0.5; // (−y)^k / (k + 2)!
        let mut sum = 0.5;
        for k in 1..18 {
            term *= -y / (k + 2) as f64;
            sum += term;
        }
        -l * t * t * sum
    } else {
        g1(l, t) - t
    }
}

/// Below this value of `λ_max · t` responses are written as the identity
/// (their value at λ = 0, shared by every mode because `Σ_i P_i = I`) plus
/// per-mode corrections that vanish with `t`: at small times the amounts
/// that reached a non-dosed compartment are then not differences of O(dose)
/// terms. Above it the plain sums of decaying exponentials are the accurate
/// form.
const SPLIT: f64 = 0.7;

/// Kernel values for one propagation step of length `dt` (fixed size, no
/// allocation). With `split`, `id_*` hold the λ-independent parts and the
/// per-mode arrays the remainders; otherwise `id_* = 0`.
#[derive(Clone, Copy)]
struct Step {
    dt: f64,
    /// Identity coefficient of the bolus response (1 when split).
    id_bolus: f64,
    /// Identity coefficient of the infusion response (`dt` when split).
    id_inf: f64,
    /// Identity coefficient of the depot-to-central response (`G(ka, dt)` when split).
    id_depot: f64,
    /// `e^{-λ_i dt}` or `expm1(−λ_i dt)`.
    bolus: [f64; 3],
    /// `G(λ_i, dt)` or `G(λ_i, dt) − dt`.
    inf: [f64; 3],
    /// `E(ka, λ_i, dt)` or `E(ka, λ_i, dt) − G(ka, dt) = −λ_i F(ka, λ_i, dt)`.
    depot: [f64; 3],
    /// `F(ka, λ_i, dt)`.
    depot_inf: [f64; 3],
    /// `e^{-ka dt}`.
    exa: f64,
    /// `G(ka, dt)`.
    ga: f64,
}

impl LinearPkSolution {
    /// Precomputes the macro constants of `model` (which must have linear
    /// elimination) at parameters `p` (validated with
    /// [`PkModel::validate_params`]).
    pub fn new(model: &PkModel, p: &[f64]) -> Result<Self, PkError> {
        if model.elimination != Elimination::Linear {
            return Err(PkError::NotLinear(model.name()));
        }
        model.validate_params(p)?;
        let nd = model.compartments;
        let v1 = p[model.v1_index()];
        let k10 = p[model.elimination_index()] / v1;
        // Rate constants central → peripheral k and back.
        let mut k1 = [0.0; 2];
        let mut kb = [0.0; 2];
        for k in 0..nd - 1 {
            let q = p[model.q_index(k)];
            k1[k] = q / v1;
            kb[k] = q / p[model.vp_index(k)];
        }
        // M = −A restricted to the disposition compartments.
        let mut mm = [[0.0; 3]; 3];
        mm[0][0] = k10 + k1[0] + k1[1];
        for k in 0..nd - 1 {
            mm[0][k + 1] = -kb[k];
            mm[k + 1][0] = -k1[k];
            mm[k + 1][k + 1] = kb[k];
        }
        let mut lambda = [0.0; 3];
        match nd {
            1 => lambda[0] = k10,
            2 => {
                let s = k10 + k1[0] + kb[0];
                let r = k10 + k1[0] - kb[0];
                // discriminant written as a sum of non-negative terms
                let disc = r * r + 4.0 * k1[0] * kb[0];
                let alpha = 0.5 * (s + disc.sqrt());
                lambda[0] = alpha;
                lambda[1] = k10 * kb[0] / alpha;
            }
            _ => {
                let (k12, k13, k21, k31) = (k1[0], k1[1], kb[0], kb[1]);
                let a2 = k10 + k12 + k13 + k21 + k31;
                let a1 = k21 * (k10 + k13) + k31 * (k10 + k12) + k21 * k31;
                let a0 = k10 * k21 * k31;
                // λ³ − a2 λ² + a1 λ − a0 = 0; λ = y + a2/3 gives y³ + py + q = 0.
                let sh = a2 / 3.0;
                let pp = a1 - a2 * sh;
                let qq = -2.0 * sh * sh * sh + a1 * sh - a0;
                let r = (-pp / 3.0).max(0.0).sqrt();
                let arg = if r > 0.0 { (-qq / (2.0 * r * r * r)).clamp(-1.0, 1.0) } else { 0.0 };
                let phi = arg.acos() / 3.0;
                for (k, l) in lambda.iter_mut().enumerate() {
                    let y = 2.0 * r * (phi - 2.0 * std::f64::consts::PI * k as f64 / 3.0).cos();
                    let mut x = y + sh;
                    // Newton polish, kept only while it improves the residual.
                    let f = |x: f64| ((x - a2) * x + a1) * x - a0;
                    for _ in 0..4 {
                        let d = (3.0 * x - 2.0 * a2) * x + a1;
                        if d == 0.0 {
                            break;
                        }
                        let xn = x - f(x) / d;
                        if f(xn).abs().is_nan() || f(xn).abs() >= f(x).abs() {
                            break;
                        }
                        x = xn;
                    }
                    *l = x;
                }
            }
        }
        lambda[..nd].sort_by(|a, b| b.total_cmp(a));
        let degenerate = lambda[..nd].iter().any(|l| !(l.is_finite() && *l > 0.0))
            || (1..nd).any(|i| lambda[i - 1] - lambda[i] <= 1e-13 * lambda[0]);
        if degenerate {
            return Err(PkError::DegenerateDisposition(lambda[..nd].to_vec()));
        }
        // Sylvester: P_i = Π_{l≠i} (M − λ_l I) / (λ_i − λ_l).
        let mut proj = [[[0.0; 3]; 3]; 3];
        for i in 0..nd {
            let mut pm = [[0.0; 3]; 3];
            for (r, row) in pm.iter_mut().enumerate().take(nd) {
                row[r] = 1.0;
            }
            for l in (0..nd).filter(|&l| l != i) {
                let s = 1.0 / (lambda[i] - lambda[l]);
                let mut f = mm;
                for (r, row) in f.iter_mut().enumerate().take(nd) {
                    row[r] -= lambda[l];
                }
                let mut prod = [[0.0; 3]; 3];
                for r in 0..nd {
                    for c in 0..nd {
                        prod[r][c] = s * (0..nd).map(|k| pm[r][k] * f[k][c]).sum::<f64>();
                    }
                }
                pm = prod;
            }
            proj[i] = pm;
        }
        let off = model.off();
        let ka = if model.absorption == Absorption::Oral { p[0] } else { 0.0 };
        Ok(LinearPkSolution { model: *model, nd, off, ka, v1, lambda, proj })
    }

    /// The model this solution belongs to.
    pub fn model(&self) -> &PkModel {
        &self.model
    }

    /// Number of states (dosable compartments + eliminated amount).
    pub fn nstates(&self) -> usize {
        self.off + self.nd + 1
    }

    /// Macro rate constants of the disposition compartments (1/h), descending
    /// (`α`, `β`, `γ`); `ka` is not among them.
    pub fn eigenvalues(&self) -> &[f64] {
        &self.lambda[..self.nd]
    }

    /// Spectral projector of mode `i` (`nd × nd`, row = receiving disposition
    /// compartment, column = dosed one, indices relative to the central
    /// compartment): a unit bolus into disposition compartment `j` leaves
    /// `Σ_i P_i[m][j] e^{-λ_i t}` in compartment `m`.
    pub fn projector(&self, i: usize) -> [[f64; 3]; 3] {
        self.proj[i]
    }

    fn step(&self, dt: f64) -> Step {
        let split = self.lambda[0] * dt <= SPLIT;
        let oral = self.off == 1;
        let ka = self.ka;
        let mut k = Step {
            dt,
            id_bolus: 0.0,
            id_inf: 0.0,
            id_depot: 0.0,
            bolus: [0.0; 3],
            inf: [0.0; 3],
            depot: [0.0; 3],
            depot_inf: [0.0; 3],
            exa: 0.0,
            ga: 0.0,
        };
        if oral {
            k.exa = (-ka * dt).exp();
            k.ga = g1(ka, dt);
        }
        if split {
            k.id_bolus = 1.0;
            k.id_inf = dt;
            k.id_depot = k.ga;
        }
        for i in 0..self.nd {
            let l = self.lambda[i];
            if split {
                k.bolus[i] = (-l * dt).exp_m1();
                k.inf[i] = g1_minus_t(l, dt);
            } else {
                k.bolus[i] = (-l * dt).exp();
                k.inf[i] = g1(l, dt);
            }
            if oral {
                let f = f3(ka, l, dt);
                k.depot_inf[i] = f;
                k.depot[i] = if split { -l * f } else { e2(ka, l, dt) };
            }
        }
        k
    }

    fn check_doses(&self, doses: &[ClosedFormDose]) -> Result<(), PkError> {
        let ndose = self.off + self.nd;
        for (index, d) in doses.iter().enumerate() {
            let reason = if d.cmt >= ndose {
                format!(
                    "compartment index {} is not dosable (model {} has dosable states 0..{})",
                    d.cmt,
                    self.model.name(),
                    ndose
                )
            } else if !d.time.is_finite() {
                format!("time {} is not finite", d.time)
            } else if !d.amount.is_finite() {
                format!("amount {} is not finite", d.amount)
            } else if !(d.duration.is_finite() && d.duration >= 0.0) {
                format!("duration {} must be finite and non-negative", d.duration)
            } else {
                continue;
            };
            return Err(PkError::InvalidDose { index, reason });
        }
        Ok(())
    }

    fn check_len(expected: usize, got: usize) -> Result<(), PkError> {
        if expected != got {
            return Err(PkError::BufferLength { expected, got });
        }
        Ok(())
    }

    /// Adds the response at elapsed time `tau ≥ 0` of one dose to the depot
    /// amount, to the identity part `id[m]` and to the mode/source
    /// coefficients `c[i][j]` (mode `i`, disposition source `j`): the
    /// disposition amounts are `id[m] + Σ_i Σ_j P_i[m][j] c[i][j]`.
    #[inline(always)]
    fn add_dose(&self, d: &ClosedFormDose, tau: f64, depot: &mut f64, id: &mut [f64; 3], c: &mut [[f64; 3]; 3]) {
        let nd = self.nd;
        let lam = &self.lambda;
        let split = lam[0] * tau <= SPLIT;
        let into_depot = self.off == 1 && d.cmt == 0;
        let j = d.cmt - self.off.min(d.cmt);
        let ka = self.ka;
        if d.duration <= 0.0 {
            let a = d.amount;
            if into_depot {
                *depot += a * (-ka * tau).exp();
                if split {
                    id[0] += a * ka * g1(ka, tau);
                    for i in 0..nd {
                        c[i][0] -= a * ka * lam[i] * f3(ka, lam[i], tau);
                    }
                } else {
                    for i in 0..nd {
                        c[i][0] += a * ka * e2(ka, lam[i], tau);
                    }
                }
            } else if split {
                id[j] += a;
                for i in 0..nd {
                    c[i][j] += a * (-lam[i] * tau).exp_m1();
                }
            } else {
                for i in 0..nd {
                    c[i][j] += a * (-lam[i] * tau).exp();
                }
            }
            return;
        }
        let rate = d.amount / d.duration;
        let dur = d.duration;
        let active = tau <= dur;
        if into_depot {
            if active {
                *depot += rate * g1(ka, tau);
                for i in 0..nd {
                    c[i][0] += rate * ka * f3(ka, lam[i], tau);
                }
            } else {
                let s = tau - dur;
                let dep_end = g1(ka, dur);
                *depot += rate * dep_end * (-ka * s).exp();
                for i in 0..nd {
                    let l = lam[i];
                    c[i][0] += rate * ka * (f3(ka, l, dur) * (-l * s).exp() + dep_end * e2(ka, l, s));
                }
            }
        } else if active {
            if split {
                id[j] += rate * tau;
                for i in 0..nd {
                    c[i][j] += rate * g1_minus_t(lam[i], tau);
                }
            } else {
                for i in 0..nd {
                    c[i][j] += rate * g1(lam[i], tau);
                }
            }
        } else {
            let s = tau - dur;
            if split {
                // G(λ,T) e^{-λs} = T + (G(λ,T) − T) e^{-λs} + T·expm1(−λs)
                id[j] += rate * dur;
                for i in 0..nd {
                    let l = lam[i];
                    c[i][j] += rate * (g1_minus_t(l, dur) * (-l * s).exp() + dur * (-l * s).exp_m1());
                }
            } else {
                for i in 0..nd {
                    let l = lam[i];
                    c[i][j] += rate * g1(l, dur) * (-l * s).exp();
                }
            }
        }
    }

    /// Amounts in every state at time `t` (`out.len() == nstates()`): the
    /// superposition of the responses to every dose given up to `t` (a
    /// bolus at exactly `t` counts). The eliminated state is the total dose
    /// given so far minus the amount in the other states.
    pub fn amounts_at(&self, doses: &[ClosedFormDose], t: f64, out: &mut [f64]) -> Result<(), PkError> {
        self.check_doses(doses)?;
        Self::check_len(self.nstates(), out.len())?;
        self.amounts_at_unchecked(doses, t, out);
        Ok(())
    }

    fn amounts_at_unchecked(&self, doses: &[ClosedFormDose], t: f64, out: &mut [f64]) {
        let mut depot = 0.0;
        let mut id = [0.0; 3];
        let mut c = [[0.0; 3]; 3];
        let mut given = 0.0;
        for d in doses {
            let tau = t - d.time;
            if tau < 0.0 {
                continue;
            }
            self.add_dose(d, tau, &mut depot, &mut id, &mut c);
            given += d.given_by(t);
        }
        let mut inside = 0.0;
        if self.off == 1 {
            out[0] = depot;
            inside += depot;
        }
        for m in 0..self.nd {
            let mut v = id[m];
            for (pi, ci) in self.proj.iter().zip(&c).take(self.nd) {
                for j in 0..self.nd {
                    v += pi[m][j] * ci[j];
                }
            }
            out[self.off + m] = v;
            inside += v;
        }
        out[self.off + self.nd] = given - inside;
    }

    /// Concentration output (`output_scale · central / V1`) at time `t`.
    pub fn concentration_at(&self, doses: &[ClosedFormDose], t: f64) -> Result<f64, PkError> {
        let mut x = [0.0; 5];
        let n = self.nstates();
        self.amounts_at(doses, t, &mut x[..n])?;
        Ok(self.concentration(&x[..n]))
    }

    /// Concentration output for amounts `x` (`output_scale · central / V1`).
    #[inline]
    pub fn concentration(&self, x: &[f64]) -> f64 {
        self.model.output_scale * x[self.off] / self.v1
    }

    /// Propagates dosable amounts `x` exactly over `k.dt` under constant
    /// infusion rates `r` (both indexed like the dosable states).
    #[inline]
    fn advance(&self, x: &mut [f64; 4], r: &[f64; 4], k: &Step) {
        let nd = self.nd;
        let off = self.off;
        let (xd, rd) = if off == 1 { (x[0], r[0]) } else { (0.0, 0.0) };
        let mut y = [0.0; 3];
        for j in 0..nd {
            y[j] = k.id_bolus * x[off + j] + k.id_inf * r[off + j];
        }
        y[0] += self.ka * xd * k.id_depot;
        for i in 0..nd {
            // Mode i's image of: old state decayed, infusion, depot input.
            let mut src = [0.0; 3];
            for j in 0..nd {
                src[j] = k.bolus[i] * x[off + j] + k.inf[i] * r[off + j];
            }
            src[0] += self.ka * (xd * k.depot[i] + rd * k.depot_inf[i]);
            let pi = &self.proj[i];
            for (m, ym) in y.iter_mut().enumerate().take(nd) {
                *ym += (0..nd).map(|j| pi[m][j] * src[j]).sum::<f64>();
            }
        }
        if off == 1 {
            x[0] = xd * k.exa + rd * k.ga;
        }
        x[off..off + nd].copy_from_slice(&y[..nd]);
    }

    /// Amounts in every state at each of the non-decreasing `times`
    /// (`out` row-major, `times.len() × nstates()`), by exact propagation
    /// from breakpoint to breakpoint. Agrees with
    /// [`amounts_at`](Self::amounts_at) to round-off and costs
    /// O(doses + times) instead of O(doses × times).
    pub fn amounts_at_times(&self, doses: &[ClosedFormDose], times: &[f64], out: &mut [f64]) -> Result<(), PkError> {
        self.check_doses(doses)?;
        let n = self.nstates();
        Self::check_len(n * times.len(), out.len())?;
        let mut prev = f64::NEG_INFINITY;
        for (index, &value) in times.iter().enumerate() {
            if !(value.is_finite() && value >= prev) {
                return Err(PkError::UnsortedTimes { index, value });
            }
            prev = value;
        }
        // Breakpoints: (time, state, bolus amount, rate change).
        let mut events: Vec<(f64, usize, f64, f64)> = Vec::with_capacity(2 * doses.len());
        for d in doses {
            if d.duration > 0.0 {
                let rate = d.amount / d.duration;
                events.push((d.time, d.cmt, 0.0, rate));
                events.push((d.time + d.duration, d.cmt, 0.0, -rate));
            } else {
                events.push((d.time, d.cmt, d.amount, 0.0));
            }
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        if events.is_empty() {
            out.iter_mut().for_each(|v| *v = 0.0);
            return Ok(());
        }
        let mut x = [0.0; 4];
        let mut r = [0.0; 4];
        let mut given = 0.0;
        let mut now = events[0].0;
        let mut cache: Option<Step> = None;
        let mut advance = |x: &mut [f64; 4], r: &[f64; 4], dt: f64| {
            let k = match cache {
                Some(k) if k.dt == dt => k,
                _ => {
                    let k = self.step(dt);
                    cache = Some(k);
                    k
                }
            };
            self.advance(x, r, &k);
        };
        let mut next = 0;
        let ndose = self.off + self.nd;
        for (row, &t) in out.chunks_exact_mut(n).zip(times) {
            while next < events.len() && events[next].0 <= t {
                let (te, cmt, amount, rate) = events[next];
                if te > now {
                    advance(&mut x, &r, te - now);
                    given += r.iter().sum::<f64>() * (te - now);
                    now = te;
                }
                x[cmt] += amount;
                given += amount;
                r[cmt] += rate;
                next += 1;
            }
            if t > now {
                advance(&mut x, &r, t - now);
                given += r.iter().sum::<f64>() * (t - now);
                now = t;
            }
            // Rates of finished infusions cancel only to round-off.
            if next == events.len() {
                r = [0.0; 4];
            }
            if t < now {
                // before the first dose
                row.iter_mut().for_each(|v| *v = 0.0);
                continue;
            }
            row[..ndose].copy_from_slice(&x[..ndose]);
            row[ndose] = given - x[..ndose].iter().sum::<f64>();
        }
        Ok(())
    }

    /// Concentration output at each of the non-decreasing `times`
    /// (`out.len() == times.len()`); see
    /// [`amounts_at_times`](Self::amounts_at_times).
    pub fn concentrations_at_times(
        &self,
        doses: &[ClosedFormDose],
        times: &[f64],
        out: &mut [f64],
    ) -> Result<(), PkError> {
        Self::check_len(times.len(), out.len())?;
        let n = self.nstates();
        let mut amounts = vec![0.0; n * times.len()];
        self.amounts_at_times(doses, times, &mut amounts)?;
        for (o, x) in out.iter_mut().zip(amounts.chunks_exact(n)) {
            *o = self.concentration(x);
        }
        Ok(())
    }
}

/// Exact amounts in every state of the linear `model` at parameters `p` at
/// time `t`, for `doses` (`out.len() == model.nstates()`; the eliminated
/// amount is the total dose given so far minus the rest). Error for
/// Michaelis–Menten models, invalid parameters or doses. Builds a
/// [`LinearPkSolution`] each call: keep one instead when evaluating many
/// times at the same parameters.
pub fn closed_form_amounts(
    model: &PkModel,
    p: &[f64],
    doses: &[ClosedFormDose],
    t: f64,
    out: &mut [f64],
) -> Result<(), PkError> {
    LinearPkSolution::new(model, p)?.amounts_at(doses, t, out)
}

/// Exact concentration output (`output_scale · central / V1`) of the linear
/// `model` at parameters `p` at time `t`; see [`closed_form_amounts`].
pub fn closed_form_concentration(model: &PkModel, p: &[f64], doses: &[ClosedFormDose], t: f64) -> Result<f64, PkError> {
    LinearPkSolution::new(model, p)?.concentration_at(doses, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pk::tests::{random_params, Rng};
    use insilico_solvers::{Attr, Dose, System};

    /// Classical RK4 through every breakpoint with steps of at most `h`,
    /// infusion rates added to the dosed states.
    fn rk4(model: &PkModel, p: &[f64], doses: &[ClosedFormDose], times: &[f64], h: f64) -> Vec<Vec<f64>> {
        let n = model.nstates();
        let mut bps: Vec<f64> =
            doses.iter().flat_map(|d| [d.time, d.time + d.duration]).chain(times.iter().copied()).collect();
        bps.sort_by(f64::total_cmp);
        bps.dedup();
        let f = |t: f64, x: &[f64], dx: &mut [f64]| {
            model.rhs(t, x, &[], p, dx);
            for d in doses {
                if d.duration > 0.0 && t >= d.time && t < d.time + d.duration {
                    dx[d.cmt] += d.amount / d.duration;
                }
            }
        };
        let mut x = vec![0.0; n];
        let mut now = bps[0];
        let mut out = Vec::new();
        let mut ti = 0;
        let (mut k1, mut k2, mut k3, mut k4, mut tmp) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for &bp in &bps {
            // integrate [now, bp] (the rate is constant inside: evaluate the
            // segment's infusions at its midpoint)
            let span = bp - now;
            if span > 0.0 {
                let steps = (span / h).ceil() as usize;
                let dt = span / steps as f64;
                let mid = now + 0.5 * span;
                for _ in 0..steps {
                    f(mid, &x, &mut k1);
                    for i in 0..n {
                        tmp[i] = x[i] + 0.5 * dt * k1[i];
                    }
                    f(mid, &tmp, &mut k2);
                    for i in 0..n {
                        tmp[i] = x[i] + 0.5 * dt * k2[i];
                    }
                    f(mid, &tmp, &mut k3);
                    for i in 0..n {
                        tmp[i] = x[i] + dt * k3[i];
                    }
                    f(mid, &tmp, &mut k4);
                    for i in 0..n {
                        x[i] += dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
                    }
                }
                now = bp;
            }
            for d in doses {
                if d.duration == 0.0 && d.time == bp {
                    x[d.cmt] += d.amount;
                }
            }
            while ti < times.len() && times[ti] == bp {
                out.push(x.clone());
                ti += 1;
            }
        }
        out
    }

    fn linear_models() -> Vec<PkModel> {
        PkModel::names().iter().filter(|n| !n.ends_with("-mm")).map(|n| PkModel::from_name(n).unwrap()).collect()
    }

    fn regimen(model: &PkModel) -> Vec<ClosedFormDose> {
        let c = model.central();
        let last = model.n_compartments() - 1; // depot, central or a peripheral
        vec![
            ClosedFormDose::bolus(0.0, 0, 100.0),
            ClosedFormDose::infusion(4.0, c, 50.0, 2.5),
            ClosedFormDose::bolus(5.0, c, 30.0),
            ClosedFormDose::infusion(5.5, 0, 80.0, 3.0), // overlaps the first infusion
            ClosedFormDose::bolus(12.0, last, 40.0),
            ClosedFormDose::infusion(12.0, last, 20.0, 0.7),
            ClosedFormDose::bolus(24.0, 0, 100.0),
        ]
    }

    fn output_times() -> Vec<f64> {
        let mut t: Vec<f64> = (0..=60).map(|i| 0.8 * i as f64).collect(); // hits 4.0, 12.0, 24.0
        t.extend([6.5, 8.5, 12.7, 0.05, 1e-4]); // infusion ends, tiny times
        t.sort_by(f64::total_cmp);
        t
    }

    /// `|a − b| / max(|b|, floor)`, componentwise max.
    fn rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(floor)).fold(0.0, f64::max)
    }

    #[test]
    fn kernels_match_definitions() {
        // e2 and f3 against direct formulas far from degeneracy, and their
        // limits at a = b.
        for &(a, b, t) in
            &[(0.7f64, 0.2f64, 3.0f64), (0.2, 0.7, 0.5), (2.0, 0.01, 40.0), (0.05, 0.3, 1.0), (1.5, 0.4, 0.3)]
        {
            let e = ((-a * t).exp() - (-b * t).exp()) / (b - a);
            assert!((e2(a, b, t) - e).abs() < 1e-14 * e.abs().max(1e-300), "e2 {a} {b} {t}");
            let f = (g1(a, t) - g1(b, t)) / (b - a);
            assert!((f3(a, b, t) - f).abs() < 1e-12 * f, "f3 {a} {b} {t}: {} vs {f}", f3(a, b, t));
        }
        for &(a, t) in &[(0.7, 3.0), (0.2, 0.5), (3.0, 0.3), (0.05, 2.0)] {
            assert!((e2(a, a, t) - t * (-a * t).exp()).abs() < 1e-15);
            // ∫₀ᵗ s e^{-as} ds = (1 − e^{-at}(1 + at)) / a²
            let f = (1.0 - (-a * t).exp() * (1.0 + a * t)) / (a * a);
            assert!((f3(a, a, t) - f).abs() < 1e-11 * f, "f3({a},{a},{t})");
            // continuity across the degenerate point and the series switch
            assert!((f3(a, a * (1.0 + 1e-9), t) - f3(a, a, t)).abs() < 1e-8 * f);
        }
        let a = 0.5;
        let t = 2.0 / (1.0 + 1e-12); // big·t just ≤ 1 vs just > 1
        let lo = f3(a, 0.5, t);
        let hi = f3(a, 0.5, 2.0 * (1.0 + 1e-12));
        assert!((lo - hi).abs() < 1e-10 * lo);
        assert_eq!(f3(0.3, 0.9, 0.0), 0.0);
        assert_eq!(e2(0.3, 0.9, 0.0), 0.0);
        assert_eq!(g1(0.3, 0.0), 0.0);
    }

    #[test]
    fn closed_forms_match_rk4_for_every_linear_variant() {
        let mut rng = Rng(2024);
        let times = output_times();
        for model in linear_models() {
            for _ in 0..2 {
                let p = random_params(&model, &mut rng);
                let doses = regimen(&model);
                let sol = LinearPkSolution::new(&model, &p).unwrap();
                let reference = rk4(&model, &p, &doses, &times, 5e-4);
                let n = model.nstates();
                let mut march = vec![0.0; n * times.len()];
                sol.amounts_at_times(&doses, &times, &mut march).unwrap();
                let mut worst: f64 = 0.0;
                for (k, &t) in times.iter().enumerate() {
                    let mut x = vec![0.0; n];
                    sol.amounts_at(&doses, t, &mut x).unwrap();
                    let given: f64 = doses.iter().map(|d| d.given_by(t)).sum();
                    let floor = 1e-6 * given.max(1.0);
                    let e = rel_err(&x, &reference[k], floor);
                    worst = worst.max(e);
                    assert!(e < 1e-9, "{model} p={p:?} t={t}: {x:?} vs {:?} (err {e:e})", reference[k]);
                    // marching agrees with superposition
                    let e = rel_err(&march[k * n..(k + 1) * n], &x, 1e-3 * given.max(1.0));
                    assert!(e < 1e-11, "{model} t={t}: march {:?} vs {x:?} ({e:e})", &march[k * n..(k + 1) * n]);
                    // mass balance
                    let total: f64 = x.iter().sum();
                    assert!((total - given).abs() <= 1e-12 * given.max(1.0), "{model} t={t}");
                    // concentration
                    let c = sol.concentration_at(&doses, t).unwrap();
                    assert_eq!(c, x[model.central()] / p[model.v1_index()]);
                }
                eprintln!("{model}: worst relative error vs RK4 {worst:e}");
            }
        }
    }

    #[test]
    fn late_times_keep_relative_accuracy() {
        // Long after an infusion the amounts are tiny; the closed form must
        // not compute them as a difference of large terms.
        let model = PkModel::from_name("pk-2cmt-iv").unwrap();
        let p = [10.0, 10.0, 2.0, 30.0];
        let doses = [ClosedFormDose::infusion(0.0, 0, 100.0, 1.0)];
        let times = [1.0, 50.0, 300.0, 1000.0];
        let reference = rk4(&model, &p, &doses, &times, 5e-4);
        let sol = LinearPkSolution::new(&model, &p).unwrap();
        for (k, &t) in times.iter().enumerate() {
            let mut x = [0.0; 3];
            sol.amounts_at(&doses, t, &mut x).unwrap();
            let e = rel_err(&x[..2], &reference[k][..2], 1e-300);
            assert!(e < 1e-9, "t={t}: {x:?} vs {:?} ({e:e})", reference[k]);
        }
    }

    #[test]
    fn ka_equal_to_a_disposition_eigenvalue() {
        let times = output_times();
        let mut rng = Rng(99);
        for name in ["pk-1cmt-oral", "pk-2cmt-oral", "pk-3cmt-oral"] {
            let model = PkModel::from_name(name).unwrap();
            let mut p = random_params(&model, &mut rng);
            let eig = LinearPkSolution::new(&model, &p).unwrap().eigenvalues().to_vec();
            for &l in &eig {
                for ka in [l, l * (1.0 + 1e-9), l * (1.0 - 1e-6)] {
                    p[0] = ka;
                    let sol = LinearPkSolution::new(&model, &p).unwrap();
                    let doses = regimen(&model);
                    let reference = rk4(&model, &p, &doses, &times, 5e-4);
                    for (k, &t) in times.iter().enumerate() {
                        let mut x = vec![0.0; model.nstates()];
                        sol.amounts_at(&doses, t, &mut x).unwrap();
                        assert!(x.iter().all(|v| v.is_finite()), "{name} ka={ka}: {x:?}");
                        let given: f64 = doses.iter().map(|d| d.given_by(t)).sum();
                        let e = rel_err(&x, &reference[k], 1e-6 * given.max(1.0));
                        assert!(e < 1e-9, "{name} ka={ka} t={t}: {x:?} vs {:?} ({e:e})", reference[k]);
                    }
                }
            }
        }
        // the textbook 1-cmt oral limit: A·ka·t·e^{-kt}
        let model = PkModel::from_name("pk-1cmt-oral").unwrap();
        let mut x = [0.0; 3];
        closed_form_amounts(&model, &[0.5, 5.0, 10.0], &[ClosedFormDose::bolus(0.0, 0, 100.0)], 3.0, &mut x).unwrap();
        assert!((x[1] - 100.0 * 0.5 * 3.0 * (-1.5f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn textbook_two_compartment_bolus() {
        // Gibaldi–Perrier: C = A e^{-αt} + B e^{-βt} after an IV bolus.
        let model = PkModel::from_name("pk-2cmt-iv").unwrap();
        let (cl, v1, q, v2) = (3.0f64, 12.0f64, 5.0f64, 40.0f64);
        let (k10, k12, k21) = (cl / v1, q / v1, q / v2);
        let s = k10 + k12 + k21;
        let alpha = 0.5 * (s + (s * s - 4.0 * k10 * k21).sqrt());
        let beta = 0.5 * (s - (s * s - 4.0 * k10 * k21).sqrt());
        let dose = 250.0;
        let sol = LinearPkSolution::new(&model, &[cl, v1, q, v2]).unwrap();
        assert!((sol.eigenvalues()[0] - alpha).abs() < 1e-14);
        assert!((sol.eigenvalues()[1] - beta).abs() < 1e-13);
        for t in [0.0, 0.5, 2.0, 10.0] {
            let c = dose / v1
                * ((alpha - k21) / (alpha - beta) * (-alpha * t).exp()
                    + (k21 - beta) / (alpha - beta) * (-beta * t).exp());
            let got =
                closed_form_concentration(&model, &[cl, v1, q, v2], &[ClosedFormDose::bolus(0.0, 0, dose)], t).unwrap();
            assert!((got - c).abs() < 1e-12 * c, "t={t}: {got} vs {c}");
        }
    }

    #[test]
    fn three_compartment_eigenvalues_solve_the_cubic() {
        let model = PkModel::from_name("pk-3cmt-iv").unwrap();
        let mut rng = Rng(5);
        for _ in 0..50 {
            let p = random_params(&model, &mut rng);
            let sol = LinearPkSolution::new(&model, &p).unwrap();
            // det(M − λI) = 0 and projectors sum to I and are idempotent
            let mut sum = [[0.0; 3]; 3];
            for i in 0..3 {
                let pi = sol.projector(i);
                for r in 0..3 {
                    for c in 0..3 {
                        sum[r][c] += pi[r][c];
                        let sq: f64 = (0..3).map(|k| pi[r][k] * pi[k][c]).sum();
                        assert!((sq - pi[r][c]).abs() < 1e-10, "P² ≠ P");
                    }
                }
            }
            for r in 0..3 {
                for c in 0..3 {
                    let id = if r == c { 1.0 } else { 0.0 };
                    assert!((sum[r][c] - id).abs() < 1e-12, "ΣP ≠ I: {sum:?}");
                }
            }
            let tr: f64 = sol.eigenvalues().iter().sum();
            let (v1, k10) = (p[1], p[0] / p[1]);
            let a2 = k10 + p[2] / v1 + p[4] / v1 + p[2] / p[3] + p[4] / p[5];
            assert!((tr - a2).abs() < 1e-12 * a2);
        }
    }

    #[test]
    fn marching_handles_unsorted_doses_and_early_times() {
        let model = PkModel::from_name("pk-2cmt-oral").unwrap();
        let p = [1.0, 4.0, 20.0, 2.0, 50.0];
        let sol = LinearPkSolution::new(&model, &p).unwrap();
        let doses = [
            ClosedFormDose::bolus(10.0, 0, 100.0),
            ClosedFormDose::infusion(2.0, 1, 60.0, 4.0),
            ClosedFormDose::bolus(2.0, 2, 10.0),
        ];
        let times = [-1.0, 0.0, 2.0, 2.0, 3.0, 6.0, 10.0, 30.0];
        let mut out = vec![0.0; 4 * times.len()];
        sol.amounts_at_times(&doses, &times, &mut out).unwrap();
        for (k, &t) in times.iter().enumerate() {
            let mut x = [0.0; 4];
            sol.amounts_at(&doses, t, &mut x).unwrap();
            for i in 0..4 {
                assert!((out[4 * k + i] - x[i]).abs() < 1e-11 * x[i].abs().max(1.0), "t={t}");
            }
        }
        assert_eq!(&out[..8], &[0.0; 8]);
        assert_eq!(out[4 * 2 + 2], 10.0); // bolus at exactly t counts
        let mut conc = vec![0.0; times.len()];
        sol.concentrations_at_times(&doses, &times, &mut conc).unwrap();
        assert_eq!(conc[4], out[4 * 4 + 1] / 20.0);
        let err = sol.amounts_at_times(&doses, &[1.0, 0.5], &mut [0.0; 8]).unwrap_err();
        assert_eq!(err, PkError::UnsortedTimes { index: 1, value: 0.5 });
    }

    #[test]
    fn coinciding_disposition_rate_constants_never_give_nan() {
        // k10 = k21 with a vanishing Q: λ = 0.1 ± O(sqrt(Q)).
        let model = PkModel::from_name("pk-2cmt-iv").unwrap();
        for q in [1e-6, 1e-12, 1e-20, 1e-30] {
            let p = [1.0, 10.0, q, 10.0 * q];
            match LinearPkSolution::new(&model, &p) {
                Ok(sol) => {
                    let mut x = [0.0; 3];
                    sol.amounts_at(&[ClosedFormDose::bolus(0.0, 0, 100.0)], 5.0, &mut x).unwrap();
                    assert!(x.iter().all(|v| v.is_finite()), "Q={q}: {x:?}");
                    assert!((x[0] - 100.0 * (-0.5f64).exp()).abs() < 1e-3, "Q={q}: {x:?}");
                }
                Err(e) => assert!(matches!(e, PkError::DegenerateDisposition(_)), "{e}"),
            }
        }
        assert!(LinearPkSolution::new(&model, &[1.0, 10.0, 1e-30, 1e-29]).is_err());
    }

    #[test]
    fn errors() {
        let mm = PkModel::from_name("pk-2cmt-oral-mm").unwrap();
        let e = LinearPkSolution::new(&mm, &[1.0, 10.0, 2.0, 20.0, 2.0, 50.0]).unwrap_err();
        assert_eq!(e, PkError::NotLinear("pk-2cmt-oral-mm".into()));
        let model = PkModel::from_name("pk-1cmt-iv").unwrap();
        let mut x = [0.0; 2];
        let e = closed_form_amounts(&model, &[1.0, -1.0], &[], 1.0, &mut x).unwrap_err();
        assert!(matches!(e, PkError::InvalidParam { .. }));
        let e =
            closed_form_amounts(&model, &[1.0, 1.0], &[ClosedFormDose::bolus(0.0, 1, 1.0)], 1.0, &mut x).unwrap_err();
        assert!(matches!(e, PkError::InvalidDose { index: 0, .. }), "{e}");
        let e = closed_form_amounts(&model, &[1.0, 1.0], &[ClosedFormDose::infusion(0.0, 0, 1.0, -1.0)], 1.0, &mut x)
            .unwrap_err();
        assert!(matches!(e, PkError::InvalidDose { index: 0, .. }), "{e}");
        let e = closed_form_amounts(&model, &[1.0, 1.0], &[], 1.0, &mut [0.0; 3]).unwrap_err();
        assert_eq!(e, PkError::BufferLength { expected: 2, got: 3 });
    }

    #[test]
    fn schedule_expansion() {
        let mut lagged = Dose::bolus(1.0, 0, 100.0).repeated(12.0, 2);
        lagged.lag = Attr::Param(0);
        lagged.bioavailability = Attr::Value(0.5);
        let mut rated = Dose::bolus(3.0, 1, 60.0);
        rated.kind = DoseKind::Rate(Attr::Value(20.0));
        let schedule = Schedule::new().dose(lagged).dose(Dose::infusion(2.0, 1, 10.0, 0.5)).dose(rated);
        let doses = ClosedFormDose::from_schedule(&schedule, &[0.25]).unwrap();
        assert_eq!(
            doses,
            vec![
                ClosedFormDose::bolus(1.25, 0, 50.0),
                ClosedFormDose::bolus(13.25, 0, 50.0),
                ClosedFormDose::bolus(25.25, 0, 50.0),
                ClosedFormDose::infusion(2.0, 1, 10.0, 0.5),
                ClosedFormDose::infusion(3.0, 1, 60.0, 3.0),
            ]
        );
        let e = ClosedFormDose::from_schedule(&Schedule::new().reset(1.0), &[]).unwrap_err();
        assert!(matches!(e, PkError::UnsupportedEvent { index: 0, .. }));
        let mut ss = Dose::bolus(0.0, 0, 1.0).repeated(12.0, 0);
        ss.ss = SteadyState::Reset;
        let e = ClosedFormDose::from_schedule(&Schedule::new().dose(ss), &[]).unwrap_err();
        assert!(e.to_string().contains("steady-state"));
    }

    /// Reference-benchmark shape: 673 outputs, 56 doses. Run with
    /// `cargo test --release -p insilico-mechanistic -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let model = PkModel::from_name("pk-3cmt-oral").unwrap();
        let p = [1.1, 4.0, 20.0, 3.0, 40.0, 1.0, 80.0];
        let doses: Vec<ClosedFormDose> = (0..56)
            .map(|k| {
                if k % 2 == 0 {
                    ClosedFormDose::bolus(12.0 * k as f64, 0, 100.0)
                } else {
                    ClosedFormDose::infusion(12.0 * k as f64, 1, 50.0, 1.0)
                }
            })
            .collect();
        let times: Vec<f64> = (0..673).map(|i| i as f64).collect();
        let mut out = vec![0.0; times.len()];
        let start = std::time::Instant::now();
        let mut acc = 0.0;
        for s in 0..10_000 {
            let mut q = p;
            q[1] *= 1.0 + 1e-5 * s as f64;
            let sol = LinearPkSolution::new(&model, &q).unwrap();
            sol.concentrations_at_times(&doses, &times, &mut out).unwrap();
            acc += out[100];
        }
        eprintln!("marching: 10,000 solves in {:?} ({acc})", start.elapsed());
        let start = std::time::Instant::now();
        let sol = LinearPkSolution::new(&model, &p).unwrap();
        for _ in 0..100 {
            for (o, &t) in out.iter_mut().zip(&times) {
                *o = sol.concentration_at(&doses, t).unwrap();
            }
        }
        eprintln!("superposition: 100 solves in {:?}", start.elapsed());
    }
}
