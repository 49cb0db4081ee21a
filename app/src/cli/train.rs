//! `whetstone train JOB.toml [--resume RUN_DIR] [--device D]`: runs a job, with a progress bar
//! (ETA, tokens/s, loss) fed by the job's event stream. Exit code 0 only on success.

use std::path::PathBuf;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use whetstone_engine::runs::JobEvent;
use whetstone_engine::train::{JobSpec, RunOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job file (TOML).
    pub job: Option<PathBuf>,
    /// Continue a run from its newest checkpoint (the job is read from RUN_DIR/job.toml).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Override the job's device: cpu, wgpu[:N], cuda[:N].
    #[arg(long)]
    pub device: Option<String>,
    /// Print events as JSON lines instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let spec = match (&a.job, &a.resume) {
        (Some(j), _) => JobSpec::from_file(j)?,
        (None, Some(r)) => JobSpec::from_file(&r.join("job.toml"))?,
        (None, None) => bail!("give a job file, or --resume RUN_DIR"),
    };
    // Through the evaluation layer, so a job with [eval_suite] gets its suite scored as it trains.
    let handle =
        whetstone_engine::eval::live::spawn(spec, RunOptions { resume: a.resume.clone(), device: a.device.clone(), ..Default::default() });
    let bar = ProgressBar::hidden();
    let mut result: Result<()> = Err(anyhow::anyhow!("the job ended without a result"));
    for ev in handle.events.iter() {
        if a.json {
            println!("{}", serde_json::to_string(&ev)?);
        }
        match &ev {
            JobEvent::Started { run_dir, total_steps, start_step, train_examples, eval_examples, memory, device, .. } => {
                if !a.json {
                    eprintln!(
                        "run {} on {device} — {train_examples} training / {eval_examples} held-out examples, {total_steps} steps, ~{:.2} GB",
                        run_dir.display(),
                        memory.total_bytes as f64 / 1e9
                    );
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_length(*total_steps as u64);
                    bar.set_position(*start_step as u64);
                    bar.reset_eta();
                    bar.set_style(
                        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                }
            }
            JobEvent::Step(s) => {
                bar.set_position(s.step as u64);
                let mut msg = format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", s.loss, s.lr, s.tokens_per_second);
                if let Some(b) = s.device_memory_bytes {
                    msg.push_str(&format!("  GPU {:.1} GB", b as f64 / 1e9));
                }
                bar.set_message(msg);
            }
            JobEvent::Eval(e) => {
                let mut line = format!("step {}: eval loss {:.4}", e.step, e.eval_loss);
                if let (Some(p), Some(a)) = (e.perplexity, e.token_accuracy) {
                    line.push_str(&format!(", perplexity {p:.3}, token accuracy {a:.3}"));
                }
                for (k, v) in &e.metrics {
                    line.push_str(&format!(", {k} {v:.4}"));
                }
                bar.println(line);
            }
            JobEvent::Checkpoint { step, path } => bar.println(format!("step {step}: checkpoint {}", path.display())),
            JobEvent::Log { message } => bar.println(message),
            JobEvent::Finished { run_dir, step } => {
                bar.finish_and_clear();
                if !a.json {
                    eprintln!("finished after {step} steps: {}", run_dir.display());
                }
                result = Ok(());
            }
            JobEvent::Failed { reason } => {
                bar.abandon();
                result = Err(anyhow::anyhow!("{reason}"));
            }
            JobEvent::Cancelled { step } => {
                bar.abandon();
                result = Err(anyhow::anyhow!("cancelled after step {step}; continue with --resume"));
            }
        }
    }
    handle.join();
    result
}
