//! SwiGLU's gate on the GPU: `silu(gate) · up`, one elementwise pass each way (the composite
//! form is a sigmoid and two products forward, and about six more passes backward).

use burn::backend::Cube;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::Tensor as BTensor;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{GPrim, contiguous, dims, elementwise, empty, finish, prims};

#[cube(launch)]
fn swiglu_forward(g: &Tensor<f32>, u: &Tensor<f32>, out: &mut Tensor<f32>) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let gv = g[i];
    let s = 1.0f32 / (1.0f32 + (-gv).exp());
    out[i] = gv * s * u[i];
}

/// `dg = dy·u·σ·(1 + g·(1−σ))`, `du = dy·g·σ`.
#[cube(launch)]
fn swiglu_backward(g: &Tensor<f32>, u: &Tensor<f32>, dy: &Tensor<f32>, dg: &mut Tensor<f32>, du: &mut Tensor<f32>) {
    let i = ABSOLUTE_POS;
    if i >= dg.len() {
        terminate!();
    }
    let gv = g[i];
    let s = 1.0f32 / (1.0f32 + (-gv).exp());
    dg[i] = dy[i] * u[i] * (s * (1.0f32 + gv * (1.0f32 - s)));
    du[i] = dy[i] * gv * s;
}

/// `silu(gate) · up` on a cube device, or the inputs back when they are not f32 cube tensors
/// of one shape.
pub(crate) fn swiglu<const D: usize>(gate: BTensor<D>, up: BTensor<D>) -> Result<BTensor<D>, (BTensor<D>, BTensor<D>)> {
    let Some([pg, pu]) = (if gate.dims() == up.dims() { prims([&gate, &up]) } else { None }) else {
        return Err((gate, up));
    };
    drop((gate, up));
    let (g, u) = (contiguous(pg.cube()), contiguous(pu.cube()));
    let shape = dims(&g);
    let n: usize = shape.iter().product();
    let out = empty(&g, &shape);
    let client = g.client.clone();
    let (count, dim) = elementwise(&client, n);
    swiglu_forward::launch(&client, count, dim, g.clone().into_tensor_arg(), u.clone().into_tensor_arg(), out.clone().into_tensor_arg());
    Ok(finish(
        pg.is_ad(),
        SwiGlu,
        || match (&pg, &pu) {
            (GPrim::Ad(a), GPrim::Ad(b)) => [a.node(), b.node()],
            _ => unreachable!("both inputs are tracked"),
        },
        || (g, u),
        out,
    ))
}

#[derive(Debug)]
struct SwiGlu;

impl Backward<Cube, 2> for SwiGlu {
    type State = (CubeTensor, CubeTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pg, pu] = ops.parents;
        let dy = grads.consume::<Cube>(&ops.node);
        if pg.is_none() && pu.is_none() {
            return;
        }
        let (g, u) = ops.state;
        let dy = contiguous(&dy);
        let shape = dims(&g);
        let n: usize = shape.iter().product();
        let (dg, du) = (empty(&g, &shape), empty(&g, &shape));
        let client = g.client.clone();
        let (count, dim) = elementwise(&client, n);
        swiglu_backward::launch(
            &client,
            count,
            dim,
            g.into_tensor_arg(),
            u.into_tensor_arg(),
            dy.into_tensor_arg(),
            dg.clone().into_tensor_arg(),
            du.clone().into_tensor_arg(),
        );
        if let Some(p) = pg {
            grads.register::<Cube>(p.id, dg);
        }
        if let Some(p) = pu {
            grads.register::<Cube>(p.id, du);
        }
    }
}
