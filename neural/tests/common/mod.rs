//! Set-ups shared by the neural crate's integration tests.
pub mod p4;
