//! What a running job reports, in order: the one stream from a job to the CLI progress bar,
//! the GUI charts and `metrics.jsonl` (one JSON line per event).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::model::memory::MemoryEstimate;

/// One step's record in metrics.jsonl and the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// SFT's next-token accuracy on the step's targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_accuracy: Option<f64>,
    pub tokens: usize,
    pub tokens_seen: usize,
    pub tokens_per_second: f64,
    pub elapsed_seconds: f64,
    /// On a GPU: the bytes its allocator holds after the step (tensors and pages kept for
    /// reuse), for the status bar and the run's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_bytes: Option<u64>,
    /// Method-specific metrics by their usual names (e.g. `rewards/margins`, `kl`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "metrics_or_nan")]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    /// NaN (written as null) for an evaluation without a held-out loss, e.g. a suite.
    #[serde(deserialize_with = "f64_or_nan")]
    pub eval_loss: f64,
    /// SFT: exp(eval loss) and next-token accuracy on the held-out split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_accuracy: Option<f64>,
    /// Other methods' held-out metrics by name (e.g. `accuracy`, `rewards/margins`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "metrics_or_nan")]
    pub metrics: BTreeMap<String, f64>,
}

/// Everything a running job reports, in order. The single path from a job to any view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Started {
        run_id: String,
        run_dir: PathBuf,
        total_steps: usize,
        start_step: usize,
        train_examples: usize,
        eval_examples: usize,
        memory: MemoryEstimate,
        /// The device the job runs on, as the user would name it (`cpu`, `wgpu:0`).
        #[serde(default)]
        device: String,
        /// A GPU's memory capacity, as its runtime reports it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_capacity_bytes: Option<u64>,
    },
    Step(StepRecord),
    Eval(EvalRecord),
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Log {
        message: String,
    },
    Finished {
        step: usize,
        run_dir: PathBuf,
    },
    Failed {
        reason: String,
    },
    Cancelled {
        step: usize,
    },
}

/// Where a job's events go: a callback (a channel to the CLI or GUI) and, once the run folder
/// exists, its `metrics.jsonl`.
pub struct EventSink {
    out: Box<dyn FnMut(JobEvent) + Send>,
    file: Option<std::fs::File>,
}

impl EventSink {
    pub fn new(out: impl FnMut(JobEvent) + Send + 'static) -> Self {
        Self { out: Box::new(out), file: None }
    }

    /// From now on, also append every event to `path`.
    pub fn attach(&mut self, path: &Path) -> Result<()> {
        self.file = Some(
            std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{}: cannot open", path.display()))?,
        );
        Ok(())
    }

    pub fn emit(&mut self, e: JobEvent) {
        if let Some(f) = &mut self.file
            && let Ok(line) = serde_json::to_string(&e)
        {
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
        (self.out)(e);
    }
}

/// Metric maps read back with NaN where a non-finite value was written as null.
fn metrics_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    Ok(BTreeMap::<String, Option<f64>>::deserialize(d)?.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
}

fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Read a run's metrics.jsonl back as events. A torn last line (a run killed mid-write) is
/// skipped; a bad line anywhere else is an error naming it.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<JobEvent>> {
    let p = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let complete = text.ends_with('\n');
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (k, (i, l)) in lines.into_iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(e) => out.push(e),
            Err(_) if k + 1 == n && !complete => break,
            Err(e) => return Err(anyhow!("{}:{}: {e}", p.display(), i + 1)),
        }
    }
    Ok(out)
}

/// Keep only the metrics lines up to `step` (a resumed run writes the rest again).
pub fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut kept = String::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue, // a line cut by a kill
        };
        let s = v.get("step").and_then(|s| s.as_u64()).map(|s| s as usize);
        let ev = v.get("event").and_then(|e| e.as_str()).unwrap_or("");
        if matches!(ev, "started") || s.is_some_and(|s| s <= step) && !matches!(ev, "finished" | "cancelled") {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::io::atomic_write(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_skipped_and_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&JobEvent::Log { message: "a".into() }).unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), format!("{good}\n{good}\n{{\"event\":\"ste")).unwrap();
        assert_eq!(read_metrics(dir.path()).unwrap().len(), 2);
        std::fs::write(dir.path().join("metrics.jsonl"), format!("{good}\n{{bad\n{good}\n")).unwrap();
        assert!(read_metrics(dir.path()).unwrap_err().to_string().contains("metrics.jsonl:2"));
    }
}
