//! Frozen weights kept in their storage format (GGUF blocks, bf16/f16, or quantised on load)
//! compute what the same weights expanded to f32 compute: log-probabilities, greedy text, and
//! LoRA training on top of them; and they take less memory.

mod common;

use common::*;
use whetstone_engine::Device;
use whetstone_engine::io::quant::GgmlType;
use whetstone_engine::model::{LoadedModel, Packing, Transformer};

/// A dense copy of `m` with the same (dequantised) weights.
fn dense_copy(m: &LoadedModel, device: &Device) -> Transformer {
    Transformer::from_weights(&m.config, &m.model.to_weights(), device)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn quantised_tiny_models_match_their_dequantised_weights() {
    for name in ["llama", "qwen2", "qwen3", "llama3-tied-ropescaled"] {
        for ty in [GgmlType::Q8_0, GgmlType::Q4K] {
            let dir = fixture(&format!("tiny-models/{name}"));
            let mut packed = LoadedModel::load_with(&dir, &Device::flex(), Packing::Quantize(ty)).unwrap();
            assert!(packed.model.has_packed(), "{name}: nothing was packed");
            let dense = LoadedModel::load(&dir, &Device::flex()).unwrap();
            assert!(packed.info().weights_bytes < dense.info().weights_bytes, "{name}: packed weights take less memory");
            let ids = packed.tokenizer.encode("The patient reports chest pain at rest and shortness of breath.", true).unwrap();
            let lp_packed = packed.token_logprobs(&ids).unwrap();
            packed.model = dense_copy(&packed, &Device::flex());
            assert!(!packed.model.has_packed());
            let lp_dense = packed.token_logprobs(&ids).unwrap();
            let d = max_diff(&lp_packed, &lp_dense);
            assert!(d < 1e-4, "{name} {}: packed vs dequantised f32 log-probs differ by {d}", ty.name());
            // The weights really were quantised (the quantisers' own accuracy is checked block by
            // block in `io::quant`'s tests).
            let lp_orig = dense.token_logprobs(&ids).unwrap();
            assert!(max_diff(&lp_packed, &lp_orig) > 0.0, "{name} {}: quantisation changed nothing", ty.name());
        }
    }
}

/// LoRA on a Q8_0 base: log-probs within 1e-4 of the same adapters on the dequantised f32 base,
/// and a training step moves the adapters the same way.
#[test]
fn lora_on_a_q8_0_base_matches_f32_on_the_dequantised_weights() {
    use whetstone_engine::model::lora::LoraConfig;
    use whetstone_engine::text::sft::{SftExample, encode};
    use whetstone_engine::train::method::Trainer;
    use whetstone_engine::train::optim::{AdamW, AdamWConfig, StepLr};
    use whetstone_engine::train::sft::SftTrainer;
    let ad = Device::flex().autodiff();
    let dir = fixture("tiny-models/qwen2");
    let base = LoadedModel::load_with(&dir, &ad, Packing::Quantize(GgmlType::Q8_0)).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: ["q", "k", "v", "o", "gate", "up", "down"].map(String::from).to_vec(),
        quantize_base: None,
    };
    let dense_base = dense_copy(&base, &ad);
    let tok = &base.tokenizer;
    let ex: Vec<_> = [("Dose of amoxicillin?", "500 mg three times daily."), ("Max paracetamol per day?", "4 g in adults.")]
        .iter()
        .map(|(p, r)| encode(tok, &SftExample::from_pair(None, p, r), 64, false, tok.eos_id()).unwrap())
        .collect();
    let pad = tok.pad_id().unwrap();
    let train = |m: Transformer| {
        let mut t = SftTrainer::new(m.with_lora(&lora, 7).unwrap(), AdamW::new(AdamWConfig::default()), Some(1.0), ex.clone(), pad);
        let losses: Vec<f64> = (0..3).map(|_| t.step(&[vec![0, 1]], StepLr::constant(5e-3)).unwrap().loss).collect();
        (t.model, losses)
    };
    let (mp, lp) = train(base.model.clone());
    let (md, ld) = train(dense_base);
    assert!(mp.has_packed() && !md.has_packed());
    for (a, b) in lp.iter().zip(&ld) {
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "losses {lp:?} vs {ld:?}");
    }
    let pa = whetstone_engine::model::params::named_params(&mp, true);
    let pb = whetstone_engine::model::params::named_params(&md, true);
    assert_eq!(pa.len(), 2 * 7 * 2, "only the adapters train");
    for (k, v) in &pa {
        assert!(max_diff(&v.data, &pb[k].data) < 1e-5, "{k} differs");
    }
    let ids = tok.encode("Dose of amoxicillin? 500 mg", true).unwrap();
    let view = |model: Transformer| LoadedModel {
        model: model.without_autodiff(),
        device: Device::flex(),
        ..LoadedModel::load_with(&dir, &Device::flex(), Packing::Quantize(GgmlType::Q8_0)).unwrap()
    };
    let d = max_diff(&view(mp).token_logprobs(&ids).unwrap(), &view(md).token_logprobs(&ids).unwrap());
    assert!(d < 1e-4, "log-probs differ by {d}");
}

/// SmolLM2's Q4_1 GGUF kept in its blocks: the same log-probs and greedy text as dequantised
/// f32, in about a sixth of the memory for the projections.
#[test]
fn smollm2_gguf_in_its_blocks_matches_dequantised_f32() {
    use whetstone_engine::generate::{GenerateOptions, generate};
    let path = smollm2();
    let packed = LoadedModel::load_with(&path, &Device::flex(), Packing::Stored).unwrap();
    let dense = LoadedModel::load(&path, &Device::flex()).unwrap();
    assert!(packed.model.has_packed());
    let (pb, db) = (packed.info().weights_bytes, dense.info().weights_bytes);
    assert!(pb * 2 < db, "resident {pb} vs {db} bytes");
    let ids = packed.tokenizer.encode("What is the boiling point of water at sea level? It is", true).unwrap();
    let d = max_diff(&packed.token_logprobs(&ids).unwrap(), &dense.token_logprobs(&ids).unwrap());
    assert!(d < 1e-3, "log-probs differ by {d}");
    let (_, chat) =
        packed.tokenizer.apply_chat(&[whetstone_engine::text::chat_template::Message::new("user", "Name a fruit.")], true).unwrap();
    let opts = GenerateOptions { max_new_tokens: 16, ..Default::default() };
    let a = generate(&packed, &chat, &opts, &mut |_| true).unwrap();
    let b = generate(&dense, &chat, &opts, &mut |_| true).unwrap();
    assert_eq!(a.generated_ids, b.generated_ids, "greedy text: {:?} vs {:?}", a.text, b.text);
}

/// A LoRA job on a GGUF base keeps the base packed, and its memory estimate counts the packed
/// size; `quantize_base` is checked when the job is read.
#[test]
fn lora_jobs_keep_the_base_packed() {
    use whetstone_engine::train::JobSpec;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("d.jsonl"), "{\"prompt\": \"Hi\", \"response\": \"Hello.\"}\n").unwrap();
    let job = |extra: &str| {
        let text = format!(
            "method = \"sft\"\nmodel = {:?}\n[dataset]\npath = \"d.jsonl\"\n[train]\nbatch_size = 1\nmax_seq_len = 64\n{extra}",
            smollm2().display().to_string()
        );
        let p = tmp.path().join("j.toml");
        std::fs::write(&p, text).unwrap();
        JobSpec::from_file(&p)
    };
    let cfg = whetstone_engine::runs::base_config(&smollm2()).unwrap();
    let full = job("").unwrap();
    let lora = job("[lora]\nrank = 8\n").unwrap();
    let e_full = whetstone_engine::train::preflight::estimate(&full, &cfg).unwrap();
    let e_lora = whetstone_engine::train::preflight::estimate(&lora, &cfg).unwrap();
    assert!(e_lora.weights_bytes * 2 < e_full.weights_bytes, "{} vs {}", e_lora.weights_bytes, e_full.weights_bytes);
    let bad = job("[lora]\nrank = 8\nquantize_base = \"q3_x\"\n").unwrap();
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("quantize_base"));
}

/// An adapter Whetstone trained on a Q4_K base, against PEFT: transformers loads the GGUF (every
/// projection Q4_K, dequantised by gguf-py), PEFT loads the adapter Whetstone exported, and
/// `fixtures/qlora-q4k/reference.json` holds the log-probs they compute
/// (`fixtures/make_qlora_fixture.py`). Whetstone, with the base kept in its blocks, computes the
/// same with and without the adapter (measured: under 5e-6; held to 2e-5, the issue asks 1e-3).
#[test]
fn adapter_trained_on_a_q4_k_base_matches_peft_on_the_dequantised_base() {
    use whetstone_engine::model::lora::load_peft;
    let dir = fixture("qlora-q4k");
    let r = reference(&dir);
    assert!(r["made_by"].as_str().unwrap().contains("peft"));
    let mut m = LoadedModel::load_with(&dir.join("tiny-llama-q4_k.gguf"), &Device::flex(), Packing::Stored).unwrap();
    let projections = m.model.projections();
    assert_eq!(projections.len(), 2 * 7);
    for (layer, name, p) in projections {
        let ty = p.packed.as_ref().map(|w| w.ty);
        assert_eq!(ty, Some(GgmlType::Q4K), "layer {layer} {name} is not kept as Q4_K");
    }
    let prompts = r["prompts"].as_array().unwrap();
    let check = |m: &LoadedModel, key: &str, tol: f64| {
        for p in prompts {
            let text = p["text"].as_str().unwrap();
            let ids = m.tokenizer.encode(text, true).unwrap();
            assert_eq!(ids, u32s(&p["ids"]), "{text:?}: token ids");
            let d = max_abs_diff(&m.token_logprobs(&ids).unwrap(), &f64s(&p[key]));
            assert!(d < tol, "{key} for {text:?}: differs from the reference by {d}");
        }
    };
    check(&m, "base_token_logprobs", 2e-5);
    let (adapted, cfg) = load_peft(m.model.clone(), &dir.join("adapter")).unwrap();
    assert_eq!((cfg.rank as u64, cfg.target_names().unwrap().len()), (r["lora_r"].as_u64().unwrap(), 7));
    m.model = adapted;
    assert!(m.model.has_packed(), "the adapter goes on the packed base");
    check(&m, "adapted_token_logprobs", 2e-5);
}
