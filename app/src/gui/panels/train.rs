//! Train panel: pick a method (each explained in plain words), a model and a dataset version,
//! and edit a `JobSpec` draft whose defaults are the engine's (advanced fields folded away); see
//! the engine's memory estimate and a time estimate, then start or queue the job on the
//! engine's `JobQueue`. While a job runs: live charts from its `JobEvent`s, health alerts in
//! plain words, cancel, and resume from the last checkpoint (`panels/jobs.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use whetstone_engine::data::DatasetSpec;
use whetstone_engine::device::DeviceInfo;
use whetstone_engine::model::lora::LoraConfig;
use whetstone_engine::text::matching::Pattern;
use whetstone_engine::train::distill::DistillConfig;
use whetstone_engine::train::dpo::DpoConfig;
use whetstone_engine::train::grpo::GrpoConfig;
use whetstone_engine::train::ppo::PpoConfig;
use whetstone_engine::train::rewards::{Rule, WeightedRule};
use whetstone_engine::train::spec::{Precision, SuiteHook};
use whetstone_engine::train::{JobQueue, JobSpec, Method};

use crate::gui::WorkbenchApp;
use crate::gui::i18n::t;
use crate::gui::panels::data::short_path;
use crate::gui::panels::jobs::{self, fmt_secs, submit};
pub use crate::gui::panels::jobs::{JobState, RunningJob};
use crate::gui::worker::ModelCmd;

pub fn title(m: Method) -> &'static str {
    match m {
        Method::Sft => "Supervised fine-tuning (SFT)",
        Method::Reward => "Reward model",
        Method::Ppo => "RLHF with PPO",
        Method::Dpo => "Direct preference optimisation (DPO)",
        Method::Grpo => "GRPO with rule rewards",
        Method::Distill => "Distillation (teacher to student)",
    }
}

pub fn explanation(m: Method) -> &'static str {
    match m {
        Method::Sft => {
            "Show the model questions with the answers you want, and it learns to answer like that. The first step for almost every project: it teaches your field's facts, wording and format. Needs prompt/response pairs (or chats)."
        }
        Method::Reward => {
            "Trains a judge: a copy of the model that scores answers, learning from pairs where you marked one answer better than the other. The judge is then used by PPO. Needs prompt/chosen/rejected pairs."
        }
        Method::Ppo => {
            "Lets the model practise: it writes answers, the reward model (or your rules) scores them, and the model shifts toward higher-scoring answers while staying close to where it started. Powerful but slower and harder to tune; start from an SFT run."
        }
        Method::Dpo => {
            "Learns directly from your preference pairs, without a separate judge: the model makes the preferred answer more likely than the rejected one, relative to where it started. Simpler and steadier than PPO. Needs prompt/chosen/rejected pairs."
        }
        Method::Grpo => {
            "The model writes several answers per question and is rewarded by rules you set (for example, the answer contains the reference, or matches a pattern); answers better than their group's average are reinforced. Good when correctness can be checked."
        }
        Method::Distill => {
            "A larger teacher model shows its word-by-word probabilities and a smaller student learns to match them, keeping much of the teacher's skill at a fraction of the size."
        }
    }
}

/// The reward rules the form offers for GRPO.
const RULES: [&str; 6] = ["exact_match", "contains", "not_contains", "regex", "numeric", "valid_json"];

/// Sections of the draft set aside while another method (or LoRA off) is chosen, so switching
/// back keeps what the user set.
#[derive(Default)]
struct Parked {
    lora: Option<LoraConfig>,
    dpo: Option<DpoConfig>,
    ppo: Option<PpoConfig>,
    grpo: Option<GrpoConfig>,
    distill: Option<DistillConfig>,
    eval_suite: Option<SuiteHook>,
}

fn park<T>(slot: &mut Option<T>, keep: &mut Option<T>) {
    if let Some(v) = slot.take() {
        *keep = Some(v);
    }
}

/// `[distill]` with the engine's defaults and no teacher yet. `DistillConfig` has no `Default`
/// (its defaults are serde attributes), so they are read the way a job file gets them.
fn default_distill() -> Option<DistillConfig> {
    toml::from_str("teacher = \"\"").ok()
}

/// The engine's default `[eval_suite] every` (a serde default, read the same way).
fn default_suite_every() -> usize {
    toml::from_str::<SuiteHook>("suite = \"\"").map_or(1, |h| h.every)
}

/// Whether two drafts have the same inputs to `train::preflight::estimate`.
fn same_estimate(a: &JobSpec, b: &JobSpec) -> bool {
    a.method == b.method
        && a.model == b.model
        && a.lora == b.lora
        && a.train.batch_size == b.train.batch_size
        && a.train.max_seq_len == b.train.max_seq_len
        && a.train.gradient_checkpointing == b.train.gradient_checkpointing
        && a.train.precision == b.train.precision
        && a.ppo == b.ppo
        && a.grpo == b.grpo
        && a.distill == b.distill
}

pub struct TrainUi {
    /// The job the form describes: every widget edits it in place.
    pub draft: JobSpec,
    parked: Parked,
    /// GRPO's reward rule as the form shows it; `draft.grpo.rules` holds the rule built from it.
    pub grpo_rule: String,
    pub grpo_text: String,
    rule_error: Option<String>,
    suite_every: usize,
    /// The engine's queue: jobs run one after another on its worker thread.
    pub queue: JobQueue,
    /// The method of every job handed to the queue and not yet ended, by job number.
    pub submitted: BTreeMap<u64, String>,
    pub current: Option<RunningJob>,
    pub history: Vec<RunningJob>,
    pub smoothing: f64,
    /// The engine's refusal of the draft (from `JobSpec::validate` on Start), while the draft
    /// is unchanged.
    refused: Option<(JobSpec, String)>,
    estimate: Option<Result<(String, usize), String>>,
    asked: Option<JobSpec>,
    /// Devices this build can use, listed once by the model thread.
    pub devices: Option<Vec<DeviceInfo>>,
    pub(crate) devices_asked: bool,
    /// `<workspace>/suites/*.toml`, listed by the data thread.
    pub suites: Vec<PathBuf>,
}

impl Default for TrainUi {
    fn default() -> Self {
        let mut draft = JobSpec::new(Method::Sft, PathBuf::new(), DatasetSpec::file(""));
        draft.lora = Some(LoraConfig::default());
        Self {
            draft,
            parked: Parked::default(),
            grpo_rule: "contains".into(),
            grpo_text: String::new(),
            rule_error: None,
            suite_every: default_suite_every(),
            queue: JobQueue::new(),
            submitted: BTreeMap::new(),
            current: None,
            history: Vec::new(),
            smoothing: 0.6,
            refused: None,
            estimate: None,
            asked: None,
            devices: None,
            devices_asked: false,
            suites: Vec::new(),
        }
    }
}

impl TrainUi {
    /// Choose the method: its section comes from the engine's defaults (or from what the user
    /// set before switching away); other methods' sections are set aside.
    pub fn set_method(&mut self, m: Method) {
        let (d, p) = (&mut self.draft, &mut self.parked);
        park(&mut d.dpo, &mut p.dpo);
        park(&mut d.ppo, &mut p.ppo);
        park(&mut d.grpo, &mut p.grpo);
        park(&mut d.distill, &mut p.distill);
        park(&mut d.eval_suite, &mut p.eval_suite);
        d.method = m;
        if matches!(m, Method::Reward | Method::Ppo) {
            d.train.gradient_checkpointing = false; // not available for these (JobSpec::validate)
        }
        match m {
            Method::Sft => d.eval_suite = p.eval_suite.take(),
            Method::Dpo => d.dpo = Some(p.dpo.take().unwrap_or_default()),
            Method::Ppo => d.ppo = Some(p.ppo.take().unwrap_or_default()),
            Method::Grpo => {
                d.grpo = Some(p.grpo.take().unwrap_or_default());
                self.apply_rule();
            }
            Method::Distill => d.distill = p.distill.take().or_else(default_distill),
            Method::Reward => {}
        }
    }

    /// Turn LoRA adapters on (the engine's defaults, or the last settings) or off.
    pub fn set_lora(&mut self, on: bool) {
        if on {
            self.draft.lora = Some(self.parked.lora.take().unwrap_or_default());
        } else {
            park(&mut self.draft.lora, &mut self.parked.lora);
        }
    }

    /// Build GRPO's rule from the form's rule kind and text.
    fn apply_rule(&mut self) {
        let Some(g) = self.draft.grpo.as_mut() else { return };
        let text = self.grpo_text.clone();
        let rule = match self.grpo_rule.as_str() {
            "exact_match" => Ok(Rule::ExactMatch { normalise: Default::default() }),
            "contains" => Ok(Rule::Contains { text: (!text.is_empty()).then_some(text), case_insensitive: false }),
            "not_contains" if text.is_empty() => Err(t("Write the text good answers must not contain.").to_string()),
            "not_contains" => Ok(Rule::NotContains { text, case_insensitive: false }),
            "regex" => Pattern::new(&text)
                .map(|pattern| Rule::Regex { pattern })
                .map_err(|e| format!("{} {e}", t("The pattern is not a valid regular expression:"))),
            "numeric" => Ok(Rule::Numeric { tolerance: 0.0, relative: false }),
            _ => Ok(Rule::ValidJson { required_keys: Vec::new() }),
        };
        match rule {
            Ok(rule) => {
                g.rules = vec![WeightedRule { rule, weight: 1.0 }];
                self.rule_error = None;
            }
            Err(e) => {
                g.rules.clear();
                self.rule_error = Some(e);
            }
        }
    }

    pub fn has_estimate(&self) -> bool {
        self.estimate.is_some()
    }

    /// The memory estimate on screen (text and parameter count), or why there is none.
    pub fn estimate(&self) -> Option<&Result<(String, usize), String>> {
        self.estimate.as_ref()
    }

    /// A memory estimate came back from the model thread; kept if it is for the last draft sent.
    pub fn set_estimate(&mut self, spec: &JobSpec, r: Result<(String, usize), String>) {
        if self.asked.as_ref().is_some_and(|a| same_estimate(a, spec)) {
            self.estimate = Some(r);
        }
    }

    /// What the form still lacks, checked every frame without touching the disk (the engine's
    /// `JobSpec::validate`, which does, runs when the job is started).
    fn missing(&self) -> Option<String> {
        let d = &self.draft;
        if d.model.as_os_str().is_empty() {
            return Some(t("Choose a model (add one on the Models page).").into());
        }
        if d.dataset.name.is_none() {
            return Some(t("Choose a dataset.").into());
        }
        match d.method {
            Method::Ppo if d.ppo.as_ref().is_none_or(|p| p.reward_model.is_none() && p.rules.is_empty()) => {
                Some(t("PPO needs a finished reward-model run to score answers.").into())
            }
            Method::Distill if d.distill.as_ref().is_none_or(|x| x.teacher.as_os_str().is_empty()) => {
                Some(t("Distillation needs a teacher model.").into())
            }
            Method::Grpo => self.rule_error.clone(),
            _ => None,
        }
    }
}

/// Steps, and a rough CPU time from the model's size: SmolLM2-135M measured ~120 tokens/s
/// full and ~166 LoRA at 4×256 (docs/benchmarks.md), scaled by parameter count.
fn time_estimate(d: &JobSpec, rows: usize, params: usize) -> String {
    let tr = &d.train;
    let per_step = tr.batch_size * tr.grad_accum;
    let steps = if tr.max_steps > 0 { tr.max_steps } else { (rows * tr.epochs).div_ceil(per_step.max(1)) };
    let tps = (if d.lora.is_some() { 166.0 } else { 120.0 }) * 135e6 / params.max(1) as f64;
    let tokens = steps as f64 * per_step as f64 * (tr.max_seq_len as f64 * 0.5);
    format!("{steps} {} {} {}", t("steps · roughly"), fmt_secs(tokens / tps), t("on CPU (the run shows the real ETA)"))
}

/// A run name no other job of this session has: method and milliseconds.
fn run_name(m: Method) -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{}-{ms}", m.name())
}

pub fn ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let Some(ws_root) = app.ws.as_ref().map(|w| w.root.clone()) else {
        ui.label(t("No workspace open"));
        return;
    };
    egui::ScrollArea::vertical().id_salt("train_page").auto_shrink([false; 2]).show(ui, |ui| {
        form(app, ui, &ws_root);
        ui.separator();
        jobs::monitor(app, ui);
    });
}

/// A combo box over paths; an empty path is "(choose)".
fn path_combo(ui: &mut egui::Ui, label: &str, value: &mut PathBuf, options: &[PathBuf]) {
    let shown = if value.as_os_str().is_empty() { t("(choose)").to_string() } else { short_path(value) };
    egui::ComboBox::from_label(label).selected_text(shown).show_ui(ui, |ui| {
        for o in options {
            ui.selectable_value(value, o.clone(), short_path(o));
        }
    });
}

fn form(app: &mut WorkbenchApp, ui: &mut egui::Ui, ws_root: &Path) {
    let models = app.settings.models.clone();
    let finished_runs: Vec<PathBuf> = app.runs_ui.runs.iter().filter(|r| r.status == "finished").map(|r| r.dir.clone()).collect();
    let reward_runs: Vec<PathBuf> = app
        .runs_ui
        .runs
        .iter()
        .filter(|r| r.status == "finished" && r.job_toml.contains("method = \"reward\""))
        .map(|r| r.dir.clone())
        .collect();
    let datasets: Vec<String> = app.ws.as_ref().map(|w| w.datasets.iter().map(|d| d.dataset.clone()).collect()).unwrap_or_default();
    let open_dataset = app.ds.as_ref().map(|d| d.info.dataset.clone());
    let u = &mut app.train_ui;
    // The workspace decides where the data comes from and where runs go.
    if u.draft.dataset.path != ws_root {
        u.draft.dataset.path = ws_root.to_path_buf();
        u.draft.dataset.name = None;
        u.draft.output = ws_root.join("runs");
    }
    if u.draft.model.as_os_str().is_empty()
        && let Some(m) = models.first()
    {
        u.draft.model = m.clone();
    }
    if u.draft.dataset.name.is_none() {
        u.draft.dataset.name = open_dataset.or_else(|| datasets.first().cloned());
    }
    ui.heading(t("Method"));
    ui.horizontal_wrapped(|ui| {
        for m in Method::ALL {
            if ui.selectable_label(u.draft.method == m, title(m)).clicked() && u.draft.method != m {
                u.set_method(m);
            }
        }
    });
    ui.label(explanation(u.draft.method));
    ui.add_space(6.0);
    let mut rule_changed = false;
    egui::Grid::new("train_form").num_columns(2).spacing([16.0, 6.0]).show(ui, |ui| {
        let mut base_options = models.clone();
        base_options.extend(finished_runs.iter().cloned());
        let d = &mut u.draft;
        ui.label(t("Start from"));
        path_combo(ui, t("Base model"), &mut d.model, &base_options);
        ui.end_row();
        ui.label(t("Train on"));
        egui::ComboBox::from_label(t("Dataset")).selected_text(d.dataset.name.clone().unwrap_or_else(|| t("(choose)").into())).show_ui(
            ui,
            |ui| {
                for name in &datasets {
                    ui.selectable_value(&mut d.dataset.name, Some(name.clone()), name.as_str());
                }
            },
        );
        ui.end_row();
        ui.label(t("Length"));
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut d.train.epochs).range(1..=1000).prefix(t("epochs ")));
            ui.add(egui::DragValue::new(&mut d.train.max_steps).range(0..=1_000_000).prefix(t("or max steps ")));
        });
        ui.end_row();
        ui.label(t("Learning rate"));
        ui.horizontal(|ui| {
            // The rate in force: the engine's default (which depends on LoRA) until moved.
            let mut lr = d.peak_lr();
            if ui.add(egui::Slider::new(&mut lr, 1e-6..=1e-2).logarithmic(true).text(t("lr"))).changed() {
                d.train.lr = Some(lr);
            }
            if d.train.lr.is_some() && ui.small_button(t("Use the default")).clicked() {
                d.train.lr = None;
            }
        });
        ui.end_row();
        ui.label(t("Batch"));
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut d.train.batch_size).range(1..=512).prefix(t("batch size ")));
            ui.add(egui::DragValue::new(&mut d.train.max_seq_len).range(16..=32768).prefix(t("max tokens ")));
        });
        ui.end_row();
        ui.label(t("Adapters"));
        let mut lora = u.draft.lora.is_some();
        ui.horizontal(|ui| {
            if ui.checkbox(&mut lora, t("LoRA (train small adapters, base frozen)")).changed() {
                u.set_lora(lora);
            }
            if let Some(l) = u.draft.lora.as_mut() {
                ui.add(egui::DragValue::new(&mut l.rank).range(1..=256).prefix(t("rank ")));
            }
        });
        ui.end_row();
        let d = &mut u.draft;
        match d.method {
            Method::Dpo => {
                if let Some(p) = d.dpo.as_mut() {
                    ui.label(t("DPO"));
                    ui.add(egui::Slider::new(&mut p.beta, 0.01..=1.0).text(t("beta (how far from the start)")));
                    ui.end_row();
                }
            }
            Method::Ppo => {
                if let Some(p) = d.ppo.as_mut() {
                    ui.label(t("Judge"));
                    let mut r = p.reward_model.clone().unwrap_or_default();
                    path_combo(ui, t("Reward-model run"), &mut r, &reward_runs);
                    p.reward_model = (!r.as_os_str().is_empty()).then_some(r);
                    ui.end_row();
                }
            }
            Method::Grpo => {
                if let Some(g) = d.grpo.as_mut() {
                    ui.label(t("Reward rule"));
                    ui.horizontal(|ui| {
                        egui::ComboBox::from_label(t("Rule")).selected_text(u.grpo_rule.clone()).show_ui(ui, |ui| {
                            for r in RULES {
                                rule_changed |= ui.selectable_value(&mut u.grpo_rule, r.to_string(), r).changed();
                            }
                        });
                        if matches!(u.grpo_rule.as_str(), "contains" | "not_contains" | "regex") {
                            let l = ui.label(t("Rule text"));
                            rule_changed |=
                                ui.add(egui::TextEdit::singleline(&mut u.grpo_text).desired_width(160.0)).labelled_by(l.id).changed();
                        }
                        ui.add(egui::DragValue::new(&mut g.group_size).range(2..=64).prefix(t("answers per prompt ")));
                    });
                    ui.end_row();
                }
            }
            Method::Distill => {
                if let Some(x) = d.distill.as_mut() {
                    ui.label(t("Teacher"));
                    path_combo(ui, t("Teacher model"), &mut x.teacher, &base_options);
                    ui.end_row();
                }
            }
            Method::Sft | Method::Reward => {}
        }
    });
    if rule_changed {
        u.apply_rule();
    }
    advanced(u, ui);
    // The engine's estimate, computed on the model thread whenever what it reads changes; the
    // previous one stays on screen until the new one arrives (no layout jumps).
    let u = &mut app.train_ui;
    if !u.draft.model.as_os_str().is_empty() && u.asked.as_ref().is_none_or(|a| !same_estimate(a, &u.draft)) {
        u.asked = Some(u.draft.clone());
        let spec = Box::new(u.draft.clone());
        app.model(ModelCmd::Estimate(spec));
    }
    if !app.train_ui.devices_asked {
        app.train_ui.devices_asked = true;
        app.model(ModelCmd::ListDevices);
    }
    let rows = app
        .ws
        .as_ref()
        .and_then(|w| w.datasets.iter().find(|d| Some(&d.dataset) == app.train_ui.draft.dataset.name.as_ref()))
        .map_or(0, |d| d.rows);
    match &app.train_ui.estimate {
        Some(Ok((mem, params))) => {
            ui.label(format!("{} {mem}", t("Estimated memory:")));
            ui.label(time_estimate(&app.train_ui.draft, rows, *params));
        }
        Some(Err(e)) => {
            ui.colored_label(ui.visuals().warn_fg_color, format!("{} {e}", t("No estimate:")));
            ui.label("");
        }
        None => {
            ui.weak(format!("{} …", t("Estimated memory:")));
            ui.weak(t("Estimating the time…"));
        }
    }
    start_buttons(app, ui);
    egui::CollapsingHeader::new(t("Job file")).default_open(false).show(ui, |ui| match app.train_ui.draft.to_toml() {
        Ok(text) => ui.monospace(text),
        Err(e) => ui.colored_label(ui.visuals().error_fg_color, format!("{e:#}")),
    });
}

fn advanced(u: &mut TrainUi, ui: &mut egui::Ui) {
    egui::CollapsingHeader::new(t("Advanced")).default_open(false).show(ui, |ui| {
        egui::Grid::new("train_advanced").num_columns(2).show(ui, |ui| {
            let d = &mut u.draft;
            let tr = &mut d.train;
            ui.add(egui::DragValue::new(&mut tr.warmup_steps).range(0..=100_000).prefix(t("warm-up steps ")));
            ui.add(egui::DragValue::new(&mut tr.grad_accum).range(1..=1024).prefix(t("gradient accumulation ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut tr.weight_decay).range(0.0..=1.0).speed(0.001).prefix(t("weight decay ")));
            ui.add(egui::DragValue::new(&mut tr.max_grad_norm).range(0.0..=100.0).speed(0.1).prefix(t("clip gradients at ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut d.dataset.validation_fraction).range(0.0..=0.5).speed(0.01).prefix(t("held out ")));
            ui.add(egui::DragValue::new(&mut tr.eval_every).range(0..=100_000).prefix(t("evaluate every ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut tr.checkpoint_every).range(0..=100_000).prefix(t("checkpoint every ")));
            ui.add(egui::DragValue::new(&mut tr.checkpoint_keep).range(0..=1000).prefix(t("keep checkpoints ")));
            ui.end_row();
            ui.add(egui::DragValue::new(&mut d.seed).prefix(t("seed ")));
            if let Some(l) = d.lora.as_mut() {
                ui.add(egui::DragValue::new(&mut l.alpha).range(1.0..=512.0).prefix(t("LoRA alpha ")));
            } else {
                ui.label("");
            }
            ui.end_row();
            let device_before = d.device.clone();
            egui::ComboBox::from_label(t("Device")).selected_text(d.device.clone()).show_ui(ui, |ui| match &u.devices {
                Some(list) => {
                    for dev in list {
                        ui.selectable_value(&mut d.device, dev.name.clone(), dev.label());
                    }
                }
                None => {
                    ui.weak(t("Looking for devices…"));
                }
            });
            if d.device != device_before {
                // A new device brings its sensible precision; the user can still change it.
                d.train.precision = Precision::default_for_device(&d.device);
            }
            egui::ComboBox::from_label(t("Rows"))
                .selected_text(match &d.dataset.split {
                    None => t("all rows").to_string(),
                    Some(s) => format!("split = {s}"),
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut d.dataset.split, None, t("all rows"));
                    for s in ["train", "validation", "test"] {
                        ui.selectable_value(&mut d.dataset.split, Some(s.to_string()), format!("split = {s}"));
                    }
                });
            ui.end_row();
            egui::ComboBox::from_label(t("Precision"))
                .selected_text(d.train.precision.name())
                .show_ui(ui, |ui| {
                    // Only what the chosen device can compute (wgpu has no bf16).
                    for p in Precision::ALL.into_iter().filter(|p| p.check_device(&d.device).is_ok()) {
                        ui.selectable_value(&mut d.train.precision, p, p.name()).on_hover_text(t(precision_help(p)));
                    }
                })
                .response
                .on_hover_text(t(precision_help(d.train.precision)));
            if matches!(d.method, Method::Sft | Method::Dpo | Method::Grpo | Method::Distill) {
                ui.checkbox(&mut d.train.gradient_checkpointing, t("Recompute layers (less memory)")).on_hover_text(t(
                    "Gradient checkpointing: keeps about one layer's activations instead of all of them, for about a third more compute.",
                ));
            } else {
                ui.label("");
            }
            ui.end_row();
            if d.method == Method::Sft {
                let mut suite = d.eval_suite.as_ref().map(|h| h.suite.clone());
                let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let shown = suite.as_deref().map(stem).unwrap_or_else(|| t("(none)").into());
                let r = egui::ComboBox::from_label(t("Evaluate suite during training")).selected_text(shown).show_ui(ui, |ui| {
                    let mut changed = ui.selectable_value(&mut suite, None, t("(none)")).changed();
                    for f in &u.suites {
                        changed |= ui.selectable_value(&mut suite, Some(f.clone()), stem(f)).changed();
                    }
                    changed
                });
                if r.inner == Some(true) {
                    let every = d.eval_suite.as_ref().map_or(u.suite_every, |h| h.every);
                    d.eval_suite = suite.map(|suite| SuiteHook { suite, every });
                }
                if let Some(h) = d.eval_suite.as_mut() {
                    ui.add(egui::DragValue::new(&mut h.every).range(1..=100_000).prefix(t("every N steps: ")));
                }
                ui.end_row();
            }
        });
    });
}

/// What each precision means, for its tooltip.
fn precision_help(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32: full precision. The default on CPU, where bf16 and f16 are rounded in software and so no faster.",
        Precision::Bf16 => {
            "bf16 mixed precision: matrix products in bfloat16 over f32 master weights, as torch.autocast does. The choice on GPUs with bf16."
        }
        Precision::F16 => {
            "f16 mixed precision with dynamic loss scaling: steps whose gradients overflow are skipped and the scale lowered."
        }
    }
}

/// Start / Add to queue (the engine validates the job first), and the jobs waiting their turn.
fn start_buttons(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let u = &app.train_ui;
    let missing = u.missing();
    if let Some(m) = &missing {
        ui.colored_label(ui.visuals().warn_fg_color, m);
    } else if let Some((_, e)) = u.refused.as_ref().filter(|(d, _)| *d == u.draft) {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    let pending = u.queue.pending();
    let busy = u.current.as_ref().is_some_and(|j| j.is_running()) || u.queue.running().is_some() || !pending.is_empty();
    let mut go = false;
    ui.horizontal(|ui| {
        go |= ui.add_enabled(missing.is_none() && !busy, egui::Button::new(egui::RichText::new(t("Start training")).size(16.0))).clicked();
        go |= ui.add_enabled(missing.is_none(), egui::Button::new(t("Add to queue"))).clicked();
    });
    let mut remove = None;
    if !pending.is_empty() {
        ui.label(t("Waiting in the queue:"));
        for p in &pending {
            ui.horizontal(|ui| {
                ui.label(format!("#{} {} · {}", p.job, title(p.spec.method), p.spec.name.as_deref().unwrap_or("")));
                if ui.small_button(format!("{} #{}", t("Remove"), p.job)).clicked() {
                    remove = Some(p.job);
                }
            });
        }
    }
    if let Some(job) = remove {
        jobs::remove(app, job);
    }
    if go {
        let mut spec = app.train_ui.draft.clone();
        spec.name = Some(run_name(spec.method));
        match spec.validate() {
            Ok(()) => {
                app.train_ui.refused = None;
                submit(app, spec, None);
            }
            Err(e) => app.train_ui.refused = Some((app.train_ui.draft.clone(), format!("{e:#}"))),
        }
    }
}
