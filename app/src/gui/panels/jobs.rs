//! Jobs of the Train panel: handing a `JobSpec` to the engine's `JobQueue`, routing its
//! `QueueEvent`s by job number to the `RunningJob` records (the current job and this session's
//! history), and the monitor below the form: progress, health alerts, cancel, resume, charts.

use std::path::PathBuf;
use std::sync::mpsc::TryRecvError;
use std::time::Instant;

use whetstone_engine::runs::{EvalRecord, JobEvent, StepRecord};
use whetstone_engine::train::health::{self, Severity};
use whetstone_engine::train::{JobSpec, QueueEvent, RunOptions};

use crate::gui::WorkbenchApp;
use crate::gui::charts::{Series, lines};
use crate::gui::i18n::t;
use crate::gui::panels::data::short_path;
use crate::gui::worker::DataCmd;

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Finished,
    Failed(String),
    Cancelled(usize),
}

/// One job of the engine's queue, as its events describe it.
pub struct RunningJob {
    /// The job's number in the queue.
    pub job: u64,
    pub method: String,
    /// The device the job runs on (from its `Started` event; empty before).
    pub device: String,
    pub run_dir: Option<PathBuf>,
    pub total_steps: usize,
    pub start_step: usize,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub logs: Vec<String>,
    pub state: JobState,
    pub started: Instant,
    pub memory: String,
    /// A GPU's capacity (from the `Started` event).
    pub device_capacity: Option<u64>,
    /// A checkpoint was written, so a stopped run can resume from it.
    pub checkpointed: bool,
}

impl RunningJob {
    fn new(job: u64, method: String) -> Self {
        Self {
            job,
            method,
            device: String::new(),
            run_dir: None,
            total_steps: 0,
            start_step: 0,
            steps: Vec::new(),
            evals: Vec::new(),
            logs: Vec::new(),
            state: JobState::Running,
            started: Instant::now(),
            memory: String::new(),
            device_capacity: None,
            checkpointed: false,
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == JobState::Running
    }

    fn apply(&mut self, e: JobEvent) {
        match e {
            JobEvent::Started { run_dir, total_steps, start_step, memory, device, device_capacity_bytes, .. } => {
                self.run_dir = Some(run_dir);
                self.total_steps = total_steps;
                self.start_step = start_step;
                self.memory = memory.describe();
                self.device = device;
                self.device_capacity = device_capacity_bytes;
            }
            JobEvent::Step(s) => self.steps.push(s),
            JobEvent::Eval(e) => self.evals.push(e),
            JobEvent::Checkpoint { step, .. } => {
                self.checkpointed = true;
                self.logs.push(format!("checkpoint at step {step}"));
            }
            JobEvent::Log { message } => self.logs.push(message),
            JobEvent::Finished { .. } => self.state = JobState::Finished,
            JobEvent::Failed { reason } => self.state = JobState::Failed(reason),
            JobEvent::Cancelled { step } => self.state = JobState::Cancelled(step),
        }
    }

    /// The line the activity log gets when the job ends.
    fn ended(&self) -> String {
        match &self.state {
            JobState::Finished => format!("{} finished after {} steps", self.method, self.steps.last().map_or(0, |s| s.step)),
            JobState::Failed(r) => format!("{} failed: {r}", self.method),
            JobState::Cancelled(s) => format!("{} cancelled at step {s}", self.method),
            JobState::Running => format!("{} running", self.method),
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

/// Hand a job to the engine's queue, with the evaluation-suite hook every job needs (a job
/// with `[eval_suite]` and no hook fails). `resume`: a run folder to continue.
pub fn submit(app: &mut WorkbenchApp, spec: JobSpec, resume: Option<PathBuf>) {
    let idle = app.train_ui.queue.running().is_none() && app.train_ui.queue.pending().is_empty();
    if idle {
        // Every event of the previous job is in the channel by now: take them first, so its
        // record is complete before the new job becomes the current one.
        poll_jobs(app);
    }
    let u = &mut app.train_ui;
    let method = spec.method.name().to_string();
    let job = u.queue.push(spec, whetstone_engine::eval::live::options(RunOptions { resume, ..Default::default() }));
    u.submitted.insert(job, method.clone());
    if idle && u.current.is_none() {
        u.current = Some(RunningJob::new(job, method));
    }
}

/// Take a waiting job out of the queue.
pub fn remove(app: &mut WorkbenchApp, job: u64) {
    let u = &mut app.train_ui;
    if u.queue.remove(job) {
        u.submitted.remove(&job);
        if u.current.as_ref().is_some_and(|j| j.job == job && j.run_dir.is_none()) {
            u.current = None;
        }
        app.info(format!("Job #{job} removed from the queue"));
    }
}

/// Drain the queue's events (called every frame) into the records of their jobs.
pub fn poll_jobs(app: &mut WorkbenchApp) {
    let mut ended: Vec<(String, bool)> = Vec::new();
    let u = &mut app.train_ui;
    loop {
        let QueueEvent { job, event } = match u.queue.events.try_recv() {
            Ok(e) => e,
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                if let Some(j) = u.current.as_mut().filter(|j| j.is_running()) {
                    j.state = JobState::Failed("the job queue's thread stopped".into());
                    ended.push((j.ended(), true));
                }
                if let Some(j) = u.current.take() {
                    u.history.push(j);
                }
                break;
            }
        };
        if u.current.as_ref().is_none_or(|j| j.job != job) {
            let method = u.submitted.get(&job).cloned().unwrap_or_default();
            if let Some(old) = u.current.replace(RunningJob::new(job, method)) {
                u.history.push(old);
            }
        }
        let Some(j) = u.current.as_mut() else { continue };
        j.apply(event);
        if !j.is_running() {
            ended.push((j.ended(), matches!(j.state, JobState::Failed(_))));
            u.submitted.remove(&job);
            if let Some(j) = u.current.take() {
                u.history.push(j);
            }
        }
    }
    if !ended.is_empty() {
        for (msg, failed) in ended {
            if failed {
                app.error(msg);
            } else {
                app.info(msg);
            }
        }
        app.data(DataCmd::ListRuns);
    }
}

pub fn monitor(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
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
            JobState::Running if job.run_dir.is_none() => t("starting…").to_string(),
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
    // A stopped run resumes from the checkpoint its events announced.
    let resumable = matches!(job.state, JobState::Cancelled(_) | JobState::Failed(_)) && job.checkpointed;
    let run_dir = job.run_dir.clone();
    ui.horizontal(|ui| {
        if running && ui.button(t("Cancel")).clicked() {
            app.train_ui.queue.cancel_running();
        }
        // The data thread reads the run's job.toml and hands the job back (Reply::JobFile).
        if resumable
            && ui.button(t("Resume from the last checkpoint")).clicked()
            && let Some(dir) = run_dir
        {
            app.data(DataCmd::ReadJob(dir));
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
    let pts = |f: &dyn Fn(&StepRecord) -> f64| -> Vec<[f64; 2]> {
        steps.iter().map(|s| [s.step as f64, f(s)]).filter(|p| p[1].is_finite()).collect()
    };
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
        let p: Vec<[f64; 2]> =
            steps.iter().filter_map(|s| s.metrics.get(k).map(|v| [s.step as f64, *v])).filter(|p| p[1].is_finite()).collect();
        charts.push((k.clone(), vec![Series { name: k.clone(), points: p }]));
    }
    // Held-out metrics (eval split, evaluation suites) by name.
    let mut eval_keys: Vec<String> = evals.iter().flat_map(|e| e.metrics.keys().cloned()).collect();
    eval_keys.sort();
    eval_keys.dedup();
    for k in eval_keys.iter().take(6) {
        let p: Vec<[f64; 2]> =
            evals.iter().filter_map(|e| e.metrics.get(k).map(|v| [e.step as f64, *v])).filter(|p| p[1].is_finite()).collect();
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
