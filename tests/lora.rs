//! LoRA: only adapter weights change in training, the merged export computes what base +
//! adapter computes, and PEFT-layout adapters round-trip.

mod common;

use common::*;
use whetstone_engine::Device;
use whetstone_engine::io::safetensors::SaveDtype;
use whetstone_engine::model::LoadedModel;
use whetstone_engine::model::batch::make_batch;
use whetstone_engine::model::lora::{LoraConfig, load_peft, save_peft};
use whetstone_engine::model::params::named_params;
use whetstone_engine::text::sft::{SftExample, encode};
use whetstone_engine::train::optim::{AdamW, AdamWConfig};
use whetstone_engine::train::sft::SftTrainer;

fn lora_cfg() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: ["q", "k", "v", "o", "gate", "up", "down"].map(String::from).to_vec(),
        quantize_base: None,
    }
}

#[test]
fn lora_trains_only_adapters_and_merges_exactly() {
    let dir = fixture("tiny-models/llama");
    let ad = Device::flex().autodiff();
    let mut lm = LoadedModel::load(&dir, &ad).unwrap();
    let cfg = lora_cfg();
    let model = lm.model.clone().with_lora(&cfg, 42).unwrap();
    let before = named_params(&model, false);
    let trainable = named_params(&model, true);
    assert!(!trainable.is_empty() && trainable.keys().all(|k| k.contains(".lora.")), "{:?}", trainable.keys().collect::<Vec<_>>());
    // 2 layers × 7 projections × (A, B)
    assert_eq!(trainable.len(), 2 * 7 * 2);

    let eos = lm.tokenizer.eos_id();
    let ex: Vec<_> = [("Dose of amoxicillin?", "500 mg three times daily."), ("Max paracetamol per day?", "4 g in adults.")]
        .iter()
        .map(|(p, r)| encode(&lm.tokenizer, &SftExample::from_pair(None, p, r), 64, false, eos).unwrap())
        .collect();
    let pad = lm.tokenizer.pad_id().unwrap();
    let mut t = SftTrainer::new(model, AdamW::new(AdamWConfig::default()), Some(1.0), ex.clone(), pad);
    let mut losses = vec![];
    for _ in 0..15 {
        let b = make_batch(&ex.iter().collect::<Vec<_>>(), pad, &ad);
        losses.push(t.step_batches(&[b], 5e-3).unwrap().loss);
    }
    assert!(losses.last().unwrap() < &(losses[0] * 0.7), "loss did not fall: {losses:?}");
    let after = named_params(&t.model, false);
    for (k, v) in &before {
        let changed = after[k] != *v;
        if k.ends_with(".lora.b") {
            assert!(changed, "{k} did not train");
        } else if !k.contains(".lora.") {
            assert!(!changed, "frozen {k} changed");
        }
    }

    // base + adapter vs merged HF export
    lm.model = t.model.without_autodiff();
    lm.device = Device::flex();
    let ids = lm.tokenizer.encode("Dose of amoxicillin? 500 mg", true).unwrap();
    let with_adapter = lm.token_logprobs(&ids).unwrap();
    let out = tempfile::tempdir().unwrap();
    lm.save_hf(out.path(), SaveDtype::F32).unwrap();
    let merged = LoadedModel::load(out.path(), &Device::flex()).unwrap();
    let got = merged.token_logprobs(&ids).unwrap();
    let d = max_abs_diff(&got, &with_adapter.iter().map(|&x| x as f64).collect::<Vec<_>>());
    assert!(d < 1e-5, "merged export differs from base + adapter by {d}");
    let base = LoadedModel::load(&dir, &Device::flex()).unwrap().token_logprobs(&ids).unwrap();
    assert!(max_abs_diff(&base, &with_adapter.iter().map(|&x| x as f64).collect::<Vec<_>>()) > 1e-3, "adapter had no effect");

    // PEFT layout round trip onto a fresh base
    let peft = tempfile::tempdir().unwrap();
    save_peft(&lm.model, &cfg, "tiny-llama", peft.path()).unwrap();
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(peft.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((c["peft_type"].as_str(), c["r"].as_u64(), c["lora_alpha"].as_f64()), (Some("LORA"), Some(4), Some(8.0)));
    let mut fresh = LoadedModel::load(&dir, &Device::flex()).unwrap();
    let (m, back_cfg) = load_peft(fresh.model.clone(), peft.path()).unwrap();
    assert_eq!(back_cfg.rank, 4);
    fresh.model = m;
    assert_eq!(fresh.token_logprobs(&ids).unwrap(), with_adapter);
}

#[test]
fn unknown_lora_target_is_an_error() {
    let lm = LoadedModel::load(&fixture("tiny-models/qwen3"), &Device::flex()).unwrap();
    let cfg = LoraConfig { targets: vec!["qkv".into()], ..lora_cfg() };
    let e = lm.model.clone().with_lora(&cfg, 0).err().unwrap().to_string();
    assert!(e.contains("lora.targets") && e.contains("qkv"), "{e}");
}
