//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): the Llama block with biases on the q, k and v
//! projections (none on o). Tensor names are Llama's, so loading and saving reuse `llama.rs`
//! with `qkv_bias` set by `ModelConfig::from_hf_value`.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};

use super::WeightSource;
use super::config::{Arch, ModelConfig};
use super::transformer::ModelWeights;
use crate::io::HostTensor;

pub fn from_hf(cfg: &ModelConfig, src: &dyn WeightSource) -> Result<ModelWeights> {
    ensure!(cfg.arch == Arch::Qwen2 && cfg.qkv_bias && !cfg.o_bias, "qwen2 config must have q/k/v bias only");
    super::llama::from_hf(cfg, src)
}

pub fn to_hf(w: &ModelWeights) -> BTreeMap<String, HostTensor> {
    super::llama::to_hf(w)
}
