//! The `evals` and `votes` tables: stored evaluation results (one row per result, the result
//! itself in `evals/<id>/result.json`) and blind A/B verdicts. All SQL on these two tables is
//! here; `eval::store` and `eval::ab` give it meaning.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::Workspace;
use crate::clock::now_rfc3339;

/// A row of `evals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub suite: String,
    /// Model names, comma-separated.
    pub models: String,
    pub dataset: String,
    pub version: i64,
    /// The per-model summary as JSON.
    pub summary: String,
    /// `evals/<id>/result.json`, relative to the workspace.
    pub file: String,
    pub created_at: String,
}

/// One blind A/B verdict (a row of `votes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub id: i64,
    pub eval_id: String,
    pub item: String,
    /// The model shown on the left (A) and on the right (B).
    pub model_a: String,
    pub model_b: String,
    /// a, b, tie or both_bad.
    pub verdict: String,
    pub annotator: String,
    pub at: String,
}

impl Workspace {
    pub fn insert_eval_row(&mut self, r: &EvalRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO evals (suite, model, dataset, version, summary, file, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![r.suite, r.models, r.dataset, r.version, r.summary, r.file, r.created_at],
        )?;
        Ok(())
    }

    /// Every stored evaluation, oldest first.
    pub fn eval_rows(&self) -> Result<Vec<EvalRow>> {
        let mut st = self.conn.prepare("SELECT suite, model, dataset, version, summary, file, created_at FROM evals ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(EvalRow {
                suite: r.get(0)?,
                models: r.get(1)?,
                dataset: r.get(2)?,
                version: r.get(3)?,
                summary: r.get(4)?,
                file: r.get(5)?,
                created_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Record a verdict; returns its id.
    pub fn add_vote(&mut self, eval_id: &str, item: &str, model_a: &str, model_b: &str, verdict: &str, annotator: &str) -> Result<i64> {
        if !super::labels::VERDICTS.contains(&verdict) {
            bail!("verdict must be one of {}", super::labels::VERDICTS.join(", "));
        }
        self.conn.execute(
            "INSERT INTO votes (eval_id, item, model_a, model_b, verdict, annotator, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![eval_id, item, model_a, model_b, verdict, annotator, now_rfc3339()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Remove this annotator's latest vote on an evaluation (undo).
    pub fn undo_vote(&mut self, eval_id: &str, annotator: &str) -> Result<Option<Vote>> {
        let last = self.votes(eval_id)?.into_iter().rfind(|v| v.annotator == annotator);
        if let Some(v) = &last {
            self.conn.execute("DELETE FROM votes WHERE id = ?1", [v.id])?;
        }
        Ok(last)
    }

    /// The verdicts on an evaluation, in the order they were given.
    pub fn votes(&self, eval_id: &str) -> Result<Vec<Vote>> {
        let mut st = self
            .conn
            .prepare("SELECT id, eval_id, item, model_a, model_b, verdict, annotator, at FROM votes WHERE eval_id = ?1 ORDER BY id")?;
        let rows = st.query_map([eval_id], |r| {
            Ok(Vote {
                id: r.get(0)?,
                eval_id: r.get(1)?,
                item: r.get(2)?,
                model_a: r.get(3)?,
                model_b: r.get(4)?,
                verdict: r.get(5)?,
                annotator: r.get(6)?,
                at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
