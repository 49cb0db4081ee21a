//! Direct Preference Optimisation (Rafailov et al. 2023): raise the policy's log-ratio of the
//! chosen over the rejected response relative to a frozen reference. Reference log-probs are
//! computed once per example. Metrics carry TRL's names.

use std::collections::HashMap;

use anyhow::{Result, ensure};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::losses::{DpoVariant, dpo_loss};
use super::optim::{AdamW, AdamWConfig, backward_step};
use super::sft::{Batch, Encoded, make_batch};
use crate::model::Transformer;

/// Log-probability of every next token, `[B, T]` (pad positions included; mask with weights).
pub fn token_logps(model: &Transformer, batch: &Batch) -> Tensor<2> {
    let logits = model.forward(batch.inputs.clone(), None);
    crate::kernels::cross_entropy::token_logprobs(logits, &batch.targets).0
}

/// Summed log-probability of each row's target tokens, `[B]`.
pub fn sequence_logps(model: &Transformer, batch: &Batch) -> Tensor<1> {
    let tok = token_logps(model, batch);
    let [b, _] = tok.dims();
    (tok * batch.weights.clone()).sum_dim(1).reshape([b])
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoMetrics {
    pub loss: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    pub grad_norm: f64,
}

/// One preference pair, encoded (targets = response tokens).
#[derive(Debug, Clone)]
pub struct EncodedPair {
    pub chosen: Encoded,
    pub rejected: Encoded,
}

pub struct DpoTrainer {
    pub policy: Transformer,
    /// Frozen reference (a plain-device copy of the starting policy).
    pub reference: Transformer,
    pub optim: AdamW,
    pub beta: f64,
    pub label_smoothing: f64,
    pub variant: DpoVariant,
    pub max_grad_norm: Option<f64>,
    ref_cache: HashMap<Vec<u32>, f32>,
}

impl DpoTrainer {
    pub fn new(policy: Transformer, adamw: AdamWConfig, beta: f64) -> Self {
        let reference = policy.without_autodiff();
        Self {
            policy,
            reference,
            optim: AdamW::new(adamw),
            beta,
            label_smoothing: 0.0,
            variant: DpoVariant::Sigmoid,
            max_grad_norm: Some(1.0),
            ref_cache: HashMap::new(),
        }
    }

    /// Reference log-probs of sequences, computed once each (one sequence at a time, so the
    /// value does not depend on what it was batched with) and cached.
    fn reference_logps(&mut self, seqs: &[&Encoded], pad: u32) -> Vec<f32> {
        let device = self.reference.device();
        for e in seqs {
            if !self.ref_cache.contains_key(&e.ids) {
                let b = make_batch(&[*e], pad, &device);
                let v = sequence_logps(&self.reference, &b).into_scalar::<f32>();
                self.ref_cache.insert(e.ids.clone(), v);
            }
        }
        seqs.iter().map(|e| self.ref_cache[&e.ids]).collect()
    }

    /// DPO metrics on held-out pairs, without training.
    pub fn evaluate(&mut self, pairs: &[EncodedPair], pad: u32) -> Result<DpoMetrics> {
        ensure!(!pairs.is_empty(), "no preference pairs to evaluate");
        let n = pairs.len();
        let seqs: Vec<&Encoded> = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
        let refs = self.reference_logps(&seqs, pad);
        let policy = self.policy.without_autodiff();
        let device = policy.device();
        let logps = sequence_logps(&policy, &make_batch(&seqs, pad, &device));
        let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &device);
        let (loss, rw_c, rw_r) = dpo_loss(
            logps.clone().slice_dim(0, 0..n),
            logps.clone().slice_dim(0, n..2 * n),
            t(&refs[..n]),
            t(&refs[n..]),
            self.beta,
            self.label_smoothing,
            self.variant,
        );
        let lp = logps.try_into_vec_as::<f32>().expect("float");
        Ok(Self::metrics(loss.into_scalar::<f32>() as f64, &rw_c.try_into_vec_as::<f32>().expect("float"), &rw_r.try_into_vec_as::<f32>().expect("float"), &lp[..n], &lp[n..], 0.0))
    }

    fn metrics(loss: f64, rc: &[f32], rr: &[f32], pc: &[f32], pr: &[f32], grad_norm: f64) -> DpoMetrics {
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let margins: Vec<f32> = rc.iter().zip(rr).map(|(a, b)| a - b).collect();
        DpoMetrics {
            loss,
            rewards_chosen: mean(rc),
            rewards_rejected: mean(rr),
            rewards_margins: mean(&margins),
            rewards_accuracies: margins.iter().filter(|&&m| m > 0.0).count() as f64 / rc.len() as f64,
            logps_chosen: mean(pc),
            logps_rejected: mean(pr),
            grad_norm,
        }
    }

    pub fn step(&mut self, pairs: &[EncodedPair], pad: u32, lr: f64) -> Result<DpoMetrics> {
        ensure!(!pairs.is_empty(), "no preference pairs in this step");
        let n = pairs.len();
        let seqs: Vec<&Encoded> = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
        let refs = self.reference_logps(&seqs, pad);
        let device = self.policy.device();
        let batch = make_batch(&seqs, pad, &device);
        let logps = sequence_logps(&self.policy, &batch);
        let pc = logps.clone().slice_dim(0, 0..n);
        let pr = logps.slice_dim(0, n..2 * n);
        let rc = Tensor::<1>::from_data(TensorData::new(refs[..n].to_vec(), [n]), &device);
        let rr = Tensor::<1>::from_data(TensorData::new(refs[n..].to_vec(), [n]), &device);
        let (loss, rw_c, rw_r) = dpo_loss(pc.clone(), pr.clone(), rc, rr, self.beta, self.label_smoothing, self.variant);
        let loss_v = loss.clone().into_scalar::<f32>() as f64;
        let (policy, grad_norm) = backward_step(self.policy.clone(), loss, &mut self.optim, lr, self.max_grad_norm);
        self.policy = policy;
        let rc = rw_c.try_into_vec_as::<f32>().expect("float");
        let rr = rw_r.try_into_vec_as::<f32>().expect("float");
        let pcv = pc.detach().try_into_vec_as::<f32>().expect("float");
        let prv = pr.detach().try_into_vec_as::<f32>().expect("float");
        Ok(Self::metrics(loss_v, &rc, &rr, &pcv, &prv, grad_norm))
    }
}
