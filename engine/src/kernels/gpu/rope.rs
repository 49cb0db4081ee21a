//! Rotary position embedding on the GPU, fused with the head split: `x` `[B, T, H, Dh]` →
//! `[B, H, T, Dh]`, each head vector `x·cos + rotate_half(x)·sin`; the backward pass is the
//! transpose, `[B, H, T, Dh]` → `[B, T, H, Dh]`. One unit per output element each way (the
//! composite form is two slices, a negation, a concatenation, two products, a sum and a copy
//! for the transpose).

use burn::backend::Cube;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::Tensor as BTensor;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{GPrim, contiguous, elementwise, empty, finish, prims};

/// Forward: `out[b, h, t, k]` from `x[b, t, h, ·]`. Backward (`backward`): `out[b, t, h, k]`
/// from `g[b, h, t, ·]` with the transposed rotation. `per_batch`: the tables are
/// `[B, 1, T, Dh]` rather than `[1, 1, T, Dh]`.
#[cube(launch)]
fn rope_kernel(
    src: &Tensor<f32>,
    cos: &Tensor<f32>,
    sin: &Tensor<f32>,
    out: &mut Tensor<f32>,
    t: u32,
    h: u32,
    dh: u32,
    per_batch: u32,
    #[comptime] backward: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let t = t as usize;
    let h = h as usize;
    let dh = dh as usize;
    let half = dh / 2;
    let k = i % dh;
    let rest = i / dh;
    // Output coordinates: forward [b, h, t], backward [b, t, h].
    let bi = rest / (h * t);
    let hi = if backward { rest % h } else { (rest / t) % h };
    let ti = if backward { (rest / h) % t } else { rest % t };
    let tb = select(per_batch == 1, bi, 0usize);
    let tab = (tb * t + ti) * dh;
    let c = cos[tab + k];
    if backward {
        let base = ((bi * h + hi) * t + ti) * dh;
        if k < half {
            out[i] = src[base + k] * c + src[base + k + half] * sin[tab + k + half];
        } else {
            out[i] = src[base + k] * c - src[base + k - half] * sin[tab + k - half];
        }
    } else {
        let base = ((bi * t + ti) * h + hi) * dh;
        let s = sin[tab + k];
        if k < half {
            out[i] = src[base + k] * c - src[base + k + half] * s;
        } else {
            out[i] = src[base + k] * c + src[base + k - half] * s;
        }
    }
}

fn launch(
    src: &CubeTensor,
    cos: &CubeTensor,
    sin: &CubeTensor,
    out: &CubeTensor,
    [_, t, h, dh]: [usize; 4],
    per_batch: bool,
    backward: bool,
) {
    let n = out.meta.shape().iter().product::<usize>();
    let client = src.client.clone();
    let (count, dim) = elementwise(&client, n);
    let u = |v: usize| u32::try_from(v).expect("attention dimension fits in u32");
    rope_kernel::launch(
        &client,
        count,
        dim,
        src.clone().into_tensor_arg(),
        cos.clone().into_tensor_arg(),
        sin.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        u(t),
        u(h),
        u(dh),
        u32::from(per_batch),
        backward,
    );
}

/// The head split with RoPE on a cube device, or the inputs back when they are not f32 cube
/// tensors. `cos`/`sin`: `[B or 1, 1, T, Dh]`.
pub(crate) fn rope_heads(x: BTensor<4>, cos: &BTensor<4>, sin: &BTensor<4>) -> Result<BTensor<4>, BTensor<4>> {
    let Some([px, pc, ps]) = prims([&x, cos, sin]) else {
        return Err(x);
    };
    let [b, t, h, dh] = x.dims();
    let cb = cos.dims()[0];
    assert!(
        dh % 2 == 0 && cos.dims() == [cb, 1, t, dh] && sin.dims() == cos.dims() && (cb == 1 || cb == b),
        "rope_heads: tables do not fit"
    );
    drop(x);
    let xs = contiguous(px.cube());
    let (cs, sn) = (contiguous(pc.cube()), contiguous(ps.cube()));
    let out = empty(&xs, &[b, h, t, dh]);
    let per_batch = cb != 1;
    launch(&xs, &cs, &sn, &out, [b, t, h, dh], per_batch, false);
    drop(xs);
    Ok(finish(
        px.is_ad(),
        RopeHeads,
        || match &px {
            GPrim::Ad(a) => [a.node()],
            GPrim::Plain(_) => unreachable!("the input is tracked"),
        },
        || RopeState { cos: cs, sin: sn, dims: [b, t, h, dh], per_batch },
        out,
    ))
}

#[derive(Debug)]
struct RopeHeads;

#[derive(Debug, Clone)]
struct RopeState {
    cos: CubeTensor,
    sin: CubeTensor,
    dims: [usize; 4],
    per_batch: bool,
}

impl Backward<Cube, 1> for RopeHeads {
    type State = RopeState;

    fn backward(self, ops: Ops<RopeState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Cube>(&ops.node);
        let Some(parent) = parent else { return };
        let st = ops.state;
        let g = contiguous(&g);
        let dx = empty(&g, &st.dims);
        launch(&g, &st.cos, &st.sin, &dx, st.dims, st.per_batch, true);
        grads.register::<Cube>(parent.id, dx);
    }
}
