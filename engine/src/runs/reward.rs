//! A reward-model run: its trained scorer, and the one way a response is scored, which is the
//! way the reward model was trained (`text::sft::reward_input`). PPO, GRPO and evaluation use it.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::Device;

use super::{Method, RunInfo, latest_checkpoint, load_base};
use crate::model::LoadedModel;
use crate::model::params::{read_all, set_named_params};
use crate::model::reward::{RewardModel, score_batch};
use crate::text::sft::reward_input;
use crate::text::tokenizer::Tokenizer;

/// A reward-model run's model: base (with LoRA if the run used it) + trained head, on `device`,
/// and the base it was trained on.
pub fn load_reward_model(run_dir: &Path, device: &Device) -> Result<(RewardModel, LoadedModel)> {
    let info = RunInfo::read(run_dir)?;
    if info.method != Method::Reward {
        bail!("{}: a {} run, not a reward-model run", run_dir.display(), info.method.name());
    }
    let ck = latest_checkpoint(run_dir).ok_or_else(|| anyhow!("{}: run has no checkpoint", run_dir.display()))?;
    let lm = load_base(&info.model, device)?;
    let backbone = match &info.lora {
        Some(l) => lm.model.clone().with_lora(l, info.seed)?,
        None => lm.model.clone(),
    };
    let rm = RewardModel::new(backbone, lm.config.hidden_size, info.seed);
    let rm = set_named_params(rm, &read_all(&ck.join("trainable.safetensors"))?)
        .with_context(|| format!("{}: checkpoint does not fit the base model", ck.display()))?;
    Ok((rm, lm))
}

/// A trained reward model with its tokenizer, scoring (prompt, response) texts.
pub struct RewardScorer {
    pub model: RewardModel,
    pub tokenizer: Tokenizer,
    max_len: usize,
    pad: u32,
}

impl RewardScorer {
    /// Load a reward-model run (LoRA merged) on a plain device for scoring.
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self> {
        let (rm, base) = load_reward_model(run_dir, device)?;
        Ok(Self::new(rm.merged(&base.config), &base))
    }

    /// A scorer from a reward model and the base it was trained on (for its tokenizer).
    pub fn new(model: RewardModel, base: &LoadedModel) -> Self {
        let pad = base.tokenizer.pad_id().or(base.tokenizer.eos_id()).unwrap_or(0);
        Self { model, tokenizer: base.tokenizer.clone(), max_len: base.config.max_position_embeddings, pad }
    }

    /// The score of `response` to `prompt`.
    pub fn score(&self, prompt: &str, response: &str) -> Result<f64> {
        let ids = reward_input(&self.tokenizer, prompt, response, self.max_len)?;
        let (x, last) = score_batch(&[&ids], self.pad, &self.model.backbone.device());
        Ok(self.model.score(x, &last).into_scalar::<f32>() as f64)
    }
}
