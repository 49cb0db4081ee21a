//! SwiGLU's gate: `silu(gate) · up`, one pass forward and one backward.
//!
//! Composite form: sigmoid, two multiplies forward; backward recomputes the sigmoid and chains
//! about six more elementwise ops, each a single-threaded pass with a fresh output.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, activation};

use super::simd::{self, multiversion};
use super::{Prim, ad_tensor, contiguous, data, flex_from, for_chunks, for_chunks2, plain_tensor, prims, record};

const CHUNK: usize = 32 * 1024;

/// `silu(gate) · up` for two tensors of the same shape.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    let (gate, up) = match super::gpu::mlp::swiglu(gate, up) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    let Some([pg, pu]) = (if gate.dims() == up.dims() { prims([&gate, &up]) } else { None }) else {
        return activation::silu(gate) * up;
    };
    let dims = gate.dims();
    drop((gate, up));
    let (g, u) = (contiguous(pg.flex()), contiguous(pu.flex()));
    let (gd, ud) = (data(&g), data(&u));
    let mut out = vec![0f32; gd.len()];
    let work = out.len();
    for_chunks(&mut out, CHUNK, work, |c, o| {
        let a = c * CHUNK;
        forward(&gd[a..a + o.len()], &ud[a..a + o.len()], o);
    });
    let out = flex_from(out, &dims);
    match (pg, pu) {
        (Prim::Ad(ag), Prim::Ad(au)) => {
            let nodes = [ag.node(), au.node()];
            drop((ag, au));
            ad_tensor(record(SwiGlu, nodes, (g, u), out))
        }
        _ => plain_tensor(out),
    }
}

multiversion! {
    fn forward(g: &[f32], u: &[f32], out: &mut [f32]) {
        for ((o, &gv), &uv) in out.iter_mut().zip(g).zip(u) {
            *o = gv * simd::sigmoid(gv) * uv;
        }
    }
}

multiversion! {
    /// `dg = dy·u·σ·(1 + g·(1−σ))`, `du = dy·g·σ`.
    fn backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for i in 0..g.len() {
            let s = simd::sigmoid(g[i]);
            let silu = g[i] * s;
            dg[i] = dy[i] * u[i] * (s * (1.0 + g[i] * (1.0 - s)));
            du[i] = dy[i] * silu;
        }
    }
}

#[derive(Debug)]
struct SwiGlu;

impl Backward<Flex, 2> for SwiGlu {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pg, pu] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if pg.is_none() && pu.is_none() {
            return;
        }
        let (g, u) = ops.state;
        let shape = g.layout().shape().clone();
        let dy = contiguous(&dy);
        let (gd, ud, dyd) = (data(&g), data(&u), data(&dy));
        let mut dg = vec![0f32; gd.len()];
        let mut du = vec![0f32; gd.len()];
        let work = dg.len();
        for_chunks2(&mut dg, CHUNK, &mut du, CHUNK, work, |c, a, b| {
            let o = c * CHUNK;
            let n = a.len();
            backward(&gd[o..o + n], &ud[o..o + n], &dyd[o..o + n], a, b);
        });
        if let Some(p) = pg {
            grads.register::<Flex>(p.id, flex_from(dg, &shape));
        }
        if let Some(p) = pu {
            grads.register::<Flex>(p.id, flex_from(du, &shape));
        }
    }
}
