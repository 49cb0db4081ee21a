//! Every tiny fixture checkpoint computes what Hugging Face transformers computes: tokenizer ids,
//! chat-template text, per-token log-probs, last-row logits and greedy ids.

mod common;

use common::*;
use whetstone_engine::Device;
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::model::LoadedModel;
use whetstone_engine::text::chat_template::Message;

const TOL: f64 = 1e-4;

pub fn check_model_against_reference(name: &str, m: &LoadedModel, reference: &serde_json::Value) {
    for p in reference["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let ids = m.tokenizer.encode(text, true).unwrap();
        assert_eq!(ids, u32s(&p["ids"]), "{name}: token ids of {text:?}");
        let lp = m.token_logprobs(&ids).unwrap();
        let d = max_abs_diff(&lp, &f64s(&p["token_logprobs"]));
        assert!(d < TOL, "{name}: log-probs of {text:?} differ by {d}");
        let logits = m.logits(&ids).unwrap();
        let d = max_abs_diff(logits.last().unwrap(), &f64s(&p["last_logits"]));
        assert!(d < TOL, "{name}: last logits of {text:?} differ by {d}");
        let opts = GenerateOptions { max_new_tokens: 16, stop_at_eos: false, ..Default::default() };
        let g = generate(m, &ids, &opts, &mut |_| true).unwrap();
        assert_eq!(g.generated_ids, u32s(&p["greedy_ids"]), "{name}: greedy ids after {text:?}");
    }
}

fn check_chat(name: &str, m: &LoadedModel, reference: &serde_json::Value) {
    let chat = &reference["chat"];
    let msgs: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let (text, ids) = m.tokenizer.apply_chat(&msgs, true).unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap(), "{name}: chat template text");
    assert_eq!(ids, u32s(&chat["ids"]), "{name}: chat ids");
}

fn run_all(device: &Device) {
    for name in TINY_MODELS {
        let dir = fixture(&format!("tiny-models/{name}"));
        let m = LoadedModel::load(&dir, device).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let r = reference(&dir);
        check_model_against_reference(name, &m, &r);
        check_chat(name, &m, &r);
    }
}

#[test]
fn tiny_models_match_transformers_on_cpu() {
    run_all(&Device::flex());
}

/// Runs on the first wgpu adapter: a real GPU, or Mesa's lavapipe in CI. Fails (never skips)
/// when there is none, so CI proves the wgpu path.
#[test]
fn tiny_models_match_transformers_on_wgpu() {
    let d = whetstone_engine::device::parse_device("wgpu").expect("a wgpu adapter (CI installs Mesa lavapipe)");
    run_all(&d);
}

#[test]
fn architectures_and_rope_conventions_are_read() {
    use whetstone_engine::model::config::{Arch, RopeScaling};
    let cfg = |n: &str| whetstone_engine::model::read_config(&fixture(&format!("tiny-models/{n}"))).unwrap();
    let l3 = cfg("llama3-tied-ropescaled"); // old layout: top-level rope_theta + rope_scaling
    assert_eq!(l3.arch, Arch::Llama);
    assert_eq!(l3.rope_theta, 500000.0);
    assert!(l3.tie_word_embeddings);
    assert!(matches!(l3.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    let q3 = cfg("qwen3"); // new layout: rope_parameters
    assert_eq!(q3.rope_theta, 1_000_000.0);
    assert!(q3.qk_norm);
    assert!(cfg("qwen2").qkv_bias);
    assert_eq!(cfg("gpt2").arch, Arch::Gpt2);
}
