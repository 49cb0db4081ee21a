use std::path::PathBuf;

use anyhow::Result;
use whetstone_engine::io::safetensors::SaveDtype;
use whetstone_engine::model::LoadedModel;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn run(a: Args) -> Result<()> {
    let dtype = SaveDtype::parse(&a.dtype)?;
    let m = LoadedModel::load(&a.model.model, &a.model.device()?)?;
    m.save_hf(&a.out, dtype)?;
    println!("wrote {} ({} weights, {})", a.out.display(), m.config.arch.name(), dtype.hf_name());
    Ok(())
}
