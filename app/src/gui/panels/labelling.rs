//! Labelling mode: one record at a time with big targets and single-key shortcuts (accept,
//! reject, flag, rate 1–5, tag, edit, note), and a pairwise mode (A / B / tie / both bad) fed
//! by answers a model drafts. Every click is saved to the workspace's journal at once;
//! Ctrl+Z undoes it.

use serde_json::{Value, json};

use crate::gui::WorkbenchApp;
use crate::gui::i18n::t;
use crate::gui::panels::data::{bubble, short_path, turns};
use crate::gui::worker::{DataCmd, ModelCmd, PairItem};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelMode {
    #[default]
    Records,
    Pairs,
}

pub struct LabelUi {
    pub mode: LabelMode,
    /// Position in the dataset view's rows.
    pub cursor: usize,
    pub editing: Option<String>,
    /// The record `editing` and `note_input` belong to; they are dropped when it changes.
    pub draft_for: Option<String>,
    pub tag_input: String,
    pub note_input: String,
    pub pairs: Vec<PairItem>,
    pub pair_cursor: usize,
    pub draft_model: Option<std::path::PathBuf>,
    pub draft_k: usize,
    pub draft_limit: usize,
}

impl Default for LabelUi {
    fn default() -> Self {
        Self {
            mode: LabelMode::Records,
            cursor: 0,
            editing: None,
            draft_for: None,
            tag_input: String::new(),
            note_input: String::new(),
            pairs: Vec::new(),
            pair_cursor: 0,
            draft_model: None,
            draft_k: 2,
            draft_limit: 10,
        }
    }
}

fn big(text: &str) -> egui::Button<'_> {
    egui::Button::new(egui::RichText::new(text).size(16.0)).min_size(egui::vec2(110.0, 36.0))
}

pub fn ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    if app.ds.is_none() {
        ui.label(t("Open a dataset on the Data page first."));
        return;
    }
    ui.horizontal(|ui| {
        ui.selectable_value(&mut app.label_ui.mode, LabelMode::Records, t("Records"));
        if ui.selectable_value(&mut app.label_ui.mode, LabelMode::Pairs, t("Pairs")).clicked() {
            refresh_pairs(app);
        }
        ui.separator();
        let l = ui.label(t("Annotator"));
        ui.add(egui::TextEdit::singleline(&mut app.settings.annotator).desired_width(120.0)).labelled_by(l.id);
    });
    ui.separator();
    match app.label_ui.mode {
        LabelMode::Records => records(app, ui),
        LabelMode::Pairs => pairs(app, ui),
    }
}

fn typing(ui: &egui::Ui) -> bool {
    ui.ctx().memory(|m| m.focused().is_some())
}

fn key(ui: &mut egui::Ui, k: egui::Key) -> bool {
    ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, k))
}

fn records(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let Some(d) = app.ds.as_ref() else { return };
    let n = d.rows.len();
    if n == 0 {
        ui.label(t("No rows match the current search."));
        return;
    }
    let cursor = app.label_ui.cursor.min(n - 1);
    let row = d.rows[cursor];
    let id = d.ids[row].clone();
    let labels = d.labels.get(&id).cloned().unwrap_or_default();
    // Counted over the (few) labelled records, not over every row, so it stays cheap at 1 M rows.
    let labelled = d.labels.values().filter(|l| l.contains_key("status")).count().min(n);
    let response_col = d.info.roles.response.clone();
    let tags = d.tags.clone();
    if app.label_ui.draft_for.as_deref() != Some(id.as_str()) {
        app.label_ui.editing = None;
        app.label_ui.note_input.clear();
        app.label_ui.draft_for = Some(id.clone());
    }
    let Some(d) = app.ds.as_ref() else { return };
    ui.horizontal(|ui| {
        ui.strong(format!("Record {id}  ({} of {n})", cursor + 1));
        ui.add(egui::ProgressBar::new(labelled as f32 / n as f32).desired_width(220.0).text(format!("{labelled} of {n} labelled")));
    });
    // Keyboard, unless a text field has focus.
    let mut action: Option<(&str, Option<Value>)> = None;
    let mut advance = 0i64;
    if app.label_ui.editing.is_none() && !typing(ui) {
        if key(ui, egui::Key::A) {
            action = Some(("status", Some(json!("accept"))));
            advance = 1;
        }
        if key(ui, egui::Key::R) {
            action = Some(("status", Some(json!("reject"))));
            advance = 1;
        }
        if key(ui, egui::Key::F) {
            action = Some(("status", Some(json!("flag"))));
            advance = 1;
        }
        for (k, r) in [(egui::Key::Num1, 1), (egui::Key::Num2, 2), (egui::Key::Num3, 3), (egui::Key::Num4, 4), (egui::Key::Num5, 5)] {
            if key(ui, k) {
                action = Some(("rating", Some(json!(r))));
            }
        }
        if key(ui, egui::Key::J) || key(ui, egui::Key::ArrowRight) || key(ui, egui::Key::ArrowDown) {
            advance = 1;
        }
        if key(ui, egui::Key::K) || key(ui, egui::Key::ArrowLeft) || key(ui, egui::Key::ArrowUp) {
            advance = -1;
        }
        if key(ui, egui::Key::E) {
            let current = labels.get("edit").and_then(|v| v.as_str().map(str::to_string));
            let original = response_col.as_ref().map(|c| d.cell(row, c)).unwrap_or_default();
            app.label_ui.editing = Some(current.unwrap_or(original));
        }
    }
    egui::ScrollArea::vertical().id_salt("label_record").max_height(ui.available_height() * 0.55).show(ui, |ui| {
        for (role, text) in turns(d, row) {
            if role == "assistant"
                && let Some(e) = labels.get("edit").and_then(|v| v.as_str())
            {
                bubble(ui, "assistant (edited)", e);
                continue;
            }
            bubble(ui, &role, &text);
        }
    });
    if let Some(mut text) = app.label_ui.editing.take() {
        let l = ui.label(t("Edited response"));
        ui.add(egui::TextEdit::multiline(&mut text).desired_rows(4).desired_width(f32::INFINITY)).labelled_by(l.id);
        let mut keep = true;
        ui.horizontal(|ui| {
            if ui.button(t("Save edit")).clicked() {
                action = Some(("edit", Some(json!(text.clone()))));
                keep = false;
            } else if ui.button(t("Discard edit")).clicked() {
                keep = false;
            }
        });
        if keep {
            app.label_ui.editing = Some(text);
        }
    }
    ui.add_space(6.0);
    let status = labels.get("status").and_then(|v| v.as_str()).unwrap_or("").to_string();
    ui.horizontal(|ui| {
        for (label, value) in
            [(format!("{} (A)", t("Accept")), "accept"), (format!("{} (R)", t("Reject")), "reject"), (format!("{} (F)", t("Flag")), "flag")]
        {
            let b = big(&label).selected(status == value);
            if ui.add(b).clicked() {
                action = Some(("status", Some(json!(value))));
                advance = 1;
            }
        }
        ui.separator();
        if ui.add(big("Edit (E)")).clicked() {
            let original = response_col.as_ref().map(|c| d.cell(row, c)).unwrap_or_default();
            app.label_ui.editing = Some(labels.get("edit").and_then(|v| v.as_str().map(str::to_string)).unwrap_or(original));
        }
    });
    let rating = labels.get("rating").and_then(|v| v.as_u64()).unwrap_or(0);
    ui.horizontal(|ui| {
        ui.label(t("Rating"));
        for r in 1..=5u64 {
            if ui
                .add(
                    egui::Button::new(egui::RichText::new(r.to_string()).size(16.0)).min_size(egui::vec2(36.0, 32.0)).selected(rating == r),
                )
                .clicked()
            {
                action = Some(("rating", Some(json!(r))));
            }
        }
    });
    let current_tags: Vec<String> = labels
        .get("tags")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    ui.horizontal_wrapped(|ui| {
        ui.label(t("Tags"));
        for tag in &tags {
            let on = current_tags.contains(tag);
            if ui.add(egui::Button::selectable(on, tag.as_str())).clicked() {
                let mut next = current_tags.clone();
                if on {
                    next.retain(|t| t != tag);
                } else {
                    next.push(tag.clone());
                }
                action = Some(("tags", Some(json!(next))));
            }
        }
        let l = ui.label(t("New tag"));
        let r = ui.add(egui::TextEdit::singleline(&mut app.label_ui.tag_input).desired_width(120.0)).labelled_by(l.id);
        let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.button(t("Add tag")).clicked() || enter) && !app.label_ui.tag_input.trim().is_empty() {
            let mut next = current_tags.clone();
            next.push(app.label_ui.tag_input.trim().to_string());
            app.label_ui.tag_input.clear();
            action = Some(("tags", Some(json!(next))));
        }
    });
    ui.horizontal(|ui| {
        let l = ui.label(t("Note"));
        if app.label_ui.note_input.is_empty()
            && let Some(n) = labels.get("note").and_then(|v| v.as_str())
        {
            app.label_ui.note_input = n.to_string();
        }
        ui.add(egui::TextEdit::singleline(&mut app.label_ui.note_input).desired_width(300.0)).labelled_by(l.id);
        if ui.button(t("Save note")).clicked() {
            action = Some(("note", Some(json!(app.label_ui.note_input.clone()))));
        }
    });
    ui.horizontal(|ui| {
        if ui.add(big(&format!("{} (K)", t("Previous")))).clicked() {
            advance = -1;
        }
        if ui.add(big(&format!("{} (J)", t("Next")))).clicked() {
            advance = 1;
        }
        ui.separator();
        if ui.button(t("Save labels as a new dataset version")).clicked() {
            let name = app.dataset_name().unwrap_or_default();
            app.data(DataCmd::CommitLabels { dataset: name });
        }
    });
    if let Some((kind, value)) = action {
        app.set_label(&id, kind, value);
    }
    if advance != 0 {
        let next = (cursor as i64 + advance).clamp(0, n as i64 - 1) as usize;
        app.label_ui.cursor = next;
        if let Some(d) = app.ds.as_mut() {
            d.selected = Some(d.rows[next]);
        }
    }
}

fn refresh_pairs(app: &mut WorkbenchApp) {
    if let Some(name) = app.dataset_name() {
        let a = app.settings.annotator.clone();
        app.data(DataCmd::PairQueue { dataset: name, annotator: a });
    }
}

fn pairs(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let models = app.settings.models.clone();
    if app.label_ui.draft_model.is_none() {
        app.label_ui.draft_model = models.first().cloned();
    }
    ui.horizontal(|ui| {
        egui::ComboBox::from_label(t("Draft with"))
            .selected_text(app.label_ui.draft_model.as_ref().map(|p| short_path(p)).unwrap_or_else(|| "(add a model)".into()))
            .show_ui(ui, |ui| {
                for m in &models {
                    ui.selectable_value(&mut app.label_ui.draft_model, Some(m.clone()), short_path(m));
                }
            });
        ui.add(egui::DragValue::new(&mut app.label_ui.draft_k).range(2..=8).prefix(t("answers per prompt ")));
        ui.add(egui::DragValue::new(&mut app.label_ui.draft_limit).range(1..=100_000).prefix(t("prompts ")));
        if ui.button(t("Draft answers with model")).clicked()
            && let (Some(model), Some(ws), Some(dataset)) =
                (app.label_ui.draft_model.clone(), app.ws.as_ref().map(|w| w.root.clone()), app.dataset_name())
        {
            let opts = whetstone_engine::generate::GenerateOptions {
                max_new_tokens: 96,
                temperature: 0.8,
                top_p: 0.95,
                seed: 0,
                ..Default::default()
            };
            app.model(ModelCmd::Draft {
                workspace: ws,
                dataset,
                model,
                k: app.label_ui.draft_k,
                limit: Some(app.label_ui.draft_limit),
                opts,
            });
        }
        if ui.button(t("Refresh queue")).clicked() {
            refresh_pairs(app);
        }
    });
    ui.separator();
    let total = app.label_ui.pairs.len();
    let done = app.label_ui.pair_cursor.min(total);
    ui.add(
        egui::ProgressBar::new(if total == 0 { 0.0 } else { done as f32 / total as f32 })
            .desired_width(260.0)
            .text(format!("{done} of {total} pairs judged")),
    );
    app.label_ui.pair_cursor = app.label_ui.pair_cursor.min(app.label_ui.pairs.len());
    let Some(item) = app.label_ui.pairs.get(app.label_ui.pair_cursor).cloned() else {
        ui.label(t("No pairs waiting. Draft answers with a model, or open a dataset with chosen/rejected columns, then Refresh queue."));
        if ui.button(t("Save preferences as a dataset")).clicked()
            && let Some(name) = app.dataset_name()
        {
            let a = app.settings.annotator.clone();
            app.data(DataCmd::CommitPreferences { dataset: name, annotator: a });
        }
        return;
    };
    ui.strong(format!("Record {}", item.record));
    bubble(ui, "user", &item.prompt);
    let mut verdict: Option<&str> = None;
    ui.columns(2, |cols| {
        cols[0].strong("Answer A");
        bubble(&mut cols[0], "assistant", &item.a_text);
        cols[1].strong("Answer B");
        bubble(&mut cols[1], "assistant", &item.b_text);
    });
    ui.horizontal(|ui| {
        for (label, v) in [("A is better (A)", "a"), ("B is better (B)", "b"), ("Tie (T)", "tie"), ("Both bad (X)", "both_bad")] {
            if ui.add(big(label)).clicked() {
                verdict = Some(v);
            }
        }
    });
    if !typing(ui) {
        for (k, v) in [(egui::Key::A, "a"), (egui::Key::B, "b"), (egui::Key::T, "tie"), (egui::Key::X, "both_bad")] {
            if key(ui, k) {
                verdict = Some(v);
            }
        }
    }
    if let Some(v) = verdict {
        app.set_label(&item.record, "pair", Some(json!({"a": item.a, "b": item.b, "verdict": v})));
        app.label_ui.pair_cursor += 1;
    }
}
