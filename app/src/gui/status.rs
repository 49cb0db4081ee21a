//! The status bar: the device (of the running job, or the one chosen in the Train form), the
//! process's memory, the running job's progress and ETA, background work, the last message.

use std::time::{Duration, Instant};

use super::WorkbenchApp;
use super::i18n::t;
use super::panels::jobs::{eta, fmt_secs};

impl WorkbenchApp {
    fn memory_mb(&self) -> Option<f64> {
        let (at, mb) = self.memory.get();
        if at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return mb;
        }
        let mb = resident_mb();
        self.memory.set((Some(Instant::now()), mb));
        mb
    }

    pub(super) fn status_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            // The device the running job really runs on (from its `Started` event); when idle, the
            // one the Train form would use.
            let running = self.train_ui.current.as_ref().filter(|j| j.is_running());
            match running {
                Some(j) if !j.device.is_empty() => ui.label(format!("{} {}", t("Running on"), j.device)),
                Some(_) => ui.label(t("Starting the job…")),
                None if self.train_ui.draft.device == "cpu" => ui.label(t("Device: CPU")),
                None => ui.label(format!("{} {}", t("Device:"), self.train_ui.draft.device)),
            };
            // A GPU job's device memory, as its allocator held it after the last step.
            if let Some(j) = running
                && let Some(used) = j.steps.last().and_then(|s| s.device_memory_bytes)
            {
                ui.separator();
                ui.label(gpu_memory_text(used, j.device_capacity));
            }
            if let Some(mb) = self.memory_mb() {
                ui.separator();
                ui.label(format!("Memory: {mb:.0} MB"));
            }
            ui.separator();
            if let Some(j) = &self.train_ui.current {
                let (done, total) = (j.steps.last().map_or(0, |s| s.step), j.total_steps.max(1));
                let eta = eta(j);
                ui.add(
                    egui::ProgressBar::new(done as f32 / total as f32).desired_width(180.0).text(format!("{} {done}/{total}", j.method)),
                );
                ui.label(eta);
            }
            let waiting = self.train_ui.queue.pending().len();
            if waiting > 0 {
                ui.label(format!("+{waiting} {}", t("waiting")));
            }
            for b in self.busy.values() {
                let secs = b.since.elapsed().as_secs();
                if b.total > 0 {
                    ui.add(
                        egui::ProgressBar::new(b.done as f32 / b.total as f32)
                            .desired_width(180.0)
                            .text(format!("{} {}/{}", b.what, b.done, b.total)),
                    );
                    if b.done > 0 {
                        let left = b.since.elapsed().as_secs_f64() / b.done as f64 * (b.total - b.done) as f64;
                        ui.label(format!("ETA {}", fmt_secs(left)));
                    }
                } else {
                    ui.label(format!("{}… {secs} s", b.what));
                }
            }
            if self.train_ui.current.is_none() && self.busy.is_empty() {
                ui.weak(t("Ready"));
            }
            if let Some(l) = self.log.last() {
                ui.separator();
                let text =
                    if l.error { egui::RichText::new(&l.text).color(ui.visuals().error_fg_color) } else { egui::RichText::new(&l.text) };
                ui.add(egui::Label::new(text).truncate());
            }
        });
    }
}

/// `GPU memory: 1.2 / 24.0 GB` (or without the capacity when the runtime gives none).
pub(super) fn gpu_memory_text(used: u64, capacity: Option<u64>) -> String {
    match capacity {
        Some(c) => format!("{} {:.1} / {:.1} GB", t("GPU memory"), used as f64 / 1e9, c as f64 / 1e9),
        None => format!("{} {:.1} GB", t("GPU memory"), used as f64 / 1e9),
    }
}

/// Resident memory of this process (Linux), for the status bar.
fn resident_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / 1e6)
}
