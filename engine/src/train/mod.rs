//! Training: optimisation shared by every method, and one file per method.

pub mod checkpoint;
pub mod distill;
pub mod dpo;
pub mod grpo;
pub mod health;
pub mod job;
pub mod losses;
pub mod memory;
pub mod methods;
pub mod optim;
pub mod ppo;
pub mod reward;
pub mod rewards;
pub mod sft;

use anyhow::Result;
use burn::optim::GradientsParams;

use crate::model::Transformer;
use optim::{AdamW, AdamWConfig, clip_scale, global_grad_norm};
use sft::{Batch, nll_sum};

/// What one optimiser step measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepMetrics {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
    pub token_accuracy: f64,
}

/// Full-parameter SFT on one model (on an autodiff device): gradient accumulation over the
/// micro-batches of a step, global-norm clipping, AdamW.
pub struct SftTrainer {
    pub model: Transformer,
    pub optim: AdamW,
    pub max_grad_norm: Option<f64>,
}

impl SftTrainer {
    pub fn new(model: Transformer, adamw: AdamWConfig, max_grad_norm: Option<f64>) -> Self {
        Self { model, optim: AdamW::new(adamw), max_grad_norm }
    }

    /// One optimiser step over `micro_batches` (the loss is the mean over all their target
    /// tokens, as if they were one batch).
    pub fn step(&mut self, micro_batches: &[Batch], lr: f64) -> Result<StepMetrics> {
        let total_targets: usize = micro_batches.iter().map(|b| b.n_targets).sum();
        anyhow::ensure!(total_targets > 0, "no target tokens in this step");
        let mut grads: Option<GradientsParams> = None;
        let (mut loss_sum, mut correct_sum, mut tokens) = (0.0, 0.0, 0);
        for b in micro_batches {
            let (nll, correct) = nll_sum(&self.model, b);
            loss_sum += nll.clone().into_scalar::<f32>() as f64;
            correct_sum += correct.into_scalar::<f32>() as f64;
            tokens += b.n_tokens;
            let g = GradientsParams::from_grads((nll / total_targets as f64).backward(), &self.model);
            grads = Some(match grads.take() {
                None => g,
                Some(acc) => add_grads(&self.model, acc, g),
            });
        }
        let mut grads = grads.unwrap();
        let grad_norm = global_grad_norm(&self.model, &grads);
        let scale = clip_scale(grad_norm, self.max_grad_norm);
        // Cloning a module only clones tensor handles.
        self.model = self.optim.step(self.model.clone(), &mut grads, lr, scale);
        Ok(StepMetrics {
            loss: loss_sum / total_targets as f64,
            grad_norm,
            lr,
            tokens,
            token_accuracy: correct_sum / total_targets as f64,
        })
    }
}

/// Sum two sets of gradients parameter by parameter.
fn add_grads(model: &Transformer, mut a: GradientsParams, mut b: GradientsParams) -> GradientsParams {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Add<'a> {
        a: &'a mut GradientsParams,
        b: &'a mut GradientsParams,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(gb) = self.b.remove::<D>(p.id) {
                let sum = match self.a.remove::<D>(p.id) {
                    Some(ga) => ga + gb,
                    None => gb,
                };
                self.a.register::<D>(p.id, sum);
            }
        }
    }
    model.visit(&mut Add { a: &mut a, b: &mut b });
    a
}
