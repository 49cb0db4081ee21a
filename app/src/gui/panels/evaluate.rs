//! Evaluate panel: build a suite (dataset, models, metrics, judge rubric) and run it; results
//! as bars with 95 % intervals per metric and per tag, accuracy during training next to the
//! reward curve, side-by-side outputs with word-level differences, blind A/B voting with
//! Bradley–Terry ratings, one-click preference data, and HTML/Markdown reports.

use std::path::PathBuf;

use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints};
use whetstone_engine::data::DatasetSpec;
use whetstone_engine::eval::ab::Vote;
use whetstone_engine::eval::diff::{Op, word_diff};
use whetstone_engine::eval::metrics::Normalise;
use whetstone_engine::eval::ratings::Ratings;
use whetstone_engine::eval::score::EvalResult;
use whetstone_engine::eval::spec::{GenSpec, MetricSpec, ModelRef, SuiteSpec, default_rubric};
use whetstone_engine::eval::store::EvalListing;

use crate::gui::WorkbenchApp;
use crate::gui::charts::{Series, lines};
use crate::gui::i18n::t;
use crate::gui::panels::data::{bubble, short_path};
use crate::gui::worker::{DataCmd, ModelCmd};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalTab {
    #[default]
    Setup,
    Results,
    SideBySide,
    Blind,
}

pub struct EvalUi {
    pub tab: EvalTab,
    pub name: String,
    pub dataset: Option<String>,
    pub reference: String,
    pub tag: String,
    pub models: Vec<PathBuf>,
    pub exact: bool,
    pub contains: bool,
    pub regex: bool,
    pub pattern: String,
    pub numeric: bool,
    pub tolerance: f64,
    pub choice: bool,
    pub choices_col: String,
    pub perplexity: bool,
    pub reward: bool,
    pub reward_run: Option<PathBuf>,
    pub judge: bool,
    pub judge_model: Option<PathBuf>,
    pub rubric: String,
    pub max_new_tokens: usize,
    pub limit: usize,
    pub listings: Vec<EvalListing>,
    /// Shared, so panels can hold it across a frame without copying every output.
    pub current: Option<std::sync::Arc<EvalResult>>,
    pub votes: Vec<Vote>,
    pub ratings: Option<Ratings>,
    pub metric_view: String,
    pub only_differ: bool,
    pub only_changed: bool,
    pub queue: Vec<(String, String, String)>,
    pub cursor: usize,
    pub report_path: String,
    pub running: bool,
}

impl Default for EvalUi {
    fn default() -> Self {
        Self {
            tab: EvalTab::Setup,
            name: "my-suite".into(),
            dataset: None,
            reference: String::new(),
            tag: String::new(),
            models: Vec::new(),
            exact: false,
            contains: true,
            regex: false,
            pattern: String::new(),
            numeric: false,
            tolerance: 0.0,
            choice: false,
            choices_col: String::new(),
            perplexity: false,
            reward: false,
            reward_run: None,
            judge: false,
            judge_model: None,
            rubric: default_rubric(),
            max_new_tokens: 24,
            limit: 0,
            listings: Vec::new(),
            current: None,
            votes: Vec::new(),
            ratings: None,
            metric_view: String::new(),
            only_differ: false,
            only_changed: false,
            queue: Vec::new(),
            cursor: 0,
            report_path: String::new(),
            running: false,
        }
    }
}

/// The suite the form describes.
pub fn suite_spec(u: &EvalUi, workspace: &std::path::Path) -> Result<SuiteSpec, String> {
    let dataset = u.dataset.clone().ok_or("Choose a dataset.")?;
    if u.models.is_empty() {
        return Err("Tick at least one model (for a comparison, the baseline and a tuned run).".into());
    }
    let mut metrics = Vec::new();
    if u.exact {
        metrics.push(MetricSpec::ExactMatch { normalise: Normalise::squad() });
    }
    if u.contains {
        metrics.push(MetricSpec::Contains { case_insensitive: true });
    }
    if u.regex {
        let pattern = whetstone_engine::text::matching::Pattern::new(&u.pattern)
            .map_err(|e| format!("The pattern is not a valid regular expression: {e}"))?;
        metrics.push(MetricSpec::Regex { pattern });
    }
    if u.numeric {
        metrics.push(MetricSpec::Numeric { tolerance: u.tolerance, relative: false });
    }
    if u.choice {
        if u.choices_col.is_empty() {
            return Err("Multiple choice needs the column that holds the options.".into());
        }
        metrics.push(MetricSpec::Choice { choices: u.choices_col.clone(), length_normalised: false });
    }
    if u.perplexity {
        metrics.push(MetricSpec::Perplexity);
    }
    if u.reward {
        metrics.push(MetricSpec::RewardModel { run: u.reward_run.clone().ok_or("Choose a reward-model run.")? });
    }
    if u.judge {
        metrics.push(MetricSpec::Judge {
            model: u.judge_model.clone().ok_or("Choose a judge model.")?,
            rubric: u.rubric.clone(),
            max_score: 5,
        });
    }
    if metrics.is_empty() {
        return Err("Tick at least one metric.".into());
    }
    let mut names = std::collections::HashSet::new();
    let models = u
        .models
        .iter()
        .map(|p| {
            let mut name = short_path(p).replace('/', "-");
            while !names.insert(name.clone()) {
                name.push('+');
            }
            ModelRef::Named { name, path: p.clone() }
        })
        .collect();
    let dataset_spec: DatasetSpec = toml::from_str(&format!(
        "path = {}\nname = {}\n",
        toml::Value::String(workspace.display().to_string()),
        toml::Value::String(dataset)
    ))
    .map_err(|e| e.to_string())?;
    let name = u.name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')) || name.starts_with('.') {
        return Err("Name the suite with letters, digits, `-`, `_` or `.`.".into());
    }
    let spec = SuiteSpec {
        name: name.to_string(),
        dataset: dataset_spec,
        reference: Some(u.reference.clone()).filter(|s| !s.is_empty()),
        tag: Some(u.tag.clone()).filter(|s| !s.is_empty()),
        models,
        metrics,
        generation: GenSpec { max_new_tokens: u.max_new_tokens, temperature: 0.0 },
        bootstrap: 1000,
        seed: 0,
        limit: (u.limit > 0).then_some(u.limit),
    };
    spec.validate().map_err(|e| format!("{e:#}"))?;
    Ok(spec)
}

pub fn ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let Some(ws_root) = app.ws.as_ref().map(|w| w.root.clone()) else {
        ui.label(t("No workspace open"));
        return;
    };
    ui.horizontal(|ui| {
        for (tab, label) in
            [(EvalTab::Setup, "Suite"), (EvalTab::Results, "Results"), (EvalTab::SideBySide, "Side by side"), (EvalTab::Blind, "Blind A/B")]
        {
            if ui.selectable_value(&mut app.eval_ui.tab, tab, t(label)).clicked() && tab != EvalTab::Setup {
                app.data(DataCmd::ListEvals);
            }
        }
    });
    ui.separator();
    match app.eval_ui.tab {
        EvalTab::Setup => setup(app, ui, &ws_root),
        EvalTab::Results => results(app, ui),
        EvalTab::SideBySide => side_by_side(app, ui),
        EvalTab::Blind => blind(app, ui),
    }
}

fn setup(app: &mut WorkbenchApp, ui: &mut egui::Ui, ws_root: &std::path::Path) {
    let datasets: Vec<(String, Vec<String>)> = app
        .ws
        .as_ref()
        .map(|w| w.datasets.iter().map(|d| (d.dataset.clone(), d.columns.iter().map(|c| c.name.clone()).collect())).collect())
        .unwrap_or_default();
    let mut candidates = app.settings.models.clone();
    candidates.extend(
        app.runs_ui.runs.iter().filter(|r| r.status == "finished" && !r.job_toml.contains("method = \"reward\"")).map(|r| r.dir.clone()),
    );
    let reward_runs: Vec<PathBuf> = app
        .runs_ui
        .runs
        .iter()
        .filter(|r| r.status == "finished" && r.job_toml.contains("method = \"reward\""))
        .map(|r| r.dir.clone())
        .collect();
    let u = &mut app.eval_ui;
    if u.dataset.is_none() {
        u.dataset = datasets.first().map(|d| d.0.clone());
    }
    let columns: Vec<String> = datasets.iter().find(|d| Some(&d.0) == u.dataset.as_ref()).map(|d| d.1.clone()).unwrap_or_default();
    // Column choices from another dataset do not carry over.
    for c in [&mut u.reference, &mut u.tag, &mut u.choices_col] {
        if !c.is_empty() && !columns.contains(c) {
            c.clear();
        }
    }
    egui::Grid::new("suite_form").num_columns(2).spacing([16.0, 6.0]).show(ui, |ui| {
        let l = ui.label(t("Suite name"));
        ui.add(egui::TextEdit::singleline(&mut u.name).desired_width(220.0)).labelled_by(l.id);
        ui.end_row();
        ui.label(t("Questions from"));
        egui::ComboBox::from_label(t("Eval dataset")).selected_text(u.dataset.clone().unwrap_or_default()).show_ui(ui, |ui| {
            for (d, _) in &datasets {
                ui.selectable_value(&mut u.dataset, Some(d.clone()), d.as_str());
            }
        });
        ui.end_row();
        ui.label(t("Columns"));
        ui.horizontal(|ui| {
            for (label, value) in [("Reference answer", &mut u.reference), ("Break down by", &mut u.tag)] {
                egui::ComboBox::from_label(t(label))
                    .selected_text(if value.is_empty() { "(automatic)".to_string() } else { value.clone() })
                    .show_ui(ui, |ui| {
                        ui.selectable_value(value, String::new(), "(automatic)");
                        for c in &columns {
                            ui.selectable_value(value, c.clone(), c.as_str());
                        }
                    });
            }
        });
        ui.end_row();
        ui.label(t("Models to compare"));
        ui.vertical(|ui| {
            for m in &candidates {
                let mut on = u.models.contains(m);
                if ui.checkbox(&mut on, short_path(m)).changed() {
                    if on {
                        u.models.push(m.clone());
                    } else {
                        u.models.retain(|x| x != m);
                    }
                }
            }
        });
        ui.end_row();
        ui.label(t("Metrics"));
        ui.vertical(|ui| {
            ui.checkbox(&mut u.exact, t("Exact match (ignoring case, punctuation and spacing)"));
            ui.checkbox(&mut u.contains, t("Contains the reference"));
            ui.horizontal(|ui| {
                ui.checkbox(&mut u.regex, t("Matches a pattern"));
                if u.regex {
                    let l = ui.label(t("Pattern"));
                    ui.add(egui::TextEdit::singleline(&mut u.pattern).desired_width(200.0)).labelled_by(l.id);
                }
            });
            ui.horizontal(|ui| {
                ui.checkbox(&mut u.numeric, t("Number within tolerance"));
                if u.numeric {
                    ui.add(egui::DragValue::new(&mut u.tolerance).range(0.0..=1e9).speed(0.01).prefix(t("± ")));
                }
            });
            ui.horizontal(|ui| {
                ui.checkbox(&mut u.choice, t("Multiple choice (option likelihood)"));
                if u.choice {
                    egui::ComboBox::from_label(t("Options column")).selected_text(u.choices_col.clone()).show_ui(ui, |ui| {
                        for c in &columns {
                            ui.selectable_value(&mut u.choices_col, c.clone(), c.as_str());
                        }
                    });
                }
            });
            ui.checkbox(&mut u.perplexity, t("Perplexity of the reference answer"));
            ui.horizontal(|ui| {
                ui.checkbox(&mut u.reward, t("Reward-model score"));
                if u.reward {
                    egui::ComboBox::from_label(t("Reward run"))
                        .selected_text(u.reward_run.as_ref().map(|p| short_path(p)).unwrap_or_default())
                        .show_ui(ui, |ui| {
                            for r in &reward_runs {
                                ui.selectable_value(&mut u.reward_run, Some(r.clone()), short_path(r));
                            }
                        });
                }
            });
            ui.horizontal(|ui| {
                ui.checkbox(&mut u.judge, t("A model as judge"));
                if u.judge {
                    egui::ComboBox::from_label(t("Judge model"))
                        .selected_text(u.judge_model.as_ref().map(|p| short_path(p)).unwrap_or_default())
                        .show_ui(ui, |ui| {
                            for m in &candidates {
                                ui.selectable_value(&mut u.judge_model, Some(m.clone()), short_path(m));
                            }
                        });
                }
            });
            if u.judge {
                let l = ui.label(t("Rubric ({prompt}, {reference} and {output} are filled in)"));
                ui.add(egui::TextEdit::multiline(&mut u.rubric).desired_rows(4).desired_width(f32::INFINITY)).labelled_by(l.id);
            }
        });
        ui.end_row();
        ui.label(t("Generation"));
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut u.max_new_tokens).range(1..=2048).prefix(t("max new tokens ")));
            ui.add(egui::DragValue::new(&mut u.limit).range(0..=1_000_000).prefix(t("items (0 = all) ")));
        });
        ui.end_row();
    });
    let spec = suite_spec(u, ws_root);
    if let Err(e) = &spec {
        ui.colored_label(ui.visuals().warn_fg_color, e);
    }
    let running = u.running;
    let (mut run, mut save) = (false, false);
    ui.horizontal(|ui| {
        run = ui.add_enabled(spec.is_ok() && !running, egui::Button::new(egui::RichText::new(t("Run evaluation")).size(16.0))).clicked();
        save = ui
            .add_enabled(spec.is_ok(), egui::Button::new(t("Save suite for training")))
            .on_hover_text(t("Train can evaluate a saved suite every N steps"))
            .clicked();
    });
    if let (true, Ok(s)) = (run, &spec) {
        app.eval_ui.running = true;
        app.model(ModelCmd::RunEval { spec: Box::new(s.clone()), workspace: ws_root.to_path_buf() });
    }
    if let (true, Ok(s)) = (save, &spec) {
        app.data(DataCmd::SaveSuite { spec: Box::new(s.clone()), path: suite_path(ws_root, &s.name) });
    }
}

/// Where the Evaluate panel saves a suite for training jobs to use.
pub fn suite_path(ws_root: &std::path::Path, name: &str) -> PathBuf {
    ws_root.join("suites").join(format!("{name}.toml"))
}

/// Bars with 95 % interval whiskers: one group per label, one bar per series.
fn ci_bars(ui: &mut egui::Ui, id: &str, groups: &[String], series: &[(String, Vec<Option<(f64, f64, f64)>>)], y_label: &str) {
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    Plot::new(id)
        .legend(Legend::default())
        .y_axis_label(y_label)
        .height(240.0)
        .allow_scroll(false)
        .x_axis_formatter({
            let groups = groups.to_vec();
            move |m, _| {
                let i = m.value.round();
                if (m.value - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < groups.len() {
                    groups[i as usize].clone()
                } else {
                    String::new()
                }
            }
        })
        .show(ui, |p| {
            for (s, (name, vals)) in series.iter().enumerate() {
                let x0 = |g: usize| g as f64 - 0.4 + width * (s as f64 + 0.5);
                let bars: Vec<Bar> =
                    vals.iter().enumerate().filter_map(|(g, v)| v.map(|(m, _, _)| Bar::new(x0(g), m).width(width * 0.9))).collect();
                p.bar_chart(BarChart::new(name.clone(), bars));
                for (g, v) in vals.iter().enumerate() {
                    if let Some((_, lo, hi)) = v {
                        p.line(
                            Line::new(format!("{name} 95 %"), PlotPoints::new(vec![[x0(g), *lo], [x0(g), *hi]]))
                                .width(2.0)
                                .color(egui::Color32::GRAY),
                        );
                    }
                }
            }
        });
}

fn results(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    pick_result(app, ui);
    let Some(r) = app.eval_ui.current.clone() else { return };
    if app.eval_ui.metric_view.is_empty() || !r.metrics.contains(&app.eval_ui.metric_view) {
        app.eval_ui.metric_view = r.metrics[0].clone();
    }
    ui.horizontal(|ui| {
        egui::ComboBox::from_label(t("Metric")).selected_text(app.eval_ui.metric_view.clone()).show_ui(ui, |ui| {
            for m in &r.metrics {
                ui.selectable_value(&mut app.eval_ui.metric_view, m.clone(), m.as_str());
            }
        });
        let l = ui.label(t("Report file"));
        ui.add(egui::TextEdit::singleline(&mut app.eval_ui.report_path).hint_text("report.html or report.md").desired_width(240.0))
            .labelled_by(l.id);
        if ui.button(t("Export report")).clicked() && !app.eval_ui.report_path.trim().is_empty() {
            let out = PathBuf::from(app.eval_ui.report_path.trim());
            app.data(DataCmd::EvalReport { id: r.id.clone(), out });
        }
    });
    let metric = app.eval_ui.metric_view.clone();
    egui::ScrollArea::vertical().id_salt("eval_results").show(ui, |ui| {
        // Summary table.
        egui::Grid::new("eval_summary").striped(true).num_columns(r.metrics.len() + 1).show(ui, |ui| {
            ui.strong(t("model"));
            for m in &r.metrics {
                ui.strong(m.as_str());
            }
            ui.end_row();
            for s in &r.summary {
                ui.label(&s.model);
                for m in &r.metrics {
                    ui.label(s.metrics.get(m).map_or("-".into(), |x| format!("{:.3}  [{:.3}, {:.3}]", x.mean, x.lo, x.hi)));
                }
                ui.end_row();
            }
        });
        if r.summary.len() >= 2 {
            let (a, b) = (&r.summary[0], &r.summary[r.summary.len() - 1]);
            if let (Some(x), Some(y)) = (a.metrics.get(&metric), b.metrics.get(&metric)) {
                ui.strong(format!("{} vs {}: {:+.3} {metric}", b.model, a.model, y.mean - x.mean));
            }
        }
        ui.strong(format!("{metric} by model (95 % intervals)"));
        let series: Vec<(String, Vec<Option<(f64, f64, f64)>>)> =
            r.summary.iter().map(|s| (s.model.clone(), vec![s.metrics.get(&metric).map(|x| (x.mean, x.lo, x.hi))])).collect();
        ci_bars(ui, "eval_bars", std::slice::from_ref(&metric), &series, &metric);
        let tags: Vec<String> =
            r.summary.iter().flat_map(|s| s.by_tag.keys().cloned()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if !tags.is_empty() {
            ui.strong(format!("{metric} by tag"));
            let series: Vec<(String, Vec<Option<(f64, f64, f64)>>)> = r
                .summary
                .iter()
                .map(|s| {
                    (
                        s.model.clone(),
                        tags.iter().map(|t| s.by_tag.get(t).and_then(|m| m.get(&metric)).map(|x| (x.mean, x.lo, x.hi))).collect(),
                    )
                })
                .collect();
            ci_bars(ui, "eval_tag_bars", &tags, &series, &metric);
        }
        during_training(app, ui);
    });
}

/// Suite scores recorded inside training runs (eval_suite), next to each run's reward or loss.
fn during_training(app: &WorkbenchApp, ui: &mut egui::Ui) {
    for run in &app.runs_ui.runs {
        let keys: std::collections::BTreeSet<String> =
            run.evals.iter().flat_map(|e| e.metrics.keys().filter(|k| k.starts_with("suite/")).cloned()).collect();
        if keys.is_empty() {
            continue;
        }
        ui.strong(format!("{}: during training", run.name));
        let half = (ui.available_width() / 2.0 - 8.0).max(200.0);
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.set_width(half);
                let series: Vec<Series> = keys
                    .iter()
                    .map(|k| Series {
                        name: k.clone(),
                        points: run.evals.iter().filter_map(|e| e.metrics.get(k).map(|v| [e.step as f64, *v])).collect(),
                    })
                    .collect();
                lines(ui, &format!("suite_curve_{}", run.name), "score", &series, 0.0, 180.0);
            });
            ui.vertical(|ui| {
                ui.set_width(half);
                let key = ["reward_mean", "rewards/margins"].into_iter().find(|k| run.steps.iter().any(|s| s.metrics.contains_key(*k)));
                let (name, points): (String, Vec<[f64; 2]>) = match key {
                    Some(k) => (k.to_string(), run.steps.iter().filter_map(|s| s.metrics.get(k).map(|v| [s.step as f64, *v])).collect()),
                    None => ("train loss".into(), run.steps.iter().map(|s| [s.step as f64, s.loss]).collect()),
                };
                lines(ui, &format!("suite_side_{}", run.name), &name, &[Series { name: name.clone(), points }], 0.6, 180.0);
            });
        });
    }
}

fn pick_result(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let listings = app.eval_ui.listings.clone();
    let current = app.eval_ui.current.as_ref().map(|r| r.id.clone());
    if listings.is_empty() {
        ui.label(t("No evaluations yet: run a suite first."));
        return;
    }
    let mut chosen = current.clone();
    egui::ComboBox::from_label(t("Evaluation")).selected_text(chosen.clone().unwrap_or_else(|| "(choose)".into())).show_ui(ui, |ui| {
        for l in listings.iter().rev() {
            ui.selectable_value(&mut chosen, Some(l.id.clone()), format!("{}  ({})", l.id, l.models));
        }
    });
    if chosen != current
        && let Some(id) = chosen
    {
        app.data(DataCmd::LoadEval { id });
    }
}

fn diff_job(ui: &egui::Ui, a: &str, b: &str, side_b: bool) -> egui::text::LayoutJob {
    let mut job = egui::text::LayoutJob::default();
    let normal = egui::TextFormat { color: ui.visuals().text_color(), ..Default::default() };
    let removed =
        egui::TextFormat { color: ui.visuals().text_color(), background: egui::Color32::from_rgb(120, 40, 40), ..Default::default() };
    let added =
        egui::TextFormat { color: ui.visuals().text_color(), background: egui::Color32::from_rgb(40, 100, 50), ..Default::default() };
    for (op, text) in word_diff(a, b) {
        match (op, side_b) {
            (Op::Same, _) => job.append(&text, 0.0, normal.clone()),
            (Op::Removed, false) => job.append(&text, 0.0, removed.clone()),
            (Op::Added, true) => job.append(&text, 0.0, added.clone()),
            _ => {}
        }
    }
    job
}

fn side_by_side(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    pick_result(app, ui);
    let Some(r) = app.eval_ui.current.clone() else { return };
    let metric = if r.metrics.contains(&app.eval_ui.metric_view) { app.eval_ui.metric_view.clone() } else { r.metrics[0].clone() };
    ui.horizontal(|ui| {
        ui.checkbox(&mut app.eval_ui.only_differ, t("Only where the outputs differ"));
        ui.checkbox(&mut app.eval_ui.only_changed, t("Only where the score changed"));
    });
    let n = r.models.len();
    let shown: Vec<usize> = (0..r.items.len())
        .filter(|&i| {
            let outs: Vec<&Option<String>> = (0..n).map(|m| &r.outputs[m][i].output).collect();
            let scores: Vec<Option<f64>> = (0..n).map(|m| r.outputs[m][i].scores.get(&metric).copied()).collect();
            (!app.eval_ui.only_differ || outs.windows(2).any(|w| w[0] != w[1]))
                && (!app.eval_ui.only_changed || scores.windows(2).any(|w| w[0] != w[1]))
        })
        .collect();
    ui.label(format!("{} of {} items", shown.len(), r.items.len()));
    egui::ScrollArea::vertical().id_salt("sbs").show(ui, |ui| {
        for &i in &shown {
            let it = &r.items[i];
            ui.group(|ui| {
                ui.strong(format!("[{}] {}", it.id, it.tag.clone().unwrap_or_default()));
                bubble(ui, "user", &it.prompt);
                if let Some(refa) = &it.reference {
                    ui.weak(format!("reference: {refa}"));
                }
                ui.columns(n, |cols| {
                    for m in 0..n {
                        let o = r.outputs[m][i].output.clone().unwrap_or_default();
                        let score = r.outputs[m][i].scores.get(&metric).map_or("-".into(), |v| format!("{v:.3}"));
                        cols[m].strong(format!("{} · {metric} {score}", r.models[m].name));
                        let other = r.outputs[if m == 0 { 1.min(n - 1) } else { 0 }][i].output.clone().unwrap_or_default();
                        let job = if n >= 2 && m <= 1 {
                            if m == 0 { diff_job(&cols[m], &o, &other, false) } else { diff_job(&cols[m], &other, &o, true) }
                        } else {
                            egui::text::LayoutJob::simple_singleline(o, egui::FontId::default(), cols[m].visuals().text_color())
                        };
                        cols[m].label(job);
                    }
                });
            });
        }
    });
}

fn blind(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    pick_result(app, ui);
    let Some(r) = app.eval_ui.current.clone() else { return };
    if r.models.len() < 2 {
        ui.label(t("Blind A/B needs an evaluation of at least two models."));
        return;
    }
    let total = app.eval_ui.queue.len();
    let cursor = app.eval_ui.cursor.min(total);
    ui.add(
        egui::ProgressBar::new(if total == 0 { 1.0 } else { cursor as f32 / total as f32 })
            .desired_width(260.0)
            .text(format!("{cursor} of {total} judged")),
    );
    let mut verdict = None;
    if let Some((item, ma, mb)) = app.eval_ui.queue.get(cursor).cloned() {
        if let Some(i) = r.items.iter().position(|x| x.id == item) {
            let names = r.model_names();
            let out = |m: &str| names.iter().position(|n| n == m).and_then(|k| r.outputs[k][i].output.clone()).unwrap_or_default();
            bubble(ui, "user", &r.items[i].prompt);
            ui.columns(2, |cols| {
                cols[0].strong(t("Answer A"));
                bubble(&mut cols[0], "assistant", &out(&ma));
                cols[1].strong(t("Answer B"));
                bubble(&mut cols[1], "assistant", &out(&mb));
            });
            ui.horizontal(|ui| {
                for (label, v) in [("A is better (A)", "a"), ("B is better (B)", "b"), ("Tie (T)", "tie"), ("Both bad (X)", "both_bad")] {
                    if ui.add(egui::Button::new(egui::RichText::new(t(label)).size(16.0)).min_size(egui::vec2(110.0, 36.0))).clicked() {
                        verdict = Some(v);
                    }
                }
            });
            if !ui.ctx().memory(|m| m.focused().is_some()) {
                for (k, v) in [(egui::Key::A, "a"), (egui::Key::B, "b"), (egui::Key::T, "tie"), (egui::Key::X, "both_bad")] {
                    if ui.input_mut(|x| x.consume_key(egui::Modifiers::NONE, k)) {
                        verdict = Some(v);
                    }
                }
            }
            if let Some(v) = verdict {
                let annotator = app.settings.annotator.clone();
                app.data(DataCmd::Vote { eval_id: r.id.clone(), item, model_a: ma, model_b: mb, verdict: v.into(), annotator });
                app.eval_ui.cursor += 1;
            }
        }
    } else {
        ui.label(t("Every pair has a verdict."));
    }
    ui.horizontal(|ui| {
        if ui.button(t("Undo last vote")).clicked() && app.eval_ui.cursor > 0 {
            let annotator = app.settings.annotator.clone();
            app.data(DataCmd::UndoVote { eval_id: r.id.clone(), annotator });
            app.eval_ui.cursor -= 1;
        }
        if ui.button(t("Save votes as a preference dataset")).clicked() {
            app.data(DataCmd::VotesToPreferences { eval_id: r.id.clone() });
        }
    });
    if let Some(rt) = &app.eval_ui.ratings {
        ui.separator();
        ui.strong(format!("{} verdicts (ties count half; 'both bad' is left out)", rt.battles));
        egui::Grid::new("ratings").striped(true).num_columns(4).show(ui, |ui| {
            for h in ["model (revealed)", "Elo (Bradley–Terry)", "95 %", "win rate"] {
                ui.strong(t(h));
            }
            ui.end_row();
            for x in &rt.ratings {
                ui.label(&x.model);
                ui.label(format!("{:.0}", x.elo));
                ui.label(format!("{:.0} – {:.0}", x.lo, x.hi));
                ui.label(if x.win_rate.is_finite() { format!("{:.2} [{:.2}, {:.2}]", x.win_rate, x.win_lo, x.win_hi) } else { "-".into() });
                ui.end_row();
            }
        });
        ui.strong(t("Share of battles the row model won against the column model"));
        egui::Grid::new("win_matrix").striped(true).show(ui, |ui| {
            ui.label("");
            for x in &rt.ratings {
                ui.strong(&x.model);
            }
            ui.end_row();
            for (i, x) in rt.ratings.iter().enumerate() {
                ui.strong(&x.model);
                for j in 0..rt.ratings.len() {
                    ui.label(rt.matrix[i][j].map_or("-".into(), |v| format!("{v:.2}")));
                }
                ui.end_row();
            }
        });
    }
}
