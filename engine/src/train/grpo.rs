//! Group Relative Policy Optimisation (Shao et al., DeepSeekMath 2024): for each prompt sample G
//! completions, score them with rule rewards, standardise the rewards within the group, and
//! push up the log-probability of above-average completions; optional KL to the frozen
//! reference (k3 estimator, β default 0). One policy update per rollout, so the importance ratio
//! is exp(logπ − sg(logπ)) = 1 with the policy-gradient derivative, inside the clipped
//! surrogate of the paper.

use anyhow::{Result, ensure};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dpo::token_logps;
use super::losses::group_advantages;
use super::optim::{AdamW, AdamWConfig, backward_step};
use super::rewards::{WeightedRule, combined_reward};
use super::sft::{Encoded, make_batch};
use crate::generate::{GenerateOptions, sample};
use crate::model::{KvCache, Transformer, ids_tensor};
use crate::text::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    pub group_size: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// KL-to-reference coefficient.
    pub beta: f64,
    /// Clip range ε of the surrogate objective.
    pub clip: f64,
    pub rules: Vec<WeightedRule>,
    /// Jobs: a reward-model run whose score (times `reward_model_weight`) is added to the rules.
    pub reward_model: Option<std::path::PathBuf>,
    pub reward_model_weight: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            group_size: 8,
            max_new_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            beta: 0.0,
            clip: 0.2,
            rules: vec![],
            reward_model: None,
            reward_model_weight: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GrpoMetrics {
    pub loss: f64,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub kl: f64,
    pub completion_length: f64,
    pub grad_norm: f64,
}

/// A prompt (already templated and tokenised) and its reference answer for the rules.
#[derive(Debug, Clone)]
pub struct GrpoPrompt {
    pub ids: Vec<u32>,
    pub reference: Option<String>,
}

pub struct GrpoTrainer {
    pub policy: Transformer,
    pub reference: Transformer,
    pub optim: AdamW,
    pub cfg: GrpoConfig,
    pub max_grad_norm: Option<f64>,
    rng: ChaCha8Rng,
}

/// Sample one completion with a KV cache; stops at an EOS id (which is kept) or the limit.
pub fn sample_completion(model: &Transformer, prompt: &[u32], eos: &[u32], opts: &GenerateOptions, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let device = model.device();
    let mut cache = KvCache::default();
    let mut input = prompt.to_vec();
    let mut history = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < opts.max_new_tokens {
        let h = model.forward_hidden(ids_tensor(&input, &device), Some(&mut cache));
        let t = h.dims()[1];
        let mut row = model.logits(h.slice_dim(1, t - 1..t)).try_into_vec_as::<f32>().expect("float");
        let id = sample(&mut row, &history, opts, rng);
        out.push(id);
        history.push(id);
        if eos.contains(&id) {
            break;
        }
        input = vec![id];
    }
    out
}

impl GrpoTrainer {
    /// Restart the sampling generator (jobs reseed per step, so a resumed run samples the same).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    pub fn new(policy: Transformer, adamw: AdamWConfig, cfg: GrpoConfig, seed: u64) -> Self {
        let reference = policy.without_autodiff();
        Self { policy, reference, optim: AdamW::new(adamw), cfg, max_grad_norm: Some(1.0), rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn step(&mut self, tok: &Tokenizer, prompts: &[GrpoPrompt], eos: &[u32], pad: u32, lr: f64) -> Result<GrpoMetrics> {
        self.step_with(tok, prompts, eos, pad, lr, &mut |_, _| Ok(0.0))
    }

    /// A step whose reward is the rules plus `extra(prompt ids, completion ids)` (e.g. a reward
    /// model's score).
    pub fn step_with(
        &mut self,
        tok: &Tokenizer,
        prompts: &[GrpoPrompt],
        eos: &[u32],
        pad: u32,
        lr: f64,
        extra: &mut dyn FnMut(&[u32], &[u32]) -> Result<f64>,
    ) -> Result<GrpoMetrics> {
        ensure!(!prompts.is_empty() && self.cfg.group_size >= 2, "GRPO needs prompts and a group size of at least 2");
        let g = self.cfg.group_size;
        let opts = GenerateOptions {
            max_new_tokens: self.cfg.max_new_tokens,
            temperature: self.cfg.temperature,
            top_p: self.cfg.top_p,
            ..Default::default()
        };
        // Rollouts with a plain-device copy of the policy.
        let actor = self.policy.without_autodiff();
        let mut seqs = Vec::new();
        let mut advantages = Vec::new();
        let mut all_rewards = Vec::new();
        let mut lengths = 0usize;
        for p in prompts {
            let mut rewards = Vec::with_capacity(g);
            for _ in 0..g {
                let c = sample_completion(&actor, &p.ids, eos, &opts, &mut self.rng);
                let text = tok.decode(&c, true)?;
                rewards.push((combined_reward(&self.cfg.rules, &text, p.reference.as_deref()) + extra(&p.ids, &c)?) as f32);
                lengths += c.len();
                let mut ids = p.ids.clone();
                let mut target = vec![false; ids.len()];
                ids.extend(&c);
                target.extend(std::iter::repeat_n(true, c.len()));
                seqs.push(Encoded { ids, target });
            }
            advantages.extend(group_advantages(&rewards, 1e-4));
            all_rewards.extend(rewards);
        }
        let device = self.policy.device();
        let refs: Vec<&Encoded> = seqs.iter().collect();
        let batch = make_batch(&refs, pad, &device);
        let [b, _] = batch.inputs.dims();
        let logp = token_logps(&self.policy, &batch);
        let w = batch.weights.clone();
        let adv = Tensor::<2>::from_data(TensorData::new(advantages.clone(), [b, 1]), &device);
        // Clipped surrogate, max(−A·r, −A·clip(r, 1−ε, 1+ε)), with r = π/π_old and π_old the
        // rollout policy (one update per rollout, so r = 1 in value, ∇r = ∇log π).
        let ratio = (logp.clone() - logp.clone().detach()).exp();
        let pg1 = ratio.clone() * adv.clone().neg();
        let pg2 = ratio.clamp(1.0 - self.cfg.clip, 1.0 + self.cfg.clip) * adv.neg();
        let mut per_token = pg1.max_pair(pg2);
        let mut kl_v = 0.0;
        if self.cfg.beta > 0.0 {
            let rb = make_batch(&refs, pad, &self.reference.device());
            let ref_lp = Tensor::from_inner(token_logps(&self.reference, &rb)).to_device(&device);
            let d = ref_lp - logp.clone();
            let kl = d.clone().exp() - d - 1.0; // k3, ≥ 0
            kl_v = ((kl.clone().detach() * w.clone()).sum() / w.clone().sum().clamp_min(1.0)).into_scalar::<f32>() as f64;
            per_token = per_token + kl * self.cfg.beta;
        }
        // Mean over each completion's tokens, then over completions.
        let per_seq = (per_token * w.clone()).sum_dim(1).reshape([b]) / w.sum_dim(1).reshape([b]).clamp_min(1.0);
        let loss = per_seq.mean();
        let loss_v = loss.clone().into_scalar::<f32>() as f64;
        let (policy, grad_norm) = backward_step(self.policy.clone(), loss, &mut self.optim, lr, self.max_grad_norm);
        self.policy = policy;
        let n = all_rewards.len() as f64;
        let mean = all_rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        let std = (all_rewards.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        Ok(GrpoMetrics { loss: loss_v, reward_mean: mean, reward_std: std, kl: kl_v, completion_length: lengths as f64 / n, grad_norm })
    }
}
