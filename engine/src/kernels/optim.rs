//! The optimiser's elementwise work, in place: AdamW's moment and parameter update in one pass
//! (the composite form makes about ten passes over every parameter, each allocating a fresh
//! buffer), and the sum of squares behind the global gradient norm.
//!
//! The update does the same f32 operations in the same order as the composite form in
//! `train/optim.rs`, so both give bit-identical parameters.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::simd::multiversion;
use super::{PAR_MIN, data, enabled, exclusive_buf, flex_from, map_range};

const CHUNK: usize = 64 * 1024;

/// AdamW's scalars for one step, as f32 (what burn's scalar ops use on f32 tensors).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub sqrt_bc2: f32,
    pub eps: f32,
    /// `1 - lr·weight_decay`, or `None` without weight decay.
    pub decay: Option<f32>,
    /// `lr / bc1`.
    pub step_size: f32,
    pub grad_scale: f32,
}

fn is_flex_f32(t: &Tensor<1>) -> bool {
    enabled() && !super::gpu::on_cube(t) && t.clone().try_into_primitive::<Flex>().is_ok_and(|p| p.dtype() == DType::F32)
}

/// An owned contiguous buffer with the values of `t`, reusing its storage when nothing else holds it.
fn owned(t: Tensor<1>) -> FlexTensor {
    let mut t = t.try_into_primitive::<Flex>().expect("checked flex tensor");
    if exclusive_buf(&mut t).is_some() {
        return t;
    }
    let n = t.layout().num_elements();
    flex_from(data(&super::contiguous(&t)).to_vec(), &[n])
}

/// The inputs of [`adamw_update`], handed back when they are not plain f32 flex tensors.
pub type AdamWInputs = (Tensor<1>, Tensor<1>, Option<(Tensor<1>, Tensor<1>)>);

/// One AdamW update of a flattened parameter `p` with gradient `g` and moments `(m, v)`
/// (`None` on the first step), in place where the buffers are not shared. Returns the new
/// `(p, m, v)`, or the inputs back when they are not plain f32 flex tensors (the caller then
/// runs the composite form).
pub fn adamw_update(
    p: Tensor<1>,
    g: Tensor<1>,
    mv: Option<(Tensor<1>, Tensor<1>)>,
    h: AdamWStep,
) -> Result<(Tensor<1>, Tensor<1>, Tensor<1>), AdamWInputs> {
    let (p, g, mv) = match super::gpu::optim::adamw_update(p, g, mv, h) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    let n = p.dims()[0];
    let ok = is_flex_f32(&p) && is_flex_f32(&g) && mv.as_ref().is_none_or(|(m, v)| is_flex_f32(m) && is_flex_f32(v));
    if !ok || g.dims()[0] != n {
        return Err((p, g, mv));
    }
    let gp = super::contiguous(&g.try_into_primitive::<Flex>().expect("checked flex tensor"));
    let gd = data(&gp);
    let first = mv.is_none();
    let mut pt = owned(p);
    let (mut mt, mut vt) = match mv {
        Some((m, v)) => (owned(m), owned(v)),
        None => (flex_from(vec![0f32; n], &[n]), flex_from(vec![0f32; n], &[n])),
    };
    {
        let pb = exclusive_buf(&mut pt).expect("owned buffer");
        let mb = exclusive_buf(&mut mt).expect("owned buffer");
        let vb = exclusive_buf(&mut vt).expect("owned buffer");
        let run = |c: usize, pc: &mut [f32], mc: &mut [f32], vc: &mut [f32]| {
            let o = c * CHUNK;
            update(pc, &gd[o..o + pc.len()], mc, vc, h, first);
        };
        if n < PAR_MIN {
            run(0, pb, mb, vb);
        } else {
            pb.par_chunks_mut(CHUNK)
                .zip(mb.par_chunks_mut(CHUNK))
                .zip(vb.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, ((pc, mc), vc))| run(c, pc, mc, vc));
        }
    }
    Ok((Tensor::from_primitive::<Flex>(pt), Tensor::from_primitive::<Flex>(mt), Tensor::from_primitive::<Flex>(vt)))
}

multiversion! {
    fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamWStep, first: bool) {
        for i in 0..p.len() {
            let gs = g[i] * h.grad_scale;
            let (mi, vi) = if first {
                (gs * h.one_minus_beta1, (gs * gs) * h.one_minus_beta2)
            } else {
                (m[i] * h.beta1 + gs * h.one_minus_beta1, v[i] * h.beta2 + (gs * gs) * h.one_minus_beta2)
            };
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() / h.sqrt_bc2 + h.eps;
            let pi = match h.decay {
                Some(d) => p[i] * d,
                None => p[i],
            };
            p[i] = pi - (mi / denom) * h.step_size;
        }
    }
}

multiversion! {
    fn chunk_sum_squares(x: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let full = x.len() / 8 * 8;
        for c in x[..full].chunks_exact(8) {
            for i in 0..8 {
                acc[i] += (c[i] as f64) * (c[i] as f64);
            }
        }
        let mut s: f64 = acc.iter().sum();
        for &r in &x[full..] {
            s += (r as f64) * (r as f64);
        }
        s
    }
}

/// `Σ x²` of a flex tensor in f64 (fixed chunks summed in order, so the same on every run), or
/// `None` off flex.
pub fn sum_squares<const D: usize>(t: &Tensor<D>) -> Option<f64> {
    if !enabled() {
        return None;
    }
    let p = t.clone().try_into_primitive::<Flex>().ok().filter(|p| p.dtype() == DType::F32)?;
    let p = super::contiguous(&p);
    let d = data(&p);
    let parts = map_range(d.len().div_ceil(CHUNK), d.len(), |c| chunk_sum_squares(&d[c * CHUNK..((c + 1) * CHUNK).min(d.len())]));
    Some(parts.iter().sum())
}
