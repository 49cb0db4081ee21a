//! RLHF with PPO as DeepSpeed-Chat's step 3 does it. Per step:
//! 1. rollout: the actor samples a response per prompt (KV cache, plain-device copy);
//! 2. score: old log-probs (actor), reference log-probs (frozen copy of the starting actor),
//!    values (critic), and the reward — a reward model or rule rewards — on the whole response;
//! 3. per-token rewards −kl_coef·(logπ − logπ_ref), plus the clipped score on the last token;
//!    advantages and returns by GAE;
//! 4. train: clipped policy loss for the actor, clipped value loss for the critic.
//!
//! Defaults are DeepSpeed-Chat's: kl_coef 0.1, reward clip 5, policy and value clip 0.2, γ 1,
//! λ 0.95, one PPO epoch, actor lr 9.65e-6, critic lr 5e-6.

use std::time::Instant;

use anyhow::{Result, ensure};
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData, activation};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dpo::token_logps;
use super::grpo::sample_completion;
use super::losses::{gae, kl_penalised_rewards, ppo_policy_loss, ppo_value_loss};
use super::optim::{AdamW, AdamWConfig, backward_step};
use super::reward::RewardModel;
use super::sft::{Batch, Encoded, make_batch};
use crate::generate::GenerateOptions;
use crate::model::Transformer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    pub kl_coef: f64,
    pub reward_clip: f64,
    pub policy_clip: f64,
    pub value_clip: f64,
    pub gamma: f64,
    pub lambda: f64,
    pub ppo_epochs: usize,
    pub actor_lr: f64,
    pub critic_lr: f64,
    pub max_new_tokens: usize,
    pub temperature: f32,
    /// Exponential moving average of actor weights (0: off; DeepSpeed-Chat uses 0.992).
    pub ema: f64,
    /// Jobs: the reward-model run that scores responses (its score is the reward)…
    pub reward_model: Option<std::path::PathBuf>,
    /// …and/or rule rewards added to it.
    pub rules: Vec<super::rewards::WeightedRule>,
    /// PTX mixing (InstructGPT): a language-model loss on plain text, weighted by `ptx_coef`,
    /// added to the actor loss so the policy keeps its general language ability.
    pub ptx_dataset: Option<std::path::PathBuf>,
    pub ptx_coef: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            kl_coef: 0.1,
            reward_clip: 5.0,
            policy_clip: 0.2,
            value_clip: 0.2,
            gamma: 1.0,
            lambda: 0.95,
            ppo_epochs: 1,
            actor_lr: 9.65e-6,
            critic_lr: 5e-6,
            max_new_tokens: 64,
            temperature: 1.0,
            ema: 0.0,
            reward_model: None,
            rules: vec![],
            ptx_dataset: None,
            ptx_coef: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PpoMetrics {
    pub reward_mean: f64,
    pub reward_ema: f64,
    /// Mean over response tokens of logπ − logπ_ref (per token).
    pub kl_to_reference: f64,
    pub entropy: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub clip_fraction: f64,
    pub approx_kl: f64,
    pub ratio_mean: f64,
    pub response_length: f64,
    /// Mean token NLL of the PTX batch (0 when PTX is off).
    pub ptx_loss: f64,
    pub generation_seconds: f64,
    pub scoring_seconds: f64,
    pub training_seconds: f64,
}

/// Values `[B, T]` of a critic (a reward-model-shaped module) at every input position.
pub fn critic_values(critic: &RewardModel, ids: Tensor<2, Int>) -> Tensor<2> {
    let h = critic.backbone.forward_hidden(ids, None);
    let [b, t, _] = h.dims();
    critic.head.forward(h).reshape([b, t])
}

pub struct PpoTrainer {
    pub actor: Transformer,
    pub critic: RewardModel,
    pub reference: Transformer,
    /// EMA copy of the actor (plain device), when `cfg.ema > 0`.
    pub actor_ema: Option<Transformer>,
    pub actor_optim: AdamW,
    pub critic_optim: AdamW,
    pub cfg: PpoConfig,
    pub reward_ema: Option<f64>,
    /// Plain-text examples for PTX mixing, used round-robin by step.
    pub ptx: Vec<Encoded>,
    pub steps_done: usize,
    rng: ChaCha8Rng,
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("float tensor")
}

impl PpoTrainer {
    /// Restart the sampling generator (jobs reseed per step, so a resumed run samples the same).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    pub fn new(actor: Transformer, critic: RewardModel, cfg: PpoConfig, seed: u64) -> Self {
        let reference = actor.without_autodiff();
        let actor_ema = if cfg.ema > 0.0 { Some(actor.without_autodiff()) } else { None };
        Self {
            actor,
            critic,
            reference,
            actor_ema,
            actor_optim: AdamW::new(AdamWConfig::default()),
            critic_optim: AdamW::new(AdamWConfig::default()),
            cfg,
            reward_ema: None,
            ptx: Vec::new(),
            steps_done: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// One PPO step. `prompts` are tokenised prompts; `reward` scores (prompt index, response ids).
    pub fn step(&mut self, prompts: &[Vec<u32>], eos: &[u32], pad: u32, reward: &mut dyn FnMut(usize, &[u32]) -> Result<f64>) -> Result<PpoMetrics> {
        ensure!(!prompts.is_empty(), "PPO needs prompts");
        let c = self.cfg.clone();
        // 1. rollout
        let t_gen = Instant::now();
        let actor_plain = self.actor.without_autodiff();
        let opts = GenerateOptions { max_new_tokens: c.max_new_tokens, temperature: c.temperature, ..Default::default() };
        let mut seqs = Vec::with_capacity(prompts.len());
        let mut responses = Vec::with_capacity(prompts.len());
        for p in prompts {
            let r = sample_completion(&actor_plain, p, eos, &opts, &mut self.rng);
            let mut ids = p.clone();
            let mut target = vec![false; ids.len()];
            ids.extend(&r);
            target.extend(std::iter::repeat_n(true, r.len()));
            seqs.push(Encoded { ids, target });
            responses.push(r);
        }
        let generation_seconds = t_gen.elapsed().as_secs_f64();

        // 2. score
        let t_score = Instant::now();
        let refs: Vec<&Encoded> = seqs.iter().collect();
        let plain_dev = self.reference.device();
        let pb = make_batch(&refs, pad, &plain_dev);
        let [b, t] = pb.inputs.dims();
        let old_logp = host(token_logps(&actor_plain, &pb));
        let ref_logp = host(token_logps(&self.reference, &pb));
        let critic_plain = self.critic.valid();
        let old_values = host(critic_values(&critic_plain, pb.inputs.clone()));
        let mask = host(pb.weights.clone());
        let scores: Vec<f64> = responses.iter().enumerate().map(|(i, r)| reward(i, r)).collect::<Result<_>>()?;

        // 3. per-token rewards, GAE
        let (mut adv, mut ret) = (vec![0f32; b * t], vec![0f32; b * t]);
        let mut kl_sum = 0.0;
        let mut n_tok = 0usize;
        for i in 0..b {
            let pos: Vec<usize> = (0..t).filter(|&j| mask[i * t + j] > 0.0).collect();
            if pos.is_empty() {
                continue;
            }
            let lp: Vec<f32> = pos.iter().map(|&j| old_logp[i * t + j]).collect();
            let rl: Vec<f32> = pos.iter().map(|&j| ref_logp[i * t + j]).collect();
            kl_sum += lp.iter().zip(&rl).map(|(a, b)| (a - b) as f64).sum::<f64>();
            n_tok += pos.len();
            let rewards = kl_penalised_rewards(&lp, &rl, scores[i] as f32, c.kl_coef as f32, c.reward_clip as f32);
            let values: Vec<f32> = pos.iter().map(|&j| old_values[i * t + j]).collect();
            let (a, r) = gae(&rewards, &values, c.gamma as f32, c.lambda as f32);
            for (k, &j) in pos.iter().enumerate() {
                adv[i * t + j] = a[k];
                ret[i * t + j] = r[k];
            }
        }
        let scoring_seconds = t_score.elapsed().as_secs_f64();

        // 4. train
        let t_train = Instant::now();
        let dev = self.actor.device();
        let tb: Batch = make_batch(&refs, pad, &dev);
        let mk = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [b, t]), &dev);
        let (old_lp_t, adv_t, ret_t, oldv_t, mask_t) = (mk(&old_logp), mk(&adv), mk(&ret), mk(&old_values), mk(&mask));
        let mut m = PpoMetrics {
            reward_mean: scores.iter().sum::<f64>() / b as f64,
            reward_ema: 0.0,
            kl_to_reference: kl_sum / n_tok.max(1) as f64,
            entropy: 0.0,
            policy_loss: 0.0,
            value_loss: 0.0,
            clip_fraction: 0.0,
            approx_kl: 0.0,
            ratio_mean: 0.0,
            response_length: responses.iter().map(|r| r.len()).sum::<usize>() as f64 / b as f64,
            ptx_loss: 0.0,
            generation_seconds,
            scoring_seconds,
            training_seconds: 0.0,
        };
        for _ in 0..c.ppo_epochs.max(1) {
            // actor
            let logits = self.actor.forward(tb.inputs.clone(), None);
            let lsm = activation::log_softmax(logits, 2);
            let ent = (lsm.clone().exp() * lsm.clone()).sum_dim(2).reshape([b, t]).neg().detach();
            m.entropy = ((ent * mask_t.clone()).sum() / mask_t.clone().sum().clamp_min(1.0)).into_scalar::<f32>() as f64;
            let logp = lsm.gather(2, tb.targets.clone().reshape([b, t, 1])).reshape([b, t]);
            let ratio = ((logp.clone() - old_lp_t.clone()) * mask_t.clone()).exp().detach();
            m.ratio_mean = ((ratio * mask_t.clone()).sum() / mask_t.clone().sum().clamp_min(1.0)).into_scalar::<f32>() as f64;
            let (pl, cf, ak) = ppo_policy_loss(logp, old_lp_t.clone(), adv_t.clone(), mask_t.clone(), c.policy_clip);
            m.policy_loss = pl.clone().into_scalar::<f32>() as f64;
            m.clip_fraction = cf.into_scalar::<f32>() as f64;
            m.approx_kl = ak.into_scalar::<f32>() as f64;
            let pl = if c.ptx_coef > 0.0 && !self.ptx.is_empty() {
                let n = self.ptx.len();
                let pick: Vec<&Encoded> = (0..b.min(n)).map(|k| &self.ptx[(self.steps_done * b + k) % n]).collect();
                let pb = make_batch(&pick, pad, &dev);
                let (nll, _) = super::sft::nll_sum(&self.actor, &pb);
                let ptx = nll / pb.n_targets.max(1) as f64;
                m.ptx_loss = ptx.clone().into_scalar::<f32>() as f64;
                pl + ptx * c.ptx_coef
            } else {
                pl
            };
            self.actor = backward_step(self.actor.clone(), pl, &mut self.actor_optim, c.actor_lr, Some(1.0)).0;
            // critic
            let v = critic_values(&self.critic, tb.inputs.clone());
            let vl = ppo_value_loss(v, oldv_t.clone(), ret_t.clone(), mask_t.clone(), c.value_clip);
            m.value_loss = vl.clone().into_scalar::<f32>() as f64;
            self.critic = backward_step(self.critic.clone(), vl, &mut self.critic_optim, c.critic_lr, Some(1.0)).0;
        }
        if let Some(ema) = &self.actor_ema {
            let cur = super::checkpoint::named_params(&self.actor.without_autodiff(), false);
            let mut old = super::checkpoint::named_params(ema, false);
            for (k, v) in old.iter_mut() {
                if let Some(n) = cur.get(k) {
                    for (a, b) in v.data.iter_mut().zip(&n.data) {
                        *a = (c.ema as f32) * *a + (1.0 - c.ema as f32) * b;
                    }
                }
            }
            self.actor_ema = Some(super::checkpoint::set_named_params(ema.clone(), &old)?);
        }
        self.reward_ema = Some(match self.reward_ema {
            Some(e) => 0.9 * e + 0.1 * m.reward_mean,
            None => m.reward_mean,
        });
        m.reward_ema = self.reward_ema.unwrap();
        self.steps_done += 1;
        m.training_seconds = t_train.elapsed().as_secs_f64();
        Ok(m)
    }
}
