//! Whetstone engine: models, tokenisation, generation, data, training methods, jobs and
//! evaluation. It knows nothing of the GUI; the `whetstone` app and its CLI drive it.

pub mod clock;
pub mod data;
pub mod device;
pub mod eval;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod model;
pub mod text;
pub mod train;

pub use burn::tensor::Device;
