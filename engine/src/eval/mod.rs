//! Evaluation: suites (`spec`) scored on several models (`score`) and stored in the workspace
//! (`store`), metrics with bootstrap intervals (`metrics`), blind A/B votes and Bradley–Terry
//! ratings (`ab`, `ratings`), word-level diffs for side-by-side views (`diff`), reports
//! (`report`), and suites scored while a model trains (`live`).

pub mod ab;
pub mod diff;
pub mod live;
pub mod metrics;
pub mod ratings;
pub mod report;
pub mod score;
pub mod spec;
pub mod store;
