//! The memory pre-flight: each method's peak-memory estimate from the job and the model's config
//! alone, checked against what the device can give before any weights are loaded. The Train
//! form shows the same estimate.

use anyhow::{Result, bail};
use burn::tensor::Device;

use super::spec::{JobSpec, Method};
use crate::model::ModelConfig;
use crate::model::memory::{MemoryEstimate, activation_bytes, activation_bytes_recomputed, available_memory, lora_params, weight_bytes};
use crate::runs::base_config;

/// Bytes of `[rows, seq, vocab]` f32 logits.
fn logits_bytes(cfg: &ModelConfig, rows: usize, seq: usize) -> usize {
    rows.saturating_mul(seq).saturating_mul(cfg.vocab_size).saturating_mul(4)
}

/// The peak memory of `spec` on a model with config `cfg`. Activations scale with the
/// micro-batch (`train.batch_size`), not with `grad_accum`.
pub fn estimate(spec: &JobSpec, cfg: &ModelConfig) -> Result<MemoryEstimate> {
    // A run folder's model loads as f32 (its tuned weights); a model file as the job packs it.
    let weights = if crate::runs::is_run_dir(&spec.model) {
        weight_bytes(cfg)
    } else {
        crate::model::memory::resident_weight_bytes(&spec.model, cfg, spec.packing()?)?
    };
    estimate_with_weights(spec, cfg, weights)
}

/// [`estimate`] for a model whose weights take `weights` bytes as loaded.
pub fn estimate_with_weights(spec: &JobSpec, cfg: &ModelConfig, weights: usize) -> Result<MemoryEstimate> {
    let t = &spec.train;
    let (rows, seq) = (t.batch_size, t.max_seq_len);
    let act = |rows: usize, seq: usize| {
        if t.gradient_checkpointing { activation_bytes_recomputed(cfg, rows, seq) } else { activation_bytes(cfg, rows, seq) }
    };
    let trainable = match &spec.lora {
        Some(l) => lora_params(cfg, l)?,
        None => cfg.num_params(),
    };
    // A frozen copy of the starting policy shares the frozen base with a LoRA policy, and is a
    // whole second model for full fine-tuning.
    let reference_copy = if spec.lora.is_some() { 0 } else { weights };
    Ok(match spec.method {
        Method::Sft => MemoryEstimate::from_parts(weights, 0, trainable, act(rows, seq)),
        Method::Reward => MemoryEstimate::from_parts(
            weights,
            0,
            trainable.saturating_add(cfg.hidden_size),
            activation_bytes(cfg, rows.saturating_mul(2), seq),
        ),
        Method::Dpo => MemoryEstimate::from_parts(weights, reference_copy, trainable, act(rows.saturating_mul(2), seq)),
        Method::Grpo => {
            let g = spec.grpo.clone().unwrap_or_default();
            let seq = seq.saturating_add(g.max_new_tokens);
            let reference = if g.beta > 0.0 { reference_copy } else { 0 };
            let rm = match &g.reward_model {
                Some(dir) => weight_bytes(&base_config(dir)?),
                None => 0,
            };
            let frozen = reference.saturating_add(rm);
            MemoryEstimate::from_parts(weights, frozen, trainable, act(rows.saturating_mul(g.group_size), seq))
        }
        Method::Ppo => {
            let p = spec.ppo.clone().unwrap_or_default();
            let seq = seq.saturating_add(p.max_new_tokens);
            // The critic is a copy of the reward model (trained), or of the policy; the reward
            // model itself stays frozen beside it.
            let (critic_cfg, rm) = match &p.reward_model {
                Some(dir) => {
                    let c = base_config(dir)?;
                    let w = weight_bytes(&c);
                    (c, w)
                }
                None => (cfg.clone(), 0),
            };
            let critic_trainable = match &spec.lora {
                Some(l) => lora_params(&critic_cfg, l)?,
                None => critic_cfg.num_params(),
            }
            .saturating_add(critic_cfg.hidden_size);
            let ema = if p.ema > 0.0 { weights } else { 0 };
            let frozen = [reference_copy, weight_bytes(&critic_cfg), rm, ema].iter().fold(0usize, |a, &b| a.saturating_add(b));
            // The actor's pass also keeps a full log-softmax for the entropy.
            let act = activation_bytes(cfg, rows, seq).saturating_add(logits_bytes(cfg, rows, seq).saturating_mul(2));
            MemoryEstimate::from_parts(weights, frozen, trainable.saturating_add(critic_trainable), act)
        }
        Method::Distill => {
            let d = spec.distill.as_ref().ok_or_else(|| anyhow::anyhow!("method `distill` needs a [distill] section"))?;
            let teacher = weight_bytes(&base_config(&d.teacher)?);
            let seq = if d.on_policy { seq.saturating_add(d.max_new_tokens) } else { seq };
            // Teacher logits and the divergence's softmaxes, each [rows, seq, vocab].
            let act = act(rows, seq).saturating_add(logits_bytes(cfg, rows, seq).saturating_mul(5));
            MemoryEstimate::from_parts(weights, teacher, trainable, act)
        }
    })
}

/// Refuse a job whose estimate is over what `device` can give, with the numbers and what to
/// lower.
pub fn check(spec: &JobSpec, memory: &MemoryEstimate, device: &Device) -> Result<()> {
    let Some(avail) = available_memory(device) else { return Ok(()) };
    if memory.total_bytes > avail {
        let lora = if spec.lora.is_none() { ", or use LoRA" } else { "" };
        let where_ = if crate::device::is_gpu(device) { "GPU memory is free" } else { "of RAM is available" };
        bail!(
            "this {} job needs about {:.2} GB ({}), but only {:.2} GB {where_}; lower train.batch_size (raise train.grad_accum to keep the same effective batch) or train.max_seq_len{lora}",
            spec.method.name(),
            memory.total_bytes as f64 / 1e9,
            memory.describe(),
            avail as f64 / 1e9
        );
    }
    Ok(())
}
