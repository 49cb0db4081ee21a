//! Supervised fine-tuning: minimise the mean cross-entropy of the target tokens (the assistant
//! turns, or every token with `train_on_prompt`) over all micro-batches of a step, optionally
//! with several examples packed per row. Examples are encoded in `text::sft`.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, ensure};
use burn::tensor::Device;

use super::method::{Setup, StepOut, Trainer, count_trainable, params, restore_optim, save_optim};
use super::optim::{Accum, AdamW, StepLr};
use crate::data::records::sft_examples;
use crate::model::Transformer;
use crate::model::batch::{Batch, make_batch, make_packed_batch, nll_sum, pack_examples};
use crate::model::params::set_named_params;
use crate::runs::{Checkpoint, EvalRecord};
use crate::text::sft::{Encoded, encode};

pub struct SftTrainer {
    pub model: Transformer,
    pub optim: AdamW,
    pub max_grad_norm: Option<f64>,
    pub examples: Vec<Encoded>,
    pub pad: u32,
    pub max_seq_len: usize,
    pub packing: bool,
    /// Recompute each layer in the backward pass (`train.gradient_checkpointing`).
    pub recompute: bool,
}

impl SftTrainer {
    /// A trainer over already-encoded examples (benchmarks and tests build one directly).
    pub fn new(model: Transformer, optim: AdamW, max_grad_norm: Option<f64>, examples: Vec<Encoded>, pad: u32) -> Self {
        Self { model, optim, max_grad_norm, examples, pad, max_seq_len: usize::MAX, packing: false, recompute: false }
    }

    pub fn build(s: Setup) -> Result<Self> {
        let t = &s.spec.train;
        let examples = sft_examples(&s.data.records, &s.data.roles, s.file())?;
        let encoded = examples
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                encode(&s.base.tokenizer, ex, t.max_seq_len, t.train_on_prompt, s.eos)
                    .map_err(|e| anyhow!("{}: example {}: {e:#}", s.file().display(), i + 1))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut tr = Self::new(s.policy.clone(), s.adamw(), s.clip(), encoded, s.pad);
        tr.max_seq_len = t.max_seq_len;
        tr.packing = t.packing;
        tr.recompute = t.gradient_checkpointing;
        Ok(tr)
    }

    fn batch(&self, idx: &[usize], device: &Device) -> Batch {
        let exs: Vec<&Encoded> = idx.iter().map(|&i| &self.examples[i]).collect();
        if self.packing {
            make_packed_batch(&pack_examples(&exs, self.max_seq_len), self.pad, self.max_seq_len, device)
        } else {
            make_batch(&exs, self.pad, device)
        }
    }

    /// One optimiser step over prepared micro-batches: the loss is the mean over all their
    /// target tokens, as if they were one batch.
    pub fn step_batches(&mut self, micro: &[Batch], lr: f64) -> Result<StepOut> {
        let total: usize = micro.iter().map(|b| b.n_targets).sum();
        ensure!(total > 0, "no target tokens in this step");
        let mut acc = Accum::new();
        let (mut loss_sum, mut correct_sum, mut tokens) = (0.0, 0.0, 0);
        for b in micro {
            tokens += b.n_tokens;
            if self.recompute {
                let mut correct = 0.0;
                let packed = b.packing.as_ref().map(|(p, s)| (p.as_slice(), s.as_slice()));
                let (l, g) = self.model.recomputed_grads(b.inputs.clone(), packed, &mut |m, h| {
                    let (lp, c) = m.target_logprobs(h, &b.targets);
                    correct = (c * b.weights.clone()).sum().into_scalar::<f32>() as f64;
                    (lp * b.weights.clone()).sum().neg() / total as f64
                });
                loss_sum += l * total as f64;
                correct_sum += correct;
                acc.add(&self.model, g);
                continue;
            }
            let (nll, correct) = nll_sum(&self.model, b);
            loss_sum += nll.clone().into_scalar::<f32>() as f64;
            correct_sum += correct.into_scalar::<f32>() as f64;
            acc.backward(&self.model, nll / total as f64);
        }
        let (model, grad_norm) = acc.apply(self.model.clone(), &mut self.optim, lr, self.max_grad_norm);
        self.model = model;
        Ok(StepOut {
            loss: loss_sum / total as f64,
            grad_norm,
            tokens,
            token_accuracy: Some(correct_sum / total as f64),
            metrics: BTreeMap::new(),
        })
    }
}

impl Trainer for SftTrainer {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn step(&mut self, micro: &[Vec<usize>], lr: StepLr) -> Result<StepOut> {
        let device = self.model.device();
        let batches: Vec<Batch> = micro.iter().map(|m| self.batch(m, &device)).collect();
        self.step_batches(&batches, lr.lr)
    }

    fn evaluate(&mut self, idx: &[usize], batch_size: usize, step: usize) -> Result<Option<EvalRecord>> {
        let model = self.model.without_autodiff();
        let device = model.device();
        let (mut nll, mut correct, mut n) = (0.0, 0.0, 0usize);
        for c in idx.chunks(batch_size.max(1)) {
            let exs: Vec<&Encoded> = c.iter().map(|&i| &self.examples[i]).collect();
            let b = make_batch(&exs, self.pad, &device);
            let (l, k) = nll_sum(&model, &b);
            nll += l.into_scalar::<f32>() as f64;
            correct += k.into_scalar::<f32>() as f64;
            n += b.n_targets;
        }
        let loss = nll / n.max(1) as f64;
        Ok(Some(EvalRecord {
            step,
            eval_loss: loss,
            perplexity: Some(loss.exp()),
            token_accuracy: Some(correct / n.max(1) as f64),
            metrics: BTreeMap::new(),
        }))
    }

    fn save(&self, ck: &mut Checkpoint) {
        ck.tensors.insert("trainable".into(), params(&self.model, true));
        save_optim(ck, "optimizer", &self.optim);
    }

    fn restore(&mut self, ck: &Checkpoint, device: &Device) -> Result<()> {
        self.model = set_named_params(self.model.clone(), ck.group("trainable")?)?;
        restore_optim(ck, "optimizer", &mut self.optim, device)
    }

    fn language_model(&self) -> Option<Transformer> {
        Some(self.model.without_autodiff())
    }

    fn trainable_params(&self) -> usize {
        count_trainable(&self.model)
    }
}
