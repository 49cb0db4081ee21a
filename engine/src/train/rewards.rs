//! Rule rewards an expert writes without code (in a job file or the GUI), combined with weights:
//! exact match, contains / does-not-contain, regex, numeric answer within a tolerance, valid JSON
//! with required keys, and a length penalty. (A trained reward model plugs in beside these.)
//! The matching itself is `text::matching`, shared with evaluation metrics: numbers are the last
//! number in the text.

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

pub use crate::text::matching::Normalise;
use crate::text::matching::{self, Pattern};

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
    Regex { pattern: Pattern },
    /// 1 when the response's answer number (its last number) is within `tolerance` of the reference's
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

impl Rule {
    /// Check the rule's own settings (e.g. that a regex compiles), naming the problem.
    pub fn validate(&self) -> Result<()> {
        if let Rule::LengthPenalty { max_chars: 0 } = self {
            return Err(anyhow!("rule length_penalty: max_chars must be at least 1"));
        }
        Ok(())
    }

    pub fn score(&self, response: &str, reference: Option<&str>) -> f64 {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Rule::ExactMatch { normalise } => reference.map_or(0.0, |r| matching::exact_match(response, r, normalise)),
            Rule::Contains { text, case_insensitive } => {
                let Some(needle) = text.as_deref().or(reference) else { return 0.0 };
                matching::contains(response, needle, *case_insensitive)
            }
            Rule::NotContains { text, case_insensitive } => 1.0 - matching::contains(response, text, *case_insensitive),
            Rule::Regex { pattern } => pattern.score(response),
            Rule::Numeric { tolerance, relative } => reference.map_or(0.0, |r| matching::numeric(response, r, *tolerance, *relative)),
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
        assert_eq!(Rule::Regex { pattern: Pattern::new(r"^(Emergency|Urgent|Routine):").unwrap() }.score("Urgent: see a GP", None), 1.0);
        let num = Rule::Numeric { tolerance: 0.5, relative: false };
        assert_eq!(num.score("The dose is 1,250.3 mg", Some("1250")), 1.0);
        assert_eq!(num.score("about 1252 mg", Some("1250")), 0.0);
        // The tolerance is inclusive (4.04 is within 1 % of 4, whatever the float rounding).
        assert_eq!(Rule::Numeric { tolerance: 0.01, relative: true }.score("4.04", Some("4")), 1.0);
        assert_eq!(Rule::Numeric { tolerance: 0.01, relative: true }.score("4.05", Some("4")), 0.0);
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
        let bad_re: Result<R, _> = toml::from_str("[[rules]]\nrule = \"regex\"\npattern = \"(\"\n");
        assert!(bad_re.err().unwrap().to_string().contains("bad regular expression"));
        let bad: Result<R, _> = toml::from_str("[[rules]]\nrule = \"exact_match\"\nnormalize = {}\n");
        assert!(bad.is_err(), "unknown keys are errors");
    }
}
