//! The menu bar, keyboard shortcuts and the shortcuts window of the workbench.

use super::i18n::{self, Lang, t};
use super::worker::DataCmd;
use super::{Page, WorkbenchApp, default_tree};

const UNDO: egui::KeyboardShortcut = egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, egui::Key::Z);
const REDO: egui::KeyboardShortcut = egui::KeyboardShortcut::new(egui::Modifiers::COMMAND.plus(egui::Modifiers::SHIFT), egui::Key::Z);
const OPEN: egui::KeyboardShortcut = egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, egui::Key::O);
const IMPORT: egui::KeyboardShortcut = egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, egui::Key::I);
const HELP: egui::KeyboardShortcut = egui::KeyboardShortcut::new(egui::Modifiers::NONE, egui::Key::F1);

impl WorkbenchApp {
    pub(super) fn shortcuts(&mut self, ui: &mut egui::Ui) {
        // Inside a text field, Ctrl+Z belongs to the text field.
        let typing = ui.ctx().text_edit_focused();
        if !typing && ui.input_mut(|i| i.consume_shortcut(&REDO)) {
            self.redo();
        }
        if !typing && ui.input_mut(|i| i.consume_shortcut(&UNDO)) {
            self.undo();
        }
        if ui.input_mut(|i| i.consume_shortcut(&HELP)) {
            self.show_help = !self.show_help;
        }
        if ui.input_mut(|i| i.consume_shortcut(&OPEN)) {
            self.pick_workspace();
        }
        if ui.input_mut(|i| i.consume_shortcut(&IMPORT)) {
            self.pick_import();
        }
        for (n, key) in
            [egui::Key::Num1, egui::Key::Num2, egui::Key::Num3, egui::Key::Num4, egui::Key::Num5, egui::Key::Num6].into_iter().enumerate()
        {
            if ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, key)) {
                self.go_to(Page::ALL[n]);
            }
        }
    }

    pub fn pick_workspace(&mut self) {
        if let Some(p) = rfd::FileDialog::new().set_title("Open or create a workspace folder").pick_folder() {
            if p.join("whetstone.toml").exists() {
                self.data(DataCmd::Open(p));
            } else {
                self.data(DataCmd::Create(p));
            }
        }
    }

    pub fn pick_import(&mut self) {
        if let Some(p) =
            rfd::FileDialog::new().add_filter("Data", &["csv", "tsv", "json", "jsonl", "parquet"]).set_title("Import a dataset").pick_file()
        {
            self.data(DataCmd::Import { path: p, name: None });
        }
    }

    pub(super) fn menu(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button(t("File"), |ui| {
                if ui.add(egui::Button::new(t("Open workspace…")).shortcut_text(ui.ctx().format_shortcut(&OPEN))).clicked() {
                    ui.close();
                    self.pick_workspace();
                }
                if ui.button(t("New workspace…")).clicked() {
                    ui.close();
                    self.pick_workspace();
                }
                if ui.add(egui::Button::new(t("Import dataset…")).shortcut_text(ui.ctx().format_shortcut(&IMPORT))).clicked() {
                    ui.close();
                    self.pick_import();
                }
                ui.separator();
                if ui.button(t("Quit")).clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button(t("Edit"), |ui| {
                if ui.add(egui::Button::new(t("Undo")).shortcut_text(ui.ctx().format_shortcut(&UNDO))).clicked() {
                    ui.close();
                    self.undo();
                }
                if ui.add(egui::Button::new(t("Redo")).shortcut_text(ui.ctx().format_shortcut(&REDO))).clicked() {
                    ui.close();
                    self.redo();
                }
            });
            ui.menu_button(t("View"), |ui| {
                if ui.radio(self.settings.dark, t("Dark theme")).clicked() {
                    self.settings.dark = true;
                    ui.ctx().set_theme(egui::Theme::Dark);
                }
                if ui.radio(!self.settings.dark, t("Light theme")).clicked() {
                    self.settings.dark = false;
                    ui.ctx().set_theme(egui::Theme::Light);
                }
                ui.separator();
                if ui.radio(self.settings.lang == Lang::En, "English").clicked() {
                    self.settings.lang = Lang::En;
                    i18n::set_lang(Lang::En);
                }
                if ui.radio(self.settings.lang == Lang::Zh, "简体中文").clicked() {
                    self.settings.lang = Lang::Zh;
                    i18n::set_lang(Lang::Zh);
                }
                ui.separator();
                if ui.button(t("Reset layout")).clicked() {
                    self.tree = default_tree();
                    ui.close();
                }
            });
            ui.menu_button(t("Help"), |ui| {
                if ui.add(egui::Button::new(t("Keyboard shortcuts")).shortcut_text("F1")).clicked() {
                    self.show_help = true;
                    ui.close();
                }
            });
        });
    }

    pub(super) fn help_window(&mut self, ui: &mut egui::Ui) {
        let mut open = self.show_help;
        egui::Window::new(t("Keyboard shortcuts")).open(&mut open).resizable(false).collapsible(false).show(ui.ctx(), |ui| {
            egui::Grid::new("shortcuts").num_columns(2).striped(true).show(ui, |ui| {
                for (k, what) in [
                    ("Ctrl+O", "Open or create a workspace"),
                    ("Ctrl+I", "Import a dataset (or drop files on the window)"),
                    ("Ctrl+Z / Ctrl+Shift+Z", "Undo / redo the last label"),
                    ("Ctrl+1 … Ctrl+6", "Data, Label, Models, Train, Runs, Evaluate"),
                    ("F1", "This list"),
                    ("Label page: A / R / F", "Accept / reject / flag"),
                    ("Label page: 1 … 5", "Rate"),
                    ("Label page: E", "Edit the response"),
                    ("Label page: J / K or arrows", "Next / previous record"),
                    ("Pairs and blind A/B: A / B / T / X", "A better / B better / tie / both bad"),
                ] {
                    ui.monospace(k);
                    ui.label(what);
                    ui.end_row();
                }
            });
        });
        self.show_help = open;
    }
}
