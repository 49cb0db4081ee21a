//! `whetstone bench …`: speed measurements recorded in docs/benchmarks.md. Each prints the
//! machine, the settings and the figures, as text or JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::kernels::precision::{self, LossScaler, Precision};
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
    /// SFT train-step throughput (forward, backward, AdamW) on random tokens, full or LoRA.
    Train(TrainArgs),
    /// PPO step time split into generation, scoring and training (LoRA actor and critic).
    Ppo(PpoArgs),
    /// Import a generated CSV into a fresh workspace, then filter it by a regex.
    Import(ImportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Case-insensitive pattern the filter looks for in every column.
    #[arg(long, default_value = "chest pain|stiff neck")]
    pub pattern: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct PpoArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Prompts (rollouts) per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// An HF model folder or a .gguf file (or --shape).
    #[arg(required_unless_present = "shape")]
    pub model: Option<PathBuf>,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Load a LoRA base as f32 instead of keeping it packed.
    #[arg(long)]
    pub f32: bool,
    /// Random weights in a real architecture's shape instead of a model file: llama3-8b,
    /// qwen2.5-0.5b, qwen2.5-1.5b or smollm2-135m.
    #[arg(long, conflicts_with = "model")]
    pub shape: Option<String>,
    /// With --shape and LoRA: hold the frozen base as q4_k, q8_0 or bf16 (default f32).
    #[arg(long, requires = "shape")]
    pub quant: Option<String>,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Train LoRA adapters of this rank instead of every weight.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA targets: comma-separated short names, or `all` for the seven projections.
    #[arg(long, default_value = "q,k,v,o")]
    pub targets: String,
    /// Recompute each decoder layer in the backward pass.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Compute precision of the matrix products: f32, bf16 or f16 (mixed precision over f32
    /// master weights; f16 with dynamic loss scaling).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long)]
    pub json: bool,
}

fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    Precision::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| format!("{s:?}: use f32, bf16 or f16"))
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

/// The median of timed runs (the upper middle one for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Generate(g) => bench_generate(g),
        What::Train(t) => bench_train(t),
        What::Import(i) => bench_import(i),
        What::Ppo(p) => bench_ppo(p),
    }
}

fn bench_generate(a: GenArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let t_load = Instant::now();
    let m = a.model.load()?;
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
    let med = |f: fn(&(f64, f64, f64, f64)) -> f64| median(rows.iter().map(f).collect());
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

fn bench_train(a: TrainArgs) -> Result<()> {
    use rand::{Rng, SeedableRng};
    use whetstone_engine::io::quant::GgmlType;
    use whetstone_engine::model::batch::make_batch;
    use whetstone_engine::model::lora::LoraConfig;
    use whetstone_engine::model::synthetic::{peak_rss_bytes, random_weights, shape_config};
    use whetstone_engine::model::{Packing, Transformer};
    use whetstone_engine::text::sft::Encoded;
    use whetstone_engine::train::optim::{AdamW, AdamWConfig};
    use whetstone_engine::train::sft::SftTrainer;
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let device = whetstone_engine::device::parse_device(&a.device)?.autodiff();
    a.precision.check_device(&a.device)?;
    let targets: Vec<String> = if a.targets == "all" {
        ["q", "k", "v", "o", "gate", "up", "down"].map(String::from).to_vec()
    } else {
        a.targets.split(',').map(|t| t.trim().to_string()).collect()
    };
    let lora = a.lora_rank.map(|r| LoraConfig { rank: r, alpha: 2.0 * r as f64, targets: targets.clone(), ..Default::default() });
    if let Some(l) = &lora {
        l.target_names()?;
    }
    let t_load = Instant::now();
    // Full fine-tuning trains every weight (f32); a LoRA base is frozen and stays packed
    // (GGUF blocks, bf16/f16) unless --f32.
    let (cfg, model, what) = match (&a.model, &a.shape) {
        (Some(p), _) => {
            let packing = if lora.is_some() && !a.f32 { Packing::Stored } else { Packing::Dense };
            let m = LoadedModel::load_with(p, &device, packing)?;
            (m.config.clone(), m.model, p.display().to_string())
        }
        (None, Some(shape)) => {
            let cfg = shape_config(shape)?;
            let packed = match a.quant.as_deref() {
                None => None,
                Some(_) if lora.is_none() => bail!("--quant packs a frozen base: use it with --lora-rank"),
                Some("q4_k") => Some(GgmlType::Q4K),
                Some("q8_0") => Some(GgmlType::Q8_0),
                Some("bf16") => Some(GgmlType::BF16),
                Some(other) => bail!("--quant {other}: use q4_k, q8_0 or bf16"),
            };
            let w = random_weights(&cfg, packed, 0)?;
            let m = Transformer::from_weights(&cfg, &w, &device);
            (cfg, m, format!("{shape} (random weights{})", a.quant.as_deref().map(|q| format!(", {q} base")).unwrap_or_default()))
        }
        (None, None) => bail!("give a model or --shape"),
    };
    let load_s = t_load.elapsed().as_secs_f64();
    let resident = model.resident_bytes();
    let vocab = cfg.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let examples: Vec<Encoded> = (0..a.batch)
        .map(|_| Encoded { ids: (0..a.seq + 1).map(|_| rng.random_range(0..vocab)).collect(), target: vec![true; a.seq + 1] })
        .collect();
    let model = match &lora {
        Some(l) => model.with_lora(l, 0)?,
        None => model,
    };
    let trainable = whetstone_engine::train::method::count_trainable(&model);
    // The same estimate a job of this shape gets before it loads anything.
    let mut spec = whetstone_engine::train::JobSpec::new(
        whetstone_engine::train::Method::Sft,
        PathBuf::from(&what),
        whetstone_engine::data::DatasetSpec::file(""),
    );
    spec.lora = lora.clone();
    spec.train.batch_size = a.batch;
    spec.train.max_seq_len = a.seq;
    spec.train.gradient_checkpointing = a.gradient_checkpointing;
    spec.train.precision = a.precision;
    let estimate = whetstone_engine::train::preflight::estimate_with_weights(&spec, &cfg, resident)?;
    let batch = make_batch(&examples.iter().collect::<Vec<_>>(), 0, &device);
    let mut trainer = SftTrainer::new(model, AdamW::new(AdamWConfig::default()), Some(1.0), examples, 0);
    trainer.recompute = a.gradient_checkpointing;
    let mut times = Vec::new();
    let mut scaler = LossScaler::new();
    let mut skipped = 0;
    for i in 0..=a.steps {
        let t = Instant::now();
        // As the job runner does it: the precision scope around the step, and f16's loss scale.
        let step = || trainer.step_batches(std::slice::from_ref(&batch), 1e-5);
        let overflow = match a.precision {
            Precision::F16 => {
                let (r, overflow) = precision::with(a.precision, || scaler.scoped(step));
                r?;
                scaler.update(overflow);
                overflow
            }
            p => {
                precision::with(p, step)?;
                false
            }
        };
        skipped += overflow as usize;
        if i > 0 || a.steps == 1 {
            times.push(t.elapsed().as_secs_f64());
        }
        if a.steps == 1 {
            break;
        }
    }
    let step_s = median(times);
    let tps = (a.batch * a.seq) as f64 / step_s;
    // Forward + backward of a dense LM: about 6 FLOPs per parameter per token (8 with
    // recomputation); LoRA skips the base weights' gradients (4, or 6).
    let per_token = match (lora.is_some(), a.gradient_checkpointing) {
        (false, false) => 6.0,
        (false, true) => 8.0,
        (true, false) => 4.0,
        (true, true) => 6.0,
    };
    let gflops = per_token * cfg.num_params() as f64 * tps / 1e9;
    let peak = peak_rss_bytes();
    // On a GPU: what its allocator holds after the steps (pools keep their pages, so about the
    // step's peak).
    let gpu_held = whetstone_engine::device::gpu_memory_in_use(&device);
    let gpu_capacity = whetstone_engine::device::gpu_capacity(&device);
    let mode = if lora.is_some() { "lora" } else { "full" };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "train", "mode": mode, "model": what, "device": a.device, "precision": a.precision.name(),
                "skipped_steps": skipped,
                "threads": threads, "batch": a.batch, "seq": a.seq, "trainable_parameters": trainable,
                "parameters": cfg.num_params(), "resident_weight_bytes": resident, "gradient_checkpointing": a.gradient_checkpointing,
                "steps": a.steps, "load_seconds": load_s, "step_seconds": step_s, "tokens_per_second": tps, "gflops": gflops,
                "peak_rss_bytes": peak, "device_memory_bytes": gpu_held, "device_capacity_bytes": gpu_capacity,
                "estimated_bytes": estimate.total_bytes, "estimate": estimate})
        );
    } else {
        let gb = |b: usize| b as f64 / 1e9;
        println!("whetstone bench train ({mode}, {}): {what} on {} ({threads} threads)", a.precision.name(), a.device);
        println!(
            "batch {} x {} tokens, {} parameters ({:.2} GB resident), {} trainable, median of {} steps",
            a.batch,
            a.seq,
            cfg.num_params(),
            gb(resident),
            trainable,
            a.steps
        );
        println!("load        {load_s:.1} s");
        println!("step        {step_s:.3} s");
        if skipped > 0 {
            println!("f16         {skipped} of {} steps overflowed and were skipped (loss scale now {})", a.steps + 1, scaler.scale);
        }
        println!("throughput  {tps:.0} tokens/s ({gflops:.1} GFLOP/s)");
        println!(
            "memory      estimated {:.2} GB ({}), peak RSS {}",
            gb(estimate.total_bytes),
            estimate.describe(),
            peak.map(|p| format!("{:.2} GB", gb(p))).unwrap_or_else(|| "unknown".into())
        );
        if let Some(held) = gpu_held {
            let of = gpu_capacity.map(|c| format!(" of {:.2} GB", c as f64 / 1e9)).unwrap_or_default();
            println!("GPU memory  {:.2} GB held by the allocator{of}", held as f64 / 1e9);
        }
    }
    Ok(())
}

fn bench_ppo(a: PpoArgs) -> Result<()> {
    use whetstone_engine::model::lora::LoraConfig;
    use whetstone_engine::model::reward::RewardModel;
    use whetstone_engine::text::chat_template::Message;
    use whetstone_engine::train::grpo::GrpoPrompt;
    use whetstone_engine::train::method::Trainer;
    use whetstone_engine::train::optim::{AdamW, AdamWConfig, StepLr};
    use whetstone_engine::train::ppo::{PpoConfig, PpoTrainer};
    use whetstone_engine::train::rewards::{Rule, WeightedRule};
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let device = a.model.device()?.autodiff();
    let packing = if a.model.f32 { whetstone_engine::model::Packing::Dense } else { whetstone_engine::model::Packing::Stored };
    let m = LoadedModel::load_with(&a.model.model, &device, packing)?;
    let lora = LoraConfig { rank: a.lora_rank, alpha: 2.0 * a.lora_rank as f64, ..Default::default() };
    let actor = m.model.clone().with_lora(&lora, 0)?;
    let critic = RewardModel::new(m.model.clone().with_lora(&lora, 1)?, m.config.hidden_size, 2);
    // Fixed-length responses: the benchmark measures work per token, so EOS is ignored.
    let rule = Rule::Contains { text: Some("doctor".into()), case_insensitive: true };
    let cfg = PpoConfig { max_new_tokens: a.new_tokens, rules: vec![WeightedRule { rule, weight: 1.0 }], ..Default::default() };
    let questions = [
        "What should I do for a mild fever?",
        "When is chest pain an emergency?",
        "How do I treat a small burn?",
        "Is a headache after a fall serious?",
    ];
    let prompts: Vec<GrpoPrompt> = (0..a.batch)
        .map(|i| {
            let q = questions[i % questions.len()];
            Ok(GrpoPrompt { text: q.to_string(), ids: m.tokenizer.apply_chat(&[Message::new("user", q)], true)?.1, reference: None })
        })
        .collect::<Result<_>>()?;
    let pad = m.tokenizer.pad_id().or(m.tokenizer.eos_id()).unwrap_or(0);
    let mut p =
        PpoTrainer::new(actor, critic, AdamW::new(AdamWConfig::default()), cfg, Some(1.0), prompts, m.tokenizer.clone(), vec![], pad, 0);
    let all: Vec<usize> = (0..a.batch).collect();
    let mut rows = Vec::new();
    for i in 0..=a.steps {
        let s = p.step(std::slice::from_ref(&all), StepLr { lr: 1.0, scale: 1.0 })?;
        if i > 0 {
            rows.push(s.metrics);
        }
    }
    let med = |k: &str| median(rows.iter().map(|r| r.get(k).copied().unwrap_or(f64::NAN)).collect());
    let (g, sc, tr) = (med("generation_seconds"), med("scoring_seconds"), med("training_seconds"));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "ppo", "model": a.model.model, "device": a.model.device, "threads": threads,
                "batch": a.batch, "new_tokens": a.new_tokens, "lora_rank": a.lora_rank, "steps": a.steps,
                "generation_seconds": g, "scoring_seconds": sc, "training_seconds": tr, "step_seconds": g + sc + tr})
        );
    } else {
        println!("whetstone bench ppo: {} on {} ({} threads)", a.model.model.display(), a.model.device, threads);
        println!("{} rollouts x {} new tokens, LoRA r{} actor and critic, median of {} steps", a.batch, a.new_tokens, a.lora_rank, a.steps);
        println!("generation  {g:.2} s");
        println!("scoring     {sc:.2} s");
        println!("training    {tr:.2} s");
        println!("step        {:.2} s", g + sc + tr);
    }
    Ok(())
}

fn bench_import(a: ImportArgs) -> Result<()> {
    use std::io::Write;
    use whetstone_engine::data::Workspace;
    use whetstone_engine::data::curate::{Query, query};
    let tmp = tempfile::tempdir()?;
    let csv = tmp.path().join("triage.csv");
    {
        let questions = [
            "Crushing chest pain spreading to the left arm",
            "Mild sore throat for two days, no fever",
            "Fever, \"stiff neck\" and a new rash",
            "Twisted ankle, can walk with a limp",
            "发烧三天，头痛",
        ];
        let depts = ["cardio", "gp", "neuro", "ortho", "gp"];
        let mut w = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        writeln!(w, "id,question,answer,department")?;
        for i in 0..a.rows {
            let k = i % questions.len();
            writeln!(w, "{i},\"{} (case {i})\",\"Advice {}, see notes\",{}", questions[k], i % 97, depts[k])?;
        }
        w.flush()?;
    }
    let bytes = std::fs::metadata(&csv)?.len();
    let mut ws = Workspace::create(&tmp.path().join("ws"), "bench")?;
    let t0 = Instant::now();
    let parsed = whetstone_engine::data::import::parse_file(&csv)?;
    let parse_s = t0.elapsed().as_secs_f64();
    drop(parsed);
    let t0 = Instant::now();
    let v = ws.import(&csv, Some("triage"), &[])?;
    let import_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let (_, table) = ws.load("triage", None)?;
    let load_s = t0.elapsed().as_secs_f64();
    let q = Query { text: Some(a.pattern.clone()), regex: true, ..Default::default() };
    let t0 = Instant::now();
    let hits = query(&table, &q, &Default::default())?;
    let filter_s = t0.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let out = serde_json::json!({
        "rows": v.rows, "csv_bytes": bytes, "threads": threads,
        "parse_seconds": parse_s, "import_seconds": import_s, "import_rows_per_second": v.rows as f64 / import_s,
        "load_seconds": load_s, "filter_seconds": filter_s, "filter_rows_per_second": v.rows as f64 / filter_s,
        "matches": hits.len(), "pattern": a.pattern,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{} rows, {:.1} MB CSV, {threads} threads", v.rows, bytes as f64 / 1e6);
    println!("parse only        {:.3} s", parse_s);
    println!("import (parse, snapshot, hash, commit) {:.3} s  → {:.0} rows/s", import_s, v.rows as f64 / import_s);
    println!("load snapshot     {:.3} s", load_s);
    println!("regex filter      {:.3} s  → {:.0} rows/s ({} matches)", filter_s, v.rows as f64 / filter_s, hits.len());
    Ok(())
}
