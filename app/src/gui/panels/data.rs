//! Data panel: import with column → role mapping, a virtual-scrolled table with search and
//! filters, the record as chat bubbles, duplicate and personal-data review, token lengths,
//! splits and export.

use egui_extras::{Column, TableBuilder};
use serde_json::Value;
use whetstone_engine::data::VersionInfo;
use whetstone_engine::data::curate::{DupGroup, PiiHit, Query, SplitFractions, TokenStats};
use whetstone_engine::data::import::ROLE_NAMES;

use crate::gui::WorkbenchApp;
use crate::gui::i18n::t;
use crate::gui::worker::DataCmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataTab {
    #[default]
    Rows,
    Duplicates,
    Pii,
    Tokens,
    Split,
    Export,
}

pub struct DataUi {
    pub tab: DataTab,
    pub search: String,
    pub regex: bool,
    pub status: String,
    pub import_path: String,
    pub duplicates: Option<Vec<DupGroup>>,
    pub dup_threshold: f64,
    pub pii: Option<Vec<PiiHit>>,
    pub token_stats: Option<TokenStats>,
    pub token_model: Option<std::path::PathBuf>,
    pub max_seq_len: usize,
    pub split: [f64; 3],
    pub seed: u64,
    pub stratify: String,
    pub export_path: String,
    pub export_shape: String,
    pub mapping: Option<MappingDialog>,
    pub workspace_path: String,
}

impl Default for DataUi {
    fn default() -> Self {
        Self {
            tab: DataTab::Rows,
            search: String::new(),
            regex: false,
            status: "any".into(),
            import_path: String::new(),
            duplicates: None,
            dup_threshold: 0.8,
            pii: None,
            token_stats: None,
            token_model: None,
            max_seq_len: 512,
            split: [0.8, 0.1, 0.1],
            seed: 0,
            stratify: String::new(),
            export_path: String::new(),
            export_shape: "trl-sft".into(),
            mapping: None,
            workspace_path: String::new(),
        }
    }
}

/// The role mapping shown after an import (guesses pre-filled).
pub struct MappingDialog {
    pub dataset: String,
    pub columns: Vec<String>,
    pub roles: Vec<(String, Option<String>)>,
    original: Vec<(String, Option<String>)>,
}

impl MappingDialog {
    pub fn new(v: &VersionInfo) -> Self {
        let roles: Vec<(String, Option<String>)> = ROLE_NAMES.iter().map(|r| (r.to_string(), v.roles.get(r).cloned())).collect();
        Self { dataset: v.dataset.clone(), columns: v.columns.iter().map(|c| c.name.clone()).collect(), original: roles.clone(), roles }
    }
}

/// Returns false once the dialog is closed.
pub fn mapping_dialog(app: &mut WorkbenchApp, ui: &mut egui::Ui, m: &mut MappingDialog) -> bool {
    let mut keep = true;
    egui::Window::new(t("Column roles")).collapsible(false).resizable(false).show(ui.ctx(), |ui| {
        ui.label(format!("How should Whetstone read the columns of `{}`? The guesses come from the column names.", m.dataset));
        egui::Grid::new("roles_grid").num_columns(2).show(ui, |ui| {
            for (role, col) in m.roles.iter_mut() {
                ui.label(role.as_str());
                egui::ComboBox::from_label(format!("column for {role}"))
                    .selected_text(col.clone().unwrap_or_else(|| "(none)".into()))
                    .show_ui(ui, |ui| {
                        ui.selectable_value(col, None, "(none)");
                        for c in &m.columns {
                            ui.selectable_value(col, Some(c.clone()), c.as_str());
                        }
                    });
                ui.end_row();
            }
        });
        ui.horizontal(|ui| {
            if ui.button(t("Save roles")).clicked() {
                let changed: Vec<(String, String)> = m
                    .roles
                    .iter()
                    .zip(&m.original)
                    .filter(|(a, b)| a != b)
                    .map(|((r, c), _)| (r.clone(), c.clone().unwrap_or_default()))
                    .collect();
                if !changed.is_empty() {
                    app.data(DataCmd::Remap { dataset: m.dataset.clone(), map: changed });
                }
                keep = false;
            }
            if ui.button(t("Keep the guesses")).clicked() {
                keep = false;
            }
        });
    });
    keep
}

/// A chat bubble: user turns on the left in one colour, assistant turns in another.
pub fn bubble(ui: &mut egui::Ui, role: &str, text: &str) {
    let assistant = role == "assistant";
    let fill = if assistant { ui.visuals().faint_bg_color } else { ui.visuals().extreme_bg_color };
    let stroke = egui::Stroke::new(
        1.0,
        if assistant { ui.visuals().selection.bg_fill } else { ui.visuals().widgets.noninteractive.bg_stroke.color },
    );
    ui.small(role);
    egui::Frame::new().fill(fill).stroke(stroke).corner_radius(8.0).inner_margin(8.0).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.add(egui::Label::new(text).wrap().selectable(true));
    });
    ui.add_space(4.0);
}

/// The chat turns of a row, from its messages column or prompt/response columns.
pub fn turns(d: &crate::gui::DatasetView, row: usize) -> Vec<(String, String)> {
    let r = &d.info.roles;
    if let Some(m) = &r.messages
        && let Ok(v) = d.table.value(row, m)
    {
        let v = match v {
            Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
            v => v,
        };
        if let Value::Array(items) = v {
            return items
                .iter()
                .map(|m| {
                    let role = m.get("role").or_else(|| m.get("from")).and_then(Value::as_str).unwrap_or("user");
                    let role = match role {
                        "human" => "user",
                        "gpt" => "assistant",
                        r => r,
                    };
                    (role.to_string(), m.get("content").or_else(|| m.get("value")).and_then(Value::as_str).unwrap_or("").to_string())
                })
                .collect();
        }
    }
    let mut out = Vec::new();
    if let Some(c) = &r.system {
        out.push(("system".into(), d.cell(row, c)));
    }
    if let Some(c) = &r.prompt {
        out.push(("user".into(), d.cell(row, c)));
    }
    for (role, c) in [("assistant", &r.response), ("chosen", &r.chosen), ("rejected", &r.rejected)] {
        if let Some(c) = c {
            out.push((role.into(), d.cell(row, c)));
        }
    }
    if out.is_empty() {
        for c in &d.info.columns {
            out.push((c.name.clone(), d.cell(row, &c.name)));
        }
    }
    out
}

fn no_workspace(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    ui.heading(t("No workspace open"));
    ui.label(t("A workspace is a folder that holds your datasets, labels and training runs."));
    let l = ui.label(t("Workspace folder"));
    ui.add(egui::TextEdit::singleline(&mut app.data_ui.workspace_path).desired_width(400.0)).labelled_by(l.id);
    ui.horizontal(|ui| {
        let p = std::path::PathBuf::from(app.data_ui.workspace_path.trim());
        if ui.button(t("Open or create")).clicked() && !app.data_ui.workspace_path.trim().is_empty() {
            if p.join("whetstone.toml").exists() {
                app.data(DataCmd::Open(p));
            } else {
                app.data(DataCmd::Create(p));
            }
        }
        if ui.button(t("Browse…")).clicked() {
            app.pick_workspace();
        }
    });
}

pub fn ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    if app.ws.is_none() {
        no_workspace(app, ui);
        return;
    }
    // Import row.
    ui.horizontal(|ui| {
        let l = ui.label(t("File to import"));
        let r = ui
            .add(
                egui::TextEdit::singleline(&mut app.data_ui.import_path)
                    .hint_text(t("CSV, TSV, JSON, JSONL or Parquet; or drop files on the window"))
                    .desired_width(360.0),
            )
            .labelled_by(l.id);
        let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.button(t("Import")).clicked() || enter) && !app.data_ui.import_path.trim().is_empty() {
            let p = std::path::PathBuf::from(app.data_ui.import_path.trim());
            app.data(DataCmd::Import { path: p, name: None });
        }
        if ui.button(t("Browse…")).clicked() {
            app.pick_import();
        }
    });
    ui.separator();
    let Some(d) = app.ds.as_ref() else {
        ui.label(t("No dataset yet: import a file to start."));
        return;
    };
    // Dataset header.
    let (name, version, rows, roles) = (d.info.dataset.clone(), d.info.version, d.info.rows, d.info.roles.as_map());
    let versions: Vec<(u32, String)> = d.versions.iter().map(|v| (v.version, v.operation.clone())).collect();
    ui.horizontal(|ui| {
        ui.heading(&name);
        let mut chosen = version;
        egui::ComboBox::from_label(t("Version")).selected_text(format!("v{version}")).show_ui(ui, |ui| {
            for (v, op) in &versions {
                ui.selectable_value(&mut chosen, *v, format!("v{v} ({op})"));
            }
        });
        if chosen != version {
            app.data(DataCmd::Load { dataset: name.clone(), version: Some(chosen) });
        }
        ui.label(format!("{rows} rows"));
        ui.weak(roles.iter().map(|(r, c)| format!("{r}={c}")).collect::<Vec<_>>().join("  "));
        if ui.button(t("Roles…")).clicked()
            && let Some(d) = &app.ds
        {
            app.data_ui.mapping = Some(MappingDialog::new(&d.info));
        }
    });
    ui.horizontal(|ui| {
        for (tab, label) in [
            (DataTab::Rows, t("Rows")),
            (DataTab::Duplicates, t("Duplicates")),
            (DataTab::Pii, t("Personal data")),
            (DataTab::Tokens, t("Token lengths")),
            (DataTab::Split, t("Split")),
            (DataTab::Export, "Export"),
        ] {
            ui.selectable_value(&mut app.data_ui.tab, tab, label);
        }
    });
    ui.separator();
    match app.data_ui.tab {
        DataTab::Rows => rows_tab(app, ui),
        DataTab::Duplicates => duplicates_tab(app, ui),
        DataTab::Pii => pii_tab(app, ui),
        DataTab::Tokens => tokens_tab(app, ui),
        DataTab::Split => split_tab(app, ui),
        DataTab::Export => export_tab(app, ui),
    }
}

fn run_query(app: &mut WorkbenchApp) {
    let u = &app.data_ui;
    let q = Query {
        text: Some(u.search.clone()).filter(|s| !s.is_empty()),
        regex: u.regex,
        status: Some(u.status.clone()).filter(|s| s != "any"),
        ..Default::default()
    };
    app.data(DataCmd::Query { query: q });
}

fn rows_tab(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        let l = ui.label(t("Search"));
        let r = ui.add(egui::TextEdit::singleline(&mut app.data_ui.search).desired_width(260.0)).labelled_by(l.id);
        let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        ui.checkbox(&mut app.data_ui.regex, t("Regex"));
        let before = app.data_ui.status.clone();
        egui::ComboBox::from_label(t("Status")).selected_text(app.data_ui.status.clone()).show_ui(ui, |ui| {
            for s in ["any", "accept", "reject", "flag", "unlabelled"] {
                ui.selectable_value(&mut app.data_ui.status, s.to_string(), s);
            }
        });
        if ui.button(t("Apply")).clicked() || enter || before != app.data_ui.status {
            run_query(app);
        }
    });
    let Some(d) = app.ds.as_ref() else { return };
    ui.label(format!("{} of {} rows", d.rows.len(), d.table.height()));
    let cols: Vec<String> = d.info.columns.iter().take(4).map(|c| c.name.clone()).collect();
    let mut clicked = None;
    let width = ui.available_width();
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(width * 0.58);
            let max_h = ui.available_height() - 8.0;
            let mut tb = TableBuilder::new(ui)
                .id_salt("records_table")
                .striped(true)
                .resizable(true)
                .sense(egui::Sense::click())
                .max_scroll_height(max_h)
                .column(Column::exact(48.0))
                .column(Column::exact(64.0));
            for _ in 0..cols.len().saturating_sub(1) {
                tb = tb.column(Column::initial(180.0).clip(true).resizable(true));
            }
            tb = tb.column(Column::remainder().clip(true));
            tb.header(20.0, |mut h| {
                h.col(|ui| {
                    ui.strong(t("id"));
                });
                h.col(|ui| {
                    ui.strong(t("status"));
                });
                for c in &cols {
                    h.col(|ui| {
                        ui.strong(c.as_str());
                    });
                }
            })
            .body(|body| {
                body.rows(20.0, d.rows.len(), |mut row| {
                    let r = d.rows[row.index()];
                    row.set_selected(d.selected == Some(r));
                    let id = &d.ids[r];
                    row.col(|ui| {
                        ui.label(id.as_str());
                    });
                    row.col(|ui| {
                        let s = d.summaries.get(id).and_then(|s| s.status.clone()).unwrap_or_default();
                        ui.label(s);
                    });
                    for c in &cols {
                        row.col(|ui| {
                            let text = d.cell(r, c).replace('\n', " ");
                            ui.add(egui::Label::new(text).truncate());
                        });
                    }
                    if row.response().clicked() {
                        clicked = Some(r);
                    }
                });
            });
        });
        ui.separator();
        ui.vertical(|ui| {
            let Some(r) = d.selected else {
                ui.weak(t("Click a row to see it here."));
                return;
            };
            ui.strong(format!("Record {}", d.ids[r]));
            egui::ScrollArea::vertical().id_salt("record_detail").show(ui, |ui| {
                for (role, text) in turns(d, r) {
                    bubble(ui, &role, &text);
                }
                if let Some(l) = d.labels.get(&d.ids[r]) {
                    ui.separator();
                    for (k, v) in l {
                        ui.label(format!("{k}: {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())));
                    }
                }
            });
        });
    });
    if let Some(r) = clicked
        && let Some(d) = app.ds.as_mut()
    {
        d.selected = Some(r);
        app.label_ui.cursor = d.rows.iter().position(|&x| x == r).unwrap_or(0);
    }
}

fn duplicates_tab(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let name = app.dataset_name().unwrap_or_default();
    ui.horizontal(|ui| {
        ui.add(egui::Slider::new(&mut app.data_ui.dup_threshold, 0.5..=1.0).text(t("Similarity threshold")));
        if ui.button(t("Find duplicates")).clicked() {
            app.data(DataCmd::FindDuplicates { dataset: name.clone(), threshold: app.data_ui.dup_threshold });
        }
    });
    let Some(groups) = app.data_ui.duplicates.clone() else {
        ui.weak(t("Exact duplicates match after ignoring case and spacing; near duplicates are estimated with MinHash."));
        return;
    };
    if groups.is_empty() {
        ui.label(t("No duplicates found."));
        return;
    }
    let drop = whetstone_engine::data::curate::duplicate_rows_to_drop(&groups);
    ui.label(format!("{} groups; removing keeps the first row of each and drops {} rows (as a new version).", groups.len(), drop.len()));
    if ui.button(t("Remove duplicates")).clicked() {
        app.data(DataCmd::DropRows { dataset: name, rows: drop, operation: "dedupe".into() });
        app.data_ui.duplicates = None;
        return;
    }
    let Some(d) = app.ds.as_ref() else { return };
    let first_col = d.info.roles.prompt.clone().or_else(|| d.info.columns.first().map(|c| c.name.clone())).unwrap_or_default();
    egui::ScrollArea::vertical().id_salt("dups").show(ui, |ui| {
        for g in &groups {
            ui.group(|ui| {
                ui.strong(format!("{} · similarity {:.2}", g.kind, g.similarity));
                for (i, &r) in g.rows.iter().enumerate() {
                    let keep = if i == 0 { "keep" } else { "drop" };
                    ui.label(format!("[{}] {keep}: {}", d.ids[r], d.cell(r, &first_col)));
                }
            });
        }
    });
}

fn pii_tab(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let name = app.dataset_name().unwrap_or_default();
    ui.horizontal(|ui| {
        if ui.button(t("Scan for personal data")).clicked() {
            app.data(DataCmd::ScanPii { dataset: name.clone() });
        }
        if app.data_ui.pii.as_ref().is_some_and(|h| !h.is_empty()) && ui.button(t("Replace all with placeholders")).clicked() {
            app.data(DataCmd::RedactPii { dataset: name.clone() });
        }
    });
    let Some(hits) = app.data_ui.pii.clone() else {
        ui.weak(t("Finds emails, phone numbers, ID and account numbers, dates of birth and names, and replaces them with [EMAIL], [PHONE], … in a new version."));
        return;
    };
    ui.label(format!("{} findings", hits.len()));
    let Some(d) = app.ds.as_ref() else { return };
    egui::ScrollArea::vertical().id_salt("pii").show(ui, |ui| {
        for h in &hits {
            let cell = d.cell(h.row, &h.column);
            if h.end > cell.len() || !cell.is_char_boundary(h.start) || !cell.is_char_boundary(h.end) {
                continue;
            }
            let mut job = egui::text::LayoutJob::default();
            let normal = egui::TextFormat { color: ui.visuals().text_color(), ..Default::default() };
            let marked =
                egui::TextFormat { background: egui::Color32::from_rgb(150, 60, 40), color: egui::Color32::WHITE, ..Default::default() };
            job.append(&format!("[{}] {:?} in {}: ", h.id, h.kind, h.column), 0.0, normal.clone());
            job.append(&cell[..h.start], 0.0, normal.clone());
            job.append(&cell[h.start..h.end], 0.0, marked);
            job.append(&cell[h.end..], 0.0, normal);
            ui.label(job);
        }
    });
}

fn tokens_tab(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let name = app.dataset_name().unwrap_or_default();
    let models = app.settings.models.clone();
    if app.data_ui.token_model.is_none() {
        app.data_ui.token_model = models.first().cloned();
    }
    ui.horizontal(|ui| {
        egui::ComboBox::from_label(t("Tokenizer of"))
            .selected_text(app.data_ui.token_model.as_ref().map(|p| short_path(p)).unwrap_or_else(|| "(add a model first)".into()))
            .show_ui(ui, |ui| {
                for m in &models {
                    ui.selectable_value(&mut app.data_ui.token_model, Some(m.clone()), short_path(m));
                }
            });
        ui.add(egui::DragValue::new(&mut app.data_ui.max_seq_len).range(8..=131072).prefix(t("max_seq_len ")));
        if ui.button(t("Count tokens")).clicked()
            && let Some(m) = app.data_ui.token_model.clone()
        {
            app.data(DataCmd::TokenStats { dataset: name.clone(), model: m, max_seq_len: app.data_ui.max_seq_len });
        }
    });
    let Some(s) = &app.data_ui.token_stats else { return };
    ui.label(format!(
        "{} examples · min {} · median {} · mean {:.1} · p90 {} · p99 {} · max {} · {} over {} ({:.1} %)",
        s.count,
        s.min,
        s.p50,
        s.mean,
        s.p90,
        s.p99,
        s.max,
        s.over,
        s.max_seq_len,
        100.0 * s.share_over
    ));
    crate::gui::charts::histogram(ui, "token_hist", &s.histogram, Some(s.max_seq_len as f64));
}

fn split_tab(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let name = app.dataset_name().unwrap_or_default();
    let cols: Vec<String> = app.ds.as_ref().map(|d| d.info.columns.iter().map(|c| c.name.clone()).collect()).unwrap_or_default();
    let u = &mut app.data_ui;
    ui.horizontal(|ui| {
        ui.add(egui::DragValue::new(&mut u.split[0]).range(0.0..=1.0).speed(0.01).prefix(t("train ")));
        ui.add(egui::DragValue::new(&mut u.split[1]).range(0.0..=1.0).speed(0.01).prefix(t("validation ")));
        ui.add(egui::DragValue::new(&mut u.split[2]).range(0.0..=1.0).speed(0.01).prefix(t("test ")));
        ui.add(egui::DragValue::new(&mut u.seed).prefix(t("seed ")));
    });
    egui::ComboBox::from_label(t("Keep proportions of"))
        .selected_text(if u.stratify.is_empty() { "(nothing)".to_string() } else { u.stratify.clone() })
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut u.stratify, String::new(), "(nothing)");
            for c in &cols {
                ui.selectable_value(&mut u.stratify, c.clone(), c.as_str());
            }
        });
    let f = SplitFractions { train: u.split[0], validation: u.split[1], test: u.split[2] };
    let sum = f.train + f.validation + f.test;
    if (sum - 1.0).abs() > 1e-6 {
        ui.colored_label(ui.visuals().warn_fg_color, format!("The three shares add up to {sum:.2}; they must add up to 1."));
    }
    if ui.add_enabled((sum - 1.0).abs() <= 1e-6, egui::Button::new(t("Split dataset"))).clicked() {
        let stratify = Some(u.stratify.clone()).filter(|s| !s.is_empty());
        let seed = u.seed;
        app.data(DataCmd::Split { dataset: name, fractions: f, seed, stratify });
    }
}

fn export_tab(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let name = app.dataset_name().unwrap_or_default();
    let u = &mut app.data_ui;
    ui.horizontal(|ui| {
        let l = ui.label(t("Export to"));
        ui.add(egui::TextEdit::singleline(&mut u.export_path).hint_text(t("out.jsonl, out.parquet or out.csv")).desired_width(320.0))
            .labelled_by(l.id);
        if ui.button(t("Browse…")).clicked()
            && let Some(p) = rfd::FileDialog::new().set_file_name(format!("{name}.jsonl")).save_file()
        {
            u.export_path = p.display().to_string();
        }
    });
    egui::ComboBox::from_label(t("Shape")).selected_text(u.export_shape.clone()).show_ui(ui, |ui| {
        for s in ["raw", "trl-sft", "trl-preference", "ds-chat"] {
            ui.selectable_value(&mut u.export_shape, s.to_string(), s);
        }
    });
    if ui.button(t("Export")).clicked() && !u.export_path.trim().is_empty() {
        let (out, shape) = (std::path::PathBuf::from(u.export_path.trim()), u.export_shape.clone());
        app.data(DataCmd::Export { dataset: name, out, shape });
    }
}

pub fn short_path(p: &std::path::Path) -> String {
    let parts: Vec<_> = p.components().rev().take(2).collect();
    parts.into_iter().rev().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}
