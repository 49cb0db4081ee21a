//! Evaluation: metrics with bootstrap intervals, suites run on several models and stored in
//! the workspace, word-level diffs for side-by-side views, blind A/B ratings (Bradley–Terry),
//! and reports.

pub mod diff;
pub mod metrics;
pub mod ratings;
pub mod report;
pub mod suite;
