use std::io::Write;

use anyhow::Result;
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::text::chat_template::Message;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as one user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep going past EOS.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let prompt_ids = if a.chat {
        let mut msgs = vec![];
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &a.prompt));
        m.tokenizer.apply_chat(&msgs, true)?.1
    } else {
        m.tokenizer.encode(&a.prompt, true)?
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        stop_strings: a.stop.clone(),
        stop_at_eos: !a.ignore_eos,
    };
    let json = a.json;
    let mut out = std::io::stdout();
    let g = generate(&m, &prompt_ids, &opts, &mut |piece| {
        if !json {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        true
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "prompt_ids": g.prompt_ids,
                "generated_ids": g.generated_ids,
                "text": g.text,
                "finish_reason": g.finish_reason,
                "tokens_per_second": g.tokens_per_second,
            })
        );
    } else {
        println!();
        eprintln!("[{} tokens, {:.1} tokens/s, stopped: {:?}]", g.generated_ids.len(), g.tokens_per_second, g.finish_reason);
    }
    Ok(())
}
