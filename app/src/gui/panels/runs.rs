//! Runs panel: every run of the workspace with its status, loss curves of several runs
//! overlaid, the difference between two runs' job files, the provenance card, and export.

use std::collections::BTreeSet;

use crate::gui::WorkbenchApp;
use crate::gui::charts::{Series, lines};
use crate::gui::i18n::t;
use crate::gui::worker::{DataCmd, RunSummary};

#[derive(Default)]
pub struct RunsUi {
    pub runs: Vec<RunSummary>,
    pub selected: BTreeSet<String>,
    pub export_path: String,
    pub merge: bool,
}

fn method_of(r: &RunSummary) -> String {
    r.card["method"].as_str().map(str::to_string).unwrap_or_else(|| {
        r.job_toml.lines().find_map(|l| l.strip_prefix("method = ").map(|m| m.trim_matches('"').to_string())).unwrap_or_default()
    })
}

/// Lines only in `a` (−) and only in `b` (+).
pub fn diff_lines(a: &str, b: &str) -> Vec<String> {
    let la: BTreeSet<&str> = a.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let lb: BTreeSet<&str> = b.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut out: Vec<String> = la.difference(&lb).map(|l| format!("- {l}")).collect();
    out.extend(lb.difference(&la).map(|l| format!("+ {l}")));
    out
}

pub fn ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    if ui.button(t("Refresh")).clicked() {
        app.data(DataCmd::ListRuns);
    }
    if app.runs_ui.runs.is_empty() {
        ui.label(t("No runs in this workspace yet. Start one on the Train page."));
        return;
    }
    egui::Grid::new("runs_grid").num_columns(6).striped(true).show(ui, |ui| {
        for h in ["", "run", "method", "status", "steps", "last loss"] {
            ui.strong(h);
        }
        ui.end_row();
        for r in &app.runs_ui.runs {
            let mut on = app.runs_ui.selected.contains(&r.name);
            if ui.checkbox(&mut on, t("")).on_hover_text(t("Compare")).changed() {
                if on {
                    app.runs_ui.selected.insert(r.name.clone());
                } else {
                    app.runs_ui.selected.remove(&r.name);
                }
            }
            ui.label(&r.name);
            ui.label(method_of(r));
            ui.label(&r.status);
            ui.label(r.steps.last().map_or(0, |s| s.step).to_string());
            ui.label(r.steps.last().map_or("-".into(), |s| format!("{:.4}", s.loss)));
            ui.end_row();
        }
    });
    let chosen: Vec<RunSummary> = app.runs_ui.runs.iter().filter(|r| app.runs_ui.selected.contains(&r.name)).cloned().collect();
    if chosen.is_empty() {
        ui.weak(t("Tick runs to compare their curves, see their provenance and export them."));
        return;
    }
    ui.separator();
    egui::ScrollArea::vertical().id_salt("runs_detail").show(ui, |ui| {
        if chosen.len() >= 2 {
            let series: Vec<Series> = chosen
                .iter()
                .map(|r| Series {
                    name: r.name.clone(),
                    points: r.steps.iter().map(|s| [s.step as f64, s.loss]).filter(|p| p[1].is_finite()).collect(),
                })
                .collect();
            ui.strong(t("Training loss"));
            lines(ui, "runs_overlay", "loss", &series, app.train_ui.smoothing, 220.0);
        }
        if chosen.len() == 2 {
            ui.strong(format!("Job differences: {} (−) vs {} (+)", chosen[0].name, chosen[1].name));
            for l in diff_lines(&chosen[0].job_toml, &chosen[1].job_toml) {
                ui.monospace(l);
            }
        }
        if chosen.len() == 1 {
            let r = &chosen[0];
            ui.horizontal(|ui| {
                let l = ui.label(t("Export to folder"));
                ui.add(egui::TextEdit::singleline(&mut app.runs_ui.export_path).desired_width(300.0)).labelled_by(l.id);
                if ui.button(t("Browse…")).clicked()
                    && let Some(p) = rfd::FileDialog::new().pick_folder()
                {
                    app.runs_ui.export_path = p.display().to_string();
                }
                ui.checkbox(&mut app.runs_ui.merge, t("Merge LoRA adapter into the model"));
                if ui.button(t("Export model")).clicked() && !app.runs_ui.export_path.trim().is_empty() {
                    let out = std::path::PathBuf::from(app.runs_ui.export_path.trim());
                    app.data(DataCmd::ExportRun { run: r.dir.clone(), out, merge: app.runs_ui.merge });
                }
            });
            egui::CollapsingHeader::new(t("Provenance (run.json)")).default_open(false).show(ui, |ui| {
                ui.monospace(serde_json::to_string_pretty(&r.card).unwrap_or_default());
            });
            crate::gui::panels::jobs::step_charts(ui, &format!("run_{}", r.name), &r.steps, &r.evals, app.train_ui.smoothing);
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn diff_shows_changed_lines_only() {
        let d = super::diff_lines("a = 1\nb = 2\n", "a = 1\nb = 3\n");
        assert_eq!(d, vec!["- b = 2", "+ b = 3"]);
    }
}
