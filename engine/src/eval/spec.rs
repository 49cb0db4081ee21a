//! An evaluation suite (TOML): the dataset, the models (base models or training runs), the
//! metrics, generation settings; and the items a suite's dataset gives.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::metrics::Normalise;
use crate::data::DatasetSpec;
use crate::text::matching::Pattern;

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
    Regex { pattern: Pattern },
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
        let fix = |p: &mut PathBuf| *p = crate::io::resolve_path(base, p);
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
    let guess = data.roles.guess_missing(&names);
    let prompt = guess.prompt.clone().ok_or_else(|| anyhow!("{f}: no prompt column found (columns: {})", names.join(", ")))?;
    let pick = |explicit: &Option<String>, fallbacks: &[&str]| -> Option<String> {
        explicit.clone().or_else(|| fallbacks.iter().find(|c| names.iter().any(|n| n == *c)).map(|s| s.to_string()))
    };
    let reference = spec.reference.clone().or(guess.reference.clone()).or(guess.response.clone()).or(guess.label.clone());
    let tag = pick(&spec.tag, &["label", "category", "department", "topic", "tag"]);
    for c in [Some(&prompt), reference.as_ref(), tag.as_ref()].into_iter().flatten() {
        if !names.contains(c) {
            bail!("{f}: column `{c}` not found (columns: {})", names.join(", "));
        }
    }
    let choices_col =
        spec.metrics.iter().find_map(|m| if let MetricSpec::Choice { choices, .. } = m { Some(choices.clone()) } else { None });
    if let Some(c) = &choices_col
        && !names.contains(c)
    {
        bail!("{f}: choices column `{c}` not found (columns: {})", names.join(", "));
    }
    let mut items = Vec::new();
    for (i, r) in data.records.iter().enumerate().take(spec.limit.unwrap_or(usize::MAX)) {
        let id = text_of(r.get("_id")).or_else(|| text_of(r.get("id"))).unwrap_or_else(|| (i + 1).to_string());
        items.push(Item {
            id,
            prompt: text_of(r.get(&prompt))
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| anyhow!("{f}: row {}: prompt is empty", i + 1))?,
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
