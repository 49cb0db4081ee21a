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

/// Bytes of a model's weights as [`super::Packing`] holds them: packed projections and LM head at
/// their stored (or quantised) size, everything else f32. `path` is the model file or folder.
pub fn resident_weight_bytes(path: &std::path::Path, cfg: &ModelConfig, packing: super::Packing) -> Result<usize> {
    use super::Packing;
    use crate::io::quant::GgmlType;
    if packing == Packing::Dense || cfg.arch == Arch::Gpt2 {
        return Ok(weight_bytes(cfg));
    }
    let per = |ty: GgmlType, n: usize| {
        let (be, bb) = ty.block();
        (n / be.max(1)).saturating_mul(bb)
    };
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let g = crate::io::gguf::GgufFile::open(path)?;
        let packable = |n: &str| {
            n == "output.weight"
                || ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
                    .iter()
                    .any(|p| n.ends_with(&format!(".{p}.weight")))
        };
        let mut total = 0usize;
        for t in &g.tensors {
            let n = t.n_elements();
            let bytes = match packing {
                Packing::Stored if packable(&t.name) && t.ty != GgmlType::F32 => t.n_bytes(),
                Packing::Quantize(q) if packable(&t.name) => {
                    if t.ty == GgmlType::F32 {
                        per(q, n)
                    } else {
                        t.n_bytes()
                    }
                }
                _ => n.saturating_mul(F32),
            };
            total = total.saturating_add(bytes);
        }
        // A tied head's packed copy of the embedding.
        let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
        if let (true, Packing::Stored, Some(t)) =
            (tied, packing, g.tensors.iter().find(|t| t.name == "token_embd.weight" && t.ty != GgmlType::F32))
        {
            total = total.saturating_add(t.n_bytes());
        }
        return Ok(total);
    }
    let h = cfg.hidden_size;
    let q = cfg.num_heads.saturating_mul(cfg.head_dim);
    let kv = cfg.num_kv_heads.saturating_mul(cfg.head_dim);
    let i = cfg.intermediate_size;
    let per_layer = [h * q, 2 * h * kv, q * h, 3 * h * i].iter().fold(0usize, |a, &b| a.saturating_add(b));
    let mut proj = per_layer.saturating_mul(cfg.num_layers);
    if !cfg.tie_word_embeddings {
        proj = proj.saturating_add(cfg.vocab_size.saturating_mul(h));
    }
    let stored = match packing {
        Packing::Quantize(t) => per(t, proj),
        _ => match cfg.source_dtype.as_str() {
            "bfloat16" | "float16" | "bf16" | "f16" => proj.saturating_mul(2),
            _ => proj.saturating_mul(F32),
        },
    };
    // A tied head's packed copy of a 16-bit embedding.
    let sixteen = matches!(cfg.source_dtype.as_str(), "bfloat16" | "float16" | "bf16" | "f16");
    let tied_copy = if cfg.tie_word_embeddings && packing == Packing::Stored && sixteen {
        cfg.vocab_size.saturating_mul(h).saturating_mul(2)
    } else {
        0
    };
    Ok(weight_bytes(cfg).saturating_sub(proj.saturating_mul(F32)).saturating_add(stored).saturating_add(tied_copy))
}

/// Activations autodiff keeps for one forward and backward pass over `rows × seq` tokens, with
/// the LM head's loss read in chunks (`kernels::head`): every layer's activations, or with
/// `recompute` (per-layer activation checkpointing) one layer's plus each layer's input.
pub fn activation_bytes(cfg: &ModelConfig, rows: usize, seq: usize) -> usize {
    layer_bytes(cfg, rows, seq).saturating_mul(cfg.num_layers).saturating_add(head_chunk_bytes(cfg))
}

/// [`activation_bytes`] with per-layer recomputation.
pub fn activation_bytes_recomputed(cfg: &ModelConfig, rows: usize, seq: usize) -> usize {
    let inputs = rows.saturating_mul(seq).saturating_mul(cfg.hidden_size).saturating_mul(F32).saturating_mul(cfg.num_layers + 1);
    layer_bytes(cfg, rows, seq).saturating_add(inputs).saturating_add(head_chunk_bytes(cfg))
}

/// One decoder layer's activations for `rows × seq` tokens.
fn layer_bytes(cfg: &ModelConfig, rows: usize, seq: usize) -> usize {
    let tokens = rows.saturating_mul(seq);
    let h = cfg.hidden_size;
    let q = cfg.num_heads.saturating_mul(cfg.head_dim);
    let kv = cfg.num_kv_heads.saturating_mul(cfg.head_dim);
    let mlp = cfg.intermediate_size.saturating_mul(if cfg.arch == Arch::Gpt2 { 2 } else { 4 });
    // Per token: norms and residuals (4h), q/k/v/o and RoPE copies (3q + 4kv), MLP
    // intermediates, and the attention scores and probabilities (2 · heads · seq).
    let per_token =
        [h.saturating_mul(4), q.saturating_mul(3), kv.saturating_mul(4), mlp, cfg.num_heads.saturating_mul(seq).saturating_mul(2)]
            .iter()
            .fold(0usize, |a, &b| a.saturating_add(b));
    F32.saturating_mul(tokens).saturating_mul(per_token)
}

/// The LM head's loss works on chunks of about 16 M logits: one chunk and its gradient.
fn head_chunk_bytes(cfg: &ModelConfig) -> usize {
    let rows = ((1usize << 24) / cfg.vocab_size.max(1)).max(16);
    rows.saturating_mul(cfg.vocab_size).saturating_mul(F32).saturating_mul(2)
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

/// Memory the device can give a job, if known: available RAM for the CPU; for a GPU, its
/// capacity less what live tensors take already (another model loaded in this process). Pages
/// its allocator keeps for reuse count as free: the new job reuses them.
pub fn available_memory(device: &Device) -> Option<usize> {
    if crate::device::is_gpu(device) {
        let cap = crate::device::gpu_capacity(device)?;
        let held = device.memory_pool_usage().map_or(0, |u| u.bytes_in_use);
        return usize::try_from(cap.saturating_sub(held)).ok();
    }
    if *device != Device::flex() {
        return None;
    }
    usize::try_from(crate::device::available_ram()?).ok()
}
