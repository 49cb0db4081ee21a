//! GGUF: dequantisation against gguf-py (llama.cpp's reference), llama.cpp-converted checkpoints
//! against transformers, conversion to an HF folder, and malformed files.

mod common;

use common::*;
use whetstone_engine::Device;
use whetstone_engine::io::gguf::{GgmlType, GgufFile, dequantize};
use whetstone_engine::io::safetensors::SaveDtype;
use whetstone_engine::model::LoadedModel;

#[test]
fn dequantisation_matches_gguf_py() {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("gguf/quant_vectors.json")).unwrap()).unwrap();
    let mut seen = Vec::new();
    for case in v.as_array().unwrap() {
        let ty = match case["type"].as_str().unwrap() {
            "Q4_0" => GgmlType::Q4_0,
            "Q4_1" => GgmlType::Q4_1,
            "Q8_0" => GgmlType::Q8_0,
            "Q4_K" => GgmlType::Q4K,
            "Q5_K" => GgmlType::Q5K,
            "Q6_K" => GgmlType::Q6K,
            t => panic!("unexpected type {t}"),
        };
        let hex = case["bytes_hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want = f64s(&case["values"]);
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &bytes, &mut got).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-5, "{}: differs from gguf-py by {d}", ty.name());
        seen.push(ty.name());
    }
    assert_eq!(seen, ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]);
}

#[test]
fn llama_cpp_converted_f32_gguf_matches_transformers() {
    // The tiny llama fixture converted by gguf-py the way convert_hf_to_gguf.py does (q/k rows
    // permuted, tokenizer as BPE metadata): it must compute exactly the HF reference.
    let m = LoadedModel::load(&fixture("gguf/tiny-llama-f32.gguf"), &Device::flex()).unwrap();
    let r = reference(&fixture("tiny-models/llama"));
    for p in r["prompts"].as_array().unwrap() {
        let ids = m.tokenizer.encode(p["text"].as_str().unwrap(), true).unwrap();
        assert_eq!(ids, u32s(&p["ids"]));
        let d = max_abs_diff(&m.token_logprobs(&ids).unwrap(), &f64s(&p["token_logprobs"]));
        assert!(d < 1e-4, "log-probs differ by {d}");
    }
    let chat = &r["chat"];
    let msgs: Vec<whetstone_engine::text::chat_template::Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
    assert_eq!(m.tokenizer.apply_chat(&msgs, true).unwrap().0, chat["text"].as_str().unwrap());
}

#[test]
fn q8_0_gguf_matches_transformers_on_the_same_quantised_weights() {
    let m = LoadedModel::load(&fixture("gguf/tiny-llama-q8_0.gguf"), &Device::flex()).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gguf/tiny-llama-q8_0.reference.json")).unwrap()).unwrap();
    for p in r["prompts"].as_array().unwrap() {
        let ids = u32s(&p["ids"]);
        let d = max_abs_diff(&m.token_logprobs(&ids).unwrap(), &f64s(&p["token_logprobs"]));
        assert!(d < 1e-4, "log-probs differ by {d}");
    }
    assert_eq!(m.info().dtype, "Q8_0");
}

#[test]
fn gguf_to_hf_folder_round_trip_is_exact() {
    let device = Device::flex();
    let src = LoadedModel::load(&fixture("gguf/tiny-llama-q8_0.gguf"), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    src.save_hf(out.path(), SaveDtype::F32).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(out.path().join(f).exists(), "{f} not written");
    }
    let back = LoadedModel::load(out.path(), &device).unwrap();
    let ids = src.tokenizer.encode("The patient reports chest pain", true).unwrap();
    assert_eq!(back.tokenizer.encode("The patient reports chest pain", true).unwrap(), ids);
    assert_eq!(src.token_logprobs(&ids).unwrap(), back.token_logprobs(&ids).unwrap());
    assert_eq!(src.tokenizer.chat_template.as_ref().unwrap().source(), back.tokenizer.chat_template.as_ref().unwrap().source());
}

#[test]
fn malformed_gguf_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("gguf/tiny-llama-f32.gguf")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.gguf", vec![], "too short"),
        ("magic.gguf", b"GGUX\x03\0\0\0".to_vec(), "bad magic"),
        ("truncated-header.gguf", good[..200].to_vec(), "truncated"),
        ("truncated-data.gguf", good[..good.len() - 100].to_vec(), "past the end"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = match GgufFile::open(&p) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        let e = LoadedModel::load(&p, &Device::flex()).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains(name), "{name}: {e}");
    }
}
