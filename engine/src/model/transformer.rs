//! The decoder stack all supported architectures share: embeddings (+ learned positions for
//! GPT-2), pre-norm blocks of attention and MLP, a final norm and the LM head (tied or not).
//! Architecture files (`llama.rs`, `qwen2.rs`, `qwen3.rs`, `gpt2.rs`) translate their checkpoint
//! names and layouts to and from [`ModelWeights`]; this file turns those into burn modules.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::blocks::{
    Attention, LayerCache, Mlp, Norm, causal_mask, linear_from_host, linear_to_host, packed_mask, param2, rope_inv_freq, rope_tables,
    rope_tables_at, tensor_to_host,
};
use super::config::{Arch, ModelConfig};
use super::lora::{LoraConfig, Proj};
use crate::io::HostTensor;
use crate::io::quant::PackedMatrix;

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
    /// Frozen weights kept in their storage format, by slot (`"3.q"`, `"3.down"`, `"lm_head"`).
    /// A slot listed here has an empty dense tensor above (its shape only): loaders that keep
    /// weights packed never expand them to f32. [`Transformer::to_weights`] never fills it.
    pub packed: BTreeMap<String, PackedMatrix>,
}

impl ModelWeights {
    /// The packed slot for layer `l`'s projection `name` (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn slot(l: usize, name: &str) -> String {
        format!("{l}.{name}")
    }

    /// Bytes held in packed form.
    pub fn packed_bytes(&self) -> usize {
        self.packed.values().map(|p| p.bytes()).sum()
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
}

impl Block {
    /// The pre-norm block: `x + attn(norm(x))`, then `+ mlp(norm(·))`.
    pub fn forward(&self, x: Tensor<3>, rope: Option<&(Tensor<4>, Tensor<4>)>, mask: Option<&Tensor<4, burn::tensor::Bool>>) -> Tensor<3> {
        self.forward_cached(x, rope, mask, None)
    }

    fn forward_cached(
        &self,
        x: Tensor<3>,
        rope: Option<&(Tensor<4>, Tensor<4>)>,
        mask: Option<&Tensor<4, burn::tensor::Bool>>,
        slot: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.attn_norm.forward(x), rope, mask, slot);
        x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
    }
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
    /// An untied LM head kept packed (`[vocab, hidden]`), frozen.
    #[module(skip)]
    pub lm_head_packed: Option<Arc<PackedMatrix>>,
    /// A tied head's packed copy: the embedding as stored (the same values as `embed`, which
    /// lookups keep using), so the head reads 4–16 bits per weight. Only while `embed` is
    /// frozen.
    #[module(skip)]
    pub tied_head_packed: Option<Arc<PackedMatrix>>,
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
        let lin = |i: usize, name: &str, l: &(HostTensor, Option<HostTensor>)| match w.packed.get(&ModelWeights::slot(i, name)) {
            Some(p) => Proj::packed(p.clone(), l.1.as_ref().map(|b| super::blocks::param1(b, device))),
            None => Proj::new(linear_from_host(&l.0, l.1.as_ref(), device)),
        };
        let layers = w
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| Block {
                attn_norm: norm(&l.attn_norm),
                attn: Attention {
                    q: lin(i, "q", &l.q),
                    k: lin(i, "k", &l.k),
                    v: lin(i, "v", &l.v),
                    o: lin(i, "o", &l.o),
                    q_norm: l.q_norm.as_ref().map(|n| Norm::from_host(n, None, eps, true, device)),
                    k_norm: l.k_norm.as_ref().map(|n| Norm::from_host(n, None, eps, true, device)),
                    n_heads: cfg.num_heads,
                    n_kv_heads: cfg.num_kv_heads,
                    head_dim: cfg.head_dim,
                },
                mlp_norm: norm(&l.mlp_norm),
                mlp: Mlp { gate: l.gate.as_ref().map(|g| lin(i, "gate", g)), up: lin(i, "up", &l.up), down: lin(i, "down", &l.down) },
            })
            .collect();
        Self {
            embed: param2(&w.embed, device),
            pos_embed: w.pos_embed.as_ref().map(|p| param2(p, device)),
            layers,
            final_norm: norm(&w.final_norm),
            lm_head: if w.packed.contains_key("lm_head") { None } else { w.lm_head.as_ref().map(|h| linear_from_host(h, None, device)) },
            lm_head_packed: w.packed.get("lm_head").map(|p| Arc::new(p.clone())),
            tied_head_packed: w.packed.get("tied_head").map(|p| Arc::new(p.clone())),
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
            lm_head: match (&self.lm_head, &self.lm_head_packed) {
                (Some(l), _) => Some(linear_to_host(l).0),
                (None, Some(p)) => Some(p.to_host()),
                (None, None) => None,
            },
            packed: BTreeMap::new(),
        }
    }

    /// Bytes of the weights as held in memory: packed weights in their storage format, the
    /// rest as f32.
    pub fn resident_bytes(&self) -> usize {
        let mut total = 0usize;
        struct Count<'a>(&'a mut usize);
        impl burn::module::ModuleVisitor for Count<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                *self.0 += p.val().dims().iter().product::<usize>() * 4;
            }
        }
        self.visit(&mut Count(&mut total));
        let packed: usize = self.projections().iter().map(|(_, _, p)| p.packed_bytes()).sum();
        total + packed + self.lm_head_packed.as_ref().map_or(0, |p| p.bytes()) + self.tied_head_packed.as_ref().map_or(0, |p| p.bytes())
    }

    /// Whether any weight is kept packed (frozen in its storage format).
    pub fn has_packed(&self) -> bool {
        self.lm_head_packed.is_some() || self.tied_head_packed.is_some() || self.projections().iter().any(|(_, _, p)| p.packed.is_some())
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
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.layers.len()
        {
            c.layers = vec![None; self.layers.len()];
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

    /// One backward pass of `loss(model, hidden)` with every decoder layer recomputed
    /// (activation checkpointing per layer): the forward pass keeps only each layer's input
    /// (`[B, T, hidden]`), and the backward pass rebuilds one layer's graph at a time from the
    /// top, so a step holds one layer's activations instead of all of them. `packed`: the rows'
    /// positions and segments for packed batches. Returns the loss and the gradients of every
    /// parameter that takes one — the same as `loss(...).backward()` on the whole graph.
    pub fn recomputed_grads(
        &self,
        ids: Tensor<2, Int>,
        packed: Option<(&[Vec<usize>], &[Vec<u32>])>,
        loss: &mut dyn FnMut(&Self, Tensor<3>) -> Tensor<1>,
    ) -> (f64, burn::optim::GradientsParams) {
        use burn::optim::GradientsParams;
        let ad = ids.device();
        let plain = self.valid();
        let pdev = plain.device();
        let [b, t] = ids.dims();
        let host: Vec<i64> = ids.clone().try_into_vec_as::<i64>().expect("int ids");
        let pids = Tensor::<2, Int>::from_data(TensorData::new(host, [b, t]), &pdev);
        // Positions, RoPE tables and masks, on both devices.
        let aux = |m: &Self, dev: &Device| {
            let rope = if m.inv_freq.is_empty() {
                None
            } else {
                Some(match packed {
                    Some((pos, _)) => rope_tables_at(&m.inv_freq, pos, dev),
                    None => rope_tables(&m.inv_freq, 0, t, dev),
                })
            };
            let mask = match packed {
                Some((_, seg)) => Some(packed_mask(seg, dev)),
                None => (t > 1).then(|| causal_mask(t, 0, dev)),
            };
            (rope, mask)
        };
        let embed = |m: &Self, ids: Tensor<2, Int>, dev: &Device| {
            let mut x = burn::tensor::module::embedding(m.embed.val(), ids);
            if let Some(p) = &m.pos_embed {
                let flat: Vec<i32> = match packed {
                    Some((pos, _)) => pos.iter().flatten().map(|&p| p as i32).collect(),
                    None => (0..b).flat_map(|_| 0..t as i32).collect(),
                };
                let pos = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), dev);
                x = x + burn::tensor::module::embedding(p.val(), pos);
            }
            x
        };
        // Forward without a graph, keeping every layer's input.
        let (prope, pmask) = aux(&plain, &pdev);
        let mut xs = vec![embed(&plain, pids, &pdev)];
        for layer in &plain.layers {
            let x = xs.last().expect("input").clone();
            xs.push(layer.forward(x, prope.as_ref(), pmask.as_ref()));
        }
        let mut grads: Option<GradientsParams> = None;
        let mut add = |g: GradientsParams| {
            grads = Some(match grads.take() {
                None => g,
                Some(a) => super::params::add_grads(self, a, g),
            });
        };
        // The top: final norm, head and loss.
        let top = Tensor::<3>::from_inner(xs.pop().expect("last hidden")).require_grad();
        let l = loss(self, self.final_norm.forward(top.clone()));
        let value = l.clone().into_scalar::<f32>() as f64;
        // An f16 job's loss scale (1 otherwise): the gradients come out scaled, as from
        // `train::optim::Accum::backward`.
        let scale = crate::kernels::precision::loss_scale();
        let g = if scale != 1.0 { (l * scale).backward() } else { l.backward() };
        let mut dx = top.grad(&g).map(Tensor::<3>::from_inner);
        add(GradientsParams::from_grads(g, self));
        // Each layer, from the top down.
        let (rope, mask) = aux(self, &ad);
        for layer in self.layers.iter().rev() {
            let Some(d) = dx.take() else { break };
            let x = Tensor::<3>::from_inner(xs.pop().expect("layer input")).require_grad();
            let y = layer.forward(x.clone(), rope.as_ref(), mask.as_ref());
            let g = (y * d).sum().backward();
            dx = x.grad(&g).map(Tensor::<3>::from_inner);
            add(GradientsParams::from_grads(g, self));
        }
        // The embeddings, when they train.
        let trains = self.embed.val().is_require_grad() || self.pos_embed.as_ref().is_some_and(|p| p.val().is_require_grad());
        if let (Some(d), true) = (dx, trains) {
            let e = embed(self, ids, &ad);
            add(GradientsParams::from_grads((e * d).sum().backward(), self));
        }
        (value, grads.unwrap_or_default())
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
            x = layer.forward_cached(x, rope, mask, slot);
        }
        self.final_norm.forward(x)
    }

    /// The packed head in force: an untied packed head, or the tied one's packed copy while the
    /// embedding does not train (a trained embedding must be read as it is now).
    fn packed_head(&self) -> Option<&Arc<PackedMatrix>> {
        self.lm_head_packed.as_ref().or(self.tied_head_packed.as_ref().filter(|_| !self.embed.val().is_require_grad()))
    }

    /// Logits `[B, T, vocab]` from hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        if let Some(p) = self.packed_head() {
            return crate::kernels::qlinear::packed_matmul(hidden, p);
        }
        match &self.lm_head {
            Some(head) => super::blocks::linear_forward(head, hidden),
            // `embed` is `[vocab, hidden]`; its transpose is a strided view, not a copy.
            None => crate::kernels::linear::matmul_last(hidden, self.embed.val().transpose()),
        }
    }

    /// Log-probs of `targets` and argmax flags, `[B, T]`, from hidden states: the LM head and
    /// the log-softmax fused a chunk of rows at a time, so `[B, T, vocab]` logits are never
    /// held whole (`kernels::head`).
    pub fn target_logprobs(&self, hidden: Tensor<3>, targets: &Tensor<2, Int>) -> (Tensor<2>, Tensor<2>) {
        use crate::kernels::head::{Head, head_logprobs};
        let head = match (self.packed_head(), &self.lm_head) {
            (Some(p), _) => Head::Packed(p),
            (None, Some(l)) => Head::Dense(l.weight.val()),
            (None, None) => Head::Dense(self.embed.val().transpose()),
        };
        head_logprobs(hidden, head, targets)
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
