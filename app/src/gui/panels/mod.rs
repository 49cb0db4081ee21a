//! One file per panel. Each is `ui(app, ui)`: it reads `WorkbenchApp` state and sends commands.

pub mod data;
pub mod evaluate;
pub mod jobs;
pub mod labelling;
pub mod models;
pub mod runs;
pub mod train;
