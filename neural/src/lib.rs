//! # insilico-neural
//!
//! Learned terms for hybrid mechanistic/neural models, and fitting them to data.
//!
//! ## A tour by task
//! | task | where |
//! |---|---|
//! | a small dense network with exact forward, J·v and VJPs, allocation-free | [`Mlp`], [`Workspace`] |
//! | plug in another network type | [`Residual`] (and [`check_residual`]) |
//! | attach a learned term to a mechanistic [`System`](insilico_solvers::System) and keep its invariants | [`coupling`]: [`FluxResidual`], [`RateModulation`], [`ProjectedResidual`], [`FreeResidual`] |
//! | fit shared parameters, network weights and per-subject random effects to a NONMEM-layout dataset | [`fit`] |
//! | constrain a learned flux's shape (non-decreasing, saturable) beyond the data | [`shape`] ([`fit::Penalty`]) |
//! | fast loss gradients for small systems (explicit RK with a discrete adjoint) | [`fast`] |
//! | the same for several subjects at once, network evaluated across subjects | [`lockstep`] |
//!
//! ## Example
//! ```
//! use insilico_neural::{Activation, Mlp, Workspace};
//! let net = Mlp::new(&[4, 32, 32, 3], Activation::Tanh).unwrap();
//! let w = net.init(7, 1.0); // seeded
//! let mut ws = Workspace::new(&net);
//! let (mut y, mut gx, mut gw) = ([0.0; 3], [0.0; 4], vec![0.0; net.n_params()]);
//! net.forward(&w, &[0.1, 0.2, 0.3, 0.4], &mut ws, &mut y);
//! net.backward(&w, &[1.0, 0.0, 0.0], &mut ws, Some(&mut gx), Some(&mut gw)); // ∂y0/∂x, ∂y0/∂w
//! assert!(gx.iter().all(|g| g.is_finite()));
//! ```

#![warn(missing_docs)]

pub mod coupling;
pub mod fast;
pub mod fit;
pub mod lockstep;
pub mod mlp;
pub mod residual;
pub mod shape;
mod small;

pub use coupling::{
    Channel, ChannelForm, Coupling, Feature, FluxResidual, FreeResidual, ProjectedResidual, RateModulation,
};
pub use mlp::{Activation, Mlp, Workspace};
pub use residual::{check_residual, Residual};

/// Errors of the neural crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NeuralError {
    /// Widths, lengths or indices that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A saved model or weight file that cannot be read.
    #[error("cannot read the saved model: {0}")]
    Format(String),
}
