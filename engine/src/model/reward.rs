//! A sequence scorer: the language-model backbone with a scalar head read at the last token of
//! each sequence. A reward model is one; PPO's critic is one read at every position. Exported
//! in Hugging Face's sequence-classification layout (`score.weight`, `num_labels: 1`).

use anyhow::Result;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

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

    /// Values `[B, T]` at every input position (PPO's critic).
    pub fn values(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let h = self.backbone.forward_hidden(ids, None);
        let [b, t, _] = h.dims();
        self.head.forward(h).reshape([b, t])
    }

    /// The same model with any LoRA adapters folded into plain weights.
    pub fn merged(self, cfg: &crate::model::ModelConfig) -> Self {
        let device = self.backbone.device();
        let backbone = Transformer::from_weights(cfg, &self.backbone.to_weights(), &device);
        Self { backbone, head: self.head }
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
