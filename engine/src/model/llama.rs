//! Llama family: Llama 2 and 3 (with `rope_type: llama3` scaling), Mistral (full attention),
//! SmolLM, and any `LlamaForCausalLM` checkpoint. Pre-norm RMSNorm blocks, rotary positions in
//! Hugging Face's rotate-half layout, grouped-query attention, SwiGLU MLP.
//!
//! This file owns the Hugging Face tensor names that Qwen2 and Qwen3 share with Llama, and the
//! llama.cpp (GGUF) names and q/k row permutation.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};

use super::config::ModelConfig;
use super::transformer::{LayerWeights, ModelWeights};
use super::{Packing, WeightSource};
use crate::io::HostTensor;
use crate::io::gguf::{GgufFile, unpermute_qk};
use crate::io::quant::{GgmlType, PackedMatrix};

type Pair = (HostTensor, Option<HostTensor>);

/// Read Llama-family HF weights (`model.layers.N.self_attn.q_proj.weight`, …). Biases and q/k
/// norms are read when the config says the architecture has them.
pub fn from_hf(cfg: &ModelConfig, src: &dyn WeightSource) -> Result<ModelWeights> {
    let h = cfg.hidden_size;
    let (q_out, kv_out) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let i = cfg.intermediate_size;
    let mut packed = BTreeMap::new();
    // A projection's weight: packed when the source keeps it so (its dense slot then holds only
    // the shape), else f32.
    let mut lin = |slot: String, name: &str, out: usize, inp: usize, bias: bool| -> Result<Pair> {
        let wname = format!("{name}.weight");
        let w = match src.packed(&wname, &[out, inp])? {
            Some(p) => {
                packed.insert(slot, p);
                HostTensor { shape: vec![out, inp], data: Vec::new() }
            }
            None => src.get_shaped(&wname, &[out, inp])?,
        };
        let b = if bias { Some(src.get_shaped(&format!("{name}.bias"), &[out])?) } else { None };
        Ok((w, b))
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let m = format!("{p}.mlp");
        let slot = |n: &str| ModelWeights::slot(l, n);
        layers.push(LayerWeights {
            attn_norm: (src.get_shaped(&format!("{p}.input_layernorm.weight"), &[h])?, None),
            q: lin(slot("q"), &format!("{a}.q_proj"), q_out, h, cfg.qkv_bias)?,
            k: lin(slot("k"), &format!("{a}.k_proj"), kv_out, h, cfg.qkv_bias)?,
            v: lin(slot("v"), &format!("{a}.v_proj"), kv_out, h, cfg.qkv_bias)?,
            o: lin(slot("o"), &format!("{a}.o_proj"), h, q_out, cfg.o_bias)?,
            q_norm: if cfg.qk_norm { Some(src.get_shaped(&format!("{a}.q_norm.weight"), &[cfg.head_dim])?) } else { None },
            k_norm: if cfg.qk_norm { Some(src.get_shaped(&format!("{a}.k_norm.weight"), &[cfg.head_dim])?) } else { None },
            mlp_norm: (src.get_shaped(&format!("{p}.post_attention_layernorm.weight"), &[h])?, None),
            gate: Some(lin(slot("gate"), &format!("{m}.gate_proj"), i, h, cfg.mlp_bias)?),
            up: lin(slot("up"), &format!("{m}.up_proj"), i, h, cfg.mlp_bias)?,
            down: lin(slot("down"), &format!("{m}.down_proj"), h, i, cfg.mlp_bias)?,
        });
    }
    // Some checkpoints mark embeddings untied but omit lm_head; others tie but still store it.
    let lm_head = if !cfg.tie_word_embeddings && src.has("lm_head.weight") {
        Some(lin("lm_head".into(), "lm_head", cfg.vocab_size, h, false)?.0)
    } else {
        None
    };
    // A tied head reads the embedding: a packed copy as stored serves the head (same values).
    if lm_head.is_none()
        && let Some(p) = src.packed_as_stored("model.embed_tokens.weight", &[cfg.vocab_size, h])?
    {
        packed.insert("tied_head".into(), p);
    }
    Ok(ModelWeights {
        embed: src.get_shaped("model.embed_tokens.weight", &[cfg.vocab_size, h])?,
        pos_embed: None,
        layers,
        final_norm: (src.get_shaped("model.norm.weight", &[h])?, None),
        lm_head,
        packed,
    })
}

/// HF tensor names and values for Llama-family weights.
pub fn to_hf(w: &ModelWeights) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    let mut put = |name: String, pair: &Pair| {
        out.insert(format!("{name}.weight"), pair.0.clone());
        if let Some(b) = &pair.1 {
            out.insert(format!("{name}.bias"), b.clone());
        }
    };
    put("model.embed_tokens".into(), &(w.embed.clone(), None));
    for (l, lw) in w.layers.iter().enumerate() {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm"), &lw.attn_norm);
        put(format!("{p}.self_attn.q_proj"), &lw.q);
        put(format!("{p}.self_attn.k_proj"), &lw.k);
        put(format!("{p}.self_attn.v_proj"), &lw.v);
        put(format!("{p}.self_attn.o_proj"), &lw.o);
        if let Some(n) = &lw.q_norm {
            put(format!("{p}.self_attn.q_norm"), &(n.clone(), None));
        }
        if let Some(n) = &lw.k_norm {
            put(format!("{p}.self_attn.k_norm"), &(n.clone(), None));
        }
        put(format!("{p}.post_attention_layernorm"), &lw.mlp_norm);
        if let Some(g) = &lw.gate {
            put(format!("{p}.mlp.gate_proj"), g);
        }
        put(format!("{p}.mlp.up_proj"), &lw.up);
        put(format!("{p}.mlp.down_proj"), &lw.down);
    }
    put("model.norm".into(), &w.final_norm);
    if let Some(h) = &w.lm_head {
        put("lm_head".into(), &(h.clone(), None));
    }
    out
}

/// The row order that turns llama.cpp's interleaved q/k rows into HF's rotate-half rows: row
/// `i` of the result is row `perm[i]` of the GGUF tensor.
fn qk_row_order(n_head: usize, rows: usize) -> Vec<usize> {
    let head_dim = rows / n_head.max(1);
    let half = head_dim / 2;
    let mut perm = vec![0; rows];
    for h in 0..n_head {
        for i in 0..half {
            for p in 0..2 {
                perm[h * head_dim + p * half + i] = h * head_dim + 2 * i + p;
            }
        }
    }
    perm
}

/// Read llama.cpp-named weights from a GGUF file with q/k rows put back into Hugging Face's
/// rotate-half order: dequantised, or (with `packing` other than `Dense`) the projections and
/// LM head kept in their quantised blocks.
pub fn from_gguf(cfg: &ModelConfig, g: &GgufFile, packing: Packing) -> Result<ModelWeights> {
    let h = cfg.hidden_size;
    let (q_out, kv_out) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let i = cfg.intermediate_size;
    let file = g.path.display().to_string();
    let get = |name: &str, shape: &[usize]| -> Result<HostTensor> {
        let (s, d) = g.tensor_f32(name)?;
        super::check_shape(name, &s, shape, &file)?;
        Ok(HostTensor::new(s, d))
    };
    let mut packed = BTreeMap::new();
    // A projection: packed in its blocks (quantised ones; F32 only when asked to quantise), or
    // dequantised. `heads`: the q/k row permutation to undo.
    let mut lin = |slot: String, name: &str, shape: [usize; 2], heads: Option<usize>| -> Result<HostTensor> {
        let t = g.tensor_info(name).ok_or_else(|| anyhow!("{file}: tensor {name:?} not found"))?;
        super::check_shape(name, &t.shape(), &shape, &file)?;
        let keep = match packing {
            Packing::Dense => None,
            Packing::Stored => (t.ty != GgmlType::F32).then_some(None),
            Packing::Quantize(q) => Some(if t.ty == GgmlType::F32 { Some(q) } else { None }),
        };
        let Some(requant) = keep else {
            let mut w = get(name, &shape)?;
            if let Some(n) = heads {
                w.data = unpermute_qk(&w.data, n, shape[1]);
            }
            return Ok(w);
        };
        let mut p = match requant {
            Some(q) => PackedMatrix::quantize_or_q8(q, &get(name, &shape)?)?,
            None => PackedMatrix::new(t.ty, shape[0], shape[1], g.raw(t).to_vec()).map_err(|e| anyhow!("{file}: {name}: {e:#}"))?,
        };
        if let Some(n) = heads {
            p = p.permute_rows(&qk_row_order(n, shape[0]));
        }
        packed.insert(slot, p);
        Ok(HostTensor { shape: shape.to_vec(), data: Vec::new() })
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("blk.{l}");
        let slot = |n: &str| ModelWeights::slot(l, n);
        layers.push(LayerWeights {
            attn_norm: (get(&format!("{p}.attn_norm.weight"), &[h])?, None),
            q: (lin(slot("q"), &format!("{p}.attn_q.weight"), [q_out, h], Some(cfg.num_heads))?, None),
            k: (lin(slot("k"), &format!("{p}.attn_k.weight"), [kv_out, h], Some(cfg.num_kv_heads))?, None),
            v: (lin(slot("v"), &format!("{p}.attn_v.weight"), [kv_out, h], None)?, None),
            o: (lin(slot("o"), &format!("{p}.attn_output.weight"), [h, q_out], None)?, None),
            q_norm: None,
            k_norm: None,
            mlp_norm: (get(&format!("{p}.ffn_norm.weight"), &[h])?, None),
            gate: Some((lin(slot("gate"), &format!("{p}.ffn_gate.weight"), [i, h], None)?, None)),
            up: (lin(slot("up"), &format!("{p}.ffn_up.weight"), [i, h], None)?, None),
            down: (lin(slot("down"), &format!("{p}.ffn_down.weight"), [h, i], None)?, None),
        });
    }
    let lm_head = if g.tensor_info("output.weight").is_some() {
        Some(lin("lm_head".into(), "output.weight", [cfg.vocab_size, h], None)?)
    } else {
        None
    };
    // A tied head reads the embedding: keep a packed copy of it as stored for the head (the
    // lookups use the dequantised one; both hold the same values).
    if lm_head.is_none()
        && packing == Packing::Stored
        && let Some(t) = g.tensor_info("token_embd.weight").filter(|t| t.ty != GgmlType::F32)
    {
        let p = PackedMatrix::new(t.ty, cfg.vocab_size, h, g.raw(t).to_vec()).map_err(|e| anyhow!("{file}: token_embd.weight: {e:#}"))?;
        packed.insert("tied_head".into(), p);
    }
    Ok(ModelWeights {
        embed: get("token_embd.weight", &[cfg.vocab_size, h])?,
        pos_embed: None,
        layers,
        final_norm: (get("output_norm.weight", &[h])?, None),
        lm_head,
        packed,
    })
}
