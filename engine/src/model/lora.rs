//! LoRA adapters: `y = x·W + scale · dropout(x)·A·B` with `scale = alpha / r`, A initialised as
//! PEFT does (Kaiming-uniform, bound 1/sqrt(fan_in)) and B at zero, the base frozen. Adapters are
//! saved in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors` with PEFT key
//! names) and can be merged into the base weights.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::io::quant::PackedMatrix;

/// Which projections get adapters, by their HF short names.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Short names: q, k, v, o, gate, up, down (or the HF `q_proj` … forms).
    pub targets: Vec<String>,
    /// QLoRA: keep the frozen base quantised in memory. A GGUF base stays in its own blocks
    /// anyway; an HF folder's weights are quantised on load to `q8_0` or `q4_k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize_base: Option<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, dropout: 0.0, targets: vec!["q".into(), "k".into(), "v".into(), "o".into()], quantize_base: None }
    }
}

impl LoraConfig {
    /// Normalised HF names of the targets, or an error naming an unknown one.
    pub fn target_names(&self) -> anyhow::Result<Vec<&'static str>> {
        let mut out = Vec::new();
        for t in &self.targets {
            let short = t.trim_end_matches("_proj");
            let name = TARGETS
                .iter()
                .find(|n| n.trim_end_matches("_proj") == short)
                .ok_or_else(|| anyhow::anyhow!("lora.targets: unknown module `{t}` (expected q, k, v, o, gate, up, down)"))?;
            if !out.contains(name) {
                out.push(*name);
            }
        }
        Ok(out)
    }
}

#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[in, r]`
    pub a: Param<Tensor<2>>,
    /// `[r, out]`
    pub b: Param<Tensor<2>>,
    pub scale: f64,
    pub dropout: f64,
}

/// A projection: a linear layer (trainable, or frozen — dense, or kept packed in its storage
/// format) and an optional adapter.
#[derive(Module, Debug)]
pub struct Proj {
    /// The dense weight `[in, out]` and bias; absent when the weight is packed.
    pub base: Option<Linear>,
    /// The bias of a packed weight.
    pub bias: Option<Param<Tensor<1>>>,
    /// A frozen weight in its storage format, `[out, in]` (GGUF blocks, bf16, f16), multiplied
    /// without being unpacked (`kernels::qlinear`).
    #[module(skip)]
    pub packed: Option<Arc<PackedMatrix>>,
    pub lora: Option<LoraAdapter>,
}

impl Proj {
    pub fn new(base: Linear) -> Self {
        Self { base: Some(base), bias: None, packed: None, lora: None }
    }

    /// A frozen projection over a packed `[out, in]` weight.
    pub fn packed(w: PackedMatrix, bias: Option<Param<Tensor<1>>>) -> Self {
        Self { base: None, bias: bias.map(|b| b.set_require_grad(false)), packed: Some(Arc::new(w)), lora: None }
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> (usize, usize) {
        match (&self.packed, &self.base) {
            (Some(w), _) => (w.cols, w.rows),
            (None, Some(b)) => {
                let [i, o] = b.weight.val().dims();
                (i, o)
            }
            (None, None) => (0, 0),
        }
    }

    /// Bytes the frozen packed weight holds (0 when dense).
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |w| w.bytes())
    }

    /// The base's output, without the adapter.
    fn base_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match (&self.packed, &self.base) {
            (Some(w), _) => self.packed_bias(crate::kernels::qlinear::packed_matmul(x, w)),
            (None, Some(b)) => super::blocks::linear_forward(b, x),
            (None, None) => panic!("a projection without weights"),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = self.base_forward(x.clone());
        self.adapt(y, x)
    }

    /// `[p.forward(x) for p in ps]`. Where every base is packed and `x` is a decoding step's
    /// few rows (`qlinear::packed_matmul_many`), the base products run together, so the thread
    /// pool is woken once for q, k and v (or gate and up) instead of once each.
    pub fn forward_all<const D: usize, const N: usize>(ps: [&Proj; N], x: Tensor<D>) -> [Tensor<D>; N] {
        let packed: Option<Vec<&Arc<PackedMatrix>>> = ps.iter().map(|p| p.packed.as_ref()).collect();
        if let Some(ws) = packed
            && let Some(ys) = crate::kernels::qlinear::packed_matmul_many(&x, &ws)
        {
            let mut ys = ys.into_iter();
            return ps.map(|p| {
                let y = p.packed_bias(ys.next().expect("one product per weight"));
                p.adapt(y, x.clone())
            });
        }
        ps.map(|p| p.forward(x.clone()))
    }

    /// A packed base's product `y` plus its bias.
    fn packed_bias<const D: usize>(&self, y: Tensor<D>) -> Tensor<D> {
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<D>(),
            None => y,
        }
    }

    /// The base's output `y` plus the adapter's for input `x`.
    fn adapt<const D: usize>(&self, y: Tensor<D>, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => y,
            Some(l) => {
                let x = if l.dropout > 0.0 && x.is_autodiff() {
                    let keep = x.random_like(Distribution::Bernoulli(1.0 - l.dropout));
                    x * keep / (1.0 - l.dropout)
                } else {
                    x
                };
                let xa = crate::kernels::linear::matmul_last(x, l.a.val());
                y + crate::kernels::linear::matmul_last(xa, l.b.val()) * l.scale
            }
        }
    }

    /// Add an adapter (A from `rng`, B zero) and freeze the base.
    pub fn add_lora(self, cfg: &LoraConfig, rng: &mut ChaCha8Rng, device: &Device) -> Self {
        let (d_in, d_out) = self.dims();
        let bound = 1.0 / (d_in as f64).sqrt();
        let a: Vec<f32> = (0..d_in * cfg.rank).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let adapter = LoraAdapter {
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, cfg.rank]), device)),
            b: Param::from_tensor(Tensor::zeros([cfg.rank, d_out], device)),
            scale: cfg.alpha / cfg.rank as f64,
            dropout: cfg.dropout,
        };
        Self { base: self.base.map(|b| b.no_grad()), bias: self.bias, packed: self.packed, lora: Some(adapter) }
    }

    /// The base as a dense linear layer (a packed weight unpacked to f32).
    pub fn dense_base(&self) -> Linear {
        match (&self.packed, &self.base) {
            (Some(w), _) => {
                let device = self
                    .lora
                    .as_ref()
                    .map(|l| l.a.val().device())
                    .or_else(|| self.bias.as_ref().map(|b| b.val().device()))
                    .unwrap_or_else(Device::flex);
                let mut l = super::blocks::linear_from_host(&w.to_host(), None, &device);
                l.bias = self.bias.clone();
                l
            }
            (None, Some(b)) => b.clone(),
            (None, None) => panic!("a projection without weights"),
        }
    }

    /// Fold the adapter into the base weight: `W + scale · A·B` (dense).
    pub fn merged(&self) -> Linear {
        let mut base = self.dense_base();
        if let Some(l) = &self.lora {
            let w = base.weight.val() + l.a.val().matmul(l.b.val()) * l.scale;
            base.weight = Param::from_tensor(w.detach());
        }
        base
    }
}

/// Seeded generator for adapter initialisation.
pub fn init_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ 0x10AA_5EED)
}

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::transformer::Transformer;
use crate::io::HostTensor;
use crate::io::safetensors::{SafetensorsFolder, SaveDtype, write_safetensors};

fn peft_key(layer: usize, name: &str, which: &str) -> String {
    let block = if name.ends_with("_proj") && ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&name) { "self_attn" } else { "mlp" };
    format!("base_model.model.model.layers.{layer}.{block}.{name}.lora_{which}.weight")
}

fn transpose_host(t: Tensor<2>) -> HostTensor {
    super::blocks::tensor_to_host(t.transpose())
}

/// Adapter weights under PEFT's names: `lora_A` is `[r, in]`, `lora_B` is `[out, r]`.
pub fn peft_tensors(model: &Transformer) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    for (i, name, p) in model.projections() {
        if let Some(l) = &p.lora {
            out.insert(peft_key(i, name, "A"), transpose_host(l.a.val()));
            out.insert(peft_key(i, name, "B"), transpose_host(l.b.val()));
        }
    }
    out
}

/// Write `adapter_config.json` + `adapter_model.safetensors` (PEFT layout) into `dir`.
pub fn save_peft(model: &Transformer, cfg: &LoraConfig, base_model: &str, dir: &Path) -> Result<()> {
    let tensors = peft_tensors(model);
    if tensors.is_empty() {
        bail!("the model has no LoRA adapters to save");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, SaveDtype::F32, None)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_names()?,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
    });
    crate::io::atomic_write(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&config)?.as_bytes())
}

/// Read a PEFT adapter folder's config.
pub fn read_peft_config(dir: &Path) -> Result<LoraConfig> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: invalid JSON at line {}, column {}: {e}", p.display(), e.line(), e.column()))?;
    let rank = v.get("r").and_then(|x| x.as_u64()).ok_or_else(|| anyhow!("{}: missing `r`", p.display()))? as usize;
    let alpha = v.get("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(rank as f64);
    let dropout = v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0);
    let targets = v
        .get("target_modules")
        .and_then(|x| x.as_array())
        .ok_or_else(|| anyhow!("{}: missing `target_modules` list", p.display()))?
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    Ok(LoraConfig { rank, alpha, dropout, targets, quantize_base: None })
}

/// Put a saved PEFT adapter onto `model` (which must not have adapters yet).
pub fn load_peft(model: Transformer, dir: &Path) -> Result<(Transformer, LoraConfig)> {
    let cfg = read_peft_config(dir)?;
    let mut m = model.with_lora(&cfg, 0)?;
    let st = SafetensorsFolder::open_file(&dir.join("adapter_model.safetensors"))?;
    let device = m.device();
    let load = |key: String, rows: usize, cols: usize| -> Result<Tensor<2>> {
        let t = st.get(&key).map_err(|e| anyhow!("{}: {e:#}", dir.display()))?;
        super::check_shape(&key, &t.shape, &[rows, cols], &dir.display().to_string())?;
        // PEFT stores the transposes of our [in, r] / [r, out] factors. Transposed on the host,
        // so the factors are laid out exactly as trained ones (same GEMM path, same bits).
        let mut tr = vec![0f32; t.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                tr[c * rows + r] = t.data[r * cols + c];
            }
        }
        Ok(Tensor::<2>::from_data(TensorData::new(tr, [cols, rows]), &device))
    };
    for (i, l) in m.layers.iter_mut().enumerate() {
        let mut slots: Vec<(&'static str, &mut Proj)> =
            vec![("q_proj", &mut l.attn.q), ("k_proj", &mut l.attn.k), ("v_proj", &mut l.attn.v), ("o_proj", &mut l.attn.o)];
        if let Some(g) = l.mlp.gate.as_mut() {
            slots.push(("gate_proj", g));
        }
        slots.push(("up_proj", &mut l.mlp.up));
        slots.push(("down_proj", &mut l.mlp.down));
        for (name, p) in slots {
            let (d_in, d_out) = p.dims();
            if let Some(ad) = p.lora.as_mut() {
                ad.a = Param::from_tensor(load(peft_key(i, name, "A"), cfg.rank, d_in)?);
                ad.b = Param::from_tensor(load(peft_key(i, name, "B"), d_out, cfg.rank)?);
            }
        }
    }
    Ok((m, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::HostTensor;
    use crate::io::quant::GgmlType;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// q, k and v of a decoding step through `forward_all` (their packed bases in one parallel
    /// region) give exactly what each projection gives alone, bias and adapter included. Many
    /// rows, or an input that records gradients, go one by one.
    #[test]
    fn grouped_packed_products_equal_the_single_ones() {
        let dev = Device::flex();
        let din = 96; // three blocks: the kernels' odd tail
        let proj = |ty: GgmlType, out: usize, bias: bool, seed: u32| {
            let w = HostTensor::new(vec![out, din], values(out * din, seed).iter().map(|v| v * 0.2).collect());
            let b = bias.then(|| super::super::blocks::param1(&HostTensor::new(vec![out], values(out, seed + 1)), &dev));
            Proj::packed(PackedMatrix::quantize(ty, &w).unwrap(), b)
        };
        // 832 outputs × 96 inputs: large enough to be split over the pool.
        let q = proj(GgmlType::Q4_1, 512, true, 1);
        let k = proj(GgmlType::Q8_0, 160, false, 2);
        let mut v = proj(GgmlType::Q4_0, 160, true, 3).add_lora(&LoraConfig::default(), &mut ChaCha8Rng::seed_from_u64(4), &dev);
        let l = v.lora.as_mut().unwrap();
        l.b = Param::from_tensor(Tensor::from_data(TensorData::new(values(8 * 160, 5), [8, 160]), &dev));
        let ws = [q.packed.as_ref().unwrap(), k.packed.as_ref().unwrap(), v.packed.as_ref().unwrap()];
        for rows in [1, 3, 9] {
            let x = Tensor::<3>::from_data(TensorData::new(values(rows * din, 6), [1, rows, din]), &dev);
            let grouped = crate::kernels::qlinear::packed_matmul_many(&x, &ws).is_some();
            assert_eq!(grouped, rows <= 8, "{rows} rows");
            let all = Proj::forward_all([&q, &k, &v], x.clone());
            for (got, p) in all.into_iter().zip([&q, &k, &v]) {
                let want = p.forward(x.clone());
                assert_eq!(got.try_into_vec_as::<f32>().unwrap(), want.try_into_vec_as::<f32>().unwrap(), "{rows} rows");
            }
        }
        let xa = Tensor::<3>::from_data(TensorData::new(values(din, 6), [1, 1, din]), &dev.autodiff());
        assert!(crate::kernels::qlinear::packed_matmul_many(&xa, &ws).is_none(), "autodiff inputs go one by one");
    }
}
