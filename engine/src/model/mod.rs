//! Language models: one `ModelConfig`, shared blocks, one file per architecture, and
//! [`LoadedModel`], which ties a model to its tokenizer and knows where it came from.

pub mod batch;
pub mod blocks;
pub mod config;
pub mod gpt2;
pub mod llama;
pub mod lora;
pub mod memory;
pub mod params;
pub mod qwen2;
pub mod qwen3;
pub mod reward;
pub mod synthetic;
pub mod transformer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::io::gguf::GgufFile;
use crate::io::quant::{GgmlType, PackedMatrix};
use crate::io::safetensors::{SafetensorsFolder, SaveDtype, write_safetensors};
use crate::io::{HostTensor, atomic_write, refuse_pickle};
use crate::text::tokenizer::Tokenizer;
pub use config::{Arch, ModelConfig};
pub use transformer::{KvCache, ModelWeights, Transformer, ids_tensor};

/// How frozen weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packing {
    /// Every weight as f32, trainable (full fine-tuning; any device).
    #[default]
    Dense,
    /// Projection and LM-head weights stay in the format they are stored in (GGUF blocks, bf16,
    /// f16), frozen; f32 weights stay f32. For inference and as a LoRA base, on the CPU.
    Stored,
    /// As `Stored`, and f32/bf16/f16 projection weights are quantised to this type on load (QLoRA
    /// from an HF folder).
    Quantize(GgmlType),
}

impl Packing {
    /// `quantize_base` of a job: `q8_0` or `q4_k`.
    pub fn parse_quantize(s: &str) -> Result<Self> {
        Ok(Packing::Quantize(match s.to_ascii_lowercase().as_str() {
            "q8_0" => GgmlType::Q8_0,
            "q4_k" => GgmlType::Q4K,
            other => bail!("quantize_base = {other:?}: use \"q8_0\" or \"q4_k\""),
        }))
    }

    /// The packing a device can run: packed weights need the CPU kernels (elsewhere they would
    /// be unpacked on every use), so other devices get `Dense`.
    pub fn for_device(self, device: &Device) -> Self {
        let cpu = crate::kernels::fused_for(&Tensor::<1>::zeros([1], device));
        if cpu { self } else { Packing::Dense }
    }
}

/// Where weights come from, by Hugging Face tensor name.
pub trait WeightSource {
    fn get(&self, name: &str) -> Result<HostTensor>;
    fn has(&self, name: &str) -> bool;
    fn describe(&self) -> String;
    /// The weight `name` packed as the source's packing asks (`None`: read it dense).
    fn packed(&self, _name: &str, _shape: &[usize]) -> Result<Option<PackedMatrix>> {
        Ok(None)
    }
    /// The weight `name` packed exactly as stored (16-bit floats), only when the packing keeps
    /// weights as stored; never re-quantised.
    fn packed_as_stored(&self, _name: &str, _shape: &[usize]) -> Result<Option<PackedMatrix>> {
        Ok(None)
    }
    /// `get` plus a shape check that names the tensor and the file.
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.get(name).map_err(|e| anyhow!("{}: {e:#}", self.describe()))?;
        check_shape(name, &t.shape, shape, &self.describe())?;
        Ok(t)
    }
}

pub fn check_shape(name: &str, got: &[usize], want: &[usize], file: &str) -> Result<()> {
    if got != want {
        bail!("{file}: tensor {name:?} has shape {got:?}, but the config implies {want:?}");
    }
    Ok(())
}

struct FolderSource {
    dir: PathBuf,
    st: SafetensorsFolder,
    packing: Packing,
}

impl WeightSource for FolderSource {
    fn get(&self, name: &str) -> Result<HostTensor> {
        self.st.get(name)
    }
    fn has(&self, name: &str) -> bool {
        self.st.contains(name)
    }
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
    fn packed_as_stored(&self, name: &str, shape: &[usize]) -> Result<Option<PackedMatrix>> {
        match (self.packing, shape) {
            (Packing::Stored, &[rows, cols]) => self.st.get_packed(name, rows, cols),
            _ => Ok(None),
        }
    }
    fn packed(&self, name: &str, shape: &[usize]) -> Result<Option<PackedMatrix>> {
        let [rows, cols] = shape[..] else { return Ok(None) };
        match self.packing {
            Packing::Dense => Ok(None),
            Packing::Stored => self.st.get_packed(name, rows, cols),
            Packing::Quantize(ty) => {
                let w = self.get_shaped(name, shape)?;
                Ok(Some(PackedMatrix::quantize_or_q8(ty, &w).map_err(|e| anyhow!("{}: {name}: {e:#}", self.describe()))?))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    HfFolder,
    Gguf,
}

/// A model ready to run: weights on a device, its tokenizer, and its provenance.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub model: Transformer,
    pub device: Device,
    pub source: PathBuf,
    pub format: SourceFormat,
    /// Extra stop ids from `generation_config.json`.
    pub generation_eos: Vec<u32>,
}

/// What `whetstone inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub format: SourceFormat,
    pub architecture: String,
    pub model_type: String,
    pub parameters: usize,
    pub dtype: String,
    pub context_length: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub tied_embeddings: bool,
    pub rope_theta: f64,
    /// Weights in memory as loaded (packed weights in their storage format, the rest f32).
    pub weights_bytes: usize,
    /// KV cache for one sequence at full context, f32.
    pub kv_cache_bytes_full_context: usize,
    pub chat_template: bool,
    pub eos_tokens: Vec<String>,
}

/// Resolve a user-given model path: an HF folder or a `.gguf` file.
fn classify(path: &Path) -> Result<(SourceFormat, PathBuf)> {
    if !path.exists() {
        bail!("{}: model not found (expected an HF folder or a .gguf file)", path.display());
    }
    if path.is_dir() {
        let has_safetensors = path.join("model.safetensors").exists() || path.join("model.safetensors.index.json").exists();
        if !has_safetensors {
            for pickle in ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth"] {
                if path.join(pickle).exists() {
                    refuse_pickle(&path.join(pickle.trim_end_matches(".index.json")))?;
                }
            }
        }
        return Ok((SourceFormat::HfFolder, path.to_path_buf()));
    }
    refuse_pickle(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".gguf") {
        return Ok((SourceFormat::Gguf, path.to_path_buf()));
    }
    if name.ends_with(".safetensors") || name == "config.json" {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((SourceFormat::HfFolder, dir));
    }
    bail!("{}: not a model (expected an HF folder or a .gguf file)", path.display())
}

fn generation_eos(dir: &Path) -> Vec<u32> {
    let p = dir.join("generation_config.json");
    let Ok(text) = std::fs::read_to_string(&p) else { return vec![] };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return vec![] };
    match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

/// Read a model's config (cheap: no weights).
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let (format, p) = classify(path)?;
    match format {
        SourceFormat::HfFolder => ModelConfig::from_hf_json(&p.join("config.json")),
        SourceFormat::Gguf => ModelConfig::from_gguf(&GgufFile::open(&p)?),
    }
}

/// Host weights of any supported checkpoint, by architecture.
pub fn read_weights(path: &Path) -> Result<(ModelConfig, ModelWeights, Tokenizer, SourceFormat, PathBuf)> {
    read_weights_with(path, Packing::Dense)
}

/// [`read_weights`], keeping weights packed as `packing` asks.
pub fn read_weights_with(path: &Path, packing: Packing) -> Result<(ModelConfig, ModelWeights, Tokenizer, SourceFormat, PathBuf)> {
    let (format, p) = classify(path)?;
    match format {
        SourceFormat::HfFolder => {
            let cfg_path = p.join("config.json");
            if !cfg_path.exists() {
                bail!("{}: no config.json", p.display());
            }
            let cfg = ModelConfig::from_hf_json(&cfg_path)?;
            // GPT-2 stores Conv1D (transposed) weights with fused q/k/v: always dense.
            let packing = if cfg.arch == Arch::Gpt2 { Packing::Dense } else { packing };
            let src = FolderSource { dir: p.clone(), st: SafetensorsFolder::open(&p)?, packing };
            let w = match cfg.arch {
                Arch::Llama => llama::from_hf(&cfg, &src)?,
                Arch::Qwen2 => qwen2::from_hf(&cfg, &src)?,
                Arch::Qwen3 => qwen3::from_hf(&cfg, &src)?,
                Arch::Gpt2 => gpt2::from_hf(&cfg, &src)?,
            };
            let tok = Tokenizer::from_hf_dir(&p)?;
            Ok((cfg, w, tok, format, p))
        }
        SourceFormat::Gguf => {
            let g = GgufFile::open(&p)?;
            let cfg = ModelConfig::from_gguf(&g)?;
            let w = llama::from_gguf(&cfg, &g, packing)?;
            let tok = Tokenizer::from_gguf(&g)?;
            Ok((cfg, w, tok, format, p))
        }
    }
}

impl LoadedModel {
    /// Load with every weight as f32 (trainable).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, Packing::Dense)
    }

    /// Load keeping frozen weights packed as `packing` asks (on the CPU; other devices load
    /// dense). Packed weights take no gradient: use them for inference and as a LoRA base.
    pub fn load_with(path: &Path, device: &Device, packing: Packing) -> Result<Self> {
        let (config, weights, tokenizer, format, source) = read_weights_with(path, packing.for_device(device))?;
        let model = Transformer::from_weights(&config, &weights, device);
        let generation_eos = if format == SourceFormat::HfFolder { generation_eos(&source) } else { vec![] };
        Ok(Self { config, tokenizer, model, device: device.clone(), source, format, generation_eos })
    }

    /// Token ids that end generation: config, generation config and the tokenizer's EOS token.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut v = self.config.eos_token_ids.clone();
        v.extend(&self.generation_eos);
        v.extend(self.tokenizer.eos_id());
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn info(&self) -> ModelInfo {
        let c = &self.config;
        let params = c.num_params();
        ModelInfo {
            path: self.source.display().to_string(),
            format: self.format,
            architecture: c.arch.name().into(),
            model_type: c.model_type.clone(),
            parameters: params,
            dtype: c.source_dtype.clone(),
            context_length: c.max_position_embeddings,
            layers: c.num_layers,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            tied_embeddings: c.tie_word_embeddings,
            rope_theta: c.rope_theta,
            weights_bytes: self.model.resident_bytes(),
            kv_cache_bytes_full_context: c.kv_bytes_per_token() * c.max_position_embeddings,
            chat_template: self.tokenizer.chat_template.is_some(),
            eos_tokens: self.eos_ids().iter().filter_map(|&i| self.tokenizer.id_to_token(i)).collect(),
        }
    }

    /// Logits `[T, vocab]` of a whole sequence, on the host.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        if ids.is_empty() {
            bail!("empty input");
        }
        let logits = self.model.forward(ids_tensor(ids, &self.device), None);
        let [_, t, v] = logits.dims();
        let data = logits.try_into_vec_as::<f32>().map_err(|e| anyhow!("{e:?}"))?;
        Ok((0..t).map(|i| data[i * v..(i + 1) * v].to_vec()).collect())
    }

    /// log p(ids[t+1] | ids[..=t]) for every position (length `ids.len() - 1`).
    pub fn token_logprobs(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            bail!("need at least two tokens to score (got {})", ids.len());
        }
        self.check_len(ids.len())?;
        let t = ids.len();
        let hidden = self.model.forward_hidden(ids_tensor(&ids[..t - 1], &self.device), None);
        let targets: Vec<i32> = ids[1..].iter().map(|&x| x as i32).collect();
        let idx = Tensor::<2, Int>::from_data(TensorData::new(targets, [1, t - 1]), &self.device);
        let (lp, _) = self.model.target_logprobs(hidden, &idx);
        lp.try_into_vec_as::<f32>().map_err(|e| anyhow!("{e:?}"))
    }

    pub fn check_len(&self, n: usize) -> Result<()> {
        if n > self.config.max_position_embeddings {
            bail!("{n} tokens exceed the model's context length of {}", self.config.max_position_embeddings);
        }
        Ok(())
    }

    /// Host weights by Hugging Face name, for this architecture.
    pub fn hf_tensors(&self) -> BTreeMap<String, HostTensor> {
        let w = self.model.to_weights();
        match self.config.arch {
            Arch::Llama => llama::to_hf(&w),
            Arch::Qwen2 => qwen2::to_hf(&w),
            Arch::Qwen3 => qwen3::to_hf(&w),
            Arch::Gpt2 => gpt2::to_hf(&w),
        }
    }

    /// Write an HF folder (model.safetensors, config.json, generation_config.json, tokenizer
    /// files) that transformers loads. Every file is written atomically.
    pub fn save_hf(&self, dir: &Path, dtype: SaveDtype) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let tensors = self.hf_tensors();
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        write_safetensors(&dir.join("model.safetensors"), &tensors, dtype, Some(meta))?;
        let cfg = self.config.to_hf_json(dtype.hf_name());
        atomic_write(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        let eos = self.eos_ids();
        let generation = serde_json::json!({
            "bos_token_id": self.config.bos_token_id,
            "eos_token_id": if eos.len() == 1 { serde_json::json!(eos[0]) } else { serde_json::json!(eos) },
            "pad_token_id": self.config.pad_token_id,
        });
        atomic_write(&dir.join("generation_config.json"), serde_json::to_string_pretty(&generation)?.as_bytes())?;
        self.tokenizer.save_hf(dir)?;
        Ok(())
    }
}
