//! AdamW on the GPU: the moments and the parameter updated in one elementwise pass, in place
//! when nothing else holds the buffers (the composite form makes about ten passes, each into
//! a fresh buffer). The f32 operations are those of the flex kernel and of the composite form
//! in `train/optim.rs`, in the same order.

use burn::backend::Cube;
use burn::tensor::{DType, Tensor as BTensor};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::super::optim::{AdamWInputs, AdamWStep};
use super::{elementwise, empty};

#[cube(launch)]
fn adamw_kernel(
    p: &mut Tensor<f32>,
    g: &Tensor<f32>,
    m: &mut Tensor<f32>,
    v: &mut Tensor<f32>,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    sqrt_bc2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    grad_scale: f32,
    #[comptime] first: bool,
    #[comptime] with_decay: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= p.len() {
        terminate!();
    }
    let gs = g[i] * grad_scale;
    let mut mi = gs * one_minus_beta1;
    let mut vi = (gs * gs) * one_minus_beta2;
    if !first {
        mi = m[i] * beta1 + gs * one_minus_beta1;
        vi = v[i] * beta2 + (gs * gs) * one_minus_beta2;
    }
    m[i] = mi;
    v[i] = vi;
    let denom = vi.sqrt() / sqrt_bc2 + eps;
    let mut pi = p[i];
    if with_decay {
        pi *= decay;
    }
    p[i] = pi - (mi / denom) * step_size;
}

/// A plain f32 cube tensor's primitive, checked without building an error.
fn cube_f32(t: &BTensor<1>) -> bool {
    super::super::enabled()
        && !t.is_autodiff()
        && super::on_cube(t)
        && t.clone().try_into_primitive::<Cube>().is_ok_and(|p| p.dtype == DType::F32)
}

/// A contiguous buffer with `t`'s values that this update may overwrite: `t`'s own when
/// nothing else holds it, else a copy.
fn writable(t: BTensor<1>) -> CubeTensor {
    let t = burn_cubecl::kernel::into_contiguous(t.try_into_primitive::<Cube>().expect("checked cube tensor"));
    if t.can_mut() && t.is_contiguous_buffer() { t } else { t.copy() }
}

/// [`super::super::optim::adamw_update`] on a cube device: `Ok` with the new `(p, m, v)`, or
/// the inputs back when they are not plain f32 cube tensors.
pub(crate) fn adamw_update(
    p: BTensor<1>,
    g: BTensor<1>,
    mv: Option<(BTensor<1>, BTensor<1>)>,
    h: AdamWStep,
) -> Result<(BTensor<1>, BTensor<1>, BTensor<1>), AdamWInputs> {
    let n = p.dims()[0];
    let ok = cube_f32(&p) && cube_f32(&g) && mv.as_ref().is_none_or(|(m, v)| cube_f32(m) && cube_f32(v));
    if !ok || g.dims()[0] != n {
        return Err((p, g, mv));
    }
    let gt = super::contiguous(&g.try_into_primitive::<Cube>().expect("checked cube tensor"));
    let first = mv.is_none();
    let pt = writable(p);
    let (mt, vt) = match mv {
        Some((m, v)) => (writable(m), writable(v)),
        None => (empty(&pt, &[n]), empty(&pt, &[n])),
    };
    let client = pt.client.clone();
    let (count, dim) = elementwise(&client, n);
    adamw_kernel::launch(
        &client,
        count,
        dim,
        pt.clone().into_tensor_arg(),
        gt.into_tensor_arg(),
        mt.clone().into_tensor_arg(),
        vt.clone().into_tensor_arg(),
        h.beta1,
        h.beta2,
        h.one_minus_beta1,
        h.one_minus_beta2,
        h.sqrt_bc2,
        h.eps,
        h.decay.unwrap_or(1.0),
        h.step_size,
        h.grad_scale,
        first,
        h.decay.is_some(),
    );
    Ok((BTensor::from_primitive::<Cube>(pt), BTensor::from_primitive::<Cube>(mt), BTensor::from_primitive::<Cube>(vt)))
}
