//! RLHF with PPO as DeepSpeed-Chat's step 3 does it. Per step:
//! 1. rollout: the actor samples a response per prompt (KV cache, plain-device copy);
//! 2. score: old log-probs (actor), reference log-probs (frozen copy of the starting actor),
//!    values (critic), and the reward — a reward-model run and/or rule rewards — on the whole
//!    response (the reward model reads `text::sft::reward_input`, as it was trained);
//! 3. per-token rewards −kl_coef·(logπ − logπ_ref), plus the clipped score on the last token;
//!    advantages and returns by GAE;
//! 4. train: clipped policy loss for the actor, clipped value loss for the critic, each an
//!    optimiser step per PPO epoch with gradients summed over the micro-batches.
//!
//! Defaults are DeepSpeed-Chat's: kl_coef 0.1, reward clip 5, policy and value clip 0.2, γ 1,
//! λ 0.95, one PPO epoch, actor lr 9.65e-6, critic lr 5e-6; `[train]`'s schedule (warm-up and
//! decay) scales both learning rates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow, bail, ensure};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData, activation};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::grpo::{GrpoPrompt, rl_prompts};
use super::losses::{gae, kl_penalised_rewards, ppo_policy_loss, ppo_value_loss};
use super::method::{Setup, StepOut, Trainer, count_trainable, params, restore_optim, save_optim, share};
use super::optim::{Accum, AdamW, StepLr};
use super::rewards::{WeightedRule, combined_reward};
use crate::data::records::{prompt_examples, read_records};
use crate::generate::{GenerateOptions, sample_completion};
use crate::model::Transformer;
use crate::model::batch::{make_batch, nll_sum, token_logps};
use crate::model::params::set_named_params;
use crate::model::reward::RewardModel;
use crate::runs::Checkpoint;
use crate::runs::reward::{RewardScorer, load_reward_model};
use crate::text::sft::Encoded;
use crate::text::tokenizer::Tokenizer;

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
    /// The reward-model run that scores responses (its score is the reward)…
    pub reward_model: Option<PathBuf>,
    /// …and/or rule rewards added to it.
    pub rules: Vec<WeightedRule>,
    /// PTX mixing (InstructGPT): a language-model loss on plain text, weighted by `ptx_coef`,
    /// added to the actor loss so the policy keeps its general language ability.
    pub ptx_dataset: Option<PathBuf>,
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

impl PpoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.reward_model.is_none() && self.rules.is_empty() {
            bail!("method `ppo` needs [ppo] reward_model = \"runs/<reward run>\" or [[ppo.rules]]");
        }
        if let Some(r) = &self.reward_model
            && !r.join("job.toml").exists()
        {
            bail!("reward model run not found: {}", r.display());
        }
        if self.ppo_epochs == 0 {
            bail!("ppo.ppo_epochs must be at least 1");
        }
        if !(self.actor_lr > 0.0 && self.critic_lr > 0.0) {
            bail!("ppo.actor_lr and ppo.critic_lr must be positive");
        }
        for r in &self.rules {
            r.rule.validate()?;
        }
        Ok(())
    }
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
    pub max_grad_norm: Option<f64>,
    pub prompts: Vec<GrpoPrompt>,
    pub tokenizer: Tokenizer,
    pub scorer: Option<RewardScorer>,
    pub stop_ids: Vec<u32>,
    pub pad: u32,
    pub max_context: usize,
    /// Plain-text examples for PTX mixing, used round-robin by step.
    pub ptx: Vec<Encoded>,
    pub reward_ema: Option<f64>,
    pub steps_done: usize,
    rng: ChaCha8Rng,
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("float tensor")
}

/// One micro-batch after rollout and scoring: sequences and per-token host values `[b, t]`.
struct Scored {
    seqs: Vec<Encoded>,
    /// Indices of the PTX examples mixed into this micro-batch.
    ptx: Vec<usize>,
    b: usize,
    t: usize,
    old_logp: Vec<f32>,
    old_values: Vec<f32>,
    adv: Vec<f32>,
    ret: Vec<f32>,
    mask: Vec<f32>,
    tokens: usize,
}

impl PpoTrainer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        actor: Transformer,
        critic: RewardModel,
        optim: AdamW,
        cfg: PpoConfig,
        max_grad_norm: Option<f64>,
        prompts: Vec<GrpoPrompt>,
        tokenizer: Tokenizer,
        stop_ids: Vec<u32>,
        pad: u32,
        seed: u64,
    ) -> Self {
        let reference = actor.without_autodiff();
        let actor_ema = (cfg.ema > 0.0).then(|| actor.without_autodiff());
        Self {
            actor,
            critic,
            reference,
            actor_ema,
            actor_optim: optim.clone(),
            critic_optim: optim,
            cfg,
            max_grad_norm,
            prompts,
            tokenizer,
            scorer: None,
            stop_ids,
            pad,
            max_context: usize::MAX,
            ptx: Vec::new(),
            reward_ema: None,
            steps_done: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn build(s: Setup) -> Result<Self> {
        let cfg = s.spec.ppo.clone().unwrap_or_default();
        let tok = &s.base.tokenizer;
        let prompts = rl_prompts(tok, prompt_examples(&s.data.records, &s.data.roles, s.file())?)?;
        let ad = s.policy.device();
        // Critic from the reward model (as DeepSpeed-Chat does), else from the policy.
        let (critic, scorer) = match &cfg.reward_model {
            Some(dir) => {
                let (rm, base) = load_reward_model(dir, &ad)?;
                let rm = rm.merged(&base.config);
                let scorer = RewardScorer::new(rm.valid(), &base);
                let critic = match &s.spec.lora {
                    Some(l) => RewardModel { backbone: rm.backbone.with_lora(l, s.spec.seed ^ 1)?, head: rm.head },
                    None => rm,
                };
                (critic, Some(scorer))
            }
            None => (RewardModel::new(s.policy.clone(), s.base.config.hidden_size, s.spec.seed), None),
        };
        let max = s.spec.train.max_seq_len;
        let ptx = match &cfg.ptx_dataset {
            Some(path) => read_records(path)?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let text = r
                        .get("text")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| anyhow!("{}: row {}: no `text` column", path.display(), i + 1))?;
                    let mut ids = tok.encode(text, true)?;
                    ids.truncate(max);
                    Ok(Encoded { target: vec![true; ids.len()], ids })
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![],
        };
        let mut t =
            Self::new(s.policy.clone(), critic, s.adamw(), cfg, s.clip(), prompts, tok.clone(), s.stop_ids.clone(), s.pad, s.spec.seed);
        t.scorer = scorer;
        t.ptx = ptx;
        t.max_context = s.base.config.max_position_embeddings;
        Ok(t)
    }

    /// Rollout and scoring of one micro-batch of prompts (steps 1–3).
    /// Returns the micro-batch, its rewards, and its summed per-token KL to the reference.
    fn rollout(
        &mut self,
        idx: &[usize],
        actor: &Transformer,
        critic: &RewardModel,
        lengths: &mut usize,
        seconds: &mut [f64; 2],
    ) -> Result<(Scored, Vec<f64>, f64)> {
        let t_gen = Instant::now();
        let c = &self.cfg;
        let opts = GenerateOptions { max_new_tokens: c.max_new_tokens, temperature: c.temperature, ..Default::default() };
        let mut seqs = Vec::with_capacity(idx.len());
        let mut scores = Vec::with_capacity(idx.len());
        for &i in idx {
            let p = &self.prompts[i];
            let r = sample_completion(actor, &p.ids, &self.stop_ids, &opts, self.max_context, &mut self.rng)?;
            let text = self.tokenizer.decode(&r, true)?;
            let mut score = combined_reward(&c.rules, &text, p.reference.as_deref());
            if let Some(s) = &self.scorer {
                score += s.score(&p.text, &text)?;
            }
            scores.push(score);
            *lengths += r.len();
            let mut ids = p.ids.clone();
            let mut target = vec![false; ids.len()];
            ids.extend(&r);
            target.extend(std::iter::repeat_n(true, r.len()));
            seqs.push(Encoded { ids, target });
        }
        seconds[0] += t_gen.elapsed().as_secs_f64();
        let t_score = Instant::now();
        let refs: Vec<&Encoded> = seqs.iter().collect();
        let pb = make_batch(&refs, self.pad, &self.reference.device());
        let [b, t] = pb.inputs.dims();
        let old_logp = host(token_logps(actor, &pb));
        let ref_logp = host(token_logps(&self.reference, &pb));
        let old_values = host(critic.values(pb.inputs.clone()));
        let mask = host(pb.weights.clone());
        let (mut adv, mut ret) = (vec![0f32; b * t], vec![0f32; b * t]);
        let mut tokens = 0usize;
        for i in 0..b {
            let pos: Vec<usize> = (0..t).filter(|&j| mask[i * t + j] > 0.0).collect();
            if pos.is_empty() {
                continue;
            }
            let lp: Vec<f32> = pos.iter().map(|&j| old_logp[i * t + j]).collect();
            let rl: Vec<f32> = pos.iter().map(|&j| ref_logp[i * t + j]).collect();
            tokens += pos.len();
            let rewards = kl_penalised_rewards(&lp, &rl, scores[i] as f32, c.kl_coef as f32, c.reward_clip as f32);
            let values: Vec<f32> = pos.iter().map(|&j| old_values[i * t + j]).collect();
            let (a, r) = gae(&rewards, &values, c.gamma as f32, c.lambda as f32);
            for (k, &j) in pos.iter().enumerate() {
                adv[i * t + j] = a[k];
                ret[i * t + j] = r[k];
            }
        }
        let kl: f64 = (0..b * t).filter(|&k| mask[k] > 0.0).map(|k| (old_logp[k] - ref_logp[k]) as f64).sum();
        seconds[1] += t_score.elapsed().as_secs_f64();
        Ok((Scored { seqs, ptx: Vec::new(), b, t, old_logp, old_values, adv, ret, mask, tokens }, scores, kl))
    }
}

impl Trainer for PpoTrainer {
    fn len(&self) -> usize {
        self.prompts.len()
    }

    fn step(&mut self, micro: &[Vec<usize>], lr: StepLr) -> Result<StepOut> {
        let n_prompts: usize = micro.iter().map(|m| m.len()).sum();
        ensure!(n_prompts > 0, "PPO needs prompts");
        let c = self.cfg.clone();
        // 1–3: rollouts and scoring of every micro-batch with the policy as it is.
        let mut seconds = [0.0; 2];
        let actor_plain = self.actor.without_autodiff();
        let critic_plain = self.critic.valid();
        let (mut scored, mut scores, mut kl_sum, mut lengths) = (Vec::new(), Vec::new(), 0.0, 0usize);
        let mut offset = 0;
        for m in micro {
            let (mut s, sc, kl) = self.rollout(m, &actor_plain, &critic_plain, &mut lengths, &mut seconds)?;
            kl_sum += kl;
            scores.extend(sc);
            // PTX examples: the k-th prompt of the step takes example (steps_done·n + k) mod len.
            if c.ptx_coef > 0.0 && !self.ptx.is_empty() {
                let n = self.ptx.len();
                s.ptx = (offset..offset + m.len()).filter(|&k| k < n).map(|k| (self.steps_done * n_prompts + k) % n).collect();
            }
            offset += m.len();
            scored.push(s);
        }
        let total_tokens: usize = scored.iter().map(|s| s.tokens).sum();
        let ptx_targets: usize = scored.iter().flat_map(|s| &s.ptx).map(|&i| self.ptx[i].target.len().saturating_sub(1)).sum();

        // 4: train.
        let t_train = Instant::now();
        let dev = self.actor.device();
        let mut m = BTreeMap::new();
        let (mut actor_norm, mut critic_norm) = (0.0, 0.0);
        for _ in 0..c.ppo_epochs.max(1) {
            let (mut aacc, mut cacc) = (Accum::new(), Accum::new());
            let (mut pl_sum, mut vl_sum, mut ent, mut ratio_m, mut clip_f, mut akl, mut ptx_sum) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            let actor = self.actor.clone();
            let critic = self.critic.clone();
            for s in &scored {
                let (b, t) = (s.b, s.t);
                let w = share(s.tokens, total_tokens);
                let refs: Vec<&Encoded> = s.seqs.iter().collect();
                let tb = make_batch(&refs, self.pad, &dev);
                let mk = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [b, t]), &dev);
                let (old_lp, adv, ret, oldv, mask) = (mk(&s.old_logp), mk(&s.adv), mk(&s.ret), mk(&s.old_values), mk(&s.mask));
                // actor
                let logits = actor.forward(tb.inputs.clone(), None);
                let lsm = activation::log_softmax(logits, 2);
                let entropy = (lsm.clone().exp() * lsm.clone()).sum_dim(2).reshape([b, t]).neg().detach();
                let denom = mask.clone().sum().clamp_min(1.0);
                ent += w * ((entropy * mask.clone()).sum() / denom.clone()).into_scalar::<f32>() as f64;
                let logp = lsm.gather(2, tb.targets.clone().reshape([b, t, 1])).reshape([b, t]);
                let ratio = ((logp.clone() - old_lp.clone()) * mask.clone()).exp().detach();
                ratio_m += w * ((ratio * mask.clone()).sum() / denom).into_scalar::<f32>() as f64;
                let (pl, cf, ak) = ppo_policy_loss(logp, old_lp, adv, mask.clone(), c.policy_clip);
                let pl = pl * w;
                pl_sum += pl.clone().into_scalar::<f32>() as f64;
                clip_f += w * cf.into_scalar::<f32>() as f64;
                akl += w * ak.into_scalar::<f32>() as f64;
                let loss = if s.ptx.is_empty() {
                    pl
                } else {
                    let pick: Vec<&Encoded> = s.ptx.iter().map(|&i| &self.ptx[i]).collect();
                    let (nll, _) = nll_sum(&actor, &make_batch(&pick, self.pad, &dev));
                    let ptx = nll / ptx_targets.max(1) as f64;
                    ptx_sum += ptx.clone().into_scalar::<f32>() as f64;
                    pl + ptx * c.ptx_coef
                };
                aacc.backward(&actor, loss);
                // critic
                let v = critic.values(tb.inputs.clone());
                let vl = ppo_value_loss(v, oldv, ret, mask, c.value_clip) * w;
                vl_sum += vl.clone().into_scalar::<f32>() as f64;
                cacc.backward(&critic, vl);
            }
            let (actor, an) = aacc.apply(actor, &mut self.actor_optim, c.actor_lr * lr.scale, self.max_grad_norm);
            let (critic, cn) = cacc.apply(critic, &mut self.critic_optim, c.critic_lr * lr.scale, self.max_grad_norm);
            self.actor = actor;
            self.critic = critic;
            (actor_norm, critic_norm) = (an, cn);
            m = BTreeMap::from([
                ("policy_loss".to_string(), pl_sum),
                ("value_loss".into(), vl_sum),
                ("entropy".into(), ent),
                ("ratio_mean".into(), ratio_m),
                ("clip_fraction".into(), clip_f),
                ("approx_kl".into(), akl),
                ("ptx_loss".into(), ptx_sum),
            ]);
        }
        if let Some(ema) = &self.actor_ema {
            let cur = params(&self.actor.without_autodiff(), false);
            let mut old = params(ema, false);
            for (k, v) in old.iter_mut() {
                if let Some(n) = cur.get(k) {
                    for (a, b) in v.data.iter_mut().zip(&n.data) {
                        *a = (c.ema as f32) * *a + (1.0 - c.ema as f32) * b;
                    }
                }
            }
            self.actor_ema = Some(set_named_params(ema.clone(), &old)?);
        }
        let reward_mean = scores.iter().sum::<f64>() / n_prompts as f64;
        let ema = match self.reward_ema {
            Some(e) => 0.9 * e + 0.1 * reward_mean,
            None => reward_mean,
        };
        self.reward_ema = Some(ema);
        self.steps_done += 1;
        let loss = m["policy_loss"];
        m.insert("reward_mean".into(), reward_mean);
        m.insert("reward_ema".into(), ema);
        m.insert("kl_to_reference".into(), kl_sum / total_tokens.max(1) as f64);
        m.insert("response_length".into(), lengths as f64 / n_prompts as f64);
        m.insert("critic_grad_norm".into(), critic_norm);
        m.insert("critic_lr".into(), c.critic_lr * lr.scale);
        m.insert("generation_seconds".into(), seconds[0]);
        m.insert("scoring_seconds".into(), seconds[1]);
        m.insert("training_seconds".into(), t_train.elapsed().as_secs_f64());
        if !critic_norm.is_finite() {
            actor_norm = critic_norm; // the runner stops on either
        }
        Ok(StepOut { loss, grad_norm: actor_norm, tokens: lengths, token_accuracy: None, metrics: m })
    }

    fn save(&self, ck: &mut Checkpoint) {
        ck.tensors.insert("trainable".into(), params(&self.actor, true));
        ck.tensors.insert("critic".into(), params(&self.critic, true));
        if let Some(ema) = &self.actor_ema {
            ck.tensors.insert("actor_ema".into(), params(ema, false));
        }
        save_optim(ck, "optimizer", &self.actor_optim);
        save_optim(ck, "critic_optimizer", &self.critic_optim);
        ck.state.extra.insert("reward_ema".into(), self.reward_ema.into());
        ck.state.extra.insert("steps_done".into(), self.steps_done.into());
    }

    fn restore(&mut self, ck: &Checkpoint, device: &Device) -> Result<()> {
        self.actor = set_named_params(self.actor.clone(), ck.group("trainable")?)?;
        self.critic = set_named_params(self.critic.clone(), ck.group("critic")?)?;
        if let Some(ema) = self.actor_ema.clone() {
            self.actor_ema = Some(set_named_params(ema, ck.group("actor_ema")?)?);
        }
        restore_optim(ck, "optimizer", &mut self.actor_optim, device)?;
        restore_optim(ck, "critic_optimizer", &mut self.critic_optim, device)?;
        self.reward_ema = ck.state.extra.get("reward_ema").and_then(|v| v.as_f64());
        self.steps_done = ck.state.extra.get("steps_done").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        Ok(())
    }

    fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    fn language_model(&self) -> Option<Transformer> {
        Some(self.actor.without_autodiff())
    }

    fn trainable_params(&self) -> usize {
        count_trainable(&self.actor) + count_trainable(&self.critic)
    }
}
