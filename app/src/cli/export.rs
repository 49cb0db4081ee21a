use std::path::PathBuf;

use anyhow::Result;
use whetstone_engine::io::safetensors::SaveDtype;
use whetstone_engine::runs::export::{ExportKind, export_run};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder (runs/<id>).
    pub run_dir: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// For LoRA runs: merge the adapter into the base and write a full HF folder.
    #[arg(long)]
    pub merge: bool,
    /// Storage dtype of a full export: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn run(a: Args) -> Result<()> {
    let kind = export_run(&a.run_dir, &a.out, a.merge, SaveDtype::parse(&a.dtype)?)?;
    match kind {
        ExportKind::HfFolder => println!("wrote HF model folder {}", a.out.display()),
        ExportKind::PeftAdapter => println!("wrote PEFT adapter {} (use --merge for a full model)", a.out.display()),
    }
    Ok(())
}
