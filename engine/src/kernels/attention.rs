//! Attention's elementwise parts: the scaled, masked softmax of the scores, and the head split
//! fused with rotary position embedding.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::{Bool, Tensor, activation};

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
