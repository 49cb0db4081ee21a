//! What the runner needs from a training method: its examples, one optimiser step over the
//! micro-batches it is given, held-out evaluation, and the state a checkpoint holds. Each method
//! file (`sft.rs`, `reward.rs`, `dpo.rs`, `ppo.rs`, `grpo.rs`, `distill.rs`) holds its config
//! and a trainer implementing [`Trainer`]; `runner.rs` is the one loop around all of them.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use burn::tensor::Device;

use super::optim::{AdamW, StepLr};
use super::spec::JobSpec;
use crate::data::DatasetData;
use crate::io::HostTensor;
use crate::model::{LoadedModel, Transformer};
use crate::runs::{Checkpoint, EvalRecord};

/// What one optimiser step measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOut {
    pub loss: f64,
    /// Global gradient norm before clipping (of the policy, for PPO).
    pub grad_norm: f64,
    /// Tokens the step trained on.
    pub tokens: usize,
    /// SFT's next-token accuracy.
    pub token_accuracy: Option<f64>,
    /// Method metrics by their usual names.
    pub metrics: BTreeMap<String, f64>,
}

/// A training method behind the runner.
pub trait Trainer {
    /// Number of examples (pairs, prompts, conversations) the step indices point into.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One optimiser step: `micro` holds the example indices of each micro-batch. Gradients are
    /// summed over the micro-batches, clipped and applied once.
    fn step(&mut self, micro: &[Vec<usize>], lr: StepLr) -> Result<StepOut>;

    /// Held-out metrics on examples `idx` (methods without one return `None`).
    fn evaluate(&mut self, _idx: &[usize], _batch_size: usize, _step: usize) -> Result<Option<EvalRecord>> {
        Ok(None)
    }

    /// Tensors and state to checkpoint (`trainable` holds the trained parameters).
    fn save(&self, ck: &mut Checkpoint);

    /// Continue from a checkpoint written by [`Trainer::save`].
    fn restore(&mut self, ck: &Checkpoint, device: &Device) -> Result<()>;

    /// Restart sampling generators (reseeded per step, so a resumed run samples the same).
    fn reseed(&mut self, _seed: u64) {}

    /// The language model being trained, on a plain device (for suites scored during training).
    fn language_model(&self) -> Option<Transformer> {
        None
    }

    /// Parameters that take gradients.
    fn trainable_params(&self) -> usize;

    /// Method-specific facts for the run card (distillation sizes and speeds).
    fn card(&self) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }

    /// Files the method wrote for the run folder (name, bytes), e.g. sequence-level KD's data.
    fn run_files(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

/// What a method is built from: the job, its data, the base model on the autodiff device, and
/// the policy to train (the base with LoRA adapters when the job asks).
pub struct Setup<'a> {
    pub spec: &'a JobSpec,
    pub data: &'a DatasetData,
    pub base: &'a LoadedModel,
    pub policy: Transformer,
    /// The plain (non-autodiff) device, for frozen models and rollouts.
    pub device: Device,
    pub pad: u32,
    /// The EOS appended to plain-text examples.
    pub eos: Option<u32>,
    /// Every id that ends a sampled answer.
    pub stop_ids: Vec<u32>,
}

impl Setup<'_> {
    pub fn clip(&self) -> Option<f64> {
        self.spec.train.clip()
    }

    pub fn adamw(&self) -> AdamW {
        AdamW::new(self.spec.train.adamw())
    }

    /// Where a row's error points: the dataset file or workspace.
    pub fn file(&self) -> &std::path::Path {
        &self.spec.dataset.path
    }
}

/// `part / whole` as the factor that turns a micro-batch's mean into its share of the step's mean.
pub fn share(part: usize, whole: usize) -> f64 {
    part as f64 / whole.max(1) as f64
}

/// Parameters of a module that take gradients.
pub fn count_trainable<M: burn::module::Module>(m: &M) -> usize {
    crate::model::params::named_params(m, true).values().map(|t| t.data.len()).sum()
}

/// Save an optimiser's moments and step count under `name`.
pub fn save_optim(ck: &mut Checkpoint, name: &str, opt: &AdamW) {
    ck.tensors.insert(name.to_string(), opt.state_to_host());
    ck.state.optimizers.insert(name.to_string(), opt.step);
}

/// Restore an optimiser saved by [`save_optim`].
pub fn restore_optim(ck: &Checkpoint, name: &str, opt: &mut AdamW, device: &Device) -> Result<()> {
    opt.state_from_host(ck.group(name)?, device)?;
    opt.step = *ck.state.optimizers.get(name).ok_or_else(|| anyhow!("checkpoint state lacks the step count of `{name}`"))?;
    Ok(())
}

/// Parameters of `m` by path, for a checkpoint group.
pub fn params<M: burn::module::Module>(m: &M, trainable_only: bool) -> BTreeMap<String, HostTensor> {
    crate::model::params::named_params(m, trainable_only)
}

/// Mean of `v`, 0 when empty.
pub fn mean(v: &[f32]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 }
}
