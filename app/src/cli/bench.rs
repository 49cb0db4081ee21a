//! `whetstone bench …`: speed measurements recorded in docs/benchmarks.md. Each prints the
//! machine, the settings and the figures, as text or JSON.

use std::time::Instant;

use anyhow::{Result, bail};
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::model::LoadedModel;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// Generation throughput: a fixed-length prompt, then greedy decoding of a fixed number of tokens.
    Generate(GenArgs),
}

#[derive(clap::Args, Debug)]
pub struct GenArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long)]
    pub json: bool,
}

const FILLER: &str = "Clinical note: the patient is a 54-year-old with a history of hypertension and type 2 \
diabetes who presents with three days of productive cough, fever and shortness of breath on exertion. ";

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Generate(g) => bench_generate(g),
    }
}

fn bench_generate(a: GenArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let t_load = Instant::now();
    let m = LoadedModel::load(&a.model.model, &a.model.device()?)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let mut ids = Vec::new();
    while ids.len() < a.prompt_tokens {
        ids.extend(m.tokenizer.encode(FILLER, false)?);
    }
    ids.truncate(a.prompt_tokens);
    let opts = GenerateOptions { max_new_tokens: a.new_tokens, stop_at_eos: false, ..Default::default() };
    let mut rows = Vec::new();
    for run in 0..=a.runs {
        let t = Instant::now();
        let g = generate(&m, &ids, &opts, &mut |_| true)?;
        let total = t.elapsed().as_secs_f64();
        if run == 0 {
            continue; // warm-up
        }
        rows.push((g.prefill_seconds, g.tokens_per_second, a.new_tokens as f64 / total, total));
    }
    let med = |f: fn(&(f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (prefill, decode_tps, e2e_tps, total) = (med(|r| r.0), med(|r| r.1), med(|r| r.2), med(|r| r.3));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "generate", "model": a.model.model, "device": a.model.device, "threads": threads,
                "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "runs": a.runs,
                "load_seconds": load_s, "prefill_seconds": prefill, "decode_tokens_per_second": decode_tps,
                "end_to_end_tokens_per_second": e2e_tps, "total_seconds": total,
            })
        );
    } else {
        println!("whetstone bench generate: {} on {} ({} threads)", a.model.model.display(), a.model.device, threads);
        println!("prompt {} tokens, {} new tokens, greedy, median of {} runs", a.prompt_tokens, a.new_tokens, a.runs);
        println!("load        {load_s:.2} s");
        println!("prefill     {:.3} s ({:.0} tokens/s)", prefill, a.prompt_tokens as f64 / prefill);
        println!("decode      {decode_tps:.1} tokens/s");
        println!("end to end  {e2e_tps:.1} new tokens/s ({total:.2} s)");
    }
    Ok(())
}
