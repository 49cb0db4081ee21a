//! Teacher → student distillation (Hinton et al.; GKD-style divergences): the student learns the
//! teacher's temperature-softened next-token distribution on the response tokens, mixed with the
//! ordinary SFT loss: `loss = (1 − α)·T²·D(teacher, student) + α·NLL`. Teacher and student must
//! share a tokenizer. Three modes: off-policy (the dataset's responses), on-policy (GKD: the
//! student samples the responses each step and the teacher scores every token of them), and
//! sequence-level (Kim & Rush: the teacher answers every prompt greedily first, and the student
//! is trained on those answers with the SFT loss).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::losses::{Divergence, distill_loss};
use super::method::{Setup, StepOut, Trainer, count_trainable, params, restore_optim, save_optim, share};
use super::optim::{Accum, AdamW, StepLr};
use crate::data::records::sft_examples;
use crate::generate::{GenerateOptions, sample_completion};
use crate::model::batch::make_batch;
use crate::model::params::set_named_params;
use crate::model::{ModelConfig, Transformer};
use crate::runs::{Checkpoint, base_config, load_base_with};
use crate::text::sft::{Encoded, encode};

/// `[distill]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Teacher: HF folder, GGUF or run folder; must share the student's tokenizer.
    pub teacher: PathBuf,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_divergence")]
    pub divergence: Divergence,
    /// Weight of the plain SFT loss mixed in (off-policy mode only).
    #[serde(default)]
    pub sft_weight: f64,
    /// On-policy (GKD): the student samples responses to the prompts and the teacher scores
    /// every token of them; otherwise the dataset's responses are used.
    #[serde(default)]
    pub on_policy: bool,
    /// Sequence-level KD (Kim & Rush): the teacher answers every prompt greedily first; its
    /// answers are written to `<run>/teacher_sft.jsonl` and the student is trained on them with
    /// the SFT loss.
    #[serde(default)]
    pub sequence_level: bool,
    /// Length of sampled responses in on-policy and sequence-level modes.
    #[serde(default = "default_distill_tokens")]
    pub max_new_tokens: usize,
}

fn default_distill_tokens() -> usize {
    64
}

fn default_temperature() -> f64 {
    2.0
}

fn default_divergence() -> Divergence {
    Divergence::ForwardKl
}

impl DistillConfig {
    pub fn validate(&self) -> Result<()> {
        if self.on_policy && self.sequence_level {
            bail!("[distill] on_policy and sequence_level are two different modes; choose one");
        }
        if !self.teacher.exists() {
            bail!("distill.teacher not found: {}", self.teacher.display());
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            bail!("distill.temperature must be positive");
        }
        Ok(())
    }
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
    pub examples: Vec<Encoded>,
    pub pad: u32,
    /// On-policy: (response length, sampling generator, stop ids, context).
    pub on_policy: Option<(usize, ChaCha8Rng, Vec<u32>, usize)>,
    /// Sequence-level KD's teacher answers, as `teacher_sft.jsonl` rows.
    pub teacher_rows: Vec<serde_json::Value>,
    pub teacher_path: PathBuf,
    pub student_config: Option<ModelConfig>,
    /// Recompute each layer in the backward pass (`train.gradient_checkpointing`).
    pub recompute: bool,
}

impl DistillTrainer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        student: Transformer,
        teacher: Transformer,
        optim: AdamW,
        temperature: f64,
        divergence: Divergence,
        sft_weight: f64,
        max_grad_norm: Option<f64>,
        examples: Vec<Encoded>,
        pad: u32,
    ) -> Self {
        Self {
            student,
            teacher: teacher.without_autodiff(),
            optim,
            temperature,
            divergence,
            sft_weight,
            max_grad_norm,
            examples,
            pad,
            on_policy: None,
            teacher_rows: Vec::new(),
            teacher_path: PathBuf::new(),
            student_config: None,
            recompute: false,
        }
    }

    pub fn build(s: Setup) -> Result<Self> {
        let d = s.spec.distill.clone().ok_or_else(|| anyhow::anyhow!("method `distill` needs a [distill] section"))?;
        let tok = &s.base.tokenizer;
        let teacher = load_base_with(&d.teacher, &s.device, crate::model::Packing::Stored)?;
        if teacher.config.vocab_size != s.base.config.vocab_size {
            bail!(
                "teacher and student vocabularies differ ({} vs {}); distillation needs one tokenizer",
                teacher.config.vocab_size,
                s.base.config.vocab_size
            );
        }
        let mut sft = sft_examples(&s.data.records, &s.data.roles, s.file())?;
        let mut rows = Vec::new();
        if d.sequence_level {
            // The teacher's greedy answers replace the dataset's responses.
            let opts = GenerateOptions { max_new_tokens: d.max_new_tokens, ..Default::default() };
            let mut rng = ChaCha8Rng::seed_from_u64(s.spec.seed);
            for ex in sft.iter_mut() {
                let context = &ex.messages[..ex.messages.len() - 1];
                let prompt = match &tok.chat_template {
                    Some(_) => tok.apply_chat(context, true)?.1,
                    None => {
                        tok.encode(&format!("{}\n", context.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")), true)?
                    }
                };
                let answer =
                    sample_completion(&teacher.model, &prompt, &s.stop_ids, &opts, teacher.config.max_position_embeddings, &mut rng)?;
                let text = tok.decode(&answer, true)?;
                let user = context.last().map(|m| m.content.clone()).unwrap_or_default();
                rows.push(serde_json::json!({"prompt": user, "response": text}));
                if let Some(last) = ex.messages.last_mut() {
                    last.content = text;
                }
            }
        }
        let t = &s.spec.train;
        let examples =
            sft.iter().map(|e| encode(tok, e, t.max_seq_len, t.train_on_prompt && !d.on_policy, s.eos)).collect::<Result<Vec<_>>>()?;
        let sft_weight = if d.on_policy {
            0.0
        } else if d.sequence_level {
            1.0
        } else {
            d.sft_weight
        };
        let mut tr = Self::new(
            s.policy.clone(),
            teacher.model.clone(),
            s.adamw(),
            d.temperature,
            d.divergence,
            sft_weight,
            s.clip(),
            examples,
            s.pad,
        );
        tr.on_policy = d
            .on_policy
            .then(|| (d.max_new_tokens, ChaCha8Rng::seed_from_u64(s.spec.seed), s.stop_ids.clone(), s.base.config.max_position_embeddings));
        tr.teacher_rows = rows;
        tr.teacher_path = d.teacher.clone();
        tr.student_config = Some(s.base.config.clone());
        tr.recompute = s.spec.train.gradient_checkpointing;
        Ok(tr)
    }

    /// The examples of a micro-batch: the dataset's, or (on-policy) the prompts with the
    /// student's own sampled responses.
    fn examples_for(&mut self, idx: &[usize], student: &Transformer) -> Result<Vec<Encoded>> {
        let Some((max_new, rng, stop, ctx)) = self.on_policy.as_mut() else {
            return Ok(idx.iter().map(|&i| self.examples[i].clone()).collect());
        };
        let opts = GenerateOptions { max_new_tokens: *max_new, temperature: 1.0, ..Default::default() };
        idx.iter()
            .map(|&i| {
                let ex = &self.examples[i];
                let prompt: Vec<u32> = ex.ids.iter().zip(&ex.target).take_while(|(_, t)| !**t).map(|(x, _)| *x).collect();
                let r = sample_completion(student, &prompt, stop, &opts, *ctx, rng)?;
                let mut target = vec![false; prompt.len()];
                target.extend(std::iter::repeat_n(true, r.len()));
                let mut ids = prompt;
                ids.extend(r);
                Ok(Encoded { ids, target })
            })
            .collect()
    }
}

impl Trainer for DistillTrainer {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn step(&mut self, micro: &[Vec<usize>], lr: StepLr) -> Result<StepOut> {
        // Every micro-batch's examples first (on-policy samples come from the student as it is
        // before the update), so the step's target count is known.
        let plain = self.student.without_autodiff();
        let batches: Vec<Vec<Encoded>> = micro.iter().map(|m| self.examples_for(m, &plain)).collect::<Result<_>>()?;
        let sdev = self.student.device();
        let tdev = self.teacher.device();
        let total: usize = batches.iter().map(|b| make_batch(&b.iter().collect::<Vec<_>>(), self.pad, &tdev).n_targets).sum();
        ensure!(total > 0, "no target tokens in this step");
        let student = self.student.clone();
        let (mut acc, mut loss_v, mut kd_v, mut sft_v, mut kl_v, mut tokens) = (Accum::new(), 0.0, 0.0, 0.0, 0.0, 0);
        for exs in &batches {
            let refs: Vec<&Encoded> = exs.iter().collect();
            let sb = make_batch(&refs, self.pad, &sdev);
            let tb = make_batch(&refs, self.pad, &tdev);
            tokens += sb.n_tokens;
            let w = share(sb.n_targets, total);
            let teacher_logits = Tensor::from_inner(self.teacher.forward(tb.inputs, None)).to_device(&sdev);
            let scalar = |x: Tensor<1>| x.into_scalar::<f32>() as f64;
            let (temperature, divergence, sft_weight) = (self.temperature, self.divergence, self.sft_weight);
            // The loss of this micro-batch from the student's logits.
            let mut loss_of = |student_logits: Tensor<3>| -> Tensor<1> {
                let kd = distill_loss(student_logits.clone(), teacher_logits.clone(), sb.weights.clone(), temperature, divergence) * w;
                let kl1 =
                    distill_loss(student_logits.clone().detach(), teacher_logits.clone(), sb.weights.clone(), 1.0, Divergence::ForwardKl)
                        * w;
                let nll = crate::kernels::cross_entropy::token_logprobs(student_logits, &sb.targets).0.neg();
                let sft = (nll * sb.weights.clone()).sum() / (total as f64);
                kd_v += scalar(kd.clone().detach());
                sft_v += scalar(sft.clone().detach());
                kl_v += scalar(kl1);
                kd * (1.0 - sft_weight) + sft * sft_weight
            };
            if self.recompute {
                let (v, g) = student.recomputed_grads(sb.inputs.clone(), None, &mut |m, h| loss_of(m.logits(h)));
                loss_v += v;
                acc.add(&student, g);
            } else {
                let loss = loss_of(student.forward(sb.inputs.clone(), None));
                loss_v += scalar(loss.clone());
                acc.backward(&student, loss);
            }
        }
        let (student, grad_norm) = acc.apply(student, &mut self.optim, lr.lr, self.max_grad_norm);
        self.student = student;
        let metrics = BTreeMap::from([("distill".to_string(), kd_v), ("sft".into(), sft_v), ("teacher_student_kl".into(), kl_v)]);
        Ok(StepOut { loss: loss_v, grad_norm, tokens, token_accuracy: None, metrics })
    }

    fn save(&self, ck: &mut Checkpoint) {
        ck.tensors.insert("trainable".into(), params(&self.student, true));
        save_optim(ck, "optimizer", &self.optim);
    }

    fn restore(&mut self, ck: &Checkpoint, device: &Device) -> Result<()> {
        self.student = set_named_params(self.student.clone(), ck.group("trainable")?)?;
        restore_optim(ck, "optimizer", &mut self.optim, device)
    }

    fn reseed(&mut self, seed: u64) {
        if let Some((_, rng, _, _)) = self.on_policy.as_mut() {
            *rng = ChaCha8Rng::seed_from_u64(seed);
        }
    }

    fn language_model(&self) -> Option<Transformer> {
        Some(self.student.without_autodiff())
    }

    fn trainable_params(&self) -> usize {
        count_trainable(&self.student)
    }

    fn card(&self) -> Result<Option<serde_json::Value>> {
        let Some(student_cfg) = &self.student_config else { return Ok(None) };
        Ok(Some(distill_card(self, student_cfg)?))
    }

    fn run_files(&self) -> Vec<(String, Vec<u8>)> {
        if self.teacher_rows.is_empty() {
            return Vec::new();
        }
        let text: String = self.teacher_rows.iter().map(|r| format!("{r}\n")).collect();
        vec![("teacher_sft.jsonl".into(), text.into_bytes())]
    }
}

/// Student vs teacher: parameters and forward speed (tokens/s) on the same batch.
fn distill_card(t: &DistillTrainer, student_cfg: &ModelConfig) -> Result<serde_json::Value> {
    let teacher_path: &Path = &t.teacher_path;
    let teacher_cfg = base_config(teacher_path)?;
    let batch: Vec<&Encoded> = t.examples.iter().take(4).collect();
    let speed = |m: &Transformer| -> f64 {
        let b = make_batch(&batch, t.pad, &m.device());
        let tokens = b.n_tokens as f64;
        let start = Instant::now();
        let _ = m.forward(b.inputs, None).sum().into_scalar::<f32>();
        tokens / start.elapsed().as_secs_f64().max(1e-9)
    };
    let student = t.student.without_autodiff();
    Ok(serde_json::json!({
        "teacher": {"path": teacher_path, "parameters": teacher_cfg.num_params(), "forward_tokens_per_second": speed(&t.teacher)},
        "student": {"parameters": student_cfg.num_params(), "forward_tokens_per_second": speed(&student)},
        "size_ratio": student_cfg.num_params() as f64 / teacher_cfg.num_params().max(1) as f64,
    }))
}
