//! The building blocks every architecture shares, written once: RMSNorm and LayerNorm, rotary
//! position embedding (default, linear and Llama 3 scaling; Hugging Face's rotate-half layout),
//! attention with grouped-query heads and a KV cache, and the SwiGLU / GELU MLPs.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Bool, Device, Tensor, TensorData, activation};

use super::config::{ModelConfig, RopeScaling};
use super::lora::Proj;
use crate::io::HostTensor;
use crate::kernels;

/// A `[d_in, d_out]` linear layer from a PyTorch `[out, in]` weight (and optional bias).
pub fn linear_from_host(w: &HostTensor, b: Option<&HostTensor>, device: &Device) -> Linear {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let mut t = vec![0f32; w.data.len()];
    // Transpose [out, in] -> [in, out] on the host (cache-friendly blocked copy).
    const BS: usize = 64;
    for ob in (0..out).step_by(BS) {
        for ib in (0..inp).step_by(BS) {
            for o in ob..(ob + BS).min(out) {
                for i in ib..(ib + BS).min(inp) {
                    t[i * out + o] = w.data[o * inp + i];
                }
            }
        }
    }
    Linear { weight: Param::from_tensor(Tensor::from_data(TensorData::new(t, [inp, out]), device)), bias: b.map(|b| param1(b, device)) }
}

/// `x · W (+ b)` over the last dimension, through the fused GEMM kernel on flex.
pub fn linear_forward<const D: usize>(l: &Linear, x: Tensor<D>) -> Tensor<D> {
    let y = kernels::linear::matmul_last(x, l.weight.val());
    match &l.bias {
        Some(b) => y + b.val().unsqueeze::<D>(),
        None => y,
    }
}

/// The PyTorch `[out, in]` weight and bias of a linear layer, back on the host.
pub fn linear_to_host(l: &Linear) -> (HostTensor, Option<HostTensor>) {
    let w = l.weight.val();
    let [inp, out] = w.dims();
    let w = tensor_to_host(w.transpose());
    debug_assert_eq!(w.shape, vec![out, inp]);
    (w, l.bias.as_ref().map(|b| tensor_to_host(b.val())))
}

pub fn param1(t: &HostTensor, device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(t.data.clone(), [t.data.len()]), device))
}

pub fn param2(t: &HostTensor, device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(t.data.clone(), [t.shape[0], t.shape[1]]), device))
}

pub fn tensor_to_host<const D: usize>(t: Tensor<D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t.try_into_vec_as::<f32>().expect("float tensor");
    HostTensor::new(shape, data)
}

/// RMSNorm (Llama/Qwen) or LayerNorm (GPT-2), computed in f32.
#[derive(Module, Debug)]
pub struct Norm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub eps: f64,
    pub rms: bool,
}

impl Norm {
    pub fn from_host(w: &HostTensor, b: Option<&HostTensor>, eps: f64, rms: bool, device: &Device) -> Self {
        Self { weight: param1(w, device), bias: b.map(|b| param1(b, device)), eps, rms }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.rms && self.bias.is_none() {
            return crate::kernels::norm::rms_norm(x, self.weight.val(), self.eps);
        }
        let w = self.weight.val().unsqueeze::<D>();
        let y = if self.rms {
            let var = x.clone().square().mean_dim(D - 1);
            x * (var + self.eps).sqrt().recip()
        } else {
            let mean = x.clone().mean_dim(D - 1);
            let xc = x - mean;
            let var = xc.clone().square().mean_dim(D - 1);
            xc * (var + self.eps).sqrt().recip()
        };
        let y = y * w;
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<D>(),
            None => y,
        }
    }
}

/// Rotary inverse frequencies, as transformers computes them (including Llama 3 scaling).
pub fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta;
    let inv: Vec<f64> = (0..dim / 2)
        .map(|i| {
            // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
            let e = ((2 * i) as f32 / dim as f32) as f64;
            1.0 / (base as f32 as f64).powf(e)
        })
        .collect();
    let inv = match &cfg.rope_scaling {
        RopeScaling::Default => inv,
        RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let old = *original_max_position_embeddings;
            let low_wl = old / low_freq_factor;
            let high_wl = old / high_freq_factor;
            inv.iter()
                .map(|&f| {
                    let wl = 2.0 * std::f64::consts::PI / f;
                    if wl < high_wl {
                        f
                    } else if wl > low_wl {
                        f / factor
                    } else {
                        let smooth = (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    inv.into_iter().map(|f| f as f32).collect()
}

/// cos/sin tables `[1, 1, T, head_dim]` for positions `start..start+len` (rotate-half layout:
/// the frequency table is repeated twice along the head dimension).
pub fn rope_tables(inv_freq: &[f32], start: usize, len: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let positions: Vec<usize> = (start..start + len).collect();
    rope_tables_at(inv_freq, &[positions], device)
}

/// cos/sin tables `[B, 1, T, head_dim]` for explicit positions per row (packed sequences).
pub fn rope_tables_at(inv_freq: &[f32], positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
    let half = inv_freq.len();
    let dim = 2 * half;
    let (b, len) = (positions.len(), positions.first().map(|p| p.len()).unwrap_or(0));
    let mut cos = vec![0f32; b * len * dim];
    let mut sin = vec![0f32; b * len * dim];
    for (r, row) in positions.iter().enumerate() {
        for (t, &pos) in row.iter().enumerate() {
            let p = pos as f32;
            let o = (r * len + t) * dim;
            for (i, f) in inv_freq.iter().enumerate() {
                let a = (p * f) as f64; // product in f32 as transformers does, trig in f64 then rounded
                let (s, c) = a.sin_cos();
                cos[o + i] = c as f32;
                cos[o + half + i] = c as f32;
                sin[o + i] = s as f32;
                sin[o + half + i] = s as f32;
            }
        }
    }
    (Tensor::from_data(TensorData::new(cos, [b, 1, len, dim]), device), Tensor::from_data(TensorData::new(sin, [b, 1, len, dim]), device))
}

/// Keys and values of one layer for the positions seen so far: `[B, kv_heads, T, Dh]`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub k: Tensor<4>,
    pub v: Tensor<4>,
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q: Proj,
    pub k: Proj,
    pub v: Proj,
    pub o: Proj,
    /// Qwen3: RMSNorm over each head of q and k, before RoPE.
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `x`: `[B, T, hidden]`. `rope`: cos/sin for the T new positions. `mask`: `[B or 1, 1, T, T_total]`,
    /// true where attention is not allowed. `cache`: previous keys/values, extended in place.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&(Tensor<4>, Tensor<4>)>,
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, dh) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // `[B, T, heads, Dh]`; the per-head norms (Qwen3) act on the last dimension, so they
        // can run before the heads are split out.
        let [q, k, v] = Proj::forward_all([&self.q, &self.k, &self.v], x);
        let q = q.reshape([b, t, h, dh]);
        let k = k.reshape([b, t, kvh, dh]);
        let v = v.reshape([b, t, kvh, dh]).swap_dims(1, 2);
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(q), kn.forward(k)),
            _ => (q, k),
        };
        let (q, k) = match rope {
            Some((cos, sin)) => (kernels::attention::rope_heads(q, cos, sin), kernels::attention::rope_heads(k, cos, sin)),
            None => (q.swap_dims(1, 2), k.swap_dims(1, 2)),
        };
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(prev) => (Tensor::cat(vec![prev.k, k], 2), Tensor::cat(vec![prev.v, v], 2)),
                    None => (k, v),
                };
                *slot = Some(LayerCache { k: k.clone(), v: v.clone() });
                (k, v)
            }
            None => (k, v),
        };
        let scale = 1.0 / (dh as f64).sqrt();
        // In bf16/f16 both products take rounded operands and give rounded results (as
        // autocast's matmuls do); the softmax runs in f32. Grouped key/value heads are shared by
        // `h / kvh` query heads each.
        let out = kernels::attention::attend(q, k, v, scale, mask).swap_dims(1, 2).reshape([b, t, h * dh]);
        self.o.forward(out)
    }
}

/// Feed-forward: SwiGLU (`down(silu(gate(x)) * up(x))`) when `gate` is present, else GELU (tanh
/// approximation, GPT-2's `gelu_new`) between `up` and `down`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate: Option<Proj>,
    pub up: Proj,
    pub down: Proj,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = match &self.gate {
            Some(g) => {
                let [g, u] = Proj::forward_all([g, &self.up], x);
                kernels::mlp::swiglu(g, u)
            }
            None => activation::gelu_approximate(self.up.forward(x)),
        };
        self.down.forward(h)
    }
}

/// Causal mask `[1, 1, T, offset+T]`: true where key position > query position.
pub fn causal_mask(t: usize, offset: usize, device: &Device) -> Tensor<4, Bool> {
    let total = offset + t;
    let data: Vec<bool> = (0..t).flat_map(|i| (0..total).map(move |j| j > offset + i)).collect();
    Tensor::<2, Bool>::from_data(TensorData::new(data, [t, total]), device).unsqueeze::<4>()
}

/// Block-diagonal causal mask `[B, 1, T, T]` for packed rows: true where the key is in the
/// future or belongs to another example of the row.
pub fn packed_mask(segments: &[Vec<u32>], device: &Device) -> Tensor<4, Bool> {
    let (b, t) = (segments.len(), segments.first().map(|s| s.len()).unwrap_or(0));
    let mut data = Vec::with_capacity(b * t * t);
    for seg in segments {
        for i in 0..t {
            for j in 0..t {
                data.push(j > i || seg[j] != seg[i]);
            }
        }
    }
    Tensor::<4, Bool>::from_data(TensorData::new(data, [b, 1, t, t]), device)
}
