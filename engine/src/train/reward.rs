//! Reward model: the language-model backbone with a scalar head (`model::reward`), read at the
//! last token of each sequence, trained with the pairwise loss −log σ(r_chosen − r_rejected)
//! (InstructGPT; DeepSpeed-Chat step 2). Inputs are built by `text::sft::reward_input`, the
//! same way PPO, GRPO and evaluation score responses later.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::losses::pairwise_reward_loss;
use super::method::{Setup, StepOut, Trainer, count_trainable, mean, params, restore_optim, save_optim, share};
use super::optim::{Accum, AdamW, StepLr};
use crate::data::records::preference_examples;
use crate::model::params::set_named_params;
use crate::model::reward::{RewardModel, score_batch};
use crate::runs::{Checkpoint, EvalRecord};
use crate::text::sft::reward_input;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardMetrics {
    pub loss: f64,
    pub accuracy: f64,
    pub chosen_mean: f64,
    pub rejected_mean: f64,
    pub margin: f64,
}

impl RewardMetrics {
    fn new(loss: f64, c: &[f32], r: &[f32]) -> Self {
        RewardMetrics {
            loss,
            accuracy: c.iter().zip(r).filter(|(a, b)| a > b).count() as f64 / c.len().max(1) as f64,
            chosen_mean: mean(c),
            rejected_mean: mean(r),
            margin: mean(c) - mean(r),
        }
    }

    fn map(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("accuracy".into(), self.accuracy),
            ("chosen_mean".into(), self.chosen_mean),
            ("rejected_mean".into(), self.rejected_mean),
            ("margin".into(), self.margin),
        ])
    }
}

pub struct RewardTrainer {
    pub model: RewardModel,
    pub optim: AdamW,
    pub max_grad_norm: Option<f64>,
    /// (chosen, rejected) token ids of each pair.
    pub pairs: Vec<(Vec<u32>, Vec<u32>)>,
    pub pad: u32,
}

impl RewardTrainer {
    pub fn build(s: Setup) -> Result<Self> {
        let tok = &s.base.tokenizer;
        let max = s.spec.train.max_seq_len;
        let pairs = preference_examples(&s.data.records, &s.data.roles, s.file())?
            .iter()
            .map(|(p, c, r)| Ok((reward_input(tok, p, c, max)?, reward_input(tok, p, r, max)?)))
            .collect::<Result<Vec<_>>>()?;
        let model = RewardModel::new(s.policy.clone(), s.base.config.hidden_size, s.spec.seed);
        Ok(Self { model, optim: s.adamw(), max_grad_norm: s.clip(), pairs, pad: s.pad })
    }

    /// Scores of chosen and rejected sequences of pairs `idx` under `model`.
    fn scores(&self, model: &RewardModel, idx: &[usize]) -> burn::tensor::Tensor<1> {
        let all: Vec<&[u32]> =
            idx.iter().map(|&i| self.pairs[i].0.as_slice()).chain(idx.iter().map(|&i| self.pairs[i].1.as_slice())).collect();
        let (ids, last) = score_batch(&all, self.pad, &model.backbone.device());
        model.score(ids, &last)
    }
}

impl Trainer for RewardTrainer {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn step(&mut self, micro: &[Vec<usize>], lr: StepLr) -> Result<StepOut> {
        let total: usize = micro.iter().map(|m| m.len()).sum();
        ensure!(total > 0, "no preference pairs in this step");
        let mut acc = Accum::new();
        let (mut c_all, mut r_all, mut loss, mut tokens) = (Vec::new(), Vec::new(), 0.0, 0);
        for m in micro {
            let n = m.len();
            let s = self.scores(&self.model, m);
            let (sc, sr) = (s.clone().slice_dim(0, 0..n), s.slice_dim(0, n..2 * n));
            let l = pairwise_reward_loss(sc.clone(), sr.clone()) * share(n, total);
            loss += l.clone().into_scalar::<f32>() as f64;
            acc.backward(&self.model, l);
            c_all.extend(sc.detach().try_into_vec_as::<f32>().expect("float"));
            r_all.extend(sr.detach().try_into_vec_as::<f32>().expect("float"));
            tokens += m.iter().map(|&i| self.pairs[i].0.len() + self.pairs[i].1.len()).sum::<usize>();
        }
        let (model, grad_norm) = acc.apply(self.model.clone(), &mut self.optim, lr.lr, self.max_grad_norm);
        self.model = model;
        Ok(StepOut { loss, grad_norm, tokens, token_accuracy: None, metrics: RewardMetrics::new(loss, &c_all, &r_all).map() })
    }

    fn evaluate(&mut self, idx: &[usize], _batch_size: usize, step: usize) -> Result<Option<EvalRecord>> {
        let model = self.model.valid();
        let s = self.scores(&model, idx).try_into_vec_as::<f32>().expect("float");
        let (c, r) = s.split_at(idx.len());
        let loss = c.iter().zip(r).map(|(a, b)| (1.0 + (-(a - b) as f64).exp()).ln()).sum::<f64>() / idx.len().max(1) as f64;
        let m = RewardMetrics::new(loss, c, r);
        Ok(Some(EvalRecord { step, eval_loss: loss, perplexity: None, token_accuracy: None, metrics: m.map() }))
    }

    fn save(&self, ck: &mut Checkpoint) {
        ck.tensors.insert("trainable".into(), params(&self.model, true));
        save_optim(ck, "optimizer", &self.optim);
    }

    fn restore(&mut self, ck: &Checkpoint, device: &Device) -> Result<()> {
        self.model = set_named_params(self.model.clone(), ck.group("trainable")?)?;
        restore_optim(ck, "optimizer", &mut self.optim, device)
    }

    fn trainable_params(&self) -> usize {
        count_trainable(&self.model)
    }
}
