//! The GUI's two background threads. Panels send `DataCmd`s (workspace, datasets, labels,
//! curation, runs and suites, job files to resume) and `ModelCmd`s (load, generate, draft,
//! evaluate, memory estimates, the device list); the threads call the engine and answer with
//! `Reply`s, then ask egui to repaint. Nothing here runs on the UI thread.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use whetstone_engine::data::curate::{self, DupGroup, LabelSummary, PiiHit, Query, SplitFractions, TokenStats};
use whetstone_engine::data::labels::AuditEntry;
use whetstone_engine::data::{Table, VersionInfo, Workspace};
use whetstone_engine::device::DeviceInfo;
use whetstone_engine::eval::ab::{Vote, vote_ratings};
use whetstone_engine::eval::ratings::Ratings;
use whetstone_engine::eval::score::EvalResult;
use whetstone_engine::eval::spec::SuiteSpec;
use whetstone_engine::eval::store::EvalListing;
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::model::{LoadedModel, ModelInfo, Packing};
use whetstone_engine::runs::{EvalRecord, JobEvent, StepRecord, read_metrics};
use whetstone_engine::train::JobSpec;

pub enum DataCmd {
    Open(PathBuf),
    /// Create a workspace filled with the demo data and model (first start).
    CreateDemo(PathBuf),
    Create(PathBuf),
    Import {
        path: PathBuf,
        name: Option<String>,
    },
    Remap {
        dataset: String,
        map: Vec<(String, String)>,
    },
    Load {
        dataset: String,
        version: Option<u32>,
    },
    Query {
        query: Query,
    },
    SetLabel {
        dataset: String,
        record: String,
        annotator: String,
        kind: String,
        value: Option<Value>,
    },
    Undo {
        dataset: String,
        annotator: String,
    },
    Redo {
        dataset: String,
        annotator: String,
    },
    Split {
        dataset: String,
        fractions: SplitFractions,
        seed: u64,
        stratify: Option<String>,
    },
    FindDuplicates {
        dataset: String,
        threshold: f64,
    },
    DropRows {
        dataset: String,
        rows: Vec<usize>,
        operation: String,
    },
    ScanPii {
        dataset: String,
    },
    RedactPii {
        dataset: String,
    },
    TokenStats {
        dataset: String,
        model: PathBuf,
        max_seq_len: usize,
    },
    CommitLabels {
        dataset: String,
    },
    CommitPreferences {
        dataset: String,
        annotator: String,
    },
    PairQueue {
        dataset: String,
        annotator: String,
    },
    Export {
        dataset: String,
        out: PathBuf,
        shape: String,
    },
    /// The runs (and the saved evaluation suites) of the workspace.
    ListRuns,
    /// Read `<run>/job.toml` to resume the run.
    ReadJob(PathBuf),
    ExportRun {
        run: PathBuf,
        out: PathBuf,
        merge: bool,
    },
    ListEvals,
    LoadEval {
        id: String,
    },
    Vote {
        eval_id: String,
        item: String,
        model_a: String,
        model_b: String,
        verdict: String,
        annotator: String,
    },
    UndoVote {
        eval_id: String,
        annotator: String,
    },
    VotesToPreferences {
        eval_id: String,
    },
    EvalReport {
        id: String,
        out: PathBuf,
    },
    SaveSuite {
        spec: Box<SuiteSpec>,
        path: PathBuf,
    },
}

pub enum ModelCmd {
    Info(PathBuf),
    Generate {
        model: PathBuf,
        prompt: String,
        opts: GenerateOptions,
        cancel: Arc<AtomicBool>,
    },
    Draft {
        workspace: PathBuf,
        dataset: String,
        model: PathBuf,
        k: usize,
        limit: Option<usize>,
        opts: GenerateOptions,
    },
    RunEval {
        spec: Box<SuiteSpec>,
        workspace: PathBuf,
    },
    /// The engine's memory estimate of a Train form draft.
    Estimate(Box<JobSpec>),
    /// The devices this build can use (enumerating wgpu adapters is slow).
    ListDevices,
}

/// `train::preflight::estimate` of a draft (what the runner checks), and the model's size.
fn estimate(spec: &JobSpec) -> Result<(String, usize)> {
    let cfg = whetstone_engine::runs::base_config(&spec.model)?;
    let m = whetstone_engine::train::preflight::estimate(spec, &cfg)?;
    Ok((format!("{} ({})", fmt_bytes(m.total_bytes), m.describe()), cfg.num_params()))
}

/// Bytes as the engine's `MemoryEstimate::describe` writes them.
pub fn fmt_bytes(b: usize) -> String {
    if b >= 1_000_000_000 { format!("{:.2} GB", b as f64 / 1e9) } else { format!("{:.0} MB", b as f64 / 1e6) }
}

/// A pair waiting for a verdict, with its texts.
#[derive(Debug, Clone)]
pub struct PairItem {
    pub record: String,
    pub prompt: String,
    pub a: String,
    pub b: String,
    pub a_text: String,
    pub b_text: String,
}

/// A finished or running run folder, as the Runs panel lists it.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub name: String,
    pub card: Value,
    pub job_toml: String,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub status: String,
}

pub enum Reply {
    /// `opened`: the workspace was just opened or created (not merely changed).
    Workspace {
        root: PathBuf,
        name: String,
        datasets: Vec<VersionInfo>,
        default_model: Option<PathBuf>,
        opened: bool,
    },
    /// Memory estimate (and parameter count) of the Train form's draft.
    Estimate(Box<JobSpec>, Result<(String, usize), String>),
    Devices(Vec<DeviceInfo>),
    /// `<workspace>/suites/*.toml` (answered with the runs list).
    Suites(Vec<PathBuf>),
    /// A run's job file, read to resume it.
    JobFile(PathBuf, Result<Box<JobSpec>, String>),
    Dataset {
        info: VersionInfo,
        versions: Vec<VersionInfo>,
        table: Arc<Table>,
        ids: Vec<String>,
        labels: HashMap<String, BTreeMap<String, Value>>,
        summaries: HashMap<String, LabelSummary>,
        tags: Vec<String>,
    },
    /// The workspace's dataset list changed (import, new version).
    Datasets(Vec<VersionInfo>),
    Imported(VersionInfo),
    Rows(Vec<usize>),
    RecordLabels {
        record: String,
        labels: BTreeMap<String, Value>,
    },
    Journal(Option<AuditEntry>),
    Duplicates(Vec<DupGroup>),
    Pii(Vec<PiiHit>),
    TokenStats(TokenStats),
    Pairs(Vec<PairItem>),
    Runs(Vec<RunSummary>),
    Evals(Vec<EvalListing>),
    /// An evaluation opened (or just run), its votes and ratings.
    /// The flag says whether it comes from a run the user just started.
    Eval(Box<EvalResult>, Vec<Vote>, Box<Ratings>, bool),
    Votes(Vec<Vote>, Box<Ratings>),
    EvalFailed(String),
    ModelInfo(PathBuf, Result<ModelInfo, String>),
    ChatDelta(String),
    ChatDone(Result<String, String>),
    /// Long work on one of the two threads (each has its own indicator).
    Progress {
        source: Source,
        what: String,
        done: usize,
        total: usize,
    },
    ProgressDone(Source),
    Info(String),
    Error(String),
}

/// Which background thread a progress report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Data,
    Model,
}

pub struct Workers {
    pub data: Sender<DataCmd>,
    pub model: Sender<ModelCmd>,
    pub replies: Receiver<Reply>,
}

#[derive(Clone)]
struct Out {
    tx: Sender<Reply>,
    ctx: egui::Context,
}

impl Out {
    fn send(&self, r: Reply) {
        let _ = self.tx.send(r);
        self.ctx.request_repaint();
    }
}

pub fn start(ctx: egui::Context) -> Workers {
    let (tx, replies) = channel();
    let out = Out { tx, ctx };
    let (data, data_rx) = channel::<DataCmd>();
    let (model, model_rx) = channel::<ModelCmd>();
    let o = out.clone();
    std::thread::Builder::new().name("whetstone-data".into()).spawn(move || data_loop(data_rx, o)).expect("start the data thread");
    std::thread::Builder::new().name("whetstone-model".into()).spawn(move || model_loop(model_rx, out)).expect("start the model thread");
    Workers { data, model, replies }
}

struct DataState {
    ws: Option<Workspace>,
    current: Option<(String, Arc<Table>)>,
}

fn data_loop(rx: Receiver<DataCmd>, out: Out) {
    let mut st = DataState { ws: None, current: None };
    for cmd in rx {
        if let Err(e) = handle_data(&mut st, cmd, &out) {
            out.send(Reply::ProgressDone(Source::Data));
            out.send(Reply::Error(format!("{e:#}")));
        }
    }
}

fn ws(st: &mut DataState) -> Result<&mut Workspace> {
    st.ws.as_mut().ok_or_else(|| anyhow!("open or create a workspace first (File → Open workspace)"))
}

fn send_workspace(st: &mut DataState, out: &Out) -> Result<()> {
    workspace_reply(st, out, false)
}

fn workspace_reply(st: &mut DataState, out: &Out, opened: bool) -> Result<()> {
    let w = ws(st)?;
    let default_model = w.config.default_model.clone().filter(|m| m.exists());
    out.send(Reply::Workspace {
        root: w.root().to_path_buf(),
        name: w.config.name.clone(),
        datasets: w.datasets()?,
        default_model,
        opened,
    });
    Ok(())
}

fn send_dataset(st: &mut DataState, out: &Out, dataset: &str, version: Option<u32>) -> Result<()> {
    let w = ws(st)?;
    let (info, table) = w.load(dataset, version)?;
    let versions = w.versions(dataset)?;
    let mut all = w.labels(dataset, None)?;
    let summaries = whetstone_engine::data::labels::summarise_labels(&all);
    all.sort_by(|a, b| a.updated_at.cmp(&b.updated_at));
    let mut labels: HashMap<String, BTreeMap<String, Value>> = HashMap::new();
    for l in all {
        labels.entry(l.record).or_default().insert(l.kind, l.value);
    }
    let tags = w.tag_set(dataset)?;
    let ids = table.ids()?;
    let table = Arc::new(table);
    st.current = Some((dataset.to_string(), table.clone()));
    out.send(Reply::Dataset { info, versions, table, ids, labels, summaries, tags });
    Ok(())
}

fn progress(out: &Out, what: &str) {
    out.send(Reply::Progress { source: Source::Data, what: what.into(), done: 0, total: 0 });
}

fn handle_data(st: &mut DataState, cmd: DataCmd, out: &Out) -> Result<()> {
    match cmd {
        DataCmd::Open(p) => {
            st.ws = Some(Workspace::open(&p)?);
            st.current = None;
            workspace_reply(st, out, true)?;
        }
        DataCmd::Create(p) => {
            let name = p.file_name().and_then(|s| s.to_str()).unwrap_or("workspace").to_string();
            st.ws = Some(Workspace::create(&p, &name)?);
            st.current = None;
            workspace_reply(st, out, true)?;
        }
        DataCmd::CreateDemo(p) => {
            progress(out, "Creating the demo workspace");
            st.ws = Some(crate::gui::demo::create(&p)?);
            st.current = None;
            workspace_reply(st, out, true)?;
            out.send(Reply::ProgressDone(Source::Data));
        }
        DataCmd::Import { path, name } => {
            progress(out, &format!("Importing {}", path.display()));
            let v = ws(st)?.import(&path, name.as_deref(), &[])?;
            out.send(Reply::ProgressDone(Source::Data));
            out.send(Reply::Info(format!("Imported {} rows as {}", v.rows, v.dataset)));
            send_workspace(st, out)?;
            send_dataset(st, out, &v.dataset.clone(), None)?;
            out.send(Reply::Imported(v));
        }
        DataCmd::Remap { dataset, map } => {
            let v = ws(st)?.remap(&dataset, &map)?;
            out.send(Reply::Info(format!("Roles saved as version {}", v.version)));
            send_workspace(st, out)?;
            send_dataset(st, out, &dataset, None)?;
        }
        DataCmd::Load { dataset, version } => send_dataset(st, out, &dataset, version)?,
        DataCmd::Query { query } => {
            let (name, table) = st.current.clone().ok_or_else(|| anyhow!("no dataset is open"))?;
            let labels = ws(st)?.label_summaries(&name, None)?;
            out.send(Reply::Rows(curate::query(&table, &query, &labels)?));
        }
        DataCmd::SetLabel { dataset, record, annotator, kind, value } => {
            let w = ws(st)?;
            w.set_label(&dataset, &record, &annotator, &kind, value.as_ref())?;
            out.send(Reply::RecordLabels { labels: w.record_labels(&dataset, &record, None)?, record });
        }
        DataCmd::Undo { dataset, annotator } => {
            let w = ws(st)?;
            let e = w.undo(&dataset, &annotator)?;
            if let Some(e) = &e {
                out.send(Reply::RecordLabels { labels: w.record_labels(&dataset, &e.record, None)?, record: e.record.clone() });
            }
            out.send(Reply::Journal(e));
        }
        DataCmd::Redo { dataset, annotator } => {
            let w = ws(st)?;
            let e = w.redo(&dataset, &annotator)?;
            if let Some(e) = &e {
                out.send(Reply::RecordLabels { labels: w.record_labels(&dataset, &e.record, None)?, record: e.record.clone() });
            }
            out.send(Reply::Journal(e));
        }
        DataCmd::Split { dataset, fractions, seed, stratify } => {
            let v = ws(st)?.split(&dataset, fractions, seed, stratify.as_deref())?;
            out.send(Reply::Info(format!("Split saved as version {}: {}", v.version, v.detail["counts"])));
            send_workspace(st, out)?;
            send_dataset(st, out, &dataset, None)?;
        }
        DataCmd::FindDuplicates { dataset, threshold } => {
            progress(out, "Looking for duplicates");
            let w = ws(st)?;
            let (v, t) = w.load(&dataset, None)?;
            let groups = curate::find_duplicates(&t, &v.roles, &[], threshold)?;
            out.send(Reply::ProgressDone(Source::Data));
            out.send(Reply::Duplicates(groups));
        }
        DataCmd::DropRows { dataset, rows, operation } => {
            let v = ws(st)?.drop_rows(&dataset, &rows, &operation, serde_json::json!({}))?;
            out.send(Reply::Info(format!("Removed {} rows: version {} has {} rows", rows.len(), v.version, v.rows)));
            send_workspace(st, out)?;
            send_dataset(st, out, &dataset, None)?;
        }
        DataCmd::ScanPii { dataset } => {
            progress(out, "Scanning for personal data");
            let (_, t) = ws(st)?.load(&dataset, None)?;
            let hits = curate::scan_pii(&t, &[])?;
            out.send(Reply::ProgressDone(Source::Data));
            out.send(Reply::Pii(hits));
        }
        DataCmd::RedactPii { dataset } => {
            let (v, hits) = ws(st)?.redact_pii(&dataset, &[])?;
            out.send(Reply::Info(format!("Replaced {} personal details: version {}", hits.len(), v.version)));
            out.send(Reply::Pii(Vec::new()));
            send_workspace(st, out)?;
            send_dataset(st, out, &dataset, None)?;
        }
        DataCmd::TokenStats { dataset, model, max_seq_len } => {
            progress(out, "Counting tokens");
            let tok = whetstone_engine::runs::tokenizer(&model)?;
            let (v, t) = ws(st)?.load(&dataset, None)?;
            let s = curate::token_stats(&t, &v.roles, &tok, max_seq_len, 24)?;
            out.send(Reply::ProgressDone(Source::Data));
            out.send(Reply::TokenStats(s));
        }
        DataCmd::CommitLabels { dataset } => {
            let v = ws(st)?.commit_labels(&dataset, None)?;
            out.send(Reply::Info(format!("Labels saved into {} version {}", v.dataset, v.version)));
            send_workspace(st, out)?;
            send_dataset(st, out, &dataset, None)?;
        }
        DataCmd::CommitPreferences { dataset, annotator } => {
            let v = ws(st)?.commit_preferences(&dataset, Some(&annotator))?;
            out.send(Reply::Info(format!("{} preference pairs saved as {} version {}", v.rows, v.dataset, v.version)));
            send_workspace(st, out)?;
        }
        DataCmd::PairQueue { dataset, annotator } => {
            let w = ws(st)?;
            let (v, t) = w.load(&dataset, None)?;
            let rows: HashMap<String, usize> = t.ids()?.into_iter().enumerate().map(|(i, id)| (id, i)).collect();
            let prompt_col = v.roles.prompt.clone();
            let mut items = Vec::new();
            for (record, a, b) in w.pair_queue(&dataset, &annotator)? {
                let row = rows[&record];
                // Which answer shows on the left is decided by the record id, not by the data,
                // so a chosen/rejected column order cannot give the better answer away.
                let swap = record.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % 2 == 1;
                let (a, b) = if swap { (b, a) } else { (a, b) };
                let prompt = match &prompt_col {
                    Some(c) => w.source_text(&t, row, &format!("col:{c}"))?,
                    None => String::new(),
                };
                items.push(PairItem { a_text: w.source_text(&t, row, &a)?, b_text: w.source_text(&t, row, &b)?, record, prompt, a, b });
            }
            out.send(Reply::Pairs(items));
        }
        DataCmd::Export { dataset, out: path, shape } => {
            let (v, t) = ws(st)?.load(&dataset, None)?;
            let n = whetstone_engine::data::export::export(&t, &v.roles, shape.parse()?, None, &path)?;
            out.send(Reply::Info(format!("Wrote {n} rows to {}", path.display())));
        }
        DataCmd::ListRuns => {
            let root = ws(st)?.root().to_path_buf();
            out.send(Reply::Runs(list_runs(&root.join("runs"))?));
            out.send(Reply::Suites(list_suites(&root)));
        }
        DataCmd::ReadJob(run) => {
            let r = JobSpec::from_file(&run.join("job.toml")).map(Box::new).map_err(|e| format!("{e:#}"));
            out.send(Reply::JobFile(run, r));
        }
        DataCmd::ListEvals => out.send(Reply::Evals(ws(st)?.evals()?)),
        DataCmd::LoadEval { id } => {
            let w = ws(st)?;
            let r = w.load_eval(&id)?;
            let votes = w.votes(&id)?;
            let ratings = vote_ratings(&r, &votes, 500, 0);
            out.send(Reply::Eval(Box::new(r), votes, Box::new(ratings), false));
        }
        DataCmd::Vote { eval_id, item, model_a, model_b, verdict, annotator } => {
            let w = ws(st)?;
            w.add_vote(&eval_id, &item, &model_a, &model_b, &verdict, &annotator)?;
            send_votes(w, &eval_id, out)?;
        }
        DataCmd::UndoVote { eval_id, annotator } => {
            let w = ws(st)?;
            w.undo_vote(&eval_id, &annotator)?;
            send_votes(w, &eval_id, out)?;
        }
        DataCmd::VotesToPreferences { eval_id } => {
            let v = ws(st)?.votes_to_preferences(&eval_id)?;
            out.send(Reply::Info(format!("{} preference pairs saved as {} version {}", v.rows, v.dataset, v.version)));
            send_workspace(st, out)?;
        }
        DataCmd::SaveSuite { spec, path } => {
            whetstone_engine::io::atomic_write(&path, toml::to_string_pretty(&*spec)?.as_bytes())?;
            out.send(Reply::Info(format!("Saved {}; Train → Advanced can score it during SFT", path.display())));
            out.send(Reply::Suites(list_suites(ws(st)?.root())));
        }
        DataCmd::EvalReport { id, out: path } => {
            let w = ws(st)?;
            let r = w.load_eval(&id)?;
            let ratings = vote_ratings(&r, &w.votes(&id)?, 1000, 0);
            whetstone_engine::eval::report::write(&r, Some(&ratings), &path)?;
            out.send(Reply::Info(format!("Wrote the report {}", path.display())));
        }
        DataCmd::ExportRun { run, out: dir, merge } => {
            progress(out, "Exporting the model");
            let kind = whetstone_engine::runs::export::export_run(&run, &dir, merge, whetstone_engine::io::safetensors::SaveDtype::F32)?;
            out.send(Reply::ProgressDone(Source::Data));
            out.send(Reply::Info(format!("Exported {kind:?} to {}", dir.display())));
        }
    }
    Ok(())
}

fn send_votes(w: &Workspace, eval_id: &str, out: &Out) -> Result<()> {
    let r = w.load_eval(eval_id)?;
    let votes = w.votes(eval_id)?;
    let ratings = vote_ratings(&r, &votes, 500, 0);
    out.send(Reply::Votes(votes, Box::new(ratings)));
    Ok(())
}

/// The evaluation suites saved in a workspace (`suites/*.toml`), sorted.
pub fn list_suites(workspace: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace.join("suites"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Every run folder under `root` with its card, job file and metrics.
pub fn list_runs(root: &std::path::Path) -> Result<Vec<RunSummary>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(out) };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("job.toml").exists()).collect();
    dirs.sort();
    for dir in dirs {
        let card: Value =
            std::fs::read_to_string(dir.join("run.json")).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
        let events = read_metrics(&dir).unwrap_or_default();
        let mut steps = Vec::new();
        let mut evals = Vec::new();
        let mut status = "running or stopped".to_string();
        for e in events {
            match e {
                JobEvent::Step(s) => steps.push(s),
                JobEvent::Eval(e) => evals.push(e),
                JobEvent::Finished { .. } => status = "finished".into(),
                JobEvent::Cancelled { step } => status = format!("cancelled at step {step}"),
                JobEvent::Failed { reason } => status = format!("failed: {reason}"),
                _ => {}
            }
        }
        out.push(RunSummary {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            job_toml: std::fs::read_to_string(dir.join("job.toml")).unwrap_or_default(),
            dir,
            card,
            steps,
            evals,
            status,
        });
    }
    Ok(out)
}

fn model_loop(rx: Receiver<ModelCmd>, out: Out) {
    let mut cache: HashMap<PathBuf, LoadedModel> = HashMap::new();
    let device = whetstone_engine::Device::flex();
    let load = |p: &PathBuf, cache: &mut HashMap<PathBuf, LoadedModel>| -> Result<()> {
        if !cache.contains_key(p) {
            out.send(Reply::Progress { source: Source::Model, what: format!("Loading {}", p.display()), done: 0, total: 0 });
            // Frozen weights as stored (GGUF blocks, bf16): less memory, and decoding reads fewer bytes.
            let m = LoadedModel::load_with(p, &device, Packing::Stored).with_context(|| p.display().to_string());
            out.send(Reply::ProgressDone(Source::Model));
            let m = m?;
            cache.insert(p.clone(), m);
        }
        Ok(())
    };
    for cmd in rx {
        match cmd {
            ModelCmd::Info(p) => {
                let r = load(&p, &mut cache).map(|_| cache[&p].info()).map_err(|e| format!("{e:#}"));
                out.send(Reply::ModelInfo(p, r));
            }
            ModelCmd::Generate { model, prompt, opts, cancel } => {
                let r = (|| -> Result<String> {
                    load(&model, &mut cache)?;
                    let m = &cache[&model];
                    let ids = m.tokenizer.prompt_ids(&prompt)?;
                    let g = generate(m, &ids, &opts, &mut |t| {
                        out.send(Reply::ChatDelta(t.to_string()));
                        !cancel.load(Ordering::Relaxed)
                    })?;
                    Ok(format!("{} tokens, {:.1} tokens/s", g.generated_ids.len(), g.tokens_per_second))
                })();
                out.send(Reply::ChatDone(r.map_err(|e| format!("{e:#}"))));
            }
            ModelCmd::Estimate(spec) => {
                let r = estimate(&spec).map_err(|e| format!("{e:#}"));
                out.send(Reply::Estimate(spec, r));
            }
            ModelCmd::ListDevices => out.send(Reply::Devices(whetstone_engine::device::list_devices())),
            ModelCmd::RunEval { spec, workspace } => {
                let r = (|| -> Result<(EvalResult, Vec<Vote>)> {
                    let o = out.clone();
                    let r = whetstone_engine::eval::score::run_suite(&spec, &device, &mut |done, total| {
                        o.send(Reply::Progress { source: Source::Model, what: "Evaluating".into(), done, total });
                        true
                    })?;
                    let mut ws = Workspace::open(&workspace)?;
                    ws.save_eval(&r)?;
                    Ok((r, Vec::new()))
                })();
                out.send(Reply::ProgressDone(Source::Model));
                match r {
                    Ok((r, votes)) => {
                        let ratings = vote_ratings(&r, &votes, 0, 0);
                        out.send(Reply::Info(format!("Evaluation {} stored", r.id)));
                        out.send(Reply::Eval(Box::new(r), votes, Box::new(ratings), true));
                    }
                    Err(e) => out.send(Reply::EvalFailed(format!("{e:#}"))),
                }
            }
            ModelCmd::Draft { workspace, dataset, model, k, limit, opts } => {
                let r = (|| -> Result<usize> {
                    load(&model, &mut cache)?;
                    let mut ws = Workspace::open(&workspace)?;
                    let m = &cache[&model];
                    let o = out.clone();
                    whetstone_engine::data::draft::draft_candidates(
                        &mut ws,
                        &dataset,
                        m,
                        &model.display().to_string(),
                        k,
                        &opts,
                        limit,
                        &mut |done, total| {
                            o.send(Reply::Progress { source: Source::Model, what: "Drafting answers".into(), done, total });
                            true
                        },
                    )
                })();
                out.send(Reply::ProgressDone(Source::Model));
                match r {
                    Ok(n) => out.send(Reply::Info(format!("Drafted {n} answers; they are waiting in the pairwise queue"))),
                    Err(e) => out.send(Reply::Error(format!("{e:#}"))),
                }
            }
        }
    }
}
