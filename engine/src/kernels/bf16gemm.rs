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
    if k == 0 || m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    let a = pack_lhs(m, k, lhs);
    let b = pack_rhs(k, n, rhs);
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: `out` has room for m·n values; with k ≥ 1 and no accumulation the kernel stores
    // every one of them (each row block and column panel, its first k block with a plain
    // store) before `set_len` exposes them.
    unsafe {
        gemm_raw(&a, &b, out.as_mut_ptr(), n, false);
        out.set_len(m * n);
    }
    out
}

/// `dst[m, n] (+)= bf16(lhs)[m, k] · bf16(rhs)[k, n]` into a row-major `dst` of `m·n` values
/// (added to when `accumulate`). Call only when [`available`].
pub(crate) fn gemm_into(m: usize, n: usize, k: usize, lhs: (&[f32], View), rhs: (&[f32], View), dst: &mut [f32], accumulate: bool) {
    assert_eq!(dst.len(), m * n, "gemm_into: destination size");
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let a = pack_lhs(m, k, lhs);
    gemm_packed(&a, n, rhs, dst, n, accumulate);
}

/// `lhs` `[m, k]` rounded to bf16 and packed, to be multiplied by several right-hand sides.
pub(crate) struct PackedLhs {
    a: Scratch,
    m: usize,
    k: usize,
}

/// `rhs` `[k, n]` rounded to bf16 and packed, to be multiplied by several left-hand sides (the
/// LM head's weight, by each chunk of rows).
pub(crate) struct PackedRhs {
    b: Scratch,
    n: usize,
    k: usize,
}

/// Pack `lhs` `[m, k]` (any non-negative strides) once for [`gemm_packed`].
pub(crate) fn pack_lhs(m: usize, k: usize, lhs: (&[f32], View)) -> PackedLhs {
    assert!(available(), "bf16 GEMM without AVX512-BF16");
    let kp = k.div_ceil(2);
    // [panel][pair][row]
    let mut a = Scratch::take(m.div_ceil(MR) * kp * MR);
    a.par_chunks_mut(kp * MR).enumerate().for_each(|(p, panel)| pack(lhs, p * MR, MR.min(m - p * MR), k, MR, panel, false));
    PackedLhs { a, m, k }
}

/// Pack `rhs` `[k, n]` (any non-negative strides) once for [`gemm_prepacked`].
pub(crate) fn pack_rhs(k: usize, n: usize, rhs: (&[f32], View)) -> PackedRhs {
    assert!(available(), "bf16 GEMM without AVX512-BF16");
    let kp = k.div_ceil(2);
    // [panel][pair][column]
    let mut b = Scratch::take(n.div_ceil(NR) * kp * NR);
    b.par_chunks_mut(kp * NR).enumerate().for_each(|(p, panel)| pack(rhs, p * NR, NR.min(n - p * NR), k, NR, panel, true));
    PackedRhs { b, n, k }
}

/// `dst[m, n] (+)= a · bf16(rhs)[k, n]`: `dst` holds `m` rows of stride `ldc ≥ n` (the last one
/// may end after column `n`), of which the first `n` columns are written (added to when
/// `accumulate`).
pub(crate) fn gemm_packed(a: &PackedLhs, n: usize, rhs: (&[f32], View), dst: &mut [f32], ldc: usize, accumulate: bool) {
    if a.m == 0 || n == 0 {
        return;
    }
    let b = pack_rhs(a.k, n, rhs);
    gemm_prepacked(a, &b, dst, ldc, accumulate);
}

/// [`gemm_packed`] with both operands packed.
///
/// The output is split into tasks of `rb` rows × a run of column panels. When the packed `rhs`
/// is larger than a core's L2 cache and there are at most [`ALL_ROWS`] rows (the LM head's
/// chunks, weight gradients), a task takes every row, so that each `rhs` panel is read from
/// memory once instead of once per row block; otherwise tasks are blocks of [`MC`] rows.
pub(crate) fn gemm_prepacked(a: &PackedLhs, b: &PackedRhs, dst: &mut [f32], ldc: usize, accumulate: bool) {
    let (m, n) = (a.m, b.n);
    assert!(ldc >= n && (m == 0 || dst.len() >= (m - 1) * ldc + n), "gemm_prepacked: destination too small");
    // SAFETY: the destination holds the (m-1)·ldc + n values the product writes (asserted).
    unsafe { gemm_raw(a, b, dst.as_mut_ptr(), ldc, accumulate) }
}

/// [`gemm_prepacked`] into a raw destination.
///
/// # Safety
/// `dst` must be valid for writes (and reads, when `accumulate`) of `(m-1)·ldc + n` values.
unsafe fn gemm_raw(a: &PackedLhs, b: &PackedRhs, dst: *mut f32, ldc: usize, accumulate: bool) {
    let (m, k, n) = (a.m, a.k, b.n);
    assert_eq!(k, b.k, "gemm_prepacked: inner dimensions differ");
    assert!(ldc >= n);
    if m == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(2);
    let np = n.div_ceil(NR);
    let rb = if m <= ALL_ROWS && b.b.len() * 4 > (2 << 20) { m.div_ceil(MR) * MR } else { MC };
    let row_tasks = m.div_ceil(rb);
    let want = 4 * rayon::current_num_threads();
    let ppt = if row_tasks >= want { np } else { np.div_ceil(want.div_ceil(row_tasks)).max(1) };
    let col_tasks = np.div_ceil(ppt);
    let out = Out(dst);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
        let (rt, ct) = (task / col_tasks, task % col_tasks);
        let (row0, rows) = (rt * rb, rb.min(m - rt * rb));
        let (p0, p1) = (ct * ppt, ((ct + 1) * ppt).min(np));
        for kb in (0..kp).step_by(KC) {
            let kc = KC.min(kp - kb);
            for jp in p0..p1 {
                let cols = NR.min(n - jp * NR);
                let bp = &b.b[(jp * kp + kb) * NR..][..kc * NR];
                for r0 in (0..rows).step_by(MR) {
                    let panel = (row0 + r0) / MR;
                    let ap = &a.a[(panel * kp + kb) * MR..][..kc * MR];
                    // SAFETY: `available()` was checked when `a` was packed; `ap`/`bp` hold `kc`
                    // pairs of MR/NR values. The kernel writes rows row0+r0 .. +MR.min(rows - r0)
                    // (< m) at columns jp·NR .. +cols (≤ n) of `dst`, which holds (m-1)·ldc + n
                    // values (asserted above); tasks cover disjoint row and column ranges, so no
                    // two write the same value.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let at = out.at((row0 + r0) * ldc + jp * NR);
                        x86::kernel(kc, ap, bp, at, ldc, MR.min(rows - r0), cols, accumulate || kb > 0)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (ap, bp, cols, &out);
                }
            }
        }
    });
}

/// Rows up to which a task takes every row of a product with a large packed `rhs`.
const ALL_ROWS: usize = 1024;

/// The destination, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
impl Out {
    /// The pointer `i` values on (a method, so closures capture the whole `Out`).
    ///
    /// # Safety
    /// `i` must stay inside the destination.
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps `i` in bounds.
        unsafe { self.0.add(i) }
    }
}

// SAFETY: tasks write disjoint values (see `gemm_prepacked`); the pointer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// A packing buffer, taken from this thread's free list and given back when dropped, so that
/// the packs of every step reuse the same pages instead of faulting in fresh zeroed ones. Large
/// buffers (the LM head's weight) are not kept.
struct Scratch(Vec<u32>);

/// Buffers kept per thread, and the largest kept (in `u32`s: 32 MB).
const KEEP: usize = 4;
const KEEP_MAX: usize = 8 << 20;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Vec<u32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Scratch {
    /// `len` values, every one of which the packing writes.
    fn take(len: usize) -> Scratch {
        let reuse = if len <= KEEP_MAX {
            // `try_with`: during a thread's teardown the list may be gone; allocate then.
            FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                let at = f.iter().position(|v| v.capacity() >= len).or_else(|| (!f.is_empty()).then(|| f.len() - 1));
                at.map(|i| f.swap_remove(i))
            })
            .ok()
            .flatten()
        } else {
            None
        };
        let mut v = reuse.unwrap_or_default();
        // A reused buffer keeps its stale values (the packing overwrites them all): only what
        // it grows by is zeroed.
        v.truncate(len);
        v.resize(len, 0);
        Scratch(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() <= KEEP_MAX {
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < KEEP {
                    f.push(v);
                }
            });
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u32] {
        &mut self.0
    }
}

/// Pack `width` lines (rows of `lhs`, or columns of `rhs` when `columns`) starting at `first` into
/// `panel[pair][lane]` (`lanes` wide), two bf16 values of consecutive `k` per `u32`; every value
/// of `panel` is written (zeros past `width` lines and past `k`).
fn pack(op: (&[f32], View), first: usize, width: usize, k: usize, lanes: usize, panel: &mut [u32], columns: bool) {
    let (src, v) = op;
    // Strides along the line index and along k (non-negative: `view2` checks).
    let (ls, ks) = if columns { (v.cs as usize, v.rs as usize) } else { (v.rs as usize, v.cs as usize) };
    let base = v.offset + first * ls;
    let kp = k.div_ceil(2);
    assert!(width <= lanes && lanes <= 32 && panel.len() >= kp * lanes);
    if width == 0 || k == 0 {
        panel[..kp * lanes].fill(0);
        return;
    }
    // The last value read: line width-1 at k-1.
    let last = base + (width - 1) * ls + (k - 1) * ks;
    assert!(last < src.len(), "pack: view out of bounds");
    #[cfg(target_arch = "x86_64")]
    if ls == 1 || ks == 1 {
        // SAFETY: `available()` (AVX512-BF16 implies AVX512F/BW on every CPU that has it, and
        // `pack_*` checks them) was asserted by the callers; every read is at or before `last`,
        // every write inside `panel[..kp·lanes]`.
        unsafe {
            if ls == 1 {
                x86::pack_lines_contiguous(src, base, ks, width, k, lanes, panel)
            } else {
                x86::pack_k_contiguous(src, base, ls, width, k, lanes, panel)
            }
        }
        return;
    }
    pack_scalar(src, base, ls, ks, width, k, lanes, panel);
}

/// [`pack`] one value at a time, for any strides.
#[allow(clippy::too_many_arguments)]
fn pack_scalar(src: &[f32], base: usize, ls: usize, ks: usize, width: usize, k: usize, lanes: usize, panel: &mut [u32]) {
    for q in 0..k.div_ceil(2) {
        for line in 0..lanes {
            let at = |kk: usize| if kk < k && line < width { bf16_bits(src[base + line * ls + kk * ks]) } else { 0 };
            panel[q * lanes + line] = at(2 * q) | (at(2 * q + 1) << 16);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// Round-to-nearest-even bf16 of 16 f32 bit patterns, in the high half of each lane (the
    /// low half is garbage); NaN stays a quiet NaN. As [`super::bf16_bits`], lane-wise.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn round_bits(v: __m512i) -> __m512i {
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(v), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(v, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
        let abs = _mm512_and_si512(v, _mm512_set1_epi32(0x7FFF_FFFF));
        let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
        _mm512_mask_or_epi32(r, nan, v, _mm512_set1_epi32(0x0040_0000))
    }

    /// The first `n` (≤ 16) lanes.
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as __mmask16 }
    }

    /// [`super::pack`] when the lines are contiguous (`ls == 1`): for each pair, two runs of
    /// `width` values (`k` and `k + 1`) become one run of `u32`s.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_lines_contiguous(
        src: &[f32],
        base: usize,
        ks: usize,
        width: usize,
        k: usize,
        lanes: usize,
        panel: &mut [u32],
    ) {
        let kp = k.div_ceil(2);
        let (s, out) = (src.as_ptr() as *const i32, panel.as_mut_ptr() as *mut i32);
        for q in 0..kp {
            let lo = s.wrapping_add(base + 2 * q * ks);
            let hi = (2 * q + 1 < k).then(|| s.wrapping_add(base + (2 * q + 1) * ks));
            for j in (0..lanes).step_by(16) {
                let m = first(width.saturating_sub(j));
                // SAFETY: lanes of `m` are lines < width of rows < k, in bounds (checked by
                // `pack`); masked-off lanes are not read. The store stays in row q's `lanes`.
                unsafe {
                    let l = round_bits(_mm512_maskz_loadu_epi32(m, lo.wrapping_add(j)));
                    let h = match hi {
                        Some(hi) => round_bits(_mm512_maskz_loadu_epi32(m, hi.wrapping_add(j))),
                        None => _mm512_setzero_si512(),
                    };
                    // Even 16-bit words: l's high halves shifted down; odd words: h's high halves.
                    let v = _mm512_mask_blend_epi16(0xAAAA_AAAA, _mm512_srli_epi32::<16>(l), h);
                    let v = _mm512_maskz_mov_epi32(m, v);
                    _mm512_mask_storeu_epi32(out.add(q * lanes + j), first(lanes - j), v);
                }
            }
        }
    }

    /// [`super::pack`] when `k` is contiguous (`ks == 1`): for each group of 16 lines and block
    /// of 16 pairs, each line's 32 values are rounded and paired into one register, and the
    /// 16 × 16 block of pairs is transposed in registers so that each pair is one store across
    /// the lines.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_k_contiguous(src: &[f32], base: usize, ls: usize, width: usize, k: usize, lanes: usize, panel: &mut [u32]) {
        let kp = k.div_ceil(2);
        let (s, out) = (src.as_ptr() as *const i32, panel.as_mut_ptr() as *mut i32);
        // Word w of the result is word 2w + 1 (the high half of value w) of `a:b`.
        let mut odd = [0i16; 32];
        for (w, o) in odd.iter_mut().enumerate() {
            *o = (2 * w + 1) as i16;
        }
        // SAFETY: a 64-byte read of a 64-byte array.
        let odd = unsafe { _mm512_loadu_si512(odd.as_ptr() as *const _) };
        for qb in (0..kp).step_by(16) {
            let pairs = 16.min(kp - qb);
            let vals = (k - 2 * qb).min(32);
            let (ma, mb) = (first(vals), first(vals.saturating_sub(16)));
            for j0 in (0..lanes).step_by(16) {
                let mut v = [_mm512_setzero_si512(); 16];
                for (l, vl) in v.iter_mut().enumerate() {
                    let line = j0 + l;
                    if line >= width {
                        break;
                    }
                    let p = s.wrapping_add(base + line * ls + 2 * qb);
                    // SAFETY: the lanes of `ma`/`mb` are values < k of a line < width, in
                    // bounds (checked by `pack`); masked-off lanes are not read.
                    unsafe {
                        let a = round_bits(_mm512_maskz_loadu_epi32(ma, p));
                        let b = round_bits(_mm512_maskz_loadu_epi32(mb, p.wrapping_add(16)));
                        *vl = _mm512_permutex2var_epi16(a, odd, b);
                    }
                }
                let t = transpose16(v);
                let sm = first(lanes - j0);
                for (q, tq) in t.iter().enumerate().take(pairs) {
                    // SAFETY: pair qb + q < kp, lines j0.. of its `lanes`.
                    unsafe { _mm512_mask_storeu_epi32(out.add((qb + q) * lanes + j0), sm, *tq) };
                }
            }
        }
    }

    /// A 16 × 16 transpose of 32-bit values: `out[q]` lane `l` is `v[l]` lane `q`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(v: [__m512i; 16]) -> [__m512i; 16] {
        // a[2i], a[2i+1]: lines 2i, 2i+1 interleaved, values 0,1 / 2,3 of each 128-bit lane.
        let mut a = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
        }
        // b[4g + j]: lines 4g..4g+3 of value 4L + j in 128-bit lane L.
        let mut b = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (x0, x1, y0, y1) = (a[4 * g], a[4 * g + 1], a[4 * g + 2], a[4 * g + 3]);
            b[4 * g] = _mm512_unpacklo_epi64(x0, y0);
            b[4 * g + 1] = _mm512_unpackhi_epi64(x0, y0);
            b[4 * g + 2] = _mm512_unpacklo_epi64(x1, y1);
            b[4 * g + 3] = _mm512_unpackhi_epi64(x1, y1);
        }
        // Value 4L + j gathers lane L of b[j], b[4 + j], b[8 + j], b[12 + j].
        let mut t = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let (p0, p1, p2, p3) = (b[j], b[4 + j], b[8 + j], b[12 + j]);
            let c0 = _mm512_shuffle_i32x4::<0x44>(p0, p1);
            let c1 = _mm512_shuffle_i32x4::<0xEE>(p0, p1);
            let c2 = _mm512_shuffle_i32x4::<0x44>(p2, p3);
            let c3 = _mm512_shuffle_i32x4::<0xEE>(p2, p3);
            t[j] = _mm512_shuffle_i32x4::<0x88>(c0, c2);
            t[4 + j] = _mm512_shuffle_i32x4::<0xDD>(c0, c2);
            t[8 + j] = _mm512_shuffle_i32x4::<0x88>(c1, c3);
            t[12 + j] = _mm512_shuffle_i32x4::<0xDD>(c1, c3);
        }
        t
    }

    /// `dst[rows, cols] (+)= a-panel · b-panel` over `kc` pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    /// `dst` points at `rows` rows of stride `ldc`, of which the first `cols` columns are
    /// written.
    pub(super) unsafe fn kernel(kc: usize, a: &[u32], b: &[u32], dst: *mut f32, ldc: usize, rows: usize, cols: usize, accumulate: bool) {
        debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR && rows <= MR && cols <= NR);
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
                let p = dst.add(r * ldc);
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

    /// The AVX-512 packings write exactly what the scalar one writes, padding included, for
    /// both unit-stride layouts, partial panels, odd and short `k`, and values that round
    /// specially (ties, NaN, infinities, the largest finite values), into a dirty buffer.
    #[test]
    fn simd_packing_equals_the_scalar_packing() {
        if !available() {
            eprintln!("no AVX512-BF16 on this CPU: the packing is not exercised");
            return;
        }
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0, 1e-40];
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed
        };
        for &(width, k, lanes) in
            &[(12usize, 64usize, MR), (5, 33, MR), (32, 1, NR), (32, 31, NR), (17, 70, NR), (1, 2, NR), (12, 300, MR), (30, 17, NR)]
        {
            for contiguous_lines in [true, false] {
                let (ls, ks) = if contiguous_lines { (1, width + 3) } else { (k + 5, 1) };
                let len = 2 + (width - 1) * ls + (k - 1) * ks + 1;
                let src: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = rnd();
                        if r % 17 == 0 {
                            special[(r >> 8) as usize % special.len()]
                        } else {
                            f32::from_bits((r >> 32) as u32 & 0xBFFF_FFFF)
                        }
                    })
                    .collect();
                let v =
                    if contiguous_lines { View { offset: 2, rs: ks as isize, cs: 1 } } else { View { offset: 2, rs: 1, cs: ls as isize } };
                let kp = k.div_ceil(2);
                let mut want = vec![0u32; kp * lanes];
                pack_scalar(&src, 2, ls, ks, width, k, lanes, &mut want);
                let mut got = vec![0xDEAD_BEEFu32; kp * lanes];
                // `columns`: the lines are the view's columns (stride cs), k runs along rows.
                pack((&src, v), 0, width, k, lanes, &mut got, true);
                assert_eq!(got, want, "width {width}, k {k}, lanes {lanes}, contiguous lines {contiguous_lines}");
            }
        }
    }

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
    /// for edge shapes (partial panels, odd `k`, several `k` blocks), transposed views, and both
    /// ways of splitting the output into tasks. On a
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
        // The last shape's packed rhs is over 2 MB: tasks take every row and a run of columns.
        for (m, n, k) in [(12, 32, 64), (13, 45, 257), (100, 70, 300), (50, 33, 1), (7, 64, 5), (97, 129, 515), (50, 1100, 1025)] {
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
