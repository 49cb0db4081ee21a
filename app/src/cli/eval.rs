//! `whetstone eval`: run an evaluation suite (TOML) on its models and store the result in the
//! workspace; list results, export reports, record blind A/B verdicts, ratings, preferences.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use whetstone_engine::data::Workspace;
use whetstone_engine::eval::{ab, report, score, spec as suite};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A suite file to run (SUITE.toml).
    pub suite: Option<PathBuf>,
    /// The workspace that stores results (default: the suite dataset's workspace).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// An existing evaluation (its id from --list).
    #[arg(long)]
    pub id: Option<String>,
    /// List the stored evaluations.
    #[arg(long)]
    pub list: bool,
    /// Write a report (.html or .md).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Record a blind A/B verdict: ITEM,MODEL_A,MODEL_B,VERDICT (a, b, tie or both_bad).
    #[arg(long)]
    pub vote: Option<String>,
    #[arg(long, default_value = "me")]
    pub annotator: String,
    /// Print Bradley–Terry ratings, win rates and the win matrix from the A/B verdicts.
    #[arg(long)]
    pub ratings: bool,
    /// Turn the A/B verdicts into a `<suite>-ab-preferences` dataset version.
    #[arg(long)]
    pub preferences: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

fn workspace_for(a: &Args, spec: Option<&suite::SuiteSpec>) -> Result<Workspace> {
    if let Some(w) = &a.workspace {
        return Workspace::open(w);
    }
    if let Some(s) = spec.filter(|s| s.dataset.is_workspace()) {
        return Workspace::open(&s.dataset.path);
    }
    bail!("name the workspace that stores results with --workspace")
}

pub fn run(a: Args) -> Result<()> {
    if let Some(path) = &a.suite {
        let spec = suite::SuiteSpec::from_file(path)?;
        let device = whetstone_engine::device::parse_device(&a.device)?;
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(indicatif::ProgressStyle::with_template("evaluating {bar:30} {pos}/{len} outputs  eta {eta}").unwrap());
        let r = score::run_suite(&spec, &device, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            true
        })?;
        bar.finish_and_clear();
        let mut ws = workspace_for(&a, Some(&spec))?;
        let stored = ws.save_eval(&r)?;
        if let Some(out) = &a.report {
            report::write(&r, None, out)?;
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"id": r.id, "path": stored, "summary": r.summary}))?);
        } else {
            print!("{}", report::markdown(&r, None));
            println!("\nstored as `{}` in {}", r.id, stored.display());
        }
        return Ok(());
    }
    let mut ws = workspace_for(&a, None)?;
    if a.list {
        for e in ws.evals()? {
            println!("{}  {}  models: {}  dataset: {}", e.id, e.created_at, e.models, e.dataset);
        }
        return Ok(());
    }
    let id = a.id.clone().ok_or_else(|| anyhow!("give a suite file to run, or --id of a stored evaluation (see --list)"))?;
    let r = ws.load_eval(&id)?;
    if let Some(v) = &a.vote {
        let parts: Vec<&str> = v.split(',').map(str::trim).collect();
        let [item, ma, mb, verdict] = parts[..] else { bail!("--vote ITEM,MODEL_A,MODEL_B,VERDICT") };
        let names = r.model_names();
        for m in [ma, mb] {
            if !names.iter().any(|n| n == m) {
                bail!("model `{m}` is not in evaluation `{id}` (models: {})", names.join(", "));
            }
        }
        if !r.items.iter().any(|it| it.id == item) {
            bail!("item `{item}` is not in evaluation `{id}`");
        }
        println!("ok {}", ws.add_vote(&id, item, ma, mb, verdict, &a.annotator)?);
    }
    let votes = ws.votes(&id)?;
    let ratings = ab::vote_ratings(&r, &votes, 1000, 0);
    if a.ratings {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&ratings)?);
        } else {
            println!("{} verdicts", ratings.battles);
            for x in &ratings.ratings {
                println!(
                    "  {:<24} Elo {:>6.0} [{:.0}, {:.0}]  win rate {:.2} [{:.2}, {:.2}]  ({} battles)",
                    x.model, x.elo, x.lo, x.hi, x.win_rate, x.win_lo, x.win_hi, x.battles
                );
            }
        }
    }
    if a.preferences {
        let v = ws.votes_to_preferences(&id)?;
        println!("wrote {} preference pairs to {}@{}", v.rows, v.dataset, v.version);
    }
    if let Some(out) = &a.report {
        report::write(&r, Some(&ratings), out)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
