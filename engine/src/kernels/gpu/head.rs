//! The LM head and the target log-probabilities on the GPU, a chunk of rows at a time, so the
//! `[B, T, vocab]` logits are never held whole (1 GB at 128 K vocab and 4 × 512 tokens in f32),
//! only `[chunk, vocab]` (about 64 MB): for each chunk, `logits = h · W` (burn's matmul), then
//! the log-prob kernel of [`super::cross_entropy`]. The backward pass recomputes each chunk's
//! logits, turns them into `g · (onehot − softmax)` with that file's backward kernel, and adds
//! the chunk's share of `dh = dlogits · Wᵀ` and `dW = hᵀ · dlogits`.

use std::cell::Cell;

use burn::backend::Cube;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{Int, Shape, Slice, Tensor as BTensor};
use burn_cubecl::tensor::CubeTensor;

use super::cross_entropy::{ids_on_device, logprob_backward, logprob_forward};
use super::{GAdTensor, GPrim, ad_tensor, contiguous, elementwise, empty, per_row, plain_tensor, prim, record};

thread_local! {
    static CHUNK_ROWS: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Logit rows computed at once: about 16 M values (64 MB in f32), at least 16 rows.
fn chunk_rows(vocab: usize) -> usize {
    CHUNK_ROWS.get().unwrap_or(((1usize << 24) / vocab.max(1)).max(16))
}

/// Run `f` with chunks of `rows` rows (on this thread), so a test reaches several chunks with
/// a small vocabulary.
#[doc(hidden)]
pub fn with_chunk_rows<R>(rows: usize, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<usize>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CHUNK_ROWS.set(self.0);
        }
    }
    let _reset = Reset(CHUNK_ROWS.replace(Some(rows.max(1))));
    f()
}

fn rows_of(x: &CubeTensor, r0: usize, r1: usize) -> CubeTensor {
    let cols = x.meta.shape()[1];
    Cube::float_slice(x.clone(), &[Slice::from(r0..r1), Slice::from(0..cols)])
}

/// `(log p(target), argmax flag)` per position, `[B, T]` each, from hidden states `[B, T, H]`
/// and a dense head `[H, vocab]` (any strides: a tied embedding's transpose too) on a cube
/// device; or the inputs back when they are not f32 cube tensors agreeing on autodiff.
pub(crate) fn head_logprobs(
    hidden: BTensor<3>,
    w: BTensor<2>,
    targets: &BTensor<2, Int>,
) -> Result<(BTensor<2>, BTensor<2>), (BTensor<3>, BTensor<2>)> {
    let [b, t, h] = hidden.dims();
    let [wh, v] = w.dims();
    let prims = match (prim(&hidden), prim(&w)) {
        (Some(x), Some(wp)) if x.is_ad() == wp.is_ad() && wh == h && v < (1 << 24) => Some((x, wp)),
        _ => None,
    };
    let Some((px, pw)) = prims else { return Err((hidden, w)) };
    drop((hidden, w));
    let n = b * t;
    let x = Cube::float_reshape(contiguous(px.cube()), Shape::from(vec![n, h]));
    let wt = pw.cube().clone();
    let ids = ids_on_device(targets, n);
    let (lp, lse, correct) = (empty(&x, &[b, t]), empty(&x, &[n]), empty(&x, &[b, t]));
    let client = x.client.clone();
    let vocab = u32::try_from(v).expect("vocabulary fits in u32");
    let chunk = chunk_rows(v);
    for r0 in (0..n).step_by(chunk) {
        let r1 = (r0 + chunk).min(n);
        let logits = contiguous(&Cube::float_matmul(rows_of(&x, r0, r1), wt.clone()));
        let (count, dim, units) = per_row(&client, r1 - r0);
        logprob_forward::launch(
            &client,
            count,
            dim,
            logits.into_tensor_arg(),
            ids.clone().into_tensor_arg(),
            lp.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            correct.clone().into_tensor_arg(),
            vocab,
            u32::try_from(r0).expect("row fits in u32"),
            u32::try_from(r1 - r0).expect("row count fits in u32"),
            f32::NAN,
            units,
        );
    }
    Ok(match (px, pw) {
        (GPrim::Ad(ax), GPrim::Ad(aw)) => {
            let nodes = [ax.node(), aw.node()];
            drop((ax, aw));
            let state = State { x, w: wt, ids, lse, x_dims: [b, t, h], vocab: v, chunk };
            (ad_tensor(record(FusedHead, nodes, state, lp)), ad_tensor(GAdTensor::new(correct)))
        }
        _ => (plain_tensor(lp), plain_tensor(correct)),
    })
}

#[derive(Debug)]
struct FusedHead;

#[derive(Debug, Clone)]
struct State {
    /// `[n, H]`, contiguous.
    x: CubeTensor,
    /// `[H, vocab]`, as given.
    w: CubeTensor,
    ids: CubeTensor,
    lse: CubeTensor,
    x_dims: [usize; 3],
    vocab: usize,
    chunk: usize,
}

impl Backward<Cube, 2> for FusedHead {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw] = ops.parents;
        let g = grads.consume::<Cube>(&ops.node);
        if px.is_none() && pw.is_none() {
            return;
        }
        let st = ops.state;
        let g = contiguous(&g);
        let n = st.x.meta.shape()[0];
        let client = st.x.client.clone();
        let vocab = u32::try_from(st.vocab).expect("vocabulary fits in u32");
        let (mut dx_parts, mut dw) = (Vec::new(), None::<CubeTensor>);
        for r0 in (0..n).step_by(st.chunk) {
            let r1 = (r0 + st.chunk).min(n);
            let xc = rows_of(&st.x, r0, r1);
            let logits = contiguous(&Cube::float_matmul(xc.clone(), st.w.clone()));
            let dl = empty(&logits, &[r1 - r0, st.vocab]);
            let (count, dim) = elementwise(&client, (r1 - r0) * st.vocab);
            logprob_backward::launch(
                &client,
                count,
                dim,
                logits.into_tensor_arg(),
                st.ids.clone().into_tensor_arg(),
                st.lse.clone().into_tensor_arg(),
                g.clone().into_tensor_arg(),
                dl.clone().into_tensor_arg(),
                vocab,
                u32::try_from(r0).expect("row fits in u32"),
            );
            if px.is_some() {
                dx_parts.push(Cube::float_matmul(dl.clone(), Cube::float_transpose(st.w.clone())));
            }
            if pw.is_some() {
                let part = Cube::float_matmul(Cube::float_transpose(xc), dl);
                dw = Some(match dw {
                    Some(acc) => Cube::float_add(acc, part),
                    None => part,
                });
            }
        }
        if let Some(p) = px {
            let dx = if dx_parts.len() == 1 { dx_parts.pop().expect("one part") } else { Cube::float_cat(dx_parts, 0) };
            grads.register::<Cube>(p.id, Cube::float_reshape(dx, Shape::from(st.x_dims.to_vec())));
        }
        if let (Some(p), Some(dw)) = (pw, dw) {
            grads.register::<Cube>(p.id, dw);
        }
    }
}
