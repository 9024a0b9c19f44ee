//! # insilico-mechanistic
//!
//! Mechanistic models for Insilico, each an [`insilico_solvers::System`] with
//! exact, hand-written derivatives (state Jacobian, parameter Jacobian,
//! output gradient) and an exact Jacobian sparsity pattern.
//!
//! | task | where |
//! |---|---|
//! | compartmental PK (1–3 cmt, oral/IV, linear/MM) and its closed forms | [`pk`] |
//! | tumour growth laws, Simeoni TGI driven by a PK model | [`organoid::GrowthLaw`], [`organoid::SimeoniTgi`] |
//! | spheroid reaction–diffusion under drug exposure (reference problem P2) | [`organoid::Spheroid`] |
//! | conformational master equations from an MSM CSV or a landscape (SQRA), perturbations | [`conformation::MasterEquation`] |
//! | stationary distribution, implied timescales, MFPT, exact propagator | [`conformation::analysis`] |
//!
//! The organoid and conformation modules document their equations, units and
//! parameters in their module docs (and in `docs/organoid.md`,
//! `docs/conformation.md`).
//!
//! ## Pharmacokinetic models ([`pk`])
//!
//! One type, [`PkModel`], covers twelve mammillary models, named
//! `pk-{1,2,3}cmt-{oral,iv}` with linear elimination and
//! `pk-{1,2,3}cmt-{oral,iv}-mm` with Michaelis–Menten elimination (see
//! [`PkModel::from_name`]).
//!
//! ### Units
//! Amounts in mg, volumes in L, time in h, clearances in L/h, rate
//! constants in 1/h, `VMAX` in mg/h, `KM` and concentrations in mg/L
//! (the output is multiplied by [`PkModel::output_scale`], e.g. 1000 for
//! µg/L). The equations are unit-agnostic as long as they are consistent.
//!
//! ### States (amounts), in order
//! | model | states |
//! |---|---|
//! | oral, 1 / 2 / 3 cmt | `depot, central, [peripheral1, [peripheral2]], eliminated` |
//! | iv, 1 / 2 / 3 cmt | `central, [peripheral1, [peripheral2]], eliminated` |
//!
//! Dosable compartments are every state but the last; NONMEM's `CMT` is the
//! state index + 1 (oral: depot = 1, central = 2; iv: central = 1). The
//! `eliminated` state accumulates the amount eliminated, so the sum of all
//! states equals the total dose given (declared through
//! [`System::invariants`](insilico_solvers::System::invariants) and
//! [`System::accumulators`](insilico_solvers::System::accumulators)).
//!
//! ### Parameters, in order
//! | model | linear | Michaelis–Menten |
//! |---|---|---|
//! | 1 cmt | `CL, V` | `VMAX, KM, V` |
//! | 2 cmt | `CL, V1, Q, V2` | `VMAX, KM, V1, Q, V2` |
//! | 3 cmt | `CL, V1, Q2, V2, Q3, V3` | `VMAX, KM, V1, Q2, V2, Q3, V3` |
//!
//! Oral models put `ka` (1/h) first, e.g. `pk-2cmt-oral` = `[ka, CL, V1, Q, V2]`.
//! Below `V1` stands for `V` in one-compartment models and `Q_k, V_k` for the
//! clearance and volume of peripheral `k` (`Q, V2` or `Q2, V2, Q3, V3`).
//!
//! ### Equations
//! With `A_d` the depot, `A_c` the central, `A_k` the peripheral and `A_e`
//! the eliminated amount, `C = A_c / V1`:
//!
//! ```text
//! dA_d/dt = −ka·A_d                                        (oral only)
//! dA_c/dt =  ka·A_d − E(C) − Σ_k Q_k·(C − A_k/V_k)         (ka·A_d oral only)
//! dA_k/dt =  Q_k·(C − A_k/V_k)                             (each peripheral)
//! dA_e/dt =  E(C)
//!
//! E(C) = CL·C                     linear
//! E(C) = VMAX·C / (KM + C)        Michaelis–Menten
//!
//! output 0 = output_scale · A_c / V1
//! ```
//!
//! Doses are handled by the solver: boluses add to a dosable state,
//! zero-order infusions add their rate to its derivative. The models have no
//! exogenous inputs.
//!
//! ### Closed forms
//! For linear elimination, [`LinearPkSolution`] (and the one-shot
//! [`closed_form_amounts`] / [`closed_form_concentration`]) give the exact
//! amounts for any schedule of boluses and infusions ([`ClosedFormDose`]) as
//! sums of exponentials, including the degenerate case `ka` = a disposition
//! rate constant; see [`pk::closed_form`].
//!
//! ## Example
//! ```
//! use insilico_mechanistic::{ClosedFormDose, LinearPkSolution, PkModel};
//! use insilico_solvers::System;
//!
//! let model = PkModel::from_name("pk-1cmt-oral").unwrap();
//! let p = [1.0, 5.0, 50.0]; // ka 1/h, CL L/h, V L
//! let mut dx = [0.0; 3];
//! model.rhs(0.0, &[100.0, 0.0, 0.0], &[], &p, &mut dx);
//! assert_eq!(dx, [-100.0, 100.0, 0.0]);
//!
//! let sol = LinearPkSolution::new(&model, &p).unwrap();
//! let doses = [ClosedFormDose::bolus(0.0, 0, 100.0)]; // 100 mg into the depot
//! let c = sol.concentration_at(&doses, 2.0).unwrap(); // mg/L
//! let exact = 100.0 / 50.0 * 1.0 / (1.0 - 0.1) * ((-0.2f64).exp() - (-2.0f64).exp());
//! assert!((c - exact).abs() < 1e-12);
//! ```

#![warn(missing_docs)]

pub mod conformation;
pub mod organoid;
pub mod pk;

pub use conformation::{ConformationError, MasterEquation};
pub use organoid::{DrugSource, GrowthLaw, OrganoidError, SimeoniTgi, Spheroid, SpheroidParams};
pub use pk::{
    closed_form_amounts, closed_form_concentration, Absorption, ClosedFormDose, Elimination, LinearPkSolution, PkError,
    PkModel,
};
