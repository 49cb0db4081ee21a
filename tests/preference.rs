//! Reward model, DPO, distillation, GRPO and PPO trainers on tiny fixtures: the reward model
//! separates a synthetic preference set on held-out pairs; DPO drives rewards/accuracies up and
//! margins positive; distillation lowers the teacher–student KL; GRPO and PPO raise a rule
//! reward on a yes/no toy task (PPO with its KL bounded).

mod common;

use common::*;
use whetstone_engine::Device;
use whetstone_engine::model::LoadedModel;
use whetstone_engine::model::reward::RewardModel;
use whetstone_engine::text::sft::{SftExample, encode, reward_input};
use whetstone_engine::train::dpo::{DpoConfig, DpoTrainer, EncodedPair};
use whetstone_engine::train::method::Trainer;
use whetstone_engine::train::optim::{AdamW, AdamWConfig, StepLr};
use whetstone_engine::train::reward::RewardTrainer;

const SYMPTOMS: [&str; 12] = [
    "chest pain",
    "a mild cough",
    "a stiff neck",
    "sneezing",
    "slurred speech",
    "a small cut",
    "fainting",
    "an itchy rash",
    "heavy bleeding",
    "a sore throat",
    "a seizure",
    "a runny nose",
];

fn pairs(prompts: &[&str]) -> Vec<(String, String, String)> {
    prompts
        .iter()
        .map(|s| (format!("Patient has {s}."), "Assess urgency and advise care.".to_string(), "Whatever, google it.".to_string()))
        .collect()
}

fn adamw() -> AdamW {
    AdamW::new(AdamWConfig::default())
}

#[test]
fn reward_model_separates_held_out_pairs() {
    let ad = Device::flex().autodiff();
    let lm = LoadedModel::load(&fixture("tiny-models/llama"), &ad).unwrap();
    let tok = &lm.tokenizer;
    let hidden = lm.config.hidden_size;
    let all: Vec<(Vec<u32>, Vec<u32>)> =
        pairs(&SYMPTOMS).iter().map(|(p, c, r)| (reward_input(tok, p, c, 256).unwrap(), reward_input(tok, p, r, 256).unwrap())).collect();
    let pad = tok.pad_id().unwrap();
    let mut t =
        RewardTrainer { model: RewardModel::new(lm.model.clone(), hidden, 1), optim: adamw(), max_grad_norm: Some(1.0), pairs: all, pad };
    let (train, held): (Vec<usize>, Vec<usize>) = ((0..8).collect(), (8..12).collect());
    let before = t.evaluate(&held, 4, 0).unwrap().unwrap();
    let mut last = None;
    for _ in 0..30 {
        last = Some(t.step(std::slice::from_ref(&train), StepLr::constant(1e-3)).unwrap());
    }
    let m = last.unwrap();
    assert!(m.loss < 0.1 && m.metrics["accuracy"] == 1.0, "{m:?}");
    let after = t.evaluate(&held, 4, 30).unwrap().unwrap();
    assert!(after.metrics["accuracy"] > 0.9, "held-out accuracy {} (before {})", after.metrics["accuracy"], before.metrics["accuracy"]);
    assert!(after.metrics["margin"] > 0.0 && after.metrics["margin"] > before.metrics["margin"], "{after:?}");

    // HF sequence-classification export
    let out = tempfile::tempdir().unwrap();
    t.model.save_hf(out.path(), &lm).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(cfg["num_labels"], 1);
    let st = whetstone_engine::io::safetensors::SafetensorsFolder::open(out.path()).unwrap();
    assert_eq!(st.get("score.weight").unwrap().shape, vec![1, hidden]);
    assert!(!st.contains("lm_head.weight"));
}

#[test]
fn dpo_raises_reward_accuracy_and_margins() {
    let ad = Device::flex().autodiff();
    let lm = LoadedModel::load(&fixture("tiny-models/qwen3"), &ad).unwrap();
    let tok = &lm.tokenizer;
    let eos = tok.eos_id();
    let data: Vec<EncodedPair> = pairs(&SYMPTOMS[..6])
        .iter()
        .map(|(p, c, r)| EncodedPair {
            chosen: encode(tok, &SftExample::from_pair(None, p, c), 128, false, eos).unwrap(),
            rejected: encode(tok, &SftExample::from_pair(None, p, r), 128, false, eos).unwrap(),
        })
        .collect();
    let pad = tok.pad_id().unwrap();
    let mut t = DpoTrainer::new(lm.model.clone(), adamw(), DpoConfig::default(), Some(1.0), data, pad);
    let idx = vec![(0..6).collect::<Vec<usize>>()];
    let first = t.step(&idx, StepLr::constant(2e-3)).unwrap();
    // At step one the policy is the reference: zero rewards, loss log 2.
    assert!(first.metrics["rewards/chosen"].abs() < 1e-4 && first.metrics["rewards/margins"].abs() < 1e-4, "{first:?}");
    assert!((first.loss - std::f64::consts::LN_2).abs() < 1e-4);
    let mut m = first.clone();
    for _ in 0..15 {
        m = t.step(&idx, StepLr::constant(2e-3)).unwrap();
    }
    assert_eq!(m.metrics["rewards/accuracies"], 1.0, "{m:?}");
    assert!(m.metrics["rewards/margins"] > 0.5 && m.loss < first.loss * 0.8, "{m:?}");
    assert!(m.metrics["logps/chosen"] > m.metrics["logps/rejected"], "{m:?}");
    for k in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"] {
        assert!(m.metrics.contains_key(k), "metric {k} missing");
    }
}

#[test]
fn distillation_lowers_student_teacher_kl() {
    use whetstone_engine::train::distill::DistillTrainer;
    use whetstone_engine::train::losses::Divergence;
    // The tiny fixtures share one tokenizer: a llama teacher, a qwen3 student.
    let ad = Device::flex().autodiff();
    let teacher = LoadedModel::load(&fixture("tiny-models/llama"), &Device::flex()).unwrap();
    let student = LoadedModel::load(&fixture("tiny-models/qwen3"), &ad).unwrap();
    let tok = &student.tokenizer;
    let eos = tok.eos_id();
    let ex: Vec<_> =
        pairs(&SYMPTOMS[..4]).iter().map(|(p, c, _)| encode(tok, &SftExample::from_pair(None, p, c), 128, false, eos).unwrap()).collect();
    let pad = tok.pad_id().unwrap();
    let idx = vec![(0..4).collect::<Vec<usize>>()];
    for div in [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::Jsd { beta: 0.5 }] {
        let mut t = DistillTrainer::new(student.model.clone(), teacher.model.clone(), adamw(), 2.0, div, 0.0, Some(1.0), ex.clone(), pad);
        let first = t.step(&idx, StepLr::constant(3e-3)).unwrap();
        let mut last = first.clone();
        for _ in 0..20 {
            last = t.step(&idx, StepLr::constant(3e-3)).unwrap();
        }
        assert!(last.metrics["teacher_student_kl"] < first.metrics["teacher_student_kl"] * 0.5, "{div:?}: {first:?} -> {last:?}");
        assert!(last.metrics["distill"] < first.metrics["distill"], "{div:?}");
    }
}

const YES_NO: [(&str, &str); 4] = [
    ("Is chest pain an emergency?", "yes"),
    ("Is a runny nose an emergency?", "no"),
    ("Is a seizure an emergency?", "yes"),
    ("Is sneezing an emergency?", "no"),
];

/// A tiny qwen3 SFT-trained on both answers for every question, so sampling says yes or no
/// about half the time each; an RL method must then learn which one is right.
fn yes_no_warm_start() -> (LoadedModel, whetstone_engine::model::Transformer) {
    use whetstone_engine::train::sft::SftTrainer;
    let ad = Device::flex().autodiff();
    let lm = LoadedModel::load(&fixture("tiny-models/qwen3"), &ad).unwrap();
    let tok = &lm.tokenizer;
    let eos = tok.eos_id();
    let pad = tok.pad_id().unwrap();
    let warm: Vec<_> = YES_NO
        .iter()
        .flat_map(|(q, _)| ["yes", "no"].map(|a| encode(tok, &SftExample::from_pair(None, q, a), 64, false, eos).unwrap()))
        .collect();
    let n = warm.len();
    let mut sft = SftTrainer::new(lm.model.clone(), adamw(), Some(1.0), warm, pad);
    for _ in 0..40 {
        sft.step(&[(0..n).collect()], StepLr::constant(1e-2)).unwrap();
    }
    let model = sft.model.clone();
    (lm, model)
}

fn yes_no_prompts(tok: &whetstone_engine::text::tokenizer::Tokenizer, repeat: usize) -> Vec<whetstone_engine::train::grpo::GrpoPrompt> {
    use whetstone_engine::text::chat_template::Message;
    (0..repeat)
        .flat_map(|_| YES_NO.iter())
        .map(|(q, a)| whetstone_engine::train::grpo::GrpoPrompt {
            text: q.to_string(),
            ids: tok.apply_chat(&[Message::new("user", q)], true).unwrap().1,
            reference: Some(a.to_string()),
        })
        .collect()
}

#[test]
fn grpo_raises_exact_match_on_a_toy_task() {
    use whetstone_engine::train::grpo::{GrpoConfig, GrpoTrainer};
    use whetstone_engine::train::rewards::{Normalise, Rule, WeightedRule};
    let (lm, warm) = yes_no_warm_start();
    let tok = &lm.tokenizer;
    let pad = tok.pad_id().unwrap();
    let cfg = GrpoConfig {
        group_size: 16,
        max_new_tokens: 8,
        rules: vec![WeightedRule { rule: Rule::ExactMatch { normalise: Normalise { trim: true, ..Default::default() } }, weight: 1.0 }],
        ..Default::default()
    };
    let stop = vec![tok.eos_id().unwrap()];
    let mut g = GrpoTrainer::new(warm, adamw(), cfg, Some(1.0), yes_no_prompts(tok, 1), tok.clone(), stop, pad, 5);
    let idx = vec![(0..4).collect::<Vec<usize>>()];
    let rewards: Vec<f64> = (0..30).map(|_| g.step(&idx, StepLr::constant(3e-3)).unwrap().metrics["reward_mean"]).collect();
    let start = rewards[..2].iter().sum::<f64>() / 2.0;
    let end = rewards[rewards.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(start > 0.2 && start < 0.8, "warm start should be a coin flip: {rewards:?}");
    assert!(end > 0.9 && end > start + 0.2, "exact match did not rise: {rewards:?}");
}

#[test]
fn ppo_raises_reward_on_a_rule_while_kl_stays_bounded() {
    use whetstone_engine::train::ppo::{PpoConfig, PpoTrainer};
    use whetstone_engine::train::rewards::{Normalise, Rule, WeightedRule};
    let (lm, warm) = yes_no_warm_start();
    let tok = &lm.tokenizer;
    let pad = tok.pad_id().unwrap();
    let stop = vec![tok.eos_id().unwrap()];
    // four rollouts of each question per step
    let rule = Rule::ExactMatch { normalise: Normalise { trim: true, ..Default::default() } };
    let critic = RewardModel::new(warm.clone(), lm.config.hidden_size, 3);
    let cfg = PpoConfig {
        actor_lr: 3e-3,
        critic_lr: 1e-3,
        max_new_tokens: 8,
        rules: vec![WeightedRule { rule, weight: 1.0 }],
        ..Default::default()
    };
    let mut p = PpoTrainer::new(warm, critic, adamw(), cfg, Some(1.0), yes_no_prompts(tok, 4), tok.clone(), stop, pad, 11);
    let idx = vec![(0..16).collect::<Vec<usize>>()];
    let mut hist = Vec::new();
    for _ in 0..30 {
        let m = p.step(&idx, StepLr::constant(1.0)).unwrap().metrics;
        assert!(m["kl_to_reference"].is_finite() && m["value_loss"].is_finite() && m["entropy"] >= 0.0);
        hist.push(m);
    }
    let start = hist[..2].iter().map(|m| m["reward_mean"]).sum::<f64>() / 2.0;
    let end = hist[hist.len() - 3..].iter().map(|m| m["reward_mean"]).sum::<f64>() / 3.0;
    let rewards: Vec<f64> = hist.iter().map(|m| m["reward_mean"]).collect();
    assert!(start < 0.8 && end > 0.9, "reward did not rise: {rewards:?}");
    let max_kl = hist.iter().map(|m| m["kl_to_reference"]).fold(0.0, f64::max);
    assert!(max_kl < 3.0, "KL to the reference blew up: {max_kl}");
    assert!(hist.iter().all(|m| m["generation_seconds"] > 0.0 && m["training_seconds"] > 0.0));
}
