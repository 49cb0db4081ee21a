//! A job file (`JobSpec`, TOML): the method, the model, the data, `[train]` hyper-parameters
//! shared by every method, and one section per method (`[lora]`, `[dpo]`, `[ppo]`, `[grpo]`,
//! `[distill]`). Every field but `method`, `model` and `dataset.path` has a default written out
//! here; unknown keys are errors; relative paths are relative to the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::distill::DistillConfig;
use super::dpo::DpoConfig;
use super::grpo::GrpoConfig;
use super::optim::{AdamWConfig, Decay};
use super::ppo::PpoConfig;
use crate::data::DatasetSpec;
pub use crate::kernels::precision::Precision;
use crate::model::lora::LoraConfig;
pub use crate::runs::Method;

/// Learning rate when a job names none: 2e-5 for full fine-tuning, 2e-4 for LoRA adapters
/// (the usual tenfold for low-rank updates).
pub const DEFAULT_LR: f64 = 2e-5;
pub const DEFAULT_LORA_LR: f64 = 2e-4;

/// `[train]`: hyper-parameters every method honours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    pub epochs: usize,
    /// Stop after this many optimiser steps (0: run the epochs).
    pub max_steps: usize,
    /// Examples per micro-batch (what is in memory at once).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate (default: 2e-5, or 2e-4 with LoRA). PPO scales `[ppo] actor_lr` and
    /// `critic_lr` by the same schedule instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    pub warmup_steps: usize,
    pub decay: Decay,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    pub max_seq_len: usize,
    /// Also learn the prompt tokens (SFT, distillation).
    pub train_on_prompt: bool,
    /// Pack several examples into each row of `max_seq_len` (attention stays within an example).
    pub packing: bool,
    /// Evaluate on the held-out split every N steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Keep the newest N checkpoints, plus the final one (0: keep every checkpoint).
    pub checkpoint_keep: usize,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (SFT and DPO): activation memory of about one layer, for about a third more compute.
    pub gradient_checkpointing: bool,
    /// Precision of the matrix products: `f32`, or `bf16`/`f16` mixed precision over f32 master
    /// weights and AdamW moments (`f16` with dynamic loss scaling). See `kernels::precision`.
    pub precision: Precision,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: 0,
            batch_size: 4,
            grad_accum: 1,
            lr: None,
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
            checkpoint_keep: 2,
            gradient_checkpointing: false,
            precision: Precision::F32,
        }
    }
}

impl TrainSpec {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay }
    }

    /// The clip threshold, `None` when clipping is off.
    pub fn clip(&self) -> Option<f64> {
        (self.max_grad_norm > 0.0).then_some(self.max_grad_norm)
    }
}

/// `[eval_suite]`: score an evaluation suite on the model being trained every N steps.
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

/// A job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub method: Method,
    /// HF folder, GGUF file or an earlier run's folder.
    pub model: PathBuf,
    pub dataset: DatasetSpec,
    #[serde(default)]
    pub train: TrainSpec,
    /// Present: train LoRA adapters only.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub dpo: Option<DpoConfig>,
    #[serde(default)]
    pub ppo: Option<PpoConfig>,
    #[serde(default)]
    pub grpo: Option<GrpoConfig>,
    #[serde(default)]
    pub distill: Option<DistillConfig>,
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

fn default_device() -> String {
    "cpu".into()
}

fn default_output() -> PathBuf {
    PathBuf::from("runs")
}

impl JobSpec {
    /// A job with every default: what the Train form starts from.
    pub fn new(method: Method, model: PathBuf, dataset: DatasetSpec) -> Self {
        Self {
            method,
            model,
            dataset,
            train: TrainSpec::default(),
            lora: None,
            dpo: None,
            ppo: None,
            grpo: None,
            distill: None,
            device: default_device(),
            seed: 0,
            output: default_output(),
            name: None,
            eval_suite: None,
        }
    }

    /// The peak learning rate in force (the default depends on LoRA).
    pub fn peak_lr(&self) -> f64 {
        self.train.lr.unwrap_or(if self.lora.is_some() { DEFAULT_LORA_LR } else { DEFAULT_LR })
    }

    /// Parse a job file; relative paths are taken relative to the file's folder. Errors are one
    /// line naming the file, line and problem.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read job file", path.display()))?;
        let mut spec = Self::from_toml(&text).map_err(|e| anyhow!("{}:{e}", path.display()))?;
        spec.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(spec)
    }

    /// Make every path absolute: `~` is the home folder, relative paths are under `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let mut paths = vec![&mut self.model, &mut self.dataset.path, &mut self.output];
        if let Some(d) = self.distill.as_mut() {
            paths.push(&mut d.teacher);
        }
        if let Some(p) = self.ppo.as_mut() {
            paths.extend(p.reward_model.as_mut());
            paths.extend(p.ptx_dataset.as_mut());
        }
        if let Some(r) = self.grpo.as_mut().and_then(|g| g.reward_model.as_mut()) {
            paths.push(r);
        }
        if let Some(h) = self.eval_suite.as_mut() {
            paths.push(&mut h.suite);
        }
        for p in paths {
            *p = crate::io::resolve_path(base, p);
        }
    }

    /// Parse TOML text; errors read `LINE: message`.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str::<Self>(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).unwrap_or(0);
            anyhow!("{line}: {}", e.message().trim().replace('\n', " "))
        })
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Check everything that can be checked before reading data or weights.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if !self.model.exists() {
            bail!("model not found: {}", self.model.display());
        }
        self.dataset.validate()?;
        if let Some(name) = &self.name {
            crate::runs::folder::check_run_name(name)?;
        }
        if t.batch_size == 0 || t.grad_accum == 0 || t.max_seq_len < 2 {
            bail!("train.batch_size and train.grad_accum must be at least 1, train.max_seq_len at least 2");
        }
        if t.epochs == 0 && t.max_steps == 0 {
            bail!("train.epochs or train.max_steps must be at least 1");
        }
        let lr = self.peak_lr();
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("train.lr must be a positive number");
        }
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            bail!("train.max_grad_norm must be 0 (off) or a positive number");
        }
        if t.gradient_checkpointing && !matches!(self.method, Method::Sft | Method::Dpo | Method::Grpo | Method::Distill) {
            bail!("train.gradient_checkpointing is available for sft, dpo, grpo and distill jobs");
        }
        if self.eval_suite.is_some() && self.method != Method::Sft {
            bail!("eval_suite runs inside SFT jobs; evaluate other runs with `whetstone eval`");
        }
        if let Some(h) = &self.eval_suite
            && !h.suite.exists()
        {
            bail!("eval_suite.suite not found: {}", h.suite.display());
        }
        if self.dataset.validation_fraction > 0.0 && !matches!(self.method, Method::Sft | Method::Reward | Method::Dpo) {
            bail!("dataset.validation_fraction: held-out evaluation is available for sft, reward and dpo runs");
        }
        match self.method {
            Method::Distill => {
                self.distill.as_ref().ok_or_else(|| anyhow!("method `distill` needs a [distill] section with `teacher`"))?.validate()?
            }
            Method::Ppo => self.ppo.clone().unwrap_or_default().validate()?,
            Method::Grpo => self.grpo.clone().unwrap_or_default().validate()?,
            _ => {}
        }
        if let Some(l) = &self.lora {
            l.target_names()?;
            if l.rank == 0 || !(0.0..1.0).contains(&l.dropout) {
                bail!("lora.rank must be at least 1 and lora.dropout in [0, 1)");
            }
            self.packing().map_err(|e| anyhow!("lora.{e:#}"))?;
        }
        Ok(())
    }

    /// How the base model's weights are held: f32 to train them all, packed when they are a
    /// frozen LoRA base (GGUF blocks and bf16/f16 as stored, or quantised by `quantize_base`).
    pub fn packing(&self) -> Result<crate::model::Packing> {
        use crate::model::Packing;
        Ok(match &self.lora {
            None => Packing::Dense,
            Some(l) => match &l.quantize_base {
                Some(q) => Packing::parse_quantize(q)?,
                None => Packing::Stored,
            },
        })
    }

    /// The run id: `name`, or method and time.
    pub fn run_id(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("{}-{}", self.method.name(), crate::io::unix_seconds()))
    }
}
