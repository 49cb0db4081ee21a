//! GPT-2 (`GPT2LMHeadModel`): learned absolute positions, LayerNorm with bias, a fused `c_attn`
//! q/k/v projection, GELU (tanh approximation) MLP, biases everywhere, tied LM head. HF stores
//! GPT-2's projections as `Conv1D`, i.e. `[in, out]`; they are transposed to `[out, in]` here.

use std::collections::BTreeMap;

use anyhow::Result;

use super::WeightSource;
use super::config::ModelConfig;
use super::transformer::{LayerWeights, ModelWeights};
use crate::io::HostTensor;

fn transpose(t: &HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = vec![0f32; t.data.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = t.data[i * c + j];
        }
    }
    HostTensor::new(vec![c, r], out)
}

/// Rows `start..end` of a row-major matrix (or elements of a vector).
fn rows(t: &HostTensor, start: usize, end: usize) -> HostTensor {
    let cols: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = end - start;
    HostTensor::new(shape, t.data[start * cols..end * cols].to_vec())
}

pub fn from_hf(cfg: &ModelConfig, src: &dyn WeightSource) -> Result<ModelWeights> {
    let prefix = if src.has("transformer.wte.weight") { "transformer." } else { "" };
    let h = cfg.hidden_size;
    let i = cfg.intermediate_size;
    // Conv1D weight [in, out] -> [out, in]
    let conv = |name: &str, inp: usize, out: usize| -> Result<(HostTensor, Option<HostTensor>)> {
        let w = src.get_shaped(&format!("{prefix}{name}.weight"), &[inp, out])?;
        let b = src.get_shaped(&format!("{prefix}{name}.bias"), &[out])?;
        Ok((transpose(&w), Some(b)))
    };
    let ln = |name: &str| -> Result<(HostTensor, Option<HostTensor>)> {
        Ok((src.get_shaped(&format!("{prefix}{name}.weight"), &[h])?, Some(src.get_shaped(&format!("{prefix}{name}.bias"), &[h])?)))
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = format!("h.{l}");
        let (qkv_w, qkv_b) = conv(&format!("{p}.attn.c_attn"), h, 3 * h)?;
        let qkv_b = qkv_b.unwrap();
        let part = |k: usize| (rows(&qkv_w, k * h, (k + 1) * h), Some(rows(&qkv_b, k * h, (k + 1) * h)));
        layers.push(LayerWeights {
            attn_norm: ln(&format!("{p}.ln_1"))?,
            q: part(0),
            k: part(1),
            v: part(2),
            o: conv(&format!("{p}.attn.c_proj"), h, h)?,
            q_norm: None,
            k_norm: None,
            mlp_norm: ln(&format!("{p}.ln_2"))?,
            gate: None,
            up: conv(&format!("{p}.mlp.c_fc"), h, i)?,
            down: conv(&format!("{p}.mlp.c_proj"), i, h)?,
        });
    }
    let lm_head = if !cfg.tie_word_embeddings && src.has("lm_head.weight") {
        Some(src.get_shaped("lm_head.weight", &[cfg.vocab_size, h])?)
    } else {
        None
    };
    Ok(ModelWeights {
        embed: src.get_shaped(&format!("{prefix}wte.weight"), &[cfg.vocab_size, h])?,
        pos_embed: Some(src.get_shaped(&format!("{prefix}wpe.weight"), &[cfg.max_position_embeddings, h])?),
        layers,
        final_norm: ln("ln_f")?,
        lm_head,
        packed: Default::default(),
    })
}

pub fn to_hf(w: &ModelWeights) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    let cat_rows = |parts: [&HostTensor; 3]| {
        let mut shape = parts[0].shape.clone();
        shape[0] *= 3;
        HostTensor::new(shape, parts.iter().flat_map(|p| p.data.iter().copied()).collect())
    };
    out.insert("transformer.wte.weight".into(), w.embed.clone());
    if let Some(p) = &w.pos_embed {
        out.insert("transformer.wpe.weight".into(), p.clone());
    }
    let put_ln = |out: &mut BTreeMap<String, HostTensor>, name: String, n: &(HostTensor, Option<HostTensor>)| {
        out.insert(format!("{name}.weight"), n.0.clone());
        if let Some(b) = &n.1 {
            out.insert(format!("{name}.bias"), b.clone());
        }
    };
    for (l, lw) in w.layers.iter().enumerate() {
        let p = format!("transformer.h.{l}");
        put_ln(&mut out, format!("{p}.ln_1"), &lw.attn_norm);
        put_ln(&mut out, format!("{p}.ln_2"), &lw.mlp_norm);
        let qkv_w = cat_rows([&lw.q.0, &lw.k.0, &lw.v.0]);
        out.insert(format!("{p}.attn.c_attn.weight"), transpose(&qkv_w));
        if let (Some(a), Some(b), Some(c)) = (&lw.q.1, &lw.k.1, &lw.v.1) {
            out.insert(format!("{p}.attn.c_attn.bias"), cat_rows([a, b, c]));
        }
        for (name, pair) in [("attn.c_proj", &lw.o), ("mlp.c_fc", &lw.up), ("mlp.c_proj", &lw.down)] {
            out.insert(format!("{p}.{name}.weight"), transpose(&pair.0));
            if let Some(b) = &pair.1 {
                out.insert(format!("{p}.{name}.bias"), b.clone());
            }
        }
    }
    put_ln(&mut out, "transformer.ln_f".into(), &w.final_norm);
    if let Some(h) = &w.lm_head {
        out.insert("lm_head.weight".into(), h.clone());
    }
    out
}
