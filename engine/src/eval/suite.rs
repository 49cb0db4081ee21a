//! Evaluation suites: a dataset version plus metrics, run on one or more models (base models
//! or training runs), with per-item outputs, bootstrap confidence intervals and per-tag
//! breakdowns. Results are stored in the workspace (`evals/<id>/result.json` + a row in the
//! `evals` table) so the CLI and the Evaluate panel read and write the same thing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::metrics::{self, Normalise, Stat, bootstrap};
use crate::data::workspace::{Workspace, now_rfc3339};
use crate::generate::{GenerateOptions, generate};
use crate::model::LoadedModel;
use crate::train::job::DatasetSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetricSpec {
    /// The output equals the reference after normalisation.
    ExactMatch {
        #[serde(default = "Normalise::squad")]
        normalise: Normalise,
    },
    /// The output contains the reference.
    Contains {
        #[serde(default = "yes")]
        case_insensitive: bool,
    },
    /// The output matches a regular expression.
    Regex { pattern: String },
    /// The first number in the output is within `tolerance` of the reference's.
    Numeric {
        #[serde(default)]
        tolerance: f64,
        #[serde(default)]
        relative: bool,
    },
    /// Multiple choice scored by option log-likelihood: `choices` names the column with the
    /// options (a JSON list, or text separated by `|`); the reference is the answer (index,
    /// letter or option text).
    Choice {
        choices: String,
        #[serde(default)]
        length_normalised: bool,
    },
    /// Perplexity of the reference answer given the prompt (lower is better).
    Perplexity,
    /// Mean score of a reward-model run on the outputs.
    RewardModel { run: PathBuf },
    /// A local model grades each output with an editable rubric (`{prompt}`, `{reference}`,
    /// `{output}` are filled in); its first number from 1 to `max_score` is the grade.
    Judge {
        model: PathBuf,
        #[serde(default = "default_rubric")]
        rubric: String,
        #[serde(default = "default_max_score")]
        max_score: u32,
    },
}

fn yes() -> bool {
    true
}

pub fn default_rubric() -> String {
    "You are grading an answer.\nQuestion: {prompt}\nReference answer: {reference}\nAnswer to grade: {output}\n\
     How correct and helpful is the answer compared with the reference? Reply with one number from 1 (wrong) to 5 (fully correct)."
        .into()
}

fn default_max_score() -> u32 {
    5
}

impl MetricSpec {
    pub fn name(&self) -> &'static str {
        match self {
            MetricSpec::ExactMatch { .. } => "exact_match",
            MetricSpec::Contains { .. } => "contains",
            MetricSpec::Regex { .. } => "regex",
            MetricSpec::Numeric { .. } => "numeric",
            MetricSpec::Choice { .. } => "choice",
            MetricSpec::Perplexity => "perplexity",
            MetricSpec::RewardModel { .. } => "reward",
            MetricSpec::Judge { .. } => "judge",
        }
    }

    /// Whether scoring needs the model's generated output.
    pub fn needs_output(&self) -> bool {
        !matches!(self, MetricSpec::Choice { .. } | MetricSpec::Perplexity)
    }

    /// Lower is better (only perplexity).
    pub fn lower_is_better(&self) -> bool {
        matches!(self, MetricSpec::Perplexity)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelRef {
    Path(PathBuf),
    Named { name: String, path: PathBuf },
}

impl ModelRef {
    pub fn path(&self) -> &Path {
        match self {
            ModelRef::Path(p) | ModelRef::Named { path: p, .. } => p,
        }
    }
    pub fn name(&self) -> String {
        match self {
            ModelRef::Named { name, .. } => name.clone(),
            ModelRef::Path(p) => p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenSpec {
    pub max_new_tokens: usize,
    /// 0 = greedy (the default, so results are reproducible).
    pub temperature: f32,
}

impl Default for GenSpec {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteSpec {
    pub name: String,
    pub dataset: DatasetSpec,
    /// Column with the reference answer (default: the dataset's response/reference column).
    #[serde(default)]
    pub reference: Option<String>,
    /// Column to break results down by (default: a `label`/`category`/`department`/`topic` column).
    #[serde(default)]
    pub tag: Option<String>,
    pub models: Vec<ModelRef>,
    pub metrics: Vec<MetricSpec>,
    #[serde(default)]
    pub generation: GenSpec,
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    #[serde(default)]
    pub seed: u64,
    /// Evaluate only the first N items.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_bootstrap() -> usize {
    1000
}

impl SuiteSpec {
    /// Parse a suite file; relative paths are relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut s: SuiteSpec = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|sp| text[..sp.start.min(text.len())].lines().count().max(1)).unwrap_or(0);
            anyhow!("{}:{line}: {}", path.display(), e.message().trim().replace('\n', " "))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
                *p = PathBuf::from(home).join(rest);
            }
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut s.dataset.path);
        for m in s.models.iter_mut() {
            match m {
                ModelRef::Path(p) | ModelRef::Named { path: p, .. } => fix(p),
            }
        }
        for m in s.metrics.iter_mut() {
            match m {
                MetricSpec::RewardModel { run } => fix(run),
                MetricSpec::Judge { model, .. } => fix(model),
                _ => {}
            }
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<()> {
        if self.models.is_empty() {
            bail!("suite `{}`: list at least one model in `models`", self.name);
        }
        if self.metrics.is_empty() {
            bail!("suite `{}`: list at least one metric in `metrics`", self.name);
        }
        for m in &self.metrics {
            if let MetricSpec::Regex { pattern } = m {
                Regex::new(pattern).map_err(|e| anyhow!("suite `{}`: regex metric: {e}", self.name))?;
            }
        }
        let mut kinds: Vec<&str> = self.metrics.iter().map(MetricSpec::name).collect();
        kinds.sort_unstable();
        if let Some(w) = kinds.windows(2).find(|w| w[0] == w[1]) {
            bail!("suite `{}`: metric `{}` is listed twice; make a second suite for another variant", self.name, w[0]);
        }
        let mut names: Vec<String> = self.models.iter().map(ModelRef::name).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            bail!("suite `{}`: two models share a name; give them names with {{ name = \"…\", path = \"…\" }}", self.name);
        }
        Ok(())
    }
}

/// One dataset row to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub prompt: String,
    pub reference: Option<String>,
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
}

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

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn parse_choices(v: Option<&Value>) -> Option<Vec<String>> {
    let v = v?;
    let list = match v {
        Value::Array(a) => a.clone(),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => a,
            _ => return Some(s.split('|').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()),
        },
        _ => return None,
    };
    Some(list.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect())
}

/// The items of a suite's dataset, with the card that records which version they came from.
pub fn load_items(spec: &SuiteSpec) -> Result<(Vec<Item>, Value)> {
    let data = spec.dataset.load()?;
    let f = spec.dataset.path.display().to_string();
    let names: Vec<String> = data.records.first().map(|r| r.keys().cloned().collect()).unwrap_or_default();
    let guess = data.columns.guess(&names);
    let prompt = guess.prompt.clone().ok_or_else(|| anyhow!("{f}: no prompt column found (columns: {})", names.join(", ")))?;
    let pick = |explicit: &Option<String>, fallbacks: &[&str]| -> Option<String> {
        explicit.clone().or_else(|| fallbacks.iter().find(|c| names.iter().any(|n| n == *c)).map(|s| s.to_string()))
    };
    let reference = pick(&spec.reference, &[]).or(data.columns.reference.clone()).or(guess.response.clone()).or_else(|| pick(&None, &["reference", "answer", "label"]));
    let tag = pick(&spec.tag, &["label", "category", "department", "topic", "tag"]);
    for c in [Some(&prompt), reference.as_ref(), tag.as_ref()].into_iter().flatten() {
        if !names.contains(c) {
            bail!("{f}: column `{c}` not found (columns: {})", names.join(", "));
        }
    }
    let choices_col = spec.metrics.iter().find_map(|m| if let MetricSpec::Choice { choices, .. } = m { Some(choices.clone()) } else { None });
    if let Some(c) = &choices_col {
        if !names.contains(c) {
            bail!("{f}: choices column `{c}` not found (columns: {})", names.join(", "));
        }
    }
    let mut items = Vec::new();
    for (i, r) in data.records.iter().enumerate().take(spec.limit.unwrap_or(usize::MAX)) {
        let id = text_of(r.get("_id")).or_else(|| text_of(r.get("id"))).unwrap_or_else(|| (i + 1).to_string());
        items.push(Item {
            id,
            prompt: text_of(r.get(&prompt)).filter(|p| !p.trim().is_empty()).ok_or_else(|| anyhow!("{f}: row {}: prompt is empty", i + 1))?,
            reference: reference.as_ref().and_then(|c| text_of(r.get(c))),
            tag: tag.as_ref().and_then(|c| text_of(r.get(c))),
            choices: choices_col.as_ref().and_then(|c| parse_choices(r.get(c))),
        });
    }
    if items.is_empty() {
        bail!("{f}: no items to evaluate");
    }
    Ok((items, data.card))
}

/// Index of the right option: an index, a letter, or the option's text.
/// Index of the right option. The option's own text wins; then a letter (`B`, `(B)`, `B.`);
/// then a 0-based index.
pub fn answer_index(reference: &str, choices: &[String]) -> Option<usize> {
    let r = reference.trim();
    if let Some(i) = choices.iter().position(|c| c.trim().eq_ignore_ascii_case(r)) {
        return Some(i);
    }
    let letter = r.trim_matches(|c: char| matches!(c, '(' | ')' | '.' | ':' | ' '));
    if letter.len() == 1 && letter.chars().all(|c| c.is_ascii_alphabetic()) {
        let i = (letter.to_ascii_uppercase().as_bytes()[0] - b'A') as usize;
        return (i < choices.len()).then_some(i);
    }
    r.parse::<usize>().ok().filter(|&i| i < choices.len())
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
    pub reward: Option<(crate::train::reward::RewardModel, LoadedModel)>,
    pub judge: Option<LoadedModel>,
}

impl Helpers {
    pub fn load(spec: &SuiteSpec, device: &burn::tensor::Device) -> Result<Self> {
        let mut h = Helpers { reward: None, judge: None };
        for m in &spec.metrics {
            match m {
                MetricSpec::RewardModel { run } => h.reward = Some(crate::train::methods::load_reward_model(run, device)?),
                MetricSpec::Judge { model, .. } => h.judge = Some(crate::train::job::load_base(model, device)?),
                _ => {}
            }
        }
        Ok(h)
    }
}

/// Score one model on every item. `progress(done)` after each item; return false to stop.
pub fn score_model(spec: &SuiteSpec, items: &[Item], m: &LoadedModel, helpers: &Helpers, progress: &mut dyn FnMut(usize) -> bool) -> Result<Vec<ItemOutput>> {
    let needs_output = spec.metrics.iter().any(MetricSpec::needs_output);
    let opts = GenerateOptions { max_new_tokens: spec.generation.max_new_tokens, temperature: spec.generation.temperature, seed: spec.seed, ..Default::default() };
    let regexes: Vec<Option<Regex>> =
        spec.metrics.iter().map(|x| if let MetricSpec::Regex { pattern } = x { Regex::new(pattern).ok() } else { None }).collect();
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
        for (k, metric) in spec.metrics.iter().enumerate() {
            let v = match metric {
                MetricSpec::ExactMatch { normalise } => metrics::exact_match(o, reference, normalise),
                MetricSpec::Contains { case_insensitive } => metrics::contains(o, reference, *case_insensitive),
                MetricSpec::Regex { .. } => metrics::regex_match(o, regexes[k].as_ref().unwrap()),
                MetricSpec::Numeric { tolerance, relative } => metrics::numeric(o, reference, *tolerance, *relative),
                MetricSpec::Choice { length_normalised, .. } => {
                    let choices = it.choices.as_ref().ok_or_else(|| anyhow!("item {}: no choices", it.id))?;
                    let answer = answer_index(reference, choices).ok_or_else(|| anyhow!("item {}: answer `{reference}` is not one of the choices", it.id))?;
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
                    let (rm, base) = helpers.reward.as_ref().ok_or_else(|| anyhow!("reward model not loaded"))?;
                    let ex = crate::train::sft::SftExample::from_pair(None, &it.prompt, o);
                    let enc = crate::train::sft::encode(&base.tokenizer, &ex, base.config.max_position_embeddings, true, base.tokenizer.eos_id())?;
                    let (ids, last) = crate::train::reward::score_batch(&[&enc.ids], base.tokenizer.pad_id().unwrap_or(0), &base.device);
                    let s: Vec<f32> = rm.score(ids, &last).try_into_vec_as::<f32>().map_err(|e| anyhow!("{e:?}"))?;
                    s[0] as f64
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
            s.by_tag.entry(t).or_default().insert(name.to_string(), bootstrap(&v, aggregate(name), spec.bootstrap, 0.95, spec.seed ^ k as u64));
        }
    }
    s
}

fn model_card(r: &ModelRef) -> Result<ModelCard> {
    let p = r.path();
    let run = crate::train::job::is_run_dir(p).then(|| std::fs::read_to_string(p.join("run.json")).ok().and_then(|s| serde_json::from_str(&s).ok())).flatten();
    let sha256 = if crate::train::job::is_run_dir(p) {
        run.as_ref().and_then(|c: &Value| c["run_id"].as_str().map(|s| format!("run {s}"))).unwrap_or_default()
    } else {
        crate::train::job::model_hash(p)?
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
        let m = crate::train::job::load_base(mref.path(), device).with_context(|| format!("model {}", mref.path().display()))?;
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

impl EvalResult {
    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// Write `result.json` into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let p = dir.join(&self.id).join("result.json");
        crate::io::atomic_write(&p, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(p)
    }
}

/// A stored evaluation, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalListing {
    pub id: String,
    pub suite: String,
    pub models: String,
    pub dataset: String,
    pub created_at: String,
    pub summary: Value,
}

/// One blind A/B verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub id: i64,
    pub eval_id: String,
    pub item: String,
    /// The model shown on the left (A) and on the right (B).
    pub model_a: String,
    pub model_b: String,
    /// a, b, tie or both_bad.
    pub verdict: String,
    pub annotator: String,
    pub at: String,
}

impl Workspace {
    /// Store an evaluation result: `evals/<id>/result.json` and a row in the `evals` table.
    pub fn save_eval(&mut self, r: &EvalResult) -> Result<PathBuf> {
        let path = r.write(&self.root().join("evals"))?;
        let rel = path.strip_prefix(self.root()).unwrap_or(&path).display().to_string();
        let summary = serde_json::to_string(&r.summary)?;
        let version = r.dataset["version"].as_u64().unwrap_or(0) as i64;
        let dataset = r.dataset["name"].as_str().or_else(|| r.dataset["path"].as_str()).unwrap_or("").to_string();
        self.conn.execute(
            "INSERT INTO evals (suite, model, dataset, version, summary, file, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![r.suite, r.model_names().join(", "), dataset, version, summary, rel, r.created_at],
        )?;
        Ok(path)
    }

    pub fn evals(&self) -> Result<Vec<EvalListing>> {
        let mut st = self.conn.prepare("SELECT suite, model, dataset, summary, file, created_at FROM evals ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (suite, models, dataset, summary, file, created_at) = row?;
            let id = Path::new(&file).parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            out.push(EvalListing { id, suite, models, dataset, created_at, summary: serde_json::from_str(&summary).unwrap_or(Value::Null) });
        }
        Ok(out)
    }

    pub fn load_eval(&self, id: &str) -> Result<EvalResult> {
        let p = self.root().join("evals").join(id).join("result.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("evaluation `{id}` not found ({})", p.display()))?;
        serde_json::from_str(&text).with_context(|| p.display().to_string())
    }

    pub fn add_vote(&mut self, eval_id: &str, item: &str, model_a: &str, model_b: &str, verdict: &str, annotator: &str) -> Result<i64> {
        if !crate::data::labels::VERDICTS.contains(&verdict) {
            bail!("verdict must be one of {}", crate::data::labels::VERDICTS.join(", "));
        }
        self.conn.execute(
            "INSERT INTO votes (eval_id, item, model_a, model_b, verdict, annotator, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![eval_id, item, model_a, model_b, verdict, annotator, now_rfc3339()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Remove this annotator's latest vote on an evaluation (undo).
    pub fn undo_vote(&mut self, eval_id: &str, annotator: &str) -> Result<Option<Vote>> {
        let last = self.votes(eval_id)?.into_iter().filter(|v| v.annotator == annotator).next_back();
        if let Some(v) = &last {
            self.conn.execute("DELETE FROM votes WHERE id = ?1", [v.id])?;
        }
        Ok(last)
    }

    pub fn votes(&self, eval_id: &str) -> Result<Vec<Vote>> {
        let mut st = self.conn.prepare("SELECT id, eval_id, item, model_a, model_b, verdict, annotator, at FROM votes WHERE eval_id = ?1 ORDER BY id")?;
        let rows = st.query_map([eval_id], |r| {
            Ok(Vote {
                id: r.get(0)?,
                eval_id: r.get(1)?,
                item: r.get(2)?,
                model_a: r.get(3)?,
                model_b: r.get(4)?,
                verdict: r.get(5)?,
                annotator: r.get(6)?,
                at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Turn A/B verdicts (with a winner) into a `<suite>-ab-preferences` dataset version.
    pub fn votes_to_preferences(&mut self, eval_id: &str) -> Result<crate::data::VersionInfo> {
        let r = self.load_eval(eval_id)?;
        let names = r.model_names();
        let mut rows = Vec::new();
        for v in self.votes(eval_id)? {
            let (win, lose) = match v.verdict.as_str() {
                "a" => (&v.model_a, &v.model_b),
                "b" => (&v.model_b, &v.model_a),
                _ => continue,
            };
            let Some(i) = r.items.iter().position(|it| it.id == v.item) else { continue };
            let out = |name: &str| -> Option<String> { names.iter().position(|n| n == name).and_then(|m| r.outputs[m][i].output.clone()) };
            let (Some(c), Some(l)) = (out(win), out(lose)) else { continue };
            let mut m = serde_json::Map::new();
            m.insert("prompt".into(), Value::String(r.items[i].prompt.clone()));
            m.insert("chosen".into(), Value::String(c));
            m.insert("rejected".into(), Value::String(l));
            m.insert("chosen_model".into(), Value::String(win.clone()));
            m.insert("rejected_model".into(), Value::String(lose.clone()));
            m.insert("annotator".into(), Value::String(v.annotator.clone()));
            rows.push(m);
        }
        if rows.is_empty() {
            bail!("no A/B verdicts with a winner for `{eval_id}` yet");
        }
        let table = crate::data::Table::from_records(&rows, None)?;
        let roles = crate::data::Roles { prompt: Some("prompt".into()), chosen: Some("chosen".into()), rejected: Some("rejected".into()), ..Default::default() };
        let slug: String = r.suite.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
        let name = format!("{slug}-ab-preferences");
        let parent = self.version(&name, None).ok().map(|v| v.version);
        self.commit_version(&name, parent, &table, roles, "ab-preferences", serde_json::json!({"eval": eval_id, "pairs": rows.len()}))
    }
}

/// The battles still to judge: every item × pair of models, in a seeded random order, with
/// sides randomised, minus those this annotator already voted on.
pub fn ab_queue(r: &EvalResult, votes: &[Vote], annotator: &str, seed: u64) -> Vec<(String, String, String)> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let names = r.model_names();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for it in &r.items {
        for i in 0..names.len() {
            for j in i + 1..names.len() {
                let done = votes.iter().any(|v| v.annotator == annotator && v.item == it.id && ((v.model_a == names[i] && v.model_b == names[j]) || (v.model_a == names[j] && v.model_b == names[i])));
                if done {
                    continue;
                }
                let (a, b) = if rand::Rng::random::<bool>(&mut rng) { (i, j) } else { (j, i) };
                out.push((it.id.clone(), names[a].clone(), names[b].clone()));
            }
        }
    }
    out.shuffle(&mut rng);
    out
}

/// Ratings from the votes of an evaluation.
pub fn vote_ratings(r: &EvalResult, votes: &[Vote], resamples: usize, seed: u64) -> super::ratings::Ratings {
    let names = r.model_names();
    let idx = |n: &str| names.iter().position(|x| x == n);
    let battles: Vec<super::ratings::Battle> = votes
        .iter()
        .filter_map(|v| {
            let score = match v.verdict.as_str() {
                "a" => 1.0,
                "b" => 0.0,
                "tie" => 0.5,
                _ => return None,
            };
            Some(super::ratings::Battle { a: idx(&v.model_a)?, b: idx(&v.model_b)?, score })
        })
        .collect();
    super::ratings::ratings(&names, &battles, resamples, 0.95, seed)
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
