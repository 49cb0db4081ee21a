//! The workbench GUI (eframe/egui). Panels read the state kept here and send commands to the
//! background threads in `worker.rs`; training jobs run on the engine's `JobQueue` and report
//! through its event channel. Nothing on the UI thread touches a tensor.

pub mod charts;
pub mod demo;
pub mod fonts;
pub mod i18n;
mod menu;
pub mod panels;
mod status;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use whetstone_engine::data::curate::LabelSummary;
use whetstone_engine::data::{Table, VersionInfo};

use i18n::{Lang, t};
use worker::{DataCmd, ModelCmd, Reply, Workers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Page {
    #[default]
    Data,
    Label,
    Models,
    Train,
    Runs,
    Evaluate,
}

impl Page {
    pub const ALL: [Page; 6] = [Page::Data, Page::Label, Page::Models, Page::Train, Page::Runs, Page::Evaluate];
    pub fn title(self) -> &'static str {
        match self {
            Page::Data => t("Data"),
            Page::Label => t("Label"),
            Page::Models => t("Models"),
            Page::Train => t("Train"),
            Page::Runs => t("Runs"),
            Page::Evaluate => t("Evaluate"),
        }
    }
}

/// Dockable panes of the central area (egui_tiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pane {
    WorkArea,
    Activity,
}

/// What the workbench remembers between sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub workspace: Option<PathBuf>,
    pub dark: bool,
    pub lang: Lang,
    pub annotator: String,
    pub models: Vec<PathBuf>,
    pub page: Page,
    pub smoothing: f32,
    pub tree: Option<egui_tiles::Tree<Pane>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            workspace: None,
            dark: true,
            lang: Lang::En,
            annotator: "me".into(),
            models: Vec::new(),
            page: Page::Data,
            smoothing: 0.6,
            tree: None,
        }
    }
}

/// How the app starts: which workspace to open, or where to create the demo one.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub workspace: Option<PathBuf>,
    /// Where the demo workspace goes when no workspace is known (default: the user data folder).
    pub demo_dir: Option<PathBuf>,
}

pub struct WorkspaceView {
    pub root: PathBuf,
    pub name: String,
    pub datasets: Vec<VersionInfo>,
}

pub struct DatasetView {
    pub info: VersionInfo,
    pub versions: Vec<VersionInfo>,
    pub table: Arc<Table>,
    pub ids: Vec<String>,
    /// record → kind → value (latest across annotators)
    pub labels: HashMap<String, BTreeMap<String, Value>>,
    pub summaries: HashMap<String, LabelSummary>,
    pub tags: Vec<String>,
    /// Rows shown (after search/filter), indices into `table`.
    pub rows: Vec<usize>,
    pub selected: Option<usize>,
}

impl DatasetView {
    pub fn cell(&self, row: usize, col: &str) -> String {
        match self.table.value(row, col) {
            Ok(Value::String(s)) => s,
            Ok(Value::Null) | Err(_) => String::new(),
            Ok(v) => v.to_string(),
        }
    }
}

pub struct LogLine {
    pub at: Instant,
    pub text: String,
    pub error: bool,
}

pub struct Busy {
    pub what: String,
    pub done: usize,
    pub total: usize,
    pub since: Instant,
}

/// Frame times, to check the UI thread never waits on engine work.
#[derive(Debug, Default, Clone)]
pub struct FrameStats {
    pub frames: usize,
    pub frames_while_job: usize,
    pub max_ms_while_job: f64,
}

pub struct WorkbenchApp {
    pub settings: Settings,
    workers: Workers,
    pub ws: Option<WorkspaceView>,
    pub ds: Option<DatasetView>,
    pub data_ui: panels::data::DataUi,
    pub label_ui: panels::labelling::LabelUi,
    pub models_ui: panels::models::ModelsUi,
    pub train_ui: panels::train::TrainUi,
    pub runs_ui: panels::runs::RunsUi,
    pub eval_ui: panels::evaluate::EvalUi,
    /// Long work in progress, per background thread.
    pub busy: BTreeMap<worker::Source, Busy>,
    pub log: Vec<LogLine>,
    pub show_help: bool,
    pub frame_stats: FrameStats,
    /// Resident memory, read at most once a second.
    memory: std::cell::Cell<(Option<Instant>, Option<f64>)>,
    tree: egui_tiles::Tree<Pane>,
}

fn default_tree() -> egui_tiles::Tree<Pane> {
    let mut tiles = egui_tiles::Tiles::default();
    let work = tiles.insert_pane(Pane::WorkArea);
    let activity = tiles.insert_pane(Pane::Activity);
    let top = tiles.insert_tab_tile(vec![work]);
    let bottom = tiles.insert_tab_tile(vec![activity]);
    let root = tiles.insert_vertical_tile(vec![top, bottom]);
    if let Some(egui_tiles::Tile::Container(egui_tiles::Container::Linear(lin))) = tiles.get_mut(root) {
        lin.shares.set_share(top, 5.0);
        lin.shares.set_share(bottom, 1.0);
    }
    egui_tiles::Tree::new(egui::Id::unique("workbench_tree"), root, tiles)
}

/// Where the demo workspace goes by default.
pub fn default_demo_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("whetstone/demo-workspace")
}

impl WorkbenchApp {
    pub fn new(cc: &eframe::CreationContext<'_>, start: StartOptions) -> Self {
        fonts::install(&cc.egui_ctx);
        let settings: Settings = cc.storage.and_then(|s| eframe::get_value(s, eframe::APP_KEY)).unwrap_or_default();
        Self::with_settings(&cc.egui_ctx, settings, start)
    }

    pub fn with_settings(ctx: &egui::Context, mut settings: Settings, start: StartOptions) -> Self {
        i18n::set_lang(settings.lang);
        ctx.set_theme(if settings.dark { egui::Theme::Dark } else { egui::Theme::Light });
        let workers = worker::start(ctx.clone());
        let tree = settings.tree.take().unwrap_or_else(default_tree);
        let mut app = Self {
            workers,
            ws: None,
            ds: None,
            data_ui: Default::default(),
            label_ui: Default::default(),
            models_ui: Default::default(),
            train_ui: Default::default(),
            runs_ui: Default::default(),
            eval_ui: Default::default(),
            busy: BTreeMap::new(),
            log: Vec::new(),
            show_help: false,
            frame_stats: FrameStats::default(),
            memory: std::cell::Cell::new((None, None)),
            tree,
            settings,
        };
        let target = start.workspace.clone().or_else(|| app.settings.workspace.clone().filter(|p| p.join("whetstone.toml").exists()));
        match target {
            Some(p) if p.join("whetstone.toml").exists() => app.data(DataCmd::Open(p)),
            Some(p) => app.data(DataCmd::Create(p)),
            None => {
                let demo = start.demo_dir.unwrap_or_else(default_demo_dir);
                if demo.join("whetstone.toml").exists() {
                    app.data(DataCmd::Open(demo));
                } else {
                    app.data(DataCmd::CreateDemo(demo));
                }
            }
        }
        app
    }

    pub fn data(&mut self, cmd: DataCmd) {
        let _ = self.workers.data.send(cmd);
    }

    pub fn model(&mut self, cmd: ModelCmd) {
        let _ = self.workers.model.send(cmd);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.log.push(LogLine { at: Instant::now(), text: text.into(), error: false });
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.log.push(LogLine { at: Instant::now(), text: text.into(), error: true });
    }

    pub fn dataset_name(&self) -> Option<String> {
        self.ds.as_ref().map(|d| d.info.dataset.clone())
    }

    /// Open the latest version of a dataset.
    pub fn open_dataset(&mut self, name: &str) {
        self.data(DataCmd::Load { dataset: name.to_string(), version: None });
    }

    pub fn undo(&mut self) {
        if let Some(d) = self.dataset_name() {
            let a = self.settings.annotator.clone();
            self.data(DataCmd::Undo { dataset: d, annotator: a });
        }
    }

    pub fn redo(&mut self) {
        if let Some(d) = self.dataset_name() {
            let a = self.settings.annotator.clone();
            self.data(DataCmd::Redo { dataset: d, annotator: a });
        }
    }

    /// Set a label now in the view (the store confirms it a moment later).
    pub fn set_label(&mut self, record: &str, kind: &str, value: Option<Value>) {
        let Some(d) = self.ds.as_mut() else { return };
        let entry = d.labels.entry(record.to_string()).or_default();
        match &value {
            Some(v) => {
                entry.insert(kind.to_string(), v.clone());
            }
            None => {
                entry.remove(kind);
            }
        }
        let cmd = DataCmd::SetLabel {
            dataset: d.info.dataset.clone(),
            record: record.to_string(),
            annotator: self.settings.annotator.clone(),
            kind: kind.to_string(),
            value,
        };
        self.data(cmd);
    }

    fn handle_reply(&mut self, r: Reply) {
        match r {
            Reply::Workspace { root, name, datasets, default_model, opened } => {
                self.settings.workspace = Some(root.clone());
                if let Some(m) = default_model
                    && !self.settings.models.contains(&m)
                {
                    self.settings.models.push(m);
                }
                let first = datasets.first().map(|d| d.dataset.clone());
                let keep = self.ds.as_ref().map(|d| d.info.dataset.clone()).filter(|n| datasets.iter().any(|d| &d.dataset == n));
                self.ws = Some(WorkspaceView { root, name, datasets });
                if opened {
                    // Just (re)opened: reload the dataset on screen (or the first one), so the
                    // view never points into another workspace or a closed one.
                    self.ds = None;
                    self.eval_ui.current = None;
                    self.eval_ui.listings.clear();
                    if let Some(f) = keep.or(first) {
                        self.open_dataset(&f);
                    }
                } else if keep.is_none() {
                    self.ds = None;
                    if let Some(f) = first {
                        self.open_dataset(&f);
                    }
                }
                self.data(DataCmd::ListRuns);
            }
            Reply::Datasets(d) => {
                if let Some(w) = self.ws.as_mut() {
                    w.datasets = d;
                }
            }
            Reply::Dataset { info, versions, table, ids, labels, summaries, tags } => {
                let rows = (0..table.height()).collect();
                let same = self.ds.as_ref().is_some_and(|d| d.info.dataset == info.dataset);
                // Keep the selection by record id, if that record is still in this version.
                let selected_id = self.ds.as_ref().filter(|_| same).and_then(|d| d.selected.and_then(|r| d.ids.get(r).cloned()));
                let selected = selected_id.and_then(|id| ids.iter().position(|x| *x == id));
                self.ds = Some(DatasetView { info, versions, table, ids, labels, summaries, tags, rows, selected });
                // Review lists and statistics belong to the version they were computed on.
                self.data_ui.duplicates = None;
                self.data_ui.pii = None;
                self.data_ui.token_stats = None;
                if !same {
                    self.label_ui.cursor = 0;
                    self.label_ui.pairs.clear();
                }
            }
            Reply::Imported(v) => {
                self.data_ui.mapping = Some(panels::data::MappingDialog::new(&v));
            }
            Reply::Rows(rows) => {
                if let Some(d) = self.ds.as_mut() {
                    d.rows = rows;
                }
            }
            Reply::RecordLabels { record, labels } => {
                if let Some(d) = self.ds.as_mut() {
                    let s = d.summaries.entry(record.clone()).or_default();
                    s.status = labels.get("status").and_then(|v| v.as_str()).map(str::to_string);
                    s.rating = labels.get("rating").and_then(|v| v.as_u64()).map(|r| r as u8);
                    s.tags = labels
                        .get("tags")
                        .and_then(|v| v.as_array())
                        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    for t in s.tags.clone() {
                        if !d.tags.contains(&t) {
                            d.tags.push(t);
                        }
                    }
                    d.labels.insert(record, labels);
                }
            }
            Reply::Journal(e) => match e {
                Some(e) => self.info(format!("{} {} on record {}", e.action, e.kind, e.record)),
                None => self.info("Nothing to undo or redo"),
            },
            Reply::Duplicates(g) => self.data_ui.duplicates = Some(g),
            Reply::Pii(h) => self.data_ui.pii = Some(h),
            Reply::TokenStats(s) => self.data_ui.token_stats = Some(s),
            Reply::Pairs(p) => {
                self.label_ui.pairs = p;
                self.label_ui.pair_cursor = 0;
            }
            Reply::Runs(r) => self.runs_ui.runs = r,
            Reply::Evals(l) => self.eval_ui.listings = l,
            Reply::Eval(r, votes, ratings, from_run) => {
                let annotator = self.settings.annotator.clone();
                self.eval_ui.queue = whetstone_engine::eval::ab::ab_queue(&r, &votes, &annotator, 0);
                self.eval_ui.cursor = 0;
                if from_run {
                    self.eval_ui.running = false;
                    self.eval_ui.tab = panels::evaluate::EvalTab::Results;
                }
                self.eval_ui.current = Some(std::sync::Arc::from(r));
                self.eval_ui.votes = votes;
                self.eval_ui.ratings = Some(*ratings);
                self.data(DataCmd::ListEvals);
            }
            Reply::Votes(votes, ratings) => {
                self.eval_ui.votes = votes;
                self.eval_ui.ratings = Some(*ratings);
            }
            Reply::EvalFailed(e) => {
                self.eval_ui.running = false;
                self.error(e);
            }
            Reply::Estimate(spec, r) => self.train_ui.set_estimate(&spec, r),
            Reply::Devices(d) => self.train_ui.devices = Some(d),
            Reply::Suites(s) => self.train_ui.suites = s,
            Reply::JobFile(run, r) => match r {
                Ok(spec) => panels::jobs::submit(self, *spec, Some(run)),
                Err(e) => self.error(e),
            },
            Reply::ModelInfo(p, r) => {
                if let Err(e) = &r {
                    self.error(e.clone());
                }
                self.models_ui.infos.insert(p, r);
            }
            Reply::ChatDelta(s) => {
                if let Some(last) = self.models_ui.chat.last_mut() {
                    last.1.push_str(&s);
                }
            }
            Reply::ChatDone(r) => {
                self.models_ui.generating = None;
                match r {
                    Ok(s) => self.models_ui.last_speed = s,
                    Err(e) => self.error(e),
                }
            }
            Reply::Progress { source, what, done, total } => {
                let since = self.busy.get(&source).filter(|b| b.what == what).map_or_else(Instant::now, |b| b.since);
                self.busy.insert(source, Busy { what, done, total, since });
            }
            Reply::ProgressDone(source) => {
                self.busy.remove(&source);
            }
            Reply::Info(s) => self.info(s),
            Reply::Error(s) => self.error(s),
        }
    }

    /// Switch page, refreshing the lists that page shows.
    pub fn go_to(&mut self, p: Page) {
        self.settings.page = p;
        if p == Page::Runs || p == Page::Evaluate || p == Page::Train {
            self.data(DataCmd::ListRuns);
        }
        if p == Page::Evaluate {
            self.data(DataCmd::ListEvals);
        }
    }

    fn navigator(&mut self, ui: &mut egui::Ui) {
        ui.add_space(6.0);
        match &self.ws {
            Some(w) => {
                ui.strong(&w.name).on_hover_text(w.root.display().to_string());
            }
            None => {
                ui.weak(t("No workspace open"));
            }
        }
        ui.separator();
        for (i, p) in Page::ALL.into_iter().enumerate() {
            let b = egui::Button::selectable(self.settings.page == p, p.title()).min_size(egui::vec2(ui.available_width(), 28.0));
            if ui.add(b).on_hover_text(format!("Ctrl+{}", i + 1)).clicked() {
                self.go_to(p);
            }
        }
        ui.separator();
        ui.label(t("Datasets"));
        let names: Vec<(String, u32, usize)> =
            self.ws.as_ref().map(|w| w.datasets.iter().map(|d| (d.dataset.clone(), d.version, d.rows)).collect()).unwrap_or_default();
        let current = self.dataset_name();
        egui::ScrollArea::vertical().id_salt("nav_datasets").show(ui, |ui| {
            for (n, v, rows) in names {
                let r = ui.add(
                    egui::Button::selectable(current.as_deref() == Some(&n), format!("{n}  v{v}"))
                        .min_size(egui::vec2(ui.available_width(), 22.0)),
                );
                if r.on_hover_text(format!("{rows} rows")).clicked() {
                    self.open_dataset(&n);
                }
            }
        });
    }

    fn activity(&mut self, ui: &mut egui::Ui) {
        egui::ScrollArea::vertical().id_salt("activity_log").stick_to_bottom(true).auto_shrink([false; 2]).show(ui, |ui| {
            let skip = self.log.len().saturating_sub(200);
            for (n, l) in self.log.iter().enumerate().skip(skip) {
                let text = format!("{:>3}. {}", n + 1, l.text);
                if l.error {
                    ui.colored_label(ui.visuals().error_fg_color, text);
                } else {
                    ui.label(text);
                }
            }
        });
    }

    fn page(&mut self, ui: &mut egui::Ui) {
        match self.settings.page {
            Page::Data => panels::data::ui(self, ui),
            Page::Label => panels::labelling::ui(self, ui),
            Page::Models => panels::models::ui(self, ui),
            Page::Train => panels::train::ui(self, ui),
            Page::Runs => panels::runs::ui(self, ui),
            Page::Evaluate => panels::evaluate::ui(self, ui),
        }
    }
}

struct TreeBehavior<'a> {
    app: &'a mut WorkbenchApp,
}

impl egui_tiles::Behavior<Pane> for TreeBehavior<'_> {
    fn tab_title_for_pane(&mut self, pane: &Pane) -> egui::WidgetText {
        match pane {
            Pane::WorkArea => t("Work area").into(),
            Pane::Activity => t("Activity").into(),
        }
    }

    fn pane_ui(&mut self, ui: &mut egui::Ui, _tile: egui_tiles::TileId, pane: &mut Pane) -> egui_tiles::UiResponse {
        egui::Frame::new().inner_margin(8.0).show(ui, |ui| match pane {
            Pane::WorkArea => self.app.page(ui),
            Pane::Activity => self.app.activity(ui),
        });
        egui_tiles::UiResponse::None
    }

    fn simplification_options(&self) -> egui_tiles::SimplificationOptions {
        egui_tiles::SimplificationOptions { all_panes_must_have_tabs: true, ..Default::default() }
    }
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let started = Instant::now();
        while let Ok(r) = self.workers.replies.try_recv() {
            self.handle_reply(r);
        }
        panels::jobs::poll_jobs(self);
        let dropped: Vec<PathBuf> = ui.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        for p in dropped {
            self.data(DataCmd::Import { path: p, name: None });
        }
        self.shortcuts(ui);

        egui::Panel::top("menu_bar").show(ui, |ui| self.menu(ui));
        egui::Panel::bottom("status_bar").show(ui, |ui| self.status_bar(ui));
        egui::Panel::left("navigator").resizable(true).default_size(200.0).show(ui, |ui| self.navigator(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            let mut tree = std::mem::replace(&mut self.tree, egui_tiles::Tree::empty(egui::Id::unique("placeholder_tree")));
            tree.ui(&mut TreeBehavior { app: self }, ui);
            self.tree = tree;
        });
        if self.show_help {
            self.help_window(ui);
        }
        if let Some(mut m) = self.data_ui.mapping.take()
            && panels::data::mapping_dialog(self, ui, &mut m)
        {
            self.data_ui.mapping = Some(m);
        }
        let job_running = self.train_ui.current.as_ref().is_some_and(|j| j.is_running());
        // Queue events arrive without a repaint request: look for them while jobs are queued.
        let queued = self.train_ui.queue.running().is_some() || !self.train_ui.submitted.is_empty();
        if job_running || queued || !self.busy.is_empty() || self.models_ui.generating.is_some() || self.eval_ui.running {
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.frame_stats.frames += 1;
        if job_running {
            self.frame_stats.frames_while_job += 1;
            self.frame_stats.max_ms_while_job = self.frame_stats.max_ms_while_job.max(ms);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        let mut s = self.settings.clone();
        s.tree = Some(self.tree.clone());
        eframe::set_value(storage, eframe::APP_KEY, &s);
    }
}

impl Drop for WorkbenchApp {
    fn drop(&mut self) {
        // The queue's worker stops at the running job's next step (after a checkpoint).
        self.train_ui.queue.cancel_all();
    }
}

/// Open the workbench window.
pub fn run(start: StartOptions) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Whetstone")
            .with_app_id("whetstone")
            .with_inner_size([1360.0, 860.0])
            .with_min_inner_size([800.0, 500.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native("Whetstone", options, Box::new(move |cc| Ok(Box::new(WorkbenchApp::new(cc, start)))))
        .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
