//! The decoder stack all supported architectures share: embeddings (+ learned positions for
//! GPT-2), pre-norm blocks of attention and MLP, a final norm and the LM head (tied or not).
//! Architecture files (`llama.rs`, `qwen2.rs`, `qwen3.rs`, `gpt2.rs`) translate their checkpoint
//! names and layouts to and from [`ModelWeights`]; this file turns those into burn modules.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::blocks::{
    Attention, LayerCache, Mlp, Norm, causal_mask, linear_from_host, linear_to_host, packed_mask, param2, rope_inv_freq, rope_tables,
    rope_tables_at, tensor_to_host,
};
use super::config::{Arch, ModelConfig};
use super::lora::{LoraConfig, Proj};
use crate::io::HostTensor;

/// Host-side weights of one block, PyTorch layouts (`[out, in]` for projections).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: (HostTensor, Option<HostTensor>),
    pub q: (HostTensor, Option<HostTensor>),
    pub k: (HostTensor, Option<HostTensor>),
    pub v: (HostTensor, Option<HostTensor>),
    pub o: (HostTensor, Option<HostTensor>),
    pub q_norm: Option<HostTensor>,
    pub k_norm: Option<HostTensor>,
    pub mlp_norm: (HostTensor, Option<HostTensor>),
    pub gate: Option<(HostTensor, Option<HostTensor>)>,
    pub up: (HostTensor, Option<HostTensor>),
    pub down: (HostTensor, Option<HostTensor>),
}

/// Host-side weights of a whole model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// `[vocab, hidden]`
    pub embed: HostTensor,
    /// `[positions, hidden]` (GPT-2)
    pub pos_embed: Option<HostTensor>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: (HostTensor, Option<HostTensor>),
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<HostTensor>,
}

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
}

#[derive(Module, Debug)]
pub struct Transformer {
    /// `[vocab, hidden]`
    pub embed: Param<Tensor<2>>,
    pub pos_embed: Option<Param<Tensor<2>>>,
    pub layers: Vec<Block>,
    pub final_norm: Norm,
    /// `[hidden, vocab]` when untied.
    pub lm_head: Option<burn::nn::Linear>,
    #[module(skip)]
    pub inv_freq: Vec<f32>,
}

/// The KV cache of a whole model for one batch.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|c| c.k.dims()[2]).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Transformer {
    pub fn from_weights(cfg: &ModelConfig, w: &ModelWeights, device: &Device) -> Self {
        let rms = cfg.arch != Arch::Gpt2;
        let eps = cfg.norm_eps;
        let norm = |n: &(HostTensor, Option<HostTensor>)| Norm::from_host(&n.0, n.1.as_ref(), eps, rms, device);
        let lin = |l: &(HostTensor, Option<HostTensor>)| Proj::new(linear_from_host(&l.0, l.1.as_ref(), device));
        let layers = w
            .layers
            .iter()
            .map(|l| Block {
                attn_norm: norm(&l.attn_norm),
                attn: Attention {
                    q: lin(&l.q),
                    k: lin(&l.k),
                    v: lin(&l.v),
                    o: lin(&l.o),
                    q_norm: l.q_norm.as_ref().map(|n| Norm::from_host(n, None, eps, true, device)),
                    k_norm: l.k_norm.as_ref().map(|n| Norm::from_host(n, None, eps, true, device)),
                    n_heads: cfg.num_heads,
                    n_kv_heads: cfg.num_kv_heads,
                    head_dim: cfg.head_dim,
                },
                mlp_norm: norm(&l.mlp_norm),
                mlp: Mlp { gate: l.gate.as_ref().map(lin), up: lin(&l.up), down: lin(&l.down) },
            })
            .collect();
        Self {
            embed: param2(&w.embed, device),
            pos_embed: w.pos_embed.as_ref().map(|p| param2(p, device)),
            layers,
            final_norm: norm(&w.final_norm),
            lm_head: w.lm_head.as_ref().map(|h| linear_from_host(h, None, device)),
            inv_freq: if cfg.arch == Arch::Gpt2 { vec![] } else { rope_inv_freq(cfg) },
        }
    }

    /// Freeze every weight and add LoRA adapters to the target projections (seeded init).
    pub fn with_lora(self, cfg: &LoraConfig, seed: u64) -> anyhow::Result<Self> {
        let targets = cfg.target_names()?;
        anyhow::ensure!(cfg.rank > 0, "lora.rank must be at least 1");
        let device = self.device();
        let mut rng = super::lora::init_rng(seed);
        let mut m = self.no_grad();
        let pick = |p: Proj, name: &str, rng: &mut rand_chacha::ChaCha8Rng| {
            if targets.contains(&name) { p.add_lora(cfg, rng, &device) } else { p }
        };
        for l in m.layers.iter_mut() {
            let a = &mut l.attn;
            a.q = pick(a.q.clone(), "q_proj", &mut rng);
            a.k = pick(a.k.clone(), "k_proj", &mut rng);
            a.v = pick(a.v.clone(), "v_proj", &mut rng);
            a.o = pick(a.o.clone(), "o_proj", &mut rng);
            let f = &mut l.mlp;
            f.gate = f.gate.take().map(|g| pick(g, "gate_proj", &mut rng));
            f.up = pick(f.up.clone(), "up_proj", &mut rng);
            f.down = pick(f.down.clone(), "down_proj", &mut rng);
        }
        Ok(m)
    }

    /// Every projection with its HF short name and layer index, for adapter export/import.
    pub fn projections(&self) -> Vec<(usize, &'static str, &Proj)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.push((i, "q_proj", &l.attn.q));
            out.push((i, "k_proj", &l.attn.k));
            out.push((i, "v_proj", &l.attn.v));
            out.push((i, "o_proj", &l.attn.o));
            if let Some(g) = &l.mlp.gate {
                out.push((i, "gate_proj", g));
            }
            out.push((i, "up_proj", &l.mlp.up));
            out.push((i, "down_proj", &l.mlp.down));
        }
        out
    }

    /// Copy the weights back to the host (PyTorch layouts), adapters merged in.
    pub fn to_weights(&self) -> ModelWeights {
        let norm = |n: &Norm| (tensor_to_host(n.weight.val()), n.bias.as_ref().map(|b| tensor_to_host(b.val())));
        ModelWeights {
            embed: tensor_to_host(self.embed.val()),
            pos_embed: self.pos_embed.as_ref().map(|p| tensor_to_host(p.val())),
            layers: self
                .layers
                .iter()
                .map(|b| LayerWeights {
                    attn_norm: norm(&b.attn_norm),
                    q: linear_to_host(&b.attn.q.merged()),
                    k: linear_to_host(&b.attn.k.merged()),
                    v: linear_to_host(&b.attn.v.merged()),
                    o: linear_to_host(&b.attn.o.merged()),
                    q_norm: b.attn.q_norm.as_ref().map(|n| tensor_to_host(n.weight.val())),
                    k_norm: b.attn.k_norm.as_ref().map(|n| tensor_to_host(n.weight.val())),
                    mlp_norm: norm(&b.mlp_norm),
                    gate: b.mlp.gate.as_ref().map(|g| linear_to_host(&g.merged())),
                    up: linear_to_host(&b.mlp.up.merged()),
                    down: linear_to_host(&b.mlp.down.merged()),
                })
                .collect(),
            final_norm: norm(&self.final_norm),
            lm_head: self.lm_head.as_ref().map(|l| linear_to_host(l).0),
        }
    }

    /// A copy for inference: parameters moved off the autodiff graph.
    pub fn without_autodiff(&self) -> Self {
        self.valid()
    }

    pub fn device(&self) -> Device {
        self.embed.val().device()
    }

    /// Hidden states after the final norm, `[B, T, hidden]`, for `ids` `[B, T]` placed after the
    /// positions already in `cache` (if any).
    pub fn forward_hidden(&self, ids: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let device = ids.device();
        let [b, t] = ids.dims();
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mut x = burn::tensor::module::embedding(self.embed.val(), ids);
        if let Some(p) = &self.pos_embed {
            let pos = p.val().slice_dim(0, offset..offset + t);
            x = x + pos.unsqueeze::<3>();
        }
        let rope = if self.inv_freq.is_empty() { None } else { Some(rope_tables(&self.inv_freq, offset, t, &device)) };
        let mask = if t > 1 { Some(causal_mask(t, offset, &device)) } else { None };
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() != self.layers.len() {
                c.layers = vec![None; self.layers.len()];
            }
        }
        let _ = b;
        self.blocks(x, rope.as_ref(), mask.as_ref(), cache)
    }

    /// Hidden states of packed rows: several examples per row, each with positions from 0 and
    /// attending only to itself (`segments` numbers the example of every token).
    pub fn forward_hidden_packed(&self, ids: Tensor<2, Int>, positions: &[Vec<usize>], segments: &[Vec<u32>]) -> Tensor<3> {
        let device = ids.device();
        let [b, t] = ids.dims();
        let mut x = burn::tensor::module::embedding(self.embed.val(), ids);
        if let Some(p) = &self.pos_embed {
            let flat: Vec<i32> = positions.iter().flatten().map(|&p| p as i32).collect();
            let pos = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &device);
            x = x + burn::tensor::module::embedding(p.val(), pos);
        }
        let rope = if self.inv_freq.is_empty() { None } else { Some(rope_tables_at(&self.inv_freq, positions, &device)) };
        let mask = packed_mask(segments, &device);
        self.blocks(x, rope.as_ref(), Some(&mask), None)
    }

    fn blocks(
        &self,
        mut x: Tensor<3>,
        rope: Option<&(Tensor<4>, Tensor<4>)>,
        mask: Option<&Tensor<4, burn::tensor::Bool>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let h = layer.attn.forward(layer.attn_norm.forward(x.clone()), rope, mask, slot);
            x = x + h;
            let h = layer.mlp.forward(layer.mlp_norm.forward(x.clone()));
            x = x + h;
        }
        self.final_norm.forward(x)
    }

    /// Logits `[B, T, vocab]` from hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => super::blocks::linear_forward(head, hidden),
            // `embed` is `[vocab, hidden]`; its transpose is a strided view, not a copy.
            None => crate::kernels::linear::matmul_last(hidden, self.embed.val().transpose()),
        }
    }

    pub fn forward(&self, ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.logits(self.forward_hidden(ids, cache))
    }
}

/// `[1, T]` id tensor.
pub fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    Tensor::<2, Int>::from_data(TensorData::new(v, [1, ids.len()]), device)
}
