//! Peak-memory arithmetic for training, checked before any weights are loaded: the parts every
//! method is made of (weights, frozen copies, gradients, AdamW moments, activations). Each
//! method's sum is in `train::preflight`; the runner and the Train form both call it.
//! Arithmetic saturates, so a hostile config cannot wrap the estimate past the check.

use anyhow::Result;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::model::config::{Arch, ModelConfig};
use crate::model::lora::LoraConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// The model being trained, whole.
    pub weights_bytes: usize,
    /// Other models held at the same time: a reference copy, a teacher, a reward model, a critic.
    #[serde(default)]
    pub frozen_bytes: usize,
    pub gradients_bytes: usize,
    pub optimizer_bytes: usize,
    pub activations_bytes: usize,
    pub total_bytes: usize,
}

impl MemoryEstimate {
    /// f32 everywhere: weights, gradients and AdamW moments of the trainable parameters, and the
    /// activations autodiff keeps for a batch of `batch × seq` tokens.
    pub fn training(cfg: &ModelConfig, trainable: usize, batch: usize, seq: usize) -> Self {
        Self::from_parts(weight_bytes(cfg), 0, trainable, activation_bytes(cfg, batch, seq))
    }

    /// Sum the parts: the trained model's weights, frozen models, gradients and AdamW moments of
    /// `trainable` f32 parameters, and activations.
    pub fn from_parts(weights: usize, frozen: usize, trainable: usize, activations: usize) -> Self {
        let gradients = trainable.saturating_mul(F32);
        let optimizer = trainable.saturating_mul(2 * F32);
        let total = [weights, frozen, gradients, optimizer, activations].iter().fold(0usize, |a, &b| a.saturating_add(b));
        Self {
            weights_bytes: weights,
            frozen_bytes: frozen,
            gradients_bytes: gradients,
            optimizer_bytes: optimizer,
            activations_bytes: activations,
            total_bytes: total,
        }
    }

    pub fn describe(&self) -> String {
        let g = |b: usize| if b >= 1_000_000_000 { format!("{:.2} GB", b as f64 / 1e9) } else { format!("{:.0} MB", b as f64 / 1e6) };
        let frozen = if self.frozen_bytes > 0 { format!(", other models {}", g(self.frozen_bytes)) } else { String::new() };
        format!(
            "weights {}{frozen}, gradients {}, optimizer {}, activations {}",
            g(self.weights_bytes),
            g(self.gradients_bytes),
            g(self.optimizer_bytes),
            g(self.activations_bytes)
        )
    }
}

const F32: usize = 4;

/// Bytes of a model's weights in f32.
pub fn weight_bytes(cfg: &ModelConfig) -> usize {
    cfg.num_params().saturating_mul(F32)
}

/// Activations autodiff keeps for one forward and backward pass over `rows × seq` tokens.
pub fn activation_bytes(cfg: &ModelConfig, rows: usize, seq: usize) -> usize {
    let tokens = rows.saturating_mul(seq);
    let h = cfg.hidden_size;
    let q = cfg.num_heads.saturating_mul(cfg.head_dim);
    let kv = cfg.num_kv_heads.saturating_mul(cfg.head_dim);
    let mlp = cfg.intermediate_size.saturating_mul(if cfg.arch == Arch::Gpt2 { 2 } else { 4 });
    // Per layer and token: norms and residuals (4h), q/k/v/o and RoPE copies (3q + 4kv), MLP
    // intermediates, and the attention scores and probabilities (2 · heads · seq).
    let per_layer_token =
        [h.saturating_mul(4), q.saturating_mul(3), kv.saturating_mul(4), mlp, cfg.num_heads.saturating_mul(seq).saturating_mul(2)]
            .iter()
            .fold(0usize, |a, &b| a.saturating_add(b));
    // Logits, log-softmax and their gradient.
    let head = cfg.vocab_size.saturating_mul(3);
    F32.saturating_mul(tokens).saturating_mul(cfg.num_layers.saturating_mul(per_layer_token).saturating_add(head))
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
        per_layer += l.rank.saturating_mul(d_in.saturating_add(d_out));
    }
    Ok(per_layer.saturating_mul(cfg.num_layers))
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
