//! Running the preference, RL and distillation methods as jobs: the same run folder, event
//! stream, metrics.jsonl, checkpoints and run.json as SFT (see `job.rs`), one loop for all of
//! them, each method a [`Method`] step function over its own examples.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::tensor::Device;

use super::checkpoint::{named_params, set_named_params};
use super::distill::DistillTrainer;
use super::dpo::{DpoTrainer, EncodedPair};
use super::grpo::{GrpoPrompt, GrpoTrainer};
use super::job::{
    EventSink, JobEvent, JobSpec, Method, RunOptions, StepRecord, base_config, epoch_order, is_run_dir, latest_checkpoint, load_base,
    model_hash, read_all, split, unix_seconds,
};
use super::memory::MemoryEstimate;
use super::optim::{AdamWConfig, lr_at};
use super::ppo::PpoTrainer;
use super::reward::{RewardModel, RewardTrainer};
use super::rewards::combined_reward;
use super::sft::{Encoded, SftExample, encode};
use crate::data::records::{preference_examples, prompt_examples, read_records, sft_examples};
use crate::io::atomic_write;
use crate::io::safetensors::{SaveDtype, write_safetensors};
use crate::model::LoadedModel;
use crate::text::chat_template::Message;

/// What one step of any method reports.
struct StepOut {
    loss: f64,
    grad_norm: f64,
    tokens: usize,
    metrics: BTreeMap<String, f64>,
}

enum Trainer {
    Reward { t: RewardTrainer, pairs: Vec<(Vec<u32>, Vec<u32>)> },
    Dpo { t: DpoTrainer, pairs: Vec<EncodedPair> },
    /// `actor_lr`: `[ppo] actor_lr`, which the schedule scales (train.lr sets only the shape).
    Ppo { t: PpoTrainer, prompts: Vec<GrpoPrompt>, reward_model: Option<RewardModel>, actor_lr: f64, base_lr: f64 },
    Grpo { t: GrpoTrainer, prompts: Vec<GrpoPrompt>, reward_model: Option<RewardModel> },
    /// `on_policy`: sample the responses from the student each step (prompt-only examples).
    Distill { t: DistillTrainer, examples: Vec<Encoded>, on_policy: Option<(usize, rand_chacha::ChaCha8Rng)> },
}

fn metric_map(v: serde_json::Value) -> BTreeMap<String, f64> {
    v.as_object().map(|o| o.iter().filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x))).collect()).unwrap_or_default()
}

impl Trainer {
    fn len(&self) -> usize {
        match self {
            Trainer::Reward { pairs, .. } => pairs.len(),
            Trainer::Dpo { pairs, .. } => pairs.len(),
            Trainer::Ppo { prompts, .. } | Trainer::Grpo { prompts, .. } => prompts.len(),
            Trainer::Distill { examples, .. } => examples.len(),
        }
    }

    fn step(&mut self, idx: &[usize], lm: &LoadedModel, pad: u32, eos: &[u32], lr: f64, ppo_rules: &[super::rewards::WeightedRule]) -> Result<StepOut> {
        Ok(match self {
            Trainer::Reward { t, pairs } => {
                let c: Vec<&[u32]> = idx.iter().map(|&i| pairs[i].0.as_slice()).collect();
                let r: Vec<&[u32]> = idx.iter().map(|&i| pairs[i].1.as_slice()).collect();
                let m = t.step(&c, &r, pad, lr)?;
                let tokens = c.iter().chain(&r).map(|s| s.len()).sum();
                StepOut { loss: m.loss, grad_norm: m.grad_norm, tokens, metrics: metric_map(serde_json::to_value(m)?) }
            }
            Trainer::Dpo { t, pairs } => {
                let batch: Vec<EncodedPair> = idx.iter().map(|&i| pairs[i].clone()).collect();
                let m = t.step(&batch, pad, lr)?;
                let tokens = batch.iter().map(|p| p.chosen.ids.len() + p.rejected.ids.len()).sum();
                StepOut { loss: m.loss, grad_norm: m.grad_norm, tokens, metrics: metric_map(serde_json::to_value(m)?) }
            }
            Trainer::Grpo { t, prompts, reward_model } => {
                let batch: Vec<GrpoPrompt> = idx.iter().map(|&i| prompts[i].clone()).collect();
                let weight = t.cfg.reward_model_weight;
                let rm = reward_model.as_ref();
                let m = t.step_with(&lm.tokenizer, &batch, eos, pad, lr, &mut |p, c| {
                    Ok(match rm {
                        Some(rm) => weight * score_with(rm, p, c, pad),
                        None => 0.0,
                    })
                })?;
                let tokens = (m.completion_length * (batch.len() * t.cfg.group_size) as f64) as usize;
                StepOut { loss: m.loss, grad_norm: m.grad_norm, tokens, metrics: metric_map(serde_json::to_value(m)?) }
            }
            Trainer::Ppo { t, prompts, reward_model, actor_lr, base_lr } => {
                t.cfg.actor_lr = *actor_lr * lr / *base_lr;
                let batch: Vec<&GrpoPrompt> = idx.iter().map(|&i| &prompts[i]).collect();
                let ids: Vec<Vec<u32>> = batch.iter().map(|p| p.ids.clone()).collect();
                let tok = &lm.tokenizer;
                let rm = reward_model.as_ref();
                let m = t.step(&ids, eos, pad, &mut |i, resp| {
                    let mut score = 0.0;
                    if let Some(rm) = rm {
                        score += score_with(rm, &batch[i].ids, resp, pad);
                    }
                    if !ppo_rules.is_empty() {
                        score += combined_reward(ppo_rules, &tok.decode(resp, true)?, batch[i].reference.as_deref());
                    }
                    Ok(score)
                })?;
                let tokens = (m.response_length * batch.len() as f64) as usize;
                StepOut { loss: m.policy_loss, grad_norm: f64::NAN, tokens, metrics: metric_map(serde_json::to_value(m)?) }
            }
            Trainer::Distill { t, examples, on_policy } => {
                let sampled: Vec<Encoded>;
                let batch: Vec<&Encoded> = match on_policy {
                    None => idx.iter().map(|&i| &examples[i]).collect(),
                    Some((max_new, rng)) => {
                        let student = t.student.without_autodiff();
                        let opts = crate::generate::GenerateOptions { max_new_tokens: *max_new, temperature: 1.0, ..Default::default() };
                        sampled = idx
                            .iter()
                            .map(|&i| {
                                let prompt: Vec<u32> = examples[i].ids.iter().zip(&examples[i].target).take_while(|(_, t)| !**t).map(|(x, _)| *x).collect();
                                let r = super::grpo::sample_completion(&student, &prompt, eos, &opts, rng);
                                let mut target = vec![false; prompt.len()];
                                target.extend(std::iter::repeat_n(true, r.len()));
                                let mut ids = prompt;
                                ids.extend(r);
                                Encoded { ids, target }
                            })
                            .collect();
                        sampled.iter().collect()
                    }
                };
                let m = t.step(&batch, pad, lr)?;
                let tokens = batch.iter().map(|e| e.ids.len()).sum();
                StepOut { loss: m.loss, grad_norm: m.grad_norm, tokens, metrics: metric_map(serde_json::to_value(m)?) }
            }
        })
    }

    /// Optimisers by name, for checkpoints.
    fn optimizers(&mut self) -> Vec<(&'static str, &mut super::optim::AdamW)> {
        match self {
            Trainer::Reward { t, .. } => vec![("optimizer", &mut t.optim)],
            Trainer::Dpo { t, .. } => vec![("optimizer", &mut t.optim)],
            Trainer::Grpo { t, .. } => vec![("optimizer", &mut t.optim)],
            Trainer::Ppo { t, .. } => vec![("optimizer", &mut t.actor_optim), ("critic_optimizer", &mut t.critic_optim)],
            Trainer::Distill { t, .. } => vec![("optimizer", &mut t.optim)],
        }
    }

    /// Held-out metrics (reward and DPO runs).
    fn evaluate(&mut self, idx: &[usize], pad: u32, step: usize) -> Result<super::job::EvalRecord> {
        let (loss, metrics) = match self {
            Trainer::Reward { t, pairs } => {
                let c: Vec<&[u32]> = idx.iter().map(|&i| pairs[i].0.as_slice()).collect();
                let r: Vec<&[u32]> = idx.iter().map(|&i| pairs[i].1.as_slice()).collect();
                let m = t.evaluate(&c, &r, pad);
                (m.loss, metric_map(serde_json::to_value(m)?))
            }
            Trainer::Dpo { t, pairs } => {
                let batch: Vec<EncodedPair> = idx.iter().map(|&i| pairs[i].clone()).collect();
                let m = t.evaluate(&batch, pad)?;
                (m.loss, metric_map(serde_json::to_value(m)?))
            }
            _ => bail!("held-out evaluation is available for reward and dpo runs"),
        };
        let mut metrics = metrics;
        metrics.remove("grad_norm");
        Ok(super::job::EvalRecord { step, eval_loss: loss, perplexity: None, token_accuracy: None, metrics })
    }

    fn reseed(&mut self, seed: u64) {
        match self {
            Trainer::Grpo { t, .. } => t.reseed(seed),
            Trainer::Ppo { t, .. } => t.reseed(seed),
            Trainer::Distill { on_policy: Some((_, rng)), .. } => *rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed),
            _ => {}
        }
    }

    /// Load a checkpoint written by [`write_method_checkpoint`]; returns its state.json.
    fn restore(&mut self, ck: &Path, device: &Device) -> Result<serde_json::Value> {
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ck.join("state.json"))?)
            .with_context(|| format!("{}: bad state.json", ck.display()))?;
        let p = read_all(&ck.join("trainable.safetensors"))?;
        match self {
            Trainer::Reward { t, .. } => t.model = set_named_params(t.model.clone(), &p)?,
            Trainer::Dpo { t, .. } => t.policy = set_named_params(t.policy.clone(), &p)?,
            Trainer::Grpo { t, .. } => t.policy = set_named_params(t.policy.clone(), &p)?,
            Trainer::Distill { t, .. } => t.student = set_named_params(t.student.clone(), &p)?,
            Trainer::Ppo { t, .. } => {
                t.actor = set_named_params(t.actor.clone(), &p)?;
                t.critic = set_named_params(t.critic.clone(), &read_all(&ck.join("critic.safetensors"))?)?;
                t.reward_ema = state.get("reward_ema").and_then(|v| v.as_f64());
                t.steps_done = state.get("ppo_steps_done").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                if let Some(ema) = t.actor_ema.clone() {
                    t.actor_ema = Some(set_named_params(ema, &read_all(&ck.join("actor_ema.safetensors"))?)?);
                }
            }
        }
        for (name, opt) in self.optimizers() {
            opt.state_from_host(&read_all(&ck.join(format!("{name}.safetensors")))?, device)?;
            opt.step = state[format!("{name}_step")].as_u64().ok_or_else(|| anyhow!("{}: state.json lacks {name}_step", ck.display()))?;
        }
        Ok(state)
    }

    /// Trainable parameters to checkpoint, by file name.
    fn checkpoint(&self) -> Vec<(&'static str, BTreeMap<String, crate::io::HostTensor>)> {
        match self {
            Trainer::Reward { t, .. } => vec![("trainable.safetensors", named_params(&t.model, true))],
            Trainer::Dpo { t, .. } => vec![("trainable.safetensors", named_params(&t.policy, true))],
            Trainer::Grpo { t, .. } => vec![("trainable.safetensors", named_params(&t.policy, true))],
            Trainer::Ppo { t, .. } => {
                let mut v = vec![("trainable.safetensors", named_params(&t.actor, true)), ("critic.safetensors", named_params(&t.critic, true))];
                if let Some(ema) = &t.actor_ema {
                    v.push(("actor_ema.safetensors", named_params(ema, false)));
                }
                v
            }
            Trainer::Distill { t, .. } => vec![("trainable.safetensors", named_params(&t.student, true))],
        }
    }
}

/// A reward model's score of prompt + response.
fn score_with(rm: &RewardModel, prompt: &[u32], response: &[u32], pad: u32) -> f64 {
    let mut full = prompt.to_vec();
    full.extend(response);
    let (x, last) = super::reward::score_batch(&[&full], pad, &rm.backbone.device());
    rm.score(x, &last).into_scalar::<f32>() as f64
}

/// A reward-model run's model: base (with LoRA if the run used it) + trained head, on `device`.
pub fn load_reward_model(run_dir: &Path, device: &Device) -> Result<(RewardModel, LoadedModel)> {
    let spec = JobSpec::from_file(&run_dir.join("job.toml"))?;
    if spec.method != Method::Reward {
        bail!("{}: a {} run, not a reward-model run", run_dir.display(), spec.method.name());
    }
    let ck = latest_checkpoint(run_dir).ok_or_else(|| anyhow!("{}: run has no checkpoint", run_dir.display()))?;
    let lm = load_base(&spec.model, device)?;
    let backbone = match &spec.lora {
        Some(l) => lm.model.clone().with_lora(l, spec.seed)?,
        None => lm.model.clone(),
    };
    let rm = RewardModel::new(backbone, lm.config.hidden_size, spec.seed);
    let rm = set_named_params(rm, &read_all(&ck.join("trainable.safetensors"))?)
        .with_context(|| format!("{}: checkpoint does not fit the base model", ck.display()))?;
    Ok((rm, lm))
}

/// The same reward model with any LoRA adapters folded into plain weights.
pub fn merged_reward_model(rm: RewardModel, base: &LoadedModel) -> RewardModel {
    let device = rm.backbone.device();
    let backbone = crate::model::Transformer::from_weights(&base.config, &rm.backbone.to_weights(), &device);
    RewardModel { backbone, head: rm.head }
}

pub(crate) fn run_method(spec: JobSpec, opts: RunOptions, cancel: &AtomicBool, sink: &mut EventSink) -> Result<()> {
    spec.validate()?;
    let device_name = opts.device.clone().unwrap_or_else(|| spec.device.clone());
    let device = crate::device::parse_device(&device_name)?;
    let ad = device.clone().autodiff();
    let tc = &spec.train;
    let config = base_config(&spec.model)?;
    let data = spec.dataset.load()?;
    let records = &data.records;
    let lm = load_base(&spec.model, &ad)?;
    let tok = &lm.tokenizer;
    let eos_ids = lm.eos_ids();
    let eos = tok.eos_id().or_else(|| eos_ids.first().copied());
    let pad = tok.pad_id().or(eos).unwrap_or(0);
    let policy = match &spec.lora {
        Some(l) => lm.model.clone().with_lora(l, spec.seed)?,
        None => lm.model.clone(),
    };
    let adamw = AdamWConfig { beta1: tc.beta1, beta2: tc.beta2, eps: tc.eps, weight_decay: tc.weight_decay };
    let chat_ids = |p: &str| -> Result<Vec<u32>> {
        match &tok.chat_template {
            Some(_) => Ok(tok.apply_chat(&[Message::new("user", p)], true)?.1),
            None => tok.encode(&format!("{p}\n"), true),
        }
    };
    let f = &spec.dataset.path;
    let mut seq_kd_rows: Vec<serde_json::Value> = Vec::new();
    let mut trainer = match spec.method {
        Method::Reward => {
            let pairs = preference_examples(records, &data.columns, f)?
                .iter()
                .map(|(p, c, r)| {
                    let c = encode(tok, &SftExample::from_pair(None, p, c), tc.max_seq_len, false, eos)?.ids;
                    let r = encode(tok, &SftExample::from_pair(None, p, r), tc.max_seq_len, false, eos)?.ids;
                    Ok((c, r))
                })
                .collect::<Result<Vec<_>>>()?;
            Trainer::Reward { t: RewardTrainer::new(RewardModel::new(policy, config.hidden_size, spec.seed), adamw), pairs }
        }
        Method::Dpo => {
            let d = spec.dpo.clone().unwrap_or_default();
            let pairs = preference_examples(records, &data.columns, f)?
                .iter()
                .map(|(p, c, r)| {
                    Ok(EncodedPair {
                        chosen: encode(tok, &SftExample::from_pair(None, p, c), tc.max_seq_len, false, eos)?,
                        rejected: encode(tok, &SftExample::from_pair(None, p, r), tc.max_seq_len, false, eos)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut t = DpoTrainer::new(policy, adamw, d.beta);
            t.label_smoothing = d.label_smoothing;
            t.variant = d.variant;
            Trainer::Dpo { t, pairs }
        }
        Method::Grpo | Method::Ppo => {
            let prompts = prompt_examples(records, &data.columns, f)?
                .into_iter()
                .map(|(p, r)| Ok(GrpoPrompt { ids: chat_ids(&p)?, reference: r }))
                .collect::<Result<Vec<_>>>()?;
            if spec.method == Method::Grpo {
                let cfg = spec.grpo.clone().unwrap_or_default();
                let reward_model = match &cfg.reward_model {
                    Some(dir) => {
                        let (rm, base) = load_reward_model(dir, &device)?;
                        Some(merged_reward_model(rm, &base))
                    }
                    None => None,
                };
                Trainer::Grpo { t: GrpoTrainer::new(policy, adamw, cfg, spec.seed), prompts, reward_model }
            } else {
                let cfg = spec.ppo.clone().unwrap_or_default();
                // Critic from the reward model (as DeepSpeed-Chat does), else from the policy.
                let (critic, reward_model) = match &cfg.reward_model {
                    Some(dir) => {
                        let (rm, base) = load_reward_model(dir, &ad)?;
                        let rm = merged_reward_model(rm, &base);
                        let frozen = rm.valid();
                        let critic = match &spec.lora {
                            Some(l) => RewardModel { backbone: rm.backbone.with_lora(l, spec.seed ^ 1)?, head: rm.head },
                            None => rm,
                        };
                        (critic, Some(frozen))
                    }
                    None => (RewardModel::new(policy.clone(), config.hidden_size, spec.seed), None),
                };
                let actor_lr = cfg.actor_lr;
                let ptx = match &cfg.ptx_dataset {
                    Some(path) => read_records(path)?
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            let text = r.get("text").and_then(|v| v.as_str()).ok_or_else(|| anyhow!("{}: row {}: no `text` column", path.display(), i + 1))?;
                            let mut ids = tok.encode(text, true)?;
                            ids.truncate(tc.max_seq_len);
                            Ok(Encoded { target: vec![true; ids.len()], ids })
                        })
                        .collect::<Result<Vec<_>>>()?,
                    None => vec![],
                };
                let mut t = PpoTrainer::new(policy, critic, cfg, spec.seed);
                t.ptx = ptx;
                Trainer::Ppo { t, prompts, reward_model, actor_lr, base_lr: tc.lr }
            }
        }
        Method::Distill => {
            let d = spec.distill.clone().expect("validated");
            let teacher = load_base(&d.teacher, &device)?;
            if teacher.config.vocab_size != lm.config.vocab_size {
                bail!("teacher and student vocabularies differ ({} vs {}); distillation needs one tokenizer", teacher.config.vocab_size, lm.config.vocab_size);
            }
            let mut sft = sft_examples(records, &data.columns, f)?;
            if d.sequence_level {
                // The teacher's greedy answers replace the dataset's responses.
                let opts = crate::generate::GenerateOptions { max_new_tokens: d.max_new_tokens, ..Default::default() };
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(spec.seed);
                for ex in sft.iter_mut() {
                    let context = &ex.messages[..ex.messages.len() - 1];
                    let prompt = match &tok.chat_template {
                        Some(_) => tok.apply_chat(context, true)?.1,
                        None => tok.encode(&format!("{}\n", context.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")), true)?,
                    };
                    let answer = super::grpo::sample_completion(&teacher.model, &prompt, &eos_ids, &opts, &mut rng);
                    let text = tok.decode(&answer, true)?;
                    let user = context.last().map(|m| m.content.clone()).unwrap_or_default();
                    seq_kd_rows.push(serde_json::json!({"prompt": user, "response": text}));
                    ex.messages.last_mut().expect("non-empty").content = text;
                }
            }
            let examples = sft.iter().map(|e| encode(tok, e, tc.max_seq_len, false, eos)).collect::<Result<Vec<_>>>()?;
            let on_policy = d.on_policy.then(|| (d.max_new_tokens, <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(spec.seed)));
            let sft_weight = if d.on_policy { 0.0 } else if d.sequence_level { 1.0 } else { d.sft_weight };
            Trainer::Distill { t: DistillTrainer::new(policy, teacher.model.clone(), adamw, d.temperature, d.divergence, sft_weight), examples, on_policy }
        }
        Method::Sft => unreachable!("SFT runs in job::run"),
    };

    let held_out_ok = matches!(spec.method, Method::Reward | Method::Dpo);
    if spec.dataset.validation_fraction > 0.0 && !held_out_ok {
        bail!("dataset.validation_fraction: held-out evaluation is available for sft, reward and dpo runs");
    }
    let (train_idx, eval_idx) = split(trainer.len(), spec.dataset.validation_fraction, spec.seed);
    let per_step = tc.batch_size * tc.grad_accum;
    let steps_per_epoch = train_idx.len().div_ceil(per_step).max(1);
    let total_steps = if tc.max_steps > 0 { tc.max_steps } else { steps_per_epoch * tc.epochs };
    let (mut step, mut tokens_seen) = (0usize, 0usize);
    let (id, run_dir) = match &opts.resume {
        Some(dir) => {
            let ck = latest_checkpoint(dir).ok_or_else(|| anyhow!("{}: no checkpoint to resume from", dir.display()))?;
            let state = trainer.restore(&ck, &ad)?;
            step = state["step"].as_u64().unwrap_or(0) as usize;
            tokens_seen = state["tokens_seen"].as_u64().unwrap_or(0) as usize;
            super::job::truncate_metrics(&dir.join("metrics.jsonl"), step)?;
            (dir.file_name().and_then(|n| n.to_str()).unwrap_or("run").to_string(), dir.clone())
        }
        None => {
            let id = spec.name.clone().unwrap_or_else(|| format!("{}-{}", spec.method.name(), unix_seconds()));
            let run_dir = spec.output.join(&id);
            if run_dir.join("run.json").exists() {
                bail!("{}: run already exists; use --resume to continue it or choose another name", run_dir.display());
            }
            std::fs::create_dir_all(&run_dir).with_context(|| format!("{}: cannot create run folder", run_dir.display()))?;
            atomic_write(&run_dir.join("job.toml"), toml::to_string_pretty(&spec)?.as_bytes())?;
            (id, run_dir)
        }
    };
    sink.file = Some(std::fs::OpenOptions::new().create(true).append(true).open(run_dir.join("metrics.jsonl"))?);
    if !seq_kd_rows.is_empty() {
        let text: String = seq_kd_rows.iter().map(|r| format!("{r}\n")).collect();
        atomic_write(&run_dir.join("teacher_sft.jsonl"), text.as_bytes())?;
    }
    let trainable: usize = trainer.checkpoint().iter().flat_map(|(_, m)| m.values()).map(|t| t.data.len()).sum();
    let memory = MemoryEstimate::training(&config, trainable, tc.batch_size, tc.max_seq_len);
    let started = unix_seconds();
    sink.emit(JobEvent::Started {
        run_id: id.clone(),
        run_dir: run_dir.clone(),
        total_steps,
        start_step: step,
        train_examples: train_idx.len(),
        eval_examples: eval_idx.len(),
        memory: memory.clone(),
    });
    let ppo_rules = spec.ppo.as_ref().map(|p| p.rules.clone()).unwrap_or_default();
    let t0 = Instant::now();
    let mut last: Option<StepRecord> = None;
    let mut outcome = "finished";
    let result = (|| -> Result<()> {
        while step < total_steps {
            if cancel.load(Ordering::SeqCst) {
                outcome = "cancelled";
                break;
            }
            let epoch = step / steps_per_epoch;
            let order = epoch_order(&train_idx, epoch, spec.seed);
            let start = (step % steps_per_epoch) * per_step;
            let idx = &order[start..(start + per_step).min(order.len())];
            let lr = lr_at(step as u64, total_steps as u64, tc.warmup_steps as u64, tc.lr, tc.decay);
            trainer.reseed(spec.seed.wrapping_mul(0x9E37_79B9).wrapping_add(step as u64));
            if spec.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
                device.seed(spec.seed.wrapping_add(step as u64));
            }
            let ts = Instant::now();
            let out = trainer.step(idx, &lm, pad, &eos_ids, lr, &ppo_rules)?;
            step += 1;
            tokens_seen += out.tokens;
            if !out.loss.is_finite() {
                bail!("loss became {} at step {step}; stopped. Try a lower train.lr", out.loss);
            }
            if opts.stop_after.is_some_and(|s| step >= s) && step < total_steps {
                outcome = "cancelled";
            }
            let rec = StepRecord {
                step,
                epoch,
                loss: out.loss,
                lr,
                grad_norm: if out.grad_norm.is_finite() { out.grad_norm } else { 0.0 },
                token_accuracy: None,
                tokens: out.tokens,
                tokens_seen,
                tokens_per_second: out.tokens as f64 / ts.elapsed().as_secs_f64().max(1e-9),
                elapsed_seconds: t0.elapsed().as_secs_f64(),
                metrics: out.metrics,
            };
            sink.emit(JobEvent::Step(rec.clone()));
            last = Some(rec);
            if !eval_idx.is_empty() && (step == total_steps || (tc.eval_every > 0 && step % tc.eval_every == 0)) {
                let e = trainer.evaluate(&eval_idx, pad, step)?;
                sink.emit(JobEvent::Eval(e));
            }
            // Cancelling checkpoints first, so a cancelled run resumes exactly where it stopped.
            let pausing = step < total_steps && outcome != "cancelled" && cancel.load(Ordering::SeqCst);
            if pausing {
                outcome = "cancelled";
            }
            if step == total_steps || pausing || (tc.checkpoint_every > 0 && step % tc.checkpoint_every == 0) {
                let dst = run_dir.join("checkpoints").join(format!("step-{step:07}"));
                let tmp = run_dir.join("checkpoints").join(format!(".tmp-step-{step:07}"));
                let _ = std::fs::remove_dir_all(&tmp);
                std::fs::create_dir_all(&tmp)?;
                for (name, params) in trainer.checkpoint() {
                    write_safetensors(&tmp.join(name), &params, SaveDtype::F32, None)?;
                }
                let mut state = serde_json::json!({"step": step, "tokens_seen": tokens_seen});
                for (name, opt) in trainer.optimizers() {
                    write_safetensors(&tmp.join(format!("{name}.safetensors")), &opt.state_to_host(), SaveDtype::F32, None)?;
                    state[format!("{name}_step")] = opt.step.into();
                }
                if let Trainer::Ppo { t, .. } = &trainer {
                    state["reward_ema"] = t.reward_ema.into();
                    state["ppo_steps_done"] = t.steps_done.into();
                }
                atomic_write(&tmp.join("state.json"), state.to_string().as_bytes())?;
                let _ = std::fs::remove_dir_all(&dst);
                std::fs::rename(&tmp, &dst)?;
                sink.emit(JobEvent::Checkpoint { step, path: dst });
            }
            if outcome == "cancelled" {
                break;
            }
        }
        Ok(())
    })();
    let failure = result.as_ref().err().map(|e| format!("{e:#}"));
    let distillation = match (&trainer, &spec.distill) {
        (Trainer::Distill { t, examples, .. }, Some(d)) => Some(distill_card(t, examples, pad, &d.teacher, &config)?),
        _ => None,
    };
    let mut dataset_card = data.card.clone();
    dataset_card["examples"] = serde_json::json!(trainer.len());
    let card = serde_json::json!({
        "run_id": id,
        "method": spec.method.name(),
        "job": spec,
        "dataset": dataset_card,
        "base_model": {"path": spec.model, "sha256": model_hash(&spec.model)?, "from_run": is_run_dir(&spec.model),
                       "architecture": config.arch.name(), "parameters": config.num_params(), "trainable_parameters": trainable},
        "seed": spec.seed,
        "device": crate::device::device_label(&device_name),
        "versions": {"whetstone": env!("CARGO_PKG_VERSION"), "burn": "0.22.1"},
        "started": started,
        "ended": unix_seconds(),
        "status": if failure.is_some() { "failed" } else { outcome },
        "failure": failure,
        "steps": step,
        "total_steps": total_steps,
        "tokens_seen": tokens_seen,
        "final_metrics": {"train": last},
        "memory_estimate": memory,
        "distillation": distillation,
    });
    atomic_write(&run_dir.join("run.json"), serde_json::to_string_pretty(&card)?.as_bytes())?;
    result?;
    if outcome == "cancelled" {
        sink.emit(JobEvent::Cancelled { step });
    } else {
        sink.emit(JobEvent::Finished { step, run_dir });
    }
    Ok(())
}

/// Student vs teacher: parameters and forward speed (tokens/s) on the same batch.
fn distill_card(t: &DistillTrainer, examples: &[Encoded], pad: u32, teacher_path: &Path, student_cfg: &crate::model::ModelConfig) -> Result<serde_json::Value> {
    let teacher_cfg = base_config(teacher_path)?;
    let batch: Vec<&Encoded> = examples.iter().take(4).collect();
    let speed = |m: &crate::model::Transformer| -> f64 {
        let b = super::sft::make_batch(&batch, pad, &m.device());
        let tokens = b.n_tokens as f64;
        let start = Instant::now();
        let _ = m.forward(b.inputs, None).sum().into_scalar::<f32>();
        tokens / start.elapsed().as_secs_f64().max(1e-9)
    };
    let student = t.student.without_autodiff();
    Ok(serde_json::json!({
        "teacher": {"path": teacher_path, "parameters": teacher_cfg.num_params(), "forward_tokens_per_second": speed(&t.teacher)},
        "student": {"parameters": student_cfg.num_params(), "forward_tokens_per_second": speed(&student)},
        "size_ratio": student_cfg.num_params() as f64 / teacher_cfg.num_params() as f64,
    }))
}
