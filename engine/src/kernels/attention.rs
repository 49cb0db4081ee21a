//! Attention's elementwise parts: the scaled, masked softmax of the scores, and the head split
//! fused with rotary position embedding.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::{Bool, Tensor, activation};

use rayon::prelude::*;

use super::linear::View;
use super::simd::{self, multiversion};
use super::{Prim, ad_tensor, chunk_len, contiguous, data, flex_from, for_chunks, plain_tensor, prim, prims, record};

/// `softmax(scores · scale, masked to -inf where mask is true)` over the last dimension.
/// `scores`: `[B, H, T, S]`; `mask`: `[B or 1, 1, T, S]`. A fully masked row gives zeros.
pub fn softmax_scores(scores: Tensor<4>, scale: f64, mask: Option<&Tensor<4, Bool>>) -> Tensor<4> {
    let Some(p) = prim(&scores) else {
        let mut s = scores * scale;
        if let Some(m) = mask {
            s = s.mask_fill(m.clone(), f32::NEG_INFINITY);
        }
        return activation::softmax(s, 3);
    };
    let [b, h, t, s] = scores.dims();
    drop(scores);
    let mask_rows = mask.map(|m| {
        let [mb, _, mt, ms] = m.dims();
        assert!((mb == 1 || mb == b) && mt == t && ms == s, "softmax_scores: mask {:?} does not fit scores {:?}", m.dims(), [b, h, t, s]);
        let bits: Vec<u8> = m.clone().try_into_vec_as::<bool>().expect("bool mask").into_iter().map(u8::from).collect();
        (Arc::new(bits), mb)
    });
    let x = contiguous(p.flex());
    let mut out = vec![0f32; b * h * t * s];
    let scale = scale as f32;
    let rows_per = chunk_len(b * h * t, s, 16 * 1024);
    let xd = data(&x);
    let work = xd.len();
    for_chunks(&mut out, rows_per * s, work, |c, o| {
        let xi = &xd[c * rows_per * s..c * rows_per * s + o.len()];
        for (r, (orow, xrow)) in o.chunks_mut(s).zip(xi.chunks(s)).enumerate() {
            let row = c * rows_per + r; // over [B, H, T]
            let mrow = mask_rows.as_ref().map(|(bits, mb)| {
                let (bi, ti) = (row / (h * t), row % t);
                let base = if *mb == 1 { ti * s } else { (bi * t + ti) * s };
                &bits[base..base + s]
            });
            softmax_row(xrow, mrow, scale, orow);
        }
    });
    let out = flex_from(out, &[b, h, t, s]);
    match p {
        Prim::Plain(_) => plain_tensor(out),
        Prim::Ad(ad) => {
            let node = ad.node();
            drop(ad);
            drop(x);
            ad_tensor(record(SoftmaxScores, [node], (out.clone(), scale), out))
        }
    }
}

multiversion! {
    fn softmax_row(x: &[f32], mask: Option<&[u8]>, scale: f32, out: &mut [f32]) {
        match mask {
            Some(m) => {
                for ((o, &v), &mk) in out.iter_mut().zip(x).zip(m) {
                    *o = if mk != 0 { f32::NEG_INFINITY } else { v * scale };
                }
            }
            None => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * scale;
                }
            }
        }
        let mx = simd::max(out);
        if mx == f32::NEG_INFINITY {
            out.fill(0.0);
            return;
        }
        for o in out.iter_mut() {
            *o = simd::exp(*o - mx);
        }
        let inv = 1.0 / simd::sum_map(out, |v| v);
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

multiversion! {
    /// `dx = scale · p · (g − Σ g·p)` for one row.
    fn softmax_row_backward(p: &[f32], g: &[f32], scale: f32, dx: &mut [f32]) {
        let dot = simd::sum_zip(p, g, |a, b| a * b);
        for ((d, &pv), &gv) in dx.iter_mut().zip(p).zip(g) {
            *d = scale * (pv * (gv - dot));
        }
    }
}

#[derive(Debug)]
struct SoftmaxScores;

impl Backward<Flex, 1> for SoftmaxScores {
    type State = (FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let (p, scale) = ops.state;
        let shape = p.layout().shape().clone();
        let s = shape[shape.num_dims() - 1];
        let g = contiguous(&g);
        let (pd, gd) = (data(&p), data(&g));
        let mut dx = vec![0f32; pd.len()];
        let rows_per = chunk_len(pd.len() / s, s, 16 * 1024);
        let work = dx.len();
        for_chunks(&mut dx, rows_per * s, work, |c, d| {
            let o = c * rows_per * s;
            for (r, drow) in d.chunks_mut(s).enumerate() {
                let a = o + r * s;
                softmax_row_backward(&pd[a..a + s], &gd[a..a + s], scale, drow);
            }
        });
        grads.register::<Flex>(parent.id, flex_from(dx, &shape));
    }
}

/// Attention's core, `softmax(q·kᵀ·scale, masked) · v`, for `q` `[B, H, T, D]` and `k`, `v`
/// `[B, KVH, S, D]` (query head `h` reads key/value head `h / (H / KVH)`); `mask`
/// `[B or 1, 1, T, S]`, true where a key is hidden.
///
/// In f32 on a cube device (wgpu, CUDA) this is one fused kernel each way that never holds the
/// `[B, H, T, S]` scores ([`super::gpu::attention`]). Elsewhere, and in bf16/f16 (whose
/// products round their operands and results as autocast's do), it is the two per-head
/// products around the masked softmax.
pub fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, mask: Option<&Tensor<4, Bool>>) -> Tensor<4> {
    use super::precision::{self, Precision, round};
    let (q, k, v) = if precision::current() == Precision::F32 {
        match super::gpu::attention::attend(q, k, v, scale, mask) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        }
    } else {
        (q, k, v)
    };
    let scores = head_matmul(q, k, true);
    let p = round(softmax_scores(scores, scale, mask));
    head_matmul(p, v, false)
}

/// The composite form of RoPE (any backend): `[B, H, T, Dh]` with rotate-half, x*cos + rotate_half(x)*sin.
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [_, _, _, dh] = x.dims();
    let half = dh / 2;
    let x1 = x.clone().slice_dim(3, 0..half);
    let x2 = x.clone().slice_dim(3, half..dh);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Split heads and apply rotary embedding: `x` `[B, T, H, Dh]` → `[B, H, T, Dh]`, each head
/// vector `x·cos + rotate_half(x)·sin`. `cos`/`sin`: `[B or 1, 1, T, Dh]`.
pub fn rope_heads(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let x = match super::gpu::rope::rope_heads(x, cos, sin) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let Some([px, pc, ps]) = prims([&x, cos, sin]) else {
        return apply_rope(x.swap_dims(1, 2), cos, sin);
    };
    let [b, t, h, dh] = x.dims();
    let cb = cos.dims()[0];
    assert!(
        dh % 2 == 0 && cos.dims() == [cb, 1, t, dh] && sin.dims() == cos.dims() && (cb == 1 || cb == b),
        "rope_heads: tables do not fit"
    );
    drop(x);
    let xs = contiguous(px.flex());
    let (cs, sn) = (contiguous(pc.flex()), contiguous(ps.flex()));
    let out = rope_apply(data(&xs), data(&cs), data(&sn), [b, t, h, dh], cb, false);
    let out = flex_from(out, &[b, h, t, dh]);
    match px {
        Prim::Plain(_) => plain_tensor(out),
        Prim::Ad(ad) => {
            let node = ad.node();
            drop(ad);
            let state = RopeState { cos: cs, sin: sn, dims: [b, t, h, dh], cb };
            ad_tensor(record(RopeHeads, [node], state, out))
        }
    }
}

multiversion! {
    /// One head vector: forward `y = x·c + rot(x)·s`, or (backward) its transpose
    /// `dx_k = dy_k·c_k + (k < half ? dy_{k+half}·s_{k+half} : −dy_{k−half}·s_{k−half})`.
    fn rope_vec(x: &[f32], c: &[f32], s: &[f32], y: &mut [f32], backward: bool) {
        let half = x.len() / 2;
        let (x1, x2) = x.split_at(half);
        let (c1, c2) = c.split_at(half);
        let (s1, s2) = s.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        if backward {
            for i in 0..half {
                y1[i] = x1[i] * c1[i] + x2[i] * s2[i];
                y2[i] = x2[i] * c2[i] - x1[i] * s1[i];
            }
        } else {
            for i in 0..half {
                y1[i] = x1[i] * c1[i] - x2[i] * s1[i];
                y2[i] = x2[i] * c2[i] + x1[i] * s2[i];
            }
        }
    }
}

/// Forward: `src` `[B, T, H, Dh]` → `[B, H, T, Dh]`. Backward: `src` `[B, H, T, Dh]` →
/// `[B, T, H, Dh]`. Either way the output is split into independent rayon tasks.
fn rope_apply(src: &[f32], cos: &[f32], sin: &[f32], [b, t, h, dh]: [usize; 4], cb: usize, backward: bool) -> Vec<f32> {
    let mut out = vec![0f32; b * t * h * dh];
    let table = |bi: usize, ti: usize| {
        let o = ((if cb == 1 { 0 } else { bi }) * t + ti) * dh;
        (&cos[o..o + dh], &sin[o..o + dh])
    };
    if !backward {
        // Output rows are (b, h) blocks of [T, Dh].
        let work = out.len();
        for_chunks(&mut out, t * dh, work, |bh, blk| {
            let (bi, hi) = (bh / h, bh % h);
            for ti in 0..t {
                let xo = ((bi * t + ti) * h + hi) * dh;
                let (c, s) = table(bi, ti);
                rope_vec(&src[xo..xo + dh], c, s, &mut blk[ti * dh..(ti + 1) * dh], false);
            }
        });
    } else {
        // Output rows are (b, t) blocks of [H, Dh].
        let work = out.len();
        for_chunks(&mut out, h * dh, work, |bt, blk| {
            let (bi, ti) = (bt / t, bt % t);
            let (c, s) = table(bi, ti);
            for hi in 0..h {
                let go = ((bi * h + hi) * t + ti) * dh;
                rope_vec(&src[go..go + dh], c, s, &mut blk[hi * dh..(hi + 1) * dh], true);
            }
        });
    }
    out
}

#[derive(Debug)]
struct RopeHeads;

#[derive(Debug, Clone)]
struct RopeState {
    cos: FlexTensor,
    sin: FlexTensor,
    dims: [usize; 4],
    cb: usize,
}

impl Backward<Flex, 1> for RopeHeads {
    type State = RopeState;

    fn backward(self, ops: Ops<RopeState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let st = ops.state;
        let g = contiguous(&g);
        let dx = rope_apply(data(&g), data(&st.cos), data(&st.sin), st.dims, st.cb, true);
        grads.register::<Flex>(parent.id, flex_from(dx, &st.dims));
    }
}

/// Attention's per-head products with grouped key/value heads: `a · bᵀ` (scores, when
/// `transpose_b`) or `a · b` (the weighted values), where `a` is `[B, H, T, ·]` and `b` is
/// `[B, KVH, S, D]` with `H` a multiple of `KVH`; query head `h` reads key/value head
/// `h / (H / KVH)`.
///
/// In the compute precision's terms the operands and the result are rounded, as autocast's
/// matmul rounds them, and so are the gradients. In bf16 on a CPU with AVX512-BF16 each head's
/// product runs on the bf16 kernel (operands rounded as they are packed, f32 accumulation) and
/// the grouped heads are read in place; elsewhere the key/value heads are expanded and burn's
/// matmul runs on rounded copies.
pub fn head_matmul(a: Tensor<4>, b: Tensor<4>, transpose_b: bool) -> Tensor<4> {
    use super::precision::{self, Precision, round};
    let [bs, h, t, ka] = a.dims();
    let [bb, kvh, s, d] = b.dims();
    assert!(bb == bs && kvh > 0 && h % kvh == 0, "head_matmul: {:?} against {:?}", a.dims(), b.dims());
    assert_eq!(ka, if transpose_b { d } else { s }, "head_matmul: inner dimensions differ");
    let rep = h / kvh;
    let kernel = precision::current() == Precision::Bf16 && super::bf16gemm::available();
    let pair = if kernel { super::prim_pair(&a, &b) } else { None };
    let Some((pa, pb)) = pair else {
        let b = if rep > 1 { b.unsqueeze_dim::<5>(2).expand([bs, kvh, rep, s, d]).reshape([bs, h, s, d]) } else { b };
        let b = if transpose_b { round(b).swap_dims(2, 3) } else { round(b) };
        return round(round(a).matmul(b));
    };
    drop((a, b));
    let (xa, xb) = (contiguous(pa.flex()), contiguous(pb.flex()));
    let g = HeadGeom { bs, h, rep, t, ka, s, d, transpose_b };
    let (m, n) = g.out_dims();
    let mut out = vec![0f32; bs * h * m * n];
    let (ad, bd) = (data(&xa), data(&xb));
    out.par_chunks_mut(m * n)
        .enumerate()
        .for_each(|(i, o)| super::bf16gemm::gemm_into(m, n, ka, (ad, g.a_view(i)), (bd, g.opb_view(i)), o, false));
    precision::round_in_place(Precision::Bf16, &mut out);
    let out = flex_from(out, &[bs, h, m, n]);
    match (pa, pb) {
        (Prim::Ad(aa), Prim::Ad(ab)) => {
            let nodes = [aa.node(), ab.node()];
            drop((aa, ab));
            ad_tensor(record(HeadMatmul, nodes, (xa, xb, g), out))
        }
        _ => plain_tensor(out),
    }
}

/// Shapes of a [`head_matmul`]: `a` `[bs, h, t, ka]`, `b` `[bs, h / rep, s, d]`.
#[derive(Debug, Clone, Copy)]
struct HeadGeom {
    bs: usize,
    h: usize,
    rep: usize,
    t: usize,
    ka: usize,
    s: usize,
    d: usize,
    transpose_b: bool,
}

impl HeadGeom {
    /// Rows and columns of each head's result.
    fn out_dims(&self) -> (usize, usize) {
        (self.t, if self.transpose_b { self.s } else { self.d })
    }
    /// The key/value head of query head `i` (over `bs·h`).
    fn kv(&self, i: usize) -> usize {
        let (bi, hi) = (i / self.h, i % self.h);
        bi * (self.h / self.rep) + hi / self.rep
    }
    /// Head `i` of `a`, `[t, ka]` row-major.
    fn a_view(&self, i: usize) -> View {
        View { offset: i * self.t * self.ka, rs: self.ka as isize, cs: 1 }
    }
    /// Head `i`'s `b`, `[s, d]` row-major, as it enters the product: `bᵀ` `[d, s]` or `b`.
    fn opb_view(&self, i: usize) -> View {
        let off = self.kv(i) * self.s * self.d;
        if self.transpose_b { View { offset: off, rs: 1, cs: self.d as isize } } else { View { offset: off, rs: self.d as isize, cs: 1 } }
    }
}

#[derive(Debug)]
struct HeadMatmul;

impl Backward<Flex, 2> for HeadMatmul {
    type State = (FlexTensor, FlexTensor, HeadGeom);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        use super::bf16gemm::gemm_into;
        use super::precision::{Precision, round_in_place};
        let [pa, pb] = ops.parents;
        let dc = grads.consume::<Flex>(&ops.node);
        if pa.is_none() && pb.is_none() {
            return;
        }
        let (xa, xb, g) = ops.state;
        let dc = contiguous(&dc);
        let (ad, bd, dd) = (data(&xa), data(&xb), data(&dc));
        let (m, n) = g.out_dims();
        let dcv = |i: usize| View { offset: i * m * n, rs: n as isize, cs: 1 };
        if let Some(p) = pa {
            // da[t, ka] = dc[t, n] · op(b)ᵀ[n, ka]; op(b)ᵀ is b `[s, d]` itself for scores, bᵀ for values.
            let mut da = vec![0f32; g.bs * g.h * g.t * g.ka];
            da.par_chunks_mut(g.t * g.ka).enumerate().for_each(|(i, o)| {
                let off = g.kv(i) * g.s * g.d;
                let bv = if g.transpose_b {
                    View { offset: off, rs: g.d as isize, cs: 1 }
                } else {
                    View { offset: off, rs: 1, cs: g.d as isize }
                };
                gemm_into(g.t, g.ka, n, (dd, dcv(i)), (bd, bv), o, false);
            });
            round_in_place(Precision::Bf16, &mut da);
            grads.register::<Flex>(p.id, flex_from(da, &[g.bs, g.h, g.t, g.ka]));
        }
        if let Some(p) = pb {
            // Scores: db[s, d] = Σ_rep dcᵀ[s, t] · a[t, d]; values: db[s, d] = Σ_rep aᵀ[s, t] · dc[t, d].
            let kvh = g.h / g.rep;
            let mut db = vec![0f32; g.bs * kvh * g.s * g.d];
            db.par_chunks_mut(g.s * g.d).enumerate().for_each(|(j, o)| {
                let (bi, ki) = (j / kvh, j % kvh);
                for r in 0..g.rep {
                    let i = bi * g.h + ki * g.rep + r;
                    let at = View { offset: i * g.t * g.ka, rs: 1, cs: g.ka as isize };
                    let dct = View { offset: i * m * n, rs: 1, cs: n as isize };
                    if g.transpose_b {
                        gemm_into(g.s, g.d, g.t, (dd, dct), (ad, g.a_view(i)), o, r > 0)
                    } else {
                        gemm_into(g.s, g.d, g.t, (ad, at), (dd, dcv(i)), o, r > 0)
                    }
                }
            });
            round_in_place(Precision::Bf16, &mut db);
            grads.register::<Flex>(p.id, flex_from(db, &[g.bs, kvh, g.s, g.d]));
        }
    }
}
