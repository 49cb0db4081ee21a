//! One `ModelConfig` for every architecture, read from a Hugging Face `config.json` (both the
//! pre-transformers-5 layout with `rope_theta`/`rope_scaling` at the top level and the newer
//! `rope_parameters` object) or from GGUF metadata.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};

use crate::io::gguf::GgufFile;

/// Model families Whetstone implements. Each has its own file under `model/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3, Mistral (no sliding window), SmolLM and other `LlamaForCausalLM` checkpoints.
    Llama,
    /// Qwen2 / Qwen2.5: Llama with biases on q/k/v.
    Qwen2,
    /// Qwen3: RMSNorm on each head of q and k.
    Qwen3,
    /// GPT-2: learned positions, LayerNorm, GELU MLP, fused qkv.
    Gpt2,
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gpt2 => "gpt2",
        }
    }
}

/// How rotary frequencies are scaled for long context.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The `model_type` string as written in the source (e.g. "mistral", "smollm" map to `Llama`).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    pub hidden_act: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// dtype of the weights as stored ("float32", "bfloat16", "Q4_1", …).
    pub source_dtype: String,
}

fn get<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.get(k).filter(|v| !v.is_null())
}

fn req_usize(m: &Map<String, Value>, k: &str, file: &Path) -> Result<usize> {
    let v = get(m, k).ok_or_else(|| anyhow!("{}: missing field `{k}`", file.display()))?;
    v.as_u64().map(|x| x as usize).ok_or_else(|| anyhow!("{}: field `{k}` should be a non-negative integer, found {v}", file.display()))
}

fn opt_usize(m: &Map<String, Value>, k: &str, file: &Path) -> Result<Option<usize>> {
    match get(m, k) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| anyhow!("{}: field `{k}` should be a non-negative integer, found {v}", file.display())),
    }
}

fn opt_f64(m: &Map<String, Value>, k: &str, file: &Path) -> Result<Option<f64>> {
    match get(m, k) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| anyhow!("{}: field `{k}` should be a number, found {v}", file.display())),
    }
}

fn opt_bool(m: &Map<String, Value>, k: &str, file: &Path) -> Result<Option<bool>> {
    match get(m, k) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| anyhow!("{}: field `{k}` should be true or false, found {v}", file.display())),
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

fn parse_rope_scaling(obj: &Map<String, Value>, file: &Path) -> Result<RopeScaling> {
    let ty = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str).unwrap_or("default");
    let f = |k: &str| -> Result<f64> {
        obj.get(k).and_then(Value::as_f64).ok_or_else(|| anyhow!("{}: rope scaling `{ty}` needs the number `{k}`", file.display()))
    };
    Ok(match ty {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: f("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")?,
        },
        other => bail!("{}: rope scaling type `{other}` is not supported (supported: default, linear, llama3)", file.display()),
    })
}

impl ModelConfig {
    /// Parse an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: invalid JSON at line {}, column {}: {e}", path.display(), e.line(), e.column()))?;
        Self::from_hf_value(&v, path)
    }

    pub fn from_hf_value(v: &Value, file: &Path) -> Result<Self> {
        let m = v.as_object().ok_or_else(|| anyhow!("{}: expected a JSON object", file.display()))?;
        let model_type = get(m, "model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{}: missing field `model_type`", file.display()))?
            .to_string();
        let arch = match model_type.as_str() {
            "llama" | "mistral" | "smollm" | "smollm2" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gpt2" => Arch::Gpt2,
            other => bail!("{}: model_type `{other}` is not supported (supported: llama, mistral, qwen2, qwen3, gpt2)", file.display()),
        };
        let source_dtype = get(m, "torch_dtype").or_else(|| get(m, "dtype")).and_then(Value::as_str).unwrap_or("float32").to_string();
        let bos_token_id = get(m, "bos_token_id").and_then(Value::as_u64).map(|x| x as u32);
        let eos_token_ids = token_ids(get(m, "eos_token_id"));
        let pad_token_id = get(m, "pad_token_id").and_then(Value::as_u64).map(|x| x as u32);
        let tie_default = true;

        if arch == Arch::Gpt2 {
            let hidden = req_usize(m, "n_embd", file)?;
            let heads = req_usize(m, "n_head", file)?;
            if heads == 0 || hidden % heads != 0 {
                bail!("{}: n_embd {hidden} is not divisible by n_head {heads}", file.display());
            }
            let act = get(m, "activation_function").and_then(Value::as_str).unwrap_or("gelu_new").to_string();
            return Ok(Self {
                arch,
                model_type,
                vocab_size: req_usize(m, "vocab_size", file)?,
                hidden_size: hidden,
                intermediate_size: opt_usize(m, "n_inner", file)?.unwrap_or(4 * hidden),
                num_layers: req_usize(m, "n_layer", file)?,
                num_heads: heads,
                num_kv_heads: heads,
                head_dim: hidden / heads,
                max_position_embeddings: req_usize(m, "n_positions", file)?,
                norm_eps: opt_f64(m, "layer_norm_epsilon", file)?.unwrap_or(1e-5),
                rope_theta: 0.0,
                rope_scaling: RopeScaling::Default,
                tie_word_embeddings: opt_bool(m, "tie_word_embeddings", file)?.unwrap_or(tie_default),
                qkv_bias: true,
                o_bias: true,
                mlp_bias: true,
                qk_norm: false,
                hidden_act: act,
                bos_token_id,
                eos_token_ids,
                pad_token_id,
                source_dtype,
            });
        }

        let hidden = req_usize(m, "hidden_size", file)?;
        let heads = req_usize(m, "num_attention_heads", file)?;
        if heads == 0 {
            bail!("{}: num_attention_heads is 0", file.display());
        }
        let kv_heads = opt_usize(m, "num_key_value_heads", file)?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            bail!("{}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}", file.display());
        }
        let head_dim = opt_usize(m, "head_dim", file)?.unwrap_or(hidden / heads);
        // Two conventions: transformers >= 5 nests theta and scaling in `rope_parameters`.
        let (rope_theta, rope_scaling) = if let Some(rp) = get(m, "rope_parameters") {
            let rp = rp.as_object().ok_or_else(|| anyhow!("{}: `rope_parameters` should be an object", file.display()))?;
            let theta = opt_f64(rp, "rope_theta", file)?.or(opt_f64(m, "rope_theta", file)?).unwrap_or(10000.0);
            (theta, parse_rope_scaling(rp, file)?)
        } else {
            let theta = opt_f64(m, "rope_theta", file)?.unwrap_or(10000.0);
            let scaling = match get(m, "rope_scaling") {
                None => RopeScaling::Default,
                Some(Value::Object(o)) => parse_rope_scaling(o, file)?,
                Some(other) => bail!("{}: `rope_scaling` should be an object, found {other}", file.display()),
            };
            (theta, scaling)
        };
        if arch == Arch::Llama
            && model_type == "mistral"
            && let (Some(w), Some(ctx)) = (opt_usize(m, "sliding_window", file)?, opt_usize(m, "max_position_embeddings", file)?)
            && w < ctx
        {
            // Whetstone runs full attention; exact only up to the window length.
            eprintln!(
                "note: {}: sliding_window {w} < context {ctx}; Whetstone uses full attention, \
                         exact for sequences up to {w} tokens",
                file.display()
            );
        }
        let act = get(m, "hidden_act").and_then(Value::as_str).unwrap_or("silu").to_string();
        if act != "silu" {
            bail!("{}: hidden_act `{act}` is not supported for {model_type} (expected silu)", file.display());
        }
        let attention_bias = opt_bool(m, "attention_bias", file)?;
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            _ => {
                let b = attention_bias.unwrap_or(false);
                (b, b)
            }
        };
        Ok(Self {
            arch,
            model_type,
            vocab_size: req_usize(m, "vocab_size", file)?,
            hidden_size: hidden,
            intermediate_size: req_usize(m, "intermediate_size", file)?,
            num_layers: req_usize(m, "num_hidden_layers", file)?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            max_position_embeddings: opt_usize(m, "max_position_embeddings", file)?.unwrap_or(2048),
            norm_eps: opt_f64(m, "rms_norm_eps", file)?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: opt_bool(m, "tie_word_embeddings", file)?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: opt_bool(m, "mlp_bias", file)?.unwrap_or(false),
            qk_norm: arch == Arch::Qwen3,
            hidden_act: act,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            source_dtype,
        })
    }

    /// Read a Llama-architecture config from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.architecture()?.to_string();
        if arch_name != "llama" {
            bail!("{}: GGUF architecture `{arch_name}` is not supported (supported: llama)", g.path.display());
        }
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            g.get_u64(&key(k)).map(|x| x as usize).ok_or_else(|| anyhow!("{}: metadata `{}` missing", g.path.display(), key(k)))
        };
        let hidden = req("embedding_length")?;
        let heads = req("attention.head_count")?;
        let kv_heads = g.get_u64(&key("attention.head_count_kv")).map(|x| x as usize).unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            bail!("{}: head_count {heads} / head_count_kv {kv_heads} are inconsistent", g.path.display());
        }
        let head_dim = g.get_u64(&key("attention.key_length")).map(|x| x as usize).unwrap_or(hidden / heads);
        let vocab_size = match g.get_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| anyhow!("{}: no vocab size in metadata", g.path.display()))?,
        };
        let rope_scaling = match g.get_str(&key("rope.scaling.type")) {
            None | Some("none") => RopeScaling::Default,
            Some("linear") => RopeScaling::Linear { factor: g.get_f64(&key("rope.scaling.factor")).unwrap_or(1.0) },
            Some(other) => bail!("{}: rope scaling `{other}` is not supported", g.path.display()),
        };
        let tok = |k: &str| g.get_u64(&format!("tokenizer.ggml.{k}")).map(|x| x as u32);
        let source_dtype = g.tensor_info("blk.0.attn_q.weight").map(|t| t.ty.name().to_string()).unwrap_or_else(|| "unknown".into());
        Ok(Self {
            arch: Arch::Llama,
            model_type: "llama".into(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: req("feed_forward_length")?,
            num_layers: req("block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            max_position_embeddings: req("context_length")?,
            norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            hidden_act: "silu".into(),
            bos_token_id: tok("bos_token_id"),
            eos_token_ids: tok("eos_token_id").into_iter().collect(),
            pad_token_id: tok("padding_token_id"),
            source_dtype,
        })
    }

    /// An HF `config.json` that transformers loads, for weights saved as `dtype`.
    pub fn to_hf_json(&self, dtype: &str) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        if self.arch == Arch::Gpt2 {
            return json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "vocab_size": self.vocab_size,
                "n_embd": self.hidden_size,
                "n_layer": self.num_layers,
                "n_head": self.num_heads,
                "n_inner": self.intermediate_size,
                "n_positions": self.max_position_embeddings,
                "activation_function": self.hidden_act,
                "layer_norm_epsilon": self.norm_eps,
                "tie_word_embeddings": self.tie_word_embeddings,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": eos,
                "pad_token_id": self.pad_token_id,
                "torch_dtype": dtype,
            });
        }
        let (arch_class, model_type) = match self.arch {
            Arch::Llama => ("LlamaForCausalLM", "llama"),
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
            Arch::Gpt2 => unreachable!(),
        };
        let mut v = json!({
            "architectures": [arch_class],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype,
        });
        let o = v.as_object_mut().unwrap();
        match self.arch {
            Arch::Llama => {
                o.insert("attention_bias".into(), json!(self.qkv_bias));
                o.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Arch::Qwen3 => {
                o.insert("attention_bias".into(), json!(self.qkv_bias));
            }
            _ => {}
        }
        match &self.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                o.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": factor}));
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                o.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                           "high_freq_factor": high_freq_factor,
                           "original_max_position_embeddings": original_max_position_embeddings}),
                );
            }
        }
        v
    }

    /// Number of parameters (counting tied embeddings once).
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += h;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim;
        }
        let gated = self.arch != Arch::Gpt2;
        let mut mlp = if gated { 3 * h * self.intermediate_size } else { 2 * h * self.intermediate_size };
        if self.mlp_bias {
            mlp += self.intermediate_size * if gated { 2 } else { 1 } + h;
        }
        let norm = if self.arch == Arch::Gpt2 { 2 * h } else { h };
        let layer = attn + mlp + 2 * norm;
        let mut total = self.num_layers * layer + norm + self.vocab_size * h;
        if !self.tie_word_embeddings {
            total += self.vocab_size * h;
        }
        if self.arch == Arch::Gpt2 {
            total += self.max_position_embeddings * h;
        }
        total
    }

    /// Key/value cache bytes per token (f32).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * 4
    }
}
