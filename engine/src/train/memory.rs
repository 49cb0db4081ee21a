//! Peak-memory estimate for a training job, checked before any weights are loaded.

use anyhow::Result;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::model::config::{Arch, ModelConfig};
use crate::model::lora::LoraConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    pub weights_bytes: usize,
    pub gradients_bytes: usize,
    pub optimizer_bytes: usize,
    pub activations_bytes: usize,
    pub total_bytes: usize,
}

impl MemoryEstimate {
    /// f32 everywhere: weights, gradients and AdamW moments of the trainable parameters, and the
    /// activations autodiff keeps for a batch of `batch × seq` tokens.
    pub fn training(cfg: &ModelConfig, trainable: usize, batch: usize, seq: usize) -> Self {
        let f = 4usize;
        let tokens = batch * seq;
        let h = cfg.hidden_size;
        let q = cfg.num_heads * cfg.head_dim;
        let kv = cfg.num_kv_heads * cfg.head_dim;
        let mlp = if cfg.arch == Arch::Gpt2 { 2 * cfg.intermediate_size } else { 4 * cfg.intermediate_size };
        // Per layer and token: norms and residuals (4h), q/k/v/o and RoPE copies (3q + 4kv),
        // MLP intermediates, and the attention scores and probabilities (2 · heads · seq).
        let per_layer_token = 4 * h + 3 * q + 4 * kv + mlp + 2 * cfg.num_heads * seq;
        // Logits, log-softmax and their gradient.
        let head = 3 * cfg.vocab_size;
        let activations = f * tokens * (cfg.num_layers * per_layer_token + head);
        let weights = f * cfg.num_params();
        let gradients = f * trainable;
        let optimizer = 2 * f * trainable;
        Self {
            weights_bytes: weights,
            gradients_bytes: gradients,
            optimizer_bytes: optimizer,
            activations_bytes: activations,
            total_bytes: weights + gradients + optimizer + activations,
        }
    }

    pub fn describe(&self) -> String {
        let g = |b: usize| if b >= 1_000_000_000 { format!("{:.2} GB", b as f64 / 1e9) } else { format!("{:.0} MB", b as f64 / 1e6) };
        format!(
            "weights {}, gradients {}, optimizer {}, activations {}",
            g(self.weights_bytes),
            g(self.gradients_bytes),
            g(self.optimizer_bytes),
            g(self.activations_bytes)
        )
    }
}

/// Trainable parameters of LoRA adapters on `cfg`.
pub fn lora_params(cfg: &ModelConfig, l: &LoraConfig) -> Result<usize> {
    let h = cfg.hidden_size;
    let q = cfg.num_heads * cfg.head_dim;
    let kv = cfg.num_kv_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    let mut per_layer = 0;
    for t in l.target_names()? {
        let (d_in, d_out) = match t {
            "q_proj" => (h, q),
            "k_proj" | "v_proj" => (h, kv),
            "o_proj" => (q, h),
            "gate_proj" | "up_proj" => (h, i),
            "down_proj" => (i, h),
            _ => (0, 0),
        };
        if t == "gate_proj" && cfg.arch == Arch::Gpt2 {
            continue;
        }
        per_layer += l.rank * (d_in + d_out);
    }
    Ok(per_layer * cfg.num_layers)
}

/// Memory the device can give a job, if known: available RAM for the CPU.
pub fn available_memory(device: &Device) -> Option<usize> {
    if *device != Device::flex() {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
