//! Jobs: a TOML spec, a runner on a background thread, and the one `JobEvent` stream that feeds
//! `runs/<id>/metrics.jsonl`, the CLI progress bar and the GUI charts. Cancel at any step
//! boundary; checkpoints are atomic and resume continues the exact trajectory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checkpoint::{named_params, set_named_params};
use super::memory::{MemoryEstimate, available_memory};
use super::optim::{AdamWConfig, Decay, lr_at};
use super::sft::{Encoded, encode, make_batch, make_packed_batch, pack_examples};
use super::{SftTrainer, StepMetrics};
use crate::data::records::{SftColumns, read_records, sft_examples};
use crate::io::safetensors::{SafetensorsFolder, SaveDtype, write_safetensors};
use crate::io::{HostTensor, atomic_write};
use crate::model::LoadedModel;
use crate::model::lora::LoraConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Supervised fine-tuning.
    Sft,
    /// Reward model on preference pairs.
    Reward,
    /// Direct preference optimisation on preference pairs.
    Dpo,
    /// RLHF with PPO against a reward model or rule rewards.
    Ppo,
    /// Group relative policy optimisation with rule rewards.
    Grpo,
    /// Teacher → student distillation.
    Distill,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Reward => "reward",
            Method::Dpo => "dpo",
            Method::Ppo => "ppo",
            Method::Grpo => "grpo",
            Method::Distill => "distill",
        }
    }
}

/// `[dpo]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSpec {
    pub beta: f64,
    pub label_smoothing: f64,
    pub variant: super::losses::DpoVariant,
}

impl Default for DpoSpec {
    fn default() -> Self {
        Self { beta: 0.1, label_smoothing: 0.0, variant: super::losses::DpoVariant::Sigmoid }
    }
}

/// `[distill]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    /// Teacher: HF folder, GGUF or run folder; must share the student's tokenizer.
    pub teacher: PathBuf,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_divergence")]
    pub divergence: super::losses::Divergence,
    /// Weight of the plain SFT loss mixed in (off-policy mode only).
    #[serde(default)]
    pub sft_weight: f64,
    /// On-policy (GKD): the student samples responses to the prompts and the teacher scores
    /// every token of them; otherwise the dataset's responses are used.
    #[serde(default)]
    pub on_policy: bool,
    /// Sequence-level KD (Kim & Rush): the teacher answers every prompt greedily first; its
    /// answers are written to `<run>/teacher_sft.jsonl` and the student is trained on them with
    /// the SFT loss.
    #[serde(default)]
    pub sequence_level: bool,
    /// Length of sampled responses in on-policy and sequence-level modes.
    #[serde(default = "default_distill_tokens")]
    pub max_new_tokens: usize,
}

fn default_distill_tokens() -> usize {
    64
}

fn default_temperature() -> f64 {
    2.0
}

fn default_divergence() -> super::losses::Divergence {
    super::losses::Divergence::ForwardKl
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// JSONL, JSON, CSV, TSV or Parquet.
    pub path: PathBuf,
    /// Column → role mapping; unset roles are guessed from column names.
    #[serde(flatten)]
    pub columns: SftColumns,
    /// Share of examples held out for evaluation (seeded split).
    #[serde(default = "default_val_fraction")]
    pub validation_fraction: f64,
    /// When `path` is a workspace folder: the dataset to use …
    #[serde(default)]
    pub name: Option<String>,
    /// … and its version (the latest when unset).
    #[serde(default)]
    pub version: Option<u32>,
    /// Use only rows whose `split` column holds this value (e.g. "train").
    #[serde(default)]
    pub split: Option<String>,
}

/// The rows a job trains on, the column mapping in force and where they came from.
pub struct DatasetData {
    pub records: Vec<crate::data::records::Record>,
    pub columns: SftColumns,
    pub sha256: String,
    /// Provenance for run.json.
    pub card: serde_json::Value,
}

impl DatasetSpec {
    /// Whether `path` names a workspace folder rather than a data file.
    pub fn is_workspace(&self) -> bool {
        self.path.join(crate::data::workspace::CONFIG_FILE).is_file()
    }

    /// Load the rows: from a data file, or from a workspace dataset version. Explicit column
    /// settings in the job override the roles mapped in the workspace.
    pub fn load(&self) -> Result<DatasetData> {
        let (mut records, columns, sha256, mut card) = if self.is_workspace() {
            let name = self.name.as_deref().ok_or_else(|| {
                anyhow!("dataset.path {} is a workspace: name the dataset with dataset.name = \"…\"", self.path.display())
            })?;
            let ws = crate::data::Workspace::open(&self.path)?;
            let (v, table) = ws.load(name, self.version)?;
            let roles = v.roles.to_sft_columns();
            let c = &self.columns;
            let columns = SftColumns {
                prompt: c.prompt.clone().or(roles.prompt),
                response: c.response.clone().or(roles.response),
                system: c.system.clone().or(roles.system),
                messages: c.messages.clone().or(roles.messages),
                chosen: c.chosen.clone().or(roles.chosen),
                rejected: c.rejected.clone().or(roles.rejected),
                reference: c.reference.clone().or(roles.reference),
            };
            let card = serde_json::json!({"workspace": self.path, "name": name, "version": v.version, "sha256": v.sha256});
            // Keep each row's workspace id, so evaluation items and labels refer to the same rows.
            let ids = table.ids()?;
            let mut records = table.records()?;
            for (r, id) in records.iter_mut().zip(ids) {
                r.insert(crate::data::ID_COLUMN.to_string(), serde_json::Value::String(id));
            }
            (records, columns, v.sha256, card)
        } else {
            let sha = sha256_file(&self.path)?;
            (read_records(&self.path)?, self.columns.clone(), sha.clone(), serde_json::json!({"path": self.path, "sha256": sha}))
        };
        if let Some(split) = &self.split {
            let before = records.len();
            records.retain(|r| r.get("split").and_then(|v| v.as_str()) == Some(split.as_str()));
            if before > 0 && records.is_empty() {
                bail!("{}: no rows with split = {split:?} (does the dataset have a `split` column?)", self.path.display());
            }
            card["split"] = serde_json::json!(split);
        }
        Ok(DatasetData { records, columns, sha256, card })
    }
}

fn default_val_fraction() -> f64 {
    0.0
}

/// Hyper-parameters. Every default is written out here and chosen for stability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    pub epochs: usize,
    /// Stop after this many optimiser steps (0: run the epochs).
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    pub max_seq_len: usize,
    /// Also learn the prompt tokens.
    pub train_on_prompt: bool,
    /// Pack several examples into each row of `max_seq_len` (attention stays within an example).
    pub packing: bool,
    /// Evaluate on the held-out split every N steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: 0,
            batch_size: 4,
            grad_accum: 1,
            lr: 2e-5,
            warmup_steps: 0,
            decay: Decay::Cosine,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            max_seq_len: 512,
            train_on_prompt: false,
            packing: false,
            eval_every: 0,
            checkpoint_every: 0,
        }
    }
}

/// A job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub method: Method,
    /// HF folder or GGUF file.
    pub model: PathBuf,
    pub dataset: DatasetSpec,
    #[serde(default)]
    pub train: TrainSpec,
    /// Present: train LoRA adapters only.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub dpo: Option<DpoSpec>,
    #[serde(default)]
    pub ppo: Option<super::ppo::PpoConfig>,
    #[serde(default)]
    pub grpo: Option<super::grpo::GrpoConfig>,
    #[serde(default)]
    pub distill: Option<DistillSpec>,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub seed: u64,
    /// Where runs go: `<output>/<run id>/`.
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// Run id (default: method + time).
    #[serde(default)]
    pub name: Option<String>,
    /// Evaluate a suite (`whetstone eval` TOML) on the model being trained every N steps, so
    /// its accuracy curve appears live (SFT).
    #[serde(default)]
    pub eval_suite: Option<SuiteHook>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteHook {
    pub suite: PathBuf,
    #[serde(default = "default_suite_every")]
    pub every: usize,
}

fn default_suite_every() -> usize {
    50
}

fn default_device() -> String {
    "cpu".into()
}

fn default_output() -> PathBuf {
    PathBuf::from("runs")
}

impl JobSpec {
    /// Parse a job file; relative paths are taken relative to the file's folder. Errors are one
    /// line naming the file, line and problem.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read job file", path.display()))?;
        let mut spec = Self::from_toml(&text).map_err(|e| anyhow!("{}:{e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![&mut spec.model, &mut spec.dataset.path, &mut spec.output];
        if let Some(d) = spec.distill.as_mut() {
            paths.push(&mut d.teacher);
        }
        if let Some(p) = spec.ppo.as_mut() {
            paths.extend(p.reward_model.as_mut());
            paths.extend(p.ptx_dataset.as_mut());
        }
        if let Some(r) = spec.grpo.as_mut().and_then(|g| g.reward_model.as_mut()) {
            paths.push(r);
        }
        if let Some(h) = spec.eval_suite.as_mut() {
            paths.push(&mut h.suite);
        }

        for p in paths {
            if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
                *p = PathBuf::from(home).join(rest);
            }
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(spec)
    }

    /// Parse TOML text; errors read `LINE: message`.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str::<Self>(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).unwrap_or(0);
            anyhow!("{line}: {}", e.message().trim().replace('\n', " "))
        })
    }

    /// Check everything that can be checked before loading weights.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if !self.model.exists() {
            bail!("model not found: {}", self.model.display());
        }
        if !self.dataset.path.exists() {
            bail!("dataset not found: {}", self.dataset.path.display());
        }
        if self.dataset.path.is_dir() && !self.dataset.is_workspace() {
            bail!("dataset.path {} is a folder but not a Whetstone workspace", self.dataset.path.display());
        }
        if self.dataset.is_workspace() && self.dataset.name.is_none() {
            bail!("dataset.path {} is a workspace: name the dataset with dataset.name = \"…\"", self.dataset.path.display());
        }
        if t.batch_size == 0 || t.grad_accum == 0 || t.max_seq_len < 2 {
            bail!("train.batch_size and train.grad_accum must be at least 1, train.max_seq_len at least 2");
        }
        if t.epochs == 0 && t.max_steps == 0 {
            bail!("train.epochs or train.max_steps must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be a positive number");
        }
        if self.eval_suite.is_some() && self.method != Method::Sft {
            bail!("eval_suite runs inside SFT jobs; evaluate other runs with `whetstone eval`");
        }
        if let Some(h) = &self.eval_suite {
            if !h.suite.exists() {
                bail!("eval_suite.suite not found: {}", h.suite.display());
            }
        }
        if !(0.0..1.0).contains(&self.dataset.validation_fraction) {
            bail!("dataset.validation_fraction must be in [0, 1)");
        }
        match self.method {
            Method::Distill if self.distill.is_none() => bail!("method `distill` needs a [distill] section with `teacher`"),
            Method::Distill if self.distill.as_ref().is_some_and(|d| d.on_policy && d.sequence_level) => {
                bail!("[distill] on_policy and sequence_level are two different modes; choose one")
            }
            Method::Ppo => {
                let p = self.ppo.clone().unwrap_or_default();
                if p.reward_model.is_none() && p.rules.is_empty() {
                    bail!("method `ppo` needs [ppo] reward_model = \"runs/<reward run>\" or [[ppo.rules]]");
                }
                if let Some(r) = &p.reward_model {
                    if !r.join("job.toml").exists() {
                        bail!("reward model run not found: {}", r.display());
                    }
                }
            }
            Method::Grpo if self.grpo.as_ref().is_none_or(|g| g.rules.is_empty() && g.reward_model.is_none()) => {
                bail!("method `grpo` needs [[grpo.rules]] entries or [grpo] reward_model = \"runs/<reward run>\"")
            }
            _ => {}
        }
        for r in self.ppo.iter().flat_map(|p| &p.rules).chain(self.grpo.iter().flat_map(|g| &g.rules)) {
            r.rule.validate()?;
        }
        if let Some(l) = &self.lora {
            l.target_names()?;
            if l.rank == 0 || !(0.0..1.0).contains(&l.dropout) {
                bail!("lora.rank must be at least 1 and lora.dropout in [0, 1)");
            }
        }
        Ok(())
    }
}

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
    Started { run_id: String, run_dir: PathBuf, total_steps: usize, start_step: usize, train_examples: usize, eval_examples: usize, memory: MemoryEstimate },
    Step(StepRecord),
    Eval(EvalRecord),
    Checkpoint { step: usize, path: PathBuf },
    Log { message: String },
    Finished { step: usize, run_dir: PathBuf },
    Failed { reason: String },
    Cancelled { step: usize },
}

/// A running job: its events, a cancel switch, and the thread.
pub struct JobHandle {
    pub events: Receiver<JobEvent>,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JobHandle {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How to start: fresh, or resuming a run folder.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Option<PathBuf>,
    pub device: Option<String>,
    /// Stop (as if cancelled) after this step; for tests and "run N steps" tooling.
    pub stop_after: Option<usize>,
}

/// Start a job on a background thread.
pub fn spawn(spec: JobSpec, opts: RunOptions) -> JobHandle {
    let (tx, rx) = channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let thread = std::thread::Builder::new()
        .name("whetstone-job".into())
        .spawn(move || {
            let mut sink = EventSink { tx, file: None };
            match run_any(spec, opts, &c, &mut sink) {
                Ok(()) => {}
                Err(e) => sink.emit(JobEvent::Failed { reason: format!("{e:#}") }),
            }
        })
        .expect("spawn job thread");
    JobHandle { events: rx, cancel, thread: Some(thread) }
}

/// Run jobs one after another; events of all of them arrive on one channel.
pub fn spawn_queue(jobs: Vec<(JobSpec, RunOptions)>) -> JobHandle {
    let (tx, rx) = channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let thread = std::thread::spawn(move || {
        for (spec, opts) in jobs {
            if c.load(Ordering::SeqCst) {
                break;
            }
            let mut sink = EventSink { tx: tx.clone(), file: None };
            if let Err(e) = run_any(spec, opts, &c, &mut sink) {
                sink.emit(JobEvent::Failed { reason: format!("{e:#}") });
            }
        }
    });
    JobHandle { events: rx, cancel, thread: Some(thread) }
}

fn run_any(spec: JobSpec, opts: RunOptions, cancel: &AtomicBool, sink: &mut EventSink) -> Result<()> {
    match spec.method {
        Method::Sft => run(spec, opts, cancel, sink),
        _ => super::methods::run_method(spec, opts, cancel, sink),
    }
}

pub(crate) struct EventSink {
    tx: Sender<JobEvent>,
    pub(crate) file: Option<std::fs::File>,
}

impl EventSink {
    pub(crate) fn emit(&mut self, e: JobEvent) {
        if let Some(f) = &mut self.file {
            if let Ok(line) = serde_json::to_string(&e) {
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
        }
        let _ = self.tx.send(e);
    }
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Hash of a model: the GGUF file, or the folder's config and weight files.
pub(crate) fn model_hash(path: &Path) -> Result<String> {
    if path.is_file() {
        return sha256_file(path);
    }
    let mut h = Sha256::new();
    let mut names: Vec<_> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "json"))
        .collect();
    names.sort();
    for p in names {
        h.update(p.file_name().unwrap().to_string_lossy().as_bytes());
        h.update(sha256_file(&p)?.as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Metric maps read back with NaN where a non-finite value was written as null.
fn metrics_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    Ok(BTreeMap::<String, Option<f64>>::deserialize(d)?.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
}

fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Saved progress: which step finished, and where in the data it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub optimizer_step: u64,
    pub tokens_seen: usize,
    pub elapsed_seconds: f64,
}

fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:07}"))
}

/// The newest complete checkpoint of a run.
pub fn latest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")) && p.join("state.json").exists())
        .collect();
    v.sort();
    v.pop()
}

pub(crate) fn write_checkpoint(run_dir: &Path, trainer: &SftTrainer, state: &TrainState) -> Result<PathBuf> {
    let dst = checkpoint_dir(run_dir, state.step);
    let tmp = run_dir.join("checkpoints").join(format!(".tmp-step-{:07}", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    write_safetensors(&tmp.join("trainable.safetensors"), &named_params(&trainer.model, true), SaveDtype::F32, None)?;
    write_safetensors(&tmp.join("optimizer.safetensors"), &trainer.optim.state_to_host(), SaveDtype::F32, None)?;
    atomic_write(&tmp.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&tmp, &dst).with_context(|| format!("{}: cannot finalise checkpoint", dst.display()))?;
    Ok(dst)
}

pub(crate) fn read_all(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let st = SafetensorsFolder::open_file(path)?;
    st.names().map(|n| Ok((n.to_string(), st.get(n)?))).collect()
}

/// Split examples: a seeded held-out fraction for evaluation.
pub(crate) fn split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5B17));
    let n_eval = ((n as f64) * fraction).round() as usize;
    let n_eval = if fraction > 0.0 { n_eval.clamp(1, n.saturating_sub(1)) } else { 0 };
    let eval = idx[..n_eval].to_vec();
    let mut train = idx[n_eval..].to_vec();
    train.sort_unstable();
    (train, eval)
}

/// Order of training examples in `epoch` (seeded, independent of earlier epochs).
pub(crate) fn epoch_order(train: &[usize], epoch: usize, seed: u64) -> Vec<usize> {
    let mut v = train.to_vec();
    v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)));
    v
}

fn run(spec: JobSpec, opts: RunOptions, cancel: &AtomicBool, sink: &mut EventSink) -> Result<()> {
    spec.validate()?;
    let device_name = opts.device.clone().unwrap_or_else(|| spec.device.clone());
    let device: Device = crate::device::parse_device(&device_name)?;
    let t_cfg = &spec.train;

    // Data.
    let data = spec.dataset.load()?;
    let examples = sft_examples(&data.records, &data.columns, &spec.dataset.path)?;
    let config = base_config(&spec.model)?;

    // Memory check before loading weights onto the device.
    let trainable = match &spec.lora {
        Some(l) => super::memory::lora_params(&config, l)?,
        None => config.num_params(),
    };
    let memory = MemoryEstimate::training(&config, trainable, t_cfg.batch_size, t_cfg.max_seq_len);
    if let Some(avail) = available_memory(&device) {
        if memory.total_bytes > avail {
            bail!(
                "this job needs about {:.2} GB ({}), but only {:.2} GB is available; reduce train.batch_size or train.max_seq_len, or use LoRA",
                memory.total_bytes as f64 / 1e9,
                memory.describe(),
                avail as f64 / 1e9
            );
        }
    }

    let lm = load_base(&spec.model, &device.clone().autodiff())?;
    let eos = lm.tokenizer.eos_id().or_else(|| lm.eos_ids().first().copied());
    let pad = lm.tokenizer.pad_id().or(eos).unwrap_or(0);
    let encoded: Vec<Encoded> = examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            encode(&lm.tokenizer, ex, t_cfg.max_seq_len, t_cfg.train_on_prompt, eos)
                .map_err(|e| anyhow!("{}: example {}: {e:#}", spec.dataset.path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let (train_idx, eval_idx) = split(encoded.len(), spec.dataset.validation_fraction, spec.seed);
    let per_step = t_cfg.batch_size * t_cfg.grad_accum;
    let steps_per_epoch = train_idx.len().div_ceil(per_step);
    let total_steps = if t_cfg.max_steps > 0 { t_cfg.max_steps } else { steps_per_epoch * t_cfg.epochs };

    let suite_hook = match &spec.eval_suite {
        Some(h) => {
            let suite = crate::eval::suite::SuiteSpec::from_file(&h.suite)?;
            let (items, _) = crate::eval::suite::load_items(&suite)?;
            Some((h.every.max(1), suite, items))
        }
        None => None,
    };
    let model = lm.model.clone();
    let model = match &spec.lora {
        Some(l) => model.with_lora(l, spec.seed)?,
        None => model,
    };
    let adamw = AdamWConfig { beta1: t_cfg.beta1, beta2: t_cfg.beta2, eps: t_cfg.eps, weight_decay: t_cfg.weight_decay };
    let clip = if t_cfg.max_grad_norm > 0.0 { Some(t_cfg.max_grad_norm) } else { None };
    let mut trainer = SftTrainer::new(model, adamw, clip);

    // Run folder: new, or the one being resumed.
    let (run_dir, run_id, mut state) = match &opts.resume {
        Some(dir) => {
            let ck = latest_checkpoint(dir).ok_or_else(|| anyhow!("{}: no checkpoint to resume from", dir.display()))?;
            let st: TrainState = serde_json::from_str(&std::fs::read_to_string(ck.join("state.json"))?)
                .with_context(|| format!("{}: bad state.json", ck.display()))?;
            trainer.model = set_named_params(trainer.model, &read_all(&ck.join("trainable.safetensors"))?)
                .with_context(|| format!("{}: weights do not fit this model", ck.display()))?;
            trainer.optim.state_from_host(&read_all(&ck.join("optimizer.safetensors"))?, &device)?;
            trainer.optim.step = st.optimizer_step;
            // Metrics after the checkpoint will be produced again.
            truncate_metrics(&dir.join("metrics.jsonl"), st.step)?;
            let id = dir.file_name().and_then(|n| n.to_str()).unwrap_or("run").to_string();
            (dir.clone(), id, st)
        }
        None => {
            let id = spec.name.clone().unwrap_or_else(|| {
                let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                format!("sft-{secs}")
            });
            let dir = spec.output.join(&id);
            if dir.join("run.json").exists() {
                bail!("{}: run already exists; use --resume to continue it or choose another name", dir.display());
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create run folder", dir.display()))?;
            atomic_write(&dir.join("job.toml"), toml::to_string_pretty(&spec)?.as_bytes())?;
            (dir, id, TrainState { step: 0, optimizer_step: 0, tokens_seen: 0, elapsed_seconds: 0.0 })
        }
    };
    sink.file = Some(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join("metrics.jsonl"))
            .with_context(|| format!("{}: cannot open metrics.jsonl", run_dir.display()))?,
    );
    let started = unix_seconds();
    let mut dataset_card = data.card.clone();
    let base_hash = model_hash(&spec.model)?;
    sink.emit(JobEvent::Started {
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        total_steps,
        start_step: state.step,
        train_examples: train_idx.len(),
        eval_examples: eval_idx.len(),
        memory: memory.clone(),
    });

    let t0 = Instant::now();
    let elapsed0 = state.elapsed_seconds;
    let warmup = t_cfg.warmup_steps as u64;
    let mut last: Option<StepRecord> = None;
    let mut last_eval: Option<EvalRecord> = None;
    let mut outcome = "finished";
    let mut failure: Option<String> = None;
    let mut train_loop = || -> Result<()> {
        while state.step < total_steps {
            if cancel.load(Ordering::SeqCst) {
                outcome = "cancelled";
                break;
            }
            let step = state.step; // 0-based index of the step about to run
            let epoch = step / steps_per_epoch.max(1);
            let order = epoch_order(&train_idx, epoch, spec.seed);
            let start = (step % steps_per_epoch.max(1)) * per_step;
            let chunk: Vec<&Encoded> = order[start..(start + per_step).min(order.len())].iter().map(|&i| &encoded[i]).collect();
            if spec.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
                device.seed(spec.seed.wrapping_add(step as u64)); // dropout masks reproducible on resume
            }
            let micro: Vec<_> = if t_cfg.packing {
                // The step's examples, packed into rows, split over grad_accum micro-batches.
                let rows = pack_examples(&chunk, t_cfg.max_seq_len);
                let per = rows.len().div_ceil(t_cfg.grad_accum).max(1);
                rows.chunks(per).map(|r| make_packed_batch(r, pad, t_cfg.max_seq_len, &device)).collect()
            } else {
                chunk.chunks(t_cfg.batch_size).map(|c| make_batch(c, pad, &device)).collect()
            };
            let lr = lr_at(step as u64, total_steps as u64, warmup, t_cfg.lr, t_cfg.decay);
            let t_step = Instant::now();
            let m: StepMetrics = trainer.step(&micro, lr)?;
            let dt = t_step.elapsed().as_secs_f64();
            state.step += 1;
            state.optimizer_step = trainer.optim.step;
            state.tokens_seen += m.tokens;
            state.elapsed_seconds = elapsed0 + t0.elapsed().as_secs_f64();
            if !m.loss.is_finite() || !m.grad_norm.is_finite() {
                let kept = latest_checkpoint(&run_dir).map(|p| p.display().to_string()).unwrap_or_else(|| "none".into());
                bail!("loss became {} at step {}; stopped (last checkpoint: {kept}). Try a lower train.lr", m.loss, state.step);
            }
            let rec = StepRecord {
                step: state.step,
                epoch,
                loss: m.loss,
                lr,
                grad_norm: m.grad_norm,
                token_accuracy: Some(m.token_accuracy),
                tokens: m.tokens,
                tokens_seen: state.tokens_seen,
                tokens_per_second: m.tokens as f64 / dt.max(1e-9),
                elapsed_seconds: state.elapsed_seconds,
                metrics: BTreeMap::new(),
            };
            sink.emit(JobEvent::Step(rec.clone()));
            last = Some(rec);
            let done = state.step == total_steps;
            if !eval_idx.is_empty() && (done || (t_cfg.eval_every > 0 && state.step % t_cfg.eval_every == 0)) {
                let e = evaluate(&trainer, &encoded, &eval_idx, t_cfg.batch_size, pad, &device, state.step)?;
                sink.emit(JobEvent::Eval(e.clone()));
                last_eval = Some(e);
            }
            if let Some((every, suite, items)) = &suite_hook {
                if done || state.step % every == 0 {
                    let view = crate::model::LoadedModel {
                        config: config.clone(),
                        tokenizer: lm.tokenizer.clone(),
                        model: trainer.model.without_autodiff(),
                        device: device.clone(),
                        source: spec.model.clone(),
                        format: lm.format,
                        generation_eos: lm.generation_eos.clone(),
                    };
                    let metrics = crate::eval::suite::quick_scores(suite, items, &view)?;
                    sink.emit(JobEvent::Eval(EvalRecord { step: state.step, eval_loss: f64::NAN, perplexity: None, token_accuracy: None, metrics }));
                }
            }
            // Cancelling checkpoints first, so a cancelled run resumes exactly where it stopped.
            let pausing = !done && cancel.load(Ordering::SeqCst);
            if done || pausing || (t_cfg.checkpoint_every > 0 && state.step % t_cfg.checkpoint_every == 0) {
                let p = write_checkpoint(&run_dir, &trainer, &state)?;
                sink.emit(JobEvent::Checkpoint { step: state.step, path: p });
            }
            if pausing {
                outcome = "cancelled";
                break;
            }
            if opts.stop_after.is_some_and(|s| state.step >= s) && !done {
                outcome = "cancelled";
                break;
            }
        }
        Ok(())
    };
    let result = train_loop();
    if let Err(e) = &result {
        outcome = "failed";
        failure = Some(format!("{e:#}"));
    }
    dataset_card["examples"] = serde_json::json!(encoded.len());
    dataset_card["train"] = serde_json::json!(train_idx.len());
    dataset_card["eval"] = serde_json::json!(eval_idx.len());
    let card = serde_json::json!({
        "run_id": run_id,
        "method": "sft",
        "job": spec,
        "dataset": dataset_card,
        "base_model": {"path": spec.model, "sha256": base_hash, "architecture": config.arch.name(),
                       "parameters": config.num_params(), "trainable_parameters": trainable},
        "seed": spec.seed,
        "device": crate::device::device_label(&device_name),
        "versions": {"whetstone": env!("CARGO_PKG_VERSION"), "burn": "0.22.1"},
        "started": started,
        "ended": unix_seconds(),
        "status": outcome,
        "failure": failure,
        "steps": state.step,
        "total_steps": total_steps,
        "tokens_seen": state.tokens_seen,
        "final_metrics": {"train": last, "eval": last_eval},
        "memory_estimate": memory,
    });
    atomic_write(&run_dir.join("run.json"), serde_json::to_string_pretty(&card)?.as_bytes())?;
    result?;
    if outcome == "cancelled" {
        sink.emit(JobEvent::Cancelled { step: state.step });
    } else {
        sink.emit(JobEvent::Finished { step: state.step, run_dir: run_dir.clone() });
    }
    Ok(())
}

fn evaluate(trainer: &SftTrainer, encoded: &[Encoded], idx: &[usize], bs: usize, pad: u32, device: &Device, step: usize) -> Result<EvalRecord> {
    let model = trainer.model.without_autodiff();
    let (mut nll, mut correct, mut n) = (0.0, 0.0, 0usize);
    for c in idx.chunks(bs) {
        let exs: Vec<&Encoded> = c.iter().map(|&i| &encoded[i]).collect();
        let b = make_batch(&exs, pad, device);
        let (l, k) = super::sft::nll_sum(&model, &b);
        nll += l.into_scalar::<f32>() as f64;
        correct += k.into_scalar::<f32>() as f64;
        n += b.n_targets;
    }
    let loss = nll / n.max(1) as f64;
    Ok(EvalRecord {
        step,
        eval_loss: loss,
        perplexity: Some(loss.exp()),
        token_accuracy: Some(correct / n.max(1) as f64),
        metrics: BTreeMap::new(),
    })
}

/// Keep only the metrics lines up to `step` (a resumed run writes the rest again).
pub(crate) fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
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
    atomic_write(path, kept.as_bytes())
}

/// Seconds since the Unix epoch (run.json's `started` / `ended`).
pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Read a run's metrics.jsonl back as events.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<JobEvent>> {
    let p = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| anyhow!("{}:{}: {e}", p.display(), i + 1)))
        .collect()
}

/// Is `path` a Whetstone run folder (rather than a model)?
pub fn is_run_dir(path: &Path) -> bool {
    path.is_dir() && path.join("job.toml").exists()
}

/// The config of a model, or of the model a run trained.
pub fn base_config(path: &Path) -> Result<crate::model::ModelConfig> {
    if is_run_dir(path) {
        let spec = JobSpec::from_file(&path.join("job.toml"))?;
        return base_config(&spec.model);
    }
    crate::model::read_config(path)
}

/// Load a model to start from: an HF folder, a GGUF file, or the output of an earlier run
/// (its newest checkpoint, LoRA merged in), so pipelines chain run to run.
pub fn load_base(path: &Path, device: &Device) -> Result<LoadedModel> {
    if !is_run_dir(path) {
        return LoadedModel::load(path, device);
    }
    let (mut lm, spec) = load_trained(path, device)?;
    anyhow::ensure!(
        matches!(spec.method, Method::Sft | Method::Dpo | Method::Ppo | Method::Grpo | Method::Distill),
        "{}: a {} run does not produce a language model to start from",
        path.display(),
        spec.method.name()
    );
    if spec.lora.is_some() {
        lm.model = crate::model::Transformer::from_weights(&lm.config, &lm.model.to_weights(), device);
    }
    Ok(lm)
}

/// The tuned model of a run (newest checkpoint) on `device`, with its job spec. LoRA runs come
/// back with their adapters attached (not merged).
pub fn load_trained(run_dir: &Path, device: &Device) -> Result<(LoadedModel, JobSpec)> {
    let spec = JobSpec::from_file(&run_dir.join("job.toml"))?;
    anyhow::ensure!(
        spec.method != Method::Reward,
        "{}: a reward-model run; load it with train::methods::load_reward_model",
        run_dir.display()
    );
    let ck = latest_checkpoint(run_dir).ok_or_else(|| anyhow!("{}: run has no checkpoint", run_dir.display()))?;
    let mut lm = load_base(&spec.model, device)?;
    let model = match &spec.lora {
        Some(l) => lm.model.clone().with_lora(l, spec.seed)?,
        None => lm.model.clone(),
    };
    lm.model = set_named_params(model, &read_all(&ck.join("trainable.safetensors"))?)
        .with_context(|| format!("{}: checkpoint does not fit the base model", ck.display()))?;
    Ok((lm, spec))
}

/// What `export` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// A full HF folder (full fine-tune, or LoRA merged into the base).
    HfFolder,
    /// A PEFT adapter folder.
    PeftAdapter,
}

/// Export a run: an HF folder (LoRA merged when `merge`), or the PEFT adapter alone.
pub fn export_run(run_dir: &Path, out: &Path, merge: bool, dtype: SaveDtype) -> Result<ExportKind> {
    let spec = JobSpec::from_file(&run_dir.join("job.toml"))?;
    if spec.method == Method::Reward {
        let (rm, base) = super::methods::load_reward_model(run_dir, &Device::flex())?;
        let rm = super::methods::merged_reward_model(rm, &base);
        rm.save_hf(out, &base)?;
        return Ok(ExportKind::HfFolder);
    }
    let (lm, spec) = load_trained(run_dir, &Device::flex())?;
    match (&spec.lora, merge) {
        (Some(l), false) => {
            crate::model::lora::save_peft(&lm.model, l, &spec.model.display().to_string(), out)?;
            Ok(ExportKind::PeftAdapter)
        }
        _ => {
            lm.save_hf(out, dtype)?;
            Ok(ExportKind::HfFolder)
        }
    }
}
