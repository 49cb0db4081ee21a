//! What a job or a suite trains or evaluates on: a data file, or a dataset version in a
//! workspace, with the column roles in force, the content hash for provenance, and the seeded
//! held-out split and per-epoch order every method uses.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::import::{ROLE_NAMES, Roles};
use super::records::{Record, read_records};

/// `[dataset]` of a job or a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// JSONL, JSON, CSV, TSV or Parquet, or a workspace folder.
    pub path: PathBuf,
    /// Column → role mapping (`prompt = "question"`, …); unset roles are guessed from column
    /// names, and for a workspace dataset come from its saved mapping.
    #[serde(flatten)]
    pub roles: Roles,
    /// Share of examples held out for evaluation (seeded split).
    #[serde(default)]
    pub validation_fraction: f64,
    /// When `path` is a workspace folder: the dataset to use …
    #[serde(default)]
    pub name: Option<String>,
    /// … and its version (the latest when unset).
    #[serde(default)]
    pub version: Option<u32>,
    /// Use only rows whose `split` column holds this value (e.g. "train").
    #[serde(default)]
    pub split: Option<String>,
}

/// The rows a job trains on, the roles in force and where they came from.
pub struct DatasetData {
    pub records: Vec<Record>,
    pub roles: Roles,
    pub sha256: String,
    /// Provenance for run.json.
    pub card: serde_json::Value,
}

impl DatasetSpec {
    /// A data file with guessed roles and no held-out split.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), roles: Roles::default(), validation_fraction: 0.0, name: None, version: None, split: None }
    }

    /// Whether `path` names a workspace folder rather than a data file.
    pub fn is_workspace(&self) -> bool {
        self.path.join(super::workspace::CONFIG_FILE).is_file()
    }

    /// Check what can be checked without reading the data.
    pub fn validate(&self) -> Result<()> {
        if !self.path.exists() {
            bail!("dataset not found: {}", self.path.display());
        }
        if self.path.is_dir() && !self.is_workspace() {
            bail!("dataset.path {} is a folder but not a Whetstone workspace", self.path.display());
        }
        if self.is_workspace() && self.name.is_none() {
            bail!("dataset.path {} is a workspace: name the dataset with dataset.name = \"…\"", self.path.display());
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            bail!("dataset.validation_fraction must be in [0, 1)");
        }
        Ok(())
    }

    /// Load the rows: from a data file, or from a workspace dataset version. Roles set in the
    /// spec override the roles mapped in the workspace.
    pub fn load(&self) -> Result<DatasetData> {
        let (mut records, roles, sha256, mut card) = if self.is_workspace() {
            let name = self.name.as_deref().ok_or_else(|| {
                anyhow!("dataset.path {} is a workspace: name the dataset with dataset.name = \"…\"", self.path.display())
            })?;
            let ws = super::Workspace::open(&self.path)?;
            let (v, table) = ws.load(name, self.version)?;
            let mut roles = v.roles.clone();
            for role in ROLE_NAMES {
                if let Some(c) = self.roles.get(role) {
                    roles.set_unchecked(role, Some(c.clone()));
                }
            }
            let card = serde_json::json!({"workspace": self.path, "name": name, "version": v.version, "sha256": v.sha256});
            // Keep each row's workspace id, so evaluation items and labels refer to the same rows.
            let ids = table.ids()?;
            let mut records = table.records()?;
            for (r, id) in records.iter_mut().zip(ids) {
                r.insert(super::ID_COLUMN.to_string(), serde_json::Value::String(id));
            }
            (records, roles, v.sha256, card)
        } else {
            let sha = crate::io::hash::sha256_file(&self.path)?;
            (read_records(&self.path)?, self.roles.clone(), sha.clone(), serde_json::json!({"path": self.path, "sha256": sha}))
        };
        if let Some(split) = &self.split {
            let before = records.len();
            records.retain(|r| r.get("split").and_then(|v| v.as_str()) == Some(split.as_str()));
            if before > 0 && records.is_empty() {
                bail!("{}: no rows with split = {split:?} (does the dataset have a `split` column?)", self.path.display());
            }
            card["split"] = serde_json::json!(split);
        }
        Ok(DatasetData { records, roles, sha256, card })
    }
}

/// A seeded held-out split of `n` examples: (training indices in order, held-out indices). A
/// positive fraction holds out at least one example and keeps at least one for training.
pub fn held_out_split(n: usize, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut idx: Vec<usize> = (0..n).collect();
    if fraction <= 0.0 {
        return Ok((idx, Vec::new()));
    }
    if n < 2 {
        bail!(
            "dataset.validation_fraction: {n} example(s) cannot be split into training and held-out parts; use at least 2 or set it to 0"
        );
    }
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5B17));
    let n_eval = (((n as f64) * fraction).round() as usize).clamp(1, n - 1);
    let eval = idx[..n_eval].to_vec();
    let mut train = idx[n_eval..].to_vec();
    train.sort_unstable();
    Ok((train, eval))
}

/// Order of training examples in `epoch` (seeded, independent of earlier epochs), so a resumed
/// run needs only its step count to continue where it was.
pub fn epoch_order(train: &[usize], epoch: usize, seed: u64) -> Vec<usize> {
    let mut v = train.to_vec();
    v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_of_small_datasets_never_panic() {
        for n in 0..=5 {
            for f in [0.0, 0.01, 0.5, 0.99] {
                match held_out_split(n, f, 7) {
                    Ok((train, eval)) => {
                        assert_eq!(train.len() + eval.len(), n);
                        if f > 0.0 {
                            assert!(!train.is_empty() && !eval.is_empty(), "n={n} f={f}");
                        }
                    }
                    Err(e) => assert!(f > 0.0 && n < 2, "n={n} f={f}: {e}"),
                }
            }
        }
    }

    #[test]
    fn split_is_seeded_and_epoch_orders_differ() {
        assert_eq!(held_out_split(10, 0.3, 1).unwrap(), held_out_split(10, 0.3, 1).unwrap());
        let t: Vec<usize> = (0..20).collect();
        assert_eq!(epoch_order(&t, 0, 5), epoch_order(&t, 0, 5));
        assert_ne!(epoch_order(&t, 0, 5), epoch_order(&t, 1, 5));
    }
}
