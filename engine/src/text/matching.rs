//! Matching an answer against a reference, shared by the rule rewards of RL jobs
//! (`train::rewards`) and the metrics of evaluation suites (`eval::metrics`), so a rule and a
//! metric with the same name always agree.
//!
//! - **Normalisation** ([`Normalise`]): case, whitespace, punctuation (ASCII and CJK), articles.
//! - **Numbers**: the answer's number is the **last** number in the text (`1,234.5`, `-3`,
//!   `2e-3`), as GSM8K-style grading does: a model that reasons first states its answer last.
//! - **Patterns** ([`Pattern`]): a regular expression compiled once, when the job or suite file
//!   is read, so a bad pattern is an error naming the file and a good one is never recompiled.

use std::sync::OnceLock;

use regex::Regex;
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

/// 1 when both texts are equal after normalisation.
pub fn exact_match(output: &str, reference: &str, n: &Normalise) -> f64 {
    f64::from(n.apply(output) == n.apply(reference))
}

/// 1 when `output` contains `needle` (never for an empty needle).
pub fn contains(output: &str, needle: &str, case_insensitive: bool) -> f64 {
    if needle.is_empty() {
        return 0.0;
    }
    if case_insensitive { f64::from(output.to_lowercase().contains(&needle.to_lowercase())) } else { f64::from(output.contains(needle)) }
}

fn number_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?").expect("valid number pattern"))
}

/// The answer's number: the last number in the text (accepts `1,234.5`, `-3`, `2e-3`).
pub fn answer_number(s: &str) -> Option<f64> {
    number_regex().find_iter(s).last().and_then(|m| m.as_str().replace(',', "").parse().ok())
}

/// 1 when the output's answer number is within `tolerance` of the reference's (relative to the
/// reference's size when `relative`).
pub fn numeric(output: &str, reference: &str, tolerance: f64, relative: bool) -> f64 {
    match (answer_number(output), answer_number(reference)) {
        (Some(o), Some(r)) => {
            let tol = if relative { tolerance * r.abs() } else { tolerance };
            f64::from((o - r).abs() <= tol + 1e-12)
        }
        _ => 0.0,
    }
}

/// A regular expression, compiled once when it is read. Serialises as its source text.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    re: Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Self { source: source.to_string(), re: Regex::new(source)? })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// 1 when the pattern matches somewhere in `text`.
    pub fn score(&self, text: &str) -> f64 {
        f64::from(self.re.is_match(text))
    }
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(|e| serde::de::Error::custom(format!("bad regular expression {source:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_last_in_the_text() {
        assert_eq!(answer_number("about 1,234.5 mg"), Some(1234.5));
        assert_eq!(answer_number("-3 degrees"), Some(-3.0));
        assert_eq!(answer_number("3 apples and 4 pears make 7"), Some(7.0));
        assert_eq!(answer_number("no digits"), None);
        assert_eq!(numeric("It is 101 C", "100", 1.0, false), 1.0);
        assert_eq!(numeric("It is 102 C", "100", 1.0, false), 0.0);
        assert_eq!(numeric("about 105", "100", 0.05, true), 1.0);
        assert_eq!(numeric("Step 1: 40 + 2. The answer is 42", "42", 0.0, false), 1.0);
    }

    #[test]
    fn normalising_and_matching() {
        assert_eq!(exact_match("  Paris. ", "paris", &Normalise::squad()), 1.0);
        assert_eq!(exact_match("Paris.", "Paris", &Normalise::default()), 0.0);
        assert_eq!(Normalise { strip_articles: true, collapse_whitespace: true, ..Default::default() }.apply("The  cat"), "cat");
        assert_eq!(contains("It is PARIS", "paris", true), 1.0);
        assert_eq!(contains("It is PARIS", "paris", false), 0.0);
        assert_eq!(contains("anything", "", false), 0.0);
    }

    #[test]
    fn patterns_compile_once_and_refuse_bad_ones() {
        let p = Pattern::new("^(Routine|Urgent)").unwrap();
        assert_eq!(p.score("Routine: rest"), 1.0);
        assert_eq!(p.score("Emergency"), 0.0);
        #[derive(Deserialize, Debug)]
        struct R {
            #[allow(dead_code)]
            pattern: Pattern,
        }
        let err = toml::from_str::<R>("pattern = \"(\"").unwrap_err().to_string();
        assert!(err.contains("bad regular expression"), "{err}");
        let ok: R = toml::from_str("pattern = \"a+\"").unwrap();
        assert_eq!(ok.pattern.as_str(), "a+");
    }
}
