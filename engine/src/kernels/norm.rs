//! RMSNorm: `y = x · rsqrt(mean(x²) + eps) · w` over the last dimension, as transformers'
//! Llama/Qwen `RMSNorm` computes it in f32.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;

use super::simd::{self, multiversion};
use super::{Prim, ad_tensor, chunk_len, contiguous, data, flex_from, for_chunks, for_chunks2, map_range, plain_tensor, prim_pair, record};

/// RMSNorm of `x` (`[..., H]`) with weight `w` (`[H]`).
pub fn rms_norm<const D: usize>(x: Tensor<D>, w: Tensor<1>, eps: f64) -> Tensor<D> {
    let (x, w) = match super::gpu::norm::rms_norm(x, w, eps) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    let dims = x.dims();
    let hdim = dims[D - 1];
    let Some((px, pw)) = prim_pair(&x, &w).filter(|_| w.dims()[0] == hdim) else {
        let var = x.clone().square().mean_dim(D - 1);
        return x * (var + eps).sqrt().recip() * w.unsqueeze::<D>();
    };
    drop((x, w));
    let (xs, ws) = (contiguous(px.flex()), contiguous(pw.flex()));
    let (xd, wd) = (data(&xs), data(&ws));
    let rows = xd.len() / hdim.max(1);
    let mut out = vec![0f32; xd.len()];
    let mut rinv = vec![0f32; rows];
    let per = chunk_len(rows, hdim, 16 * 1024);
    for_chunks2(&mut out, per * hdim, &mut rinv, per, xd.len(), |c, o, r| {
        for (i, (orow, ri)) in o.chunks_mut(hdim).zip(r.iter_mut()).enumerate() {
            let a = (c * per + i) * hdim;
            *ri = forward_row(&xd[a..a + hdim], wd, eps as f32, orow);
        }
    });
    let out = flex_from(out, &dims);
    match (px, pw) {
        (Prim::Ad(ax), Prim::Ad(aw)) => {
            let nodes = [ax.node(), aw.node()];
            drop((ax, aw));
            ad_tensor(record(RmsNorm, nodes, (xs, ws, std::sync::Arc::new(rinv)), out))
        }
        _ => plain_tensor(out),
    }
}

multiversion! {
    /// One row; returns `rsqrt(mean(x²) + eps)`.
    fn forward_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) -> f32 {
        let ms = simd::sum_map(x, |v| v * v) / x.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((yv, &xv), &wv) in y.iter_mut().zip(x).zip(w) {
            *yv = xv * r * wv;
        }
        r
    }
}

multiversion! {
    /// `dx = r·(dy·w) − x · r³/H · Σ(dy·w·x)` for one row.
    fn backward_row(x: &[f32], w: &[f32], dy: &[f32], r: f32, dx: &mut [f32]) {
        let n = x.len() as f32;
        let mut acc = [0f32; simd::LANES];
        let full = x.len() / simd::LANES * simd::LANES;
        for i in 0..full {
            acc[i % simd::LANES] += dy[i] * w[i] * x[i];
        }
        let mut dot = acc.iter().sum::<f32>();
        for i in full..x.len() {
            dot += dy[i] * w[i] * x[i];
        }
        let k = r * r * r / n * dot;
        for i in 0..x.len() {
            dx[i] = r * (dy[i] * w[i]) - x[i] * k;
        }
    }
}

multiversion! {
    /// `dw += dy · x · r` for the rows of one chunk.
    fn weight_grad(x: &[f32], dy: &[f32], r: &[f32], hdim: usize, dw: &mut [f32]) {
        for (row, &ri) in r.iter().enumerate() {
            let a = row * hdim;
            for j in 0..hdim {
                dw[j] += dy[a + j] * x[a + j] * ri;
            }
        }
    }
}

#[derive(Debug)]
struct RmsNorm;

impl Backward<Flex, 2> for RmsNorm {
    type State = (FlexTensor, FlexTensor, std::sync::Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if px.is_none() && pw.is_none() {
            return;
        }
        let (x, w, rinv) = ops.state;
        let shape = x.layout().shape().clone();
        let dy = contiguous(&dy);
        let (xd, wd, dyd) = (data(&x), data(&w), data(&dy));
        let hdim = wd.len();
        let rows = rinv.len();
        let per = chunk_len(rows, hdim, 16 * 1024);
        if let Some(p) = px {
            let mut dx = vec![0f32; xd.len()];
            let work = dx.len();
            for_chunks(&mut dx, per * hdim, work, |c, d| {
                for (i, drow) in d.chunks_mut(hdim).enumerate() {
                    let row = c * per + i;
                    let a = row * hdim;
                    backward_row(&xd[a..a + hdim], wd, &dyd[a..a + hdim], rinv[row], drow);
                }
            });
            grads.register::<Flex>(p.id, flex_from(dx, &shape));
        }
        if let Some(p) = pw {
            // Partial sums per fixed chunk, added in chunk order: the same result on every run.
            let partials = map_range(rows.div_ceil(per), xd.len(), |c| {
                let (r0, r1) = (c * per, ((c + 1) * per).min(rows));
                let mut dw = vec![0f32; hdim];
                weight_grad(&xd[r0 * hdim..r1 * hdim], &dyd[r0 * hdim..r1 * hdim], &rinv[r0..r1], hdim, &mut dw);
                dw
            });
            let mut dw = vec![0f32; hdim];
            for part in partials {
                for (a, b) in dw.iter_mut().zip(part) {
                    *a += b;
                }
            }
            grads.register::<Flex>(p.id, flex_from(dw, &[hdim]));
        }
    }
}
