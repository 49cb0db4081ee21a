//! Random weights in the shapes of real architectures, for measuring memory and speed at real
//! sizes without downloading a model (`whetstone bench train --shape …`). Frozen projections can
//! be made directly as packed blocks (random Q4_K / Q8_0 / bf16 bytes), so an 8 B-parameter base
//! is built in seconds and never exists in f32.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use rayon::prelude::*;
use serde_json::json;

use super::ModelConfig;
use super::transformer::{LayerWeights, ModelWeights};
use crate::io::HostTensor;
use crate::io::quant::{GgmlType, PackedMatrix};

/// The shapes `--shape` knows.
pub const SHAPES: [&str; 4] = ["llama3-8b", "qwen2.5-0.5b", "qwen2.5-1.5b", "smollm2-135m"];

/// The config of a named shape (as its `config.json` states it).
pub fn shape_config(name: &str) -> Result<ModelConfig> {
    let v = match name {
        "llama3-8b" => json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}),
        "qwen2.5-0.5b" => json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16"}),
        "qwen2.5-1.5b" => json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
            "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16"}),
        "smollm2-135m" => json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16"}),
        other => bail!("unknown shape {other:?} (known: {})", SHAPES.join(", ")),
    };
    ModelConfig::from_hf_value(&v, Path::new(name))
}

/// A fast seeded generator of values in [-a, a).
fn values(n: usize, a: f32, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        let mut s = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        for v in chunk.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *v = ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a;
        }
    });
    out
}

/// Random bytes for `n` blocks of `ty`, with sane scales (|w| ≲ `a`).
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, a: f32, seed: u64) -> Result<PackedMatrix> {
    let (be, bb) = ty.block();
    let n = rows * (cols / be);
    let mut data = vec![0u8; n * bb];
    data.par_chunks_mut(bb * 1024).enumerate().for_each(|(c, chunk)| {
        let mut s = seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for b in chunk.chunks_exact_mut(bb) {
            for x in b.iter_mut() {
                *x = next() as u8;
            }
            let put16 = |b: &mut [u8], at: usize, v: f32| b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            match ty {
                GgmlType::Q8_0 => put16(b, 0, a / 127.0),
                GgmlType::Q4K => {
                    put16(b, 0, a / (15.0 * 63.0));
                    put16(b, 2, a / 63.0);
                }
                GgmlType::BF16 => {
                    let v = ((next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a;
                    b.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
                }
                _ => {}
            }
        }
    });
    PackedMatrix::new(ty, rows, cols, data)
}

/// Random weights for `cfg`: projections (and an untied head) packed as `packed` when given,
/// else f32; embeddings and norms f32.
pub fn random_weights(cfg: &ModelConfig, packed: Option<GgmlType>, seed: u64) -> Result<ModelWeights> {
    let h = cfg.hidden_size;
    let (q, kv, i) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
    let scale = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    let mut slots = BTreeMap::new();
    let mut k = seed;
    let mut lin = |slot: String, out: usize, inp: usize, bias: bool| -> Result<(HostTensor, Option<HostTensor>)> {
        k = k.wrapping_add(1);
        let w = match packed {
            Some(ty) => {
                slots.insert(slot, random_blocks(ty, out, inp, scale(inp), k)?);
                HostTensor { shape: vec![out, inp], data: Vec::new() }
            }
            None => HostTensor::new(vec![out, inp], values(out * inp, scale(inp), k)),
        };
        Ok((w, bias.then(|| HostTensor::new(vec![out], vec![0.0; out]))))
    };
    let ones = |n: usize| (HostTensor::new(vec![n], vec![1.0; n]), None);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let s = |n: &str| ModelWeights::slot(l, n);
        layers.push(LayerWeights {
            attn_norm: ones(h),
            q: lin(s("q"), q, h, cfg.qkv_bias)?,
            k: lin(s("k"), kv, h, cfg.qkv_bias)?,
            v: lin(s("v"), kv, h, cfg.qkv_bias)?,
            o: lin(s("o"), h, q, cfg.o_bias)?,
            q_norm: cfg.qk_norm.then(|| HostTensor::new(vec![cfg.head_dim], vec![1.0; cfg.head_dim])),
            k_norm: cfg.qk_norm.then(|| HostTensor::new(vec![cfg.head_dim], vec![1.0; cfg.head_dim])),
            mlp_norm: ones(h),
            gate: Some(lin(s("gate"), i, h, false)?),
            up: lin(s("up"), i, h, false)?,
            down: lin(s("down"), h, i, false)?,
        });
    }
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(lin("lm_head".into(), cfg.vocab_size, h, false)?.0) };
    Ok(ModelWeights {
        embed: HostTensor::new(vec![cfg.vocab_size, h], values(cfg.vocab_size * h, 0.02, seed ^ 0xE)),
        pos_embed: None,
        layers,
        final_norm: ones(h),
        lm_head,
        packed: slots,
    })
}

/// The process's peak resident memory so far (`VmHWM`), when the system reports it.
pub fn peak_rss_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_their_published_sizes() {
        // Parameter counts as the model cards state them (to the nearest 10 M).
        for (name, params) in [
            ("llama3-8b", 8_030_000_000f64),
            ("qwen2.5-0.5b", 494_000_000.0),
            ("qwen2.5-1.5b", 1_544_000_000.0),
            ("smollm2-135m", 134_500_000.0),
        ] {
            let p = shape_config(name).unwrap().num_params() as f64;
            assert!((p - params).abs() / params < 0.01, "{name}: {p}");
        }
        assert!(shape_config("gpt5").is_err());
    }

    #[test]
    fn random_packed_weights_build_a_model() {
        let mut cfg = shape_config("smollm2-135m").unwrap();
        cfg.num_layers = 2;
        let w = random_weights(&cfg, Some(GgmlType::Q8_0), 1).unwrap();
        assert_eq!(w.packed.len(), 2 * 7);
        let m = crate::model::Transformer::from_weights(&cfg, &w, &burn::tensor::Device::flex());
        assert!(m.has_packed());
        let ids = crate::model::ids_tensor(&[1, 2, 3], &burn::tensor::Device::flex());
        let logits = m.forward(ids, None).try_into_vec_as::<f32>().unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }
}
