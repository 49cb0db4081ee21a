//! GPU kernels, written in CubeCL for burn's cube backend (wgpu here, CUDA in `cuda` builds),
//! each with its own backward pass: the GPU counterparts of the flex kernels beside this module.
//!
//! On a GPU every step was a chain of burn's composite ops: RMSNorm alone is six kernels
//! forward and more backward, each reading and writing the whole activation; attention kept
//! `[B, H, T, S]` scores and probabilities for the backward pass. Each kernel here does one such
//! chain in one pass:
//!
//! - [`norm`]: RMSNorm, one workgroup per row (forward, `dx`), a two-stage column sum for `dw`;
//! - [`mlp`]: SwiGLU's `silu(gate) · up`, elementwise both ways;
//! - [`rope`]: the head split fused with rotary embedding, and its inverse for the gradient;
//! - [`cross_entropy`]: log-softmax + gather over the vocabulary, one workgroup per row, and
//!   the logit gradient rebuilt from the saved log-sum-exp;
//! - [`head`]: the LM head and those log-probs a chunk of rows at a time, so the
//!   `[B, T, vocab]` logits are never held whole; the backward pass recomputes each chunk;
//! - [`attention`]: scores, mask, softmax and the value product without the `[B, H, T, S]`
//!   tensors: the forward pass keeps one log-sum-exp per query row, the backward pass
//!   recomputes the probabilities from it;
//! - [`optim`]: AdamW on a parameter and its two moments, in place;
//! - [`qlinear`]: `x · Wᵀ` for a frozen weight in a block format (a QLoRA base), repacked once
//!   per device into groups of 16 codes with a scale and an offset, never f32.
//!
//! Each is reached through the same public function as its flex kernel: that function runs
//! the GPU kernel when its tensors are f32 on a cube device, the flex kernel on flex, and the
//! composite ops otherwise (or under [`super::composite`]). `tests/kernels.rs` compares every
//! kernel with its composite form on wgpu (Mesa's lavapipe in CI), values and gradients, after
//! asserting that the two runs took different paths.

pub mod attention;
pub mod cross_entropy;
pub mod head;
pub mod mlp;
pub mod norm;
pub mod optim;
pub mod qlinear;
pub mod rope;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, NodeGuard, OpsKind};
use burn::backend::{Autodiff, Cube};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;
use cubecl::server::CubeCountSelection;

/// The autodiff backend over the cube backend, as `Device::wgpu(..).autodiff()` creates it.
pub(crate) type GAd = Autodiff<Cube, NoCheckpointing>;
/// Its float primitive: a cube tensor plus its graph node.
pub(crate) type GAdTensor = burn::backend::tensor::FloatTensor<GAd>;

/// A float tensor's primitive when it lives on a cube device as f32: plain, or inside autodiff.
pub(crate) enum GPrim {
    Plain(CubeTensor),
    Ad(GAdTensor),
}

impl GPrim {
    pub(crate) fn cube(&self) -> &CubeTensor {
        match self {
            GPrim::Plain(t) => t,
            GPrim::Ad(t) => t.primitive(),
        }
    }

    pub(crate) fn is_ad(&self) -> bool {
        matches!(self, GPrim::Ad(_))
    }
}

/// Whether `t` lives on a cube device (wgpu, CUDA), without building an error to find out.
pub(crate) fn on_cube<const D: usize>(t: &Tensor<D>) -> bool {
    use burn::backend::DispatchDevice;
    match t.device().as_dispatch() {
        DispatchDevice::Cube(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Cube(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The primitive of `t`, or `None` when it is not an f32 tensor on a cube device (or kernels
/// are off).
pub(crate) fn prim<const D: usize>(t: &Tensor<D>) -> Option<GPrim> {
    if !super::enabled() || !on_cube(t) {
        return None;
    }
    if t.is_autodiff() {
        let p = t.clone().try_into_primitive::<GAd>().ok()?;
        (p.primitive().dtype == DType::F32).then_some(GPrim::Ad(p))
    } else {
        let p = t.clone().try_into_primitive::<Cube>().ok()?;
        (p.dtype == DType::F32).then_some(GPrim::Plain(p))
    }
}

/// All primitives of one call, when every one is on a cube device and they agree on autodiff.
pub(crate) fn prims<const N: usize, const D: usize>(ts: [&Tensor<D>; N]) -> Option<[GPrim; N]> {
    let mut out = Vec::with_capacity(N);
    for t in ts {
        out.push(prim(t)?);
    }
    let ad = out[0].is_ad();
    if out.iter().any(|p| p.is_ad() != ad) {
        return None;
    }
    out.try_into().ok()
}

/// Put `out` on the autodiff graph as the result of `op` over `nodes`: with `state` kept for
/// the backward pass when any input is tracked, as a constant otherwise.
pub(crate) fn record<BO: Backward<Cube, N>, const N: usize>(op: BO, nodes: [NodeGuard; N], state: BO::State, out: CubeTensor) -> GAdTensor {
    match op.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// Wrap a result primitive back into a `Tensor`.
pub(crate) fn plain_tensor<const D: usize>(t: CubeTensor) -> Tensor<D> {
    Tensor::from_primitive::<Cube>(t)
}

pub(crate) fn ad_tensor<const D: usize>(t: GAdTensor) -> Tensor<D> {
    Tensor::from_primitive::<GAd>(t)
}

/// `out` as a plain tensor, or recorded on the graph over `nodes` when the inputs were tracked.
pub(crate) fn finish<BO: Backward<Cube, N>, const N: usize, const D: usize>(
    ad: bool,
    op: BO,
    nodes: impl FnOnce() -> [NodeGuard; N],
    state: impl FnOnce() -> BO::State,
    out: CubeTensor,
) -> Tensor<D> {
    if ad { ad_tensor(record(op, nodes(), state(), out)) } else { plain_tensor(out) }
}

/// A contiguous copy of `t` (the same buffer when it already is one).
pub(crate) fn contiguous(t: &CubeTensor) -> CubeTensor {
    into_contiguous(t.clone())
}

/// A new, uninitialised, contiguous f32 tensor on `like`'s device.
pub(crate) fn empty(like: &CubeTensor, shape: &[usize]) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), Shape::from(shape.to_vec()), DType::F32)
}

pub(crate) fn dims(t: &CubeTensor) -> Vec<usize> {
    t.meta.shape().iter().copied().collect()
}

/// Launch geometry for one unit per element.
pub(crate) fn elementwise(client: &cubecl::client::Client, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (calculate_cube_count_elemwise(client, n, dim), dim)
}

/// Launch geometry for one workgroup per row: the cube count (spread over the axes the device
/// allows; a kernel skips the positions past `rows`) and a power-of-two unit count for tree
/// reductions in shared memory.
pub(crate) fn per_row(client: &cubecl::client::Client, rows: usize) -> (CubeCount, CubeDim, usize) {
    let max_units = client.properties().hardware.max_units_per_cube.max(1);
    let cap = 256u32.min(max_units);
    let units = if cap.is_power_of_two() { cap } else { cap.next_power_of_two() >> 1 };
    let rows = u32::try_from(rows).expect("row count fits in u32");
    (CubeCountSelection::new(client, rows).cube_count(), CubeDim::new_1d(units), units as usize)
}

/// Sum (or, with `max`, maximum) of `v` over the units of a workgroup, as a tree through
/// `shared` (one slot per unit; the unit count a power of two). Every unit gets the result.
#[cube]
fn block_reduce(shared: &mut Shared<[f32]>, v: f32, #[comptime] max: bool) -> f32 {
    shared[UNIT_POS as usize] = v;
    sync_cube();
    let mut active = CUBE_DIM / 2;
    while active > 0 {
        if UNIT_POS < active {
            let other = shared[(UNIT_POS + active) as usize];
            let mine = shared[UNIT_POS as usize];
            shared[UNIT_POS as usize] = if max { select(other > mine, other, mine) } else { mine + other };
        }
        sync_cube();
        active /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Sum of `v` over the units of a workgroup ([`block_reduce`]).
#[cube]
pub(crate) fn block_sum(shared: &mut Shared<[f32]>, v: f32) -> f32 {
    block_reduce(shared, v, false)
}

/// Maximum of `v` over the units of a workgroup ([`block_reduce`]).
#[cube]
pub(crate) fn block_max(shared: &mut Shared<[f32]>, v: f32) -> f32 {
    block_reduce(shared, v, true)
}
