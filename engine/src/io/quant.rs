//! Weights in their storage format: ggml's block quantisations (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
//! Q6_K) and the 16-bit floats (F16, BF16), as GGUF files and safetensors hold them. A
//! [`PackedMatrix`] keeps a frozen `[rows, cols]` weight in that form (a quarter to a half of f32's
//! memory, or less), and gives rows back as f32 a tile at a time, so a matmul never holds the
//! whole f32 weight (`kernels::qlinear`). Quantisers follow llama.cpp's reference algorithms
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_K_ref` with its `make_qkx2_quants` search).

use std::sync::Arc;

use anyhow::{Result, bail};
use half::{bf16, f16};

use super::HostTensor;
pub use super::gguf::GgmlType;

/// Dequantise `data` of type `ty` into `out` (length = number of elements).
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let (be, bb) = ty.block();
    if !out.len().is_multiple_of(be) || data.len() != out.len() / be * bb {
        bail!("{}: {} bytes do not hold {} elements", ty.name(), data.len(), out.len());
    }
    use rayon::prelude::*;
    // Work in chunks of many blocks so rayon overhead stays negligible.
    let blocks_per_chunk = (1 << 16) / be;
    data.par_chunks(bb * blocks_per_chunk).zip(out.par_chunks_mut(be * blocks_per_chunk)).for_each(|(d, o)| {
        for (b, y) in d.chunks_exact(bb).zip(o.chunks_exact_mut(be)) {
            dequant_block(ty, b, y);
        }
    });
    Ok(())
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline(always)]
pub(crate) fn dequant_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = f16_at(b, 0),
        GgmlType::BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0x0F) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::Q4K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (k, j) in (0..256).step_by(64).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * k, scales);
                let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let q = &qs[32 * k..32 * k + 32];
                for l in 0..32 {
                    y[j + l] = d1 * (q[l] & 0x0F) as f32 - m1;
                    y[j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        GgmlType::Q5K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for (k, j) in (0..256).step_by(64).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * k, scales);
                let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let u1 = 1u8 << (2 * k);
                let u2 = 2u8 << (2 * k);
                let ql = &qs[32 * k..32 * k + 32];
                for l in 0..32 {
                    let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[j + l] = d1 * ((ql[l] & 0x0F) + hi1) as f32 - m1;
                    y[j + 32 + l] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
                }
            }
        }
        GgmlType::Q6K => {
            let ql_all = &b[0..128];
            let qh_all = &b[128..192];
            let sc_all = &b[192..208];
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &ql_all[64 * half..];
                let qh = &qh_all[32 * half..];
                let sc = &sc_all[8 * half..];
                let yo = 128 * half;
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[yo + l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[yo + l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[yo + l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[yo + l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` in a K-quant's packed 12-byte scale array.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 { (q[j] & 63, q[j + 4] & 63) } else { ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)) }
}

/// Dequantise whole blocks of `data` into `out` on this thread (16-bit floats as one conversion
/// loop the compiler vectorises).
#[inline(always)]
pub fn dequant_into(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::BF16 => {
            for (b, y) in data.chunks_exact(2).zip(out.iter_mut()) {
                *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        GgmlType::F16 => {
            for (b, y) in data.chunks_exact(2).zip(out.iter_mut()) {
                *y = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        GgmlType::F32 => {
            for (b, y) in data.chunks_exact(4).zip(out.iter_mut()) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        _ => {
            let (be, bb) = ty.block();
            for (b, y) in data.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
                dequant_block(ty, b, y);
            }
        }
    }
}

/// A frozen `[rows, cols]` weight in a storage format: `rows` rows of `cols` values, each row
/// a whole number of blocks (row-major, as GGUF stores a `[out, in]` weight).
#[derive(Clone)]
pub struct PackedMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: Arc<Vec<u8>>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({} [{}, {}])", self.ty.name(), self.rows, self.cols)
    }
}

impl PackedMatrix {
    /// Wrap `data` (checked: every row a whole number of blocks, the length exact).
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let (be, bb) = ty.block();
        if !cols.is_multiple_of(be) {
            bail!("{}: a row of {cols} values is not a whole number of {be}-value blocks", ty.name());
        }
        let want = rows.checked_mul(cols / be).and_then(|b| b.checked_mul(bb));
        if want != Some(data.len()) {
            bail!("{}: {} bytes do not hold a [{rows}, {cols}] matrix", ty.name(), data.len());
        }
        Ok(Self { ty, rows, cols, data: Arc::new(data) })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        let (be, bb) = self.ty.block();
        self.cols / be * bb
    }

    /// The storage itself: a GPU copy is cached against it (`kernels/gpu/qlinear.rs`), held
    /// weakly, so it lives exactly as long as this matrix's bytes.
    pub(crate) fn storage(&self) -> &Arc<Vec<u8>> {
        &self.data
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The raw bytes of rows `r0..r1`.
    pub fn row_data(&self, r0: usize, r1: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r0 * rb..r1 * rb]
    }

    /// Rows `r0..r1` as f32 into `out` (`(r1 - r0) * cols` values).
    pub fn dequant_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), (r1 - r0) * self.cols);
        dequant_into(self.ty, self.row_data(r0, r1), out);
    }

    /// The matrix as groups of 16 values, each `scale · code + offset` with a signed 8-bit
    /// code: the layout the GPU kernel reads (`kernels/gpu/qlinear.rs`). Returns the codes
    /// packed four to a little-endian word (`[rows, cols / 4]`), and the scales and offsets
    /// (`[rows, cols / 16]`); `None` for the 16- and 32-bit float types.
    ///
    /// Each value is computed from them with the operations [`dequant_block`] uses, in the same
    /// order (`code · scale` for Q8_0, Q4_0 and Q6_K, whose offset is 0, `code · scale + offset`
    /// for Q4_1, Q4_K and Q5_K), so the GPU dequantises bit for bit as the CPU does.
    pub fn groups16(&self) -> Option<(Vec<u32>, Vec<f32>, Vec<f32>)> {
        if matches!(self.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return None;
        }
        let (be, bb) = self.ty.block();
        let n = self.rows * self.cols;
        let mut codes = vec![0u8; n];
        let mut scales = Vec::with_capacity(n / 16);
        let mut offsets = Vec::with_capacity(n / 16);
        for (bi, b) in self.data.chunks_exact(bb).enumerate() {
            let c = &mut codes[bi * be..(bi + 1) * be];
            let mut group = |scale: f32, offset: f32| {
                scales.push(scale);
                offsets.push(offset);
            };
            match self.ty {
                GgmlType::Q8_0 => {
                    let d = f16_at(b, 0);
                    c.copy_from_slice(&b[2..34]);
                    group(d, 0.0);
                    group(d, 0.0);
                }
                GgmlType::Q4_0 | GgmlType::Q4_1 => {
                    let d = f16_at(b, 0);
                    let (m, qs) = if self.ty == GgmlType::Q4_1 { (f16_at(b, 2), &b[4..20]) } else { (0.0, &b[2..18]) };
                    let zero = if self.ty == GgmlType::Q4_0 { 8 } else { 0 };
                    for j in 0..16 {
                        c[j] = ((qs[j] & 0x0F) as i32 - zero) as i8 as u8;
                        c[j + 16] = ((qs[j] >> 4) as i32 - zero) as i8 as u8;
                    }
                    group(d, m);
                    group(d, m);
                }
                GgmlType::Q4K | GgmlType::Q5K => {
                    let d = f16_at(b, 0);
                    let dmin = f16_at(b, 2);
                    let scales_k = &b[4..16];
                    let q5 = self.ty == GgmlType::Q5K;
                    let (qh, qs) = if q5 { (&b[16..48], &b[48..176]) } else { (&b[16..16], &b[16..144]) };
                    for k in 0..4 {
                        let (sc1, m1) = scale_min_k4(2 * k, scales_k);
                        let (sc2, m2) = scale_min_k4(2 * k + 1, scales_k);
                        let q = &qs[32 * k..32 * k + 32];
                        for l in 0..32 {
                            let (hi1, hi2) = if q5 {
                                (if qh[l] & (1u8 << (2 * k)) != 0 { 16 } else { 0 }, if qh[l] & (2u8 << (2 * k)) != 0 { 16 } else { 0 })
                            } else {
                                (0, 0)
                            };
                            c[64 * k + l] = (q[l] & 0x0F) + hi1;
                            c[64 * k + 32 + l] = (q[l] >> 4) + hi2;
                        }
                        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                        group(d1, -m1);
                        group(d1, -m1);
                        group(d2, -m2);
                        group(d2, -m2);
                    }
                }
                GgmlType::Q6K => {
                    let (ql_all, qh_all, sc_all) = (&b[0..128], &b[128..192], &b[192..208]);
                    let d = f16_at(b, 208);
                    for half in 0..2 {
                        let (ql, qh, yo) = (&ql_all[64 * half..], &qh_all[32 * half..], 128 * half);
                        for l in 0..32 {
                            c[yo + l] = (((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32) as i8 as u8;
                            c[yo + l + 32] = (((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32) as i8 as u8;
                            c[yo + l + 64] = (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32) as i8 as u8;
                            c[yo + l + 96] = (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32) as i8 as u8;
                        }
                    }
                    // Sixteen groups of 16, in value order: scale index `is + 2·quarter` of each half.
                    let sc = |i: usize| d * (sc_all[i] as i8) as f32;
                    for half in 0..2 {
                        for quarter in 0..4 {
                            for is in 0..2 {
                                group(sc(8 * half + is + 2 * quarter), 0.0);
                            }
                        }
                    }
                }
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("handled above"),
            }
        }
        let words = codes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        Some((words, scales, offsets))
    }

    /// The whole matrix as f32, `[rows, cols]`.
    pub fn to_host(&self) -> HostTensor {
        let mut out = vec![0f32; self.rows * self.cols];
        dequantize(self.ty, &self.data, &mut out).expect("sizes checked at construction");
        HostTensor::new(vec![self.rows, self.cols], out)
    }

    /// The same matrix with its rows reordered: row `i` of the result is row `perm[i]`.
    pub fn permute_rows(&self, perm: &[usize]) -> Self {
        let rb = self.row_bytes();
        let mut data = Vec::with_capacity(self.data.len());
        for &r in perm {
            data.extend_from_slice(&self.data[r * rb..(r + 1) * rb]);
        }
        Self { ty: self.ty, rows: perm.len(), cols: self.cols, data: Arc::new(data) }
    }

    /// Pack a `[rows, cols]` f32 matrix as `ty`, or as Q8_0 when its rows are not a whole
    /// number of `ty`'s blocks (K-quants need rows of 256; llama.cpp falls back likewise).
    pub fn quantize_or_q8(ty: GgmlType, w: &HostTensor) -> Result<Self> {
        let cols = w.shape.last().copied().unwrap_or(0);
        let ty = if cols % ty.block().0 != 0 { GgmlType::Q8_0 } else { ty };
        Self::quantize(ty, w)
    }

    /// Pack a `[rows, cols]` f32 matrix as `ty` (F16, BF16, Q8_0, Q4_0, Q4_1 or Q4_K).
    pub fn quantize(ty: GgmlType, w: &HostTensor) -> Result<Self> {
        let [rows, cols] = w.shape[..] else { bail!("can only pack a matrix, got shape {:?}", w.shape) };
        let (be, bb) = ty.block();
        if cols % be != 0 {
            bail!("{}: rows of {cols} values are not a whole number of {be}-value blocks", ty.name());
        }
        let mut data = vec![0u8; rows * (cols / be) * bb];
        use rayon::prelude::*;
        data.par_chunks_mut(bb).zip(w.data.par_chunks(be)).try_for_each(|(b, x)| quantize_block(ty, x, b))?;
        Self::new(ty, rows, cols, data)
    }
}

/// Quantise one block of `x` into `out` (the reference algorithms of llama.cpp).
fn quantize_block(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    match ty {
        GgmlType::F16 => out.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => out.copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes()),
        GgmlType::F32 => out.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::Q8_0 => {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            for (q, v) in out[2..34].iter_mut().zip(x) {
                *q = ((v * id).round() as i8) as u8; // round half away from zero, as roundf
            }
        }
        GgmlType::Q4_0 => {
            // The value of largest magnitude, with its sign, maps to -8.
            let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            let q = |v: f32| ((v * id + 8.5) as i32).min(15) as u8;
            for j in 0..16 {
                out[2 + j] = q(x[j]) | (q(x[16 + j]) << 4);
            }
        }
        GgmlType::Q4_1 => {
            let (min, max) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            out[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
            let q = |v: f32| (((v - min) * id + 0.5) as i32).min(15) as u8;
            for j in 0..16 {
                out[4 + j] = q(x[j]) | (q(x[16 + j]) << 4);
            }
        }
        GgmlType::Q4K => quantize_q4_k(x, out),
        other => bail!("packing weights as {} is not supported (use q8_0, q4_0, q4_1 or q4_k)", other.name()),
    }
    Ok(())
}

/// ggml's `nearest_int`: round to nearest, ties to even, for |v| < 2^22.
fn nearest_int(v: f32) -> i32 {
    let f = v + 12_582_912.0;
    (f.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `make_qkx2_quants`: a scale and minimum for `x` (`nmax` levels, weighted squared
/// error), searching `nstep + 1` scales around the plain min-max one. Returns (scale, −min) and
/// writes the levels to `l`.
fn make_qkx2_quants(nmax: i32, x: &[f32], w: &[f32], l: &mut [u8], rmin: f32, rdelta: f32, nstep: usize) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best += w[i] * diff * diff;
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let qf = q as f32;
            sum_l += w[i] * qf;
            sum_l2 += w[i] * qf * qf;
            sum_xl += w[i] * qf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                err += w[i] * diff * diff;
            }
            if err < best {
                l[..n].copy_from_slice(&aux[..n]);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// llama.cpp's `quantize_row_q4_K_ref` for one 256-value block.
fn quantize_q4_k(x: &[f32], out: &mut [u8]) {
    let mut levels = [0u8; 256];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let av = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let w: Vec<f32> = xs.iter().map(|v| av + v.abs()).collect();
        let (s, m) = make_qkx2_quants(15, xs, &w, &mut levels[32 * j..32 * j + 32], -1.0, 0.1, 20);
        scales[j] = s;
        mins[j] = m;
        max_scale = max_scale.max(s);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut out[4..16];
    sc.iter_mut().for_each(|v| *v = 0);
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
        let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    out[..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    let scales_packed: [u8; 12] = out[4..16].try_into().expect("12 bytes");
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &scales_packed);
        let dj = d.to_f32() * s as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            levels[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
        }
    }
    let qs = &mut out[16..144];
    for (k, j) in (0..256).step_by(64).enumerate() {
        for i in 0..32 {
            qs[32 * k + i] = levels[j + i] | (levels[j + i + 32] << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    /// The GPU layout gives back every value bit for bit, for every block type: `code · scale
    /// + offset` with the code sign-extended, as the kernel computes it.
    #[test]
    fn groups_of_16_dequantise_as_the_blocks_do() {
        let (rows, cols) = (3, 512);
        let w = HostTensor::new(vec![rows, cols], sample(rows * cols, 11));
        // Q5_K and Q6_K are only read (from GGUF files): random blocks with finite scales.
        let random_blocks = |ty: GgmlType| {
            let (be, bb) = ty.block();
            let mut bytes: Vec<u8> = sample(rows * cols / be * bb, 5).iter().map(|v| (v.to_bits() >> 7) as u8).collect();
            for b in bytes.chunks_exact_mut(bb) {
                let at: &[usize] = if ty == GgmlType::Q6K { &[208] } else { &[0, 2] };
                for &i in at {
                    let scale = f16::from_f32(0.01 + b[i] as f32 * 1e-4);
                    b[i..i + 2].copy_from_slice(&scale.to_le_bytes());
                }
            }
            PackedMatrix::new(ty, rows, cols, bytes).unwrap()
        };
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            let p = if matches!(ty, GgmlType::Q5K | GgmlType::Q6K) { random_blocks(ty) } else { PackedMatrix::quantize(ty, &w).unwrap() };
            let want = p.to_host().data;
            let (words, scales, offsets) = p.groups16().unwrap();
            assert_eq!((words.len(), scales.len(), offsets.len()), (rows * cols / 4, rows * cols / 16, rows * cols / 16));
            for (i, &v) in want.iter().enumerate() {
                let byte = (words[i / 4] >> (8 * (i % 4))) & 0xFF;
                let code = byte as u8 as i8 as f32;
                let got = code * scales[i / 16] + offsets[i / 16];
                assert!(got == v, "{}: value {i}: {got} from the groups, {v} from the blocks", ty.name());
            }
        }
        assert!(PackedMatrix::quantize(GgmlType::BF16, &w).unwrap().groups16().is_none());
    }

    #[test]
    fn nearest_int_is_ggmls() {
        assert_eq!(
            [nearest_int(0.5), nearest_int(1.5), nearest_int(2.5), nearest_int(-0.5), nearest_int(-1.7), nearest_int(3.2)],
            [0, 2, 2, 0, -2, 3]
        );
    }

    #[test]
    fn packed_matrices_round_trip_within_their_precision() {
        let (rows, cols) = (6, 512);
        let w = HostTensor::new(vec![rows, cols], sample(rows * cols, 3));
        for (ty, tol) in [
            (GgmlType::BF16, 1e-3),
            (GgmlType::F16, 1e-4),
            (GgmlType::Q8_0, 1e-3),
            (GgmlType::Q4_0, 1.3e-2),
            (GgmlType::Q4_1, 7e-3),
            (GgmlType::Q4K, 1e-2),
        ] {
            let p = PackedMatrix::quantize(ty, &w).unwrap();
            assert_eq!(p.bytes(), rows * p.row_bytes());
            let back = p.to_host();
            let err = back.data.iter().zip(&w.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < tol, "{}: max error {err}", ty.name());
            // A tile of rows dequantises to the same values as the whole.
            let mut tile = vec![0f32; 2 * cols];
            p.dequant_rows(3, 5, &mut tile);
            assert_eq!(&tile[..], &back.data[3 * cols..5 * cols]);
            let perm = p.permute_rows(&[5, 0, 1, 2, 3, 4]).to_host();
            assert_eq!(&perm.data[..cols], &back.data[5 * cols..]);
        }
        assert!(PackedMatrix::quantize(GgmlType::Q4K, &HostTensor::new(vec![2, 100], vec![0.0; 200])).is_err());
        assert!(PackedMatrix::new(GgmlType::Q8_0, 2, 64, vec![0; 10]).is_err());
    }
}
