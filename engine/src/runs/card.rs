//! `run.json`: a run's provenance card, written when the run ends (finished, cancelled or
//! failed): the job, the data version and hash, the base model's hash, seed, versions, device,
//! times and the final metrics.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Method;
use super::events::{EvalRecord, StepRecord};
use crate::model::memory::MemoryEstimate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Finished,
    Cancelled,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModelCard {
    pub path: PathBuf,
    pub sha256: String,
    /// The base is an earlier run's output.
    #[serde(default)]
    pub from_run: bool,
    pub architecture: String,
    pub parameters: usize,
    pub trainable_parameters: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    pub whetstone: String,
    pub burn: String,
}

impl Versions {
    pub fn current() -> Self {
        Self { whetstone: env!("CARGO_PKG_VERSION").into(), burn: "0.22.1".into() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    pub train: Option<StepRecord>,
    #[serde(default)]
    pub eval: Option<EvalRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCard {
    pub run_id: String,
    pub method: Method,
    /// The job as run (also in `job.toml`).
    pub job: serde_json::Value,
    /// Data file or workspace version, its hash, and the example counts.
    pub dataset: serde_json::Value,
    pub base_model: BaseModelCard,
    pub seed: u64,
    pub device: String,
    pub versions: Versions,
    /// Unix seconds.
    pub started: u64,
    pub ended: u64,
    pub status: RunStatus,
    pub failure: Option<String>,
    pub steps: usize,
    pub total_steps: usize,
    pub tokens_seen: usize,
    /// Training time over every session of the run (resumes add up).
    #[serde(default)]
    pub elapsed_seconds: f64,
    pub final_metrics: FinalMetrics,
    pub memory_estimate: MemoryEstimate,
    /// Method-specific facts (distillation: teacher and student sizes and speeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<serde_json::Value>,
}

impl RunCard {
    /// Read a run's `run.json`.
    pub fn read(run_dir: &std::path::Path) -> anyhow::Result<Self> {
        let p = run_dir.join("run.json");
        let text = std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    }
}
