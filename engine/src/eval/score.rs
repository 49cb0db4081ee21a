//! Scoring models on a suite: generation and each metric per item, summaries with bootstrap
//! intervals per metric and per tag, whole-suite runs, and the light scores a training job
//! records as it trains.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::metrics::{self, Stat, bootstrap};
use super::spec::{Item, MetricSpec, ModelRef, SuiteSpec, answer_index, load_items};
use crate::clock::now_rfc3339;
use crate::generate::{GenerateOptions, generate};
use crate::model::LoadedModel;
use crate::runs::reward::RewardScorer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemOutput {
    pub output: Option<String>,
    pub scores: BTreeMap<String, f64>,
    /// Multiple choice: each option's log-likelihood and the option picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    /// For a training run: its run.json (method, base model, data version, seed, …).
    pub run: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub model: String,
    pub metrics: BTreeMap<String, Stat>,
    pub by_tag: BTreeMap<String, BTreeMap<String, Stat>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub id: String,
    pub suite: String,
    pub created_at: String,
    pub spec: SuiteSpec,
    pub dataset: Value,
    pub models: Vec<ModelCard>,
    pub metrics: Vec<String>,
    pub items: Vec<Item>,
    /// `outputs[m][i]`: model m on item i.
    pub outputs: Vec<Vec<ItemOutput>>,
    pub summary: Vec<ModelSummary>,
}

/// Log-likelihood of `continuation` after `context` (ids encoded separately, then joined).
fn continuation_logprob(m: &LoadedModel, context: &[u32], continuation: &[u32]) -> Result<(f64, usize)> {
    if context.is_empty() || continuation.is_empty() {
        bail!("cannot score: the context or the continuation encodes to no tokens");
    }
    let mut ids = context.to_vec();
    ids.extend_from_slice(continuation);
    let lp = m.token_logprobs(&ids)?;
    let tail = &lp[context.len() - 1..];
    Ok((tail.iter().map(|&x| x as f64).sum(), continuation.len()))
}

/// Other models some metrics need (reward model, judge), loaded once per suite.
pub struct Helpers {
    pub reward: Option<RewardScorer>,
    pub judge: Option<LoadedModel>,
}

impl Helpers {
    pub fn load(spec: &SuiteSpec, device: &burn::tensor::Device) -> Result<Self> {
        let mut h = Helpers { reward: None, judge: None };
        for m in &spec.metrics {
            match m {
                MetricSpec::RewardModel { run } => h.reward = Some(RewardScorer::load(run, device)?),
                MetricSpec::Judge { model, .. } => {
                    h.judge = Some(crate::runs::load_base_with(model, device, crate::model::Packing::Stored)?)
                }
                _ => {}
            }
        }
        Ok(h)
    }
}

/// Score one model on every item. `progress(done)` after each item; return false to stop.
pub fn score_model(
    spec: &SuiteSpec,
    items: &[Item],
    m: &LoadedModel,
    helpers: &Helpers,
    progress: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<ItemOutput>> {
    let needs_output = spec.metrics.iter().any(MetricSpec::needs_output);
    let opts = GenerateOptions {
        max_new_tokens: spec.generation.max_new_tokens,
        temperature: spec.generation.temperature,
        seed: spec.seed,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let output = if needs_output {
            let ids = m.tokenizer.prompt_ids(&it.prompt)?;
            Some(generate(m, &ids, &opts, &mut |_| true)?.text.trim().to_string())
        } else {
            None
        };
        let o = output.as_deref().unwrap_or("");
        let reference = it.reference.as_deref().unwrap_or("");
        let mut scores = BTreeMap::new();
        let mut detail = None;
        for metric in &spec.metrics {
            let v = match metric {
                MetricSpec::ExactMatch { normalise } => metrics::exact_match(o, reference, normalise),
                MetricSpec::Contains { case_insensitive } => metrics::contains(o, reference, *case_insensitive),
                MetricSpec::Regex { pattern } => pattern.score(o),
                MetricSpec::Numeric { tolerance, relative } => metrics::numeric(o, reference, *tolerance, *relative),
                MetricSpec::Choice { length_normalised, .. } => {
                    let choices = it.choices.as_ref().ok_or_else(|| anyhow!("item {}: no choices", it.id))?;
                    let answer = answer_index(reference, choices)
                        .ok_or_else(|| anyhow!("item {}: answer `{reference}` is not one of the choices", it.id))?;
                    let context = m.tokenizer.encode(&format!("{}\nAnswer:", it.prompt), true)?;
                    let mut best = (f64::NEG_INFINITY, 0usize);
                    let mut all = Vec::with_capacity(choices.len());
                    for (c, text) in choices.iter().enumerate() {
                        let cont = m.tokenizer.encode(&format!(" {text}"), false)?;
                        let (lp, n) = continuation_logprob(m, &context, &cont)?;
                        all.push(lp);
                        let s = if *length_normalised { lp / n.max(1) as f64 } else { lp };
                        if s > best.0 {
                            best = (s, c);
                        }
                    }
                    detail = Some(serde_json::json!({"option_logprobs": all, "picked": best.1, "answer": answer}));
                    f64::from(best.1 == answer)
                }
                MetricSpec::Perplexity => {
                    let context = m.tokenizer.prompt_ids(&it.prompt)?;
                    let cont = m.tokenizer.encode(reference, false)?;
                    if cont.is_empty() {
                        bail!("item {}: perplexity needs a reference answer", it.id);
                    }
                    let (lp, n) = continuation_logprob(m, &context, &cont)?;
                    -lp / n as f64 // mean NLL; the summary turns it into perplexity
                }
                MetricSpec::RewardModel { .. } => {
                    helpers.reward.as_ref().ok_or_else(|| anyhow!("reward model not loaded"))?.score(&it.prompt, o)?
                }
                MetricSpec::Judge { rubric, max_score, .. } => {
                    let j = helpers.judge.as_ref().ok_or_else(|| anyhow!("judge model not loaded"))?;
                    let text = rubric.replace("{prompt}", &it.prompt).replace("{reference}", reference).replace("{output}", o);
                    let ids = j.tokenizer.prompt_ids(&text)?;
                    let reply = generate(j, &ids, &GenerateOptions { max_new_tokens: 16, ..Default::default() }, &mut |_| true)?.text;
                    metrics::judge_score(&reply, *max_score).unwrap_or(0.0)
                }
            };
            scores.insert(metric.name().to_string(), v);
        }
        out.push(ItemOutput { output, scores, detail });
        if !progress(i + 1) {
            bail!("cancelled");
        }
    }
    Ok(out)
}

fn aggregate(metric: &str) -> fn(&[f64]) -> f64 {
    if metric == "perplexity" { |v| metrics::mean(v).exp() } else { metrics::mean }
}

/// Per-metric and per-tag statistics of one model's outputs.
pub fn summarise(spec: &SuiteSpec, items: &[Item], model: &str, outputs: &[ItemOutput]) -> ModelSummary {
    let mut s = ModelSummary { model: model.to_string(), metrics: BTreeMap::new(), by_tag: BTreeMap::new() };
    for (k, metric) in spec.metrics.iter().enumerate() {
        let name = metric.name();
        let vals: Vec<f64> = outputs.iter().filter_map(|o| o.scores.get(name).copied()).collect();
        s.metrics.insert(name.to_string(), bootstrap(&vals, aggregate(name), spec.bootstrap, 0.95, spec.seed ^ k as u64));
        let mut tags: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (it, o) in items.iter().zip(outputs) {
            if let (Some(t), Some(v)) = (&it.tag, o.scores.get(name)) {
                tags.entry(t.clone()).or_default().push(*v);
            }
        }
        for (t, v) in tags {
            s.by_tag
                .entry(t)
                .or_default()
                .insert(name.to_string(), bootstrap(&v, aggregate(name), spec.bootstrap, 0.95, spec.seed ^ k as u64));
        }
    }
    s
}

fn model_card(r: &ModelRef) -> Result<ModelCard> {
    let p = r.path();
    let run = crate::runs::is_run_dir(p)
        .then(|| std::fs::read_to_string(p.join("run.json")).ok().and_then(|s| serde_json::from_str(&s).ok()))
        .flatten();
    let sha256 = if crate::runs::is_run_dir(p) {
        run.as_ref().and_then(|c: &Value| c["run_id"].as_str().map(|s| format!("run {s}"))).unwrap_or_default()
    } else {
        crate::io::hash::model_hash(p)?
    };
    Ok(ModelCard { name: r.name(), path: p.to_path_buf(), sha256, run })
}

/// Run a whole suite. `progress(done, total)` counts (model, item) pairs; false cancels.
pub fn run_suite(spec: &SuiteSpec, device: &burn::tensor::Device, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<EvalResult> {
    spec.validate()?;
    let (items, dataset) = load_items(spec)?;
    let helpers = Helpers::load(spec, device)?;
    let total = items.len() * spec.models.len();
    let mut outputs = Vec::new();
    let mut cards = Vec::new();
    for (k, mref) in spec.models.iter().enumerate() {
        let m = crate::runs::load_base_with(mref.path(), device, crate::model::Packing::Stored)
            .with_context(|| format!("model {}", mref.path().display()))?;
        cards.push(model_card(mref)?);
        let base = k * items.len();
        outputs.push(score_model(spec, &items, &m, &helpers, &mut |d| progress(base + d, total))?);
    }
    let summary = spec.models.iter().zip(&outputs).map(|(r, o)| summarise(spec, &items, &r.name(), o)).collect();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let slug: String = spec.name.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '-' }).collect();
    Ok(EvalResult {
        id: format!("{slug}-{stamp}"),
        suite: spec.name.clone(),
        created_at: now_rfc3339(),
        spec: spec.clone(),
        dataset,
        models: cards,
        metrics: spec.metrics.iter().map(|m| m.name().to_string()).collect(),
        items,
        outputs,
        summary,
    })
}

/// Scores of the metrics that need only the model (no reward model or judge) on `items`, for
/// evaluating a suite inside a training job.
pub fn quick_scores(spec: &SuiteSpec, items: &[Item], m: &LoadedModel) -> Result<BTreeMap<String, f64>> {
    let mut light = spec.clone();
    light.metrics.retain(|x| !matches!(x, MetricSpec::RewardModel { .. } | MetricSpec::Judge { .. }));
    let helpers = Helpers { reward: None, judge: None };
    let outs = score_model(&light, items, m, &helpers, &mut |_| true)?;
    Ok(light
        .metrics
        .iter()
        .map(|x| {
            let v: Vec<f64> = outs.iter().filter_map(|o| o.scores.get(x.name()).copied()).collect();
            (format!("suite/{}", x.name()), aggregate(x.name())(&v))
        })
        .collect())
}
