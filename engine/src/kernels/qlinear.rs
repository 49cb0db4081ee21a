//! `x · Wᵀ` for a frozen weight kept in its storage format (`io::quant::PackedMatrix`, PyTorch's
//! `[out, in]` layout, as GGUF and safetensors hold it), so a model's frozen base never exists
//! whole in f32:
//!
//! - many rows (prefill, training): `W` is dequantised a tile of rows at a time into an f32
//!   buffer and multiplied with one GEMM per tile;
//! - a few rows (decoding): each output is a dot product computed block by block straight from
//!   the packed bytes, so decoding reads 4–16 bits per weight instead of 32.
//!
//! The backward pass gives `x` its gradient, `dx = dy · W`, tile by tile; `W` is frozen and takes
//! none. On a cube device (wgpu, CUDA) the block formats run on `gpu/qlinear.rs`; otherwise
//! (16-bit float weights on a GPU, or with fused kernels off) the weight is dequantised whole
//! and multiplied with burn's ops, so every backend computes the same function.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::linear::View;
use super::simd::{multiversion, sum_zip};
use super::{Prim, ad_tensor, contiguous, data, flex_from, gemm_into, plain_tensor, prim, record};
use crate::io::quant::{PackedMatrix, dequant_into};

/// Up to this many rows of `x`, a product is computed as dot products from the packed bytes.
const DOT_ROWS: usize = 8;
/// Rows of `W` dequantised per tile in the GEMM path.
const TILE: usize = 256;

/// `x · Wᵀ` over the last dimension of `x` (`[..., in]`), with `w` `[out, in]` packed.
///
/// In bf16/f16 the input and the result (and their gradients) are rounded to it. In bf16 on a
/// CPU with AVX512-BF16, a product of many rows runs on the bf16 kernel: each dequantised tile
/// is rounded to bf16 as it is packed, as bitsandbytes' QLoRA dequantises to the compute dtype.
/// Elsewhere (f16, few rows, other CPUs) the dequantised weight enters in f32.
pub fn packed_matmul<const D: usize>(x: Tensor<D>, w: &Arc<PackedMatrix>) -> Tensor<D> {
    use super::precision::{self, Precision};
    let dims = x.dims();
    let (dout, din) = (w.rows, w.cols);
    assert_eq!(dims[D - 1], din, "packed_matmul: input has {} features, the weight {din}", dims[D - 1]);
    let rows = dims.iter().product::<usize>() / din.max(1);
    let prec = precision::current();
    let bf16_kernel = prec == Precision::Bf16 && rows > DOT_ROWS && super::bf16gemm::worth(rows, TILE.min(dout), din) && prim(&x).is_some();
    if prec != Precision::F32 && !bf16_kernel {
        let x = precision::round(x);
        return precision::round(precision::with(Precision::F32, || packed_matmul(x, w)));
    }
    let mut out_dims = dims;
    out_dims[D - 1] = dout;
    let x = match super::gpu::qlinear::packed_matmul(x, w) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let Some(px) = prim(&x) else {
        // Composite: the whole weight as a tensor on x's device.
        let h = w.to_host();
        let wt = Tensor::<2>::from_data(TensorData::new(h.data, [dout, din]), &x.device());
        return x.reshape([rows, din]).matmul(wt.transpose()).reshape(out_dims);
    };
    drop(x);
    let xs = contiguous(px.flex());
    let y = if bf16_kernel {
        let mut y = forward_bf16(data(&xs), rows, w);
        precision::round_in_place(Precision::Bf16, &mut y);
        y
    } else {
        forward(data(&xs), rows, w)
    };
    let out = flex_from(y, &out_dims);
    match px {
        Prim::Ad(ax) => {
            let nodes = [ax.node()];
            drop(ax);
            let state = PackedState { w: w.clone(), rows, x_dims: dims.to_vec(), bf16: bf16_kernel };
            ad_tensor(record(PackedLinear, nodes, state, out))
        }
        Prim::Plain(_) => plain_tensor(out),
    }
}

/// `y[rows, out] = x[rows, in] · Wᵀ`.
pub(crate) fn forward(x: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
    let (dout, din) = (w.rows, w.cols);
    if rows <= DOT_ROWS {
        return dot_many(x, rows, &[w]).pop().expect("one product");
    }
    let mut y = vec![0f32; rows * dout];
    let mut tile = vec![0f32; TILE.min(dout) * din];
    for o0 in (0..dout).step_by(TILE) {
        let o1 = (o0 + TILE).min(dout);
        dequant_tile(w, o0, o1, &mut tile[..(o1 - o0) * din]);
        // y[:, o0..o1] = x · tileᵀ, written into y's columns (row stride dout).
        gemm_into(&mut y[o0..], dout, rows, o1 - o0, din, x, din as isize, 1, &tile, 1, din as isize, false);
    }
    y
}

/// The products of the same few rows of `x` (`[rows, in]`) with several packed weights of `in`
/// columns each: decoding's q, k and v, or gate and up, as one parallel region, so the thread
/// pool is woken once for all of them. Each output is `[rows, out_w]`. A task takes a run of one
/// weight's output features and writes them transposed; they are turned at the end. Small
/// products stay on this thread (handing them to the pool costs more than they take).
fn dot_many(x: &[f32], rows: usize, ws: &[&PackedMatrix]) -> Vec<Vec<f32>> {
    let din = ws.first().map_or(0, |w| w.cols);
    assert!(ws.iter().all(|w| w.cols == din), "dot_many: weights of different widths");
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let per = (total / (rayon::current_num_threads() * 4)).clamp(16, 1024);
    let sums = block_sums(x, rows, din);
    let tasks: Vec<(usize, usize, usize)> =
        ws.iter().enumerate().flat_map(|(i, w)| (0..w.rows).step_by(per).map(move |o0| (i, o0, (o0 + per).min(w.rows)))).collect();
    let task = |&(i, o0, o1): &(usize, usize, usize)| {
        let mut part = vec![0f32; (o1 - o0) * rows];
        let mut buf = vec![0f32; din];
        dot_rows(ws[i], o0, o1, x, rows, &sums, &mut buf, &mut part);
        part
    };
    let parts: Vec<Vec<f32>> =
        if total * din < (1 << 16) { tasks.iter().map(task).collect() } else { tasks.par_iter().map(task).collect() };
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; rows * w.rows]).collect();
    for (&(i, o0, _), part) in tasks.iter().zip(parts) {
        let dout = ws[i].rows;
        for (k, col) in part.chunks_exact(rows).enumerate() {
            for (r, v) in col.iter().enumerate() {
                ys[i][r * dout + o0 + k] = *v;
            }
        }
    }
    ys
}

/// `[x · Wᵢᵀ for each weight]` for a decoding step: `x` (`[..., in]`) of at most a few rows,
/// outside autodiff, in f32, on flex; `None` otherwise (the caller then multiplies one by one).
pub fn packed_matmul_many<const D: usize>(x: &Tensor<D>, ws: &[&Arc<PackedMatrix>]) -> Option<Vec<Tensor<D>>> {
    let dims = x.dims();
    let din = dims[D - 1];
    let rows = dims.iter().product::<usize>() / din.max(1);
    if ws.is_empty()
        || rows > DOT_ROWS
        || x.is_autodiff()
        || super::precision::current() != super::precision::Precision::F32
        || ws.iter().any(|w| w.cols != din)
    {
        return None;
    }
    let Some(Prim::Plain(px)) = prim(x) else { return None };
    let xs = contiguous(&px);
    let ws: Vec<&PackedMatrix> = ws.iter().map(|w| w.as_ref()).collect();
    let ys = dot_many(data(&xs), rows, &ws);
    Some(
        ys.into_iter()
            .zip(&ws)
            .map(|(y, w)| {
                let mut out_dims = dims;
                out_dims[D - 1] = w.rows;
                plain_tensor(flex_from(y, &out_dims))
            })
            .collect(),
    )
}

/// [`forward`] for many rows in bf16: `x` packed once, each dequantised tile rounded as it is
/// packed, f32 accumulation (the result is left in f32: the caller rounds it, or not).
pub(crate) fn forward_bf16(x: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
    let (dout, din) = (w.rows, w.cols);
    let a = super::bf16gemm::pack_lhs(rows, din, (x, View { offset: 0, rs: din as isize, cs: 1 }));
    let mut y = vec![0f32; rows * dout];
    let mut tile = vec![0f32; TILE.min(dout) * din];
    for o0 in (0..dout).step_by(TILE) {
        let o1 = (o0 + TILE).min(dout);
        let t = &mut tile[..(o1 - o0) * din];
        dequant_tile(w, o0, o1, t);
        // y[:, o0..o1] = x · tileᵀ; tileᵀ is [din, o1 - o0] with unit row stride.
        super::bf16gemm::gemm_packed(&a, o1 - o0, (t, View { offset: 0, rs: 1, cs: din as isize }), &mut y[o0..], dout, false);
    }
    y
}

/// [`backward_x`] in bf16: `dx = Σ_tiles dy[:, tile] · tile`, operands rounded while packed,
/// f32 accumulation (the result is left in f32).
pub(crate) fn backward_x_bf16(dy: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
    let (dout, din) = (w.rows, w.cols);
    let mut dx = vec![0f32; rows * din];
    let mut tile = vec![0f32; TILE.min(dout) * din];
    for o0 in (0..dout).step_by(TILE) {
        let o1 = (o0 + TILE).min(dout);
        let t = &mut tile[..(o1 - o0) * din];
        dequant_tile(w, o0, o1, t);
        let a = super::bf16gemm::pack_lhs(rows, o1 - o0, (dy, View { offset: o0, rs: dout as isize, cs: 1 }));
        super::bf16gemm::gemm_packed(&a, din, (t, View { offset: 0, rs: din as isize, cs: 1 }), &mut dx, din, o0 > 0);
    }
    dx
}

/// Rows `o0..o1` of `w` into `out`, split over threads.
fn dequant_tile(w: &PackedMatrix, o0: usize, o1: usize, out: &mut [f32]) {
    let din = w.cols;
    debug_assert_eq!(out.len(), (o1 - o0) * din);
    out.par_chunks_mut(din).enumerate().for_each(|(k, row)| w.dequant_rows(o0 + k, o0 + k + 1, row));
}

/// Σx over each 32-value block of each row of `x` (`[rows, din]` → `[rows, din / 32]`): the
/// offsets and minimums of the block formats multiply these, once per block, not per value.
fn block_sums(x: &[f32], rows: usize, din: usize) -> Vec<f32> {
    let nb = din / 32;
    let mut out = vec![0f32; rows * nb];
    if !din.is_multiple_of(32) {
        return out;
    }
    for r in 0..rows {
        for b in 0..nb {
            out[r * nb + b] = x[r * din + b * 32..r * din + b * 32 + 32].iter().sum();
        }
    }
    out
}

multiversion! {
    /// `out[(o - o0) · rows + r] = x[r] · W[o]` for output rows `o0..o1`: block by block from the
    /// packed bytes where `fast` has kernels for the format and the CPU (Q8_0, Q4_0, Q4_1 and
    /// Q4_K on x86 with AVX2), otherwise each row of W dequantised into `buf` and dotted with x.
    fn dot_rows(w: &PackedMatrix, o0: usize, o1: usize, x: &[f32], rows: usize, sums: &[f32], buf: &mut [f32], out: &mut [f32]) {
        if fast::dot_all(w.ty, w.row_data(o0, o1), w.row_bytes(), x, rows, sums, out) {
            return;
        }
        let din = w.cols;
        for (k, o) in (o0..o1).enumerate() {
            dequant_into(w.ty, w.row_data(o, o + 1), buf);
            for r in 0..rows {
                out[k * rows + r] = sum_zip(buf, &x[r * din..(r + 1) * din], |a, b| a * b);
            }
        }
    }
}

/// Block dot products with AVX2, FMA and F16C (every x86-64 CPU of the last decade has them), and
/// AVX-512 where present, chosen at run time. AVX2: the 4-bit values are split into nibbles,
/// widened to f32 eight at a time and multiplied into eight lanes; each block's scale multiplies
/// its lane sums once (its offset, the block's Σx). AVX-512: each block's 16 possible values are
/// dequantised once and `vpermps` looks every nibble up in them. The values are exactly those of
/// the dequantised weight; only the order of the additions differs.
mod fast {
    use crate::io::quant::GgmlType;

    /// `out[k · rows + r] = x[r] · W[k]` for the weight rows `wrows` (whole rows of `row_bytes`
    /// bytes) of Q8_0, Q4_0, Q4_1 or Q4_K blocks and the `rows` rows of `x` (`sums`: Σx per 32
    /// values of each row). False, with nothing written, where this CPU or format has no kernel
    /// here. One call covers every output of a task, so the checks and the dispatch are paid
    /// once, not once per dot product.
    pub(super) fn dot_all(ty: GgmlType, wrows: &[u8], row_bytes: usize, x: &[f32], rows: usize, sums: &[f32], out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if rows == 0 || row_bytes == 0 || !matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K) {
                return false;
            }
            let din = x.len() / rows;
            let (block, bytes) = ty.block();
            let fits = din.is_multiple_of(32)
                && x.len() == rows * din
                && sums.len() >= rows * (din / 32)
                && din.is_multiple_of(block)
                && row_bytes == din / block * bytes
                && wrows.len().is_multiple_of(row_bytes)
                && out.len() == wrows.len() / row_bytes * rows;
            if !fits
                || !std::arch::is_x86_feature_detected!("avx2")
                || !std::arch::is_x86_feature_detected!("fma")
                || !std::arch::is_x86_feature_detected!("f16c")
            {
                return false;
            }
            // SAFETY: the CPU has the features these functions are compiled for, and every load
            // stays inside whole blocks of a row (checked above) and inside `x` and `sums`.
            unsafe {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    x86::all_512(ty, wrows, row_bytes, x, rows, din, sums, out);
                } else {
                    x86::all_avx2(ty, wrows, row_bytes, x, rows, din, sums, out);
                }
            }
            return true;
        }
        #[allow(unreachable_code)]
        {
            let _ = (ty, wrows, row_bytes, x, rows, sums, out);
            false
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) mod x86 {
        use std::arch::x86_64::*;

        use crate::io::quant::GgmlType;

        #[inline(always)]
        unsafe fn f16(b: &[u8], i: usize) -> f32 {
            let bits = u16::from_le_bytes([b[i], b[i + 1]]);
            unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
        }

        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }
        }

        /// Σ q[j]·x[j] over 16 unsigned byte values `q` (0..15 each) and `x[..16]`.
        #[inline(always)]
        unsafe fn dot16(q: __m128i, x: *const f32) -> __m256 {
            unsafe {
                let a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
                let b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
                _mm256_fmadd_ps(b, _mm256_loadu_ps(x.add(8)), _mm256_mul_ps(a, _mm256_loadu_ps(x)))
            }
        }

        /// Σ over one 32-value block stored as 16 bytes of nibbles: value j in the low nibble of
        /// byte j, value 16 + j in the high one.
        #[inline(always)]
        unsafe fn nibbles32(qs: *const u8, x: *const f32) -> __m256 {
            unsafe {
                let q = _mm_loadu_si128(qs as *const __m128i);
                let m = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(q, m);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
                _mm256_add_ps(dot16(lo, x), dot16(hi, x.add(16)))
            }
        }

        /// Every output of a task (`fast::dot_all`) with one set of kernels; the two instances
        /// differ only in the kernels they call and the features they are compiled for.
        macro_rules! all_rows {
            ($name:ident, $features:literal, $q8:ident, $q40:ident, $q41:ident) => {
                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                pub(in crate::kernels::qlinear) unsafe fn $name(
                    ty: GgmlType,
                    wrows: &[u8],
                    row_bytes: usize,
                    x: &[f32],
                    rows: usize,
                    din: usize,
                    sums: &[f32],
                    out: &mut [f32],
                ) {
                    let nb = din / 32;
                    // The format is matched once per task, outside the loops.
                    macro_rules! each {
                        ($row:ident, $xr:ident, $sr:ident => $call:expr) => {
                            for (k, $row) in wrows.chunks_exact(row_bytes).enumerate() {
                                for r in 0..rows {
                                    let ($xr, $sr) = (&x[r * din..(r + 1) * din], &sums[r * nb..(r + 1) * nb]);
                                    out[k * rows + r] = unsafe { $call };
                                }
                            }
                        };
                    }
                    match ty {
                        GgmlType::Q8_0 => each!(row, xr, _sr => $q8(row, xr)),
                        GgmlType::Q4_0 => each!(row, xr, sr => $q40(row, xr, sr)),
                        GgmlType::Q4_1 => each!(row, xr, sr => $q41(row, xr, sr)),
                        _ => each!(row, xr, sr => q4_k(row, xr, sr)),
                    }
                }
            };
        }
        all_rows!(all_512, "avx512f,avx2,fma,f16c", q8_0_512, q4_0_512, q4_1_512);
        all_rows!(all_avx2, "avx2,fma,f16c", q8_0, q4_0, q4_1);

        /// Two 4-bit blocks at a time, each 32 values stored as 16 bytes of nibbles (value j in
        /// the low nibble of byte j, value 16 + j in the high one), for a row of `nb` blocks of
        /// `bytes` bytes whose nibbles start at byte `qoff`. `$table` gives a block's 16-entry
        /// table of dequantised values (`vpermps` picks each lane's entry by its nibble), so every
        /// value is exactly the dequantised weight, with no per-value convert or scale; four
        /// independent FMA chains; raw pointers, so nothing is spilled or bounds-checked inside
        /// the loop.
        macro_rules! q4_rows_512 {
            ($row:expr, $x:expr, $bytes:expr, $qoff:expr, |$p:ident| $table:expr) => {{
                let (row, x): (&[u8], &[f32]) = ($row, $x);
                let nb = row.len() / $bytes;
                assert!(x.len() >= nb * 32, "a packed row of {nb} blocks against {} values", x.len());
                // SAFETY: block b reads bytes [b·bytes, (b + 1)·bytes) of `row` and floats
                // [32b, 32b + 32) of `x`, both in bounds for b < nb (checked above).
                unsafe {
                    let (base, xp) = (row.as_ptr(), x.as_ptr());
                    let (mut a0, mut a1, mut a2, mut a3) =
                        (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
                    // Written out (no closure) so the body is compiled with the caller's features.
                    macro_rules! block {
                        ($b:expr, $lo:ident, $hi:ident) => {{
                            let $p = base.add($b * $bytes);
                            let table: __m512 = $table;
                            let v = _mm512_cvtepu8_epi32(_mm_loadu_si128($p.add($qoff) as *const __m128i));
                            let xb = xp.add($b * 32);
                            $lo = _mm512_fmadd_ps(_mm512_permutexvar_ps(v, table), _mm512_loadu_ps(xb), $lo);
                            $hi = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table), _mm512_loadu_ps(xb.add(16)), $hi);
                        }};
                    }
                    let mut b = 0;
                    while b + 2 <= nb {
                        block!(b, a0, a1);
                        block!(b + 1, a2, a3);
                        b += 2;
                    }
                    if b < nb {
                        block!(b, a0, a1);
                    }
                    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)))
                }
            }};
        }

        /// The f16 scale at byte offset `off` of a block, broadcast to 16 lanes.
        #[inline(always)]
        unsafe fn f16x16(p: *const u8, off: usize) -> __m512 {
            unsafe { _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(p.add(off).cast::<u16>().read_unaligned() as i32))) }
        }

        #[inline(always)]
        unsafe fn iota16() -> __m512 {
            unsafe { _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.) }
        }

        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        pub(in crate::kernels::qlinear) unsafe fn q8_0_512(row: &[u8], x: &[f32]) -> f32 {
            let nb = row.len() / 34;
            assert!(x.len() >= nb * 32, "a packed row of {nb} blocks against {} values", x.len());
            // SAFETY: block b reads bytes [34b, 34b + 34) of `row` and floats [32b, 32b + 32)
            // of `x`, in bounds for b < nb (checked above).
            unsafe {
                let (base, xp) = (row.as_ptr(), x.as_ptr());
                let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                macro_rules! block {
                    ($b:expr) => {{
                        let p = base.add($b * 34);
                        let xb = xp.add($b * 32);
                        let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i)));
                        let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18) as *const __m128i)));
                        (f16x16(p, 0), _mm512_fmadd_ps(q1, _mm512_loadu_ps(xb.add(16)), _mm512_mul_ps(q0, _mm512_loadu_ps(xb))))
                    }};
                }
                let mut b = 0;
                while b + 2 <= nb {
                    let (d0, s0) = block!(b);
                    let (d1, s1) = block!(b + 1);
                    a0 = _mm512_fmadd_ps(d0, s0, a0);
                    a1 = _mm512_fmadd_ps(d1, s1, a1);
                    b += 2;
                }
                if b < nb {
                    let (d0, s0) = block!(b);
                    a0 = _mm512_fmadd_ps(d0, s0, a0);
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
            }
        }

        /// Q4_0: value (q − 8)·d, as `dequant_block` computes it.
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        pub(in crate::kernels::qlinear) unsafe fn q4_0_512(row: &[u8], x: &[f32], _sums: &[f32]) -> f32 {
            let centred = unsafe { _mm512_sub_ps(iota16(), _mm512_set1_ps(8.0)) };
            q4_rows_512!(row, x, 18, 2, |p| _mm512_mul_ps(centred, f16x16(p, 0)))
        }

        /// Q4_1: value q·d + m, as `dequant_block` computes it (two roundings, no FMA).
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        pub(in crate::kernels::qlinear) unsafe fn q4_1_512(row: &[u8], x: &[f32], _sums: &[f32]) -> f32 {
            let iota = unsafe { iota16() };
            q4_rows_512!(row, x, 20, 4, |p| _mm512_add_ps(_mm512_mul_ps(iota, f16x16(p, 0)), f16x16(p, 2)))
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(in crate::kernels::qlinear) unsafe fn q8_0(row: &[u8], x: &[f32]) -> f32 {
            let mut acc = _mm256_setzero_ps();
            for (b, blk) in row.chunks_exact(34).enumerate() {
                let d = unsafe { f16(blk, 0) };
                let xb = x[b * 32..b * 32 + 32].as_ptr();
                let mut s = _mm256_setzero_ps();
                for c in 0..4 {
                    // SAFETY: 8 bytes at 2 + 8c of a 34-byte block, 8 floats at 8c of 32.
                    unsafe {
                        let q = _mm_loadl_epi64(blk.as_ptr().add(2 + 8 * c) as *const __m128i);
                        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                        s = _mm256_fmadd_ps(v, _mm256_loadu_ps(xb.add(8 * c)), s);
                    }
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
            }
            unsafe { hsum(acc) }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(in crate::kernels::qlinear) unsafe fn q4_0(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
            let (mut acc, mut extra) = (_mm256_setzero_ps(), 0f32);
            for (b, blk) in row.chunks_exact(18).enumerate() {
                let d = unsafe { f16(blk, 0) };
                // SAFETY: 16 bytes at 2 of an 18-byte block; 32 floats at 32b of x.
                let s = unsafe { nibbles32(blk.as_ptr().add(2), x[b * 32..b * 32 + 32].as_ptr()) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
                extra -= 8.0 * d * sums[b];
            }
            unsafe { hsum(acc) + extra }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(in crate::kernels::qlinear) unsafe fn q4_1(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
            let (mut acc, mut extra) = (_mm256_setzero_ps(), 0f32);
            for (b, blk) in row.chunks_exact(20).enumerate() {
                let (d, m) = unsafe { (f16(blk, 0), f16(blk, 2)) };
                // SAFETY: 16 bytes at 4 of a 20-byte block; 32 floats at 32b of x.
                let s = unsafe { nibbles32(blk.as_ptr().add(4), x[b * 32..b * 32 + 32].as_ptr()) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
                extra += m * sums[b];
            }
            unsafe { hsum(acc) + extra }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(in crate::kernels::qlinear) unsafe fn q4_k(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
            let (mut acc, mut extra) = (_mm256_setzero_ps(), 0f32);
            let m = _mm_set1_epi8(0x0F);
            for (b, blk) in row.chunks_exact(144).enumerate() {
                let (d, dmin) = unsafe { (f16(blk, 0), f16(blk, 2)) };
                let scales: &[u8; 12] = blk[4..16].try_into().expect("12 scale bytes");
                for g in 0..4 {
                    let (s1, m1) = crate::io::quant::scale_min_k4(2 * g, scales);
                    let (s2, m2) = crate::io::quant::scale_min_k4(2 * g + 1, scales);
                    let base = b * 256 + g * 64;
                    let xa = x[base..base + 64].as_ptr();
                    // 32 bytes: low nibbles are values 0..31 of the group (scale s1), high
                    // nibbles values 32..63 (scale s2).
                    // SAFETY: bytes 16 + 32g .. 16 + 32g + 32 of a 144-byte block; x[base..base + 64].
                    let (lo, hi) = unsafe {
                        let q0 = _mm_loadu_si128(blk.as_ptr().add(16 + 32 * g) as *const __m128i);
                        let q1 = _mm_loadu_si128(blk.as_ptr().add(32 + 32 * g) as *const __m128i);
                        let lo = _mm256_add_ps(dot16(_mm_and_si128(q0, m), xa), dot16(_mm_and_si128(q1, m), xa.add(16)));
                        let hi = _mm256_add_ps(
                            dot16(_mm_and_si128(_mm_srli_epi16(q0, 4), m), xa.add(32)),
                            dot16(_mm_and_si128(_mm_srli_epi16(q1, 4), m), xa.add(48)),
                        );
                        (lo, hi)
                    };
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * s1 as f32), lo, acc);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * s2 as f32), hi, acc);
                    let sb = b * 8 + 2 * g;
                    extra -= dmin * (m1 as f32 * sums[sb] + m2 as f32 * sums[sb + 1]);
                }
            }
            unsafe { hsum(acc) + extra }
        }
    }
}

/// `dx[rows, in] = dy[rows, out] · W`, tile by tile.
pub(crate) fn backward_x(dy: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
    let (dout, din) = (w.rows, w.cols);
    let mut dx = vec![0f32; rows * din];
    let mut tile = vec![0f32; TILE.min(dout) * din];
    for o0 in (0..dout).step_by(TILE) {
        let o1 = (o0 + TILE).min(dout);
        dequant_tile(w, o0, o1, &mut tile[..(o1 - o0) * din]);
        gemm_into(&mut dx, din, rows, din, o1 - o0, &dy[o0..], dout as isize, 1, &tile, din as isize, 1, o0 > 0);
    }
    dx
}

#[derive(Debug)]
struct PackedLinear;

#[derive(Debug, Clone)]
struct PackedState {
    w: Arc<PackedMatrix>,
    rows: usize,
    x_dims: Vec<usize>,
    /// The forward pass ran on the bf16 kernel (the backward does too).
    bf16: bool,
}

impl Backward<Flex, 1> for PackedLinear {
    type State = PackedState;

    fn backward(self, ops: Ops<PackedState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(p) = px else { return };
        let s = ops.state;
        let dy = contiguous(&dy);
        let dx = if s.bf16 {
            let mut dx = backward_x_bf16(data(&dy), s.rows, &s.w);
            super::precision::round_in_place(super::precision::Precision::Bf16, &mut dx);
            dx
        } else {
            backward_x(data(&dy), s.rows, &s.w)
        };
        grads.register::<Flex>(p.id, flex_from(dx, &s.x_dims));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::HostTensor;
    use crate::io::quant::GgmlType;

    /// Every x86 block kernel, AVX2 and AVX-512 alike (`fast::dot` picks only one of them on a
    /// given CPU), against the dot product with the dequantised row in f64.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn block_dot_kernels_match_the_dequantised_row() {
        let has = |f: &str| match f {
            "avx2" => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            _ => std::arch::is_x86_feature_detected!("avx512f"),
        };
        if !has("avx2") {
            return; // no kernel to check: `fast::dot` answers None and the scalar loop runs
        }
        // 512 columns: 16 blocks (and two Q4_K super-blocks); 96: three blocks, the odd tail
        // of the two-block loops.
        for (rows, cols) in [(3, 512), (3, 96)] {
            block_dot_kernels_at(rows, cols, has);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn block_dot_kernels_at(rows: usize, cols: usize, has: impl Fn(&str) -> bool) {
        use fast::x86;
        let mut s = 12345u32;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let w = HostTensor::new(vec![rows, cols], (0..rows * cols).map(|_| next() * 0.2).collect());
        let x: Vec<f32> = (0..cols).map(|_| next()).collect();
        let sums = block_sums(&x, 1, cols);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K] {
            if !cols.is_multiple_of(ty.block().0) {
                continue;
            }
            let p = PackedMatrix::quantize(ty, &w).unwrap();
            let deq = p.to_host();
            for r in 0..rows {
                let row = p.row_data(r, r + 1);
                let want: f64 = deq.data[r * cols..(r + 1) * cols].iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mut got = Vec::new();
                // SAFETY: the features were checked above; `row` is whole blocks of `ty`.
                unsafe {
                    got.push(match ty {
                        GgmlType::Q8_0 => x86::q8_0(row, &x),
                        GgmlType::Q4_0 => x86::q4_0(row, &x, &sums),
                        GgmlType::Q4_1 => x86::q4_1(row, &x, &sums),
                        _ => x86::q4_k(row, &x, &sums),
                    });
                    if has("avx512f") {
                        got.push(match ty {
                            GgmlType::Q8_0 => x86::q8_0_512(row, &x),
                            GgmlType::Q4_0 => x86::q4_0_512(row, &x, &sums),
                            GgmlType::Q4_1 => x86::q4_1_512(row, &x, &sums),
                            _ => x86::q4_k(row, &x, &sums),
                        });
                    }
                }
                for g in got {
                    assert!((g as f64 - want).abs() < 1e-5 * want.abs().max(1.0), "{} row {r}: {g} vs {want}", ty.name());
                }
            }
            // A whole task at once, through each instance of the dispatch loop: the same values.
            let one = |r: usize| unsafe {
                match ty {
                    GgmlType::Q8_0 => x86::q8_0(p.row_data(r, r + 1), &x),
                    GgmlType::Q4_0 => x86::q4_0(p.row_data(r, r + 1), &x, &sums),
                    GgmlType::Q4_1 => x86::q4_1(p.row_data(r, r + 1), &x, &sums),
                    _ => x86::q4_k(p.row_data(r, r + 1), &x, &sums),
                }
            };
            let mut out = vec![0f32; rows];
            // SAFETY: the features were checked above.
            unsafe { x86::all_avx2(ty, p.row_data(0, rows), p.row_bytes(), &x, 1, cols, &sums, &mut out) };
            assert_eq!(out, (0..rows).map(one).collect::<Vec<_>>(), "{}: all_avx2", ty.name());
            if has("avx512f") {
                unsafe { x86::all_512(ty, p.row_data(0, rows), p.row_bytes(), &x, 1, cols, &sums, &mut out) };
                for (r, v) in out.iter().enumerate() {
                    let w = one(r) as f64;
                    assert!((*v as f64 - w).abs() < 1e-5 * w.abs().max(1.0), "{} row {r}: all_512 {v} vs {w}", ty.name());
                }
            }
        }
    }

    /// In bf16, the packed product over several tiles (a partial last one) and its input
    /// gradient equal the f64 products of the bf16-rounded input and dequantised weight, rounded
    /// to bf16 (one bf16 step apart at most, where the f32 sums round the other way), and
    /// `packed_matmul` takes this path for many rows in bf16.
    #[test]
    fn bf16_tiles_compute_the_product_of_rounded_operands() {
        use super::super::bf16gemm;
        use super::super::precision::{Precision, round_bf16, with};
        if !bf16gemm::available() {
            assert!(!bf16gemm::worth(1024, 1024, 1024));
            eprintln!("no AVX512-BF16 on this CPU: the bf16 tiles are not exercised");
            return;
        }
        let (rows, din, dout) = (40, 96, 300);
        let mut s = 777u32;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let w = HostTensor::new(vec![dout, din], (0..dout * din).map(|_| next() * 0.2).collect());
        let p = Arc::new(PackedMatrix::quantize(GgmlType::Q8_0, &w).unwrap());
        let wd = p.to_host().data;
        let x: Vec<f32> = (0..rows * din).map(|_| next()).collect();
        let dy: Vec<f32> = (0..rows * dout).map(|_| next()).collect();
        let r = |v: f32| round_bf16(v) as f64;
        let close = |got: f32, want: f64, what: &str| {
            let tol = want.abs() / 256.0 + 1e-5;
            assert!((got as f64 - want).abs() <= tol, "{what}: {got} vs {want}");
        };
        let y = forward_bf16(&x, rows, &p);
        for i in 0..rows {
            for o in 0..dout {
                let want: f64 = (0..din).map(|k| r(x[i * din + k]) * r(wd[o * din + k])).sum();
                close(y[i * dout + o], want, &format!("y[{i},{o}]"));
            }
        }
        let dx = backward_x_bf16(&dy, rows, &p);
        for i in 0..rows {
            for k in 0..din {
                let want: f64 = (0..dout).map(|o| r(dy[i * dout + o]) * r(wd[o * din + k])).sum();
                close(dx[i * din + k], want, &format!("dx[{i},{k}]"));
            }
        }
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, din]), &burn::tensor::Device::flex());
        let yt = with(Precision::Bf16, || packed_matmul(xt, &p));
        let y_rounded: Vec<f32> = y.iter().map(|&v| round_bf16(v)).collect();
        assert!(yt.into_data().try_to_vec::<f32>().unwrap() == y_rounded, "packed_matmul in bf16 takes the bf16 tiles, its result rounded");
    }
}
