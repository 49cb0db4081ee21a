//! Mixed precision: the compute precision in force on this thread, and rounding to it.
//!
//! Training in `bf16` or `f16` follows PyTorch's autocast recipe over f32 master weights:
//! every matrix product (projections, LoRA adapters, attention scores and values, the packed
//! base) takes its operands rounded to the low precision, accumulates in f32, and rounds its
//! result; gradients flowing back through such a product are rounded the same way.
//! Elementwise ops, norms, softmax, the loss and the optimiser stay in f32, as autocast's f32
//! list has them. Master weights, AdamW moments and gradients of parameters are f32.
//!
//! Values are held in f32 storage after rounding (every bf16/f16 value is an f32 value), so
//! each kernel keeps one code path and the results are exactly those of a low-precision
//! product with f32 accumulation.
//!
//! The precision is a scope ([`with`]), as `torch.autocast` is a context: the runner sets the
//! job's `train.precision` around each step; everything outside (export, evaluation suites,
//! the chat) computes in f32. With `f16`, the runner also keeps a dynamic loss scale
//! ([`LossScaler`]): losses are multiplied by it before the backward pass, gradients divided
//! by it before clipping, and a step whose gradients overflowed is skipped and the scale
//! halved (`torch.amp.GradScaler`'s defaults: 2¹⁶ to start, ×2 after 2000 good steps).

use std::cell::Cell;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use super::{Prim, ad_tensor, contiguous, data, flex_from, for_chunks, plain_tensor, prim, record};

/// The precision of matrix products in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The precision a job on `device` (`cpu`, `wgpu[:N]`, `cuda[:N]`) starts with: bf16 on
    /// CUDA, whose tensor cores multiply it natively; f32 elsewhere, since on CPU (burn's flex)
    /// and on wgpu low precision is rounded in software and costs time without saving memory.
    pub fn default_for_device(device: &str) -> Precision {
        if device.starts_with("cuda") { Precision::Bf16 } else { Precision::F32 }
    }

    /// Refuse a precision `device` cannot compute: bf16 on wgpu, whose shaders have no bf16
    /// type. burn's cast to bf16 there does not round as bf16 does (an SFT step on lavapipe came
    /// out at loss 9.57 where the CPU's bf16 step gives 6.37), so such a job would train wrong.
    pub fn check_device(self, device: &str) -> anyhow::Result<()> {
        if self == Precision::Bf16 && device.starts_with("wgpu") {
            anyhow::bail!(
                "train.precision = \"bf16\" is not available on {device}: wgpu has no bf16 arithmetic; use \"f16\" (half the activation memory where the GPU has f16) or \"f32\""
            );
        }
        Ok(())
    }

    /// Round one value to this precision (round to nearest even; f16 overflows to ±inf).
    #[inline(always)]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => round_bf16(x),
            Precision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// Round every value of `xs` in place.
    pub fn round_slice(self, xs: &mut [f32]) {
        match self {
            Precision::F32 => {}
            Precision::Bf16 => round_bf16_slice(xs),
            Precision::F16 => xs.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32()),
        }
    }
}

super::simd::multiversion! {
    /// [`round_bf16`] over a slice, compiled for the widest vectors the CPU has.
    fn round_bf16_slice(xs: &mut [f32]) {
        xs.iter_mut().for_each(|x| *x = round_bf16(*x))
    }
}

/// f32 → bf16 → f32, round to nearest even, NaN kept NaN (a branch-free form that vectorises).
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    // A NaN whose payload sits in the low bits would round to ±inf: keep it a quiet NaN.
    let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
    f32::from_bits(if nan { b | 0x0040_0000 } else { rounded })
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
    static SCALE: Cell<f64> = const { Cell::new(1.0) };
    static OVERFLOW: Cell<bool> = const { Cell::new(false) };
}

/// This thread's precision state (precision, loss scale, overflow seen), to carry a step to
/// another thread ([`super::on_pool`]).
pub(crate) fn snapshot() -> (Precision, f64, bool) {
    (CURRENT.get(), SCALE.get(), OVERFLOW.get())
}

/// Put back what [`snapshot`] took.
pub(crate) fn restore((p, scale, overflow): (Precision, f64, bool)) {
    CURRENT.set(p);
    SCALE.set(scale);
    OVERFLOW.set(overflow);
}

/// The compute precision in force on this thread.
pub fn current() -> Precision {
    CURRENT.get()
}

/// Run `f` with matrix products in `p` (on this thread).
pub fn with<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    struct Reset(Precision);
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.set(self.0);
        }
    }
    let _reset = Reset(CURRENT.replace(p));
    f()
}

/// The factor losses are multiplied by before a backward pass (1 unless an f16 job's
/// [`LossScaler`] is in force).
pub fn loss_scale() -> f64 {
    SCALE.get()
}

/// Record that a step's gradients were not finite under loss scaling (the step is skipped).
pub fn note_overflow() {
    OVERFLOW.set(true);
}

/// Dynamic loss scaling for f16, as `torch.amp.GradScaler` does it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    /// Steps since the scale last changed without an overflow.
    pub good_steps: u64,
}

impl LossScaler {
    pub const INIT: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// Below this the gradients are not finite whatever the scale: the job stops.
    pub const MIN: f64 = 1.0 / 65536.0;

    pub fn new() -> Self {
        Self { scale: Self::INIT, good_steps: 0 }
    }

    /// Put this scale in force on this thread for `f`; returns `f`'s result and whether any
    /// gradient overflowed inside (the caller then calls [`LossScaler::update`]).
    pub fn scoped<R>(&self, f: impl FnOnce() -> R) -> (R, bool) {
        struct Reset(f64);
        impl Drop for Reset {
            fn drop(&mut self) {
                SCALE.set(self.0);
                OVERFLOW.set(false);
            }
        }
        let _reset = Reset(SCALE.replace(self.scale));
        OVERFLOW.set(false);
        let r = f();
        (r, OVERFLOW.get())
    }

    /// After a step: halve the scale on overflow, double it after `GROWTH_INTERVAL` good steps.
    pub fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale *= 0.5;
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        }
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

const CHUNK: usize = 32 * 1024;

/// A rounded copy of `src` in the current precision, split over threads when large.
pub(crate) fn rounded(p: Precision, src: &[f32]) -> Vec<f32> {
    let mut out = src.to_vec();
    round_in_place(p, &mut out);
    out
}

/// Round `buf` in place in precision `p`, split over threads when large.
pub(crate) fn round_in_place(p: Precision, buf: &mut [f32]) {
    if p == Precision::F32 {
        return;
    }
    let work = buf.len();
    for_chunks(buf, CHUNK, work, |_, c| p.round_slice(c));
}

/// `t` rounded to the current precision (the identity in f32). Its gradient is rounded the
/// same way, as the backward of autocast's casts is.
pub fn round<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    let p = current();
    if p == Precision::F32 {
        return t;
    }
    let Some(pt) = prim(&t) else {
        let low = if p == Precision::Bf16 { FloatDType::BF16 } else { FloatDType::F16 };
        return t.cast(low).cast(FloatDType::F32);
    };
    let dims = t.dims();
    drop(t);
    let c = contiguous(pt.flex());
    let out = flex_from(rounded(p, data(&c)), &dims);
    match pt {
        Prim::Ad(a) => {
            let nodes = [a.node()];
            drop(a);
            ad_tensor(record(Round, nodes, p, out))
        }
        Prim::Plain(_) => plain_tensor(out),
    }
}

#[derive(Debug)]
struct Round;

impl Backward<Flex, 1> for Round {
    type State = Precision;

    fn backward(self, ops: Ops<Precision, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let mut dy = dy;
        // The consumed gradient is usually this node's alone: round it where it lies.
        if let Some(buf) = super::exclusive_buf(&mut dy) {
            round_in_place(ops.state, buf);
            grads.register::<Flex>(parent.id, dy);
            return;
        }
        let shape = dy.layout().shape().to_vec();
        let dy = contiguous(&dy);
        grads.register::<Flex>(parent.id, flex_from(rounded(ops.state, data(&dy)), &shape));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_the_half_crate() {
        let mut x = 0.1f32;
        for i in 0..20_000 {
            x = if i % 3 == 0 { -x * 1.37 } else { x * 0.71 + 1e-3 * i as f32 };
            assert_eq!(round_bf16(x).to_bits(), half::bf16::from_f32(x).to_f32().to_bits(), "{x}");
        }
        for v in [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1.0 + f32::EPSILON] {
            assert_eq!(round_bf16(v).to_bits(), half::bf16::from_f32(v).to_f32().to_bits(), "{v}");
        }
        assert!(round_bf16(f32::NAN).is_nan());
        assert!(round_bf16(f32::from_bits(0x7F80_0001)).is_nan());
        // Ties go to even: 1 + 2^-8 sits halfway between 1 and 1 + 2^-7.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(Precision::F16.round(70000.0), f32::INFINITY);
    }

    #[test]
    fn the_scaler_backs_off_and_grows_as_grad_scaler_does() {
        let mut s = LossScaler::new();
        s.update(true);
        assert_eq!(s.scale, 32768.0);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        let ((), overflow) = s.scoped(|| {
            assert_eq!(loss_scale(), 65536.0);
            note_overflow();
        });
        assert!(overflow);
        assert_eq!(loss_scale(), 1.0);
    }
}
