//! Direct Preference Optimisation (Rafailov et al. 2023): raise the policy's log-ratio of the
//! chosen over the rejected response relative to a frozen reference. Reference log-probs are
//! computed once per sequence (alone, so the value does not depend on its batch) and cached.
//! Metrics carry TRL's names.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::losses::{DpoVariant, dpo_loss};
use super::method::{Setup, StepOut, Trainer, count_trainable, mean, params, restore_optim, save_optim, share};
use super::optim::{Accum, AdamW, StepLr};
use crate::data::records::preference_examples;
use crate::model::Transformer;
use crate::model::batch::{make_batch, sequence_logps};
use crate::model::params::set_named_params;
use crate::runs::{Checkpoint, EvalRecord};
use crate::text::sft::{Encoded, SftExample, encode};

/// `[dpo]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    pub beta: f64,
    pub label_smoothing: f64,
    pub variant: DpoVariant,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self { beta: 0.1, label_smoothing: 0.0, variant: DpoVariant::Sigmoid }
    }
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
    pub cfg: DpoConfig,
    pub max_grad_norm: Option<f64>,
    pub pairs: Vec<EncodedPair>,
    pub pad: u32,
    /// Recompute each layer in the backward pass (`train.gradient_checkpointing`).
    pub recompute: bool,
    ref_cache: HashMap<Vec<u32>, f32>,
}

/// Per-pair values of a batch: DPO rewards and policy log-probs.
#[derive(Default)]
struct PairStats {
    rc: Vec<f32>,
    rr: Vec<f32>,
    pc: Vec<f32>,
    pr: Vec<f32>,
}

impl PairStats {
    fn metrics(&self) -> BTreeMap<String, f64> {
        let margins: Vec<f32> = self.rc.iter().zip(&self.rr).map(|(a, b)| a - b).collect();
        BTreeMap::from([
            ("rewards/chosen".into(), mean(&self.rc)),
            ("rewards/rejected".into(), mean(&self.rr)),
            ("rewards/margins".into(), mean(&margins)),
            ("rewards/accuracies".into(), margins.iter().filter(|&&m| m > 0.0).count() as f64 / margins.len().max(1) as f64),
            ("logps/chosen".into(), mean(&self.pc)),
            ("logps/rejected".into(), mean(&self.pr)),
        ])
    }
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("float tensor")
}

impl DpoTrainer {
    pub fn new(policy: Transformer, optim: AdamW, cfg: DpoConfig, max_grad_norm: Option<f64>, pairs: Vec<EncodedPair>, pad: u32) -> Self {
        let reference = policy.without_autodiff();
        Self { policy, reference, optim, cfg, max_grad_norm, pairs, pad, recompute: false, ref_cache: HashMap::new() }
    }

    pub fn build(s: Setup) -> Result<Self> {
        let tok = &s.base.tokenizer;
        let max = s.spec.train.max_seq_len;
        let pairs = preference_examples(&s.data.records, &s.data.roles, s.file())?
            .iter()
            .map(|(p, c, r)| {
                Ok(EncodedPair {
                    chosen: encode(tok, &SftExample::from_pair(None, p, c), max, false, s.eos)?,
                    rejected: encode(tok, &SftExample::from_pair(None, p, r), max, false, s.eos)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut t = Self::new(s.policy.clone(), s.adamw(), s.spec.dpo.clone().unwrap_or_default(), s.clip(), pairs, s.pad);
        t.recompute = s.spec.train.gradient_checkpointing;
        Ok(t)
    }

    /// Reference log-probs of sequences, computed once each and cached.
    fn reference_logps(&mut self, seqs: &[&Encoded]) -> Vec<f32> {
        let device = self.reference.device();
        for e in seqs {
            if !self.ref_cache.contains_key(&e.ids) {
                let b = make_batch(&[*e], self.pad, &device);
                let v = sequence_logps(&self.reference, &b).into_scalar::<f32>();
                self.ref_cache.insert(e.ids.clone(), v);
            }
        }
        seqs.iter().map(|e| self.ref_cache[&e.ids]).collect()
    }

    /// The batch of pairs `idx` (chosen rows, then rejected rows) and their reference log-probs.
    fn pair_batch(&mut self, idx: &[usize], device: &burn::tensor::Device) -> (crate::model::batch::Batch, Vec<f32>) {
        let pairs: Vec<EncodedPair> = idx.iter().map(|&i| self.pairs[i].clone()).collect();
        let seqs: Vec<&Encoded> = pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
        let refs = self.reference_logps(&seqs);
        (make_batch(&seqs, self.pad, device), refs)
    }

    /// The DPO loss (mean over the pairs) from the policy's summed log-probs `[2n]`, with stats.
    fn loss_from(&self, logps: Tensor<1>, refs: &[f32], stats: &mut PairStats) -> Tensor<1> {
        let n = refs.len() / 2;
        let device = logps.device();
        let (pc, pr) = (logps.clone().slice_dim(0, 0..n), logps.slice_dim(0, n..2 * n));
        let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
        let c = &self.cfg;
        let (loss, rw_c, rw_r) = dpo_loss(pc.clone(), pr.clone(), t(&refs[..n]), t(&refs[n..]), c.beta, c.label_smoothing, c.variant);
        stats.rc.extend(host(rw_c));
        stats.rr.extend(host(rw_r));
        stats.pc.extend(host(pc.detach()));
        stats.pr.extend(host(pr.detach()));
        loss
    }

    /// The DPO loss of pairs `idx` under `policy` (mean over them), with their stats.
    fn loss(&mut self, policy: &Transformer, idx: &[usize], stats: &mut PairStats) -> Tensor<1> {
        let (batch, refs) = self.pair_batch(idx, &policy.device());
        let logps = sequence_logps(policy, &batch);
        self.loss_from(logps, &refs, stats)
    }
}

impl Trainer for DpoTrainer {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn step(&mut self, micro: &[Vec<usize>], lr: StepLr) -> Result<StepOut> {
        let total: usize = micro.iter().map(|m| m.len()).sum();
        ensure!(total > 0, "no preference pairs in this step");
        let (mut acc, mut stats, mut loss, mut tokens) = (Accum::new(), PairStats::default(), 0.0, 0);
        let policy = self.policy.clone();
        for m in micro {
            let w = share(m.len(), total);
            if self.recompute {
                let (batch, refs) = self.pair_batch(m, &policy.device());
                let this = &*self;
                let (l, g) = policy.recomputed_grads(batch.inputs.clone(), None, &mut |p, h| {
                    let [b, _] = batch.inputs.dims();
                    let lp = p.target_logprobs(h, &batch.targets).0;
                    let seq = (lp * batch.weights.clone()).sum_dim(1).reshape([b]);
                    this.loss_from(seq, &refs, &mut stats) * w
                });
                loss += l;
                acc.add(&policy, g);
                tokens += m.iter().map(|&i| self.pairs[i].chosen.ids.len() + self.pairs[i].rejected.ids.len()).sum::<usize>();
                continue;
            }
            let l = self.loss(&policy, m, &mut stats) * w;
            loss += l.clone().into_scalar::<f32>() as f64;
            acc.backward(&policy, l);
            tokens += m.iter().map(|&i| self.pairs[i].chosen.ids.len() + self.pairs[i].rejected.ids.len()).sum::<usize>();
        }
        let (policy, grad_norm) = acc.apply(policy, &mut self.optim, lr.lr, self.max_grad_norm);
        self.policy = policy;
        Ok(StepOut { loss, grad_norm, tokens, token_accuracy: None, metrics: stats.metrics() })
    }

    fn evaluate(&mut self, idx: &[usize], _batch_size: usize, step: usize) -> Result<Option<EvalRecord>> {
        ensure!(!idx.is_empty(), "no preference pairs to evaluate");
        let policy = self.policy.without_autodiff();
        let mut stats = PairStats::default();
        let loss = self.loss(&policy, idx, &mut stats).into_scalar::<f32>() as f64;
        Ok(Some(EvalRecord { step, eval_loss: loss, perplexity: None, token_accuracy: None, metrics: stats.metrics() }))
    }

    fn save(&self, ck: &mut Checkpoint) {
        ck.tensors.insert("trainable".into(), params(&self.policy, true));
        save_optim(ck, "optimizer", &self.optim);
    }

    fn restore(&mut self, ck: &Checkpoint, device: &Device) -> Result<()> {
        self.policy = set_named_params(self.policy.clone(), ck.group("trainable")?)?;
        restore_optim(ck, "optimizer", &mut self.optim, device)
    }

    fn language_model(&self) -> Option<Transformer> {
        Some(self.policy.without_autodiff())
    }

    fn trainable_params(&self) -> usize {
        count_trainable(&self.policy)
    }
}
