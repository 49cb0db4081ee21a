//! The labelling store. Every change is one SQLite transaction (WAL, synchronous=FULL) that
//! updates the current label, appends to the undo journal and to the append-only audit
//! trail, and commits before the call returns. Undo/redo walk the journal per dataset and
//! annotator; a new change clears the redo stack, as in any editor.
//!
//! Label kinds and their values:
//! - `status`: "accept" | "reject" | "flag"
//! - `rating`: 1–5
//! - `tags`: list of tags (added to the dataset's tag set)
//! - `edit`: the edited response (the original stays in the data)
//! - `note`: free text
//! - `pair`: {"a": SOURCE, "b": SOURCE, "verdict": "a" | "b" | "tie" | "both_bad"}
//! - `rank`: {"order": [SOURCE, …]} best first
//!
//! A SOURCE names a response: `col:<column>` (a column of the record) or `cand:<id>` (a
//! drafted candidate). Setting a value of `null` removes the label.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::curate::LabelSummary;
use super::import::Roles;
use super::table::{ColumnKind, ID_COLUMN, Table};
use super::workspace::{VersionInfo, Workspace, now_rfc3339};

pub const LABEL_KINDS: [&str; 7] = ["status", "rating", "tags", "edit", "note", "pair", "rank"];
pub const VERDICTS: [&str; 4] = ["a", "b", "tie", "both_bad"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub record: String,
    pub annotator: String,
    pub kind: String,
    pub value: Value,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub annotator: String,
    pub dataset: String,
    pub record: String,
    pub kind: String,
    /// `set`, `undo` or `redo`.
    pub action: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: i64,
    pub record: String,
    pub model: String,
    pub text: String,
    pub params: Value,
    pub created_at: String,
}

/// Check a label value for its kind and put it in canonical form.
pub fn validate_label(kind: &str, value: &Value) -> Result<Value> {
    let source_ok = |s: &str| s.starts_with("col:") && s.len() > 4 || s.strip_prefix("cand:").is_some_and(|n| n.parse::<i64>().is_ok());
    match kind {
        "status" => match value.as_str() {
            Some(s @ ("accept" | "reject" | "flag")) => Ok(json!(s)),
            _ => bail!("status must be accept, reject or flag (got {value})"),
        },
        "rating" => match value.as_u64().or_else(|| value.as_str().and_then(|s| s.parse().ok())) {
            Some(r @ 1..=5) => Ok(json!(r)),
            _ => bail!("rating must be a whole number from 1 to 5 (got {value})"),
        },
        "tags" => {
            let tags: Vec<String> = match value {
                Value::Array(a) => a
                    .iter()
                    .map(|t| t.as_str().map(|s| s.trim().to_string()).ok_or_else(|| anyhow!("tags must be text")))
                    .collect::<Result<_>>()?,
                Value::String(s) => s.split(',').map(|t| t.trim().to_string()).collect(),
                _ => bail!("tags must be a list of text (got {value})"),
            };
            let set: BTreeSet<String> = tags.into_iter().filter(|t| !t.is_empty()).collect();
            Ok(json!(set.into_iter().collect::<Vec<_>>()))
        }
        "edit" | "note" => match value {
            Value::String(s) => Ok(json!(s)),
            _ => bail!("{kind} must be text (got {value})"),
        },
        "pair" => {
            let a = value.get("a").and_then(Value::as_str).unwrap_or("");
            let b = value.get("b").and_then(Value::as_str).unwrap_or("");
            let v = value.get("verdict").and_then(Value::as_str).unwrap_or("");
            if !source_ok(a) || !source_ok(b) || a == b {
                bail!("pair needs two different sources `a` and `b` (col:<column> or cand:<id>), got {value}");
            }
            if !VERDICTS.contains(&v) {
                bail!("pair verdict must be one of {} (got {v:?})", VERDICTS.join(", "));
            }
            Ok(json!({"a": a, "b": b, "verdict": v}))
        }
        "rank" => {
            let order: Vec<String> = value
                .get("order")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let distinct: BTreeSet<&String> = order.iter().collect();
            if order.len() < 2 || distinct.len() != order.len() || !order.iter().all(|s| source_ok(s)) {
                bail!("rank needs {{\"order\": [source, …]}} with at least two different sources, got {value}");
            }
            Ok(json!({ "order": order }))
        }
        other => bail!("unknown label kind `{other}` (kinds: {})", LABEL_KINDS.join(", ")),
    }
}

fn parse_opt(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

impl Workspace {
    fn require_dataset(&self, dataset: &str) -> Result<()> {
        self.version(dataset, None).map(|_| ())
    }

    /// Row ids of the latest version of a dataset.
    pub fn record_ids(&self, dataset: &str) -> Result<Vec<String>> {
        let v = self.version(dataset, None)?;
        let path = self.snapshot_path(&v);
        let f = std::fs::File::open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
        use polars::prelude::*;
        let df = ParquetReader::new(f)
            .with_columns(Some(vec![ID_COLUMN.to_string()]))
            .finish()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(df.column(ID_COLUMN)?.str()?.iter().map(|s| s.unwrap_or_default().to_string()).collect())
    }

    /// Set (or with `None`, remove) one label. Returns the journal sequence number once committed.
    pub fn set_label(&mut self, dataset: &str, record: &str, annotator: &str, kind: &str, value: Option<&Value>) -> Result<i64> {
        if annotator.trim().is_empty() {
            bail!("an annotator name is needed");
        }
        self.require_dataset(dataset)?;
        let new = value.map(|v| validate_label(kind, v)).transpose()?;
        if new.is_none() && !LABEL_KINDS.contains(&kind) {
            bail!("unknown label kind `{kind}` (kinds: {})", LABEL_KINDS.join(", "));
        }
        let at = now_rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let old: Option<String> = tx
            .query_row(
                "SELECT value FROM labels WHERE dataset = ?1 AND record = ?2 AND annotator = ?3 AND kind = ?4",
                params![dataset, record, annotator, kind],
                |r| r.get(0),
            )
            .optional()?;
        let new_s = new.as_ref().map(|v| v.to_string());
        if old == new_s {
            // Nothing changes: no journal entry, and the redo stack stays.
            tx.commit()?;
            return Ok(0);
        }
        write_label(&tx, dataset, record, annotator, kind, new_s.as_deref(), &at)?;
        if kind == "tags"
            && let Some(Value::Array(tags)) = &new
        {
            for t in tags.iter().filter_map(Value::as_str) {
                tx.execute("INSERT OR IGNORE INTO tags (dataset, tag) VALUES (?1, ?2)", params![dataset, t])?;
            }
        }
        // A new change ends the redo stack.
        tx.execute("DELETE FROM journal WHERE dataset = ?1 AND annotator = ?2 AND undone = 1", params![dataset, annotator])?;
        tx.execute(
            "INSERT INTO journal (dataset, record, annotator, kind, old, new, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![dataset, record, annotator, kind, old, new_s, at],
        )?;
        let seq = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO audit (at, annotator, dataset, record, kind, action, old, new) VALUES (?1, ?2, ?3, ?4, ?5, 'set', ?6, ?7)",
            params![at, annotator, dataset, record, kind, old, new_s],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Undo this annotator's latest change on the dataset; None when there is nothing to undo.
    pub fn undo(&mut self, dataset: &str, annotator: &str) -> Result<Option<AuditEntry>> {
        self.step_journal(dataset, annotator, true)
    }

    /// Redo the most recently undone change; None when there is nothing to redo.
    pub fn redo(&mut self, dataset: &str, annotator: &str) -> Result<Option<AuditEntry>> {
        self.step_journal(dataset, annotator, false)
    }

    fn step_journal(&mut self, dataset: &str, annotator: &str, undo: bool) -> Result<Option<AuditEntry>> {
        let at = now_rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sql = if undo {
            "SELECT seq, record, kind, old, new FROM journal WHERE dataset = ?1 AND annotator = ?2 AND undone = 0 ORDER BY seq DESC LIMIT 1"
        } else {
            "SELECT seq, record, kind, old, new FROM journal WHERE dataset = ?1 AND annotator = ?2 AND undone = 1 ORDER BY seq ASC LIMIT 1"
        };
        let row: Option<(i64, String, String, Option<String>, Option<String>)> =
            tx.query_row(sql, params![dataset, annotator], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).optional()?;
        let Some((seq, record, kind, old, new)) = row else { return Ok(None) };
        let (from, to) = if undo { (new, old) } else { (old, new) };
        write_label(&tx, dataset, &record, annotator, &kind, to.as_deref(), &at)?;
        tx.execute("UPDATE journal SET undone = ?1 WHERE seq = ?2", params![undo as i64, seq])?;
        let action = if undo { "undo" } else { "redo" };
        tx.execute(
            "INSERT INTO audit (at, annotator, dataset, record, kind, action, old, new) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![at, annotator, dataset, record, kind, action, from, to],
        )?;
        let entry = AuditEntry {
            seq: tx.last_insert_rowid(),
            at,
            annotator: annotator.into(),
            dataset: dataset.into(),
            record,
            kind,
            action: action.into(),
            old: parse_opt(from),
            new: parse_opt(to),
        };
        tx.commit()?;
        Ok(Some(entry))
    }

    /// Current labels of a dataset (one annotator, or everyone).
    pub fn labels(&self, dataset: &str, annotator: Option<&str>) -> Result<Vec<Label>> {
        let mut st = self.conn.prepare(
            "SELECT record, annotator, kind, value, updated_at FROM labels WHERE dataset = ?1 AND (?2 IS NULL OR annotator = ?2)
             ORDER BY record, annotator, kind",
        )?;
        let rows = st.query_map(params![dataset, annotator], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (record, annotator, kind, value, updated_at) = row?;
            out.push(Label { record, annotator, kind, value: serde_json::from_str(&value)?, updated_at });
        }
        Ok(out)
    }

    /// Labels of one record: kind → value (for one annotator, or the latest across annotators).
    pub fn record_labels(&self, dataset: &str, record: &str, annotator: Option<&str>) -> Result<BTreeMap<String, Value>> {
        let mut st = self.conn.prepare(
            "SELECT kind, value FROM labels WHERE dataset = ?1 AND record = ?2 AND (?3 IS NULL OR annotator = ?3) ORDER BY updated_at",
        )?;
        let rows = st.query_map(params![dataset, record, annotator], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, v) = row?;
            out.insert(k, serde_json::from_str(&v)?);
        }
        Ok(out)
    }

    /// Per-record status/rating/tags for filters (latest across annotators when `annotator` is None).
    pub fn label_summaries(&self, dataset: &str, annotator: Option<&str>) -> Result<HashMap<String, LabelSummary>> {
        Ok(summarise_labels(&self.labels(dataset, annotator)?))
    }

    /// The audit trail, newest first, filtered by any of dataset / record / annotator.
    pub fn audit(&self, dataset: Option<&str>, record: Option<&str>, annotator: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut st = self.conn.prepare(
            "SELECT seq, at, annotator, dataset, record, kind, action, old, new FROM audit
             WHERE (?1 IS NULL OR dataset = ?1) AND (?2 IS NULL OR record = ?2) AND (?3 IS NULL OR annotator = ?3)
             ORDER BY seq DESC LIMIT ?4",
        )?;
        let rows = st.query_map(params![dataset, record, annotator, limit as i64], |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                at: r.get(1)?,
                annotator: r.get(2)?,
                dataset: r.get(3)?,
                record: r.get(4)?,
                kind: r.get(5)?,
                action: r.get(6)?,
                old: parse_opt(r.get(7)?),
                new: parse_opt(r.get(8)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn tag_set(&self, dataset: &str) -> Result<Vec<String>> {
        let mut st = self.conn.prepare("SELECT tag FROM tags WHERE dataset = ?1 ORDER BY tag")?;
        Ok(st.query_map([dataset], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }

    pub fn add_tag(&mut self, dataset: &str, tag: &str) -> Result<()> {
        self.require_dataset(dataset)?;
        let tag = tag.trim();
        if tag.is_empty() {
            bail!("a tag cannot be empty");
        }
        self.conn.execute("INSERT OR IGNORE INTO tags (dataset, tag) VALUES (?1, ?2)", params![dataset, tag])?;
        Ok(())
    }

    /// Store drafted responses for a record (one transaction). Returns their ids.
    pub fn add_candidates(&mut self, dataset: &str, record: &str, model: &str, texts: &[String], params_: &Value) -> Result<Vec<i64>> {
        self.require_dataset(dataset)?;
        let at = now_rfc3339();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ids = Vec::new();
        for t in texts {
            tx.execute(
                "INSERT INTO candidates (dataset, record, model, text, params, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![dataset, record, model, t, params_.to_string(), at],
            )?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit()?;
        Ok(ids)
    }

    pub fn candidates(&self, dataset: &str, record: Option<&str>) -> Result<Vec<Candidate>> {
        let mut st = self.conn.prepare(
            "SELECT id, record, model, text, params, created_at FROM candidates WHERE dataset = ?1 AND (?2 IS NULL OR record = ?2) ORDER BY id",
        )?;
        let rows = st.query_map(params![dataset, record], |r| {
            Ok(Candidate {
                id: r.get(0)?,
                record: r.get(1)?,
                model: r.get(2)?,
                text: r.get(3)?,
                params: parse_opt(r.get(4)?).unwrap_or(Value::Null),
                created_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Pairs waiting for this annotator's verdict: each record's first two candidates, or
    /// else its `chosen`/`rejected` (or two response-like) columns, where no pair label exists.
    pub fn pair_queue(&self, dataset: &str, annotator: &str) -> Result<Vec<(String, String, String)>> {
        let v = self.version(dataset, None)?;
        let labelled: BTreeSet<String> =
            self.labels(dataset, Some(annotator))?.into_iter().filter(|l| l.kind == "pair").map(|l| l.record).collect();
        let mut by_record: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for c in self.candidates(dataset, None)? {
            by_record.entry(c.record).or_default().push(c.id);
        }
        let mut out = Vec::new();
        let ids = self.record_ids(dataset)?;
        let column_pair = match (&v.roles.chosen, &v.roles.rejected) {
            (Some(a), Some(b)) => Some((a.clone(), b.clone())),
            _ => None,
        };
        for id in ids {
            if labelled.contains(&id) {
                continue;
            }
            if let Some(c) = by_record.get(&id).filter(|c| c.len() >= 2) {
                out.push((id, format!("cand:{}", c[0]), format!("cand:{}", c[1])));
            } else if let Some((a, b)) = &column_pair {
                out.push((id, format!("col:{a}"), format!("col:{b}")));
            }
        }
        Ok(out)
    }

    /// The text a source names, for a record of `table`.
    pub fn source_text(&self, table: &Table, row: usize, source: &str) -> Result<String> {
        if let Some(col) = source.strip_prefix("col:") {
            return Ok(match table.value(row, col)? {
                Value::String(s) => s,
                Value::Null => String::new(),
                v => v.to_string(),
            });
        }
        let id: i64 = source.strip_prefix("cand:").and_then(|n| n.parse().ok()).ok_or_else(|| anyhow!("bad source `{source}`"))?;
        self.conn
            .query_row("SELECT text FROM candidates WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| anyhow!("candidate {id} not found"))
    }

    /// A new version of `dataset` with label columns (`label_status`, `label_rating`,
    /// `label_tags`, `label_note`) and edits applied to the response column (originals kept
    /// in `<response>_original`). With no annotator, the latest label across annotators wins.
    pub fn commit_labels(&mut self, dataset: &str, annotator: Option<&str>) -> Result<VersionInfo> {
        let (v, mut table) = self.load(dataset, None)?;
        let mut labels = self.labels(dataset, annotator)?;
        if labels.is_empty() {
            bail!("dataset `{dataset}` has no labels{} to commit", annotator.map(|a| format!(" by {a}")).unwrap_or_default());
        }
        labels.sort_by(|a, b| a.updated_at.cmp(&b.updated_at));
        let mut latest: HashMap<(String, String), Value> = HashMap::new();
        for l in labels {
            latest.insert((l.record, l.kind), l.value);
        }
        let ids = table.ids()?;
        let col = |kind: &str, json_text: bool| -> Vec<Option<String>> {
            ids.iter()
                .map(|id| {
                    latest.get(&(id.clone(), kind.to_string())).map(|v| match v {
                        Value::String(s) if !json_text => s.clone(),
                        other => other.to_string(),
                    })
                })
                .collect()
        };
        table.set_text_column("label_status", col("status", false), ColumnKind::Text)?;
        table.set_text_column("label_rating", col("rating", true), ColumnKind::Json)?;
        table.set_text_column("label_tags", col("tags", true), ColumnKind::Json)?;
        table.set_text_column("label_note", col("note", false), ColumnKind::Text)?;
        let edits = col("edit", false);
        let n_edits = edits.iter().flatten().count();
        let had_edits = v.roles.response.as_ref().is_some_and(|r| table.kind(&format!("{r}_original")).is_some());
        if n_edits > 0 || had_edits {
            let resp = v.roles.response.clone().ok_or_else(|| anyhow!("edits need a response column; map one first"))?;
            let kind = table.kind(&resp).unwrap_or(ColumnKind::Text);
            if kind != ColumnKind::Text {
                bail!("column `{resp}` holds JSON values, not text; edits apply to text responses only");
            }
            // Always merge onto the original answers, so a removed edit brings the original back.
            let keep = format!("{resp}_original");
            let source = if table.kind(&keep).is_some() { keep.clone() } else { resp.clone() };
            let original: Vec<Option<String>> = table.text(&source)?.iter().map(|s| s.map(str::to_string)).collect();
            let merged: Vec<Option<String>> = original.iter().zip(&edits).map(|(o, e)| e.clone().or_else(|| o.clone())).collect();
            if table.kind(&keep).is_none() {
                table.set_text_column(&keep, original, kind)?;
            }
            table.set_text_column(&resp, merged, ColumnKind::Text)?;
        }
        let mut roles = v.roles.clone();
        if roles.label.is_none() {
            roles.label = Some("label_status".into());
        }
        if roles.score.is_none() {
            roles.score = Some("label_rating".into());
        }
        let detail = json!({ "annotator": annotator, "labels": latest.len(), "edits": n_edits, "from_version": v.version });
        self.commit_version(dataset, Some(v.version), &table, roles, "labels", detail)
    }

    /// Turn pair and rank verdicts into a preference dataset (`<dataset>-preferences`, a new
    /// version each time) with prompt/chosen/rejected columns for reward-model and DPO training.
    pub fn commit_preferences(&mut self, dataset: &str, annotator: Option<&str>) -> Result<VersionInfo> {
        let (v, table) = self.load(dataset, None)?;
        let prompt_col = v.roles.prompt.clone().ok_or_else(|| anyhow!("dataset `{dataset}` has no prompt column; map one first"))?;
        let row_of: HashMap<String, usize> = table.ids()?.into_iter().enumerate().map(|(i, id)| (id, i)).collect();
        let mut rows: Vec<serde_json::Map<String, Value>> = Vec::new();
        let mut labels = self.labels(dataset, annotator)?;
        labels.sort_by(|a, b| (&a.record, &a.updated_at).cmp(&(&b.record, &b.updated_at)));
        for l in labels.iter().filter(|l| l.kind == "pair" || l.kind == "rank") {
            let Some(&row) = row_of.get(&l.record) else { continue };
            let prompt = self.source_text(&table, row, &format!("col:{prompt_col}"))?;
            let mut pairs: Vec<(String, String)> = Vec::new();
            if l.kind == "pair" {
                let (a, b) = (l.value["a"].as_str().unwrap_or(""), l.value["b"].as_str().unwrap_or(""));
                match l.value["verdict"].as_str() {
                    Some("a") => pairs.push((a.into(), b.into())),
                    Some("b") => pairs.push((b.into(), a.into())),
                    _ => {} // ties and both-bad carry no preference
                }
            } else {
                let order: Vec<String> =
                    l.value["order"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect();
                for i in 0..order.len() {
                    for j in i + 1..order.len() {
                        pairs.push((order[i].clone(), order[j].clone()));
                    }
                }
            }
            for (c, r) in pairs {
                let mut m = serde_json::Map::new();
                m.insert("prompt".into(), json!(prompt));
                m.insert("chosen".into(), json!(self.source_text(&table, row, &c)?));
                m.insert("rejected".into(), json!(self.source_text(&table, row, &r)?));
                m.insert("source_record".into(), json!(l.record));
                m.insert("annotator".into(), json!(l.annotator));
                rows.push(m);
            }
        }
        if rows.is_empty() {
            bail!("no pair or ranking verdicts with a preference in `{dataset}` yet");
        }
        let out = Table::from_records(&rows, None)?;
        let roles =
            Roles { prompt: Some("prompt".into()), chosen: Some("chosen".into()), rejected: Some("rejected".into()), ..Default::default() };
        let name = format!("{dataset}-preferences");
        let parent = self.version(&name, None).ok().map(|p| p.version);
        let detail = json!({ "from_dataset": dataset, "from_version": v.version, "annotator": annotator, "pairs": rows.len() });
        self.commit_version(&name, parent, &out, roles, "preferences", detail)
    }

    /// Agreement between annotators on one label kind (status, rating, pair verdict).
    pub fn agreement(&self, dataset: &str, kind: &str) -> Result<Agreement> {
        let labels = self.labels(dataset, None)?;
        let value_of = |v: &Value| -> String {
            match kind {
                "pair" => v["verdict"].as_str().unwrap_or("").to_string(),
                _ => match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            }
        };
        let mut by_item: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut annotators = BTreeSet::new();
        for l in labels.iter().filter(|l| l.kind == kind) {
            annotators.insert(l.annotator.clone());
            by_item.entry(l.record.clone()).or_default().insert(l.annotator.clone(), value_of(&l.value));
        }
        let annotators: Vec<String> = annotators.into_iter().collect();
        let mut pairwise = Vec::new();
        for i in 0..annotators.len() {
            for j in i + 1..annotators.len() {
                let (a, b): (Vec<&str>, Vec<&str>) =
                    by_item.values().filter_map(|m| Some((m.get(&annotators[i])?.as_str(), m.get(&annotators[j])?.as_str()))).unzip();
                if !a.is_empty() {
                    pairwise.push((annotators[i].clone(), annotators[j].clone(), a.len(), cohen_kappa(&a, &b)));
                }
            }
        }
        // Fleiss: items every annotator labelled.
        let categories: Vec<String> = by_item.values().flat_map(|m| m.values().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        let full: Vec<Vec<usize>> = by_item
            .values()
            .filter(|m| annotators.len() >= 2 && m.len() == annotators.len())
            .map(|m| categories.iter().map(|c| m.values().filter(|v| *v == c).count()).collect())
            .collect();
        Ok(Agreement {
            kind: kind.into(),
            annotators: annotators.clone(),
            items: by_item.len(),
            items_all_annotators: full.len(),
            fleiss: if full.is_empty() { None } else { Some(fleiss_kappa(&full)) },
            pairwise,
        })
    }
}

/// Per-record status/rating/tags from a list of labels (the latest value wins).
pub fn summarise_labels(labels: &[Label]) -> HashMap<String, LabelSummary> {
    let mut labels: Vec<&Label> = labels.iter().collect();
    labels.sort_by(|a, b| a.updated_at.cmp(&b.updated_at));
    let mut out: HashMap<String, LabelSummary> = HashMap::new();
    for l in labels {
        let s = out.entry(l.record.clone()).or_default();
        match l.kind.as_str() {
            "status" => s.status = l.value.as_str().map(str::to_string),
            "rating" => s.rating = l.value.as_u64().map(|r| r as u8),
            "tags" => {
                s.tags = l.value.as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect()).unwrap_or_default()
            }
            _ => {}
        }
    }
    out
}

fn write_label(
    tx: &rusqlite::Transaction,
    dataset: &str,
    record: &str,
    annotator: &str,
    kind: &str,
    value: Option<&str>,
    at: &str,
) -> Result<()> {
    match value {
        Some(v) => tx.execute(
            "INSERT INTO labels (dataset, record, annotator, kind, value, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (dataset, record, annotator, kind) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![dataset, record, annotator, kind, v, at],
        )?,
        None => tx.execute(
            "DELETE FROM labels WHERE dataset = ?1 AND record = ?2 AND annotator = ?3 AND kind = ?4",
            params![dataset, record, annotator, kind],
        )?,
    };
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub kind: String,
    pub annotators: Vec<String>,
    pub items: usize,
    pub items_all_annotators: usize,
    /// Fleiss' kappa over the items every annotator labelled.
    pub fleiss: Option<f64>,
    /// (annotator, annotator, shared items, Cohen's kappa).
    pub pairwise: Vec<(String, String, usize, f64)>,
}

/// Cohen's kappa of two raters' categorical labels on the same items.
/// κ = (p_o − p_e) / (1 − p_e); 1.0 when both raters always use one and the same category.
pub fn cohen_kappa(a: &[&str], b: &[&str]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    if a.is_empty() {
        return f64::NAN;
    }
    let po = a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n;
    let mut ca: HashMap<&str, f64> = HashMap::new();
    let mut cb: HashMap<&str, f64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *ca.entry(x).or_default() += 1.0;
        *cb.entry(y).or_default() += 1.0;
    }
    let pe: f64 = ca.iter().map(|(k, v)| v / n * cb.get(k).copied().unwrap_or(0.0) / n).sum();
    if (1.0 - pe).abs() < 1e-12 {
        return if (po - 1.0).abs() < 1e-12 { 1.0 } else { 0.0 };
    }
    (po - pe) / (1.0 - pe)
}

/// Fleiss' kappa: `counts[i][j]` = raters who put item i in category j (same rater count per item).
pub fn fleiss_kappa(counts: &[Vec<usize>]) -> f64 {
    let n_items = counts.len() as f64;
    let raters = counts.first().map_or(0, |r| r.iter().sum::<usize>()) as f64;
    if counts.is_empty() || raters < 2.0 {
        return f64::NAN;
    }
    let k = counts[0].len();
    let p_j: Vec<f64> = (0..k).map(|j| counts.iter().map(|r| r[j] as f64).sum::<f64>() / (n_items * raters)).collect();
    let p_bar =
        counts.iter().map(|r| (r.iter().map(|&c| (c * c) as f64).sum::<f64>() - raters) / (raters * (raters - 1.0))).sum::<f64>() / n_items;
    let pe: f64 = p_j.iter().map(|p| p * p).sum();
    if (1.0 - pe).abs() < 1e-12 {
        return if (p_bar - 1.0).abs() < 1e-12 { 1.0 } else { 0.0 };
    }
    (p_bar - pe) / (1.0 - pe)
}
