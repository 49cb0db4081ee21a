//! Jobs end to end: TOML spec → runner → events / metrics.jsonl / run.json / checkpoints,
//! exact resume, exports, and one-line errors for bad job files.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use whetstone_engine::Device;
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::runs::{JobEvent, StepRecord, read_metrics};
use whetstone_engine::text::chat_template::Message;
use whetstone_engine::train::{JobSpec, RunOptions, spawn};

const DATA: &[(&str, &str)] = &[
    ("Fever 39C and stiff neck?", "Urgent: possible meningitis."),
    ("Mild cough for two days?", "Routine: rest and fluids."),
    ("Chest pain at rest?", "Emergency: call an ambulance."),
    ("Itchy rash on arm?", "Routine: see a GP this week."),
    ("Twisted ankle, can walk?", "Routine: rest, ice, elevate."),
];

fn write_data(dir: &Path) -> PathBuf {
    let p = dir.join("triage.jsonl");
    let lines: Vec<String> = DATA.iter().map(|(q, a)| serde_json::json!({"question": q, "answer": a}).to_string()).collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn job(dir: &Path, model: &str, extra: &str) -> PathBuf {
    let data = write_data(dir);
    let text = format!(
        "method = \"sft\"\nmodel = {:?}\nseed = 3\noutput = {:?}\n{extra}\n[dataset]\npath = {:?}\n",
        fixture(&format!("tiny-models/{model}")).display().to_string(),
        dir.join("runs").display().to_string(),
        data.display().to_string()
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_to_end(spec: JobSpec, opts: RunOptions) -> Vec<JobEvent> {
    let h = spawn(spec, opts);
    let evs: Vec<JobEvent> = h.events.iter().collect();
    h.join();
    if let Some(JobEvent::Failed { reason }) = evs.last() {
        panic!("job failed: {reason}");
    }
    evs
}

fn steps(evs: &[JobEvent]) -> Vec<StepRecord> {
    evs.iter().filter_map(|e| if let JobEvent::Step(s) = e { Some(s.clone()) } else { None }).collect()
}

#[test]
fn sft_job_memorises_writes_its_records_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = "name = \"memo\"\n[train]\nepochs = 40\nbatch_size = 5\nlr = 1e-2\nwarmup_steps = 3\ncheckpoint_every = 20\n";
    let spec = JobSpec::from_file(&job(tmp.path(), "qwen3", extra)).unwrap();
    let evs = run_to_end(spec, RunOptions::default());
    assert!(matches!(evs[0], JobEvent::Started { total_steps: 40, train_examples: 5, .. }), "{:?}", evs[0]);
    assert!(matches!(evs.last().unwrap(), JobEvent::Finished { step: 40, .. }));
    let s = steps(&evs);
    assert_eq!(s.len(), 40);
    assert!(s[0].loss > 3.0 && s[39].loss < 0.05, "loss {} -> {}", s[0].loss, s[39].loss);
    assert!(s.iter().all(|r| r.tokens_per_second > 0.0 && r.grad_norm.is_finite()));
    assert_eq!(s[0].lr, 0.0); // warm-up starts at zero
    let run = tmp.path().join("runs/memo");
    // metrics.jsonl is the same stream, event for event
    let lines: Vec<String> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(String::from).collect();
    let sent: Vec<String> = evs.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    assert_eq!(lines, sent);
    assert_eq!(read_metrics(&run).unwrap().len(), evs.len());
    let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(card["status"], "finished");
    assert_eq!(card["dataset"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(card["base_model"]["architecture"], "qwen3");
    assert!(card["final_metrics"]["train"]["loss"].as_f64().unwrap() < 0.05);
    let cks = evs.iter().filter(|e| matches!(e, JobEvent::Checkpoint { .. })).count();
    assert_eq!(cks, 2);

    // export → HF folder → greedy answers are the trained ones
    let out = tmp.path().join("export");
    whetstone_engine::runs::export::export_run(&run, &out, false, whetstone_engine::io::safetensors::SaveDtype::F32).unwrap();
    let m = whetstone_engine::model::LoadedModel::load(&out, &Device::flex()).unwrap();
    for (q, a) in DATA {
        let (_, ids) = m.tokenizer.apply_chat(&[Message::new("user", q)], true).unwrap();
        let g = generate(&m, &ids, &GenerateOptions { max_new_tokens: 64, ..Default::default() }, &mut |_| true).unwrap();
        assert_eq!(g.text, *a);
    }
}

fn resume_matches(model: &str, extra: &str) {
    let a = tempfile::tempdir().unwrap();
    let spec = JobSpec::from_file(&job(a.path(), model, extra)).unwrap();
    run_to_end(spec.clone(), RunOptions::default());
    // Both runs' numbers are compared as written to metrics.jsonl (same formatting, exact).
    let full = steps(&read_metrics(&a.path().join("runs/r")).unwrap());
    assert_eq!(full.len(), 12);

    let b = tempfile::tempdir().unwrap();
    let spec_b = JobSpec::from_file(&job(b.path(), model, extra)).unwrap();
    // interrupted after step 6 (last checkpoint: step 4), then resumed
    let first = run_to_end(spec_b.clone(), RunOptions { stop_after: Some(6), ..Default::default() });
    assert!(matches!(first.last().unwrap(), JobEvent::Cancelled { step: 6 }));
    let run_dir = b.path().join("runs/r");
    let resumed = run_to_end(spec_b, RunOptions { resume: Some(run_dir.clone()), ..Default::default() });
    assert!(matches!(resumed[0], JobEvent::Started { start_step: 4, .. }));
    let recorded: Vec<StepRecord> = steps(&read_metrics(&run_dir).unwrap());
    assert_eq!(recorded.len(), 12, "metrics.jsonl holds each step once");
    for (x, y) in full.iter().zip(&recorded) {
        assert_eq!((x.step, x.epoch, x.tokens, x.tokens_seen), (y.step, y.epoch, y.tokens, y.tokens_seen));
        assert_eq!((x.loss, x.lr, x.grad_norm, x.token_accuracy), (y.loss, y.lr, y.grad_norm, y.token_accuracy), "step {}", x.step);
    }
}

#[test]
fn resume_continues_the_exact_trajectory_full() {
    resume_matches(
        "llama",
        "name = \"r\"\n[train]\nmax_steps = 12\nbatch_size = 2\nlr = 3e-3\nweight_decay = 0.01\ncheckpoint_every = 4\n",
    );
}

#[test]
fn resume_continues_the_exact_trajectory_lora_with_dropout() {
    resume_matches(
        "qwen2",
        "name = \"r\"\n[train]\nmax_steps = 12\nbatch_size = 2\ngrad_accum = 2\nlr = 5e-3\ncheckpoint_every = 4\n[lora]\nrank = 4\nalpha = 8\ndropout = 0.1\ntargets = [\"q\", \"v\", \"up\"]\n",
    );
}

#[test]
fn held_out_split_is_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let p = job(tmp.path(), "gpt2", "name = \"e\"\n[train]\nmax_steps = 4\nbatch_size = 2\neval_every = 2\n");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("validation_fraction = 0.4\n");
    std::fs::write(&p, text).unwrap();
    let evs = run_to_end(JobSpec::from_file(&p).unwrap(), RunOptions::default());
    assert!(matches!(evs[0], JobEvent::Started { train_examples: 3, eval_examples: 2, .. }));
    let evals: Vec<_> = evs.iter().filter_map(|e| if let JobEvent::Eval(r) = e { Some(r.clone()) } else { None }).collect();
    assert_eq!(evals.iter().map(|e| e.step).collect::<Vec<_>>(), [2, 4]);
    assert!(evals.iter().all(|e| (e.perplexity.unwrap() - e.eval_loss.exp()).abs() < 1e-9 && e.token_accuracy.unwrap() >= 0.0));
}

#[test]
fn cli_train_and_export_lora_adapter_and_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let p = job(tmp.path(), "llama", "name = \"cli\"\n[train]\nmax_steps = 3\nbatch_size = 2\nlr = 1e-3\n[lora]\nrank = 2\n");
    let o = whetstone(&["train", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("finished after 3 steps"), "{}", stderr(&o));
    let run = tmp.path().join("runs/cli");
    let adapter = tmp.path().join("adapter");
    let o = whetstone(&["export", run.to_str().unwrap(), "--out", adapter.to_str().unwrap()]);
    assert!(o.status.success() && stdout(&o).contains("PEFT adapter"), "{}", stderr(&o));
    assert!(adapter.join("adapter_model.safetensors").exists() && adapter.join("adapter_config.json").exists());
    let merged = tmp.path().join("merged");
    let o = whetstone(&["export", run.to_str().unwrap(), "--out", merged.to_str().unwrap(), "--merge"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&whetstone(&["inspect", merged.to_str().unwrap(), "--json"])).trim()).unwrap();
    assert_eq!(v["architecture"], "llama");
    // a second run with the same name is refused rather than overwritten
    let o = whetstone(&["train", p.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("already exists"), "{}", stderr(&o));
}

#[test]
fn job_paths_resolve_relative_to_the_file_and_home() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("j.toml");
    std::fs::write(&p, "method = \"sft\"\nmodel = \"~/m.gguf\"\n[dataset]\npath = \"data/x.jsonl\"\n").unwrap();
    let s = JobSpec::from_file(&p).unwrap();
    assert_eq!(s.model, PathBuf::from(std::env::var_os("HOME").unwrap()).join("m.gguf"));
    assert_eq!(s.dataset.path, tmp.path().join("data/x.jsonl"));
    assert_eq!(s.output, tmp.path().join("runs"));
    assert_eq!(s.train, whetstone_engine::train::TrainSpec::default());
}

/// A job file named without a folder (`whetstone train job.toml`, run where it lies) with
/// relative paths: the run card holds absolute ones, so the run exports from anywhere.
#[test]
fn a_job_started_from_its_own_folder_exports_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for f in std::fs::read_dir(fixture("tiny-models/llama")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, base.join(f.file_name().unwrap())).unwrap();
    }
    let text = "method = \"sft\"\nmodel = \"base\"\nname = \"rel\"\n[dataset]\npath = \"triage.jsonl\"\n[train]\nmax_steps = 1\nbatch_size = 2\n[lora]\nrank = 2\n";
    std::fs::write(tmp.path().join("job.toml"), text).unwrap();
    let o = std::process::Command::new(whetstone_bin()).args(["train", "job.toml"]).current_dir(tmp.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let run = tmp.path().join("runs/rel");
    let card = std::fs::read_to_string(run.join("job.toml")).unwrap();
    assert!(card.contains(&format!("{:?}", base.display().to_string())), "the run card names the model by an absolute path: {card}");
    let out = tmp.path().join("adapter");
    let o = whetstone(&["export", run.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success() && out.join("adapter_model.safetensors").exists(), "{}", stderr(&o));
}

#[test]
fn bad_job_files_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(job(tmp.path(), "llama", "")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (base.replace("seed = 3", "seed = 3\nlearning_rate = 0.1"), "unknown field `learning_rate`"),
        (base.replace("triage.jsonl", "missing.jsonl"), "dataset not found"),
        (format!("{base}prompt = \"instruction\"\n"), "column `instruction` (prompt) not found"),
        (base.replace("tiny-models/llama", "tiny-models/nope"), "model not found"),
        (base.replace("method = \"sft\"", "method = \"magic\""), "unknown variant `magic`"),
    ];
    for (i, (text, want)) in cases.into_iter().enumerate() {
        let p = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let o = whetstone(&["train", p.to_str().unwrap()]);
        let e = stderr(&o);
        assert!(!o.status.success(), "case {i} succeeded");
        assert!(e.contains(want), "case {i}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "case {i}: not one line: {e}");
    }
}

#[test]
fn nan_loss_stops_the_job_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let p = job(
        tmp.path(),
        "llama",
        "name = \"nan\"\n[train]\nmax_steps = 6\nbatch_size = 2\nlr = 1e30\nmax_grad_norm = 0\ncheckpoint_every = 1\n",
    );
    let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
    let evs: Vec<JobEvent> = h.events.iter().collect();
    let Some(JobEvent::Failed { reason }) = evs.last() else { panic!("did not fail: {:?}", evs.last()) };
    assert!(reason.contains("loss became") && reason.contains("last checkpoint"), "{reason}");
    assert!(whetstone_engine::runs::latest_checkpoint(&tmp.path().join("runs/nan")).is_some());
    let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("runs/nan/run.json")).unwrap()).unwrap();
    assert_eq!(card["status"], "failed");
    assert!(card["failure"].as_str().unwrap().contains("loss became"));
}

#[test]
fn a_job_that_cannot_fit_is_refused_with_the_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let p = job(tmp.path(), "llama", "[train]\nbatch_size = 4096\nmax_seq_len = 65536\n");
    let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
    let evs: Vec<JobEvent> = h.events.iter().collect();
    let Some(JobEvent::Failed { reason }) = evs.last() else { panic!("not refused: {:?}", evs.last()) };
    assert!(reason.contains("needs about") && reason.contains("GB") && reason.contains("activations"), "{reason}");
    assert!(!tmp.path().join("runs").exists(), "nothing is written for a refused job");
}

#[test]
fn cancel_stops_at_a_step_boundary_and_the_queue_runs_jobs_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let p = job(tmp.path(), "llama", "name = \"c\"\n[train]\nmax_steps = 100000\nbatch_size = 1\n");
    let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
    let mut seen = 0;
    let mut last = None;
    for ev in h.events.iter() {
        if let JobEvent::Step(_) = ev {
            seen += 1;
            if seen == 3 {
                h.cancel();
            }
        }
        last = Some(ev);
    }
    assert!(matches!(last, Some(JobEvent::Cancelled { step }) if (3..=4).contains(&step)), "{last:?}");

    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ja = JobSpec::from_file(&job(a.path(), "gpt2", "name = \"qa\"\n[train]\nmax_steps = 2\nbatch_size = 2\n")).unwrap();
    let jb = JobSpec::from_file(&job(b.path(), "qwen3", "name = \"qb\"\n[train]\nmax_steps = 1\nbatch_size = 2\n")).unwrap();
    let q = whetstone_engine::train::spawn_queue(vec![(ja, RunOptions::default()), (jb, RunOptions::default())]);
    let order: Vec<String> = q
        .events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Started { run_id, .. } => Some(format!("start {run_id}")),
            JobEvent::Finished { step, .. } => Some(format!("done {step}")),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["start qa", "done 2", "start qb", "done 1"]);
}

/// The real thing: `whetstone train` killed with SIGKILL mid-run, then `--resume`; the metrics
/// file matches an uninterrupted run step for step.
#[test]
fn cli_resume_after_kill_matches_an_uninterrupted_run() {
    let extra = "name = \"k\"\n[train]\nmax_steps = 40\nbatch_size = 2\nlr = 2e-3\ncheckpoint_every = 5\n";
    let a = tempfile::tempdir().unwrap();
    let pa = job(a.path(), "qwen3", extra);
    let o = whetstone(&["train", pa.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let full = steps(&read_metrics(&a.path().join("runs/k")).unwrap());

    let b = tempfile::tempdir().unwrap();
    let pb = job(b.path(), "qwen3", extra);
    let run = b.path().join("runs/k");
    let mut child = std::process::Command::new(whetstone_bin())
        .args(["train", pb.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while whetstone_engine::runs::latest_checkpoint(&run).is_none() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!run.join("run.json").exists(), "the run finished before it was killed");
    let o = whetstone(&["train", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let resumed = steps(&read_metrics(&run).unwrap());
    assert_eq!(resumed.len(), 40);
    for (x, y) in full.iter().zip(&resumed) {
        assert_eq!((x.step, x.loss, x.lr, x.grad_norm, x.token_accuracy), (y.step, y.loss, y.lr, y.grad_norm, y.token_accuracy));
    }
}

#[test]
fn packed_sft_job_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let p =
        job(tmp.path(), "qwen2", "name = \"p\"\n[train]\nmax_steps = 20\nbatch_size = 5\nlr = 1e-2\nmax_seq_len = 256\npacking = true\n");
    let evs = run_to_end(JobSpec::from_file(&p).unwrap(), RunOptions::default());
    let s = steps(&evs);
    assert_eq!(s.len(), 20);
    assert!(s[19].loss < s[0].loss * 0.3, "{} -> {}", s[0].loss, s[19].loss);
}

#[test]
fn cancel_checkpoints_so_resume_continues_from_the_cancelled_step() {
    let a = tempfile::tempdir().unwrap();
    let extra = "name = \"r\"\n[train]\nmax_steps = 8\nbatch_size = 2\nlr = 1e-3\n";
    run_to_end(JobSpec::from_file(&job(a.path(), "llama", extra)).unwrap(), RunOptions::default());
    let full = steps(&read_metrics(&a.path().join("runs/r")).unwrap());

    let b = tempfile::tempdir().unwrap();
    let spec = JobSpec::from_file(&job(b.path(), "llama", extra)).unwrap();
    let h = spawn(spec.clone(), RunOptions::default());
    let mut evs = Vec::new();
    for ev in h.events.iter() {
        if matches!(ev, JobEvent::Step(ref s) if s.step == 3) {
            h.cancel();
        }
        evs.push(ev);
    }
    h.join();
    let Some(JobEvent::Cancelled { step }) = evs.last().cloned() else { panic!("{:?}", evs.last()) };
    assert!(evs.iter().any(|e| matches!(e, JobEvent::Checkpoint { step: s, .. } if *s == step)), "a checkpoint at the cancelled step");
    let run_dir = b.path().join("runs/r");
    let resumed = run_to_end(spec, RunOptions { resume: Some(run_dir.clone()), ..Default::default() });
    assert!(matches!(resumed[0], JobEvent::Started { start_step, .. } if start_step == step));
    let recorded = steps(&read_metrics(&run_dir).unwrap());
    assert_eq!(recorded.len(), 8);
    for (x, y) in full.iter().zip(&recorded) {
        assert_eq!((x.loss, x.lr, x.grad_norm), (y.loss, y.lr, y.grad_norm), "step {}", x.step);
    }
}

/// Mixed precision trains as f32 does: 50 full fine-tuning SFT steps on a tiny fixture end
/// within 3 % of the f32 run's loss in bf16, and in f16 under dynamic loss scaling (whose scale
/// is reported on every step), while the trajectories are not the f32 one (the rounding is real).
#[test]
fn bf16_and_f16_sft_runs_end_within_3_percent_of_f32() {
    let run = |prec: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let extra = format!("name = \"p\"\n[train]\nmax_steps = 50\nbatch_size = 5\nlr = 2e-3\nwarmup_steps = 5\nprecision = \"{prec}\"\n");
        steps(&run_to_end(JobSpec::from_file(&job(tmp.path(), "qwen3", &extra)).unwrap(), RunOptions::default()))
    };
    let f32_ = run("f32");
    let end = f32_[49].loss;
    assert!(end < 0.5 * f32_[0].loss, "the f32 run should learn: {} -> {end}", f32_[0].loss);
    assert!(f32_.iter().all(|s| !s.metrics.contains_key("loss_scale")), "loss scaling is f16's alone");
    for prec in ["bf16", "f16"] {
        let s = run(prec);
        let last = s[49].loss;
        eprintln!("{prec}: loss {} -> {last} (f32 {} -> {end})", s[0].loss, f32_[0].loss);
        assert!((last - end).abs() < 0.03 * end, "{prec}: final loss {last} vs f32 {end}");
        assert!(s.iter().zip(&f32_).any(|(a, b)| a.loss != b.loss), "{prec}: identical to f32, nothing was rounded");
        if prec == "f16" {
            let scales: Vec<f64> = s.iter().map(|r| r.metrics["loss_scale"]).collect();
            let skipped = s.iter().filter(|r| r.metrics["skipped_step"] == 1.0).count();
            eprintln!("f16: {skipped} skipped steps, loss scale {} -> {}", scales[0], scales[49]);
            assert!(scales.iter().all(|x| (1.0..=65536.0).contains(x)), "{scales:?}");
            assert!(skipped < 10, "{skipped} of 50 steps skipped");
        }
    }
}
