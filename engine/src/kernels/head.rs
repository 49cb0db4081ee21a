//! The LM head and the target log-probabilities fused, a chunk of rows at a time: for each chunk,
//! `logits = h · W`, then one pass per row for the log-sum-exp, the target's log-prob and the
//! argmax flag; the backward pass recomputes each chunk's logits and turns them into
//! `g · (onehot − softmax)` in place before the two GEMMs for `dh` and `dW`. So the
//! `[B, T, vocab]` logits (1 GB at 128 K vocab and 4 × 512 tokens in f32) are never held whole,
//! only `[chunk, vocab]` (about 64 MB).
//!
//! The head is a dense `[hidden, vocab]` weight (an untied head, or the tied embedding's
//! transpose, a strided view; it gets its gradient when it is trained) or a packed frozen one
//! (`[vocab, hidden]`). On a cube device a dense head runs the same chunked scheme on GPU
//! kernels (`gpu/head.rs`); otherwise the composite form runs: logits, then `token_logprobs`.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::{Int, Tensor};

use super::bf16gemm::{self, PackedRhs};
use super::cross_entropy::{row_backward, row_forward, token_logprobs};
use super::linear::{View, matmul_last, view2};
use super::{
    AdTensor, Prim, ad_tensor, contiguous, data, flex_from, for_chunks, gemm_into, map_range, plain_tensor, prim, prim_pair, record,
};
use crate::io::quant::PackedMatrix;

/// An LM head.
pub enum Head<'a> {
    /// `[hidden, vocab]`, any strides.
    Dense(Tensor<2>),
    /// `[vocab, hidden]`, frozen.
    Packed(&'a Arc<PackedMatrix>),
}

/// Logit rows computed at once: about 16 M values (64 MB in f32), at least 16 rows.
fn chunk_rows(vocab: usize) -> usize {
    ((1usize << 24) / vocab.max(1)).max(16)
}

/// `(log p(target), 1 if the target is the argmax else 0)` per position, `[B, T]` each, from
/// hidden states `[B, T, hidden]`. The flags are detached. Targets must be `< vocab`.
///
/// In bf16/f16 the hidden states are rounded to it (their gradient too). In bf16 on a CPU with
/// AVX512-BF16 the head's three products (logits, `dh`, `dW`) run on the bf16 kernel, operands
/// rounded to bf16 and f32 accumulation, as `torch.autocast` runs the head's linear in bf16;
/// elsewhere they stay f32. The logits and the log-softmax are f32 in every precision, as a
/// fused linear cross-entropy keeps them: the logits exist only a chunk at a time, so f32 costs
/// no memory, and the loss loses no precision to a rounded logit.
pub fn head_logprobs(hidden: Tensor<3>, head: Head, targets: &Tensor<2, Int>) -> (Tensor<2>, Tensor<2>) {
    use super::precision::{self, Precision};
    let prec = precision::current();
    if prec == Precision::F32 {
        return head_inner(hidden, head, targets, false);
    }
    let bf16 = prec == Precision::Bf16 && super::bf16gemm::available();
    let hidden = precision::round(hidden);
    precision::with(Precision::F32, || head_inner(hidden, head, targets, bf16))
}

/// [`head_logprobs`] in f32, its products on the bf16 kernel when `bf16`.
fn head_inner(hidden: Tensor<3>, head: Head, targets: &Tensor<2, Int>, bf16: bool) -> (Tensor<2>, Tensor<2>) {
    let [b, t, h] = hidden.dims();
    let (x, w) = match head {
        Head::Dense(w) => match prim_pair(&hidden, &w) {
            Some((px, pw)) => (px, HeadW::Dense(pw)),
            None => {
                return match super::gpu::head::head_logprobs(hidden, w, targets) {
                    Ok(out) => out,
                    Err((hidden, w)) => token_logprobs(matmul_last(hidden, w), targets),
                };
            }
        },
        Head::Packed(p) => match prim(&hidden) {
            Some(px) => (px, HeadW::Packed(p.clone())),
            None => return token_logprobs(super::qlinear::packed_matmul(hidden, p), targets),
        },
    };
    drop(hidden);
    let (wt, vocab) = match &w {
        HeadW::Dense(pw) => {
            let f = pw.flex().clone();
            let f = if view2(&f).is_some() { f } else { contiguous(&f) };
            let v = f.layout().shape()[1];
            assert_eq!(f.layout().shape()[0], h, "head_logprobs: the head expects {} features, the input has {h}", f.layout().shape()[0]);
            (W::Dense(f), v)
        }
        HeadW::Packed(p) => {
            assert_eq!(p.cols, h, "head_logprobs: the head expects {} features, the input has {h}", p.cols);
            (W::Packed(p.clone()), p.rows)
        }
    };
    let ids: Vec<usize> = targets.clone().try_into_vec_as::<i64>().expect("int tensor").into_iter().map(|i| i as usize).collect();
    if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
        panic!("head_logprobs: target id {bad} is outside the vocabulary of {vocab}");
    }
    let xs = contiguous(x.flex());
    let n = b * t;
    let chunk = chunk_rows(vocab);
    let (mut lp, mut lse, mut correct) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    // The dense weight packed for the bf16 kernel once for every chunk. The backward pass packs
    // it again rather than keep it: methods that run several forward passes before one
    // backward (DPO, PPO) would otherwise hold one copy per pass.
    let packed = bf16.then(|| Products::new(&wt, h, vocab));
    let mut buf = Vec::new();
    for r0 in (0..n).step_by(chunk) {
        let r1 = (r0 + chunk).min(n);
        let logits = chunk_logits(&wt, packed.as_ref(), &data(&xs)[r0 * h..r1 * h], r1 - r0, h, vocab, std::mem::take(&mut buf));
        for (a, l, c) in map_range(r1 - r0, logits.len(), |i| row_forward(&logits[i * vocab..(i + 1) * vocab], ids[r0 + i])) {
            lp.push(a);
            lse.push(l);
            correct.push(c);
        }
        buf = logits;
    }
    drop((buf, packed));
    let out = flex_from(lp, &[b, t]);
    let correct = flex_from(correct, &[b, t]);
    let state = State { x: xs, w: wt, bf16, ids: Arc::new(ids), lse: Arc::new(lse), h, vocab, x_dims: [b, t, h] };
    match (x, w) {
        (Prim::Ad(ax), HeadW::Dense(Prim::Ad(aw))) => {
            let nodes = [ax.node(), aw.node()];
            drop((ax, aw));
            (ad_tensor(record(FusedHead, nodes, state, out)), ad_tensor(AdTensor::new(correct)))
        }
        (Prim::Ad(ax), HeadW::Packed(_)) => {
            let nodes = [ax.node()];
            drop(ax);
            (ad_tensor(record(FusedPackedHead, nodes, state, out)), ad_tensor(AdTensor::new(correct)))
        }
        _ => (plain_tensor(out), plain_tensor(correct)),
    }
}

/// How the head's products run in bf16: a dense weight packed once for the bf16 kernel, or a
/// packed (quantized) one whose dequantised tiles are rounded as the kernel packs them.
enum Products {
    Dense(PackedRhs),
    Quantized,
}

impl Products {
    fn new(w: &W, h: usize, vocab: usize) -> Products {
        match w {
            W::Dense(f) => {
                let v = view2(f).expect("2-D head");
                Products::Dense(bf16gemm::pack_rhs(h, vocab, (f.storage::<f32>(), v)))
            }
            W::Packed(_) => Products::Quantized,
        }
    }
}

enum HeadW {
    Dense(Prim),
    Packed(Arc<PackedMatrix>),
}

/// The head's weight as the kernels read it.
#[derive(Debug, Clone)]
enum W {
    /// `[hidden, vocab]`, any strides.
    Dense(FlexTensor),
    /// `[vocab, hidden]`.
    Packed(Arc<PackedMatrix>),
}

/// `logits[rows, vocab] = x[rows, h] · W`, on the bf16 kernel when `bf16` is given. `buf` is a
/// chunk's buffer from the previous call (reused: a fresh 64 MB buffer costs page faults).
fn chunk_logits(w: &W, bf16: Option<&Products>, x: &[f32], rows: usize, h: usize, vocab: usize, buf: Vec<f32>) -> Vec<f32> {
    let xv = View { offset: 0, rs: h as isize, cs: 1 };
    match (w, bf16) {
        (_, Some(Products::Dense(wp))) => {
            let a = bf16gemm::pack_lhs(rows, h, (x, xv));
            let mut out = buf;
            out.resize(rows * vocab, 0.0);
            out.truncate(rows * vocab);
            bf16gemm::gemm_prepacked(&a, wp, &mut out, vocab, false);
            out
        }
        (W::Packed(p), Some(Products::Quantized)) => super::qlinear::forward_bf16(x, rows, p),
        (W::Dense(f), _) => {
            let v: View = view2(f).expect("2-D head");
            let wd = &f.storage::<f32>()[v.offset..];
            let mut out = buf;
            out.resize(rows * vocab, 0.0);
            out.truncate(rows * vocab);
            gemm_into(&mut out, vocab, rows, vocab, h, x, h as isize, 1, wd, v.rs, v.cs, false);
            out
        }
        (W::Packed(p), _) => super::qlinear::forward(x, rows, p),
    }
}

#[derive(Debug, Clone)]
struct State {
    /// `[B·T, hidden]`, contiguous.
    x: FlexTensor,
    w: W,
    /// The products run on the bf16 kernel.
    bf16: bool,
    ids: Arc<Vec<usize>>,
    lse: Arc<Vec<f32>>,
    h: usize,
    vocab: usize,
    x_dims: [usize; 3],
}

/// The backward of both variants: `dx` (when asked) and, for a dense head, `dW` (when asked).
fn backward(s: &State, g: &[f32], want_x: bool, want_w: bool) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (h, vocab) = (s.h, s.vocab);
    let n = s.ids.len();
    let xd = data(&s.x);
    let mut dx = want_x.then(|| vec![0f32; n * h]);
    let mut dw = want_w.then(|| vec![0f32; h * vocab]);
    let chunk = chunk_rows(vocab);
    let mut buf = Vec::new();
    // In bf16, W packed once for every chunk's recomputed logits, and Wᵀ for every chunk's dx.
    let packed = s.bf16.then(|| Products::new(&s.w, h, vocab));
    let wt_packed = match (&s.w, &packed) {
        (W::Dense(f), Some(_)) if want_x => {
            let v = view2(f).expect("2-D head");
            Some(bf16gemm::pack_rhs(vocab, h, (f.storage::<f32>(), View { offset: v.offset, rs: v.cs, cs: v.rs })))
        }
        _ => None,
    };
    for r0 in (0..n).step_by(chunk) {
        let r1 = (r0 + chunk).min(n);
        let rows = r1 - r0;
        let xc = &xd[r0 * h..r1 * h];
        let mut dl = chunk_logits(&s.w, packed.as_ref(), xc, rows, h, vocab, std::mem::take(&mut buf));
        let work = dl.len();
        for_chunks(&mut dl, vocab, work, |i, row| row_backward(row, s.ids[r0 + i], s.lse[r0 + i], g[r0 + i]));
        let dlv = View { offset: 0, rs: vocab as isize, cs: 1 };
        if let Some(dx) = dx.as_mut() {
            match (&s.w, &wt_packed, s.bf16) {
                (_, Some(wt), _) => {
                    // dx[rows, h] = dl[rows, vocab] · Wᵀ[vocab, h]
                    let a = bf16gemm::pack_lhs(rows, vocab, (&dl, dlv));
                    bf16gemm::gemm_prepacked(&a, wt, &mut dx[r0 * h..r1 * h], h, false);
                }
                (W::Packed(p), None, true) => dx[r0 * h..r1 * h].copy_from_slice(&super::qlinear::backward_x_bf16(&dl, rows, p)),
                (W::Dense(f), None, _) => {
                    // dx[rows, h] = dl[rows, vocab] · Wᵀ[vocab, h]
                    let v = view2(f).expect("2-D head");
                    let wd = &f.storage::<f32>()[v.offset..];
                    gemm_into(&mut dx[r0 * h..r1 * h], h, rows, h, vocab, &dl, vocab as isize, 1, wd, v.cs, v.rs, false);
                }
                (W::Packed(p), None, _) => dx[r0 * h..r1 * h].copy_from_slice(&super::qlinear::backward_x(&dl, rows, p)),
            }
        }
        if let Some(dw) = dw.as_mut() {
            // dW[h, vocab] += xᵀ[h, rows] · dl[rows, vocab]
            if s.bf16 {
                let a = bf16gemm::pack_lhs(h, rows, (xc, View { offset: 0, rs: 1, cs: h as isize }));
                bf16gemm::gemm_packed(&a, vocab, (&dl, dlv), dw, vocab, r0 > 0);
            } else {
                gemm_into(dw, vocab, h, vocab, rows, xc, 1, h as isize, &dl, vocab as isize, 1, r0 > 0);
            }
        }
        buf = dl;
    }
    (dx, dw)
}

#[derive(Debug)]
struct FusedHead;

impl Backward<Flex, 2> for FusedHead {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        if px.is_none() && pw.is_none() {
            return;
        }
        let g = contiguous(&g);
        let s = ops.state;
        let (dx, dw) = backward(&s, data(&g), px.is_some(), pw.is_some());
        if let (Some(p), Some(dx)) = (px, dx) {
            grads.register::<Flex>(p.id, flex_from(dx, &s.x_dims));
        }
        if let (Some(p), Some(dw)) = (pw, dw) {
            grads.register::<Flex>(p.id, flex_from(dw, &[s.h, s.vocab]));
        }
    }
}

#[derive(Debug)]
struct FusedPackedHead;

impl Backward<Flex, 1> for FusedPackedHead {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let Some(p) = px else { return };
        let g = contiguous(&g);
        let s = ops.state;
        let (dx, _) = backward(&s, data(&g), true, false);
        grads.register::<Flex>(p.id, flex_from(dx.expect("asked for dx"), &s.x_dims));
    }
}
