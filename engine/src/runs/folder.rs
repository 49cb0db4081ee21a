//! A run folder: `job.toml`, `metrics.jsonl`, `run.json` and `checkpoints/step-NNNNNNN/`.
//! Created exclusively (two runs never share one), resumed from its newest complete checkpoint,
//! and checkpointed atomically: a checkpoint is written into a temp folder, renamed into place,
//! the parent folder fsynced, and only then are old checkpoints beyond the kept number removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::card::RunCard;
use super::events::truncate_metrics;
use crate::io::safetensors::{SaveDtype, write_safetensors};
use crate::io::{HostTensor, atomic_write};
use crate::model::params::read_all;

/// Saved progress (`state.json`): the steps done, where in the data, and any method state that
/// is not a tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub tokens_seen: usize,
    #[serde(default)]
    pub elapsed_seconds: f64,
    /// Completed steps of each optimiser, by name (its moments are `<name>.safetensors`).
    #[serde(default)]
    pub optimizers: BTreeMap<String, u64>,
    /// Method state that is not a tensor (PPO's reward average, …).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// An f16 job's dynamic loss scale and its good steps since the last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<(f64, u64)>,
}

impl TrainState {
    /// Read `state.json`, including the two layouts written before checkpoints were unified
    /// (`optimizer_step`, `<name>_step` and loose method keys at the top level).
    pub fn from_json(text: &str, file: &Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).with_context(|| format!("{}: not JSON", file.display()))?;
        let o = v.as_object().ok_or_else(|| anyhow!("{}: expected an object", file.display()))?;
        if o.contains_key("optimizers") {
            return serde_json::from_value(v.clone()).with_context(|| format!("{}: bad checkpoint state", file.display()));
        }
        let count = |k: &str| -> Result<usize> {
            let x = o.get(k).and_then(|x| x.as_u64()).ok_or_else(|| anyhow!("{}: `{k}` missing", file.display()))?;
            usize::try_from(x).map_err(|_| anyhow!("{}: `{k}` too large", file.display()))
        };
        let mut s = TrainState {
            step: count("step")?,
            tokens_seen: count("tokens_seen")?,
            elapsed_seconds: o.get("elapsed_seconds").and_then(|x| x.as_f64()).unwrap_or(0.0),
            ..Default::default()
        };
        for (k, val) in o {
            match k.as_str() {
                "step" | "tokens_seen" | "elapsed_seconds" => {}
                "optimizer_step" => {
                    s.optimizers.insert("optimizer".into(), val.as_u64().unwrap_or(0));
                }
                _ => match k.strip_suffix("_step") {
                    Some(name) if val.is_u64() => {
                        s.optimizers.insert(name.to_string(), val.as_u64().unwrap_or(0));
                    }
                    _ => {
                        let key = if k == "ppo_steps_done" { "steps_done" } else { k.as_str() };
                        s.extra.insert(key.to_string(), val.clone());
                    }
                },
            }
        }
        Ok(s)
    }
}

/// Everything a checkpoint holds: the state, and tensor groups by file stem (`trainable`, the
/// optimisers' moments, a critic, …).
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub state: TrainState,
    pub tensors: BTreeMap<String, BTreeMap<String, HostTensor>>,
}

impl Checkpoint {
    /// A tensor group, or an error naming the checkpoint.
    pub fn group(&self, name: &str) -> Result<&BTreeMap<String, HostTensor>> {
        self.tensors.get(name).ok_or_else(|| anyhow!("checkpoint has no `{name}.safetensors`"))
    }

    /// Read a checkpoint folder: `state.json` and every `*.safetensors` in it.
    pub fn read(dir: &Path) -> Result<Self> {
        let sp = dir.join("state.json");
        let text = std::fs::read_to_string(&sp).with_context(|| format!("{}: cannot read", sp.display()))?;
        let state = TrainState::from_json(&text, &sp)?;
        let mut tensors = BTreeMap::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                let stem = p.file_stem().and_then(|s| s.to_str()).ok_or_else(|| anyhow!("{}: bad file name", p.display()))?.to_string();
                tensors.insert(stem, read_all(&p)?);
            }
        }
        Ok(Self { state, tensors })
    }
}

/// `checkpoints/step-NNNNNNN` of `run_dir`.
pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:07}"))
}

/// Complete checkpoints of a run, oldest first.
pub fn checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(run_dir.join("checkpoints")) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")) && p.join("state.json").exists())
        .collect();
    v.sort();
    v
}

/// The newest complete checkpoint of a run.
pub fn latest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    checkpoints(run_dir).pop()
}

/// Is `name` a run name that stays inside its output folder (no separators, not `.`/`..`)?
pub fn check_run_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 120
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name.chars().all(|c| !c.is_control() && !matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'));
    if !ok {
        bail!("run name {name:?}: use up to 120 letters, digits, spaces, '-', '_' or '.', not starting with '.' and without '/' or '\\'");
    }
    Ok(())
}

/// An open run folder.
pub struct RunDir {
    pub dir: PathBuf,
    pub id: String,
}

impl RunDir {
    /// Create `<output>/<id>/` (it must not exist yet) and write its `job.toml`.
    pub fn create(output: &Path, id: &str, job_toml: &str) -> Result<Self> {
        check_run_name(id)?;
        std::fs::create_dir_all(output).with_context(|| format!("{}: cannot create", output.display()))?;
        let dir = output.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                bail!("{}: run already exists; use --resume to continue it or choose another name", dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot create run folder", dir.display())),
        }
        atomic_write(&dir.join("job.toml"), job_toml.as_bytes())?;
        Ok(Self { dir, id: id.to_string() })
    }

    /// Open a run folder to continue it from its newest checkpoint; `metrics.jsonl` is cut back
    /// to that checkpoint's step (the steps after it run again).
    pub fn resume(dir: &Path) -> Result<(Self, Checkpoint)> {
        let ck = latest_checkpoint(dir).ok_or_else(|| anyhow!("{}: no checkpoint to resume from", dir.display()))?;
        let checkpoint = Checkpoint::read(&ck)?;
        truncate_metrics(&dir.join("metrics.jsonl"), checkpoint.state.step)?;
        let id = dir.file_name().and_then(|n| n.to_str()).unwrap_or("run").to_string();
        Ok((Self { dir: dir.to_path_buf(), id }, checkpoint))
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// Write a checkpoint atomically, then keep only the newest `keep` (0: all). Returns its
    /// folder.
    pub fn write_checkpoint(&self, ck: &Checkpoint, keep: usize) -> Result<PathBuf> {
        let step = ck.state.step;
        let parent = self.dir.join("checkpoints");
        let dst = checkpoint_dir(&self.dir, step);
        let tmp = parent.join(format!(".tmp-step-{step:07}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        for (name, tensors) in &ck.tensors {
            write_safetensors(&tmp.join(format!("{name}.safetensors")), tensors, SaveDtype::F32, None)?;
        }
        atomic_write(&tmp.join("state.json"), serde_json::to_string_pretty(&ck.state)?.as_bytes())?;
        fsync_dir(&tmp)?;
        if dst.exists() {
            std::fs::remove_dir_all(&dst).with_context(|| format!("{}: cannot replace", dst.display()))?;
        }
        std::fs::rename(&tmp, &dst).with_context(|| format!("{}: cannot finalise checkpoint", dst.display()))?;
        fsync_dir(&parent)?;
        if keep > 0 {
            let all = checkpoints(&self.dir);
            for old in all.iter().take(all.len().saturating_sub(keep)) {
                std::fs::remove_dir_all(old).with_context(|| format!("{}: cannot remove old checkpoint", old.display()))?;
            }
        }
        Ok(dst)
    }

    /// Write `run.json`.
    pub fn write_card(&self, card: &RunCard) -> Result<()> {
        atomic_write(&self.dir.join("run.json"), serde_json::to_string_pretty(card)?.as_bytes())
    }
}

/// fsync a folder, so a rename inside it survives a power cut.
fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("{}: fsync failed", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_state_layouts_are_read() {
        let p = Path::new("state.json");
        let sft = TrainState::from_json(r#"{"step": 4, "optimizer_step": 4, "tokens_seen": 90, "elapsed_seconds": 1.5}"#, p).unwrap();
        assert_eq!((sft.step, sft.tokens_seen, sft.optimizers["optimizer"], sft.elapsed_seconds), (4, 90, 4, 1.5));
        let ppo = TrainState::from_json(
            r#"{"step": 2, "tokens_seen": 7, "optimizer_step": 2, "critic_optimizer_step": 2, "reward_ema": 0.5, "ppo_steps_done": 2}"#,
            p,
        )
        .unwrap();
        assert_eq!(ppo.optimizers.len(), 2);
        assert_eq!(ppo.extra["reward_ema"], 0.5);
        assert_eq!(ppo.extra["steps_done"], 2);
        let new = serde_json::to_string(&ppo).unwrap();
        assert_eq!(TrainState::from_json(&new, p).unwrap(), ppo);
    }

    #[test]
    fn run_names_stay_inside_the_output_folder() {
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "a\\b", ".hidden", "x\0"] {
            assert!(check_run_name(bad).is_err(), "{bad:?}");
        }
        for good in ["sft-1", "triage lora", "临床-v2", "a.b"] {
            check_run_name(good).unwrap();
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_creation_is_exclusive() {
        let out = tempfile::tempdir().unwrap();
        let run = RunDir::create(out.path(), "r", "method = \"sft\"\n").unwrap();
        assert!(RunDir::create(out.path(), "r", "").is_err(), "a second run with the same name");
        let t = BTreeMap::from([("w".to_string(), HostTensor::new(vec![2], vec![1.0, 2.0]))]);
        for step in 1..=5 {
            let ck = Checkpoint {
                state: TrainState { step, ..Default::default() },
                tensors: BTreeMap::from([("trainable".to_string(), t.clone())]),
            };
            run.write_checkpoint(&ck, 2).unwrap();
        }
        let left: Vec<String> = checkpoints(&run.dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(left, ["step-0000004", "step-0000005"]);
        let back = Checkpoint::read(&latest_checkpoint(&run.dir).unwrap()).unwrap();
        assert_eq!(back.state.step, 5);
        assert_eq!(back.group("trainable").unwrap()["w"].data, [1.0, 2.0]);
    }
}
