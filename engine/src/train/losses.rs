//! The losses of the preference and RL methods, each written as its paper (or DeepSpeed-Chat /
//! TRL) states it, on burn tensors so they differentiate; and the host-side pieces of RL
//! (per-token KL-penalised rewards, GAE, group-normalised advantages). Every function is
//! checked against a hand-written reference in the tests below.

use burn::tensor::{Tensor, activation};
use serde::{Deserialize, Serialize};

/// Reward model: mean of −log σ(r_chosen − r_rejected). Inputs `[B]`.
pub fn pairwise_reward_loss(chosen: Tensor<1>, rejected: Tensor<1>) -> Tensor<1> {
    // −log σ(x) = softplus(−x), computed stably.
    activation::softplus((rejected - chosen).reshape([-1]), 1.0).mean()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoVariant {
    /// Rafailov et al.: −log σ(β·h), with conservative label smoothing.
    Sigmoid,
    /// Azar et al. (IPO): (h − 1/(2β))².
    Ipo,
    /// SLiC-style hinge: max(0, 1 − β·h).
    Hinge,
}

/// DPO losses. Inputs `[B]`: summed log-probs of the chosen/rejected responses under the policy
/// and the frozen reference. Returns (mean loss, β(π_c − ref_c), β(π_r − ref_r)), the last two
/// being TRL's rewards/chosen and rewards/rejected per example.
pub fn dpo_loss(
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    beta: f64,
    label_smoothing: f64,
    variant: DpoVariant,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let h = (policy_chosen.clone() - policy_rejected.clone()) - (ref_chosen.clone() - ref_rejected.clone());
    let loss = match variant {
        DpoVariant::Sigmoid => {
            let pos = activation::softplus(h.clone() * (-beta), 1.0); // −log σ(βh)
            let neg = activation::softplus(h * beta, 1.0); // −log σ(−βh)
            (pos * (1.0 - label_smoothing) + neg * label_smoothing).mean()
        }
        DpoVariant::Ipo => (h - 1.0 / (2.0 * beta)).square().mean(),
        DpoVariant::Hinge => activation::relu((h * beta).neg() + 1.0).mean(),
    };
    let rc = (policy_chosen - ref_chosen).detach() * beta;
    let rr = (policy_rejected - ref_rejected).detach() * beta;
    (loss, rc, rr)
}

/// Masked mean over all elements.
fn masked_mean<const D: usize>(x: Tensor<D>, mask: Tensor<D>) -> Tensor<1> {
    (x * mask.clone()).sum() / mask.sum().clamp_min(1.0)
}

/// PPO clipped policy loss (DeepSpeed-Chat `actor_loss_fn`): with ratio = exp(logπ − logπ_old),
/// mean over response tokens of max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)). Also returns the clip
/// fraction and the approximate KL mean((ratio − 1) − log ratio). Inputs `[B, T]`.
pub fn ppo_policy_loss(
    logp: Tensor<2>,
    old_logp: Tensor<2>,
    advantages: Tensor<2>,
    mask: Tensor<2>,
    clip: f64,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let log_ratio = (logp - old_logp) * mask.clone();
    let ratio = log_ratio.clone().exp();
    let pg1 = advantages.clone().neg() * ratio.clone();
    let pg2 = advantages.neg() * ratio.clone().clamp(1.0 - clip, 1.0 + clip);
    let loss = masked_mean(pg1.clone().max_pair(pg2.clone()), mask.clone());
    let clipped = pg2.greater(pg1).float().detach();
    let clip_frac = masked_mean(clipped, mask.clone());
    let approx_kl = masked_mean(((ratio.clone() - 1.0) - log_ratio).detach(), mask);
    (loss, clip_frac, approx_kl)
}

/// PPO clipped value loss (DeepSpeed-Chat `critic_loss_fn`):
/// 0.5 · mean(max((V − R)², (clip(V, V_old ± ε) − R)²)) over response tokens. Inputs `[B, T]`.
pub fn ppo_value_loss(values: Tensor<2>, old_values: Tensor<2>, returns: Tensor<2>, mask: Tensor<2>, clip: f64) -> Tensor<1> {
    let clipped = old_values.clone() + (values.clone() - old_values).clamp(-clip, clip);
    let l1 = (values - returns.clone()).square();
    let l2 = (clipped - returns).square();
    masked_mean(l1.max_pair(l2), mask) * 0.5
}

/// Token-level distillation divergences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Divergence {
    /// KL(teacher ‖ student): mass-covering.
    ForwardKl,
    /// KL(student ‖ teacher): mode-seeking.
    ReverseKl,
    /// Generalised JSD with mixture weight β: β·KL(t ‖ m) + (1−β)·KL(s ‖ m), m = β·t + (1−β)·s.
    Jsd { beta: f64 },
}

/// Distillation loss on temperature-softened distributions, mean over masked tokens, scaled by
/// T² (Hinton et al.) so gradients keep their size across temperatures. Logits `[B, T, V]`,
/// mask `[B, T]`.
pub fn distill_loss(student: Tensor<3>, teacher: Tensor<3>, mask: Tensor<2>, temperature: f64, div: Divergence) -> Tensor<1> {
    let ls = activation::log_softmax(student / temperature, 2);
    let lt = activation::log_softmax(teacher.detach() / temperature, 2);
    let per_token: Tensor<3> = match div {
        Divergence::ForwardKl => lt.clone().exp() * (lt - ls),
        Divergence::ReverseKl => ls.clone().exp() * (ls - lt),
        Divergence::Jsd { beta } => {
            let (pt, ps) = (lt.clone().exp(), ls.clone().exp());
            let lm = (pt.clone() * beta + ps.clone() * (1.0 - beta)).clamp_min(1e-30).log();
            pt * (lt - lm.clone()) * beta + ps * (ls - lm) * (1.0 - beta)
        }
    };
    let [b, t, _] = per_token.dims();
    masked_mean(per_token.sum_dim(2).reshape([b, t]), mask) * (temperature * temperature)
}

/// DeepSpeed-Chat's per-token rewards for one response: −kl_coef·(logπ − logπ_ref) at every
/// token, plus the reward-model score clipped to ±`clip` on the last token.
pub fn kl_penalised_rewards(logp: &[f32], ref_logp: &[f32], score: f32, kl_coef: f32, clip: f32) -> Vec<f32> {
    let mut r: Vec<f32> = logp.iter().zip(ref_logp).map(|(a, b)| -kl_coef * (a - b)).collect();
    if let Some(last) = r.last_mut() {
        *last += score.clamp(-clip, clip);
    }
    r
}

/// Generalised advantage estimation for one response: δ_t = r_t + γ·V_{t+1} − V_t (V after the
/// last token is 0), A_t = δ_t + γλ·A_{t+1}; returns R_t = A_t + V_t.
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lambda: f32) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    let mut adv = vec![0f32; n];
    let mut next_adv = 0f32;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        adv[t] = next_adv;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// GRPO: each completion's advantage is its reward standardised within its group,
/// (r − mean) / (std + eps), std the sample standard deviation (as TRL computes it).
pub fn group_advantages(rewards: &[f32], eps: f32) -> Vec<f32> {
    let n = rewards.len() as f32;
    let mean = rewards.iter().sum::<f32>() / n;
    let var = if rewards.len() > 1 { rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (n - 1.0) } else { 0.0 };
    rewards.iter().map(|r| (r - mean) / (var.sqrt() + eps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t1(v: &[f64]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [v.len()]), &Device::flex())
    }
    fn t2(v: &[&[f64]]) -> Tensor<2> {
        let (r, c) = (v.len(), v[0].len());
        Tensor::from_data(TensorData::new(v.iter().flat_map(|r| r.iter().map(|&x| x as f32)).collect::<Vec<_>>(), [r, c]), &Device::flex())
    }
    fn s(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }
    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    fn logsig(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    #[test]
    fn reward_pairwise() {
        let (c, r) = ([1.0, -0.5, 3.0], [0.0, 0.5, -1.0]);
        let want = -(0..3).map(|i| logsig(c[i] - r[i])).sum::<f64>() / 3.0;
        close(s(pairwise_reward_loss(t1(&c), t1(&r))), want);
    }

    #[test]
    fn dpo_variants() {
        let (pc, pr, rc, rr) = ([-10.0, -12.0], [-11.0, -9.0], [-10.5, -11.0], [-10.5, -10.0]);
        let (beta, ls) = (0.1, 0.2);
        let h: Vec<f64> = (0..2).map(|i| (pc[i] - pr[i]) - (rc[i] - rr[i])).collect();
        let sig = h.iter().map(|h| -(1.0 - ls) * logsig(beta * h) - ls * logsig(-beta * h)).sum::<f64>() / 2.0;
        let ipo = h.iter().map(|h| (h - 1.0 / (2.0 * beta)).powi(2)).sum::<f64>() / 2.0;
        let hinge = h.iter().map(|h| (1.0 - beta * h).max(0.0)).sum::<f64>() / 2.0;
        let run = |v| dpo_loss(t1(&pc), t1(&pr), t1(&rc), t1(&rr), beta, ls, v);
        let (l, rwc, rwr) = run(DpoVariant::Sigmoid);
        close(s(l), sig);
        let rwc = rwc.try_into_vec_as::<f32>().unwrap();
        let rwr = rwr.try_into_vec_as::<f32>().unwrap();
        close(rwc[0] as f64, beta * (pc[0] - rc[0]));
        close(rwr[1] as f64, beta * (pr[1] - rr[1]));
        close(s(run(DpoVariant::Ipo).0), ipo);
        close(s(run(DpoVariant::Hinge).0), hinge);
    }

    #[test]
    fn ppo_losses_with_mask() {
        let logp: [&[f64]; 2] = [&[-1.0, -2.0, -0.5], &[-0.3, -1.5, -9.0]];
        let old: [&[f64]; 2] = [&[-1.2, -1.7, -0.5], &[-0.9, -1.5, -1.0]];
        let adv: [&[f64]; 2] = [&[0.5, -1.0, 2.0], &[1.5, 0.3, 4.0]];
        let mask: [&[f64]; 2] = [&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]];
        let clip = 0.2;
        let (mut loss, mut frac, mut kl, mut n) = (0.0, 0.0, 0.0, 0.0);
        for b in 0..2 {
            for t in 0..3 {
                if mask[b][t] == 0.0 {
                    continue;
                }
                let lr = logp[b][t] - old[b][t];
                let ratio = lr.exp();
                let pg1 = -adv[b][t] * ratio;
                let pg2 = -adv[b][t] * ratio.clamp(1.0 - clip, 1.0 + clip);
                loss += pg1.max(pg2);
                frac += if pg2 > pg1 { 1.0 } else { 0.0 };
                kl += (ratio - 1.0) - lr;
                n += 1.0;
            }
        }
        let (l, f, k) = ppo_policy_loss(t2(&logp), t2(&old), t2(&adv), t2(&mask), clip);
        close(s(l), loss / n);
        close(s(f), frac / n);
        close(s(k), kl / n);

        let v: [&[f64]; 2] = [&[0.5, 0.1, 2.0], &[1.0, -0.2, 5.0]];
        let ov: [&[f64]; 2] = [&[0.2, 0.4, 1.0], &[1.1, -0.1, 0.0]];
        let ret: [&[f64]; 2] = [&[0.0, 1.0, 1.5], &[2.0, 0.0, 9.0]];
        let mut want = 0.0;
        for b in 0..2 {
            for t in 0..3 {
                if mask[b][t] == 0.0 {
                    continue;
                }
                let c = ov[b][t] + (v[b][t] - ov[b][t]).clamp(-clip, clip);
                want += (v[b][t] - ret[b][t]).powi(2).max((c - ret[b][t]).powi(2));
            }
        }
        close(s(ppo_value_loss(t2(&v), t2(&ov), t2(&ret), t2(&mask), clip)), 0.5 * want / n);
    }

    #[test]
    fn gae_recursion_and_rewards() {
        let r = kl_penalised_rewards(&[-1.0, -2.0, -0.5], &[-1.5, -1.0, -0.5], 7.0, 0.1, 5.0);
        assert_eq!(r, vec![-0.1 * 0.5, -0.1 * -1.0, 5.0]);
        let (values, gamma, lam) = ([0.5f32, 0.2, -0.1], 0.9f32, 0.95f32);
        let (adv, ret) = gae(&r, &values, gamma, lam);
        // by hand, back to front
        let d2 = r[2] - values[2];
        let d1 = r[1] + gamma * values[2] - values[1];
        let d0 = r[0] + gamma * values[1] - values[0];
        let a2 = d2;
        let a1 = d1 + gamma * lam * a2;
        let a0 = d0 + gamma * lam * a1;
        for (g, w) in adv.iter().zip([a0, a1, a2]) {
            assert!((g - w).abs() < 1e-6);
        }
        assert!((ret[0] - (a0 + values[0])).abs() < 1e-6);
    }

    #[test]
    fn group_standardisation() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0], 1e-4);
        // mean 0.5, sample std sqrt(1/3)
        let sd = (1.0f32 / 3.0).sqrt();
        assert!((a[0] - 0.5 / (sd + 1e-4)).abs() < 1e-6 && (a[1] + 0.5 / (sd + 1e-4)).abs() < 1e-6);
        assert_eq!(group_advantages(&[2.0, 2.0], 1e-4), vec![0.0, 0.0]);
    }

    #[test]
    fn distillation_divergences() {
        let st = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]];
        let te = [[0.0, 2.0, 0.0], [1.0, -1.0, 0.5]];
        let mask = [1.0, 0.0];
        let temp = 2.0;
        let softmax = |x: &[f64; 3]| {
            let m = x.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = x.iter().map(|v| ((v - m) / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|v| v / z).collect::<Vec<_>>()
        };
        let kl = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum::<f64>();
        let (ps, pt) = (softmax(&st[0]), softmax(&te[0]));
        let beta = 0.3;
        let m: Vec<f64> = pt.iter().zip(&ps).map(|(t, s)| beta * t + (1.0 - beta) * s).collect();
        let want = [kl(&pt, &ps), kl(&ps, &pt), beta * kl(&pt, &m) + (1.0 - beta) * kl(&ps, &m)];
        let dev = Device::flex();
        let t3 = |v: [[f64; 3]; 2]| {
            Tensor::<3>::from_data(TensorData::new(v.iter().flatten().map(|&x| x as f32).collect::<Vec<_>>(), [1, 2, 3]), &dev)
        };
        let mk = Tensor::<2>::from_data(TensorData::new(mask.map(|x| x as f32).to_vec(), [1, 2]), &dev);
        for (div, w) in [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::Jsd { beta }].into_iter().zip(want) {
            close(s(distill_loss(t3(st), t3(te), mk.clone(), temp, div)), w * temp * temp);
        }
    }
}
