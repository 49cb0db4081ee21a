//! Rule rewards an expert writes without code (in a job file or the GUI), combined with weights:
//! exact match, contains / does-not-contain, regex, numeric answer within a tolerance, valid JSON
//! with required keys, and a length penalty. (A trained reward model plugs in beside these.)

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

/// How to compare text for exact match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Normalise {
    pub case_insensitive: bool,
    pub trim: bool,
    /// Collapse runs of whitespace to one space.
    pub collapse_whitespace: bool,
    /// Drop ASCII and common CJK punctuation.
    pub strip_punctuation: bool,
    /// Drop the English articles a, an, the.
    pub strip_articles: bool,
}

impl Normalise {
    /// SQuAD-style: case, punctuation and spacing ignored (evaluation suites' default).
    pub fn squad() -> Self {
        Self { case_insensitive: true, trim: true, collapse_whitespace: true, strip_punctuation: true, strip_articles: false }
    }

    pub fn apply(&self, s: &str) -> String {
        let mut t: String = if self.strip_punctuation {
            s.chars().filter(|c| !c.is_ascii_punctuation() && !matches!(c, '。' | '，' | '、' | '！' | '？' | '：' | '；')).collect()
        } else {
            s.to_string()
        };
        if self.case_insensitive {
            t = t.to_lowercase();
        }
        if self.strip_articles {
            t = t.split_whitespace().filter(|w| !matches!(w.to_lowercase().as_str(), "a" | "an" | "the")).collect::<Vec<_>>().join(" ");
        }
        if self.collapse_whitespace {
            t = t.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        if self.trim {
            t = t.trim().to_string();
        }
        t
    }
}

/// One rule. `reference` is the example's reference answer (from the dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// 1 when the response equals the reference (after normalisation).
    ExactMatch {
        #[serde(default)]
        normalise: Normalise,
    },
    /// 1 when the response contains `text` (or, without `text`, the reference).
    Contains {
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        case_insensitive: bool,
    },
    /// 1 when the response does not contain `text`.
    NotContains {
        text: String,
        #[serde(default)]
        case_insensitive: bool,
    },
    /// 1 when the regular expression matches somewhere in the response.
    Regex { pattern: String },
    /// 1 when the last number in the response is within `tolerance` of the reference number
    /// (absolute, or relative to the reference when `relative`).
    Numeric {
        #[serde(default)]
        tolerance: f64,
        #[serde(default)]
        relative: bool,
    },
    /// 1 when the response is a JSON object containing every key in `required_keys`.
    ValidJson {
        #[serde(default)]
        required_keys: Vec<String>,
    },
    /// 0 up to `max_chars`, then −(excess / max_chars), floored at −1.
    LengthPenalty { max_chars: usize },
}

/// A rule with its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedRule {
    #[serde(flatten)]
    pub rule: Rule,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

fn last_number(s: &str) -> Option<f64> {
    let re = regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?").expect("valid");
    re.find_iter(s).last().and_then(|m| m.as_str().replace(',', "").parse().ok())
}

impl Rule {
    /// Check the rule's own settings (e.g. that a regex compiles), naming the problem.
    pub fn validate(&self) -> Result<()> {
        if let Rule::Regex { pattern } = self {
            regex::Regex::new(pattern).map_err(|e| anyhow!("rule regex: bad pattern {pattern:?}: {e}"))?;
        }
        if let Rule::LengthPenalty { max_chars: 0 } = self {
            return Err(anyhow!("rule length_penalty: max_chars must be at least 1"));
        }
        Ok(())
    }

    pub fn score(&self, response: &str, reference: Option<&str>) -> f64 {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Rule::ExactMatch { normalise } => b(reference.is_some_and(|r| normalise.apply(response) == normalise.apply(r))),
            Rule::Contains { text, case_insensitive } => {
                let Some(needle) = text.as_deref().or(reference) else { return 0.0 };
                if *case_insensitive {
                    b(response.to_lowercase().contains(&needle.to_lowercase()))
                } else {
                    b(response.contains(needle))
                }
            }
            Rule::NotContains { text, case_insensitive } => {
                if *case_insensitive {
                    b(!response.to_lowercase().contains(&text.to_lowercase()))
                } else {
                    b(!response.contains(text.as_str()))
                }
            }
            Rule::Regex { pattern } => b(regex::Regex::new(pattern).map(|re| re.is_match(response)).unwrap_or(false)),
            Rule::Numeric { tolerance, relative } => {
                let (Some(got), Some(want)) = (last_number(response), reference.and_then(last_number)) else { return 0.0 };
                let tol = if *relative { tolerance * want.abs() } else { *tolerance };
                b((got - want).abs() <= tol)
            }
            Rule::ValidJson { required_keys } => {
                let t = response.trim();
                let t = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).map(|x| x.trim_end_matches("```").trim()).unwrap_or(t);
                match serde_json::from_str::<serde_json::Value>(t) {
                    Ok(serde_json::Value::Object(o)) => b(required_keys.iter().all(|k| o.contains_key(k))),
                    _ => 0.0,
                }
            }
            Rule::LengthPenalty { max_chars } => {
                let n = response.chars().count();
                if n <= *max_chars { 0.0 } else { -(((n - max_chars) as f64) / *max_chars as f64).min(1.0) }
            }
        }
    }
}

/// The weighted sum of all rules.
pub fn combined_reward(rules: &[WeightedRule], response: &str, reference: Option<&str>) -> f64 {
    rules.iter().map(|r| r.weight * r.rule.score(response, reference)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule() {
        let norm = Normalise::squad();
        assert_eq!(Rule::ExactMatch { normalise: norm }.score("  Paris. ", Some("paris")), 1.0);
        assert_eq!(Rule::ExactMatch { normalise: Normalise::default() }.score("Paris.", Some("Paris")), 0.0);
        assert_eq!(Rule::Contains { text: Some("ambulance".into()), case_insensitive: false }.score("Call an ambulance now", None), 1.0);
        assert_eq!(Rule::Contains { text: None, case_insensitive: true }.score("It is PARIS", Some("paris")), 1.0);
        assert_eq!(Rule::NotContains { text: "google".into(), case_insensitive: true }.score("Just Google it", None), 0.0);
        assert_eq!(Rule::Regex { pattern: r"^(Emergency|Urgent|Routine):".into() }.score("Urgent: see a GP", None), 1.0);
        let num = Rule::Numeric { tolerance: 0.5, relative: false };
        assert_eq!(num.score("The dose is 1,250.3 mg", Some("1250")), 1.0);
        assert_eq!(num.score("about 1252 mg", Some("1250")), 0.0);
        assert_eq!(Rule::Numeric { tolerance: 0.01, relative: true }.score("4.04", Some("4")), 0.0);
        assert_eq!(Rule::Numeric { tolerance: 0.01, relative: true }.score("4.03", Some("4")), 1.0);
        let js = Rule::ValidJson { required_keys: vec!["triage".into()] };
        assert_eq!(js.score("```json\n{\"triage\": \"urgent\"}\n```", None), 1.0);
        assert_eq!(js.score("{\"level\": 1}", None), 0.0);
        assert_eq!(js.score("not json", None), 0.0);
        let lp = Rule::LengthPenalty { max_chars: 10 };
        assert_eq!(lp.score("short", None), 0.0);
        assert_eq!(lp.score("fifteen chars!!", None), -0.5);
        assert_eq!(lp.score(&"x".repeat(100), None), -1.0);
    }

    #[test]
    fn weighted_rules_from_toml() {
        #[derive(Deserialize)]
        struct R {
            rules: Vec<WeightedRule>,
        }
        let r: R = toml::from_str(
            "[[rules]]\nrule = \"exact_match\"\nweight = 2.0\nnormalise = { trim = true }\n\n[[rules]]\nrule = \"length_penalty\"\nmax_chars = 4\n",
        )
        .unwrap();
        assert_eq!(combined_reward(&r.rules, " abc", Some("abc")), 2.0);
        assert_eq!(combined_reward(&r.rules, "abcdef", Some("abc")), -0.5);
        assert!(Rule::Regex { pattern: "(".into() }.validate().unwrap_err().to_string().contains("bad pattern"));
        let bad: Result<R, _> = toml::from_str("[[rules]]\nrule = \"exact_match\"\nnormalize = {}\n");
        assert!(bad.is_err(), "unknown keys are errors");
    }
}
