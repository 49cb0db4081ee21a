//! Per-token log-probabilities of target ids under the LM head's logits, the core of every
//! language-model loss here (SFT's NLL, DPO's and PPO's sequence log-probs, distillation's
//! hard-label term, evaluation's scores).
//!
//! Composite form: `log_softmax(logits).gather(targets)`: about ten passes over the
//! `[B, T, vocab]` logits (200 MB for 4 × 256 × 49 152) forward and backward, each allocating.
//! Fused: one pass per row forward (max, then `Σ exp` → log-sum-exp), and one backward pass
//! that writes `g · (onehot − softmax)` into the logits' own buffer when nothing else holds it.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::{Int, Tensor, activation};

use super::simd::{self, multiversion};
use super::{AdTensor, Prim, ad_tensor, contiguous, data, exclusive_buf, flex_from, for_chunks, map_range, plain_tensor, prim, record};

/// `(log p(target), 1 if the target is the argmax else 0)` per position, `[B, T]` each. The
/// second is detached. Targets must be valid ids (`< vocab`).
pub fn token_logprobs(logits: Tensor<3>, targets: &Tensor<2, Int>) -> (Tensor<2>, Tensor<2>) {
    let logits = match super::gpu::cross_entropy::token_logprobs(logits, targets) {
        Ok(out) => return out,
        Err(logits) => logits,
    };
    let [b, t, v] = logits.dims();
    let Some(p) = prim(&logits) else {
        let lp = activation::log_softmax(logits, 2);
        let tok = lp.clone().gather(2, targets.clone().reshape([b, t, 1])).reshape([b, t]);
        let best = lp.detach().max_dim(2).reshape([b, t]);
        let correct = tok.clone().detach().greater_equal(best).float();
        return (tok, correct);
    };
    drop(logits);
    let ids: Vec<usize> = targets.clone().try_into_vec_as::<i64>().expect("int tensor").into_iter().map(|x| x as usize).collect();
    if let Some(bad) = ids.iter().find(|&&i| i >= v) {
        panic!("token_logprobs: target id {bad} is outside the vocabulary of {v}");
    }
    let x = contiguous(p.flex());
    let (lp, lse, correct) = forward(data(&x), v, &ids);
    let out = flex_from(lp, &[b, t]);
    let correct = flex_from(correct, &[b, t]);
    match p {
        Prim::Plain(_) => (plain_tensor(out), plain_tensor(correct)),
        Prim::Ad(ad) => {
            let node = ad.node();
            drop(ad);
            let state = State { logits: x, ids: Arc::new(ids), lse: Arc::new(lse), vocab: v };
            (ad_tensor(record(TokenLogprobs, [node], state, out)), ad_tensor(AdTensor::new(correct)))
        }
    }
}

multiversion! {
    pub(crate) fn row_forward(row: &[f32], target: usize) -> (f32, f32, f32) {
        let m = simd::max(row);
        if !m.is_finite() {
            // All -inf (or a NaN/inf logit): the composite gives NaN too.
            return (f32::NAN, f32::NAN, 0.0);
        }
        let s = simd::sum_map(row, |x| simd::exp(x - m));
        let lse = m + s.ln();
        let xt = row[target];
        (xt - lse, lse, if xt >= m { 1.0 } else { 0.0 })
    }
}

/// Log-prob of each target, each row's log-sum-exp, and the argmax flags.
fn forward(x: &[f32], v: usize, ids: &[usize]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = map_range(ids.len(), x.len(), |i| row_forward(&x[i * v..(i + 1) * v], ids[i]));
    let mut lp = Vec::with_capacity(ids.len());
    let mut lse = Vec::with_capacity(ids.len());
    let mut correct = Vec::with_capacity(ids.len());
    for (a, b, c) in rows {
        lp.push(a);
        lse.push(b);
        correct.push(c);
    }
    (lp, lse, correct)
}

multiversion! {
    /// `row ← g · (onehot(target) − exp(row − lse))`, in place.
    pub(crate) fn row_backward(row: &mut [f32], target: usize, lse: f32, g: f32) {
        if g == 0.0 {
            row.fill(0.0);
            return;
        }
        let ng = -g;
        for x in row.iter_mut() {
            *x = ng * simd::exp(*x - lse);
        }
        row[target] += g;
    }
}

#[derive(Debug)]
struct TokenLogprobs;

#[derive(Debug, Clone)]
struct State {
    logits: FlexTensor,
    ids: Arc<Vec<usize>>,
    lse: Arc<Vec<f32>>,
    vocab: usize,
}

impl Backward<Flex, 1> for TokenLogprobs {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let g = contiguous(&g);
        let g = data(&g);
        let State { mut logits, ids, lse, vocab } = ops.state;
        let shape = logits.layout().shape().clone();
        // The forward kept the only other reference to the logits; write the gradient over them.
        let grad = match exclusive_buf(&mut logits) {
            Some(buf) => {
                let work = buf.len();
                for_chunks(buf, vocab, work, |i, row| row_backward(row, ids[i], lse[i], g[i]));
                logits
            }
            None => {
                let mut buf = data(&logits).to_vec();
                let work = buf.len();
                for_chunks(&mut buf, vocab, work, |i, row| row_backward(row, ids[i], lse[i], g[i]));
                flex_from(buf, &shape)
            }
        };
        grads.register::<Flex>(parent.id, grad);
    }
}
