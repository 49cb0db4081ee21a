//! Blind A/B comparison of an evaluation's models: the queue of battles still to judge (sides
//! shuffled), Bradley–Terry ratings from the votes, and votes with a winner turned into a
//! preference dataset for DPO or a reward model.

use anyhow::{Result, bail};
use serde_json::Value;

use super::score::EvalResult;
use crate::data::Workspace;
pub use crate::data::evals::Vote;

impl Workspace {
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
        let roles = crate::data::Roles {
            prompt: Some("prompt".into()),
            chosen: Some("chosen".into()),
            rejected: Some("rejected".into()),
            ..Default::default()
        };
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
                let done = votes.iter().any(|v| {
                    v.annotator == annotator
                        && v.item == it.id
                        && ((v.model_a == names[i] && v.model_b == names[j]) || (v.model_a == names[j] && v.model_b == names[i]))
                });
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
