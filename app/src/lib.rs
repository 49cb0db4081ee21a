//! The `whetstone` app as a library, so the GUI can be driven by egui_kittest tests.

pub mod gui;
