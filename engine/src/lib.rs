//! Whetstone engine: models, tokenisation, generation, data, training methods, jobs and
//! evaluation. It knows nothing of the GUI; the `whetstone` app and its CLI drive it.
//!
//! Layers, lowest first; a module imports only from layers below it (`tests/layers.rs` checks):
//! `clock`, `io`, `device` → `text`, `kernels` → `model`, `generate` → `data` → `runs` →
//! `train` → `eval`.

pub mod clock;
pub mod data;
pub mod device;
pub mod eval;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod model;
pub mod runs;
pub mod text;
pub mod train;

pub use burn::tensor::Device;
