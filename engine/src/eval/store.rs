//! Stored evaluation results: `evals/<id>/result.json` in the workspace and a row in its
//! `evals` table (`data::evals`), so the CLI and the Evaluate panel read and write the same.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::score::EvalResult;
use crate::data::Workspace;
use crate::data::evals::EvalRow;

impl EvalResult {
    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// Write `result.json` into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let p = dir.join(&self.id).join("result.json");
        crate::io::atomic_write(&p, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(p)
    }
}

/// A stored evaluation, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalListing {
    pub id: String,
    pub suite: String,
    pub models: String,
    pub dataset: String,
    pub created_at: String,
    pub summary: Value,
}

impl Workspace {
    /// Store an evaluation result: `evals/<id>/result.json` and a row in the `evals` table.
    pub fn save_eval(&mut self, r: &EvalResult) -> Result<PathBuf> {
        let path = r.write(&self.root().join("evals"))?;
        let rel = path.strip_prefix(self.root()).unwrap_or(&path).display().to_string();
        self.insert_eval_row(&EvalRow {
            suite: r.suite.clone(),
            models: r.model_names().join(", "),
            dataset: r.dataset["name"].as_str().or_else(|| r.dataset["path"].as_str()).unwrap_or("").to_string(),
            version: r.dataset["version"].as_i64().unwrap_or(0),
            summary: serde_json::to_string(&r.summary)?,
            file: rel,
            created_at: r.created_at.clone(),
        })?;
        Ok(path)
    }

    pub fn evals(&self) -> Result<Vec<EvalListing>> {
        Ok(self
            .eval_rows()?
            .into_iter()
            .map(|r| EvalListing {
                id: Path::new(&r.file).parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                suite: r.suite,
                models: r.models,
                dataset: r.dataset,
                created_at: r.created_at,
                summary: serde_json::from_str(&r.summary).unwrap_or(Value::Null),
            })
            .collect())
    }

    pub fn load_eval(&self, id: &str) -> Result<EvalResult> {
        let p = self.root().join("evals").join(id).join("result.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("evaluation `{id}` not found ({})", p.display()))?;
        serde_json::from_str(&text).with_context(|| p.display().to_string())
    }
}
