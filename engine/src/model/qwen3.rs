//! Qwen3 (`Qwen3ForCausalLM`): the Llama block plus an RMSNorm over each attention head of q
//! and k (`self_attn.q_norm` / `self_attn.k_norm`, weight of size `head_dim`), applied before
//! RoPE; `head_dim` is explicit in the config and need not equal hidden/heads. The norm itself
//! lives in `blocks::Attention`; names otherwise follow `llama.rs`.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};

use super::WeightSource;
use super::config::{Arch, ModelConfig};
use super::transformer::ModelWeights;
use crate::io::HostTensor;

pub fn from_hf(cfg: &ModelConfig, src: &dyn WeightSource) -> Result<ModelWeights> {
    ensure!(cfg.arch == Arch::Qwen3 && cfg.qk_norm, "qwen3 config must enable q/k norm");
    super::llama::from_hf(cfg, src)
}

pub fn to_hf(w: &ModelWeights) -> BTreeMap<String, HostTensor> {
    super::llama::to_hf(w)
}
