//! Train panel: pick a method (each explained in plain words), a model and a dataset version,
//! fill a form whose defaults are safe (advanced fields folded away), see the memory and time
//! estimate, then launch or queue. While a job runs: live charts from its `JobEvent` stream,
//! health alerts in plain words, cancel, and resume from the last checkpoint.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

use whetstone_engine::train::health::{self, Severity};
use whetstone_engine::train::job::{EvalRecord, JobEvent, JobHandle, JobSpec, RunOptions, StepRecord, spawn};

use crate::gui::charts::{Series, lines};
use crate::gui::i18n::t;
use crate::gui::panels::data::short_path;
use crate::gui::worker::{DataCmd, EstimateKey, ModelCmd};
use crate::gui::WorkbenchApp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodChoice {
    Sft,
    Reward,
    Ppo,
    Dpo,
    Grpo,
    Distill,
}

impl MethodChoice {
    pub const ALL: [MethodChoice; 6] = [MethodChoice::Sft, MethodChoice::Reward, MethodChoice::Ppo, MethodChoice::Dpo, MethodChoice::Grpo, MethodChoice::Distill];

    pub fn key(self) -> &'static str {
        match self {
            MethodChoice::Sft => "sft",
            MethodChoice::Reward => "reward",
            MethodChoice::Ppo => "ppo",
            MethodChoice::Dpo => "dpo",
            MethodChoice::Grpo => "grpo",
            MethodChoice::Distill => "distill",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            MethodChoice::Sft => "Supervised fine-tuning (SFT)",
            MethodChoice::Reward => "Reward model",
            MethodChoice::Ppo => "RLHF with PPO",
            MethodChoice::Dpo => "Direct preference optimisation (DPO)",
            MethodChoice::Grpo => "GRPO with rule rewards",
            MethodChoice::Distill => "Distillation (teacher to student)",
        }
    }

    pub fn explanation(self) -> &'static str {
        match self {
            MethodChoice::Sft => "Show the model questions with the answers you want, and it learns to answer like that. The first step for almost every project: it teaches your field's facts, wording and format. Needs prompt/response pairs (or chats).",
            MethodChoice::Reward => "Trains a judge: a copy of the model that scores answers, learning from pairs where you marked one answer better than the other. The judge is then used by PPO. Needs prompt/chosen/rejected pairs.",
            MethodChoice::Ppo => "Lets the model practise: it writes answers, the reward model (or your rules) scores them, and the model shifts toward higher-scoring answers while staying close to where it started. Powerful but slower and harder to tune; start from an SFT run.",
            MethodChoice::Dpo => "Learns directly from your preference pairs, without a separate judge: the model makes the preferred answer more likely than the rejected one, relative to where it started. Simpler and steadier than PPO. Needs prompt/chosen/rejected pairs.",
            MethodChoice::Grpo => "The model writes several answers per question and is rewarded by rules you set (for example, the answer contains the reference, or matches a pattern); answers better than their group's average are reinforced. Good when correctness can be checked.",
            MethodChoice::Distill => "A larger teacher model shows its word-by-word probabilities and a smaller student learns to match them, keeping much of the teacher's skill at a fraction of the size.",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Finished,
    Failed(String),
    Cancelled(usize),
}

pub struct RunningJob {
    pub handle: JobHandle,
    pub method: String,
    pub run_dir: Option<PathBuf>,
    pub total_steps: usize,
    pub start_step: usize,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub logs: Vec<String>,
    pub state: JobState,
    pub started: Instant,
    pub memory: String,
}

impl RunningJob {
    pub fn is_running(&self) -> bool {
        self.state == JobState::Running
    }
}

pub struct QueuedJob {
    pub spec: JobSpec,
    pub resume: Option<PathBuf>,
}

pub struct TrainUi {
    pub method: MethodChoice,
    pub model: Option<PathBuf>,
    pub dataset: Option<String>,
    pub split: String,
    pub epochs: usize,
    pub max_steps: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub max_seq_len: usize,
    pub lora: bool,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub warmup_steps: usize,
    pub grad_accum: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub validation_fraction: f64,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    pub device: String,
    pub dpo_beta: f64,
    pub reward_run: Option<PathBuf>,
    pub grpo_group: usize,
    pub grpo_rule: String,
    pub grpo_text: String,
    pub teacher: Option<PathBuf>,
    /// A saved evaluation suite to score every `suite_every` steps (SFT).
    pub suite: Option<PathBuf>,
    pub suite_every: usize,
    pub queue: VecDeque<QueuedJob>,
    pub current: Option<RunningJob>,
    pub history: Vec<RunningJob>,
    pub smoothing: f64,
    pub form_error: Option<String>,
    estimate: Option<Result<(String, usize), String>>,
    asked: Option<EstimateKey>,
}

impl Default for TrainUi {
    fn default() -> Self {
        Self {
            method: MethodChoice::Sft,
            model: None,
            dataset: None,
            split: String::new(),
            epochs: 3,
            max_steps: 0,
            lr: 2e-4,
            batch_size: 4,
            max_seq_len: 512,
            lora: true,
            lora_rank: 8,
            lora_alpha: 16.0,
            warmup_steps: 0,
            grad_accum: 1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            validation_fraction: 0.0,
            eval_every: 0,
            checkpoint_every: 0,
            seed: 0,
            device: "cpu".into(),
            dpo_beta: 0.1,
            reward_run: None,
            grpo_group: 4,
            grpo_rule: "contains".into(),
            grpo_text: String::new(),
            teacher: None,
            suite: None,
            suite_every: 10,
            queue: VecDeque::new(),
            current: None,
            history: Vec::new(),
            smoothing: 0.6,
            form_error: None,
            estimate: None,
            asked: None,
        }
    }
}

pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// "ETA 1m 20s" from the steps so far.
pub fn eta(j: &RunningJob) -> String {
    match (j.steps.first(), j.steps.last()) {
        (Some(first), Some(last)) if last.step > first.step => {
            let per = (last.elapsed_seconds - first.elapsed_seconds).max(1e-9) / (last.step - first.step) as f64;
            format!("ETA {}", fmt_secs(per * j.total_steps.saturating_sub(last.step) as f64))
        }
        _ => "ETA …".into(),
    }
}

fn toml_str(p: &std::path::Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// The job file the form describes.
pub fn job_toml(u: &TrainUi, workspace: &std::path::Path) -> Result<String, String> {
    let model = u.model.as_ref().ok_or("Choose a model (add one on the Models page).")?;
    let dataset = u.dataset.as_ref().ok_or("Choose a dataset.")?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let mut s = format!(
        "method = \"{}\"\nmodel = {}\ndevice = \"{}\"\nseed = {}\noutput = {}\nname = \"{}-{stamp}\"\n",
        u.method.key(),
        toml_str(model),
        u.device,
        u.seed,
        toml_str(&workspace.join("runs")),
        u.method.key()
    );
    s += &format!("\n[dataset]\npath = {}\nname = {}\nvalidation_fraction = {}\n", toml_str(workspace), toml::Value::String(dataset.clone()), u.validation_fraction);
    if !u.split.is_empty() {
        s += &format!("split = {}\n", toml::Value::String(u.split.clone()));
    }
    s += &format!(
        "\n[train]\nepochs = {}\nmax_steps = {}\nbatch_size = {}\ngrad_accum = {}\nlr = {:e}\nwarmup_steps = {}\nweight_decay = {}\nmax_grad_norm = {}\nmax_seq_len = {}\neval_every = {}\ncheckpoint_every = {}\n",
        u.epochs, u.max_steps, u.batch_size, u.grad_accum, u.lr, u.warmup_steps, u.weight_decay, u.max_grad_norm, u.max_seq_len, u.eval_every, u.checkpoint_every
    );
    if u.lora {
        s += &format!("\n[lora]\nrank = {}\nalpha = {}\n", u.lora_rank, u.lora_alpha);
    }
    if let (Some(suite), MethodChoice::Sft) = (&u.suite, u.method) {
        s += &format!("\n[eval_suite]\nsuite = {}\nevery = {}\n", toml_str(suite), u.suite_every.max(1));
    }
    match u.method {
        MethodChoice::Dpo => s += &format!("\n[dpo]\nbeta = {}\n", u.dpo_beta),
        MethodChoice::Ppo => {
            let r = u.reward_run.as_ref().ok_or("PPO needs a finished reward-model run to score answers.")?;
            s += &format!("\n[ppo]\nreward_model = {}\n", toml_str(r));
        }
        MethodChoice::Grpo => {
            s += &format!("\n[grpo]\ngroup_size = {}\n\n[[grpo.rules]]\nrule = {}\nweight = 1.0\n", u.grpo_group, toml::Value::String(u.grpo_rule.clone()));
            match u.grpo_rule.as_str() {
                "regex" => s += &format!("pattern = {}\n", toml::Value::String(u.grpo_text.clone())),
                "contains" | "not_contains" if !u.grpo_text.is_empty() => s += &format!("text = {}\n", toml::Value::String(u.grpo_text.clone())),
                _ => {}
            }
        }
        MethodChoice::Distill => {
            let teacher = u.teacher.as_ref().ok_or("Distillation needs a teacher model.")?;
            s += &format!("\n[distill]\nteacher = {}\n", toml_str(teacher));
        }
        _ => {}
    }
    Ok(s)
}

fn start_job(app: &mut WorkbenchApp, q: QueuedJob) {
    let method = q.spec.method.name().to_string();
    let handle = spawn(q.spec, RunOptions { resume: q.resume, ..Default::default() });
    app.train_ui.current = Some(RunningJob {
        handle,
        method,
        run_dir: None,
        total_steps: 0,
        start_step: 0,
        steps: Vec::new(),
        evals: Vec::new(),
        logs: Vec::new(),
        state: JobState::Running,
        started: Instant::now(),
        memory: String::new(),
    });
}

/// Drain job events (called every frame) and start the next queued job when one ends.
pub fn poll_jobs(app: &mut WorkbenchApp) {
    let mut ended = None;
    if let Some(j) = app.train_ui.current.as_mut() {
        loop {
            let e = match j.handle.events.try_recv() {
                Ok(e) => e,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    if j.is_running() {
                        j.state = JobState::Failed("the job's thread ended without a result".into());
                    }
                    break;
                }
            };
            match e {
                JobEvent::Started { run_dir, total_steps, start_step, memory, .. } => {
                    j.run_dir = Some(run_dir);
                    j.total_steps = total_steps;
                    j.start_step = start_step;
                    j.memory = memory.describe();
                }
                JobEvent::Step(s) => j.steps.push(s),
                JobEvent::Eval(e) => j.evals.push(e),
                JobEvent::Checkpoint { step, .. } => j.logs.push(format!("checkpoint at step {step}")),
                JobEvent::Log { message } => j.logs.push(message),
                JobEvent::Finished { .. } => j.state = JobState::Finished,
                JobEvent::Failed { reason } => j.state = JobState::Failed(reason),
                JobEvent::Cancelled { step } => j.state = JobState::Cancelled(step),
            }
        }
        if !j.is_running() {
            ended = Some(match &j.state {
                JobState::Finished => format!("{} finished after {} steps", j.method, j.steps.last().map_or(0, |s| s.step)),
                JobState::Failed(r) => format!("{} failed: {r}", j.method),
                JobState::Cancelled(s) => format!("{} cancelled at step {s}", j.method),
                JobState::Running => unreachable!(),
            });
        }
    }
    if let Some(msg) = ended {
        let failed = matches!(app.train_ui.current.as_ref().map(|j| &j.state), Some(JobState::Failed(_)));
        if failed {
            app.error(msg);
        } else {
            app.info(msg);
        }
        let j = app.train_ui.current.take().unwrap();
        app.train_ui.history.push(j);
        app.data(DataCmd::ListRuns);
        if let Some(next) = app.train_ui.queue.pop_front() {
            start_job(app, next);
        }
    }
}

impl TrainUi {
    fn estimate_key(&self) -> Option<EstimateKey> {
        Some(EstimateKey { model: self.model.clone()?, lora_rank: self.lora.then_some(self.lora_rank), batch: self.batch_size, seq: self.max_seq_len })
    }

    pub fn has_estimate(&self) -> bool {
        self.estimate.is_some()
    }

    /// A memory estimate came back from the model thread.
    pub fn set_estimate(&mut self, key: EstimateKey, r: Result<(String, usize), String>) {
        if self.asked.as_ref() == Some(&key) {
            self.estimate = Some(r);
        }
    }
}

/// Steps, and a rough CPU time from the model's size: SmolLM2-135M measured ~120 tokens/s
/// full and ~166 LoRA at 4×256 (docs/benchmarks.md), scaled by parameter count.
fn time_estimate(u: &TrainUi, rows: usize, params: usize) -> String {
    let per_step = u.batch_size * u.grad_accum;
    let steps = if u.max_steps > 0 { u.max_steps } else { (rows * u.epochs).div_ceil(per_step.max(1)) };
    let tps = (if u.lora { 166.0 } else { 120.0 }) * 135e6 / params.max(1) as f64;
    let tokens = steps as f64 * per_step as f64 * (u.max_seq_len as f64 * 0.5);
    format!("{steps} steps · roughly {} on CPU (the run shows the real ETA)", fmt_secs(tokens / tps))
}

pub fn ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let Some(ws_root) = app.ws.as_ref().map(|w| w.root.clone()) else {
        ui.label(t("No workspace open"));
        return;
    };
    egui::ScrollArea::vertical().id_salt("train_page").auto_shrink([false; 2]).show(ui, |ui| {
        form(app, ui, &ws_root);
        ui.separator();
        monitor(app, ui);
    });
}

fn path_combo(ui: &mut egui::Ui, label: &str, value: &mut Option<PathBuf>, options: &[PathBuf]) {
    egui::ComboBox::from_label(label).selected_text(value.as_ref().map(|p| short_path(p)).unwrap_or_else(|| "(choose)".into())).show_ui(ui, |ui| {
        for o in options {
            ui.selectable_value(value, Some(o.clone()), short_path(o));
        }
    });
}

fn form(app: &mut WorkbenchApp, ui: &mut egui::Ui, ws_root: &std::path::Path) {
    let models = app.settings.models.clone();
    let finished_runs: Vec<PathBuf> = app.runs_ui.runs.iter().filter(|r| r.status == "finished").map(|r| r.dir.clone()).collect();
    let reward_runs: Vec<PathBuf> = app.runs_ui.runs.iter().filter(|r| r.status == "finished" && r.job_toml.contains("method = \"reward\"")).map(|r| r.dir.clone()).collect();
    let datasets: Vec<String> = app.ws.as_ref().map(|w| w.datasets.iter().map(|d| d.dataset.clone()).collect()).unwrap_or_default();
    let u = &mut app.train_ui;
    if u.model.is_none() {
        u.model = models.first().cloned();
    }
    if u.dataset.is_none() {
        u.dataset = app.ds.as_ref().map(|d| d.info.dataset.clone()).or_else(|| datasets.first().cloned());
    }
    ui.heading(t("Method"));
    ui.horizontal_wrapped(|ui| {
        for m in MethodChoice::ALL {
            ui.selectable_value(&mut u.method, m, m.title());
        }
    });
    ui.label(u.method.explanation());
    ui.add_space(6.0);
    egui::Grid::new("train_form").num_columns(2).spacing([16.0, 6.0]).show(ui, |ui| {
        let mut base_options = models.clone();
        base_options.extend(finished_runs.iter().cloned());
        ui.label(t("Start from"));
        path_combo(ui, "Base model", &mut u.model, &base_options);
        ui.end_row();
        ui.label(t("Train on"));
        egui::ComboBox::from_label(t("Dataset")).selected_text(u.dataset.clone().unwrap_or_else(|| "(choose)".into())).show_ui(ui, |ui| {
            for d in &datasets {
                ui.selectable_value(&mut u.dataset, Some(d.clone()), d.as_str());
            }
        });
        ui.end_row();
        ui.label(t("Length"));
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut u.epochs).range(1..=1000).prefix(t("epochs ")));
            ui.add(egui::DragValue::new(&mut u.max_steps).range(0..=1_000_000).prefix(t("or max steps ")));
        });
        ui.end_row();
        ui.label(t("Learning rate"));
        ui.add(egui::Slider::new(&mut u.lr, 1e-6..=1e-2).logarithmic(true).text(t("lr")));
        ui.end_row();
        ui.label(t("Batch"));
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut u.batch_size).range(1..=512).prefix(t("batch size ")));
            ui.add(egui::DragValue::new(&mut u.max_seq_len).range(16..=32768).prefix(t("max tokens ")));
        });
        ui.end_row();
        ui.label(t("Adapters"));
        ui.horizontal(|ui| {
            ui.checkbox(&mut u.lora, t("LoRA (train small adapters, base frozen)"));
            if u.lora {
                ui.add(egui::DragValue::new(&mut u.lora_rank).range(1..=256).prefix(t("rank ")));
            }
        });
        ui.end_row();
        match u.method {
            MethodChoice::Dpo => {
                ui.label(t("DPO"));
                ui.add(egui::Slider::new(&mut u.dpo_beta, 0.01..=1.0).text(t("beta (how far from the start)")));
                ui.end_row();
            }
            MethodChoice::Ppo => {
                ui.label(t("Judge"));
                path_combo(ui, "Reward-model run", &mut u.reward_run, &reward_runs);
                ui.end_row();
            }
            MethodChoice::Grpo => {
                ui.label(t("Reward rule"));
                ui.horizontal(|ui| {
                    egui::ComboBox::from_label(t("Rule")).selected_text(u.grpo_rule.clone()).show_ui(ui, |ui| {
                        for r in ["exact_match", "contains", "not_contains", "regex", "numeric", "valid_json"] {
                            ui.selectable_value(&mut u.grpo_rule, r.to_string(), r);
                        }
                    });
                    if matches!(u.grpo_rule.as_str(), "contains" | "not_contains" | "regex") {
                        let l = ui.label(t("Rule text"));
                        ui.add(egui::TextEdit::singleline(&mut u.grpo_text).desired_width(160.0)).labelled_by(l.id);
                    }
                    ui.add(egui::DragValue::new(&mut u.grpo_group).range(2..=64).prefix(t("answers per prompt ")));
                });
                ui.end_row();
            }
            MethodChoice::Distill => {
                ui.label(t("Teacher"));
                path_combo(ui, "Teacher model", &mut u.teacher, &base_options);
                ui.end_row();
            }
            _ => {}
        }
    });
    egui::CollapsingHeader::new(t("Advanced")).default_open(false).show(ui, |ui| {
        egui::Grid::new("train_advanced").num_columns(2).show(ui, |ui| {
            ui.add(egui::DragValue::new(&mut u.warmup_steps).range(0..=100_000).prefix(t("warm-up steps ")));
            ui.add(egui::DragValue::new(&mut u.grad_accum).range(1..=1024).prefix(t("gradient accumulation ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut u.weight_decay).range(0.0..=1.0).speed(0.001).prefix(t("weight decay ")));
            ui.add(egui::DragValue::new(&mut u.max_grad_norm).range(0.0..=100.0).speed(0.1).prefix(t("clip gradients at ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut u.validation_fraction).range(0.0..=0.5).speed(0.01).prefix(t("held out ")));
            ui.add(egui::DragValue::new(&mut u.eval_every).range(0..=100_000).prefix(t("evaluate every ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut u.checkpoint_every).range(0..=100_000).prefix(t("checkpoint every ")));
            ui.add(egui::DragValue::new(&mut u.seed).prefix(t("seed ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut u.lora_alpha).range(1.0..=512.0).prefix(t("LoRA alpha ")));
            egui::ComboBox::from_label(t("Device")).selected_text(u.device.clone()).show_ui(ui, |ui| {
                for d in ["cpu", "wgpu", "cuda"] {
                    ui.selectable_value(&mut u.device, d.to_string(), d);
                }
            });
            ui.end_row();
            if u.method == MethodChoice::Sft {
                egui::ComboBox::from_label(t("Evaluate suite during training"))
                    .selected_text(u.suite.as_ref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "(none)".into()))
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut u.suite, None, "(none)");
                        let dir = ws_root.join("suites");
                        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect()).unwrap_or_default();
                        files.sort();
                        for f in files {
                            let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                            ui.selectable_value(&mut u.suite, Some(f), name);
                        }
                    });
                ui.add(egui::DragValue::new(&mut u.suite_every).range(1..=100_000).prefix(t("every N steps: ")));
                ui.end_row();
            }
            egui::ComboBox::from_label(t("Rows")).selected_text(if u.split.is_empty() { "all rows".to_string() } else { format!("split = {}", u.split) }).show_ui(ui, |ui| {
                ui.selectable_value(&mut u.split, String::new(), "all rows");
                for s in ["train", "validation", "test"] {
                    ui.selectable_value(&mut u.split, s.to_string(), format!("split = {s}"));
                }
            });
            ui.end_row();
        });
    });
    // The estimate is computed on the model thread whenever what it depends on changes.
    let key = app.train_ui.estimate_key();
    if key.is_some() && key != app.train_ui.asked {
        // The previous estimate stays on screen until the new one arrives (no layout jumps).
        app.train_ui.asked = key.clone();
        app.model(ModelCmd::Estimate(key.unwrap()));
    }
    let rows = app.ws.as_ref().and_then(|w| w.datasets.iter().find(|d| Some(&d.dataset) == app.train_ui.dataset.as_ref())).map_or(0, |d| d.rows);
    match &app.train_ui.estimate {
        Some(Ok((mem, params))) => {
            ui.label(format!("Estimated memory: {mem}"));
            ui.label(time_estimate(&app.train_ui, rows, *params));
        }
        Some(Err(e)) => {
            ui.colored_label(ui.visuals().warn_fg_color, format!("No estimate: {e}"));
            ui.label("");
        }
        None => {
            ui.weak("Estimated memory: …");
            ui.weak("Estimating the time…");
        }
    }
    let toml = job_toml(&app.train_ui, ws_root);
    let spec = toml.clone().and_then(|t| JobSpec::from_toml(&t).map_err(|e| format!("{e:#}")));
    if let Err(e) = &spec {
        ui.colored_label(ui.visuals().warn_fg_color, e);
    }
    let running = app.train_ui.current.as_ref().is_some_and(|j| j.is_running());
    ui.horizontal(|ui| {
        if ui.add_enabled(spec.is_ok() && !running, egui::Button::new(egui::RichText::new(t("Start training")).size(16.0))).clicked() {
            start_job(app, QueuedJob { spec: spec.clone().unwrap(), resume: None });
        }
        if ui.add_enabled(spec.is_ok(), egui::Button::new(t("Add to queue"))).clicked() {
            app.train_ui.queue.push_back(QueuedJob { spec: spec.clone().unwrap(), resume: None });
            if !running {
                let next = app.train_ui.queue.pop_front().unwrap();
                start_job(app, next);
            }
        }
        if !app.train_ui.queue.is_empty() {
            ui.label(format!("{} queued", app.train_ui.queue.len()));
        }
    });
    if let Ok(text) = &toml {
        egui::CollapsingHeader::new(t("Job file")).default_open(false).show(ui, |ui| {
            ui.monospace(text);
        });
    }
}

fn monitor(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let job = match (&app.train_ui.current, app.train_ui.history.last()) {
        (Some(j), _) => j,
        (None, Some(j)) => j,
        (None, None) => {
            ui.weak(t("No job has run in this session yet. Past runs are on the Runs page."));
            return;
        }
    };
    let last = job.steps.last().map_or(job.start_step, |s| s.step);
    ui.horizontal(|ui| {
        ui.heading(format!("{} · {}", job.method, job.run_dir.as_ref().map(|p| short_path(p)).unwrap_or_default()));
        let status = match &job.state {
            JobState::Running => format!("step {last} of {}", job.total_steps),
            JobState::Finished => "finished".into(),
            JobState::Failed(r) => format!("failed: {r}"),
            JobState::Cancelled(s) => format!("cancelled at step {s}"),
        };
        ui.label(status);
    });
    if job.is_running() {
        ui.horizontal(|ui| {
            ui.add(egui::ProgressBar::new(last as f32 / job.total_steps.max(1) as f32).desired_width(300.0).text(eta(job)));
            if let Some(s) = job.steps.last() {
                ui.label(format!("{:.0} tokens/s · {} s", s.tokens_per_second, s.elapsed_seconds as u64));
            }
        });
    }
    if !job.memory.is_empty() {
        ui.weak(format!("memory estimate: {}", job.memory));
    }
    // Health alerts.
    for a in health::check(&job.steps, &job.evals) {
        let color = if a.severity == Severity::Danger { ui.visuals().error_fg_color } else { ui.visuals().warn_fg_color };
        egui::Frame::new().stroke(egui::Stroke::new(1.5, color)).corner_radius(6.0).inner_margin(8.0).show(ui, |ui| {
            ui.colored_label(color, egui::RichText::new(format!("{} (step {})", a.title, a.step)).strong());
            ui.label(&a.advice);
        });
    }
    let running = job.is_running();
    let resumable = matches!(job.state, JobState::Cancelled(_) | JobState::Failed(_)) && job.run_dir.as_ref().is_some_and(|d| d.join("checkpoints").exists());
    let run_dir = job.run_dir.clone();
    ui.horizontal(|ui| {
        if running && ui.button(t("Cancel")).clicked() {
            if let Some(j) = &app.train_ui.current {
                j.handle.cancel();
            }
        }
        if resumable && ui.button(t("Resume from the last checkpoint")).clicked() {
            if let Some(dir) = &run_dir {
                match JobSpec::from_file(&dir.join("job.toml")) {
                    Ok(spec) => start_job(app, QueuedJob { spec, resume: Some(dir.clone()) }),
                    Err(e) => app.error(format!("{e:#}")),
                }
            }
        }
        ui.add(egui::Slider::new(&mut app.train_ui.smoothing, 0.0..=0.99).text(t("Smoothing")));
    });
    let job = match (&app.train_ui.current, app.train_ui.history.last()) {
        (Some(j), _) => j,
        (None, Some(j)) => j,
        _ => return,
    };
    step_charts(ui, "live", &job.steps, &job.evals, app.train_ui.smoothing);
}

/// Loss (with eval loss), learning rate, gradient norm, tokens/s and every method metric.
pub fn step_charts(ui: &mut egui::Ui, id: &str, steps: &[StepRecord], evals: &[EvalRecord], smoothing: f64) {
    let pts = |f: &dyn Fn(&StepRecord) -> f64| -> Vec<[f64; 2]> { steps.iter().map(|s| [s.step as f64, f(s)]).filter(|p| p[1].is_finite()).collect() };
    let mut loss = vec![Series { name: "train loss".into(), points: pts(&|s| s.loss) }];
    let eval_loss: Vec<[f64; 2]> = evals.iter().map(|e| [e.step as f64, e.eval_loss]).filter(|p| p[1].is_finite()).collect();
    if !eval_loss.is_empty() {
        loss.push(Series { name: "eval loss".into(), points: eval_loss });
    }
    let half = (ui.available_width() / 2.0 - 8.0).max(200.0);
    let h = 180.0;
    let mut charts: Vec<(String, Vec<Series>)> = vec![
        ("loss".into(), loss),
        ("learning rate".into(), vec![Series { name: "lr".into(), points: pts(&|s| s.lr) }]),
        ("gradient norm".into(), vec![Series { name: "grad norm".into(), points: pts(&|s| s.grad_norm) }]),
        ("tokens/s".into(), vec![Series { name: "tokens/s".into(), points: pts(&|s| s.tokens_per_second) }]),
    ];
    let mut keys: Vec<String> = steps.iter().flat_map(|s| s.metrics.keys().cloned()).collect();
    keys.sort();
    keys.dedup();
    // Method metrics, except those already charted above.
    for k in keys.iter().filter(|k| !k.ends_with("_seconds") && !matches!(k.as_str(), "loss" | "grad_norm" | "lr")).take(8) {
        let p: Vec<[f64; 2]> = steps.iter().filter_map(|s| s.metrics.get(k).map(|v| [s.step as f64, *v])).filter(|p| p[1].is_finite()).collect();
        charts.push((k.clone(), vec![Series { name: k.clone(), points: p }]));
    }
    // Held-out metrics (eval split, evaluation suites) by name.
    let mut eval_keys: Vec<String> = evals.iter().flat_map(|e| e.metrics.keys().cloned()).collect();
    eval_keys.sort();
    eval_keys.dedup();
    for k in eval_keys.iter().take(6) {
        let p: Vec<[f64; 2]> = evals.iter().filter_map(|e| e.metrics.get(k).map(|v| [e.step as f64, *v])).filter(|p| p[1].is_finite()).collect();
        charts.push((format!("held out: {k}"), vec![Series { name: k.clone(), points: p }]));
    }
    for pair in charts.chunks(2) {
        ui.horizontal(|ui| {
            for (title, series) in pair {
                ui.vertical(|ui| {
                    ui.set_width(half);
                    ui.strong(title);
                    let smooth = if title == "learning rate" { 0.0 } else { smoothing };
                    lines(ui, &format!("{id}_{title}"), title, series, smooth, h);
                });
            }
        });
    }
}
