//! Teacher → student distillation (Hinton et al.; GKD-style divergences): the student learns the
//! teacher's temperature-softened next-token distribution on the response tokens, mixed with the
//! ordinary SFT loss: `loss = (1 − α)·T²·D(teacher, student) + α·NLL`. Teacher and student must
//! share a tokenizer. Sequence-level KD (teacher generations as an SFT dataset) uses
//! `generate` + the SFT job instead.

use anyhow::{Result, ensure};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::losses::{Divergence, distill_loss};
use super::optim::{AdamW, AdamWConfig, backward_step};
use super::sft::{Encoded, make_batch};
use crate::model::Transformer;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistillMetrics {
    pub loss: f64,
    /// T²-scaled divergence at the training temperature.
    pub distill: f64,
    pub sft: f64,
    /// KL(teacher ‖ student) at temperature 1 on the response tokens (the number to watch).
    pub teacher_student_kl: f64,
    pub grad_norm: f64,
}

pub struct DistillTrainer {
    pub student: Transformer,
    /// Frozen, on a plain (non-autodiff) device.
    pub teacher: Transformer,
    pub optim: AdamW,
    pub temperature: f64,
    pub divergence: Divergence,
    /// Weight of the SFT loss (0: pure distillation).
    pub sft_weight: f64,
    pub max_grad_norm: Option<f64>,
}

impl DistillTrainer {
    pub fn new(student: Transformer, teacher: Transformer, adamw: AdamWConfig, temperature: f64, divergence: Divergence, sft_weight: f64) -> Self {
        Self { student, teacher: teacher.without_autodiff(), optim: AdamW::new(adamw), temperature, divergence, sft_weight, max_grad_norm: Some(1.0) }
    }

    pub fn step(&mut self, examples: &[&Encoded], pad: u32, lr: f64) -> Result<DistillMetrics> {
        ensure!(!examples.is_empty(), "no examples in this step");
        let sdev = self.student.device();
        let tdev = self.teacher.device();
        let sb = make_batch(examples, pad, &sdev);
        let tb = make_batch(examples, pad, &tdev);
        let teacher_logits = Tensor::from_inner(self.teacher.forward(tb.inputs, None)).to_device(&sdev);
        let student_logits = self.student.forward(sb.inputs.clone(), None);
        let kd = distill_loss(student_logits.clone(), teacher_logits.clone(), sb.weights.clone(), self.temperature, self.divergence);
        let kl1 = distill_loss(student_logits.clone().detach(), teacher_logits, sb.weights.clone(), 1.0, Divergence::ForwardKl);
        let nll = crate::kernels::cross_entropy::token_logprobs(student_logits, &sb.targets).0.neg();
        let sft = (nll * sb.weights.clone()).sum() / (sb.n_targets.max(1) as f64);
        let loss = kd.clone() * (1.0 - self.sft_weight) + sft.clone() * self.sft_weight;
        let scalar = |x: Tensor<1>| x.into_scalar::<f32>() as f64;
        let (loss_v, kd_v, sft_v, kl_v) = (scalar(loss.clone()), scalar(kd.detach()), scalar(sft.detach()), scalar(kl1));
        let (student, grad_norm) = backward_step(self.student.clone(), loss, &mut self.optim, lr, self.max_grad_norm);
        self.student = student;
        Ok(DistillMetrics { loss: loss_v, distill: kd_v, sft: sft_v, teacher_student_kl: kl_v, grad_norm })
    }
}
