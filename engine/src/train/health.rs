//! Training health checks in plain words, computed from the same step and eval records the
//! charts show: non-finite loss, loss spikes, exploding gradients, KL blow-up, reward rising
//! while KL explodes (possible reward hacking), and held-out loss rising (overfitting).

use serde::{Deserialize, Serialize};

use crate::runs::{EvalRecord, StepRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Danger,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub severity: Severity,
    /// Short headline, e.g. "Loss is not a number".
    pub title: String,
    /// What it means and what to do, for someone who is not an ML engineer.
    pub advice: String,
    pub step: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The first metric whose name matches, per step (None where a step lacks it).
fn series(steps: &[StepRecord], pick: impl Fn(&str) -> bool) -> Vec<(usize, f64)> {
    steps.iter().filter_map(|s| s.metrics.iter().find(|(k, _)| pick(k)).map(|(_, v)| (s.step, *v))).collect()
}

/// KL to the reference model: `kl` (GRPO), `kl_to_reference` (PPO), `objective/kl` (TRL names).
fn is_kl(k: &str) -> bool {
    matches!(k, "kl" | "kl_to_reference" | "objective/kl")
}

/// Mean reward per step: `reward_mean` (PPO, GRPO), `reward`, `rewards/mean`.
fn is_reward(k: &str) -> bool {
    matches!(k, "reward_mean" | "reward" | "rewards/mean")
}

/// Every alert that holds for the records so far, most serious first.
pub fn check(steps: &[StepRecord], evals: &[EvalRecord]) -> Vec<Alert> {
    let mut out = Vec::new();
    if let Some(s) = steps.iter().find(|s| !s.loss.is_finite()) {
        out.push(Alert {
            severity: Severity::Danger,
            title: "Loss is not a number".into(),
            advice: "Training diverged (the loss became NaN or infinite), so the job stopped and kept its last good checkpoint. \
                     Lower the learning rate (for example by 10×) or turn on gradient clipping, then resume or start again."
                .into(),
            step: s.step,
        });
    }
    let finite: Vec<&StepRecord> = steps.iter().filter(|s| s.loss.is_finite()).collect();
    if finite.len() >= 8 {
        let last = finite[finite.len() - 1];
        let before: Vec<f64> = finite[finite.len().saturating_sub(11)..finite.len() - 1].iter().map(|s| s.loss).collect();
        let m = median(before);
        if m > 0.0 && last.loss > 3.0 * m {
            out.push(Alert {
                severity: Severity::Warning,
                title: "Loss jumped".into(),
                advice: format!(
                    "The loss is {:.3}, more than three times its recent level ({m:.3}). One odd batch can do this; if it keeps happening, lower the learning rate.",
                    last.loss
                ),
                step: last.step,
            });
        }
        let gn: Vec<f64> = finite[..finite.len() - 1].iter().map(|s| s.grad_norm).filter(|g| g.is_finite()).collect();
        let gm = median(gn);
        if gm > 0.0 && last.grad_norm > 50.0 * gm {
            out.push(Alert {
                severity: Severity::Warning,
                title: "Gradients exploded".into(),
                advice: format!(
                    "The gradient norm is {:.1}, about {:.0}× its usual size. Keep gradient clipping on (max_grad_norm = 1.0) and consider a lower learning rate.",
                    last.grad_norm,
                    last.grad_norm / gm
                ),
                step: last.step,
            });
        }
    }
    let kl = series(steps, is_kl);
    if kl.len() >= 6 {
        let k = kl.len();
        let early = mean(&kl[..(k / 3).max(2)].iter().map(|x| x.1).collect::<Vec<_>>()).abs();
        let late = mean(&kl[k - 3..].iter().map(|x| x.1).collect::<Vec<_>>());
        let exploding = late > 10.0 || (late > 1.0 && late > 5.0 * early.max(0.05));
        if exploding {
            let reward = series(steps, is_reward);
            let rising = reward.len() >= 6 && {
                let r = reward.len();
                mean(&reward[r - 3..].iter().map(|x| x.1).collect::<Vec<_>>()) > mean(&reward[..3].iter().map(|x| x.1).collect::<Vec<_>>())
            };
            let step = kl[k - 1].0;
            if rising {
                out.push(Alert {
                    severity: Severity::Danger,
                    title: "Possible reward hacking".into(),
                    advice: format!(
                        "The reward keeps rising while the KL divergence from the starting model exploded (now {late:.2}). The model may be gaming the \
                         reward instead of getting better: read some samples. Raise the KL coefficient, lower the learning rate, or stop here."
                    ),
                    step,
                });
            } else {
                out.push(Alert {
                    severity: Severity::Danger,
                    title: "KL divergence is blowing up".into(),
                    advice: format!(
                        "The model is drifting far from where it started (KL {late:.2}, up from {early:.2}). Raise the KL coefficient or lower the learning rate."
                    ),
                    step,
                });
            }
        }
    }
    // Only evaluations with a held-out loss (suite scores carry NaN there).
    let evals: Vec<&EvalRecord> = evals.iter().filter(|e| e.eval_loss.is_finite()).collect();
    if evals.len() >= 3 {
        let e = &evals[evals.len() - 3..];
        let eval_rising = e[0].eval_loss < e[1].eval_loss && e[1].eval_loss < e[2].eval_loss;
        let train_falling = finite.len() >= 4 && {
            let n = finite.len();
            mean(&finite[n - n / 4..].iter().map(|s| s.loss).collect::<Vec<_>>())
                < mean(&finite[..n / 4].iter().map(|s| s.loss).collect::<Vec<_>>())
        };
        if eval_rising && train_falling {
            out.push(Alert {
                severity: Severity::Warning,
                title: "Overfitting: held-out loss is rising".into(),
                advice: format!(
                    "Training loss keeps falling but the loss on held-out examples rose at the last two evaluations ({:.3} → {:.3} → {:.3}). \
                     The model is memorising its training examples. Use the checkpoint from before the rise, train fewer epochs, or add data.",
                    e[0].eval_loss, e[1].eval_loss, e[2].eval_loss
                ),
                step: e[2].step,
            });
        }
    }
    out.sort_by_key(|a| (a.severity != Severity::Danger, a.step));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step(step: usize, loss: f64, metrics: &[(&str, f64)]) -> StepRecord {
        StepRecord {
            device_memory_bytes: None,
            step,
            epoch: 0,
            loss,
            lr: 1e-4,
            grad_norm: 1.0,
            token_accuracy: None,
            tokens: 10,
            tokens_seen: 10 * step,
            tokens_per_second: 100.0,
            elapsed_seconds: step as f64,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        }
    }

    fn eval(step: usize, loss: f64) -> EvalRecord {
        EvalRecord { step, eval_loss: loss, perplexity: None, token_accuracy: None, metrics: BTreeMap::new() }
    }

    #[test]
    fn healthy_runs_raise_nothing() {
        let steps: Vec<StepRecord> =
            (1..=20).map(|i| step(i, 2.0 / i as f64, &[("kl", 0.01 * i as f64), ("reward", 0.1 * i as f64)])).collect();
        let evals = vec![eval(5, 1.0), eval(10, 0.9), eval(15, 0.85)];
        assert!(check(&steps, &evals).is_empty(), "{:?}", check(&steps, &evals));
    }

    #[test]
    fn each_problem_is_named() {
        let mut steps: Vec<StepRecord> = (1..=10).map(|i| step(i, 1.0, &[])).collect();
        steps.push(step(11, f64::NAN, &[]));
        assert_eq!(check(&steps, &[])[0].title, "Loss is not a number");

        let mut steps: Vec<StepRecord> = (1..=10).map(|i| step(i, 1.0, &[])).collect();
        steps.push(step(11, 5.0, &[]));
        assert_eq!(check(&steps, &[])[0].title, "Loss jumped");

        let hacking: Vec<StepRecord> =
            (1..=12).map(|i| step(i, 1.0, &[("kl", if i < 8 { 0.05 } else { 4.0 }), ("reward", i as f64)])).collect();
        assert_eq!(check(&hacking, &[])[0].title, "Possible reward hacking");
        let drifting: Vec<StepRecord> =
            (1..=12).map(|i| step(i, 1.0, &[("objective/kl", if i < 8 { 0.05 } else { 12.0 }), ("reward", 1.0)])).collect();
        assert_eq!(check(&drifting, &[])[0].title, "KL divergence is blowing up");

        let falling: Vec<StepRecord> = (1..=20).map(|i| step(i, 2.0 / i as f64, &[])).collect();
        let evals = vec![eval(5, 0.9), eval(10, 1.0), eval(15, 1.2)];
        let a = check(&falling, &evals);
        assert_eq!(a[0].title, "Overfitting: held-out loss is rising");
        assert_eq!(a[0].step, 15);
    }
}
