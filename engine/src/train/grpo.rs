//! Group Relative Policy Optimisation (Shao et al., DeepSeekMath 2024): for each prompt sample G
//! completions, score them with rule rewards (and optionally a reward-model run), standardise the
//! rewards within the group, and push up the log-probability of above-average completions;
//! optional KL to the frozen reference (k3 estimator, β default 0). One policy update per
//! rollout, so the importance ratio is exp(logπ − sg(logπ)) = 1 with the policy-gradient
//! derivative, inside the clipped surrogate of the paper.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::losses::group_advantages;
use super::method::{Setup, StepOut, Trainer, count_trainable, params, restore_optim, save_optim, share};
use super::optim::{Accum, AdamW, StepLr};
use super::rewards::{WeightedRule, combined_reward};
use crate::data::records::prompt_examples;
use crate::generate::{GenerateOptions, sample_completion};
use crate::model::Transformer;
use crate::model::batch::{make_batch, token_logps};
use crate::model::params::set_named_params;
use crate::runs::Checkpoint;
use crate::runs::reward::RewardScorer;
use crate::text::sft::Encoded;
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
    /// A reward-model run whose score (times `reward_model_weight`) is added to the rules.
    pub reward_model: Option<PathBuf>,
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

impl GrpoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rules.is_empty() && self.reward_model.is_none() {
            bail!("method `grpo` needs [[grpo.rules]] entries or [grpo] reward_model = \"runs/<reward run>\"");
        }
        if self.group_size < 2 {
            bail!("grpo.group_size must be at least 2 (advantages compare answers within a group)");
        }
        if let Some(r) = &self.reward_model
            && !r.join("job.toml").exists()
        {
            bail!("reward model run not found: {}", r.display());
        }
        for r in &self.rules {
            r.rule.validate()?;
        }
        Ok(())
    }
}

/// A prompt (as text, and templated and tokenised) and its reference answer for the rules.
#[derive(Debug, Clone)]
pub struct GrpoPrompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub reference: Option<String>,
}

/// Prompts as a model is asked them: through its chat template with the generation prompt, or
/// as `prompt\n` without one.
pub fn rl_prompts(tok: &Tokenizer, rows: Vec<(String, Option<String>)>) -> Result<Vec<GrpoPrompt>> {
    rows.into_iter().map(|(text, reference)| Ok(GrpoPrompt { ids: tok.prompt_ids(&text)?, text, reference })).collect()
}

pub struct GrpoTrainer {
    pub policy: Transformer,
    pub reference: Transformer,
    pub optim: AdamW,
    pub cfg: GrpoConfig,
    pub max_grad_norm: Option<f64>,
    pub prompts: Vec<GrpoPrompt>,
    pub tokenizer: Tokenizer,
    pub scorer: Option<RewardScorer>,
    pub stop_ids: Vec<u32>,
    pub pad: u32,
    pub max_context: usize,
    /// Recompute each layer in the backward pass (`train.gradient_checkpointing`).
    pub recompute: bool,
    rng: ChaCha8Rng,
}

impl GrpoTrainer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: Transformer,
        optim: AdamW,
        cfg: GrpoConfig,
        max_grad_norm: Option<f64>,
        prompts: Vec<GrpoPrompt>,
        tokenizer: Tokenizer,
        stop_ids: Vec<u32>,
        pad: u32,
        seed: u64,
    ) -> Self {
        let reference = policy.without_autodiff();
        Self {
            policy,
            reference,
            optim,
            cfg,
            max_grad_norm,
            prompts,
            tokenizer,
            scorer: None,
            stop_ids,
            pad,
            max_context: usize::MAX,
            recompute: false,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn build(s: Setup) -> Result<Self> {
        let cfg = s.spec.grpo.clone().unwrap_or_default();
        let prompts = rl_prompts(&s.base.tokenizer, prompt_examples(&s.data.records, &s.data.roles, s.file())?)?;
        let scorer = match &cfg.reward_model {
            Some(dir) => Some(RewardScorer::load(dir, &s.device)?),
            None => None,
        };
        let mut t = Self::new(
            s.policy.clone(),
            s.adamw(),
            cfg,
            s.clip(),
            prompts,
            s.base.tokenizer.clone(),
            s.stop_ids.clone(),
            s.pad,
            s.spec.seed,
        );
        t.scorer = scorer;
        t.max_context = s.base.config.max_position_embeddings;
        t.recompute = s.spec.train.gradient_checkpointing;
        Ok(t)
    }

    /// G completions for each prompt in `idx` (with the policy as it is), their rewards and
    /// their group-standardised advantages.
    fn rollout(&mut self, idx: &[usize], actor: &Transformer) -> Result<(Vec<Encoded>, Vec<f32>, Vec<f32>, usize)> {
        let g = self.cfg.group_size;
        let opts = GenerateOptions {
            max_new_tokens: self.cfg.max_new_tokens,
            temperature: self.cfg.temperature,
            top_p: self.cfg.top_p,
            ..Default::default()
        };
        let (mut seqs, mut advantages, mut rewards_all, mut lengths) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for &i in idx {
            let p = &self.prompts[i];
            let mut rewards = Vec::with_capacity(g);
            for _ in 0..g {
                let c = sample_completion(actor, &p.ids, &self.stop_ids, &opts, self.max_context, &mut self.rng)?;
                let text = self.tokenizer.decode(&c, true)?;
                let mut r = combined_reward(&self.cfg.rules, &text, p.reference.as_deref());
                if let Some(s) = &self.scorer {
                    r += self.cfg.reward_model_weight * s.score(&p.text, &text)?;
                }
                rewards.push(r as f32);
                lengths += c.len();
                let mut ids = p.ids.clone();
                let mut target = vec![false; ids.len()];
                ids.extend(&c);
                target.extend(std::iter::repeat_n(true, c.len()));
                seqs.push(Encoded { ids, target });
            }
            advantages.extend(group_advantages(&rewards, 1e-4));
            rewards_all.extend(rewards);
        }
        Ok((seqs, advantages, rewards_all, lengths))
    }
}

impl Trainer for GrpoTrainer {
    fn len(&self) -> usize {
        self.prompts.len()
    }

    fn step(&mut self, micro: &[Vec<usize>], lr: StepLr) -> Result<StepOut> {
        let total_seqs = micro.iter().map(|m| m.len()).sum::<usize>() * self.cfg.group_size;
        ensure!(total_seqs > 0, "GRPO needs prompts");
        // Rollouts with a plain-device copy of the policy, which is the same for every
        // micro-batch (the update comes after all of them).
        let actor = self.policy.without_autodiff();
        let device = self.policy.device();
        let policy = self.policy.clone();
        let (mut acc, mut loss_v, mut kl_sum, mut all_rewards, mut lengths) = (Accum::new(), 0.0, 0.0, Vec::new(), 0usize);
        for m in micro {
            let (seqs, advantages, rewards, len) = self.rollout(m, &actor)?;
            lengths += len;
            all_rewards.extend(rewards);
            let refs: Vec<&Encoded> = seqs.iter().collect();
            let batch = make_batch(&refs, self.pad, &device);
            let [b, _] = batch.inputs.dims();
            let w = batch.weights.clone();
            let adv = Tensor::<2>::from_data(TensorData::new(advantages, [b, 1]), &device);
            let ref_lp = (self.cfg.beta > 0.0).then(|| {
                let rb = make_batch(&refs, self.pad, &self.reference.device());
                Tensor::<2>::from_inner(token_logps(&self.reference, &rb)).to_device(&device)
            });
            let (clip, beta) = (self.cfg.clip, self.cfg.beta);
            // The loss of this micro-batch from the policy's log-probs of its completions.
            let mut surrogate = |logp: Tensor<2>| -> Tensor<1> {
                // Clipped surrogate, max(−A·r, −A·clip(r, 1−ε, 1+ε)), with r = π/π_old and π_old
                // the rollout policy (one update per rollout, so r = 1 in value, ∇r = ∇log π).
                let ratio = (logp.clone() - logp.clone().detach()).exp();
                let pg1 = ratio.clone() * adv.clone().neg();
                let pg2 = ratio.clamp(1.0 - clip, 1.0 + clip) * adv.clone().neg();
                let mut per_token = pg1.max_pair(pg2);
                if let Some(ref_lp) = &ref_lp {
                    let d = ref_lp.clone() - logp;
                    let kl = d.clone().exp() - d - 1.0; // k3, ≥ 0
                    let per_seq_kl =
                        (kl.clone().detach() * w.clone()).sum_dim(1).reshape([b]) / w.clone().sum_dim(1).reshape([b]).clamp_min(1.0);
                    kl_sum += per_seq_kl.sum().into_scalar::<f32>() as f64;
                    per_token = per_token + kl * beta;
                }
                // Mean over each completion's tokens, then over all completions of the step.
                let per_seq = (per_token * w.clone()).sum_dim(1).reshape([b]) / w.clone().sum_dim(1).reshape([b]).clamp_min(1.0);
                per_seq.sum() * share(1, total_seqs)
            };
            if self.recompute {
                let (v, g) =
                    policy.recomputed_grads(batch.inputs.clone(), None, &mut |p, h| surrogate(p.target_logprobs(h, &batch.targets).0));
                loss_v += v;
                acc.add(&policy, g);
            } else {
                let l = surrogate(token_logps(&policy, &batch));
                loss_v += l.clone().into_scalar::<f32>() as f64;
                acc.backward(&policy, l);
            }
        }
        let (policy, grad_norm) = acc.apply(policy, &mut self.optim, lr.lr, self.max_grad_norm);
        self.policy = policy;
        let n = all_rewards.len() as f64;
        let mean = all_rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        let std = (all_rewards.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let metrics = BTreeMap::from([
            ("reward_mean".into(), mean),
            ("reward_std".into(), std),
            ("kl".into(), kl_sum / n),
            ("completion_length".into(), lengths as f64 / n),
        ]);
        Ok(StepOut { loss: loss_v, grad_norm, tokens: lengths, token_accuracy: None, metrics })
    }

    fn save(&self, ck: &mut Checkpoint) {
        ck.tensors.insert("trainable".into(), params(&self.policy, true));
        save_optim(ck, "optimizer", &self.optim);
    }

    fn restore(&mut self, ck: &Checkpoint, device: &Device) -> Result<()> {
        self.policy = set_named_params(self.policy.clone(), ck.group("trainable")?)?;
        restore_optim(ck, "optimizer", &mut self.optim, device)
    }

    fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    fn language_model(&self) -> Option<Transformer> {
        Some(self.policy.without_autodiff())
    }

    fn trainable_params(&self) -> usize {
        count_trainable(&self.policy)
    }
}
