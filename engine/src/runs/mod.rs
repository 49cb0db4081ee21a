//! Runs: what a run folder is and what comes out of it. A run's model (its newest checkpoint
//! over its base), its tokenizer, a reward-model run's scorer, its events, checkpoints and
//! card, and exports. Training (`train`) writes run folders; evaluation and the views read them
//! through here.

pub mod card;
pub mod events;
pub mod export;
pub mod folder;
pub mod reward;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::model::lora::LoraConfig;
use crate::model::params::{read_all, set_named_params};
use crate::model::{LoadedModel, Packing};
use crate::text::tokenizer::Tokenizer;
pub use card::{RunCard, RunStatus};
pub use events::{EvalRecord, EventSink, JobEvent, StepRecord, read_metrics};
pub use folder::{Checkpoint, RunDir, TrainState, latest_checkpoint};

/// The training methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    pub const ALL: [Method; 6] = [Method::Sft, Method::Reward, Method::Ppo, Method::Dpo, Method::Grpo, Method::Distill];

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

    /// Whether the run's output is a language model (everything but a reward model).
    pub fn makes_language_model(&self) -> bool {
        *self != Method::Reward
    }
}

/// What a run folder says about its model: the part of its `job.toml` that loading needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunInfo {
    pub method: Method,
    /// The base model (HF folder, GGUF file or an earlier run).
    pub model: PathBuf,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub seed: u64,
}

impl RunInfo {
    pub fn read(run_dir: &Path) -> Result<Self> {
        let p = run_dir.join("job.toml");
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let mut info: RunInfo = toml::from_str(&text).map_err(|e| anyhow!("{}: {}", p.display(), e.message().trim()))?;
        info.model = crate::io::resolve_path(run_dir, &info.model);
        Ok(info)
    }
}

/// Is `path` a Whetstone run folder (rather than a model)?
pub fn is_run_dir(path: &Path) -> bool {
    path.is_dir() && path.join("job.toml").exists()
}

/// How many runs a chain of runs may go through (SFT → DPO → … ) before it is called a cycle.
const MAX_CHAIN: usize = 32;

/// Follow run folders down to the model file or folder they start from, refusing cycles.
fn chain(path: &Path) -> Result<Vec<(PathBuf, RunInfo)>> {
    let mut out: Vec<(PathBuf, RunInfo)> = Vec::new();
    let mut p = path.to_path_buf();
    while is_run_dir(&p) {
        let canon = p.canonicalize().unwrap_or_else(|_| p.clone());
        if out.iter().any(|(q, _)| *q == canon) || out.len() >= MAX_CHAIN {
            bail!("{}: its job.toml names a chain of runs that leads back to itself", path.display());
        }
        let info = RunInfo::read(&p)?;
        let next = info.model.clone();
        out.push((canon, info));
        p = next;
    }
    Ok(out)
}

/// The model file or folder a path finally rests on (itself, or a run's base, recursively).
pub fn root_model(path: &Path) -> Result<PathBuf> {
    Ok(match chain(path)?.last() {
        Some((_, info)) => info.model.clone(),
        None => path.to_path_buf(),
    })
}

/// The config of a model, or of the model a run trained.
pub fn base_config(path: &Path) -> Result<crate::model::ModelConfig> {
    crate::model::read_config(&root_model(path)?)
}

/// The tokenizer of a model or of a run (its base model's).
pub fn tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::load(&root_model(path)?)
}

/// Load a model to start from: an HF folder, a GGUF file, or the output of an earlier run
/// (its newest checkpoint, LoRA merged in), so pipelines chain run to run. Every weight f32.
pub fn load_base(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_base_with(path, device, Packing::Dense)
}

/// [`load_base`] with frozen weights packed as `packing` asks (a model file's; a run's tuned
/// weights are always f32).
pub fn load_base_with(path: &Path, device: &Device, packing: Packing) -> Result<LoadedModel> {
    chain(path)?;
    if !is_run_dir(path) {
        return LoadedModel::load_with(path, device, packing);
    }
    load_base_unchecked(path, device)
}

fn load_base_unchecked(path: &Path, device: &Device) -> Result<LoadedModel> {
    if !is_run_dir(path) {
        return LoadedModel::load(path, device);
    }
    let (mut lm, info) = load_trained_unchecked(path, device)?;
    if info.lora.is_some() {
        lm.model = crate::model::Transformer::from_weights(&lm.config, &lm.model.to_weights(), device);
    }
    Ok(lm)
}

/// The tuned model of a run (newest checkpoint) on `device`, with what its job said. LoRA runs
/// come back with their adapters attached (not merged).
pub fn load_trained(run_dir: &Path, device: &Device) -> Result<(LoadedModel, RunInfo)> {
    chain(run_dir)?;
    load_trained_unchecked(run_dir, device)
}

fn load_trained_unchecked(run_dir: &Path, device: &Device) -> Result<(LoadedModel, RunInfo)> {
    let info = RunInfo::read(run_dir)?;
    if !info.method.makes_language_model() {
        bail!("{}: a reward-model run does not produce a language model; load it with runs::reward::load_reward_model", run_dir.display());
    }
    let ck = latest_checkpoint(run_dir).ok_or_else(|| anyhow!("{}: run has no checkpoint", run_dir.display()))?;
    let mut lm = load_base_unchecked(&info.model, device)?;
    let model = match &info.lora {
        Some(l) => lm.model.clone().with_lora(l, info.seed)?,
        None => lm.model.clone(),
    };
    lm.model = set_named_params(model, &read_all(&ck.join("trainable.safetensors"))?)
        .with_context(|| format!("{}: checkpoint does not fit the base model", ck.display()))?;
    Ok((lm, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_names_itself_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("r");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("job.toml"), "method = \"sft\"\nmodel = \".\"\n").unwrap();
        let e = base_config(&run).unwrap_err().to_string();
        assert!(e.contains("leads back to itself"), "{e}");
        let e = load_base(&run, &Device::flex()).err().unwrap().to_string();
        assert!(e.contains("leads back to itself"), "{e}");
    }
}
