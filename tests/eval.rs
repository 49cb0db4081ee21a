//! Evaluation end to end: SmolLM2-135M on the project's multiple-choice suite against
//! transformers, every metric on a tiny model checked against direct computation, stored
//! results, blind A/B votes → ratings → a preference dataset a DPO job trains on, a suite
//! scored live inside an SFT job, reports, and the CLI.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};
use whetstone_engine::Device;
use whetstone_engine::data::Workspace;
use whetstone_engine::eval::ab;
use whetstone_engine::eval::live::spawn;
use whetstone_engine::eval::metrics::{self, Normalise};
use whetstone_engine::eval::score::run_suite;
use whetstone_engine::eval::spec::{self as suite, MetricSpec, ModelRef, SuiteSpec};
use whetstone_engine::runs::{JobEvent, read_metrics};
use whetstone_engine::train::{JobSpec, RunOptions};

fn run_job(toml: &str, dir: &Path) -> Vec<JobEvent> {
    let p = dir.join(format!("job-{}.toml", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()));
    std::fs::write(&p, toml).unwrap();
    let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
    let evs: Vec<JobEvent> = h.events.iter().collect();
    h.join();
    if let Some(JobEvent::Failed { reason }) = evs.last() {
        panic!("job failed: {reason}");
    }
    evs
}

fn run_dir(evs: &[JobEvent]) -> PathBuf {
    evs.iter().find_map(|e| if let JobEvent::Started { run_dir, .. } = e { Some(run_dir.clone()) } else { None }).unwrap()
}

#[test]
fn smollm2_multiple_choice_matches_transformers() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixture("mc-reference.json")).unwrap()).unwrap();
    let suite_file = root().join("assets/eval/general_mc.toml");
    let mut spec = SuiteSpec::from_file(&suite_file).unwrap();
    spec.models = vec![ModelRef::Named { name: "smollm2".into(), path: smollm2() }];
    let r = run_suite(&spec, &Device::flex(), &mut |_, _| true).unwrap();
    let refs = reference["items"].as_array().unwrap();
    assert_eq!(r.items.len(), refs.len());
    let mut worst = 0.0f64;
    for (i, want) in refs.iter().enumerate() {
        let d = r.outputs[0][i].detail.as_ref().unwrap();
        let got: Vec<f64> = d["option_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        for (g, w) in got.iter().zip(want["option_logprobs"].as_array().unwrap()) {
            worst = worst.max((g - w.as_f64().unwrap()).abs());
        }
        assert_eq!(d["picked"], want["picked"], "item {i}: {}", want["question"]);
    }
    assert!(worst < 2e-3, "option log-likelihoods differ from transformers by {worst}");
    let acc = &r.summary[0].metrics["choice"];
    assert_eq!(acc.mean, reference["accuracy"].as_f64().unwrap());
    assert!(acc.mean > 0.25 + 0.2, "well above chance: {}", acc.mean);
    assert!(acc.lo <= acc.mean && acc.mean <= acc.hi && acc.n == 16);
    assert_eq!(r.summary[0].by_tag.len(), 4, "broken down by topic");
}

fn tiny_workspace(tmp: &Path) -> Workspace {
    let mut ws = Workspace::create(&tmp.join("ws"), "t").unwrap();
    let data = tmp.join("qa.jsonl");
    let rows = [
        ("How many legs does a dog have?", "4", "animals"),
        ("What is 2 + 3?", "5", "maths"),
        ("Name the red planet.", "Mars", "space"),
        ("What colour is grass?", "green", "nature"),
    ];
    let text: String = rows
        .iter()
        .map(|(q, a, t)| json!({"question": q, "answer": a, "topic": t, "chosen": a, "rejected": "no idea"}).to_string() + "\n")
        .collect();
    std::fs::write(&data, text).unwrap();
    ws.import(&data, Some("qa"), &[]).unwrap();
    ws
}

#[test]
fn every_metric_on_a_tiny_model_agrees_with_direct_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path());
    let tiny = fixture("tiny-models/llama");
    // A tiny reward model to score with.
    let reward_job = format!(
        "method = \"reward\"\nmodel = {:?}\noutput = {:?}\nseed = 1\n[train]\nmax_steps = 2\nbatch_size = 2\n[dataset]\npath = {:?}\nname = \"qa\"\n",
        tiny.display().to_string(),
        tmp.path().join("runs").display().to_string(),
        ws.root().display().to_string()
    );
    let reward_run = run_dir(&run_job(&reward_job, tmp.path()));
    let suite_toml = format!(
        r#"name = "tiny-all"
models = [{{ name = "a", path = {tiny:?} }}, {{ name = "b", path = {qwen:?} }}]
reference = "answer"
[generation]
max_new_tokens = 6
[dataset]
path = {ws:?}
name = "qa"
[[metrics]]
kind = "exact_match"
[[metrics]]
kind = "contains"
[[metrics]]
kind = "regex"
pattern = "[0-9]"
[[metrics]]
kind = "numeric"
tolerance = 0.5
[[metrics]]
kind = "perplexity"
[[metrics]]
kind = "reward_model"
run = {run:?}
[[metrics]]
kind = "judge"
model = {tiny:?}
"#,
        tiny = tiny.display().to_string(),
        qwen = fixture("tiny-models/qwen2").display().to_string(),
        ws = ws.root().display().to_string(),
        run = reward_run.display().to_string()
    );
    let sf = tmp.path().join("suite.toml");
    std::fs::write(&sf, suite_toml).unwrap();
    let spec = SuiteSpec::from_file(&sf).unwrap();
    let mut calls = 0;
    let r = run_suite(&spec, &Device::flex(), &mut |_, total| {
        calls += 1;
        assert_eq!(total, 8);
        true
    })
    .unwrap();
    assert_eq!(calls, 8);
    assert_eq!(r.metrics, ["exact_match", "contains", "regex", "numeric", "perplexity", "reward", "judge"]);
    assert_eq!(r.items[1].tag.as_deref(), Some("maths"), "the topic column is found");
    let m = whetstone_engine::model::LoadedModel::load(&tiny, &Device::flex()).unwrap();
    for (i, it) in r.items.iter().enumerate() {
        let o = &r.outputs[0][i];
        let out = o.output.as_deref().unwrap();
        let reference = it.reference.as_deref().unwrap();
        assert_eq!(o.scores["exact_match"], metrics::exact_match(out, reference, &Normalise::squad()));
        assert_eq!(o.scores["contains"], metrics::contains(out, reference, true));
        assert_eq!(o.scores["numeric"], metrics::numeric(out, reference, 0.5, false));
        assert!((0.0..=1.0).contains(&o.scores["judge"]));
        assert!(o.scores["reward"].is_finite());
        // Perplexity: the mean NLL of the reference tokens after the chat-formatted prompt.
        let ctx = m.tokenizer.prompt_ids(&it.prompt).unwrap();
        let cont = m.tokenizer.encode(reference, false).unwrap();
        let mut ids = ctx.clone();
        ids.extend(&cont);
        let lp = m.token_logprobs(&ids).unwrap();
        let nll = -lp[ctx.len() - 1..].iter().map(|&x| x as f64).sum::<f64>() / cont.len() as f64;
        assert!((o.scores["perplexity"] - nll).abs() < 1e-4, "{} vs {nll}", o.scores["perplexity"]);
        // The output is what greedy generation gives for the prompt.
        let g = whetstone_engine::generate::generate(
            &m,
            &ctx,
            &whetstone_engine::generate::GenerateOptions { max_new_tokens: 6, ..Default::default() },
            &mut |_| true,
        )
        .unwrap();
        assert_eq!(out, g.text.trim());
    }
    let ppl = &r.summary[0].metrics["perplexity"];
    let mean_nll = r.outputs[0].iter().map(|o| o.scores["perplexity"]).sum::<f64>() / 4.0;
    assert!((ppl.mean - mean_nll.exp()).abs() < 1e-9, "summary perplexity = exp(mean NLL)");
    assert!(ppl.lo <= ppl.mean && ppl.mean <= ppl.hi);
    // Bad suite files name the line and the problem.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nmodels = []\n[dataset]\npath = \"qa.jsonl\"\n[[metrics]]\nkind = \"bleu\"\n").unwrap();
    let e = format!("{:#}", SuiteSpec::from_file(&bad).unwrap_err());
    assert!(e.contains("bad.toml:") && e.contains("bleu"), "{e}");
    std::fs::write(&bad, "name = \"x\"\nmodels = []\n[dataset]\npath = \"qa.jsonl\"\n[[metrics]]\nkind = \"contains\"\n").unwrap();
    assert!(format!("{:#}", SuiteSpec::from_file(&bad).unwrap_err()).contains("at least one model"));
}

#[test]
fn ab_votes_become_ratings_and_a_preference_dataset_that_dpo_trains_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ws = tiny_workspace(tmp.path());
    let spec = SuiteSpec {
        name: "ab".into(),
        dataset: toml_dataset(ws.root()),
        reference: Some("answer".into()),
        tag: None,
        models: vec![
            ModelRef::Named { name: "llama".into(), path: fixture("tiny-models/llama") },
            ModelRef::Named { name: "qwen".into(), path: fixture("tiny-models/qwen2") },
        ],
        metrics: vec![MetricSpec::Contains { case_insensitive: true }],
        generation: suite::GenSpec { max_new_tokens: 5, temperature: 0.0 },
        bootstrap: 200,
        seed: 0,
        limit: None,
    };
    let r = run_suite(&spec, &Device::flex(), &mut |_, _| true).unwrap();
    ws.save_eval(&r).unwrap();
    assert_eq!(ws.evals().unwrap()[0].id, r.id);
    assert_eq!(ws.load_eval(&r.id).unwrap(), r, "stored results load back unchanged");
    // Blind queue: every item once (two models), sides randomised.
    let q = ab::ab_queue(&r, &[], "ann", 0);
    assert_eq!(q.len(), 4);
    assert!(q.iter().any(|x| x.1 == "llama") && q.iter().any(|x| x.1 == "qwen"), "sides are shuffled: {q:?}");
    // The annotator prefers llama three times and calls one a tie.
    for (k, (item, a, b)) in q.iter().enumerate() {
        let verdict = if k == 3 {
            "tie"
        } else if a == "llama" {
            "a"
        } else {
            "b"
        };
        ws.add_vote(&r.id, item, a, b, verdict, "ann").unwrap();
    }
    assert!(ab::ab_queue(&r, &ws.votes(&r.id).unwrap(), "ann", 0).is_empty());
    let rt = ab::vote_ratings(&r, &ws.votes(&r.id).unwrap(), 300, 0);
    let llama = rt.ratings.iter().find(|x| x.model == "llama").unwrap();
    assert!((llama.win_rate - 3.5 / 4.0).abs() < 1e-12, "{llama:?}");
    assert!(llama.elo > 1000.0 && rt.matrix[0][1].is_some());
    // Undo removes the last vote only.
    ws.undo_vote(&r.id, "ann").unwrap().unwrap();
    assert_eq!(ws.votes(&r.id).unwrap().len(), 3);
    let v = ws.votes_to_preferences(&r.id).unwrap();
    assert_eq!((v.dataset.as_str(), v.rows), ("ab-ab-preferences", 3));
    let (_, t) = ws.load("ab-ab-preferences", None).unwrap();
    assert_eq!(t.record(0).unwrap()["chosen_model"], "llama");
    // The loop closes: a DPO job trains on the A/B preferences.
    let dpo = format!(
        "method = \"dpo\"\nmodel = {:?}\noutput = {:?}\nseed = 1\n[train]\nmax_steps = 2\nbatch_size = 2\n[dataset]\npath = {:?}\nname = \"ab-ab-preferences\"\n",
        fixture("tiny-models/llama").display().to_string(),
        tmp.path().join("runs").display().to_string(),
        ws.root().display().to_string()
    );
    let evs = run_job(&dpo, tmp.path());
    assert!(matches!(evs.last(), Some(JobEvent::Finished { .. })));
    // Reports carry the numbers and each model's provenance.
    let md = whetstone_engine::eval::report::markdown(&r, Some(&rt));
    assert!(md.contains("| llama |") && md.contains("Blind A/B (4 verdicts)") && md.contains("sha256"), "{md}");
    let html = tmp.path().join("r.html");
    whetstone_engine::eval::report::write(&r, Some(&rt), &html).unwrap();
    let h = std::fs::read_to_string(&html).unwrap();
    assert!(h.contains("<svg") && h.contains("contains"));
}

fn toml_dataset(ws: &Path) -> whetstone_engine::data::DatasetSpec {
    toml::from_str(&format!("path = {:?}\nname = \"qa\"\n", ws.display().to_string())).unwrap()
}

#[test]
fn an_sft_job_scores_a_suite_as_it_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path());
    let suite = format!(
        "name = \"live\"\nmodels = [{:?}]\nreference = \"answer\"\n[generation]\nmax_new_tokens = 4\n[dataset]\npath = {:?}\nname = \"qa\"\n[[metrics]]\nkind = \"contains\"\n[[metrics]]\nkind = \"perplexity\"\n",
        fixture("tiny-models/llama").display().to_string(),
        ws.root().display().to_string()
    );
    std::fs::write(tmp.path().join("live.toml"), suite).unwrap();
    let job = format!(
        "method = \"sft\"\nmodel = {:?}\noutput = {:?}\nseed = 1\n[train]\nmax_steps = 4\nbatch_size = 2\nlr = 5e-3\n[dataset]\npath = {:?}\nname = \"qa\"\n[eval_suite]\nsuite = \"live.toml\"\nevery = 2\n",
        fixture("tiny-models/llama").display().to_string(),
        tmp.path().join("runs").display().to_string(),
        ws.root().display().to_string()
    );
    let evs = run_job(&job, tmp.path());
    let evals: Vec<_> = evs.iter().filter_map(|e| if let JobEvent::Eval(e) = e { Some(e.clone()) } else { None }).collect();
    assert_eq!(evals.iter().map(|e| e.step).collect::<Vec<_>>(), vec![2, 4]);
    for e in &evals {
        assert!(e.eval_loss.is_nan());
        assert!((0.0..=1.0).contains(&e.metrics["suite/contains"]));
        assert!(e.metrics["suite/perplexity"] > 1.0);
    }
    // Perplexity of the references falls as the model learns them.
    assert!(evals[1].metrics["suite/perplexity"] < evals[0].metrics["suite/perplexity"]);
    // metrics.jsonl round-trips the missing held-out loss.
    let back = read_metrics(&run_dir(&evs)).unwrap();
    let again: Vec<_> = back.iter().filter_map(|e| if let JobEvent::Eval(e) = e { Some(e.metrics.clone()) } else { None }).collect();
    assert_eq!(again, evals.iter().map(|e| e.metrics.clone()).collect::<Vec<_>>());
    // Suites only run inside SFT jobs.
    let bad = job.replace("method = \"sft\"", "method = \"dpo\"");
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, bad).unwrap();
    assert!(format!("{:#}", JobSpec::from_file(&p).unwrap().validate().unwrap_err()).contains("eval_suite runs inside SFT jobs"));
}

#[test]
fn cli_runs_a_suite_votes_rates_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path());
    let w = ws.root().display().to_string();
    drop(ws);
    let suite = format!(
        "name = \"cli\"\nmodels = [{{ name = \"x\", path = {:?} }}, {{ name = \"y\", path = {:?} }}]\nreference = \"answer\"\n[generation]\nmax_new_tokens = 4\n[dataset]\npath = {w:?}\nname = \"qa\"\n[[metrics]]\nkind = \"exact_match\"\n",
        fixture("tiny-models/llama").display().to_string(),
        fixture("tiny-models/gpt2").display().to_string()
    );
    let sf = tmp.path().join("cli.toml");
    std::fs::write(&sf, suite).unwrap();
    let o = whetstone(&["eval", sf.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["summary"].as_array().unwrap().len(), 2);
    let o = whetstone(&["eval", "--workspace", &w, "--list"]);
    assert!(stdout(&o).contains(&id));
    let o = whetstone(&["eval", "--workspace", &w, "--id", &id, "--vote", "2,x,y,a", "--annotator", "ann"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = whetstone(&["eval", "--workspace", &w, "--id", &id, "--vote", "2,x,z,a"]);
    assert!(!o.status.success() && stderr(&o).contains("model `z` is not in evaluation"), "{}", stderr(&o));
    let o = whetstone(&["eval", "--workspace", &w, "--id", &id, "--ratings", "--json"]);
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["battles"], 1);
    let out = tmp.path().join("report.md");
    let o = whetstone(&["eval", "--workspace", &w, "--id", &id, "--preferences", "--report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("wrote 1 preference pairs to cli-ab-preferences@1"), "{}", stdout(&o));
    assert!(std::fs::read_to_string(&out).unwrap().contains("# Evaluation: cli"));
}

#[test]
fn answers_resolve_by_text_then_letter_then_index() {
    let c: Vec<String> = ["1", "2", "3", "4"].iter().map(|s| s.to_string()).collect();
    assert_eq!(suite::answer_index("3", &c), Some(2), "option text wins over an index");
    let c: Vec<String> = ["Paris", "Rome"].iter().map(|s| s.to_string()).collect();
    assert_eq!(suite::answer_index("(B)", &c), Some(1));
    assert_eq!(suite::answer_index("b.", &c), Some(1));
    assert_eq!(suite::answer_index("paris", &c), Some(0));
    assert_eq!(suite::answer_index("0", &c), Some(0));
    assert_eq!(suite::answer_index("7", &c), None);
    // A suite listing the same metric twice is refused.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("s.toml");
    std::fs::write(&p, "name = \"x\"\nmodels = [\"m\"]\n[dataset]\npath = \"d.jsonl\"\n[[metrics]]\nkind = \"regex\"\npattern = \"a\"\n[[metrics]]\nkind = \"regex\"\npattern = \"b\"\n").unwrap();
    assert!(format!("{:#}", SuiteSpec::from_file(&p).unwrap_err()).contains("listed twice"));
}
