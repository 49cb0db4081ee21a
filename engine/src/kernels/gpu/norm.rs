//! RMSNorm on the GPU: `y = x · rsqrt(mean(x²) + eps) · w` over the last dimension.
//!
//! Forward and `dx` run one workgroup per row (a shared-memory sum of the row); the forward
//! pass keeps `rsqrt(mean(x²) + eps)` per row for the backward pass. `dw = Σ_rows dy·x·r` is a
//! column sum: each workgroup sums a block of rows, then one pass adds the blocks in order, so
//! the result is the same on every run.

use burn::backend::Cube;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::Tensor as BTensor;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{GPrim, block_sum, contiguous, dims, elementwise, empty, finish, per_row};

#[cube(launch)]
fn rms_forward(x: &Tensor<f32>, w: &Tensor<f32>, y: &mut Tensor<f32>, rinv: &mut Tensor<f32>, eps: f32, #[comptime] units: usize) {
    let row = CUBE_POS;
    let rows = rinv.len();
    if row >= rows {
        terminate!();
    }
    let h = w.len();
    let base = row * h;
    let mut shared = Shared::<[f32]>::new_slice(units);
    let mut acc = 0.0f32;
    let mut j = UNIT_POS as usize;
    while j < h {
        let v = x[base + j];
        acc += v * v;
        j += units;
    }
    let ss = block_sum(&mut shared, acc);
    let r = 1.0f32 / (ss / f32::cast_from(h) + eps).sqrt();
    let mut j = UNIT_POS as usize;
    while j < h {
        y[base + j] = x[base + j] * r * w[j];
        j += units;
    }
    if UNIT_POS == 0 {
        rinv[row] = r;
    }
}

/// `dx = r·(dy·w) − x · r³/H · Σ(dy·w·x)`, one workgroup per row.
#[cube(launch)]
fn rms_backward_x(x: &Tensor<f32>, w: &Tensor<f32>, dy: &Tensor<f32>, rinv: &Tensor<f32>, dx: &mut Tensor<f32>, #[comptime] units: usize) {
    let row = CUBE_POS;
    if row >= rinv.len() {
        terminate!();
    }
    let h = w.len();
    let base = row * h;
    let mut shared = Shared::<[f32]>::new_slice(units);
    let mut acc = 0.0f32;
    let mut j = UNIT_POS as usize;
    while j < h {
        acc += dy[base + j] * w[j] * x[base + j];
        j += units;
    }
    let dot = block_sum(&mut shared, acc);
    let r = rinv[row];
    let k = r * r * r / f32::cast_from(h) * dot;
    let mut j = UNIT_POS as usize;
    while j < h {
        dx[base + j] = r * (dy[base + j] * w[j]) - x[base + j] * k;
        j += units;
    }
}

/// Rows per block of the weight gradient's first stage.
const DW_ROWS: usize = 64;

/// `part[b, j] = Σ_{rows of block b} dy·x·r`, one unit per (block, column).
#[cube(launch)]
fn rms_dw_partial(x: &Tensor<f32>, dy: &Tensor<f32>, rinv: &Tensor<f32>, part: &mut Tensor<f32>, h: u32, #[comptime] block: usize) {
    let pos = ABSOLUTE_POS;
    if pos >= part.len() {
        terminate!();
    }
    let h = h as usize;
    let b = pos / h;
    let j = pos % h;
    let rows = rinv.len();
    let start = b * block;
    let end = select(start + block < rows, start + block, rows);
    let mut acc = 0.0f32;
    for row in start..end {
        acc += dy[row * h + j] * x[row * h + j] * rinv[row];
    }
    part[pos] = acc;
}

/// `out[j] = Σ_b part[b, j]`, blocks added in order.
#[cube(launch)]
pub(crate) fn column_sum(part: &Tensor<f32>, out: &mut Tensor<f32>) {
    let j = ABSOLUTE_POS;
    let h = out.len();
    if j >= h {
        terminate!();
    }
    let blocks = part.len() / h;
    let mut acc = 0.0f32;
    for b in 0..blocks {
        acc += part[b * h + j];
    }
    out[j] = acc;
}

/// RMSNorm of `x` (`[..., H]`) with weight `w` (`[H]`) on a cube device, or `None` (with the
/// inputs given back) when they are not both f32 cube tensors.
pub(crate) fn rms_norm<const D: usize>(x: BTensor<D>, w: BTensor<1>, eps: f64) -> Result<BTensor<D>, (BTensor<D>, BTensor<1>)> {
    let h = x.dims()[D - 1];
    let Some([px, pw]) = (if w.dims()[0] == h { pair(&x, &w) } else { None }) else {
        return Err((x, w));
    };
    drop((x, w));
    let (xs, ws) = (contiguous(px.cube()), contiguous(pw.cube()));
    let shape = dims(&xs);
    let rows = shape.iter().product::<usize>() / h.max(1);
    let y = empty(&xs, &shape);
    let rinv = empty(&xs, &[rows]);
    let client = xs.client.clone();
    let (count, dim, units) = per_row(&client, rows);
    rms_forward::launch(
        &client,
        count,
        dim,
        xs.clone().into_tensor_arg(),
        ws.clone().into_tensor_arg(),
        y.clone().into_tensor_arg(),
        rinv.clone().into_tensor_arg(),
        eps as f32,
        units,
    );
    let ad = px.is_ad();
    Ok(finish(
        ad,
        RmsNorm,
        || match (&px, &pw) {
            (GPrim::Ad(a), GPrim::Ad(b)) => [a.node(), b.node()],
            _ => unreachable!("both inputs are tracked"),
        },
        || (xs, ws, rinv),
        y,
    ))
}

/// The two primitives when both are cube f32 tensors agreeing on autodiff.
fn pair<const D: usize>(x: &BTensor<D>, w: &BTensor<1>) -> Option<[GPrim; 2]> {
    let (a, b) = (super::prim(x)?, super::prim(w)?);
    (a.is_ad() == b.is_ad()).then_some([a, b])
}

#[derive(Debug)]
struct RmsNorm;

impl Backward<Cube, 2> for RmsNorm {
    type State = (CubeTensor, CubeTensor, CubeTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw] = ops.parents;
        let dy = grads.consume::<Cube>(&ops.node);
        if px.is_none() && pw.is_none() {
            return;
        }
        let (x, w, rinv) = ops.state;
        let dy = contiguous(&dy);
        let shape = dims(&x);
        let h = w.meta.shape()[0];
        let rows = rinv.meta.shape()[0];
        let client = x.client.clone();
        if let Some(p) = px {
            let dx = empty(&x, &shape);
            let (count, dim, units) = per_row(&client, rows);
            rms_backward_x::launch(
                &client,
                count,
                dim,
                x.clone().into_tensor_arg(),
                w.clone().into_tensor_arg(),
                dy.clone().into_tensor_arg(),
                rinv.clone().into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                units,
            );
            grads.register::<Cube>(p.id, dx);
        }
        if let Some(p) = pw {
            let blocks = rows.div_ceil(DW_ROWS).max(1);
            let part = empty(&x, &[blocks, h]);
            let (count, dim) = elementwise(&client, blocks * h);
            rms_dw_partial::launch(
                &client,
                count,
                dim,
                x.into_tensor_arg(),
                dy.into_tensor_arg(),
                rinv.into_tensor_arg(),
                part.clone().into_tensor_arg(),
                u32::try_from(h).expect("hidden size fits in u32"),
                DW_ROWS,
            );
            let dw = empty(&w, &[h]);
            let (count, dim) = elementwise(&client, h);
            column_sum::launch(&client, count, dim, part.into_tensor_arg(), dw.clone().into_tensor_arg());
            grads.register::<Cube>(p.id, dw);
        }
    }
}
