//! The one training loop. For every method: validate the job, read the data, check the memory
//! estimate, load the model, build the method's trainer, then run optimiser steps over
//! micro-batches (true gradient accumulation), with the learning-rate schedule, gradient
//! clipping, a NaN/inf stop, held-out evaluation, step hooks (suites scored while training),
//! checkpoints with retention, exact resume and cancellation; every event goes to the one
//! `JobEvent` stream and `metrics.jsonl`, and `run.json` is written however the run ends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use burn::tensor::Device;

use super::method::{Setup, Trainer};
use super::optim::{StepLr, lr_at};
use super::spec::{JobSpec, Method};
use crate::data::dataset::{epoch_order, held_out_split};
use crate::kernels::precision::{self, LossScaler, Precision};
use crate::model::LoadedModel;
use crate::runs::card::{BaseModelCard, FinalMetrics, RunCard, RunStatus, Versions};
use crate::runs::{
    Checkpoint, EvalRecord, EventSink, JobEvent, RunDir, StepRecord, TrainState, base_config, is_run_dir, latest_checkpoint, load_base_with,
};

/// Something that runs after optimiser steps with the model being trained, such as an
/// evaluation suite scored every N steps (`eval::live`). Its metrics become `Eval` events.
pub trait StepHook: Send {
    /// Whether to run after `step` (`last`: the final step).
    fn due(&self, step: usize, last: bool) -> bool;
    /// Metrics of the model as it is now.
    fn run(&mut self, model: &LoadedModel) -> Result<BTreeMap<String, f64>>;
}

/// Builds the hooks a job asks for (layers above `train` provide it: see `eval::live`).
pub type HookFactory = Arc<dyn Fn(&JobSpec) -> Result<Vec<Box<dyn StepHook>>> + Send + Sync>;

/// How to start: fresh, or resuming a run folder.
#[derive(Clone, Default)]
pub struct RunOptions {
    pub resume: Option<PathBuf>,
    /// Overrides the job's `device`.
    pub device: Option<String>,
    /// Stop (as if cancelled) after this step; for tests and "run N steps" tooling.
    pub stop_after: Option<usize>,
    /// Builds the job's step hooks; a job with `[eval_suite]` needs one.
    pub hooks: Option<HookFactory>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("resume", &self.resume)
            .field("device", &self.device)
            .field("stop_after", &self.stop_after)
            .field("hooks", &self.hooks.is_some())
            .finish()
    }
}

/// A running job: its events, a cancel switch, and the thread.
pub struct JobHandle {
    pub events: Receiver<JobEvent>,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JobHandle {
    pub(crate) fn from_parts(events: Receiver<JobEvent>, cancel: Arc<AtomicBool>, thread: std::thread::JoinHandle<()>) -> Self {
        Self { events, cancel, thread: Some(thread) }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start a job on a background thread.
pub fn spawn(spec: JobSpec, opts: RunOptions) -> JobHandle {
    let (tx, rx) = channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let thread = std::thread::Builder::new()
        .name("whetstone-job".into())
        .spawn(move || {
            let mut sink = EventSink::new(move |e| {
                let _ = tx.send(e);
            });
            run_job(spec, opts, &c, &mut sink);
        })
        .expect("spawn job thread");
    JobHandle { events: rx, cancel, thread: Some(thread) }
}

/// Run a job to its end on this thread; a failure becomes the `Failed` event.
pub fn run_job(spec: JobSpec, opts: RunOptions, cancel: &AtomicBool, sink: &mut EventSink) {
    if let Err(e) = run(spec, opts, cancel, sink) {
        sink.emit(JobEvent::Failed { reason: format!("{e:#}") });
    }
}

/// The trainer for a job's method.
fn build(method: Method, s: Setup) -> Result<Box<dyn Trainer>> {
    Ok(match method {
        Method::Sft => Box::new(super::sft::SftTrainer::build(s)?),
        Method::Reward => Box::new(super::reward::RewardTrainer::build(s)?),
        Method::Dpo => Box::new(super::dpo::DpoTrainer::build(s)?),
        Method::Ppo => Box::new(super::ppo::PpoTrainer::build(s)?),
        Method::Grpo => Box::new(super::grpo::GrpoTrainer::build(s)?),
        Method::Distill => Box::new(super::distill::DistillTrainer::build(s)?),
    })
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "a panic".into())
}

/// Whether an error or panic text is a device running out of memory: cubecl's allocation
/// errors ("out of device memory allocating N bytes", "An out-of-memory error happened
/// during launch") and the drivers' own ("OutOfMemory", "out of memory").
pub fn is_out_of_memory(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("out of device memory") || t.contains("out-of-memory") || t.contains("outofmemory") || t.contains("out of memory")
}

/// What to tell the user when step `step` ran `device` out of memory: its capacity, what to
/// lower, and the last checkpoint, which is intact.
pub fn oom_message(spec: &JobSpec, device_name: &str, device: &Device, step: usize, run_dir: &std::path::Path) -> String {
    let t = &spec.train;
    let cap = crate::device::gpu_capacity(device).map(|b| format!(", {}", crate::device::fmt_gb(b))).unwrap_or_default();
    let mut lower = vec![format!("train.batch_size (now {}; raise train.grad_accum to keep the same effective batch)", t.batch_size)];
    lower.push(format!("train.max_seq_len (now {})", t.max_seq_len));
    if !t.gradient_checkpointing {
        lower.push("or set train.gradient_checkpointing = true".into());
    }
    if t.precision == Precision::F32 && !device_name.starts_with("cpu") {
        lower.push("or use train.precision = \"f16\"".into());
    }
    if spec.lora.is_none() {
        lower.push("or train LoRA adapters instead of every weight".into());
    }
    let kept = latest_checkpoint(run_dir).map(|p| p.display().to_string()).unwrap_or_else(|| "none yet".into());
    format!(
        "{} ran out of memory at step {step} ({}{cap}); lower {}. The last checkpoint is intact: {kept}",
        spec.method.name(),
        crate::device::device_label(device_name),
        lower.join(", ")
    )
}

fn run(spec: JobSpec, opts: RunOptions, cancel: &AtomicBool, sink: &mut EventSink) -> Result<()> {
    spec.validate()?;
    let device_name = opts.device.clone().unwrap_or_else(|| spec.device.clone());
    let device: Device = crate::device::parse_device(&device_name)?;
    spec.train.precision.check_device(&device_name)?;
    let ad = device.clone().autodiff();
    let tc = &spec.train;
    let mut hooks = match (&spec.eval_suite, &opts.hooks) {
        (None, _) => Vec::new(),
        (Some(_), Some(f)) => f(&spec)?,
        (Some(_), None) => bail!(
            "eval_suite is scored by the evaluation layer: start this job through whetstone_engine::eval::live (the CLI and the workbench do)"
        ),
    };

    // Data, then the memory check, before any weights are loaded.
    let data = spec.dataset.load()?;
    let config = base_config(&spec.model)?;
    let memory = super::preflight::estimate(&spec, &config)?;
    super::preflight::check(&spec, &memory, &device)?;

    // A LoRA base is frozen: it stays in its storage format (or is quantised, QLoRA).
    let base = load_base_with(&spec.model, &ad, spec.packing()?)?;
    let stop_ids = base.eos_ids();
    let eos = base.tokenizer.eos_id().or_else(|| stop_ids.first().copied());
    let pad = base.tokenizer.pad_id().or(eos).unwrap_or(0);
    let policy = match &spec.lora {
        Some(l) => base.model.clone().with_lora(l, spec.seed)?,
        None => base.model.clone(),
    };
    let setup = Setup { spec: &spec, data: &data, base: &base, policy, device: device.clone(), pad, eos, stop_ids };
    let mut trainer = build(spec.method, setup)?;

    let (train_idx, eval_idx) = held_out_split(trainer.len(), spec.dataset.validation_fraction, spec.seed)?;
    if train_idx.is_empty() {
        bail!("{}: no training examples", spec.dataset.path.display());
    }
    let per_step = tc.batch_size * tc.grad_accum;
    let steps_per_epoch = train_idx.len().div_ceil(per_step).max(1);
    let total_steps = if tc.max_steps > 0 { tc.max_steps } else { steps_per_epoch * tc.epochs };

    // The run folder: new, or the one being resumed (weights, optimisers and state restored).
    let (run, mut state) = match &opts.resume {
        Some(dir) => {
            let (run, ck) = RunDir::resume(dir)?;
            trainer.restore(&ck, &ad).map_err(|e| anyhow!("{}: checkpoint does not fit this job: {e:#}", dir.display()))?;
            (run, ck.state)
        }
        None => (RunDir::create(&spec.output, &spec.run_id(), &spec.to_toml()?)?, TrainState::default()),
    };
    sink.attach(&run.metrics_path())?;
    for (name, bytes) in trainer.run_files() {
        crate::io::atomic_write(&run.dir.join(name), &bytes)?;
    }
    let started = crate::io::unix_seconds();
    let trainable = trainer.trainable_params();
    sink.emit(JobEvent::Started {
        run_id: run.id.clone(),
        run_dir: run.dir.clone(),
        total_steps,
        start_step: state.step,
        train_examples: train_idx.len(),
        eval_examples: eval_idx.len(),
        memory: memory.clone(),
        device: crate::device::device_label(&device_name),
        device_capacity_bytes: crate::device::gpu_capacity(&device),
    });

    // Mixed precision: the job's precision around every step, and f16's dynamic loss scale.
    let mut scaler = (tc.precision == Precision::F16).then(|| match state.loss_scale {
        Some((scale, good_steps)) if scale.is_finite() && scale > 0.0 => LossScaler { scale, good_steps },
        _ => LossScaler::new(),
    });
    let in_precision = |f: &mut dyn FnMut() -> Result<super::method::StepOut>, scaler: Option<&LossScaler>| {
        precision::with(tc.precision, || match scaler {
            Some(sc) => sc.scoped(f),
            None => (f(), false),
        })
    };

    let t0 = Instant::now();
    let elapsed0 = state.elapsed_seconds;
    let peak = spec.peak_lr();
    let (mut last, mut last_eval): (Option<StepRecord>, Option<EvalRecord>) = (None, None);
    let mut status = RunStatus::Finished;
    let dropout = spec.lora.as_ref().is_some_and(|l| l.dropout > 0.0);
    let keep = tc.checkpoint_keep;
    let loop_result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
        while state.step < total_steps {
            if cancel.load(Ordering::SeqCst) {
                status = RunStatus::Cancelled;
                break;
            }
            let step = state.step; // 0-based index of the step about to run
            let epoch = step / steps_per_epoch;
            let order = epoch_order(&train_idx, epoch, spec.seed);
            let start = (step % steps_per_epoch) * per_step;
            let idx = &order[start..(start + per_step).min(order.len())];
            let micro: Vec<Vec<usize>> = idx.chunks(tc.batch_size).map(|c| c.to_vec()).collect();
            let lr = lr_at(step as u64, total_steps as u64, tc.warmup_steps as u64, peak, tc.decay);
            trainer.reseed(spec.seed.wrapping_mul(0x9E37_79B9).wrapping_add(step as u64));
            if dropout {
                device.seed(spec.seed.wrapping_add(step as u64)); // dropout masks reproducible on resume
            }
            let ts = Instant::now();
            let (out, overflow) = in_precision(&mut || trainer.step(&micro, StepLr { lr, scale: lr / peak }), scaler.as_ref());
            let mut out = out?;
            let dt = ts.elapsed().as_secs_f64();
            if let Some(sc) = scaler.as_mut() {
                sc.update(overflow);
                out.metrics.insert("loss_scale".into(), sc.scale);
                out.metrics.insert("skipped_step".into(), if overflow { 1.0 } else { 0.0 });
                state.loss_scale = Some((sc.scale, sc.good_steps));
                if sc.scale < LossScaler::MIN {
                    bail!(
                        "the f16 gradients overflow at every loss scale (now {:e}) at step {}; try train.precision = \"bf16\" or a lower train.lr",
                        sc.scale,
                        state.step + 1
                    );
                }
            }
            state.step += 1;
            state.tokens_seen += out.tokens;
            state.elapsed_seconds = elapsed0 + t0.elapsed().as_secs_f64();
            if !out.loss.is_finite() || !out.grad_norm.is_finite() {
                let what = if out.loss.is_finite() {
                    format!("the gradient norm became {}", out.grad_norm)
                } else {
                    format!("loss became {}", out.loss)
                };
                let kept = latest_checkpoint(&run.dir).map(|p| p.display().to_string()).unwrap_or_else(|| "none".into());
                bail!("{what} at step {}; stopped (last checkpoint: {kept}). Try a lower train.lr", state.step);
            }
            let rec = StepRecord {
                step: state.step,
                epoch,
                loss: out.loss,
                lr,
                grad_norm: out.grad_norm,
                token_accuracy: out.token_accuracy,
                tokens: out.tokens,
                tokens_seen: state.tokens_seen,
                tokens_per_second: out.tokens as f64 / dt.max(1e-9),
                elapsed_seconds: state.elapsed_seconds,
                device_memory_bytes: crate::device::gpu_memory_in_use(&device),
                metrics: out.metrics,
            };
            sink.emit(JobEvent::Step(rec.clone()));
            last = Some(rec);
            let done = state.step == total_steps;
            if !eval_idx.is_empty()
                && (done || (tc.eval_every > 0 && state.step % tc.eval_every == 0))
                && let Some(e) = precision::with(tc.precision, || trainer.evaluate(&eval_idx, tc.batch_size, state.step))?
            {
                sink.emit(JobEvent::Eval(e.clone()));
                last_eval = Some(e);
            }
            for h in hooks.iter_mut().filter(|h| h.due(state.step, done)) {
                let Some(model) = trainer.language_model() else { continue };
                let view = LoadedModel {
                    config: base.config.clone(),
                    tokenizer: base.tokenizer.clone(),
                    model,
                    device: device.clone(),
                    source: spec.model.clone(),
                    format: base.format,
                    generation_eos: base.generation_eos.clone(),
                };
                let metrics = h.run(&view)?;
                sink.emit(JobEvent::Eval(EvalRecord {
                    step: state.step,
                    eval_loss: f64::NAN,
                    perplexity: None,
                    token_accuracy: None,
                    metrics,
                }));
            }
            // Cancelling checkpoints first, so a cancelled run resumes exactly where it stopped.
            let pausing = !done && cancel.load(Ordering::SeqCst);
            if done || pausing || (tc.checkpoint_every > 0 && state.step % tc.checkpoint_every == 0) {
                let mut ck = Checkpoint { state: state.clone(), tensors: BTreeMap::new() };
                trainer.save(&mut ck);
                // The final checkpoint is kept in addition to the newest `keep` before it.
                let k = if done && keep > 0 { keep + 1 } else { keep };
                let p = run.write_checkpoint(&ck, k)?;
                sink.emit(JobEvent::Checkpoint { step: state.step, path: p });
            }
            // `stop_after` stops like a crash would: no checkpoint of its own.
            if pausing || (!done && opts.stop_after.is_some_and(|s| state.step >= s)) {
                status = RunStatus::Cancelled;
                break;
            }
        }
        Ok(())
    }));
    // A step that ran the device out of memory (the GPU runtime panics or errs when an
    // allocation fails) ends the job with what to lower; the checkpoints already written stay.
    let result = match loop_result {
        Ok(r) => r.map_err(|e| match is_out_of_memory(&format!("{e:#}")) {
            true => anyhow!(oom_message(&spec, &device_name, &device, state.step + 1, &run.dir)),
            false => e,
        }),
        Err(panic) => {
            let text = panic_text(&*panic);
            if is_out_of_memory(&text) {
                Err(anyhow!(oom_message(&spec, &device_name, &device, state.step + 1, &run.dir)))
            } else {
                Err(anyhow!("internal error at step {}: {text}", state.step + 1))
            }
        }
    };
    let failure = result.as_ref().err().map(|e| format!("{e:#}"));
    if failure.is_some() {
        status = RunStatus::Failed;
    }
    let mut dataset_card = data.card.clone();
    dataset_card["examples"] = serde_json::json!(trainer.len());
    dataset_card["train"] = serde_json::json!(train_idx.len());
    dataset_card["eval"] = serde_json::json!(eval_idx.len());
    let card = RunCard {
        run_id: run.id.clone(),
        method: spec.method,
        job: serde_json::to_value(&spec)?,
        dataset: dataset_card,
        base_model: BaseModelCard {
            path: spec.model.clone(),
            sha256: crate::io::hash::model_hash(&spec.model)?,
            from_run: is_run_dir(&spec.model),
            architecture: config.arch.name().to_string(),
            parameters: config.num_params(),
            trainable_parameters: trainable,
        },
        seed: spec.seed,
        device: crate::device::device_label(&device_name),
        versions: Versions::current(),
        started,
        ended: crate::io::unix_seconds(),
        status,
        failure,
        steps: state.step,
        total_steps,
        tokens_seen: state.tokens_seen,
        elapsed_seconds: state.elapsed_seconds,
        final_metrics: FinalMetrics { train: last, eval: last_eval },
        memory_estimate: memory,
        distillation: if spec.method == Method::Distill { trainer.card()? } else { None },
    };
    run.write_card(&card)?;
    result?;
    if status == RunStatus::Cancelled {
        sink.emit(JobEvent::Cancelled { step: state.step });
    } else {
        sink.emit(JobEvent::Finished { step: state.step, run_dir: run.dir.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cubecl's own allocation errors, as the GPU runtime formats them, read as running out of
    /// memory; other failures do not.
    #[test]
    fn device_allocation_failures_read_as_out_of_memory() {
        use cubecl::server::{IoError, LaunchError};
        let io = IoError::OutOfMemory { size: 3 << 30, backtrace: Default::default() };
        let launch = LaunchError::OutOfMemory { reason: "buffer".into(), backtrace: Default::default() };
        assert!(is_out_of_memory(&io.to_string()), "{io}");
        assert!(is_out_of_memory(&format!("called `Result::unwrap()` on an `Err` value: {launch}")), "{launch}");
        assert!(is_out_of_memory("Vulkan: ERROR_OUT_OF_DEVICE_MEMORY") || is_out_of_memory("wgpu: OutOfMemory"));
        assert!(!is_out_of_memory("index out of bounds: the len is 3 but the index is 7"));
        assert!(!is_out_of_memory("loss became NaN at step 4"));
    }

    /// The message says where, what to lower (with the job's values) and which checkpoint is
    /// kept.
    #[test]
    fn the_out_of_memory_message_says_what_to_lower() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        // One complete checkpoint (step 4) and an incomplete one (step 5, no state.json).
        let kept = crate::runs::folder::checkpoint_dir(&run_dir, 4);
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(kept.join("state.json"), "{}").unwrap();
        std::fs::create_dir_all(crate::runs::folder::checkpoint_dir(&run_dir, 5)).unwrap();
        let spec = JobSpec::from_toml(
            "method = \"sft\"\nmodel = \"m\"\n[dataset]\npath = \"d.jsonl\"\n[train]\nbatch_size = 8\nmax_seq_len = 1024\n",
        )
        .unwrap();
        let m = oom_message(&spec, "wgpu:1", &Device::flex(), 5, &run_dir);
        for part in [
            "sft ran out of memory at step 5 (wgpu:1)",
            "train.batch_size (now 8",
            "train.max_seq_len (now 1024)",
            "gradient_checkpointing",
            "f16",
            "LoRA",
        ] {
            assert!(m.contains(part), "{part:?} missing from: {m}");
        }
        assert!(m.ends_with(&format!("The last checkpoint is intact: {}", kept.display())), "{m}");
    }
}
