//! Taking a run away: an HF folder (full fine-tune, or LoRA merged into the base), the PEFT
//! adapter alone, or a reward model in HF's sequence-classification layout.

use std::path::Path;

use anyhow::Result;
use burn::tensor::Device;
use serde::Serialize;

use super::reward::load_reward_model;
use super::{Method, RunInfo, load_trained};
use crate::io::safetensors::SaveDtype;

/// What `export` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// A full HF folder (full fine-tune, or LoRA merged into the base).
    HfFolder,
    /// A PEFT adapter folder.
    PeftAdapter,
}

/// Export a run: an HF folder (LoRA merged when `merge`), or the PEFT adapter alone.
pub fn export_run(run_dir: &Path, out: &Path, merge: bool, dtype: SaveDtype) -> Result<ExportKind> {
    if RunInfo::read(run_dir)?.method == Method::Reward {
        let (rm, base) = load_reward_model(run_dir, &Device::flex())?;
        rm.merged(&base.config).save_hf(out, &base)?;
        return Ok(ExportKind::HfFolder);
    }
    let (lm, info) = load_trained(run_dir, &Device::flex())?;
    match (&info.lora, merge) {
        (Some(l), false) => {
            crate::model::lora::save_peft(&lm.model, l, &info.model.display().to_string(), out)?;
            Ok(ExportKind::PeftAdapter)
        }
        _ => {
            lm.save_hf(out, dtype)?;
            Ok(ExportKind::HfFolder)
        }
    }
}
