//! The command line: one file per subcommand, each a thin layer of parse → engine call → print.

mod bench;
mod convert;
mod data;
mod devices;
mod eval;
mod export;
mod generate;
mod inspect;
mod score;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use whetstone_engine::Device;

#[derive(Parser, Debug)]
#[command(name = "whetstone", version, about = "Turn an open language model into a domain specialist.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no command, the workbench opens this workspace folder (created if missing).
    #[arg(long, global = false)]
    pub workspace: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the compute devices this build can use.
    Devices(devices::Args),
    /// Describe a model: architecture, size, dtype, context, memory, chat template.
    Inspect(inspect::Args),
    /// Generate text from a prompt, streaming it as it comes.
    Generate(generate::Args),
    /// Per-token log-probabilities of a text, mean NLL and perplexity.
    Score(score::Args),
    /// Write any loaded model (HF folder or GGUF) as an HF folder.
    Convert(convert::Args),
    /// Run a training job (TOML), with progress, checkpoints and resume.
    Train(train::Args),
    /// Export a run: HF folder (LoRA merged with --merge) or the PEFT adapter.
    Export(export::Args),
    /// Evaluate models on a suite (TOML); reports, blind A/B ratings, preferences.
    Eval(eval::Args),
    /// Workspaces and datasets: import, curate, split, export, label.
    Data(data::Args),
    /// Measure speed (see docs/benchmarks.md).
    Bench(bench::Args),
}

/// Options shared by commands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// An HF model folder or a .gguf file.
    pub model: PathBuf,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Expand every weight to f32 (by default, on the CPU, GGUF blocks and bf16/f16 weights stay
    /// as stored and are unpacked a tile at a time).
    #[arg(long)]
    pub f32: bool,
}

impl ModelArgs {
    pub fn device(&self) -> Result<Device> {
        whetstone_engine::device::parse_device(&self.device)
    }

    /// Load the model for inference.
    pub fn load(&self) -> Result<whetstone_engine::model::LoadedModel> {
        let packing = if self.f32 { whetstone_engine::model::Packing::Dense } else { whetstone_engine::model::Packing::Stored };
        whetstone_engine::model::LoadedModel::load_with(&self.model, &self.device()?, packing)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => whetstone::gui::run(whetstone::gui::StartOptions { workspace: cli.workspace, demo_dir: None }),
        Some(Command::Devices(a)) => devices::run(a),
        Some(Command::Inspect(a)) => inspect::run(a),
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Score(a)) => score::run(a),
        Some(Command::Convert(a)) => convert::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Export(a)) => export::run(a),
        Some(Command::Data(a)) => data::run(a),
        Some(Command::Eval(a)) => eval::run(a),
        Some(Command::Bench(a)) => bench::run(a),
    }
}
