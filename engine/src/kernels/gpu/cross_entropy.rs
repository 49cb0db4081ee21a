//! Target log-probabilities on the GPU: `log_softmax(logits).gather(targets)` and the argmax
//! flag, one workgroup per row (a max, then `Σ exp`, both reduced in shared memory), keeping
//! one log-sum-exp per row; the backward pass writes `g · (onehot − exp(x − lse))` in one
//! elementwise pass. The composite form makes about ten passes over the `[B, T, vocab]` logits
//! and allocates the log-softmax whole.

use burn::backend::Cube;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::{Int, Tensor as BTensor};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{GAdTensor, GPrim, ad_tensor, block_max, block_sum, contiguous, elementwise, empty, per_row, plain_tensor, prim, record};

/// Per row of `x` (`[rows, vocab]`, rows `row0..row0 + rows` of the targets and outputs):
/// `lp = x[target] − lse`, `lse`, and `correct = x[target] ≥ max`. Targets are ids held as f32
/// (exact below 2²⁴); one outside the vocabulary gives `nan` (pass NaN).
#[cube(launch)]
pub(crate) fn logprob_forward(
    x: &Tensor<f32>,
    targets: &Tensor<f32>,
    lp: &mut Tensor<f32>,
    lse: &mut Tensor<f32>,
    correct: &mut Tensor<f32>,
    vocab: u32,
    row0: u32,
    rows: u32,
    nan: f32,
    #[comptime] units: usize,
) {
    let local = CUBE_POS;
    if local >= rows as usize {
        terminate!();
    }
    let row = local + row0 as usize;
    let v = vocab as usize;
    let base = local * v;
    let mut shared = Shared::<[f32]>::new_slice(units);
    let mut m = f32::new(-3.0e38);
    let mut j = UNIT_POS as usize;
    while j < v {
        let xv = x[base + j];
        m = select(xv > m, xv, m);
        j += units;
    }
    let m = block_max(&mut shared, m);
    let mut s = 0.0f32;
    let mut j = UNIT_POS as usize;
    while j < v {
        s += (x[base + j] - m).exp();
        j += units;
    }
    let s = block_sum(&mut shared, s);
    if UNIT_POS == 0 {
        let l = m + s.ln();
        let tf = targets[row];
        let t = u32::cast_from(tf) as usize;
        if tf >= 0.0f32 && t < v {
            let xt = x[base + t];
            lp[row] = xt - l;
            correct[row] = select(xt >= m, 1.0f32, 0.0f32);
        } else {
            // NaN, passed in: WGSL has no NaN constant to write here.
            lp[row] = nan;
            correct[row] = 0.0f32;
        }
        lse[row] = l;
    }
}

/// `dx[r, j] = g[r] · ([j = target[r]] − exp(x[r, j] − lse[r]))` for the rows of `x`
/// (`[rows, vocab]`), which are rows `row0..` of the targets, `lse` and `g`.
#[cube(launch)]
pub(crate) fn logprob_backward(
    x: &Tensor<f32>,
    targets: &Tensor<f32>,
    lse: &Tensor<f32>,
    g: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    vocab: u32,
    row0: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= dx.len() {
        terminate!();
    }
    let v = vocab as usize;
    let row = i / v + row0 as usize;
    let j = i % v;
    let gr = g[row];
    let hit = select(u32::cast_from(targets[row]) as usize == j, gr, 0.0f32);
    dx[i] = hit - gr * (x[i] - lse[row]).exp();
}

/// [`super::super::cross_entropy::token_logprobs`] on a cube device, or the logits back when
/// they are not an f32 cube tensor.
pub(crate) fn token_logprobs(logits: BTensor<3>, targets: &BTensor<2, Int>) -> Result<(BTensor<2>, BTensor<2>), BTensor<3>> {
    let Some(p) = prim(&logits) else {
        return Err(logits);
    };
    let [b, t, v] = logits.dims();
    assert!(v < (1 << 24), "token_logprobs: a vocabulary of {v} ids is too large for the GPU kernel's f32 ids");
    drop(logits);
    let ids = ids_on_device(targets, b * t);
    let x = contiguous(p.cube());
    let rows = b * t;
    let (lp, lse, correct) = (empty(&x, &[b, t]), empty(&x, &[rows]), empty(&x, &[b, t]));
    let client = x.client.clone();
    let (count, dim, units) = per_row(&client, rows);
    let vocab = u32::try_from(v).expect("vocabulary fits in u32");
    logprob_forward::launch(
        &client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        ids.clone().into_tensor_arg(),
        lp.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        correct.clone().into_tensor_arg(),
        vocab,
        0,
        u32::try_from(rows).expect("row count fits in u32"),
        f32::NAN,
        units,
    );
    Ok(match p {
        GPrim::Plain(_) => (plain_tensor(lp), plain_tensor(correct)),
        GPrim::Ad(ad) => {
            let node = ad.node();
            drop(ad);
            let state = State { logits: x, ids, lse, vocab };
            (ad_tensor(record(TokenLogprobs, [node], state, lp)), ad_tensor(GAdTensor::new(correct)))
        }
    })
}

/// The target ids as f32 values on their device (exact below 2²⁴), `[n]`.
pub(crate) fn ids_on_device(targets: &BTensor<2, Int>, n: usize) -> CubeTensor {
    let ids = targets.clone().float().reshape([n]);
    let ids = prim(&ids).expect("the targets live on a cube device");
    contiguous(ids.cube())
}

#[derive(Debug)]
struct TokenLogprobs;

#[derive(Debug, Clone)]
struct State {
    logits: CubeTensor,
    ids: CubeTensor,
    lse: CubeTensor,
    vocab: u32,
}

impl Backward<Cube, 1> for TokenLogprobs {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Cube>(&ops.node);
        let Some(parent) = parent else { return };
        let g = contiguous(&g);
        let State { logits, ids, lse, vocab } = ops.state;
        let shape = super::dims(&logits);
        let dx = empty(&logits, &shape);
        let client = logits.client.clone();
        let (count, dim) = elementwise(&client, shape.iter().product());
        logprob_backward::launch(
            &client,
            count,
            dim,
            logits.into_tensor_arg(),
            ids.into_tensor_arg(),
            lse.into_tensor_arg(),
            g.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            vocab,
            0,
        );
        grads.register::<Cube>(parent.id, dx);
    }
}
