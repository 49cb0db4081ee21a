//! Every method behind the one runner honours every `[train]` setting the same way:
//! `max_grad_norm` (0 = off), true gradient accumulation, the memory pre-flight, and exact
//! resume after `kill -9`. Each test runs all six methods on tiny fixtures through job files.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use whetstone_engine::io::HostTensor;
use whetstone_engine::runs::{JobEvent, StepRecord, read_metrics};
use whetstone_engine::train::{JobSpec, RunOptions, spawn};

const METHODS: [&str; 6] = ["sft", "reward", "dpo", "ppo", "grpo", "distill"];

const QA: [(&str, &str); 8] = [
    ("Chest pain at rest?", "Emergency: call an ambulance."),
    ("Mild cough for two days?", "Routine: rest and fluids."),
    ("Stiff neck and fever?", "Urgent: see a doctor today."),
    ("Small cut on a finger?", "Routine: clean and cover it."),
    ("Sudden slurred speech?", "Emergency: call an ambulance."),
    ("Itchy rash on the arm?", "Routine: see a GP this week."),
    ("Fainted twice today?", "Urgent: see a doctor today."),
    ("Runny nose and sneezing?", "Routine: rest and fluids."),
];

/// Data files for every method in `dir`, `n` rows each.
fn write_data(dir: &Path, n: usize) {
    let rows =
        |f: &dyn Fn(&str, &str) -> serde_json::Value| QA[..n].iter().map(|(q, a)| f(q, a).to_string()).collect::<Vec<_>>().join("\n");
    std::fs::write(dir.join("sft.jsonl"), rows(&|q, a| serde_json::json!({"question": q, "answer": a}))).unwrap();
    std::fs::write(
        dir.join("prefs.jsonl"),
        rows(&|q, a| serde_json::json!({"prompt": q, "chosen": a, "rejected": "No idea, search online."})),
    )
    .unwrap();
    std::fs::write(dir.join("prompts.jsonl"), rows(&|q, a| serde_json::json!({"prompt": q, "reference": a}))).unwrap();
}

/// A job file for `method` on the tiny qwen3 fixture, with `train` lines added to `[train]`.
fn job(dir: &Path, method: &str, name: &str, train: &str) -> PathBuf {
    let (data, section) = match method {
        "sft" => ("sft.jsonl", String::new()),
        "reward" | "dpo" => ("prefs.jsonl", String::new()),
        // Untrained tiny models write random bytes: about a third of them hold a capital letter, so
        // a group of four answers almost always differs in reward.
        "grpo" => (
            "prompts.jsonl",
            "[grpo]\ngroup_size = 4\nmax_new_tokens = 4\ntemperature = 1.0\n[[grpo.rules]]\nrule = \"regex\"\npattern = \"[A-Z]\"\n".into(),
        ),
        "ppo" => (
            "prompts.jsonl",
            "[ppo]\nmax_new_tokens = 4\nactor_lr = 1e-3\ncritic_lr = 1e-3\n[[ppo.rules]]\nrule = \"contains\"\ntext = \"Routine\"\n".into(),
        ),
        "distill" => (
            "sft.jsonl",
            format!(
                "[distill]\nteacher = {:?}\ntemperature = 2.0\nsft_weight = 0.25\n",
                fixture("tiny-models/llama").display().to_string()
            ),
        ),
        m => panic!("unknown method {m}"),
    };
    // Defaults for these tests, unless `train` sets the key.
    let defaults: String = ["lr = 1e-2", "decay = \"constant\"", "max_seq_len = 64"]
        .iter()
        .filter(|l| !train.lines().any(|t| t.split('=').next().map(str::trim) == l.split('=').next().map(str::trim)))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!(
        "method = \"{method}\"\nmodel = {:?}\nname = \"{name}\"\nseed = 7\noutput = \"runs\"\n[dataset]\npath = \"{data}\"\n[train]\n{defaults}{train}\n{section}",
        fixture("tiny-models/qwen3").display().to_string()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn run(p: &Path) -> Vec<JobEvent> {
    let h = spawn(JobSpec::from_file(p).unwrap(), RunOptions::default());
    let evs: Vec<JobEvent> = h.events.iter().collect();
    h.join();
    if let Some(JobEvent::Failed { reason }) = evs.last() {
        panic!("{}: job failed: {reason}", p.display());
    }
    evs
}

fn steps(evs: &[JobEvent]) -> Vec<StepRecord> {
    evs.iter().filter_map(|e| if let JobEvent::Step(s) = e { Some(s.clone()) } else { None }).collect()
}

/// The trained parameters of a run's newest checkpoint.
fn trained(dir: &Path, name: &str) -> BTreeMap<String, HostTensor> {
    let ck = whetstone_engine::runs::latest_checkpoint(&dir.join("runs").join(name)).unwrap();
    whetstone_engine::model::params::read_all(&ck.join("trainable.safetensors")).unwrap()
}

fn diff(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>) -> (f64, f64) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let (mut max, mut sq) = (0f64, 0f64);
    for (k, x) in a {
        for (p, q) in x.data.iter().zip(&b[k].data) {
            let d = (*p as f64 - *q as f64).abs();
            max = max.max(d);
            sq += d * d;
        }
    }
    (max, sq.sqrt())
}

/// `max_grad_norm = 0` is no clipping (the same update as a threshold far above the norm), and
/// a threshold a tenth of the norm shrinks the update. AdamW's eps is set to 1 so its update
/// follows the gradient's size (at the default 1e-8 AdamW's first step is scale-free).
#[test]
fn max_grad_norm_takes_effect_in_every_method() {
    for method in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_data(d, 4);
        let base = "max_steps = 1\nbatch_size = 4\neps = 1.0\n";
        let off = run(&job(d, method, "off", &format!("{base}max_grad_norm = 0\n")));
        let g = steps(&off)[0].grad_norm;
        assert!(g.is_finite() && g > 0.0, "{method}: grad norm {g}");
        run(&job(d, method, "big", &format!("{base}max_grad_norm = {}\n", g * 10.0)));
        let small = run(&job(d, method, "small", &format!("{base}max_grad_norm = {}\n", g / 10.0)));
        assert_eq!(steps(&small)[0].grad_norm, g, "{method}: the norm is reported before clipping");
        // A threshold this low all but stops the update: its parameters stand in for the start.
        run(&job(d, method, "still", &format!("{base}max_grad_norm = 1e-12\n")));
        let start = trained(d, "still");
        assert_eq!(diff(&trained(d, "off"), &trained(d, "big")).0, 0.0, "{method}: clipping above the norm changed the update");
        let full = diff(&trained(d, "off"), &start).1;
        let clipped = diff(&trained(d, "small"), &start).1;
        assert!(full > 0.0, "{method}: no update");
        let ratio = clipped / full;
        assert!((0.05..0.5).contains(&ratio), "{method}: clipping to a tenth of the norm gave {ratio} of the update");
    }
}

/// One optimiser step of `batch_size = 1, grad_accum = 4` equals one of `batch_size = 4`, and
/// needs less memory.
#[test]
fn gradient_accumulation_equals_the_big_batch_with_less_memory() {
    for method in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_data(d, 4);
        let big = run(&job(d, method, "big", "max_steps = 1\nbatch_size = 4\ngrad_accum = 1\nlr = 1e-3\n"));
        let acc = run(&job(d, method, "acc", "max_steps = 1\nbatch_size = 1\ngrad_accum = 4\nlr = 1e-3\n"));
        let (max, _) = diff(&trained(d, "big"), &trained(d, "acc"));
        assert!(max < 1e-5, "{method}: parameters differ by {max}");
        let (sb, sa) = (&steps(&big)[0], &steps(&acc)[0]);
        assert!(sb.grad_norm > 0.0, "{method}: the step must move the parameters for this to mean anything");
        assert!((sb.grad_norm - sa.grad_norm).abs() < 1e-4 * sb.grad_norm, "{method}: grad norm {} vs {}", sb.grad_norm, sa.grad_norm);
        assert!((sb.loss - sa.loss).abs() < 1e-5 * sb.loss.abs().max(1.0), "{method}: loss {} vs {}", sb.loss, sa.loss);
        let mem = |evs: &[JobEvent]| match &evs[0] {
            JobEvent::Started { memory, .. } => memory.total_bytes,
            e => panic!("{e:?}"),
        };
        assert!(mem(&acc) < mem(&big), "{method}: accumulation should need less memory ({} vs {})", mem(&acc), mem(&big));
    }
}

/// Methods other than SFT are refused before loading when the estimate is over the memory
/// available, with the numbers, and nothing is written.
#[test]
fn jobs_that_cannot_fit_are_refused_before_loading() {
    for method in ["reward", "dpo", "ppo", "grpo", "distill"] {
        let tmp = tempfile::tempdir().unwrap();
        write_data(tmp.path(), 4);
        let h = spawn(
            JobSpec::from_file(&job(tmp.path(), method, "huge", "batch_size = 4096\nmax_seq_len = 65536\n")).unwrap(),
            RunOptions::default(),
        );
        let evs: Vec<JobEvent> = h.events.iter().collect();
        let Some(JobEvent::Failed { reason }) = evs.last() else { panic!("{method}: not refused: {:?}", evs.last()) };
        assert!(
            reason.contains("needs about") && reason.contains("GB") && reason.contains("activations") && reason.contains(method),
            "{method}: {reason}"
        );
        assert_eq!(evs.len(), 1, "{method}: refused before starting");
        assert!(!tmp.path().join("runs").exists(), "{method}: nothing is written for a refused job");
    }
}

/// The step records without timings.
fn comparable(s: &StepRecord) -> String {
    let mut s = s.clone();
    s.tokens_per_second = 0.0;
    s.elapsed_seconds = 0.0;
    s.metrics.retain(|k, _| !k.ends_with("_seconds"));
    serde_json::to_string(&s).unwrap()
}

/// `whetstone train` killed with SIGKILL after its first checkpoint, then `--resume`d, writes
/// the same step records as an uninterrupted run, for every method.
#[test]
fn every_method_resumes_exactly_after_kill_9() {
    for method in METHODS {
        let train = "max_steps = 16\nbatch_size = 2\ncheckpoint_every = 2\ncheckpoint_keep = 2\nlr = 2e-3\n";
        let a = tempfile::tempdir().unwrap();
        write_data(a.path(), 8);
        let o = whetstone(&["train", job(a.path(), method, "k", train).to_str().unwrap()]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let full = steps(&read_metrics(&a.path().join("runs/k")).unwrap());
        assert_eq!(full.len(), 16);
        let kept = whetstone_engine::runs::folder::checkpoints(&a.path().join("runs/k"));
        assert_eq!(kept.len(), 3, "{method}: the newest two checkpoints and the final one: {kept:?}");

        let b = tempfile::tempdir().unwrap();
        write_data(b.path(), 8);
        let p = job(b.path(), method, "k", train);
        let run = b.path().join("runs/k");
        let mut child = std::process::Command::new(whetstone_bin())
            .args(["train", p.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while whetstone_engine::runs::latest_checkpoint(&run).is_none() {
            assert!(std::time::Instant::now() < deadline, "{method}: no checkpoint appeared");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(!run.join("run.json").exists(), "{method}: the run finished before it was killed");
        let o = whetstone(&["train", "--resume", run.to_str().unwrap()]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let resumed = steps(&read_metrics(&run).unwrap());
        assert_eq!(resumed.len(), 16, "{method}");
        for (x, y) in full.iter().zip(&resumed) {
            assert_eq!(comparable(x), comparable(y), "{method}: step {}", x.step);
        }
        let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
        assert_eq!(card["status"], "finished");
        // Elapsed time carries over the restart: it never goes back.
        assert!(resumed.windows(2).all(|w| w[1].elapsed_seconds >= w[0].elapsed_seconds), "{method}: elapsed time restarted");
        assert!(card["elapsed_seconds"].as_f64().unwrap() >= resumed[15].elapsed_seconds - 1e-9, "{method}");
    }
}

/// Per-layer recomputation (`gradient_checkpointing`) gives the same updates as keeping every
/// layer's activations, for full fine-tuning and LoRA, and its memory estimate is lower.
#[test]
fn gradient_checkpointing_gives_the_same_updates_in_less_memory() {
    for method in ["sft", "dpo", "grpo", "distill"] {
        for lora in ["", "[lora]\nrank = 4\nalpha = 8\ntargets = [\"q\", \"v\", \"down\"]\n"] {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path();
            write_data(d, 4);
            let add_lora = |p: PathBuf| {
                let text = std::fs::read_to_string(&p).unwrap() + lora;
                std::fs::write(&p, text).unwrap();
                p
            };
            let base = "max_steps = 2\nbatch_size = 2\nlr = 1e-3\n";
            let plain = run(&add_lora(job(d, method, "plain", base)));
            let recomputed = run(&add_lora(job(d, method, "recomputed", &format!("{base}gradient_checkpointing = true\n"))));
            for (a, b) in steps(&plain).iter().zip(steps(&recomputed).iter()) {
                assert!((a.loss - b.loss).abs() < 1e-5 * a.loss.abs().max(1.0), "{method} {lora}: loss {} vs {}", a.loss, b.loss);
                assert!((a.grad_norm - b.grad_norm).abs() <= 1e-4 * a.grad_norm, "{method}: grad norm {} vs {}", a.grad_norm, b.grad_norm);
            }
            let (max, _) = diff(&trained(d, "plain"), &trained(d, "recomputed"));
            assert!(max < 1e-5, "{method} {lora}: parameters differ by {max}");
            let mem = |evs: &[JobEvent]| match &evs[0] {
                JobEvent::Started { memory, .. } => memory.activations_bytes,
                e => panic!("{e:?}"),
            };
            assert!(mem(&recomputed) < mem(&plain), "{method}: activations {} vs {}", mem(&recomputed), mem(&plain));
        }
    }
}

/// `job(..)` with `device = "..."` set.
fn on_device(p: PathBuf, device: &str) -> PathBuf {
    let text = std::fs::read_to_string(&p).unwrap().replacen("seed = 7\n", &format!("seed = 7\ndevice = \"{device}\"\n"), 1);
    std::fs::write(&p, text).unwrap();
    p
}

/// Every method trains on wgpu (Mesa's lavapipe in CI: it fails, never skips, without an
/// adapter) as it does on the CPU. bf16 is refused there. In f16 each method's first step
/// matches the CPU's f16 step (loss 1e-3, gradient norm 1e-2 relative; GRPO's f16 sampling
/// draws other answers, so it is only checked to train) and SFT tracks it for ten steps. In
/// f32:
/// - one step: the loss within 1e-4 relative, and each trained tensor's gradient within 1e-3
///   relative L2. The gradient is read from the first update. With `eps` far above every |g|,
///   no weight decay and no clipping, AdamW's first step moves each weight by
///   lr·g/(|g| + eps), the same function of g on both devices; lr = eps makes that ≈ g;
/// - twenty steps: the same tokens trained on at every step (RL methods sample the same
///   answers), every step's gradient norm within 1e-2 relative, and its loss within 1e-3
///   relative or 1e-6 absolute (DPO's and the reward model's losses fall to 1e-4, where f32
///   differences reach a few 1e-3 relative; GRPO's group-normalised loss sits near 0).
#[test]
fn every_method_trains_on_wgpu_as_on_the_cpu() {
    whetstone_engine::device::parse_device("wgpu").expect("a wgpu adapter (CI installs Mesa lavapipe)");
    // bf16, which wgpu cannot compute, is refused before anything is loaded or written.
    {
        let tmp = tempfile::tempdir().unwrap();
        write_data(tmp.path(), 4);
        let p = on_device(job(tmp.path(), "sft", "bf16", "max_steps = 1\nprecision = \"bf16\"\n"), "wgpu");
        let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
        let evs: Vec<JobEvent> = h.events.iter().collect();
        h.join();
        match evs.last() {
            Some(JobEvent::Failed { reason }) => {
                assert!(reason.contains("train.precision = \"bf16\" is not available on wgpu"), "{reason}")
            }
            e => panic!("a bf16 job on wgpu ran: {e:?}"),
        }
        assert!(!tmp.path().join("runs").join("bf16").exists(), "the refused job wrote its run folder");
    }
    // The memory pre-flight measures a job against the GPU's own capacity (as its runtime
    // reports it), and refuses one that cannot fit before anything is loaded or written.
    {
        let tmp = tempfile::tempdir().unwrap();
        write_data(tmp.path(), 4);
        let p = on_device(
            job(
                tmp.path(),
                "sft",
                "huge",
                "max_steps = 1
batch_size = 200000
max_seq_len = 8192
",
            ),
            "wgpu",
        );
        let h = spawn(JobSpec::from_file(&p).unwrap(), RunOptions::default());
        let evs: Vec<JobEvent> = h.events.iter().collect();
        h.join();
        match evs.last() {
            Some(JobEvent::Failed { reason }) => {
                assert!(reason.contains("GPU memory is free") && reason.contains("lower train.batch_size"), "{reason}")
            }
            e => panic!("a job larger than the GPU ran: {e:?}"),
        }
        assert!(!tmp.path().join("runs").join("huge").exists(), "the refused job wrote its run folder");
    }
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
    // f16 (operands and results rounded to f16, f32 accumulation, loss scaling) tracks the
    // CPU's f16 run over ten SFT steps. The two devices sum in different orders (the CPU's
    // flex kernels, the GPU's own), so a product can round to the neighbouring f16 value on one
    // of them; at lr 1e-2 such a difference about doubles each step: measured 2e-7 relative at
    // step 1, 1.3e-3 at step 9, 2.6e-3 at step 10. The bound, 5e-3, is ten of f16's rounding
    // units (2⁻¹¹ relative each); a wrong rounding shows at step 1, which each method's f16
    // step below holds to 1e-3.
    {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_data(d, 4);
        let ten = |device: &str| {
            steps(&run(&on_device(
                job(d, "sft", &format!("f16-{device}"), "max_steps = 10\nbatch_size = 2\nprecision = \"f16\"\n"),
                device,
            )))
        };
        let (c, g) = (ten("cpu"), ten("wgpu"));
        assert_eq!(c.len(), 10);
        for (a, b) in c.iter().zip(&g) {
            assert!(rel(a.loss, b.loss) < 5e-3, "f16 sft step {}: loss {} on the CPU, {} on wgpu", a.step, a.loss, b.loss);
            assert_eq!(a.metrics.get("skipped_step"), b.metrics.get("skipped_step"), "f16 sft step {}", a.step);
        }
        let worst = c.iter().zip(&g).map(|(a, b)| rel(a.loss, b.loss)).fold(0f64, f64::max);
        eprintln!("f16 sft: ten steps' losses at most {worst:.2e} relative apart");
    }
    for method in METHODS {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_data(d, 4);
        // One step whose update is the gradient; PPO takes its rates from `[ppo]`.
        let one = |name: &str, device: &str, clip: &str| {
            let p = job(
                d,
                method,
                name,
                &format!("max_steps = 1\nbatch_size = 4\nlr = 1e3\neps = 1e3\nweight_decay = 0\nmax_grad_norm = {clip}\n"),
            );
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("actor_lr = 1e-3", "actor_lr = 1e3")
                .replace("critic_lr = 1e-3", "critic_lr = 1e3");
            std::fs::write(&p, text).unwrap();
            run(&on_device(p, device))
        };
        // A clipping threshold this low all but stops the update: the start.
        one("start", "cpu", "1e-12");
        let (cpu, gpu) = (one("cpu1", "cpu", "0"), one("gpu1", "wgpu", "0"));
        let (sc, sg) = (&steps(&cpu)[0], &steps(&gpu)[0]);
        // The GPU's memory in use after each step and its capacity go into the event stream
        // (for the status bar and metrics.jsonl); the CPU has neither.
        assert!(sg.device_memory_bytes.is_some_and(|b| b > 0) && sc.device_memory_bytes.is_none(), "{method}: {sg:?}");
        assert!(
            gpu.iter().any(|e| matches!(e, JobEvent::Started { device_capacity_bytes: Some(c), .. } if *c > 0))
                && cpu.iter().any(|e| matches!(e, JobEvent::Started { device_capacity_bytes: None, .. })),
            "{method}: capacity in the Started events"
        );
        assert!(rel(sc.loss, sg.loss) < 1e-4, "{method}: step 1 loss {} on the CPU, {} on wgpu", sc.loss, sg.loss);
        assert!(rel(sc.grad_norm, sg.grad_norm) < 1e-3, "{method}: grad norm {} vs {}", sc.grad_norm, sg.grad_norm);
        let (w0, wc, wg) = (trained(d, "start"), trained(d, "cpu1"), trained(d, "gpu1"));
        assert_eq!(wc.keys().collect::<Vec<_>>(), wg.keys().collect::<Vec<_>>(), "{method}: the same trained tensors");
        let (mut moved, mut worst) = (0, 0f64);
        for (k, c) in &wc {
            let (mut num, mut den) = (0f64, 0f64);
            for ((a, b), s) in c.data.iter().zip(&wg[k].data).zip(&w0[k].data) {
                let (ga, gb) = (*a as f64 - *s as f64, *b as f64 - *s as f64);
                num += (ga - gb) * (ga - gb);
                den += ga * ga;
            }
            if den == 0.0 {
                assert_eq!(num, 0.0, "{method}: {k} moved on wgpu only");
                continue;
            }
            moved += 1;
            let r = (num / den).sqrt();
            worst = worst.max(r);
            assert!(r < 1e-3, "{method}: {k}: gradient differs by {r:.2e} (relative L2) between the CPU and wgpu");
        }
        assert!(moved > 0, "{method}: no tensor took a gradient");
        eprintln!(
            "{method}: step-1 loss {:.3e} relative apart, {moved} tensors' gradients at most {worst:.2e} (relative L2)",
            rel(sc.loss, sg.loss)
        );
        // f16: the first step as the CPU's f16 step (loss scaling included).
        let f16 = |name: &str, device: &str| {
            steps(&run(&on_device(job(d, method, name, "max_steps = 1\nbatch_size = 4\nprecision = \"f16\"\n"), device)))[0].clone()
        };
        let (a, b) = (f16("cpu16", "cpu"), f16("gpu16", "wgpu"));
        eprintln!("{method}: f16 step-1 loss {:.2e}, grad norm {:.2e} relative apart", rel(a.loss, b.loss), rel(a.grad_norm, b.grad_norm));
        assert_eq!(a.metrics.get("skipped_step"), b.metrics.get("skipped_step"), "{method}: f16 overflow on one device only");
        if method == "grpo" {
            // GRPO samples its groups from f16-rounded logits, which round differently on the two
            // devices often enough to draw other answers (other rewards): only that it trains.
            assert!(b.loss.is_finite() && b.grad_norm.is_finite() && b.grad_norm > 0.0, "grpo on wgpu in f16: {b:?}");
        } else {
            assert!(
                (a.loss - b.loss).abs() <= 1e-3 * a.loss.abs().max(b.loss.abs()) + 1e-6,
                "{method}: f16 step 1 loss {} on the CPU, {} on wgpu",
                a.loss,
                b.loss
            );
            assert!(rel(a.grad_norm, b.grad_norm) < 1e-2, "{method}: f16 grad norm {} vs {}", a.grad_norm, b.grad_norm);
        }
        // Twenty steps at the tests' usual rate.
        let twenty = |name: &str, device: &str| steps(&run(&on_device(job(d, method, name, "max_steps = 20\nbatch_size = 2\n"), device)));
        let (lc, lg) = (twenty("cpu20", "cpu"), twenty("gpu20", "wgpu"));
        assert_eq!(lc.len(), 20, "{method}");
        assert_eq!(lc.len(), lg.len(), "{method}");
        let worst20 = lc.iter().zip(&lg).map(|(a, b)| rel(a.loss, b.loss)).fold(0f64, f64::max);
        let worst_g = lc.iter().zip(&lg).map(|(a, b)| rel(a.grad_norm, b.grad_norm)).fold(0f64, f64::max);
        eprintln!("{method}: twenty steps' losses at most {worst20:.2e} relative apart, grad norms {worst_g:.2e}");
        for (a, b) in lc.iter().zip(&lg) {
            assert!(rel(a.grad_norm, b.grad_norm) < 1e-2, "{method}: step {}: grad norm {} vs {}", a.step, a.grad_norm, b.grad_norm);
            assert_eq!(a.tokens, b.tokens, "{method}: step {}: different tokens trained on (sampled answers differ)", a.step);
        }
        for (a, b) in lc.iter().zip(&lg) {
            assert!(
                (a.loss - b.loss).abs() <= 1e-3 * a.loss.abs().max(b.loss.abs()) + 1e-6,
                "{method}: step {} loss {} on the CPU, {} on wgpu",
                a.step,
                a.loss,
                b.loss
            );
        }
    }
}
