//! The whole chain from job files through the CLI: SFT → reward model → PPO, each run reading
//! the previous run's output, plus DPO, GRPO and distillation jobs started from the SFT run.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn jsonl(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n")
}

fn train(job: &str) -> serde_json::Value {
    let o = whetstone(&["train", job]);
    assert!(o.status.success(), "{job}: {}", stderr(&o));
    let dir = Path::new(job).parent().unwrap();
    let name = std::fs::read_to_string(job)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("name = ").map(|n| n.trim_matches('"').to_string()))
        .unwrap();
    serde_json::from_str(&std::fs::read_to_string(dir.join("runs").join(&name).join("run.json")).unwrap()).unwrap()
}

fn step_metrics(dir: &Path, run: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("runs").join(run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .collect()
}

#[test]
fn sft_then_reward_model_then_ppo_and_friends() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let qa = [
        ("Chest pain at rest?", "Emergency."),
        ("Mild cough?", "Routine."),
        ("Stiff neck and fever?", "Urgent."),
        ("Small cut?", "Routine."),
    ];
    write(d, "sft.jsonl", &jsonl(&qa.iter().map(|(q, a)| serde_json::json!({"question": q, "answer": a})).collect::<Vec<_>>()));
    write(
        d,
        "prefs.jsonl",
        &jsonl(&qa.iter().map(|(q, a)| serde_json::json!({"prompt": q, "chosen": a, "rejected": "No idea."})).collect::<Vec<_>>()),
    );
    write(
        d,
        "plain.jsonl",
        &jsonl(&[
            serde_json::json!({"text": "Triage sorts patients by urgency."}),
            serde_json::json!({"text": "Call an ambulance for chest pain."}),
        ]),
    );
    write(d, "prompts.jsonl", &jsonl(&qa.iter().map(|(q, a)| serde_json::json!({"prompt": q, "reference": a})).collect::<Vec<_>>()));
    let model = fixture("tiny-models/qwen3").display().to_string();
    let lora = "[lora]\nrank = 4\nalpha = 8\n";
    let sft = write(
        d,
        "sft.toml",
        &format!(
            "method = \"sft\"\nmodel = {model:?}\nname = \"sft\"\n[dataset]\npath = \"sft.jsonl\"\n[train]\nmax_steps = 4\nbatch_size = 4\nlr = 5e-3\n{lora}"
        ),
    );
    let rm = write(
        d,
        "rm.toml",
        &format!(
            "method = \"reward\"\nmodel = \"runs/sft\"\nname = \"rm\"\n[dataset]\npath = \"prefs.jsonl\"\nvalidation_fraction = 0.25\n[train]\nmax_steps = 4\nbatch_size = 4\nlr = 1e-3\neval_every = 2\n{lora}"
        ),
    );
    let ppo = write(
        d,
        "ppo.toml",
        &format!(
            "method = \"ppo\"\nmodel = \"runs/sft\"\nname = \"ppo\"\n[dataset]\npath = \"prompts.jsonl\"\n[train]\nmax_steps = 2\nbatch_size = 4\nlr = 1e-4\n{lora}[ppo]\nreward_model = \"runs/rm\"\nmax_new_tokens = 6\nactor_lr = 1e-4\nptx_dataset = \"plain.jsonl\"\nptx_coef = 0.5\n"
        ),
    );
    let dpo = write(
        d,
        "dpo.toml",
        &format!(
            "method = \"dpo\"\nmodel = \"runs/sft\"\nname = \"dpo\"\n[dataset]\npath = \"prefs.jsonl\"\n[train]\nmax_steps = 3\nbatch_size = 4\nlr = 2e-3\n{lora}[dpo]\nbeta = 0.1\n"
        ),
    );
    let grpo = write(
        d,
        "grpo.toml",
        &format!(
            "method = \"grpo\"\nmodel = \"runs/sft\"\nname = \"grpo\"\n[dataset]\npath = \"prompts.jsonl\"\n[train]\nmax_steps = 2\nbatch_size = 2\nlr = 1e-3\n{lora}[grpo]\ngroup_size = 3\nmax_new_tokens = 6\nreward_model = \"runs/rm\"\nreward_model_weight = 0.5\n[[grpo.rules]]\nrule = \"exact_match\"\nnormalise = {{ trim = true }}\n"
        ),
    );
    let distill = write(
        d,
        "distill.toml",
        &format!(
            "method = \"distill\"\nmodel = {model:?}\nname = \"distill\"\n[dataset]\npath = \"sft.jsonl\"\n[train]\nmax_steps = 3\nbatch_size = 4\nlr = 3e-3\n{lora}[distill]\nteacher = \"runs/sft\"\ntemperature = 2.0\n"
        ),
    );

    assert_eq!(train(&sft)["status"], "finished");
    let card = train(&rm);
    assert_eq!((card["status"].as_str(), card["base_model"]["from_run"].as_bool()), (Some("finished"), Some(true)));
    assert!(step_metrics(d, "rm").iter().all(|s| s["metrics"]["accuracy"].is_number()));
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(d.join("runs/rm/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2, "held-out evaluation at steps 2 and 4");
    assert!(evals[1]["metrics"]["accuracy"].is_number() && evals[1]["perplexity"].is_null());
    assert_eq!(train(&ppo)["status"], "finished");
    let ppo_steps = step_metrics(d, "ppo");
    assert_eq!(ppo_steps.len(), 2);
    assert!(ppo_steps[0]["metrics"]["ptx_loss"].as_f64().unwrap() > 0.0, "PTX mixing is on");
    for k in ["reward_mean", "kl_to_reference", "entropy", "value_loss", "clip_fraction", "approx_kl", "ratio_mean", "response_length"] {
        assert!(ppo_steps[1]["metrics"][k].is_number(), "ppo metric {k} missing: {}", ppo_steps[1]);
    }
    assert_eq!(train(&dpo)["status"], "finished");
    assert!(step_metrics(d, "dpo")[0]["metrics"]["rewards/margins"].is_number());
    assert_eq!(train(&grpo)["status"], "finished");
    assert!(step_metrics(d, "grpo")[0]["metrics"]["reward_mean"].is_number());
    let card = train(&distill);
    assert_eq!(card["status"], "finished");
    assert!(card["distillation"]["teacher"]["parameters"].as_u64().unwrap() > 0);
    assert!(card["distillation"]["student"]["forward_tokens_per_second"].as_f64().unwrap() > 0.0);
    let onp = write(
        d,
        "onpolicy.toml",
        &format!(
            "method = \"distill\"\nmodel = {model:?}\nname = \"onpolicy\"\n[dataset]\npath = \"sft.jsonl\"\n[train]\nmax_steps = 3\nbatch_size = 2\nlr = 3e-3\n{lora}[distill]\nteacher = \"runs/sft\"\non_policy = true\nmax_new_tokens = 6\n"
        ),
    );
    assert_eq!(train(&onp)["status"], "finished");
    assert!(step_metrics(d, "onpolicy").iter().all(|s| s["metrics"]["teacher_student_kl"].as_f64().unwrap().is_finite()));
    let seq = write(
        d,
        "seqkd.toml",
        &format!(
            "method = \"distill\"\nmodel = {model:?}\nname = \"seqkd\"\n[dataset]\npath = \"sft.jsonl\"\n[train]\nmax_steps = 2\nbatch_size = 2\n{lora}[distill]\nteacher = \"runs/sft\"\nsequence_level = true\nmax_new_tokens = 8\n"
        ),
    );
    assert_eq!(train(&seq)["status"], "finished");
    let teacher_rows = std::fs::read_to_string(d.join("runs/seqkd/teacher_sft.jsonl")).unwrap();
    assert_eq!(teacher_rows.lines().count(), 4, "one teacher answer per prompt");
    let dist = step_metrics(d, "distill");
    assert!(dist[2]["metrics"]["teacher_student_kl"].as_f64().unwrap() < dist[0]["metrics"]["teacher_student_kl"].as_f64().unwrap());

    // exports: the PPO actor as an HF folder, the reward model in sequence-classification layout
    let out = d.join("ppo-export");
    let o = whetstone(&["export", d.join("runs/ppo").to_str().unwrap(), "--out", out.to_str().unwrap(), "--merge"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = whetstone(&["generate", out.to_str().unwrap(), "--prompt", "Mild cough?", "--chat", "--max-new-tokens", "4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rm_out = d.join("rm-export");
    let o = whetstone(&["export", d.join("runs/rm").to_str().unwrap(), "--out", rm_out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rm_out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "Qwen3ForSequenceClassification");

    // a PPO job without a reward is refused in one line
    let bad = write(d, "bad.toml", &format!("method = \"ppo\"\nmodel = {model:?}\n[dataset]\npath = \"prompts.jsonl\"\n"));
    let o = whetstone(&["train", &bad]);
    assert!(!o.status.success() && stderr(&o).contains("reward_model") && stderr(&o).trim_end().lines().count() == 1, "{}", stderr(&o));
}

/// Interrupt after step 3 (last checkpoint: step 2), resume, and compare every step record
/// (loss, lr, method metrics) with an uninterrupted run, as written to metrics.jsonl.
fn resume_matches(method_toml: &str, data: &[serde_json::Value]) {
    use whetstone_engine::runs::JobEvent;
    use whetstone_engine::train::{JobSpec, RunOptions, spawn};
    let run = |dir: &Path, opts: RunOptions| {
        write(dir, "data.jsonl", &jsonl(data));
        let job = write(dir, "job.toml", method_toml);
        let h = spawn(JobSpec::from_file(Path::new(&job)).unwrap(), opts);
        let evs: Vec<JobEvent> = h.events.iter().collect();
        if let Some(JobEvent::Failed { reason }) = evs.last() {
            panic!("{reason}");
        }
        evs
    };
    let steps = |dir: &Path| -> Vec<serde_json::Value> {
        step_metrics(dir, "r")
            .into_iter()
            .map(|mut v| {
                for k in ["tokens_per_second", "elapsed_seconds"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                for k in ["generation_seconds", "scoring_seconds", "training_seconds"] {
                    v["metrics"].as_object_mut().unwrap().remove(k);
                }
                v
            })
            .collect()
    };
    let a = tempfile::tempdir().unwrap();
    run(a.path(), RunOptions::default());
    let b = tempfile::tempdir().unwrap();
    let first = run(b.path(), RunOptions { stop_after: Some(3), ..Default::default() });
    assert!(matches!(first.last(), Some(JobEvent::Cancelled { step: 3 })), "{:?}", first.last());
    let resumed = run(b.path(), RunOptions { resume: Some(b.path().join("runs/r")), ..Default::default() });
    assert!(matches!(resumed[0], JobEvent::Started { start_step: 2, .. }));
    let (sa, sb) = (steps(a.path()), steps(b.path()));
    assert_eq!(sa.len(), 6);
    assert_eq!(sa, sb);
}

#[test]
fn ppo_and_dpo_runs_resume_exactly() {
    let model = fixture("tiny-models/qwen3").display().to_string();
    let qa = [("Chest pain?", "yes"), ("Runny nose?", "no"), ("Seizure?", "yes"), ("Sneezing?", "no")];
    let prompts: Vec<_> = qa.iter().map(|(q, a)| serde_json::json!({"prompt": q, "reference": a})).collect();
    resume_matches(
        &format!(
            "method = \"ppo\"\nmodel = {model:?}\nname = \"r\"\n[dataset]\npath = \"data.jsonl\"\n[train]\nmax_steps = 6\nbatch_size = 2\ncheckpoint_every = 2\n[lora]\nrank = 4\ndropout = 0.1\n[ppo]\nmax_new_tokens = 5\nactor_lr = 1e-3\ncritic_lr = 1e-3\nema = 0.9\n[[ppo.rules]]\nrule = \"contains\"\n"
        ),
        &prompts,
    );
    let prefs: Vec<_> = qa.iter().map(|(q, a)| serde_json::json!({"prompt": q, "chosen": a, "rejected": "maybe"})).collect();
    resume_matches(
        &format!(
            "method = \"dpo\"\nmodel = {model:?}\nname = \"r\"\n[dataset]\npath = \"data.jsonl\"\n[train]\nmax_steps = 6\nbatch_size = 2\nlr = 3e-3\ncheckpoint_every = 2\n"
        ),
        &prefs,
    );
}
