//! GGUF (llama.cpp) reader: header, metadata, tensor table, and dequantisation of the
//! tensor types people actually ship (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K).
//!
//! Everything is dequantised to f32 on load; the model then runs in f32 (or whatever dtype the
//! device uses). Layout notes:
//! - GGUF dims are listed fastest-varying first, so a PyTorch `[out, in]` weight has dims `[in, out]`.
//! - llama.cpp's converter permutes the rows of `attn_q`/`attn_k` from Hugging Face's rotate-half
//!   RoPE layout to the interleaved one; [`unpermute_qk`] undoes that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::I8(v) if v >= 0 => v as u64,
            Value::U16(v) => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::U32(v) => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::U64(v) => v,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Value::F32(v) => v as f64,
            Value::F64(v) => v,
            _ => self.as_u64()? as f64,
        })
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }
    fn name_of(id: u32) -> &'static str {
        match id {
            6 => "Q5_0",
            7 => "Q5_1",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            15 => "Q8_K",
            16..=23 => "IQ*",
            _ => "unknown",
        }
    }
    /// (elements per block, bytes per block)
    pub fn block(&self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: fastest-varying first.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn n_bytes(&self) -> usize {
        let (be, bb) = self.ty.block();
        self.n_elements() / be * bb
    }
    /// Shape in PyTorch order (slowest-varying first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file, memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    map: memmap2::Mmap,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| anyhow!("truncated: wanted {n} bytes at offset {} of {}", self.pos, self.buf.len()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        // Every element takes at least one byte, so a count larger than the file is corrupt.
        if n as usize > self.buf.len() {
            bail!("truncated or corrupt: {what} length {n} at offset {} is larger than the file", self.pos - 8);
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len("string")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| anyhow!("string at offset {} is not UTF-8", self.pos - n))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    bail!("arrays nested too deeply");
                }
                let ety = self.u32()?;
                let n = self.len("array")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => bail!("unknown metadata value type {t}"),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: the file is opened read-only; we only read through the map.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
        Self::parse(path, map).map_err(|e| anyhow!("{}: malformed GGUF: {e:#}", path.display()))
    }

    fn parse(path: &Path, map: memmap2::Mmap) -> Result<Self> {
        let mut r = Reader { buf: &map, pos: 0 };
        let magic = r.take(4).context("file too short for a GGUF header")?;
        if magic != b"GGUF" {
            bail!("bad magic {:?} (expected \"GGUF\")", String::from_utf8_lossy(magic));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version} (supported: 2, 3)");
        }
        let n_tensors = r.len("tensor count")?;
        let n_kv = r.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string().with_context(|| format!("metadata entry {i}: key"))?;
            let ty = r.u32()?;
            let v = r.value(ty, 0).with_context(|| format!("metadata key {key:?}"))?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string().with_context(|| format!("tensor {i}: name"))?;
            let nd = r.u32()? as usize;
            if nd == 0 || nd > 4 {
                bail!("tensor {name:?}: {nd} dimensions");
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(r.u64()? as usize);
            }
            let tid = r.u32()?;
            let ty = GgmlType::from_id(tid).ok_or_else(|| {
                anyhow!(
                    "tensor {name:?} has type {} (id {tid}), which Whetstone does not read; \
                     supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K",
                    GgmlType::name_of(tid)
                )
            })?;
            let offset = r.u64()? as usize;
            let info = TensorInfo { name, dims, ty, offset };
            if !info.n_elements().is_multiple_of(ty.block().0) {
                bail!("tensor {:?}: {} elements is not a multiple of the {} block", info.name, info.n_elements(), ty.name());
            }
            tensors.push(info);
        }
        let align = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        if align == 0 || !align.is_power_of_two() {
            bail!("general.alignment {align} is not a power of two");
        }
        let data_start = r.pos.div_ceil(align) * align;
        for t in &tensors {
            let end = data_start + t.offset + t.n_bytes();
            if end > map.len() {
                bail!("tensor {:?} runs past the end of the file ({end} > {})", t.name, map.len());
            }
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors, data_start, map })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture").ok_or_else(|| anyhow!("{}: metadata has no general.architecture", self.path.display()))
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn raw(&self, t: &TensorInfo) -> &[u8] {
        let s = self.data_start + t.offset;
        &self.map[s..s + t.n_bytes()]
    }

    /// Dequantise one tensor to f32; returns (PyTorch-order shape, values).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor_info(name).ok_or_else(|| anyhow!("{}: tensor {name:?} not found", self.path.display()))?;
        let mut out = vec![0f32; t.n_elements()];
        dequantize(t.ty, self.raw(t), &mut out)?;
        Ok((t.shape(), out))
    }
}

pub use super::quant::dequantize;

/// Undo llama.cpp's q/k row permutation (interleaved RoPE pairs → HF rotate-half halves).
/// `w` is row-major `[n_head * head_dim, cols]`.
pub fn unpermute_qk(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    move_qk_rows(w, n_head, cols, true)
}

/// The inverse of [`unpermute_qk`]: HF rotate-half rows → llama.cpp interleaved rows.
pub fn permute_qk(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    move_qk_rows(w, n_head, cols, false)
}

fn move_qk_rows(w: &[f32], n_head: usize, cols: usize, to_halves: bool) -> Vec<f32> {
    let head_dim = w.len() / cols / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for p in 0..2 {
                // interleaved row h*hd + 2i + p  <->  rotate-half row h*hd + p*half + i
                let interleaved = h * head_dim + 2 * i + p;
                let halves = h * head_dim + p * half + i;
                let (src, dst) = if to_halves { (interleaved, halves) } else { (halves, interleaved) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn permute_roundtrip() {
        let w: Vec<f32> = (0..(2 * 8 * 3)).map(|x| x as f32).collect();
        let p = permute_qk(&w, 2, 3);
        assert_ne!(p, w);
        assert_eq!(unpermute_qk(&p, 2, 3), w);
        // head 0, pair 1, second element: interleaved row 3 is HF row half+1 = 5.
        assert_eq!(&p[3 * 3..4 * 3], &w[5 * 3..6 * 3]);
    }

    #[test]
    fn q8_0_and_q4_1_blocks() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut y = vec![0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut y).unwrap();
        for j in 0..32 {
            assert_eq!(y[j], (j as f32 - 16.0) * 0.5);
        }
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4] = 0x3A; // low nibble 10 -> element 0, high nibble 3 -> element 16
        let mut y = vec![0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y).unwrap();
        assert_eq!(y[0], 19.0);
        assert_eq!(y[16], 5.0);
        assert_eq!(y[1], -1.0);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut y = vec![0f32; 32];
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], &mut y).is_err());
    }
}
