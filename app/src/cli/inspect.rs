use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1e9 { format!("{:.2} GB", b / 1e9) } else { format!("{:.1} MB", b / 1e6) }
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let i = m.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    println!("model          {}", i.path);
    println!("format         {:?}", i.format);
    println!("architecture   {} (model_type {})", i.architecture, i.model_type);
    println!("parameters     {} ({:.1} M)", i.parameters, i.parameters as f64 / 1e6);
    println!("dtype          {}", i.dtype);
    println!("context        {} tokens", i.context_length);
    println!("layers         {}  hidden {}  mlp {}", i.layers, i.hidden_size, i.intermediate_size);
    println!("heads          {} query / {} key-value, head dim {}", i.heads, i.kv_heads, i.head_dim);
    println!("vocabulary     {}{}", i.vocab_size, if i.tied_embeddings { " (tied embeddings)" } else { "" });
    println!(
        "memory         {} weights resident as loaded (packed blocks stay packed, the rest f32; --f32 expands all) + {} f32 KV cache at full context",
        human_bytes(i.weights_bytes),
        human_bytes(i.kv_cache_bytes_full_context)
    );
    println!("chat template  {}", if i.chat_template { "yes" } else { "no" });
    println!("stop tokens    {}", i.eos_tokens.join(" "));
    Ok(())
}
