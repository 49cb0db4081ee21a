//! Optimisation, written out so every number is PyTorch's: AdamW (`torch.optim.AdamW` with
//! decoupled weight decay, betas 0.9/0.999, eps 1e-8), linear warm-up then cosine, linear or
//! constant decay, and global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`).
//!
//! State is keyed by the parameter's module path (e.g. `layers.3.attn.q.weight`), so it can be
//! saved next to the weights and restored into a freshly loaded model for exact resume.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::io::HostTensor;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // torch.optim.AdamW defaults, except weight decay: 0.0 is the usual fine-tuning choice.
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments {
    pub m: Tensor<1>,
    pub v: Tensor<1>,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Completed optimiser steps (PyTorch's `state["step"]`).
    pub step: u64,
    pub state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0, state: BTreeMap::new() }
    }

    /// One update of every parameter that has a gradient. `grad_scale` multiplies gradients
    /// first (clipping and accumulation averaging).
    pub fn step<M: Module>(&mut self, module: M, grads: &mut GradientsParams, lr: f64, grad_scale: f64) -> M {
        self.step += 1;
        let mut mapper = AdamWMapper { opt: self, grads, lr, grad_scale, path: Vec::new() };
        module.map(&mut mapper)
    }

    /// Moments on the host, for checkpoints: `"{path}.exp_avg"` / `"{path}.exp_avg_sq"`.
    pub fn state_to_host(&self) -> BTreeMap<String, HostTensor> {
        let mut out = BTreeMap::new();
        for (k, s) in &self.state {
            out.insert(format!("{k}.exp_avg"), to_host(s.m.clone()));
            out.insert(format!("{k}.exp_avg_sq"), to_host(s.v.clone()));
        }
        out
    }

    pub fn state_from_host(&mut self, host: &BTreeMap<String, HostTensor>, device: &Device) -> anyhow::Result<()> {
        self.state.clear();
        for (k, m) in host {
            if let Some(path) = k.strip_suffix(".exp_avg") {
                let v =
                    host.get(&format!("{path}.exp_avg_sq")).ok_or_else(|| anyhow::anyhow!("optimizer state: {path}.exp_avg_sq missing"))?;
                self.state.insert(path.to_string(), Moments { m: from_host(m, device), v: from_host(v, device) });
            }
        }
        Ok(())
    }
}

fn to_host(t: Tensor<1>) -> HostTensor {
    let n = t.dims()[0];
    HostTensor::new(vec![n], t.try_into_vec_as::<f32>().expect("float tensor"))
}

fn from_host(h: &HostTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(h.data.clone(), [h.data.len()]), device)
}

struct AdamWMapper<'a> {
    opt: &'a mut AdamW,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
    path: Vec<String>,
}

impl ModuleMapper for AdamWMapper<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.opt.config;
        let t = self.opt.step as i32;
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let p = tensor.inner().reshape([n]);
        let key = self.path.join(".");
        let prev = self.opt.state.remove(&key).map(|s| (s.m, s.v));
        let step = crate::kernels::optim::AdamWStep {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            sqrt_bc2: (1.0 - c.beta2.powi(t)).sqrt() as f32,
            eps: c.eps as f32,
            decay: (c.weight_decay != 0.0).then_some((1.0 - self.lr * c.weight_decay) as f32),
            step_size: (self.lr / (1.0 - c.beta1.powi(t))) as f32,
            grad_scale: self.grad_scale as f32,
        };
        let (p, grad, prev) = match crate::kernels::optim::adamw_update(p, grad.reshape([n]), prev, step) {
            Ok((p, m, v)) => {
                self.opt.state.insert(key, Moments { m, v });
                let mut out = Tensor::from_inner(p.reshape(shape));
                if require_grad {
                    out = out.require_grad();
                }
                return Param::from_mapped_value(id, out, mapper);
            }
            Err(inputs) => inputs,
        };
        let g = grad * self.grad_scale;
        let (m, v) = match prev {
            Some((m, v)) => (m * c.beta1 + g.clone() * (1.0 - c.beta1), v * c.beta2 + g.square() * (1.0 - c.beta2)),
            None => (g.clone() * (1.0 - c.beta1), g.square() * (1.0 - c.beta2)),
        };
        // torch: p *= 1 - lr*wd; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let denom = v.clone().sqrt() / bc2.sqrt() + c.eps;
        let p = if c.weight_decay != 0.0 { p * (1.0 - self.lr * c.weight_decay) } else { p };
        let p = p - m.clone() / denom * (self.lr / bc1);
        self.opt.state.insert(key, Moments { m, v });
        let mut out = Tensor::from_inner(p.reshape(shape));
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

/// Gradients summed over the micro-batches of one optimiser step. Each micro-batch's loss is
/// its share of the step's loss (e.g. its summed token losses over the step's target tokens), so
/// the sum equals the gradient of the whole batch at once, while only one micro-batch's
/// activations are in memory.
#[derive(Default)]
pub struct Accum {
    grads: Option<GradientsParams>,
}

impl Accum {
    pub fn new() -> Self {
        Self::default()
    }

    /// Backpropagate one micro-batch's loss and add its gradients.
    /// Under an f16 job's loss scale the loss is multiplied by it first (and [`Accum::apply`]
    /// divides the gradients by it).
    pub fn backward<M: Module>(&mut self, model: &M, loss: Tensor<1>) {
        let scale = crate::kernels::precision::loss_scale();
        let loss = if scale != 1.0 { loss * scale } else { loss };
        let g = GradientsParams::from_grads(loss.backward(), model);
        self.grads = Some(match self.grads.take() {
            None => g,
            Some(acc) => crate::model::params::add_grads(model, acc, g),
        });
    }

    /// Add gradients computed elsewhere (e.g. layer by layer, `Transformer::recomputed_grads`).
    pub fn add<M: Module>(&mut self, model: &M, g: GradientsParams) {
        self.grads = Some(match self.grads.take() {
            None => g,
            Some(acc) => crate::model::params::add_grads(model, acc, g),
        });
    }

    /// Clip to `max_grad_norm` (global norm, `None`: off) and take one AdamW step. Returns the
    /// updated module and the norm before clipping. A non-finite norm leaves the module as it
    /// was: under an f16 loss scale the step is skipped (the runner halves the scale, as
    /// `GradScaler` does) and the norm reported as 0; otherwise the runner stops the job.
    pub fn apply<M: Module>(self, module: M, optim: &mut AdamW, lr: f64, max_grad_norm: Option<f64>) -> (M, f64) {
        let Some(mut grads) = self.grads else { return (module, 0.0) };
        let loss_scale = crate::kernels::precision::loss_scale();
        let norm = global_grad_norm(&module, &grads) / loss_scale;
        if !norm.is_finite() {
            if loss_scale != 1.0 {
                crate::kernels::precision::note_overflow();
                return (module, 0.0);
            }
            return (module, norm);
        }
        let module = optim.step(module, &mut grads, lr, clip_scale(norm, max_grad_norm) / loss_scale);
        (module, norm)
    }
}

/// Backpropagate `loss`, clip the gradients to `max_grad_norm` (global norm) and take one AdamW
/// step. Returns the updated module and the norm before clipping.
pub fn backward_step<M: Module>(module: M, loss: Tensor<1>, optim: &mut AdamW, lr: f64, max_grad_norm: Option<f64>) -> (M, f64) {
    let mut acc = Accum::new();
    acc.backward(&module, loss);
    acc.apply(module, optim, lr, max_grad_norm)
}

/// The learning rates of one step: `lr` for the main optimiser, and `scale` (the schedule's
/// factor, `lr / peak`) for methods with learning rates of their own (PPO's actor and critic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    pub lr: f64,
    pub scale: f64,
}

impl StepLr {
    /// A constant learning rate (no schedule).
    pub fn constant(lr: f64) -> Self {
        Self { lr, scale: 1.0 }
    }
}

/// The global L2 norm of all gradients of `module`'s parameters (as clip_grad_norm_ computes it).
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct Acc<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
        host: f64,
    }
    impl ModuleVisitor for Acc<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(p.id) {
                if let Some(s) = crate::kernels::optim::sum_squares(&g) {
                    self.host += s;
                    return;
                }
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(a) => a + s,
                    None => s,
                });
            }
        }
    }
    let mut acc = Acc { grads, sum: None, host: 0.0 };
    module.visit(&mut acc);
    (acc.host + acc.sum.map(|s| s.into_scalar::<f32>() as f64).unwrap_or(0.0)).sqrt()
}

/// The clip_grad_norm_ factor: `min(1, max_norm / (norm + 1e-6))`; 1 when clipping is off.
pub fn clip_scale(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if max > 0.0 => (max / (norm + 1e-6)).min(1.0),
        _ => 1.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

/// Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up from 0 over
/// `warmup` steps, then decay to 0 (as transformers' `get_cosine_schedule_with_warmup` /
/// `get_linear_schedule_with_warmup`).
pub fn lr_at(step: u64, total: u64, warmup: u64, peak: f64, decay: Decay) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match decay {
        Decay::Constant => peak,
        Decay::Linear => peak * (1.0 - progress).max(0.0),
        Decay::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // get_cosine_schedule_with_warmup(opt, 2, 10) multipliers: 0, .5, 1, then cosine to 0
        assert_eq!(lr_at(0, 10, 2, 1.0, Decay::Cosine), 0.0);
        assert_eq!(lr_at(1, 10, 2, 1.0, Decay::Cosine), 0.5);
        assert_eq!(lr_at(2, 10, 2, 1.0, Decay::Cosine), 1.0);
        assert!((lr_at(6, 10, 2, 1.0, Decay::Cosine) - 0.5).abs() < 1e-12);
        assert!((lr_at(4, 10, 2, 1.0, Decay::Linear) - 0.75).abs() < 1e-12);
        assert_eq!(lr_at(9, 10, 2, 3e-4, Decay::Constant), 3e-4);
    }

    #[derive(burn::module::Module, Debug)]
    struct One {
        w: Param<Tensor<1>>,
    }

    /// Three AdamW steps on loss = sum(c * w) (gradient c) against torch.optim.AdamW's update
    /// written out in f64.
    #[test]
    fn adamw_matches_the_pytorch_update() {
        let dev = Device::flex().autodiff();
        let w0 = [0.5f64, -1.0, 2.0];
        let c = [0.3f64, -2.0, 0.01];
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut m = One { w: Param::from_tensor(Tensor::from_data(TensorData::new(w0.map(|x| x as f32).to_vec(), [3]), &dev)) };
        let mut opt = AdamW::new(cfg);
        let (lr, b1, b2, eps, wd) = (0.01, 0.9f64, 0.999f64, 1e-8, 0.1);
        let (mut w, mut mm, mut vv) = (w0, [0.0; 3], [0.0; 3]);
        let ct = Tensor::<1>::from_data(TensorData::new(c.map(|x| x as f32).to_vec(), [3]), &dev);
        for t in 1..=3 {
            let loss = (m.w.val() * ct.clone()).sum();
            let mut g = GradientsParams::from_grads(loss.backward(), &m);
            m = opt.step(m, &mut g, lr, 1.0);
            for i in 0..3 {
                w[i] *= 1.0 - lr * wd;
                mm[i] = b1 * mm[i] + (1.0 - b1) * c[i];
                vv[i] = b2 * vv[i] + (1.0 - b2) * c[i] * c[i];
                let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                w[i] -= lr / bc1 * mm[i] / (vv[i].sqrt() / bc2.sqrt() + eps);
            }
        }
        let got = m.w.val().try_into_vec_as::<f32>().unwrap();
        for i in 0..3 {
            assert!((got[i] as f64 - w[i]).abs() < 1e-6, "{got:?} vs {w:?}");
        }
        assert_eq!(opt.step, 3);
        assert!(m.w.val().is_require_grad());
    }

    /// The fused in-place update (`kernels::optim`) and the composite one give the same bits,
    /// on a parameter big enough to be split over threads, with decay, clipping scale and
    /// several steps; and so does the global gradient norm, to f32 rounding.
    #[test]
    fn fused_adamw_is_bit_identical_to_the_composite_update() {
        adamw_kernel_against_composite(Device::flex().autodiff(), 0.0);
    }

    /// The same on the GPU kernel (`kernels::gpu::optim`, on wgpu: Mesa's lavapipe in CI, a
    /// failure rather than a skip without one). Its shader compiler may contract a multiply
    /// and an add into one fused operation, which the composite ops (one kernel each) cannot,
    /// so the parameters agree to a few f32 ulps rather than bit for bit.
    #[test]
    fn gpu_adamw_matches_the_composite_update() {
        let d = crate::device::parse_device("wgpu").expect("a wgpu adapter (CI installs Mesa lavapipe)");
        adamw_kernel_against_composite(d.autodiff(), 2e-6);
    }

    /// `tol`: the largest difference allowed, relative to the parameter's largest magnitude
    /// (0: bit-identical).
    fn adamw_kernel_against_composite(dev: Device, tol: f32) {
        let n = 100_003;
        let w0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 0.5).collect();
        let c: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
        let ct = Tensor::<1>::from_data(TensorData::new(c, [n]), &dev);
        let run = || {
            let mut m = One { w: Param::from_tensor(Tensor::from_data(TensorData::new(w0.clone(), [n]), &dev)) };
            let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.05, ..Default::default() });
            let mut norms = Vec::new();
            for t in 1..=3 {
                let loss = (m.w.val() * m.w.val() * ct.clone()).sum();
                let mut g = GradientsParams::from_grads(loss.backward(), &m);
                norms.push(global_grad_norm(&m, &g));
                m = opt.step(m, &mut g, 1e-2 * t as f64, 0.7);
            }
            (m.w.val().try_into_vec_as::<f32>().unwrap(), opt.state_to_host(), norms)
        };
        // The fused update does run on these (inner) tensors, and not under `composite`.
        let inner = dev.clone().without_autodiff();
        let (p, g) = (Tensor::<1>::zeros([4], &inner), Tensor::<1>::ones([4], &inner));
        let h = crate::kernels::optim::AdamWStep {
            beta1: 0.9,
            beta2: 0.999,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.001,
            sqrt_bc2: 1.0,
            eps: 1e-8,
            decay: None,
            step_size: 1.0,
            grad_scale: 1.0,
        };
        assert!(crate::kernels::optim::adamw_update(p.clone(), g.clone(), None, h).is_ok());
        assert!(crate::kernels::composite(|| crate::kernels::optim::adamw_update(p, g, None, h)).is_err());
        let fused = run();
        let composite = crate::kernels::composite(run);
        let close = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| if tol == 0.0 { x == y } else { (x - y).abs() <= tol * scale })
        };
        assert!(close(&fused.0, &composite.0), "parameters differ");
        for (k, v) in &fused.1 {
            assert!(close(&v.data, &composite.1[k].data), "{k} differs");
        }
        for (a, b) in fused.2.iter().zip(&composite.2) {
            assert!((a - b).abs() <= 1e-5 * b, "grad norm {a} vs {b}");
        }
    }

    #[test]
    fn clip_factor() {
        assert_eq!(clip_scale(0.5, Some(1.0)), 1.0);
        assert!((clip_scale(4.0, Some(1.0)) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
        assert_eq!(clip_scale(100.0, None), 1.0);
    }
}
