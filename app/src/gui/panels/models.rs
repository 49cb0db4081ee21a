//! Models panel: add an HF folder or GGUF file, see what it is (architecture, size, memory,
//! context, chat template), and try it in a chat playground with streaming output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use whetstone_engine::generate::GenerateOptions;
use whetstone_engine::model::ModelInfo;

use crate::gui::WorkbenchApp;
use crate::gui::i18n::t;
use crate::gui::panels::data::{bubble, short_path};
use crate::gui::worker::ModelCmd;

pub struct ModelsUi {
    pub path_input: String,
    pub selected: Option<PathBuf>,
    pub infos: BTreeMap<PathBuf, Result<ModelInfo, String>>,
    pub chat: Vec<(String, String)>,
    pub prompt: String,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub generating: Option<Arc<AtomicBool>>,
    pub last_speed: String,
}

impl Default for ModelsUi {
    fn default() -> Self {
        Self {
            path_input: String::new(),
            selected: None,
            infos: BTreeMap::new(),
            chat: Vec::new(),
            prompt: String::new(),
            temperature: 0.7,
            top_p: 0.95,
            max_new_tokens: 256,
            generating: None,
            last_speed: String::new(),
        }
    }
}

fn add_model(app: &mut WorkbenchApp, p: PathBuf) {
    if !app.settings.models.contains(&p) {
        app.settings.models.push(p.clone());
    }
    app.models_ui.selected = Some(p.clone());
    app.model(ModelCmd::Info(p));
}

pub fn ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        let l = ui.label(t("Model path"));
        ui.add(egui::TextEdit::singleline(&mut app.models_ui.path_input).hint_text(t("an HF folder or a .gguf file")).desired_width(380.0))
            .labelled_by(l.id);
        if ui.button(t("Add model")).clicked() && !app.models_ui.path_input.trim().is_empty() {
            let p = PathBuf::from(app.models_ui.path_input.trim());
            app.models_ui.path_input.clear();
            add_model(app, p);
        }
        if ui.button(t("GGUF file…")).clicked()
            && let Some(p) = rfd::FileDialog::new().add_filter("GGUF", &["gguf"]).pick_file()
        {
            add_model(app, p);
        }
        if ui.button(t("HF folder…")).clicked()
            && let Some(p) = rfd::FileDialog::new().pick_folder()
        {
            add_model(app, p);
        }
    });
    ui.separator();
    let models = app.settings.models.clone();
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(220.0);
            ui.strong(t("Models"));
            let mut remove = None;
            for m in &models {
                let r = ui.add(egui::Button::selectable(app.models_ui.selected.as_ref() == Some(m), short_path(m)));
                if r.clicked() {
                    app.models_ui.selected = Some(m.clone());
                    if !app.models_ui.infos.contains_key(m) {
                        app.model(ModelCmd::Info(m.clone()));
                    }
                }
                r.context_menu(|ui| {
                    if ui.button(t("Remove from list")).clicked() {
                        remove = Some(m.clone());
                        ui.close();
                    }
                });
            }
            if let Some(m) = remove {
                app.settings.models.retain(|x| x != &m);
            }
            // What each device can hold, beside the models' memory figures.
            ui.add_space(12.0);
            ui.strong(t("Devices"));
            if !app.train_ui.devices_asked {
                app.train_ui.devices_asked = true;
                app.model(ModelCmd::ListDevices);
            }
            match &app.train_ui.devices {
                Some(list) => {
                    for d in list {
                        ui.label(d.label());
                    }
                }
                None => {
                    ui.weak(t("Looking for devices…"));
                }
            }
        });
        ui.separator();
        ui.vertical(|ui| {
            let Some(sel) = app.models_ui.selected.clone() else {
                ui.label(t("Add or select a model."));
                return;
            };
            match app.models_ui.infos.get(&sel) {
                None => {
                    ui.label(t("Loading…"));
                }
                Some(Err(e)) => {
                    ui.colored_label(ui.visuals().error_fg_color, e);
                }
                Some(Ok(i)) => {
                    egui::Grid::new("model_info").num_columns(2).striped(true).show(ui, |ui| {
                        let rows = [
                            ("Architecture", format!("{} ({})", i.architecture, i.model_type)),
                            ("Parameters", format!("{:.1} M", i.parameters as f64 / 1e6)),
                            ("Stored as", format!("{:?}, {}", i.format, i.dtype)),
                            ("Weights in memory (as loaded)", format!("{:.0} MB", i.weights_bytes as f64 / 1e6)),
                            (
                                "Memory to fine-tune fully (f32 + AdamW)",
                                format!("{:.0} MB + activations", i.parameters as f64 * 16.0 / 1e6),
                            ),
                            ("Context length", i.context_length.to_string()),
                            ("Layers · hidden · heads", format!("{} · {} · {}/{}", i.layers, i.hidden_size, i.heads, i.kv_heads)),
                            ("Vocabulary", i.vocab_size.to_string()),
                        ];
                        for (k, v) in rows {
                            ui.label(k);
                            ui.label(v);
                            ui.end_row();
                        }
                    });
                }
            }
            ui.separator();
            playground(app, ui, &sel);
        });
    });
}

fn playground(app: &mut WorkbenchApp, ui: &mut egui::Ui, model: &std::path::Path) {
    ui.strong(t("Playground"));
    egui::ScrollArea::vertical().id_salt("chat").stick_to_bottom(true).max_height(ui.available_height() - 150.0).show(ui, |ui| {
        for (role, text) in &app.models_ui.chat {
            bubble(ui, role, text);
        }
    });
    let u = &mut app.models_ui;
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut u.temperature, 0.0..=2.0).text(t("Temperature")));
        ui.add(egui::Slider::new(&mut u.top_p, 0.05..=1.0).text(t("Top-p")));
        ui.add(egui::DragValue::new(&mut u.max_new_tokens).range(1..=4096).prefix(t("max tokens ")));
    });
    let l = ui.label(t("Message"));
    ui.add(egui::TextEdit::multiline(&mut u.prompt).desired_rows(2).desired_width(f32::INFINITY)).labelled_by(l.id);
    let mut send = None;
    ui.horizontal(|ui| {
        let busy = u.generating.is_some();
        if ui.add_enabled(!busy && !u.prompt.trim().is_empty(), egui::Button::new(t("Send"))).clicked() {
            let prompt = std::mem::take(&mut u.prompt);
            u.chat.push(("user".into(), prompt.clone()));
            u.chat.push(("assistant".into(), String::new()));
            let cancel = Arc::new(AtomicBool::new(false));
            u.generating = Some(cancel.clone());
            let opts = GenerateOptions {
                max_new_tokens: u.max_new_tokens,
                temperature: u.temperature,
                top_p: u.top_p,
                seed: u.chat.len() as u64,
                ..Default::default()
            };
            send = Some(ModelCmd::Generate { model: model.to_path_buf(), prompt, opts, cancel });
        }
        if ui.add_enabled(busy, egui::Button::new(t("Stop"))).clicked()
            && let Some(c) = &u.generating
        {
            c.store(true, Ordering::Relaxed);
        }
        if ui.button(t("Clear")).clicked() {
            u.chat.clear();
        }
        ui.weak(&u.last_speed);
    });
    if let Some(cmd) = send {
        app.model(cmd);
    }
}
