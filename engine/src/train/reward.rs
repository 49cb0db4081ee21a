//! Reward model: the language-model backbone with a scalar head, read at the last non-pad token
//! of each sequence, trained with the pairwise loss −log σ(r_chosen − r_rejected). Exported in
//! Hugging Face's sequence-classification layout (`score.weight`, `num_labels: 1`).

use anyhow::{Result, ensure};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::losses::pairwise_reward_loss;
use super::optim::{AdamW, AdamWConfig, backward_step};
use crate::model::Transformer;

#[derive(Module, Debug)]
pub struct RewardModel {
    pub backbone: Transformer,
    /// hidden → 1, no bias (HF `score`).
    pub head: Linear,
}

impl RewardModel {
    /// A new head, initialised N(0, 1/sqrt(hidden))-style from a seeded generator.
    pub fn new(backbone: Transformer, hidden: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let device = backbone.device();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5C0E);
        let std = 1.0 / (hidden as f64).sqrt();
        let w: Vec<f32> = (0..hidden).map(|_| (rng.random::<f64>() * 2.0 - 1.0) as f32 * std as f32).collect();
        let head = Linear { weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [hidden, 1]), &device)), bias: None };
        Self { backbone, head }
    }

    /// Scores `[B]` of padded sequences (`ids` `[B, T]`) read at position `last[b]`.
    pub fn score(&self, ids: Tensor<2, Int>, last: &[usize]) -> Tensor<1> {
        let h = self.backbone.forward_hidden(ids, None); // [B, T, H]
        let [b, _, d] = h.dims();
        let device = h.device();
        let idx: Vec<i32> = last.iter().flat_map(|&l| std::iter::repeat_n(l as i32, d)).collect();
        let idx = Tensor::<3, Int>::from_data(TensorData::new(idx, [b, 1, d]), &device);
        let at_last = h.gather(1, idx).reshape([b, d]);
        self.head.forward(at_last).reshape([b])
    }
}

/// Right-padded ids `[B, T]` of whole sequences and each one's last index.
pub fn score_batch(seqs: &[&[u32]], pad: u32, device: &Device) -> (Tensor<2, Int>, Vec<usize>) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![pad as i32; seqs.len() * t];
    for (i, s) in seqs.iter().enumerate() {
        for (j, &x) in s.iter().enumerate() {
            ids[i * t + j] = x as i32;
        }
    }
    let last = seqs.iter().map(|s| s.len().saturating_sub(1)).collect();
    (Tensor::from_data(TensorData::new(ids, [seqs.len(), t]), device), last)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardMetrics {
    pub loss: f64,
    pub accuracy: f64,
    pub chosen_mean: f64,
    pub rejected_mean: f64,
    pub margin: f64,
    pub grad_norm: f64,
}

pub struct RewardTrainer {
    pub model: RewardModel,
    pub optim: AdamW,
    pub max_grad_norm: Option<f64>,
}

impl RewardTrainer {
    pub fn new(model: RewardModel, adamw: AdamWConfig) -> Self {
        Self { model, optim: AdamW::new(adamw), max_grad_norm: Some(1.0) }
    }

    fn metrics(loss: f64, c: &[f32], r: &[f32], grad_norm: f64) -> RewardMetrics {
        let n = c.len() as f64;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
        RewardMetrics {
            loss,
            accuracy: c.iter().zip(r).filter(|(a, b)| a > b).count() as f64 / n,
            chosen_mean: mean(c),
            rejected_mean: mean(r),
            margin: mean(c) - mean(r),
            grad_norm,
        }
    }

    /// One step on pairs of (chosen, rejected) token sequences.
    pub fn step(&mut self, chosen: &[&[u32]], rejected: &[&[u32]], pad: u32, lr: f64) -> Result<RewardMetrics> {
        ensure!(!chosen.is_empty() && chosen.len() == rejected.len(), "need the same number of chosen and rejected sequences");
        let n = chosen.len();
        let device = self.model.backbone.device();
        let all: Vec<&[u32]> = chosen.iter().chain(rejected).copied().collect();
        let (ids, last) = score_batch(&all, pad, &device);
        let s = self.model.score(ids, &last);
        let (sc, sr) = (s.clone().slice_dim(0, 0..n), s.slice_dim(0, n..2 * n));
        let loss = pairwise_reward_loss(sc.clone(), sr.clone());
        let loss_v = loss.clone().into_scalar::<f32>() as f64;
        let (model, grad_norm) = backward_step(self.model.clone(), loss, &mut self.optim, lr, self.max_grad_norm);
        self.model = model;
        let c = sc.detach().try_into_vec_as::<f32>().expect("float");
        let r = sr.detach().try_into_vec_as::<f32>().expect("float");
        Ok(Self::metrics(loss_v, &c, &r, grad_norm))
    }

    /// Accuracy and mean scores on held-out pairs, without training.
    pub fn evaluate(&self, chosen: &[&[u32]], rejected: &[&[u32]], pad: u32) -> RewardMetrics {
        let model = self.model.valid();
        let device = model.backbone.device();
        let all: Vec<&[u32]> = chosen.iter().chain(rejected).copied().collect();
        let (ids, last) = score_batch(&all, pad, &device);
        let s = model.score(ids, &last).try_into_vec_as::<f32>().expect("float");
        let n = chosen.len();
        let (c, r) = s.split_at(n);
        let loss = c.iter().zip(r).map(|(a, b)| (1.0 + (-(a - b) as f64).exp()).ln()).sum::<f64>() / n as f64;
        Self::metrics(loss, c, r, 0.0)
    }
}

impl RewardModel {
    /// Write an HF sequence-classification folder (`*ForSequenceClassification`, `score.weight`
    /// `[1, hidden]`, `num_labels: 1`) with the tokenizer files, atomically per file.
    pub fn save_hf(&self, dir: &std::path::Path, base: &crate::model::LoadedModel) -> Result<()> {
        use crate::io::safetensors::{SaveDtype, write_safetensors};
        use crate::model::config::Arch;
        let cfg = &base.config;
        anyhow::ensure!(cfg.arch != Arch::Gpt2, "reward-model export supports the Llama and Qwen families");
        let mut tensors = match cfg.arch {
            Arch::Qwen2 => crate::model::qwen2::to_hf(&self.backbone.to_weights()),
            Arch::Qwen3 => crate::model::qwen3::to_hf(&self.backbone.to_weights()),
            _ => crate::model::llama::to_hf(&self.backbone.to_weights()),
        };
        tensors.remove("lm_head.weight");
        let w = crate::model::blocks::linear_to_host(&self.head).0; // [1, hidden]
        tensors.insert("score.weight".into(), w);
        std::fs::create_dir_all(dir)?;
        write_safetensors(&dir.join("model.safetensors"), &tensors, SaveDtype::F32, None)?;
        let mut c = cfg.to_hf_json("float32");
        let class = match cfg.arch {
            Arch::Qwen2 => "Qwen2ForSequenceClassification",
            Arch::Qwen3 => "Qwen3ForSequenceClassification",
            _ => "LlamaForSequenceClassification",
        };
        let o = c.as_object_mut().expect("object");
        o.insert("architectures".into(), serde_json::json!([class]));
        o.insert("num_labels".into(), serde_json::json!(1));
        o.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
        o.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
        if cfg.pad_token_id.is_none() {
            o.insert("pad_token_id".into(), serde_json::json!(base.tokenizer.pad_id().or(base.tokenizer.eos_id())));
        }
        crate::io::atomic_write(&dir.join("config.json"), serde_json::to_string_pretty(&c)?.as_bytes())?;
        base.tokenizer.save_hf(dir)
    }
}
