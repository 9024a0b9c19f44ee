//! # insilico-models-zoo
//!
//! Reserved for ready-made hybrid models with documented default parameters
//! (see `docs/ARCHITECTURE.md` when it exists, and the design sketch). It holds
//! nothing yet: the models in use today live where they are built —
//! compartmental PK in `insilico-mechanistic::pk`, batched ensemble models in
//! `insilico-kernels::model`, hybrid couplings in `insilico-neural`.
