//! `whetstone data …`: workspaces, import, curation, export and scriptable labelling.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use whetstone_engine::data::curate::{self, Query, SplitFractions};
use whetstone_engine::data::draft::draft_candidates;
use whetstone_engine::data::export::{Shape, export};
use whetstone_engine::data::import::parse_mappings;
use whetstone_engine::data::{Workspace, parse_dataset_ref};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Create a workspace folder.
    Init {
        dir: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Import a CSV/TSV/JSON/JSONL/Parquet file as a new dataset (version 1).
    Import {
        file: PathBuf,
        #[arg(long)]
        workspace: PathBuf,
        /// Dataset name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// role=column (roles: system, prompt, response, chosen, rejected, messages, label, score, id).
        #[arg(long = "map")]
        map: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the datasets of a workspace.
    List {
        workspace: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Versions of a dataset: what produced each, rows, hash.
    Versions {
        /// WORKSPACE/DATASET
        dataset: String,
        #[arg(long)]
        json: bool,
    },
    /// Print rows of a dataset version.
    Show {
        /// WORKSPACE/DATASET[@VERSION]
        dataset: String,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 10)]
        rows: usize,
        #[arg(long)]
        json: bool,
    },
    /// Change the column → role mapping (a new version).
    Map {
        dataset: String,
        /// role=column, or role= to clear.
        mappings: Vec<String>,
    },
    /// Rows, columns, roles, text lengths, and token lengths with a model's tokenizer.
    Stats {
        dataset: String,
        /// Model (HF folder, GGUF or run folder) whose tokenizer counts tokens.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 512)]
        max_seq_len: usize,
        #[arg(long)]
        json: bool,
    },
    /// Search rows by substring or regex, with label and split filters.
    Search {
        dataset: String,
        /// Text (or with --regex, a pattern) to find.
        pattern: Option<String>,
        #[arg(long)]
        regex: bool,
        #[arg(long)]
        case_sensitive: bool,
        #[arg(long)]
        column: Option<String>,
        /// Label status: accept, reject, flag or unlabelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        min_rating: Option<u8>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        split: Option<String>,
        #[arg(long)]
        sort: Option<String>,
        #[arg(long)]
        desc: bool,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep only the matching rows as a new version.
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Find exact and near duplicates (MinHash); --drop keeps the first of each group.
    Dedupe {
        dataset: String,
        #[arg(long, default_value_t = 0.8)]
        threshold: f64,
        /// Columns to compare (default: prompt and response).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        #[arg(long)]
        drop: bool,
        #[arg(long)]
        json: bool,
    },
    /// Scan for PII (emails, phones, ID/account numbers, dates of birth, names); --redact replaces it.
    Pii {
        dataset: String,
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        #[arg(long)]
        redact: bool,
        #[arg(long)]
        json: bool,
    },
    /// Seeded train/validation/test split (a new version with a `split` column).
    Split {
        dataset: String,
        #[arg(long, default_value_t = 0.8)]
        train: f64,
        #[arg(long, default_value_t = 0.1)]
        validation: f64,
        #[arg(long, default_value_t = 0.1)]
        test: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep each value of this column in the same proportions in every split.
        #[arg(long)]
        stratify: Option<String>,
    },
    /// Write a version to JSONL/JSON/Parquet/CSV in a trainer's shape.
    Export {
        dataset: String,
        #[arg(long)]
        out: PathBuf,
        /// raw, trl-sft, trl-preference or ds-chat.
        #[arg(long, default_value = "raw")]
        shape: String,
        /// Only rows of this split.
        #[arg(long)]
        split: Option<String>,
    },
    /// Label records (scriptable; the GUI writes the same store).
    Label {
        dataset: String,
        #[arg(long)]
        annotator: Option<String>,
        #[command(subcommand)]
        op: LabelOp,
    },
    /// Generate K answers per prompt with a model, for pairwise labelling.
    Draft {
        dataset: String,
        #[arg(long)]
        model: PathBuf,
        #[arg(short, long, default_value_t = 2)]
        k: usize,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum LabelOp {
    /// Set a label: KIND is status, rating, tags, edit, note, pair or rank; VALUE is text or JSON.
    Set {
        record: String,
        kind: String,
        value: String,
    },
    /// Remove a label.
    Clear {
        record: String,
        kind: String,
    },
    /// Pairwise verdict (a, b, tie, both_bad) on a record's queued pair (or --a/--b sources).
    Pair {
        record: String,
        verdict: String,
        #[arg(long)]
        a: Option<String>,
        #[arg(long)]
        b: Option<String>,
    },
    Undo,
    Redo,
    /// Labels of one record.
    Show {
        record: String,
    },
    /// Every current label (JSON lines).
    List,
    /// Who changed what, when (newest first).
    Audit {
        #[arg(long)]
        record: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Cohen's and Fleiss' kappa between annotators.
    Agreement {
        #[arg(long, default_value = "status")]
        kind: String,
    },
    /// Pairs waiting for a verdict.
    Queue,
    /// Write labels into a new dataset version (edits applied, label columns added).
    Commit,
    /// Turn pair/rank verdicts into a `<dataset>-preferences` version.
    Preferences,
    /// Read JSON commands from stdin, one per line; answer `ok <seq>` once each is committed.
    /// {"op":"set","record":"3","kind":"rating","value":4} | {"op":"clear",…} | {"op":"undo"} | {"op":"redo"}
    Stream,
}

fn open_ref(s: &str) -> Result<(Workspace, String, Option<u32>)> {
    let (ws, name, version) = parse_dataset_ref(s)?;
    Ok((Workspace::open(&ws)?, name, version))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn short(s: &str, n: usize) -> String {
    let one: String = s.chars().map(|c| if c == '\n' { '⏎' } else { c }).collect();
    if one.chars().count() > n { format!("{}…", one.chars().take(n).collect::<String>()) } else { one }
}

/// A label value from the command line: JSON when it parses as JSON, else text.
fn parse_value(kind: &str, s: &str) -> Value {
    match serde_json::from_str::<Value>(s) {
        Ok(v) if !(kind == "edit" || kind == "note") || v.is_string() => v,
        _ => Value::String(s.to_string()),
    }
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        DataCommand::Init { dir, name } => {
            let name = name.unwrap_or_else(|| dir.file_name().and_then(|s| s.to_str()).unwrap_or("workspace").to_string());
            Workspace::create(&dir, &name)?;
            println!("created workspace `{name}` in {}", dir.display());
        }
        DataCommand::Import { file, workspace, name, map, json } => {
            let mut ws = Workspace::open_or_create(&workspace)?;
            let v = ws.import(&file, name.as_deref(), &parse_mappings(&map)?)?;
            if json {
                return print_json(&v);
            }
            println!("imported {} rows into {}/{}@{}", v.rows, workspace.display(), v.dataset, v.version);
            println!("  format {}, encoding {}", v.detail["format"].as_str().unwrap_or("?"), v.detail["encoding"].as_str().unwrap_or("?"));
            println!("  columns: {}", v.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "));
            let roles = v.roles.as_map();
            if roles.is_empty() {
                println!(
                    "  roles: none guessed; map them with `whetstone data map {}/{} prompt=… response=…`",
                    workspace.display(),
                    v.dataset
                );
            } else {
                println!("  roles: {}", roles.iter().map(|(r, c)| format!("{r}={c}")).collect::<Vec<_>>().join(", "));
            }
        }
        DataCommand::List { workspace, json } => {
            let ws = Workspace::open(&workspace)?;
            let ds = ws.datasets()?;
            if json {
                return print_json(&ds);
            }
            for v in ds {
                println!("{:<30} v{:<3} {:>9} rows  {}  {}", v.dataset, v.version, v.rows, v.operation, v.created_at);
            }
        }
        DataCommand::Versions { dataset, json } => {
            let (ws, name, _) = open_ref(&dataset)?;
            let vs = ws.versions(&name)?;
            if vs.is_empty() {
                ws.version(&name, None)?;
            }
            if json {
                return print_json(&vs);
            }
            for v in vs {
                println!(
                    "v{:<3} {:>9} rows  {:<12} {}  sha256 {}  {}",
                    v.version,
                    v.rows,
                    v.operation,
                    v.created_at,
                    &v.sha256[..12],
                    v.detail
                );
            }
        }
        DataCommand::Show { dataset, offset, rows, json } => {
            let (ws, name, version) = open_ref(&dataset)?;
            let (_, t) = ws.load(&name, version)?;
            let ids = t.ids()?;
            for row in offset..(offset + rows).min(t.height()) {
                let r = t.record(row)?;
                if json {
                    println!("{}", json!({"_id": ids[row], "record": r}));
                } else {
                    println!("[{}]", ids[row]);
                    for (k, v) in r {
                        println!("  {k}: {}", short(&v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()), 160));
                    }
                }
            }
        }
        DataCommand::Map { dataset, mappings } => {
            let (mut ws, name, _) = open_ref(&dataset)?;
            let v = ws.remap(&name, &parse_mappings(&mappings)?)?;
            println!(
                "{}@{}: roles {}",
                v.dataset,
                v.version,
                v.roles.as_map().iter().map(|(r, c)| format!("{r}={c}")).collect::<Vec<_>>().join(", ")
            );
        }
        DataCommand::Stats { dataset, tokenizer, max_seq_len, json } => stats(&dataset, tokenizer, max_seq_len, json)?,
        DataCommand::Search {
            dataset,
            pattern,
            regex,
            case_sensitive,
            column,
            status,
            min_rating,
            tag,
            split,
            sort,
            desc,
            limit,
            keep,
            json,
        } => {
            let (mut ws, name, version) = open_ref(&dataset)?;
            let (v, t) = ws.load(&name, version)?;
            let labels = ws.label_summaries(&name, None)?;
            let q = Query {
                text: pattern.clone(),
                regex,
                case_sensitive,
                column,
                equals: split.map(|s| vec![("split".to_string(), s)]).unwrap_or_default(),
                status,
                min_rating,
                tag,
                sort_by: sort,
                descending: desc,
                ..Default::default()
            };
            let t0 = std::time::Instant::now();
            let rows = curate::query(&t, &q, &labels)?;
            let secs = t0.elapsed().as_secs_f64();
            if keep {
                let nv = ws.keep_rows(&name, &rows, "filter", json!({"query": q, "from_version": v.version}))?;
                println!("kept {} of {} rows as {}@{}", rows.len(), t.height(), nv.dataset, nv.version);
                return Ok(());
            }
            let ids = t.ids()?;
            if json {
                let shown: Vec<Value> = rows
                    .iter()
                    .take(limit)
                    .map(|&r| Ok(json!({"_id": ids[r], "row": r, "record": t.record(r)?})))
                    .collect::<Result<_>>()?;
                return print_json(&json!({"matches": rows.len(), "rows": t.height(), "seconds": secs, "shown": shown}));
            }
            println!("{} of {} rows match ({:.3} s)", rows.len(), t.height(), secs);
            for &r in rows.iter().take(limit) {
                let rec = t.record(r)?;
                let text =
                    rec.values().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect::<Vec<_>>().join(" │ ");
                println!("  [{}] {}", ids[r], short(&text, 150));
            }
        }
        DataCommand::Dedupe { dataset, threshold, columns, drop, json } => {
            let (mut ws, name, _) = open_ref(&dataset)?;
            let (v, t) = ws.load(&name, None)?;
            let groups = curate::find_duplicates(&t, &v.roles, &columns, threshold)?;
            if json {
                print_json(&groups)?;
            } else {
                println!("{} duplicate groups ({} rows would go)", groups.len(), curate::duplicate_rows_to_drop(&groups).len());
                for g in &groups {
                    println!("  {} (similarity {:.2}): {}", g.kind, g.similarity, g.ids.join(", "));
                }
            }
            if drop && !groups.is_empty() {
                let rows = curate::duplicate_rows_to_drop(&groups);
                let nv = ws.drop_rows(
                    &name,
                    &rows,
                    "dedupe",
                    json!({"threshold": threshold, "groups": groups.len(), "from_version": v.version}),
                )?;
                eprintln!("removed {} rows: {}@{} has {} rows", rows.len(), nv.dataset, nv.version, nv.rows);
            }
        }
        DataCommand::Pii { dataset, columns, redact, json } => {
            let (mut ws, name, _) = open_ref(&dataset)?;
            if redact {
                let (nv, hits) = ws.redact_pii(&name, &columns)?;
                println!("redacted {} spans: {}@{}", hits.len(), nv.dataset, nv.version);
                return Ok(());
            }
            let (_, t) = ws.load(&name, None)?;
            let hits = curate::scan_pii(&t, &columns)?;
            if json {
                return print_json(&hits);
            }
            println!("{} PII spans in {} rows", hits.len(), hits.iter().map(|h| h.row).collect::<std::collections::BTreeSet<_>>().len());
            for h in &hits {
                println!("  [{}] {} {:?}: {}", h.id, h.column, h.kind, h.text);
            }
        }
        DataCommand::Split { dataset, train, validation, test, seed, stratify } => {
            let (mut ws, name, _) = open_ref(&dataset)?;
            let v = ws.split(&name, SplitFractions { train, validation, test }, seed, stratify.as_deref())?;
            println!("{}@{}: {}", v.dataset, v.version, v.detail["counts"]);
        }
        DataCommand::Export { dataset, out, shape, split } => {
            let (ws, name, version) = open_ref(&dataset)?;
            let (v, t) = ws.load(&name, version)?;
            let n = export(&t, &v.roles, shape.parse::<Shape>()?, split.as_deref(), &out)?;
            println!("wrote {n} rows of {}@{} to {}", v.dataset, v.version, out.display());
        }
        DataCommand::Label { dataset, annotator, op } => label(&dataset, annotator, op)?,
        DataCommand::Draft { dataset, model, k, limit, temperature, top_p, max_new_tokens, seed, device } => {
            let (mut ws, name, _) = open_ref(&dataset)?;
            let dev = whetstone_engine::device::parse_device(&device)?;
            let m = whetstone_engine::model::LoadedModel::load(&model, &dev)?;
            let opts = whetstone_engine::generate::GenerateOptions { max_new_tokens, temperature, top_p, seed, ..Default::default() };
            let total = limit.unwrap_or(usize::MAX).min(ws.version(&name, None)?.rows);
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(indicatif::ProgressStyle::with_template("drafting {bar:30} {pos}/{len} prompts  eta {eta}").unwrap());
            let n = draft_candidates(&mut ws, &name, &m, &model.display().to_string(), k, &opts, limit, &mut |done, _| {
                bar.set_position(done as u64);
                true
            })?;
            bar.finish_and_clear();
            println!("drafted {n} answers; label them with `whetstone data label {dataset} queue` / `pair`");
        }
    }
    Ok(())
}

fn stats(dataset: &str, tokenizer: Option<PathBuf>, max_seq_len: usize, json_out: bool) -> Result<()> {
    let (ws, name, version) = open_ref(dataset)?;
    let (v, t) = ws.load(&name, version)?;
    let mut columns = Vec::new();
    for c in &t.columns {
        let s = t.text(&c.name)?;
        let lens: Vec<usize> = s.iter().flatten().map(|x| x.chars().count()).collect();
        let empty = t.height() - lens.iter().filter(|&&l| l > 0).count();
        let mean = if lens.is_empty() { 0.0 } else { lens.iter().sum::<usize>() as f64 / lens.len() as f64 };
        columns.push(json!({"name": c.name, "kind": c.kind, "empty": empty, "mean_chars": mean, "max_chars": lens.iter().max().copied().unwrap_or(0)}));
    }
    let tokens = match &tokenizer {
        Some(p) => {
            let tok = whetstone_engine::runs::tokenizer(p)?;
            Some(curate::token_stats(&t, &v.roles, &tok, max_seq_len, 20)?)
        }
        None => None,
    };
    let labels = ws.labels(&name, None)?;
    let out = json!({
        "dataset": v.dataset, "version": v.version, "rows": v.rows, "sha256": v.sha256, "roles": v.roles.as_map(),
        "columns": columns, "labels": labels.len(),
        "tokens": tokens.as_ref().map(|s| json!({"count": s.count, "min": s.min, "max": s.max, "mean": s.mean, "p50": s.p50,
            "p90": s.p90, "p99": s.p99, "max_seq_len": s.max_seq_len, "over": s.over, "share_over": s.share_over, "histogram": s.histogram})),
    });
    if json_out {
        return print_json(&out);
    }
    println!("{}@{}: {} rows, sha256 {}", v.dataset, v.version, v.rows, &v.sha256[..16]);
    println!("roles: {}", v.roles.as_map().iter().map(|(r, c)| format!("{r}={c}")).collect::<Vec<_>>().join(", "));
    for c in out["columns"].as_array().unwrap() {
        println!(
            "  {:<24} {:<5} mean {:>8.1} chars, max {:>6}, empty {}",
            c["name"].as_str().unwrap(),
            c["kind"].as_str().unwrap(),
            c["mean_chars"].as_f64().unwrap(),
            c["max_chars"],
            c["empty"]
        );
    }
    if let Some(s) = tokens {
        println!("tokens: min {} / p50 {} / mean {:.1} / p90 {} / p99 {} / max {}", s.min, s.p50, s.mean, s.p90, s.p99, s.max);
        println!("over max_seq_len {}: {} ({:.1} %)", s.max_seq_len, s.over, 100.0 * s.share_over);
        let peak = s.histogram.iter().map(|b| b.2).max().unwrap_or(1).max(1);
        for (lo, hi, n) in &s.histogram {
            println!("  {lo:>6}–{:<6} {:>6} {}", hi - 1, n, "█".repeat(n * 40 / peak));
        }
    }
    Ok(())
}

fn label(dataset: &str, annotator: Option<String>, op: LabelOp) -> Result<()> {
    let (mut ws, name, _) = open_ref(dataset)?;
    let who = annotator.unwrap_or_else(|| ws.config.annotator.clone());
    let check_record = |ws: &Workspace, ids: &mut Option<std::collections::HashSet<String>>, r: &str| -> Result<()> {
        if ids.is_none() {
            *ids = Some(ws.record_ids(&name)?.into_iter().collect());
        }
        if !ids.as_ref().unwrap().contains(r) {
            bail!("record `{r}` not found in `{name}`");
        }
        Ok(())
    };
    let mut ids = None;
    match op {
        LabelOp::Set { record, kind, value } => {
            check_record(&ws, &mut ids, &record)?;
            let seq = ws.set_label(&name, &record, &who, &kind, Some(&parse_value(&kind, &value)))?;
            println!("ok {seq}");
        }
        LabelOp::Clear { record, kind } => {
            check_record(&ws, &mut ids, &record)?;
            println!("ok {}", ws.set_label(&name, &record, &who, &kind, None)?);
        }
        LabelOp::Pair { record, verdict, a, b } => {
            check_record(&ws, &mut ids, &record)?;
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    let q = ws.pair_queue(&name, &who)?;
                    let (_, a, b) = q
                        .into_iter()
                        .find(|(r, _, _)| *r == record)
                        .ok_or_else(|| anyhow!("record `{record}` has no queued pair (draft answers first, or give --a and --b)"))?;
                    (a, b)
                }
            };
            let seq = ws.set_label(&name, &record, &who, "pair", Some(&json!({"a": a, "b": b, "verdict": verdict})))?;
            println!("ok {seq}");
        }
        LabelOp::Undo => match ws.undo(&name, &who)? {
            Some(e) => println!("undid {} on {}: {} → {}", e.kind, e.record, fmt_opt(&e.old), fmt_opt(&e.new)),
            None => println!("nothing to undo"),
        },
        LabelOp::Redo => match ws.redo(&name, &who)? {
            Some(e) => println!("redid {} on {}: {} → {}", e.kind, e.record, fmt_opt(&e.old), fmt_opt(&e.new)),
            None => println!("nothing to redo"),
        },
        LabelOp::Show { record } => print_json(&ws.record_labels(&name, &record, Some(&who))?)?,
        LabelOp::List => {
            for l in ws.labels(&name, None)? {
                println!("{}", serde_json::to_string(&l)?);
            }
        }
        LabelOp::Audit { record, limit } => {
            for e in ws.audit(Some(&name), record.as_deref(), None, limit)? {
                println!(
                    "{} {:<10} {:<5} [{}] {}: {} → {}",
                    e.at,
                    e.annotator,
                    e.action,
                    e.record,
                    e.kind,
                    fmt_opt(&e.old),
                    fmt_opt(&e.new)
                );
            }
        }
        LabelOp::Agreement { kind } => print_json(&ws.agreement(&name, &kind)?)?,
        LabelOp::Queue => {
            for (r, a, b) in ws.pair_queue(&name, &who)? {
                println!("{r}\t{a}\t{b}");
            }
        }
        LabelOp::Commit => {
            let v = ws.commit_labels(&name, None)?;
            println!("wrote labels into {}@{} ({})", v.dataset, v.version, v.detail);
        }
        LabelOp::Preferences => {
            let v = ws.commit_preferences(&name, None)?;
            println!("wrote {} preference pairs to {}@{}", v.rows, v.dataset, v.version);
        }
        LabelOp::Stream => {
            let stdin = std::io::stdin();
            let mut out = std::io::stdout().lock();
            let mut failures = 0;
            for (n, line) in stdin.lock().lines().enumerate() {
                let line = line.context("reading stdin")?;
                if line.trim().is_empty() {
                    continue;
                }
                let r = (|| -> Result<String> {
                    let cmd: Value = serde_json::from_str(&line).map_err(|e| anyhow!("line {}: {e}", n + 1))?;
                    let field = |k: &str| cmd.get(k).and_then(Value::as_str).ok_or_else(|| anyhow!("line {}: `{k}` missing", n + 1));
                    match field("op")? {
                        "set" | "clear" => {
                            let record = field("record")?;
                            check_record(&ws, &mut ids, record)?;
                            let value = if field("op")? == "set" { Some(cmd.get("value").cloned().unwrap_or(Value::Null)) } else { None };
                            Ok(format!("ok {}", ws.set_label(&name, record, &who, field("kind")?, value.as_ref())?))
                        }
                        "undo" => Ok(format!("ok {}", ws.undo(&name, &who)?.map_or(-1, |e| e.seq))),
                        "redo" => Ok(format!("ok {}", ws.redo(&name, &who)?.map_or(-1, |e| e.seq))),
                        other => bail!("line {}: unknown op `{other}` (set, clear, undo, redo)", n + 1),
                    }
                })();
                match r {
                    Ok(s) => writeln!(out, "{s}")?,
                    Err(e) => {
                        failures += 1;
                        writeln!(out, "error: {e:#}")?
                    }
                }
                out.flush()?;
            }
            if failures > 0 {
                bail!("{failures} commands failed");
            }
        }
    }
    Ok(())
}

fn fmt_opt(v: &Option<Value>) -> String {
    v.as_ref().map_or("(none)".to_string(), |v| v.to_string())
}
