//! `x · Wᵀ` for a frozen weight kept in its storage format (`io::quant::PackedMatrix`, PyTorch's
//! `[out, in]` layout, as GGUF and safetensors hold it), so a model's frozen base never exists
//! whole in f32:
//!
//! - many rows (prefill, training): `W` is dequantised a tile of rows at a time into an f32
//!   buffer and multiplied with one GEMM per tile;
//! - a few rows (decoding): each output is a dot product computed block by block straight from
//!   the packed bytes, so decoding reads 4–16 bits per weight instead of 32.
//!
//! The backward pass gives `x` its gradient, `dx = dy · W`, tile by tile; `W` is frozen and takes
//! none. Off flex (wgpu, CUDA, or with fused kernels off) the weight is dequantised whole and
//! multiplied with burn's ops, so every backend computes the same function.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::simd::{multiversion, sum_zip};
use super::{Prim, ad_tensor, contiguous, data, flex_from, gemm_into, plain_tensor, prim, record};
use crate::io::quant::{PackedMatrix, dequant_into};

/// Up to this many rows of `x`, a product is computed as dot products from the packed bytes.
const DOT_ROWS: usize = 8;
/// Rows of `W` dequantised per tile in the GEMM path.
const TILE: usize = 256;

/// `x · Wᵀ` over the last dimension of `x` (`[..., in]`), with `w` `[out, in]` packed.
pub fn packed_matmul<const D: usize>(x: Tensor<D>, w: &Arc<PackedMatrix>) -> Tensor<D> {
    let dims = x.dims();
    let (dout, din) = (w.rows, w.cols);
    assert_eq!(dims[D - 1], din, "packed_matmul: input has {} features, the weight {din}", dims[D - 1]);
    let rows = dims.iter().product::<usize>() / din.max(1);
    let mut out_dims = dims;
    out_dims[D - 1] = dout;
    let Some(px) = prim(&x) else {
        // Composite: the whole weight as a tensor on x's device.
        let h = w.to_host();
        let wt = Tensor::<2>::from_data(TensorData::new(h.data, [dout, din]), &x.device());
        return x.reshape([rows, din]).matmul(wt.transpose()).reshape(out_dims);
    };
    drop(x);
    let xs = contiguous(px.flex());
    let y = forward(data(&xs), rows, w);
    let out = flex_from(y, &out_dims);
    match px {
        Prim::Ad(ax) => {
            let nodes = [ax.node()];
            drop(ax);
            ad_tensor(record(PackedLinear, nodes, PackedState { w: w.clone(), rows, x_dims: dims.to_vec() }, out))
        }
        Prim::Plain(_) => plain_tensor(out),
    }
}

/// `y[rows, out] = x[rows, in] · Wᵀ`.
pub(crate) fn forward(x: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
    let (dout, din) = (w.rows, w.cols);
    if rows <= DOT_ROWS {
        // Each task takes a run of output features; y is written transposed, then turned. Small
        // products stay on this thread (handing them to the pool costs more than they take).
        let per = (dout / (rayon::current_num_threads() * 4)).clamp(16, 1024);
        let task = |c: usize| {
            let (o0, o1) = (c * per, ((c + 1) * per).min(dout));
            let mut part = vec![0f32; (o1 - o0) * rows];
            let mut buf = vec![0f32; din];
            for (k, o) in (o0..o1).enumerate() {
                dot_row(w, o, x, rows, &mut buf, &mut part[k * rows..(k + 1) * rows]);
            }
            part
        };
        let n = dout.div_ceil(per);
        let yt: Vec<Vec<f32>> =
            if dout * din < (1 << 19) { (0..n).map(task).collect() } else { (0..n).into_par_iter().map(task).collect() };
        let mut y = vec![0f32; rows * dout];
        let mut o = 0;
        for part in yt {
            for row in part.chunks_exact(rows) {
                for r in 0..rows {
                    y[r * dout + o] = row[r];
                }
                o += 1;
            }
        }
        return y;
    }
    let mut y = vec![0f32; rows * dout];
    let mut tile = vec![0f32; TILE.min(dout) * din];
    for o0 in (0..dout).step_by(TILE) {
        let o1 = (o0 + TILE).min(dout);
        dequant_tile(w, o0, o1, &mut tile[..(o1 - o0) * din]);
        // y[:, o0..o1] = x · tileᵀ, written into y's columns (row stride dout).
        gemm_into(&mut y[o0..], dout, rows, o1 - o0, din, x, din as isize, 1, &tile, 1, din as isize, false);
    }
    y
}

/// Rows `o0..o1` of `w` into `out`, split over threads.
fn dequant_tile(w: &PackedMatrix, o0: usize, o1: usize, out: &mut [f32]) {
    let din = w.cols;
    debug_assert_eq!(out.len(), (o1 - o0) * din);
    out.par_chunks_mut(din).enumerate().for_each(|(k, row)| w.dequant_rows(o0 + k, o0 + k + 1, row));
}

multiversion! {
    /// `out[r] = x[r] · W[o]` for the `rows` rows of `x`, W's row dequantised block by block.
    fn dot_row(w: &PackedMatrix, o: usize, x: &[f32], rows: usize, buf: &mut [f32], out: &mut [f32]) {
        let din = w.cols;
        dequant_into(w.ty, w.row_data(o, o + 1), buf);
        for r in 0..rows {
            out[r] = sum_zip(buf, &x[r * din..(r + 1) * din], |a, b| a * b);
        }
    }
}

/// `dx[rows, in] = dy[rows, out] · W`, tile by tile.
pub(crate) fn backward_x(dy: &[f32], rows: usize, w: &PackedMatrix) -> Vec<f32> {
    let (dout, din) = (w.rows, w.cols);
    let mut dx = vec![0f32; rows * din];
    let mut tile = vec![0f32; TILE.min(dout) * din];
    for o0 in (0..dout).step_by(TILE) {
        let o1 = (o0 + TILE).min(dout);
        dequant_tile(w, o0, o1, &mut tile[..(o1 - o0) * din]);
        gemm_into(&mut dx, din, rows, din, o1 - o0, &dy[o0..], dout as isize, 1, &tile, din as isize, 1, o0 > 0);
    }
    dx
}

#[derive(Debug)]
struct PackedLinear;

#[derive(Debug, Clone)]
struct PackedState {
    w: Arc<PackedMatrix>,
    rows: usize,
    x_dims: Vec<usize>,
}

impl Backward<Flex, 1> for PackedLinear {
    type State = PackedState;

    fn backward(self, ops: Ops<PackedState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(p) = px else { return };
        let s = ops.state;
        let dy = contiguous(&dy);
        let dx = backward_x(data(&dy), s.rows, &s.w);
        grads.register::<Flex>(p.id, flex_from(dx, &s.x_dims));
    }
}
