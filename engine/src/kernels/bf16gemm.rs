//! bf16 matrix products for mixed-precision training on CPUs with AVX512-BF16.
//!
//! `vdpbf16ps` multiplies pairs of bf16 values and adds both products to an f32 lane, 32
//! multiply-adds per instruction where an f32 FMA does 16. Both operands are rounded to bf16
//! (round to nearest even, as [`super::precision::round_bf16`]) while they are packed, so the
//! result is the product of the bf16-rounded operands accumulated in f32: what
//! [`super::linear`] computes in bf16 through the f32 GEMM on rounded copies, in another
//! summation order.
//!
//! Layout (GotoBLAS-style): `lhs` is packed into panels of [`MR`] rows and `rhs` into panels of
//! [`NR`] columns, each holding, for every pair of `k` indices, the two bf16 values of one row
//! (column) in one `u32`. The micro-kernel keeps an `MR × NR` block of the result in 24 zmm
//! registers and runs over a block of [`KC`] pairs; row blocks of [`MC`] rows are split over
//! rayon's threads. Chosen at run time ([`available`]); `WHETSTONE_BF16_GEMM=0` turns it off.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::linear::View;
use super::precision::round_bf16;

/// Rows per micro-kernel panel.
const MR: usize = 12;
/// Columns per micro-kernel panel (two zmm registers of f32).
const NR: usize = 32;
/// Pairs of `k` per block: an `rhs` panel block is `KC × NR × 4` bytes = 16 KB (L1).
const KC: usize = 128;
/// Rows per block handed to a thread (a multiple of [`MR`]).
const MC: usize = 4 * MR;

/// Whether bf16 products run on the AVX512-BF16 kernel on this machine.
pub fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("WHETSTONE_BF16_GEMM").is_ok_and(|v| v == "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether a product of this shape is worth the kernel (packing costs `m·k + k·n`; tiny or
/// skinny products, such as a LoRA factor of rank 8, stay on the f32 GEMM).
pub(crate) fn worth(m: usize, n: usize, k: usize) -> bool {
    available() && m >= MR && n >= NR && k >= 64
}

/// bf16 bits of `x` (round to nearest even).
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    round_bf16(x).to_bits() >> 16
}

/// `dst[m, n] = bf16(lhs)[m, k] · bf16(rhs)[k, n]`, f32 accumulation, dst row-major. Call only
/// when [`available`].
pub(crate) fn gemm_bf16(m: usize, n: usize, k: usize, lhs: (&[f32], View), rhs: (&[f32], View)) -> Vec<f32> {
    let a = pack_lhs(m, k, lhs);
    let mut out = vec![0f32; m * n];
    gemm_packed(&a, n, rhs, &mut out, n, false);
    out
}

/// `lhs` `[m, k]` rounded to bf16 and packed, to be multiplied by several right-hand sides.
pub(crate) struct PackedLhs {
    a: Vec<u32>,
    m: usize,
    k: usize,
}

/// Pack `lhs` `[m, k]` (any non-negative strides) once for [`gemm_packed`].
pub(crate) fn pack_lhs(m: usize, k: usize, lhs: (&[f32], View)) -> PackedLhs {
    assert!(available(), "bf16 GEMM without AVX512-BF16");
    let kp = k.div_ceil(2);
    // [panel][pair][row]
    let mut a = vec![0u32; m.div_ceil(MR) * kp * MR];
    a.par_chunks_mut(kp * MR).enumerate().for_each(|(p, panel)| pack(lhs, p * MR, MR.min(m - p * MR), k, MR, panel, false));
    PackedLhs { a, m, k }
}

/// `dst[m, n] (+)= a · bf16(rhs)[k, n]`: `dst` holds `m` rows of stride `ldc ≥ n` (the last one
/// may end after column `n`), of which the first `n` columns are written (added to when
/// `accumulate`).
pub(crate) fn gemm_packed(a: &PackedLhs, n: usize, rhs: (&[f32], View), dst: &mut [f32], ldc: usize, accumulate: bool) {
    let (m, k) = (a.m, a.k);
    assert!(ldc >= n && (m == 0 || dst.len() >= (m - 1) * ldc + n), "gemm_packed: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(2);
    let np = n.div_ceil(NR);
    // [panel][pair][column]
    let mut b = vec![0u32; np * kp * NR];
    b.par_chunks_mut(kp * NR).enumerate().for_each(|(p, panel)| pack(rhs, p * NR, NR.min(n - p * NR), k, NR, panel, true));
    let dst = &mut dst[..(m - 1) * ldc + n];
    dst.par_chunks_mut(MC * ldc).enumerate().for_each(|(blk, c)| {
        let rows = c.len().div_ceil(ldc);
        for kb in (0..kp).step_by(KC) {
            let kc = KC.min(kp - kb);
            for jp in 0..np {
                let cols = NR.min(n - jp * NR);
                let bp = &b[(jp * kp + kb) * NR..][..kc * NR];
                for r0 in (0..rows).step_by(MR) {
                    let panel = (blk * MC + r0) / MR;
                    let ap = &a.a[(panel * kp + kb) * MR..][..kc * MR];
                    let out = &mut c[r0 * ldc + jp * NR..];
                    // SAFETY: `available()` was checked when `a` was packed; `ap`/`bp` hold `kc`
                    // pairs of MR/NR values; `out` holds rows `MR.min(rows - r0)` of stride
                    // `ldc`, of which the kernel touches the first `cols` columns (the last row
                    // reaches column n at least).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        x86::kernel(kc, ap, bp, out, ldc, MR.min(rows - r0), cols, accumulate || kb > 0)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (ap, bp, out, cols);
                }
            }
        }
    });
}

/// Pack `width` lines (rows of `lhs`, or columns of `rhs` when `columns`) starting at `first` into
/// `panel[pair][lane]` (`lanes` wide), two bf16 values of consecutive `k` per `u32`. The loops
/// run along the operand's unit stride over plain slices, so reads are sequential and the
/// compiler vectorises the rounding.
fn pack(op: (&[f32], View), first: usize, width: usize, k: usize, lanes: usize, panel: &mut [u32], columns: bool) {
    let (src, v) = op;
    // Strides along the line index and along k (non-negative: `view2` checks).
    let (ls, ks) = if columns { (v.cs as usize, v.rs as usize) } else { (v.rs as usize, v.cs as usize) };
    let base = v.offset + first * ls;
    let kp = k.div_ceil(2);
    if ls == 1 {
        // Lines contiguous: for each pair, two runs of `width` values.
        for q in 0..kp {
            let lo = &src[base + 2 * q * ks..][..width];
            let dst = &mut panel[q * lanes..][..width];
            if 2 * q + 1 < k {
                let hi = &src[base + (2 * q + 1) * ks..][..width];
                for ((d, &x), &y) in dst.iter_mut().zip(lo).zip(hi) {
                    *d = bf16_bits(x) | (bf16_bits(y) << 16);
                }
            } else {
                for (d, &x) in dst.iter_mut().zip(lo) {
                    *d = bf16_bits(x);
                }
            }
        }
    } else if ks == 1 {
        // k contiguous: each line is a run of `k` values, its pairs adjacent.
        for line in 0..width {
            let row = &src[base + line * ls..][..k];
            let mut pairs = row.chunks_exact(2);
            for (q, pr) in pairs.by_ref().enumerate() {
                panel[q * lanes + line] = bf16_bits(pr[0]) | (bf16_bits(pr[1]) << 16);
            }
            if let [x] = pairs.remainder() {
                panel[(kp - 1) * lanes + line] = bf16_bits(*x);
            }
        }
    } else {
        for q in 0..kp {
            for line in 0..width {
                let at = |kk: usize| if kk < k { bf16_bits(src[base + line * ls + kk * ks]) } else { 0 };
                panel[q * lanes + line] = at(2 * q) | (at(2 * q + 1) << 16);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `dst[rows, cols] (+)= a-panel · b-panel` over `kc` pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(kc: usize, a: &[u32], b: &[u32], dst: &mut [f32], ldc: usize, rows: usize, cols: usize, accumulate: bool) {
        debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR && rows <= MR && cols <= NR);
        debug_assert!(rows == 0 || dst.len() >= (rows - 1) * ldc + cols);
        // Twelve rows of two accumulators, written out so that they stay in registers at any
        // optimisation level (the workspace's dev profile is opt-level 1, which does not unroll).
        macro_rules! rows {
            ($($r:literal $c0:ident $c1:ident),*) => {{
                $(let mut $c0 = _mm512_setzero_ps(); let mut $c1 = _mm512_setzero_ps();)*
                let (ap, bp) = (a.as_ptr(), b.as_ptr());
                for q in 0..kc {
                    // SAFETY: q < kc and the panels hold kc·NR and kc·MR values.
                    unsafe {
                        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR) as *const _));
                        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(q * NR + 16) as *const _));
                        let arow = ap.add(q * MR);
                        $(
                            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*arow.add($r) as i32));
                            $c0 = _mm512_dpbf16_ps($c0, av, b0);
                            $c1 = _mm512_dpbf16_ps($c1, av, b1);
                        )*
                    }
                }
                [$([$c0, $c1]),*]
            }};
        }
        let acc: [[__m512; 2]; MR] = rows!(
            0 a0 b0_, 1 a1 b1_, 2 a2 b2_, 3 a3 b3_, 4 a4 b4_, 5 a5 b5_,
            6 a6 b6_, 7 a7 b7_, 8 a8 b8_, 9 a9 b9_, 10 a10 b10_, 11 a11 b11_
        );
        let mask = |from: usize| -> __mmask16 {
            let n = cols.saturating_sub(from).min(16);
            if n == 16 { 0xFFFF } else { ((1u32 << n) - 1) as __mmask16 }
        };
        let (m0, m1) = (mask(0), mask(16));
        for (r, row) in acc.iter().enumerate().take(rows) {
            // SAFETY: row r < rows starts at r·ldc, and the masks cover only its `cols` columns.
            unsafe {
                let p = dst.as_mut_ptr().add(r * ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p.add(16)));
                }
                _mm512_mask_storeu_ps(p, m0, v0);
                _mm512_mask_storeu_ps(p.add(16), m1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products of the rounded operands in f64, for comparison.
    fn reference(m: usize, n: usize, k: usize, a: &[f32], av: View, b: &[f32], bv: View) -> Vec<f64> {
        let at = |v: View, i: usize, j: usize| (v.offset as isize + i as isize * v.rs + j as isize * v.cs) as usize;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| round_bf16(a[at(av, i, l)]) as f64 * round_bf16(b[at(bv, l, j)]) as f64).sum::<f64>();
            }
        }
        out
    }

    /// The kernel equals the f64 product of the bf16-rounded operands up to f32 summation error,
    /// for edge shapes (partial panels, odd `k`, several `k` blocks) and transposed views. On a
    /// CPU without AVX512-BF16 the kernel cannot run: it checks that nothing dispatches to it.
    #[test]
    fn bf16_kernel_matches_the_product_of_rounded_operands() {
        if !available() {
            assert!(!worth(1024, 1024, 1024), "dispatched to a kernel this CPU cannot run");
            eprintln!("no AVX512-BF16 on this CPU: the bf16 kernel is not exercised");
            return;
        }
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for (m, n, k) in [(12, 32, 64), (13, 45, 257), (100, 70, 300), (50, 33, 1), (7, 64, 5), (97, 129, 515)] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            for (av, bv) in [
                (View { offset: 0, rs: k as isize, cs: 1 }, View { offset: 0, rs: n as isize, cs: 1 }),
                (View { offset: 0, rs: 1, cs: m as isize }, View { offset: 0, rs: 1, cs: k as isize }),
            ] {
                let got = gemm_bf16(m, n, k, (&a, av), (&b, bv));
                let want = reference(m, n, k, &a, av, &b, bv);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    // f32 accumulation of k products of magnitude ≤ 1: error ≤ k · 2^-23 · Σ|ab|.
                    let tol = 1e-6 * k as f64;
                    assert!((*g as f64 - w).abs() <= tol, "{m}x{n}x{k} {av:?}: [{i}] {g} vs {w}");
                }
            }
        }
    }
}
