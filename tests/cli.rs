//! The CLI contract later issues and users rely on: exact command names, flags and JSON fields.

mod common;

use common::*;

fn tiny(name: &str) -> String {
    fixture(&format!("tiny-models/{name}")).display().to_string()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn generate_json_reproduces_the_reference_greedy_ids() {
    let dir = fixture("tiny-models/qwen3");
    let r = reference(&dir);
    let p = &r["prompts"][1];
    let o = whetstone(&[
        "generate",
        &tiny("qwen3"),
        "--prompt",
        p["text"].as_str().unwrap(),
        "--max-new-tokens",
        "16",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ]);
    let v = json(&o);
    assert_eq!(u32s(&v["prompt_ids"]), u32s(&p["ids"]));
    assert_eq!(u32s(&v["generated_ids"]), u32s(&p["greedy_ids"]));
    assert!(v["text"].is_string() && v["tokens_per_second"].is_number());
}

#[test]
fn generate_chat_streams_and_sampling_is_seeded() {
    let run = |seed: &str| {
        let o = whetstone(&[
            "generate",
            &tiny("llama"),
            "--prompt",
            "Blood pressure?",
            "--chat",
            "--temperature",
            "0.9",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
            "--json",
        ]);
        json(&o)
    };
    let a = run("7");
    assert_eq!(
        a,
        run("7")
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.insert("tokens_per_second".into(), a["tokens_per_second"].clone());
                serde_json::Value::Object(o)
            })
            .unwrap()
    );
    assert_ne!(a["generated_ids"], run("8")["generated_ids"]);
    // chat prompt starts with <|im_start|> (id 1) from the template
    assert_eq!(a["prompt_ids"][0], 1);
    let o = whetstone(&["generate", &tiny("llama"), "--prompt", "The patient", "--max-new-tokens", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("tokens/s"));
}

#[test]
fn score_json_matches_reference_log_probs() {
    let dir = fixture("tiny-models/gpt2");
    let p = &reference(&dir)["prompts"][0];
    let v = json(&whetstone(&["score", &tiny("gpt2"), "--text", p["text"].as_str().unwrap(), "--json"]));
    assert_eq!(u32s(&v["ids"]), u32s(&p["ids"]));
    let lp: Vec<f32> = f64s(&v["token_logprobs"]).iter().map(|&x| x as f32).collect();
    let want = f64s(&p["token_logprobs"]);
    assert!(max_abs_diff(&lp, &want) < 1e-4);
    let mean = -want.iter().sum::<f64>() / want.len() as f64;
    assert!((v["mean_nll"].as_f64().unwrap() - mean).abs() < 1e-4);
}

#[test]
fn inspect_and_devices() {
    let v = json(&whetstone(&["inspect", &tiny("qwen2"), "--json"]));
    assert_eq!(v["architecture"], "qwen2");
    assert_eq!(v["layers"], 2);
    assert_eq!(v["kv_heads"], 2);
    assert_eq!(v["chat_template"], true);
    assert_eq!(v["tied_embeddings"], true);
    // 2 layers × (q 64·64+64, k/v 2·(32·64+32), o 64·64, mlp 3·64·160, norms 2·64) + embed 320·64 + final norm 64
    assert_eq!(v["parameters"], 2 * (4160 + 4160 + 4096 + 30720 + 128) + 20480 + 64);
    let o = whetstone(&["inspect", &tiny("gpt2")]);
    assert!(stdout(&o).contains("chat template  yes"), "{}", stdout(&o));
    let d = json(&whetstone(&["devices", "--json"]));
    assert_eq!(d[0]["name"], "cpu");
    assert!(d[0]["memory_bytes"].as_u64().is_some_and(|b| b > 0), "{d}");
    // The wgpu adapter (Mesa's lavapipe in CI) with the capacity its Vulkan driver reports.
    assert_eq!(d[1]["name"], "wgpu:0", "{d}");
    assert!(d[1]["memory_bytes"].as_u64().is_some_and(|b| b > 0), "{d}");
    let o = whetstone(&["devices"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("wgpu:0") && l.contains(" GB")), "{}", stdout(&o));
}

#[test]
fn convert_writes_a_loadable_folder() {
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("gpt2-hf");
    let o = whetstone(&["convert", &tiny("gpt2"), "--out", dst.to_str().unwrap(), "--dtype", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = "Take one tablet twice daily";
    let a = json(&whetstone(&["score", &tiny("gpt2"), "--text", text, "--json"]));
    let b = json(&whetstone(&["score", dst.to_str().unwrap(), "--text", text, "--json"]));
    assert_eq!(a["token_logprobs"], b["token_logprobs"]);
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // pickle checkpoints are refused, never opened
    std::fs::write(d.join("pytorch_model.bin"), b"\x80\x04not really").unwrap();
    let o = whetstone(&["inspect", d.join("pytorch_model.bin").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pickle") && stderr(&o).contains("safetensors"), "{}", stderr(&o));
    let o = whetstone(&["inspect", d.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pickle"), "{}", stderr(&o));

    // malformed config.json: names file, line and column
    let m = d.join("broken");
    std::fs::create_dir(&m).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny-models/llama").join(f), m.join(f)).unwrap();
    }
    std::fs::write(m.join("config.json"), "{\"model_type\": \"llama\",\n \"hidden_size\": }").unwrap();
    let o = whetstone(&["inspect", m.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("config.json") && e.contains("line 2"), "{e}");
    // missing field
    std::fs::write(m.join("config.json"), "{\"model_type\": \"llama\", \"hidden_size\": 64}").unwrap();
    let e = stderr(&whetstone(&["inspect", m.to_str().unwrap()]));
    assert!(e.contains("config.json") && e.contains("num_attention_heads"), "{e}");
    // malformed safetensors
    std::fs::copy(fixture("tiny-models/llama/config.json"), m.join("config.json")).unwrap();
    std::fs::write(m.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{not json}").unwrap();
    let e = stderr(&whetstone(&["inspect", m.to_str().unwrap()]));
    assert!(e.contains("model.safetensors") && e.contains("malformed"), "{e}");
    // a tensor with the wrong shape for the config
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-models/llama/config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 128.into();
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(fixture("tiny-models/llama/model.safetensors"), m.join("model.safetensors")).unwrap();
    let e = stderr(&whetstone(&["inspect", m.to_str().unwrap()]));
    assert!(e.contains("gate_proj") && e.contains("[160, 64]") && e.contains("[128, 64]"), "{e}");
    // no such model, unknown device
    let e = stderr(&whetstone(&["inspect", "/nonexistent/model"]));
    assert!(e.contains("/nonexistent/model") && e.contains("not found"), "{e}");
    let e = stderr(&whetstone(&["inspect", &tiny("llama"), "--device", "tpu"]));
    assert!(e.contains("unknown device `tpu`"), "{e}");
}

/// `scripts/gpu-check.sh`, the check prepared for a GPU machine, passes its parity parts on
/// Mesa's lavapipe: the five tiny fixtures' log-probs through `whetstone score --device wgpu`
/// against transformers, and one step of each of the six methods on wgpu against the CPU.
#[test]
fn gpu_check_script_passes_its_parity_parts_on_lavapipe() {
    let out = std::process::Command::new(root().join("scripts/gpu-check.sh"))
        .args(["--device", "wgpu", "--no-bench", "--bin"])
        .arg(whetstone_bin())
        .output()
        .expect("run scripts/gpu-check.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok    ")).count(), 5 + 6, "{text}");
    assert!(text.contains("== 0 failed"), "{text}");
}
