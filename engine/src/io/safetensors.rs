//! Hugging Face safetensors: single-file or sharded (`model.safetensors.index.json`) reading with
//! f32/f16/bf16 conversion, and atomic writing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::HostTensor;

/// The weight files of an HF folder, memory-mapped, with each tensor name mapped to its file.
pub struct SafetensorsFolder {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    index: BTreeMap<String, usize>,
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: read-only map of a file we do not modify.
    unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("{}: cannot map", path.display()))
}

impl SafetensorsFolder {
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        if single.exists() {
            files.push((single.clone(), map_file(&single)?));
        } else if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).with_context(|| format!("{}: cannot read", index_path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow!("{}: invalid JSON at line {}, column {}: {e}", index_path.display(), e.line(), e.column()))?;
            let wm = v
                .get("weight_map")
                .and_then(|w| w.as_object())
                .ok_or_else(|| anyhow!("{}: missing object `weight_map`", index_path.display()))?;
            let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
            for (name, file) in wm {
                let file = file.as_str().ok_or_else(|| anyhow!("{}: weight_map[{name:?}] is not a file name", index_path.display()))?;
                if file.contains('/') || file.contains('\\') || file.contains("..") {
                    bail!("{}: weight_map[{name:?}] = {file:?} points outside the folder", index_path.display());
                }
                let id = match shard_ids.get(file) {
                    Some(&id) => id,
                    None => {
                        let p = dir.join(file);
                        files.push((p.clone(), map_file(&p)?));
                        shard_ids.insert(file.to_string(), files.len() - 1);
                        files.len() - 1
                    }
                };
                index.insert(name.clone(), id);
            }
        } else {
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        }
        // Validate every file's header and index any tensors not named by an index.
        for (i, (path, map)) in files.iter().enumerate() {
            let st = SafeTensors::deserialize(map).map_err(|e| anyhow!("{}: malformed safetensors: {e}", path.display()))?;
            for name in st.names() {
                index.entry(name.to_string()).or_insert(i);
            }
        }
        Ok(Self { files, index })
    }

    /// One safetensors file on its own (e.g. an adapter).
    pub fn open_file(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let st = SafeTensors::deserialize(&map).map_err(|e| anyhow!("{}: malformed safetensors: {e}", path.display()))?;
        let index = st.names().into_iter().map(|n| (n.to_string(), 0)).collect();
        Ok(Self { files: vec![(path.to_path_buf(), map)], index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The stored dtype of the first floating tensor (for display).
    pub fn dtype(&self) -> Option<String> {
        let (_, map) = self.files.first()?;
        let st = SafeTensors::deserialize(map).ok()?;
        st.tensors().first().map(|(_, v)| format!("{:?}", v.dtype()).to_lowercase())
    }

    pub fn get(&self, name: &str) -> Result<HostTensor> {
        let &i = self.index.get(name).ok_or_else(|| anyhow!("tensor {name:?} not found in the checkpoint"))?;
        let (path, map) = &self.files[i];
        let st = SafeTensors::deserialize(map).map_err(|e| anyhow!("{}: malformed safetensors: {e}", path.display()))?;
        let view = st.tensor(name).map_err(|e| anyhow!("{}: tensor {name:?}: {e}", path.display()))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            other => bail!("{}: tensor {name:?} has dtype {other:?}; expected F32, F16 or BF16", path.display()),
        };
        Ok(HostTensor::new(view.shape().to_vec(), data))
    }
}

impl SafetensorsFolder {
    /// A 2-D f16 or bf16 tensor as stored (`None` for other dtypes, which are read as f32).
    pub fn get_packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<crate::io::quant::PackedMatrix>> {
        use crate::io::quant::{GgmlType, PackedMatrix};
        let &i = self.index.get(name).ok_or_else(|| anyhow!("tensor {name:?} not found in the checkpoint"))?;
        let (path, map) = &self.files[i];
        let st = SafeTensors::deserialize(map).map_err(|e| anyhow!("{}: malformed safetensors: {e}", path.display()))?;
        let view = st.tensor(name).map_err(|e| anyhow!("{}: tensor {name:?}: {e}", path.display()))?;
        if view.shape() != [rows, cols] {
            bail!("{}: tensor {name:?} has shape {:?}, but the config implies {:?}", path.display(), view.shape(), [rows, cols]);
        }
        let ty = match view.dtype() {
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            _ => return Ok(None),
        };
        Ok(Some(PackedMatrix::new(ty, rows, cols, view.data().to_vec()).map_err(|e| anyhow!("{}: {name}: {e:#}", path.display()))?))
    }
}

/// Storage dtype for saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    F32,
    F16,
    Bf16,
}

impl SaveDtype {
    pub fn hf_name(&self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::F16 => "float16",
            SaveDtype::Bf16 => "bfloat16",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" | "float32" => SaveDtype::F32,
            "f16" | "float16" => SaveDtype::F16,
            "bf16" | "bfloat16" => SaveDtype::Bf16,
            o => bail!("unknown dtype `{o}` (expected f32, f16 or bf16)"),
        })
    }
}

/// Write tensors as one safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    dtype: SaveDtype,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let bytes: Vec<u8> = match dtype {
            SaveDtype::F32 => t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            SaveDtype::F16 => t.data.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
            SaveDtype::Bf16 => t.data.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        };
        bufs.push((name.clone(), t.shape.clone(), bytes));
    }
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::F16 => Dtype::F16,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bufs
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    super::atomic_write(path, &bytes)
}
