//! Scoring one output against its reference, and summarising scores with bootstrap
//! confidence intervals.

use rand::{Rng, SeedableRng};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Matching is shared with the rule rewards of RL jobs: the answer's number is the last number
/// in the text (`text::matching`).
pub use crate::text::matching::{Normalise, Pattern, answer_number, contains, exact_match, numeric};

/// A judge's score scaled to [0, 1]: an explicit `N/max` if there is one, else the last whole
/// number from 1 to `max` in its reply ("On a scale of 1 to 5, I give 4" → 4).
pub fn judge_score(reply: &str, max: u32) -> Option<f64> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static OUT_OF: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\d+").unwrap());
    let out_of = OUT_OF.get_or_init(|| Regex::new(r"(\d+)\s*/\s*(\d+)").unwrap());
    let scale = |s: u32| (s - 1) as f64 / (max.max(2) - 1) as f64;
    if let Some(c) = out_of.captures_iter(reply).find(|c| c[2].parse::<u32>().ok() == Some(max))
        && let Ok(s) = c[1].parse::<u32>()
        && (1..=max).contains(&s)
    {
        return Some(scale(s));
    }
    re.find_iter(reply).filter_map(|m| m.as_str().parse::<u32>().ok()).filter(|&s| (1..=max).contains(&s)).last().map(scale)
}

/// Mean with a percentile-bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// Statistic `agg` of `values` with a `level` (e.g. 0.95) percentile-bootstrap interval over
/// `resamples` resamples of the items (seeded).
pub fn bootstrap(values: &[f64], agg: impl Fn(&[f64]) -> f64, resamples: usize, level: f64, seed: u64) -> Stat {
    let n = values.len();
    if n == 0 {
        return Stat { mean: f64::NAN, lo: f64::NAN, hi: f64::NAN, n: 0 };
    }
    let point = agg(values);
    if resamples == 0 || n == 1 {
        return Stat { mean: point, lo: point, hi: point, n };
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut buf = vec![0.0; n];
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| {
            for b in buf.iter_mut() {
                *b = values[rng.random_range(0..n)];
            }
            agg(&buf)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| stats[((p * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    let a = (1.0 - level) / 2.0;
    Stat { mean: point, lo: q(a), hi: q(1.0 - a), n }
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_by_hand() {
        let n = Normalise::squad();
        assert_eq!(n.apply("  The  Answer, is: PARIS! "), "the answer is paris");
        assert_eq!(exact_match("Paris.", "paris", &n), 1.0);
        assert_eq!(exact_match("Paris, France", "paris", &n), 0.0);
        let arts = Normalise { strip_articles: true, ..n };
        assert_eq!(exact_match("The Eiffel Tower", "eiffel tower", &arts), 1.0);
        assert_eq!(contains("Emergency: call 911", "emergency", true), 1.0);
        assert_eq!(contains("Emergency: call 911", "emergency", false), 0.0);
        assert_eq!(answer_number("about 1,234.5 mg"), Some(1234.5));
        assert_eq!(answer_number("-3 degrees"), Some(-3.0));
        assert_eq!(numeric("It is 101 C", "100", 1.0, false), 1.0);
        assert_eq!(numeric("It is 102 C", "100", 1.0, false), 0.0);
        assert_eq!(numeric("about 105", "100", 0.05, true), 1.0);
        assert_eq!(judge_score("Score: 4/5 because…", 5), Some(0.75));
        assert_eq!(judge_score("On a scale of 1 to 5, I give 4", 5), Some(0.75));
        assert_eq!(judge_score("I give it a 9", 5), None);
        assert_eq!(Pattern::new("^(Routine|Urgent)").unwrap().score("Routine: rest"), 1.0);
    }

    #[test]
    fn bootstrap_interval_is_right_on_known_data() {
        // Degenerate: all ones → [1, 1].
        let s = bootstrap(&[1.0; 20], mean, 500, 0.95, 0);
        assert_eq!((s.mean, s.lo, s.hi), (1.0, 1.0, 1.0));
        // 50 of 100: interval around 0.5 of width ≈ 2·1.96·0.05 ≈ 0.196.
        let v: Vec<f64> = (0..100).map(|i| f64::from(i % 2 == 0)).collect();
        let s = bootstrap(&v, mean, 4000, 0.95, 1);
        assert!((s.hi - s.lo - 0.196).abs() < 0.03, "{s:?}");
        assert!(s.lo < 0.5 && s.hi > 0.5);
    }

    #[test]
    fn bootstrap_covers_the_true_rate_about_95_percent_of_the_time() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let p = 0.7;
        let trials = 300;
        let mut covered = 0;
        for t in 0..trials {
            let v: Vec<f64> = (0..120).map(|_| f64::from(rng.random::<f64>() < p)).collect();
            let s = bootstrap(&v, mean, 600, 0.95, t);
            if s.lo <= p && p <= s.hi {
                covered += 1;
            }
        }
        let rate = covered as f64 / trials as f64;
        assert!((0.90..=0.985).contains(&rate), "coverage {rate}");
    }
}
