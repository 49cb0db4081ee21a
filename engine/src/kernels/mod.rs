//! Fused CPU kernels for burn's `flex` backend, with their own backward passes.
//!
//! burn's flex backend runs every elementwise op on one thread, one op at a time, and its
//! autodiff decorator records composite ops (softmax, SiLU, RMSNorm, RoPE, cross-entropy) as
//! chains of such ops. In a training step that chain of single-threaded passes cost as much
//! wall time as all the matrix multiplies together. Each kernel here does one such chain in one
//! or two passes, split over rayon's threads, with a vectorised `exp`:
//!
//! - [`cross_entropy::token_logprobs`]: log-softmax + gather (+ argmax check) over the LM head;
//! - [`attention::softmax_scores`]: scale, mask and softmax of attention scores;
//! - [`attention::rope_heads`]: the `[B,T,H,Dh] → [B,H,T,Dh]` head split fused with RoPE;
//! - [`linear::matmul_last`]: `x · W` for projections and the LM head, one GEMM per product;
//! - [`qlinear::packed_matmul`]: `x · Wᵀ` for a frozen weight in its storage format (GGUF blocks,
//!   bf16/f16), dequantised a tile at a time, or dot products from the packed bytes to decode;
//! - [`mlp::swiglu`]: `silu(gate) * up`;
//! - [`norm::rms_norm`], RMSNorm;
//! - [`optim::adamw_update`] and [`optim::sum_squares`]: the optimiser's update and the gradient
//!   norm, in place;
//! - [`precision::round`]: rounding to bf16/f16 for mixed-precision training, whose scope
//!   ([`precision::with`]) the products above honour.
//!
//! Every kernel is reached through a function that takes and returns ordinary `Tensor`s. It
//! runs the fused kernel when the tensors live on flex (with or without autodiff), and otherwise
//! (wgpu, CUDA, or `WHETSTONE_FUSED=0`) the composite burn ops it replaces, so every backend
//! computes the same function. Tests in `tests/kernels.rs` check values and gradients of both
//! paths against each other.

pub mod attention;
pub mod bf16gemm;
pub mod cross_entropy;
pub mod gpu;
pub mod head;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod optim;
pub mod precision;
pub mod qlinear;
mod simd;

use std::cell::Cell;
use std::sync::OnceLock;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, NodeGuard, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// The autodiff backend over flex that `Device::flex().autodiff()` creates.
pub(crate) type Ad = Autodiff<Flex, NoCheckpointing>;
/// Its float primitive: a flex tensor plus its graph node.
pub(crate) type AdTensor = burn::backend::tensor::FloatTensor<Ad>;

thread_local! {
    static COMPOSITE: Cell<bool> = const { Cell::new(false) };
}

/// Whether fused kernels are on: `WHETSTONE_FUSED=0` turns them off for the process,
/// [`composite`] for one closure on this thread.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    !COMPOSITE.get() && *ON.get_or_init(|| std::env::var("WHETSTONE_FUSED").map(|v| v != "0").unwrap_or(true))
}

/// Run `f` with the composite burn ops instead of the fused kernels (on this thread), e.g. to
/// compare the two.
pub fn composite<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            COMPOSITE.set(self.0);
        }
    }
    let _reset = Reset(COMPOSITE.replace(true));
    f()
}

/// Put `out` on the autodiff graph as the result of `op` over `nodes`: with `state` kept for
/// the backward pass when any input is tracked, as a constant otherwise.
pub(crate) fn record<BO: Backward<Flex, N>, const N: usize>(op: BO, nodes: [NodeGuard; N], state: BO::State, out: FlexTensor) -> AdTensor {
    match op.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// A float tensor's primitive when it lives on flex as f32: plain, or inside autodiff.
/// Run `f` on a thread of rayon's pool (directly, where the caller is one already). A parallel
/// product started from outside the pool is handed in and waited for, which costs two thread
/// wake-ups each time; started from a pool thread, that thread takes part and at most the
/// other workers are woken. A decoding step has some 120 small products, so it runs whole on
/// the pool and the caller waits once.
///
/// What this thread has in force (the composite switch, the precision scope and its loss
/// scale) goes with `f`, what `f` leaves (an f16 overflow seen) comes back, and the pool thread
/// is left as it was.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let (composite, prec) = (COMPOSITE.get(), precision::snapshot());
    let (r, after) = rayon::scope(|_| {
        let saved = (COMPOSITE.replace(composite), precision::snapshot());
        precision::restore(prec);
        let r = f();
        let after = precision::snapshot();
        COMPOSITE.set(saved.0);
        precision::restore(saved.1);
        (r, after)
    });
    precision::restore(after);
    r
}

pub(crate) enum Prim {
    Plain(FlexTensor),
    Ad(AdTensor),
}

impl Prim {
    pub(crate) fn flex(&self) -> &FlexTensor {
        match self {
            Prim::Plain(t) => t,
            Prim::Ad(t) => t.primitive(),
        }
    }
}

/// The primitive of `t`, or `None` when it is not an f32 flex tensor (or kernels are off).
pub(crate) fn prim<const D: usize>(t: &Tensor<D>) -> Option<Prim> {
    if !enabled() || gpu::on_cube(t) {
        return None;
    }
    // Try only the conversion that can succeed: a failed one builds an error message.
    if t.is_autodiff() {
        let p = t.clone().try_into_primitive::<Ad>().ok()?;
        (p.primitive().dtype() == DType::F32).then_some(Prim::Ad(p))
    } else {
        let p = t.clone().try_into_primitive::<Flex>().ok()?;
        (p.dtype() == DType::F32).then_some(Prim::Plain(p))
    }
}

/// Whether the fused kernels would run on `t`: an f32 tensor on flex or on a cube device
/// (wgpu, CUDA), kernels on.
pub fn fused_for<const D: usize>(t: &Tensor<D>) -> bool {
    prim(t).is_some() || gpu::prim(t).is_some()
}

/// All primitives of one call, when every one is on flex and they agree on autodiff.
pub(crate) fn prims<const N: usize, const D: usize>(ts: [&Tensor<D>; N]) -> Option<[Prim; N]> {
    let mut out = Vec::with_capacity(N);
    for t in ts {
        out.push(prim(t)?);
    }
    let ad = matches!(out[0], Prim::Ad(_));
    if out.iter().any(|p| matches!(p, Prim::Ad(_)) != ad) {
        return None;
    }
    out.try_into().ok()
}

/// The primitives of two tensors of any ranks, when both are on flex and agree on autodiff.
pub(crate) fn prim_pair<const A: usize, const B: usize>(a: &Tensor<A>, b: &Tensor<B>) -> Option<(Prim, Prim)> {
    match (prim(a)?, prim(b)?) {
        (x @ Prim::Plain(_), y @ Prim::Plain(_)) | (x @ Prim::Ad(_), y @ Prim::Ad(_)) => Some((x, y)),
        _ => None,
    }
}

/// A contiguous f32 view of a flex tensor (copied only when it is a strided view).
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() { t.clone() } else { t.to_contiguous() }
}

pub(crate) fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 flex tensor")
}

/// A new flex tensor from host values.
pub(crate) fn flex_from(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// The whole buffer of `t` for writing in place, when `t` is its only holder and views all of it.
pub(crate) fn exclusive_buf(t: &mut FlexTensor) -> Option<&mut [f32]> {
    let n = t.layout().num_elements();
    if t.layout().contiguous_offsets() != Some((0, n)) {
        return None;
    }
    t.try_storage_mut::<f32>().filter(|b| b.len() == n)
}

/// Wrap a result primitive back into a `Tensor`, on the same kind of device as the inputs.
pub(crate) fn plain_tensor<const D: usize>(t: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(t)
}

pub(crate) fn ad_tensor<const D: usize>(t: AdTensor) -> Tensor<D> {
    Tensor::from_primitive::<Ad>(t)
}

/// Below this many elements touched, a kernel runs on the calling thread: handing a few
/// thousand elements to rayon's pool costs more than it saves (decoding one token makes
/// hundreds of such calls).
pub(crate) const PAR_MIN: usize = 1 << 14;

/// `f(i, chunk)` for each `chunk`-long piece of `buf`, on rayon's pool when `work` is large.
pub(crate) fn for_chunks<T: Send>(buf: &mut [T], chunk: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let chunk = chunk.max(1);
    if work < PAR_MIN {
        buf.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        buf.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// As [`for_chunks`], over two buffers cut into the same number of pieces.
pub(crate) fn for_chunks2<A: Send, B: Send>(
    a: &mut [A],
    ca: usize,
    b: &mut [B],
    cb: usize,
    work: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    let (ca, cb) = (ca.max(1), cb.max(1));
    if work < PAR_MIN {
        a.chunks_mut(ca).zip(b.chunks_mut(cb)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
    } else {
        a.par_chunks_mut(ca).zip(b.par_chunks_mut(cb)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
    }
}

/// `[f(0), …, f(n-1)]` in order, computed on rayon's pool when `work` is large.
pub(crate) fn map_range<R: Send>(n: usize, work: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if work < PAR_MIN { (0..n).map(f).collect() } else { (0..n).into_par_iter().map(f).collect() }
}

/// A vector `[0, n)` split into chunks of about `per_task` for rayon (at least one).
pub(crate) fn chunk_len(rows: usize, row_len: usize, target_elems: usize) -> usize {
    let per = (target_elems / row_len.max(1)).max(1);
    per.min(rows.max(1))
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with explicit strides; `dst` has row stride `drs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    drs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lrs: isize,
    lcs: isize,
    rhs: &[f32],
    rrs: isize,
    rcs: isize,
    accumulate: bool,
) {
    assert!(m == 0 || dst.len() >= (m - 1) * drs + n, "gemm_into: destination too small");
    let par = if m.saturating_mul(n).saturating_mul(k) >= 96 * 96 * 96 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: every view is in bounds: dst is checked above, lhs is [m, k] and rhs [k, n] with the
    // given strides (checked by the callers' shapes).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            drs as isize,
            accumulate,
            lhs.as_ptr(),
            lcs,
            lrs,
            rhs.as_ptr(),
            rcs,
            rrs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::precision::{self, LossScaler, Precision};

    /// `on_pool` runs its closure on a pool thread with the caller's precision, loss scale and
    /// composite switch, brings an overflow noted there back to the caller, and leaves the pool
    /// thread as it found it.
    #[test]
    fn on_pool_carries_the_callers_thread_state() {
        assert!(rayon::current_thread_index().is_none(), "the test harness thread is not one of rayon's");
        let sc = LossScaler { scale: 1024.0, good_steps: 0 };
        let (seen, overflow) = precision::with(Precision::F16, || {
            sc.scoped(|| {
                super::composite(|| {
                    super::on_pool(|| {
                        let seen =
                            (rayon::current_thread_index().is_some(), precision::current(), precision::loss_scale(), super::enabled());
                        precision::note_overflow();
                        seen
                    })
                })
            })
        });
        assert_eq!(seen, (true, Precision::F16, 1024.0, false));
        assert!(overflow, "the overflow noted on the pool thread reached the caller's scaler");
        // Every pool thread is back to the defaults.
        let after = rayon::broadcast(|_| (precision::current(), precision::loss_scale(), super::enabled()));
        assert!(after.iter().all(|a| *a == (Precision::F32, 1.0, super::enabled())), "{after:?}");
        assert_eq!(precision::current(), Precision::F32);
    }
}
