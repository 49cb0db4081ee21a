//! Llama family: Llama 2 and 3 (with `rope_type: llama3` scaling), Mistral (full attention),
//! SmolLM, and any `LlamaForCausalLM` checkpoint. Pre-norm RMSNorm blocks, rotary positions in
//! Hugging Face's rotate-half layout, grouped-query attention, SwiGLU MLP.
//!
//! This file owns the Hugging Face tensor names that Qwen2 and Qwen3 share with Llama, and the
//! llama.cpp (GGUF) names and q/k row permutation.

use std::collections::BTreeMap;

use anyhow::Result;

use super::WeightSource;
use super::config::ModelConfig;
use super::transformer::{LayerWeights, ModelWeights};
use crate::io::HostTensor;
use crate::io::gguf::{GgufFile, unpermute_qk};

type Pair = (HostTensor, Option<HostTensor>);

/// Read Llama-family HF weights (`model.layers.N.self_attn.q_proj.weight`, …). Biases and q/k
/// norms are read when the config says the architecture has them.
pub fn from_hf(cfg: &ModelConfig, src: &dyn WeightSource) -> Result<ModelWeights> {
    let h = cfg.hidden_size;
    let (q_out, kv_out) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let i = cfg.intermediate_size;
    let lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Pair> {
        let w = src.get_shaped(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias { Some(src.get_shaped(&format!("{name}.bias"), &[out])?) } else { None };
        Ok((w, b))
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let m = format!("{p}.mlp");
        layers.push(LayerWeights {
            attn_norm: (src.get_shaped(&format!("{p}.input_layernorm.weight"), &[h])?, None),
            q: lin(&format!("{a}.q_proj"), q_out, h, cfg.qkv_bias)?,
            k: lin(&format!("{a}.k_proj"), kv_out, h, cfg.qkv_bias)?,
            v: lin(&format!("{a}.v_proj"), kv_out, h, cfg.qkv_bias)?,
            o: lin(&format!("{a}.o_proj"), h, q_out, cfg.o_bias)?,
            q_norm: if cfg.qk_norm { Some(src.get_shaped(&format!("{a}.q_norm.weight"), &[cfg.head_dim])?) } else { None },
            k_norm: if cfg.qk_norm { Some(src.get_shaped(&format!("{a}.k_norm.weight"), &[cfg.head_dim])?) } else { None },
            mlp_norm: (src.get_shaped(&format!("{p}.post_attention_layernorm.weight"), &[h])?, None),
            gate: Some(lin(&format!("{m}.gate_proj"), i, h, cfg.mlp_bias)?),
            up: lin(&format!("{m}.up_proj"), i, h, cfg.mlp_bias)?,
            down: lin(&format!("{m}.down_proj"), h, i, cfg.mlp_bias)?,
        });
    }
    // Some checkpoints mark embeddings untied but omit lm_head; others tie but still store it.
    let lm_head = if !cfg.tie_word_embeddings && src.has("lm_head.weight") {
        Some(src.get_shaped("lm_head.weight", &[cfg.vocab_size, h])?)
    } else {
        None
    };
    Ok(ModelWeights {
        embed: src.get_shaped("model.embed_tokens.weight", &[cfg.vocab_size, h])?,
        pos_embed: None,
        layers,
        final_norm: (src.get_shaped("model.norm.weight", &[h])?, None),
        lm_head,
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

/// Read llama.cpp-named weights from a GGUF file, dequantised, with q/k rows put back into
/// Hugging Face's rotate-half order.
pub fn from_gguf(cfg: &ModelConfig, g: &GgufFile) -> Result<ModelWeights> {
    let h = cfg.hidden_size;
    let (q_out, kv_out) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
    let i = cfg.intermediate_size;
    let get = |name: &str, shape: &[usize]| -> Result<HostTensor> {
        let (s, d) = g.tensor_f32(name)?;
        super::check_shape(name, &s, shape, &g.path.display().to_string())?;
        Ok(HostTensor::new(s, d))
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("blk.{l}");
        let mut q = get(&format!("{p}.attn_q.weight"), &[q_out, h])?;
        q.data = unpermute_qk(&q.data, cfg.num_heads, h);
        let mut k = get(&format!("{p}.attn_k.weight"), &[kv_out, h])?;
        k.data = unpermute_qk(&k.data, cfg.num_kv_heads, h);
        layers.push(LayerWeights {
            attn_norm: (get(&format!("{p}.attn_norm.weight"), &[h])?, None),
            q: (q, None),
            k: (k, None),
            v: (get(&format!("{p}.attn_v.weight"), &[kv_out, h])?, None),
            o: (get(&format!("{p}.attn_output.weight"), &[h, q_out])?, None),
            q_norm: None,
            k_norm: None,
            mlp_norm: (get(&format!("{p}.ffn_norm.weight"), &[h])?, None),
            gate: Some((get(&format!("{p}.ffn_gate.weight"), &[i, h])?, None)),
            up: (get(&format!("{p}.ffn_up.weight"), &[i, h])?, None),
            down: (get(&format!("{p}.ffn_down.weight"), &[h, i])?, None),
        });
    }
    let lm_head = if g.tensor_info("output.weight").is_some() { Some(get("output.weight", &[cfg.vocab_size, h])?) } else { None };
    Ok(ModelWeights {
        embed: get("token_embd.weight", &[cfg.vocab_size, h])?,
        pos_embed: None,
        layers,
        final_norm: (get("output_norm.weight", &[h])?, None),
        lm_head,
    })
}
