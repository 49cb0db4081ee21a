//! `x · W` for the projections and the LM head, straight onto the `gemm` crate.
//!
//! Through burn, a `[B, T, in] · [in, out]` product is a batched matmul with a broadcast weight:
//! its weight gradient comes out as `[B, in, out]` and is then summed over the batch, and every
//! output buffer is allocated zeroed and copied once more to be re-aligned. Here the rows are
//! flattened to `[B·T, in]`, so the forward, the input gradient and the weight gradient are one
//! multi-threaded GEMM each, into buffers written once. A frozen weight (LoRA's base) gets no
//! gradient at all.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;

use super::bf16gemm;
use super::precision::{self, Precision, round_in_place, rounded};
use super::{Prim, ad_tensor, contiguous, data, flex_from, plain_tensor, prim_pair, record};

/// A row-major view of a 2-D operand: pointer offset and (row, column) strides in elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub(crate) offset: usize,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

pub(crate) fn view2(t: &FlexTensor) -> Option<View> {
    let l = t.layout();
    let st = l.strides();
    (st.len() == 2 && st[0] >= 0 && st[1] >= 0).then(|| View { offset: l.start_offset(), rs: st[0], cs: st[1] })
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]`, dst row-major and written in full.
fn gemm(m: usize, n: usize, k: usize, lhs: (&[f32], View), rhs: (&[f32], View)) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let par = if m.saturating_mul(n).saturating_mul(k) >= 96 * 96 * 96 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the pointers and strides describe in-bounds views (checked by the callers'
    // shapes); with `read_dst = false` gemm writes every element of the m×n output before
    // `set_len` exposes it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.0.as_ptr().add(lhs.1.offset),
            lhs.1.cs,
            lhs.1.rs,
            rhs.0.as_ptr().add(rhs.1.offset),
            rhs.1.cs,
            rhs.1.rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
        out.set_len(m * n);
    }
    out
}

/// `x · w` over the last dimension of `x` (`[..., in]`) with `w` `[in, out]` (any strides).
///
/// In bf16/f16 ([`precision::current`]) the operands and the result are rounded to it and the
/// products accumulate in f32; in the backward pass the incoming gradient, `dx` and `dw` are
/// rounded too, as under `torch.autocast`. The rounded weight is a transient copy, made again in
/// the backward pass, so the graph holds no second copy of the weights.
pub fn matmul_last<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let [din, dout] = w.dims();
    let prec = precision::current();
    let Some((px, pw)) = prim_pair(&x, &w).filter(|_| dims[D - 1] == din && din > 0) else {
        // Rows folded into one 2-D product, as burn's own `linear` does for float weights; a
        // transposed (tied) weight stays a strided view.
        let rows = dims.iter().product::<usize>() / din.max(1);
        let mut out_dims = dims;
        out_dims[D - 1] = dout;
        let (x, w) = (precision::round(x), precision::round(w));
        return precision::round(x.reshape([rows, din]).matmul(w).reshape(out_dims));
    };
    drop((x, w));
    let rows = dims.iter().product::<usize>() / din;
    // The bf16 kernel rounds its operands as it packs them: `x` needs a rounded copy only when
    // the forward product or the weight gradient (which reads the stored `x`) may take the f32
    // GEMM on rounded operands instead.
    let kernel_only = prec == Precision::Bf16 && bf16gemm::worth(rows, dout, din) && bf16gemm::worth(din, dout, rows);
    let xs = if prec == Precision::F32 || kernel_only {
        contiguous(px.flex())
    } else {
        let c = contiguous(px.flex());
        flex_from(rounded(prec, data(&c)), &[rows * din])
    };
    let ws = pw.flex().clone();
    let ws = if view2(&ws).is_some() { ws } else { contiguous(&ws) };
    finish(px, pw, xs, ws, rows, din, dout, dims, prec)
}

/// `w` `[din, dout]` (any strides) rounded to `prec`, as a contiguous row-major copy.
fn rounded_weight(w: &FlexTensor, prec: Precision) -> FlexTensor {
    let c = contiguous(w);
    let shape = c.layout().shape().to_vec();
    flex_from(rounded(prec, data(&c)), &shape)
}

#[allow(clippy::too_many_arguments)]
fn finish<const D: usize>(
    px: Prim,
    pw: Prim,
    xs: FlexTensor,
    ws: FlexTensor,
    rows: usize,
    din: usize,
    dout: usize,
    dims: [usize; D],
    prec: Precision,
) -> Tensor<D> {
    let xv = View { offset: 0, rs: din as isize, cs: 1 };
    let mut y = if prec == Precision::F32 {
        let wv = view2(&ws).expect("2-D weight");
        gemm(rows, dout, din, (data(&xs), xv), (ws.storage::<f32>(), wv))
    } else if prec == Precision::Bf16 && bf16gemm::worth(rows, dout, din) {
        let wv = view2(&ws).expect("2-D weight");
        bf16gemm::gemm_bf16(rows, dout, din, (data(&xs), xv), (ws.storage::<f32>(), wv))
    } else {
        let wr = rounded_weight(&ws, prec);
        gemm(rows, dout, din, (data(&xs), xv), (data(&wr), View { offset: 0, rs: dout as isize, cs: 1 }))
    };
    round_in_place(prec, &mut y);
    let mut out_dims = dims;
    out_dims[D - 1] = dout;
    let out = flex_from(y, &out_dims);
    match (px, pw) {
        (Prim::Ad(ax), Prim::Ad(aw)) => {
            let nodes = [ax.node(), aw.node()];
            drop((ax, aw));
            ad_tensor(record(Linear, nodes, LinearState { x: xs, w: ws, rows, din, dout, x_dims: dims.to_vec(), prec }, out))
        }
        _ => plain_tensor(out),
    }
}

#[derive(Debug)]
struct Linear;

#[derive(Debug, Clone)]
struct LinearState {
    /// `[rows, din]`, contiguous.
    x: FlexTensor,
    /// `[din, dout]`, any strides.
    w: FlexTensor,
    rows: usize,
    din: usize,
    dout: usize,
    x_dims: Vec<usize>,
    /// The compute precision of the forward pass. `x` is rounded to it, unless every product
    /// that reads it runs on the bf16 kernel, which rounds while packing.
    prec: Precision,
}

impl Backward<Flex, 2> for Linear {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if px.is_none() && pw.is_none() {
            return;
        }
        let s = ops.state;
        let prec = s.prec;
        let dy = contiguous(&dy);
        // As in the forward pass: a rounded copy of dy only for products off the bf16 kernel.
        let dx_kernel = prec == Precision::Bf16 && bf16gemm::worth(s.rows, s.din, s.dout);
        let dw_kernel = prec == Precision::Bf16 && bf16gemm::worth(s.din, s.dout, s.rows);
        let kernel_only = (px.is_none() || dx_kernel) && (pw.is_none() || dw_kernel);
        let dy = if prec == Precision::F32 || kernel_only { dy } else { flex_from(rounded(prec, data(&dy)), &[s.rows * s.dout]) };
        let dyv = View { offset: 0, rs: s.dout as isize, cs: 1 };
        if let Some(p) = px {
            // dx[rows, din] = dy[rows, dout] · wᵀ[dout, din]
            let mut dx = if prec == Precision::F32 {
                let wv = view2(&s.w).expect("2-D weight");
                let wt = View { offset: wv.offset, rs: wv.cs, cs: wv.rs };
                gemm(s.rows, s.din, s.dout, (data(&dy), dyv), (s.w.storage::<f32>(), wt))
            } else if dx_kernel {
                let wv = view2(&s.w).expect("2-D weight");
                let wt = View { offset: wv.offset, rs: wv.cs, cs: wv.rs };
                bf16gemm::gemm_bf16(s.rows, s.din, s.dout, (data(&dy), dyv), (s.w.storage::<f32>(), wt))
            } else {
                let wr = rounded_weight(&s.w, prec);
                let wt = View { offset: 0, rs: 1, cs: s.dout as isize };
                gemm(s.rows, s.din, s.dout, (data(&dy), dyv), (data(&wr), wt))
            };
            round_in_place(prec, &mut dx);
            grads.register::<Flex>(p.id, flex_from(dx, &s.x_dims));
        }
        if let Some(p) = pw {
            // dw[din, dout] = xᵀ[din, rows] · dy[rows, dout]
            let xt = View { offset: 0, rs: 1, cs: s.din as isize };
            let mut dw = if dw_kernel {
                bf16gemm::gemm_bf16(s.din, s.dout, s.rows, (data(&s.x), xt), (data(&dy), dyv))
            } else {
                gemm(s.din, s.dout, s.rows, (data(&s.x), xt), (data(&dy), dyv))
            };
            round_in_place(prec, &mut dw);
            grads.register::<Flex>(p.id, flex_from(dw, &[s.din, s.dout]));
        }
    }
}
