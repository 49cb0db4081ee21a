//! Blind A/B verdicts → win rates, a pairwise win-fraction matrix, and Bradley–Terry strengths
//! on the Elo scale, each with bootstrap confidence intervals over the battles.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One battle: `a` and `b` index the models; `score` is 1 (a won), 0 (b won) or 0.5 (tie).
/// "Both bad" votes carry no preference and are not battles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Battle {
    pub a: usize,
    pub b: usize,
    pub score: f64,
}

/// Bradley–Terry strengths by Hunter's MM algorithm. Ties count half a win each way, and
/// every pair gets `prior` pseudo-wins each way so models that never win stay finite.
/// Returned as Elo-scale ratings: 400·log10(strength), centred on 1000.
pub fn bradley_terry(n: usize, battles: &[Battle], prior: f64) -> Vec<f64> {
    if n == 0 {
        return vec![];
    }
    let mut wins = vec![vec![prior; n]; n];
    for i in 0..n {
        wins[i][i] = 0.0;
    }
    for b in battles {
        wins[b.a][b.b] += b.score;
        wins[b.b][b.a] += 1.0 - b.score;
    }
    let mut p = vec![1.0f64; n];
    for _ in 0..10_000 {
        let mut next = vec![0.0; n];
        for i in 0..n {
            let w: f64 = wins[i].iter().sum();
            let denom: f64 = (0..n).filter(|&j| j != i).map(|j| (wins[i][j] + wins[j][i]) / (p[i] + p[j])).sum();
            next[i] = if denom > 0.0 { w / denom } else { p[i] };
        }
        let g = (next.iter().map(|x| x.ln()).sum::<f64>() / n as f64).exp();
        for x in next.iter_mut() {
            *x /= g;
        }
        let change = next.iter().zip(&p).map(|(a, b)| (a.ln() - b.ln()).abs()).fold(0.0, f64::max);
        p = next;
        if change < 1e-10 {
            break;
        }
    }
    p.iter().map(|x| 1000.0 + 400.0 * x.log10()).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub model: String,
    pub elo: f64,
    pub lo: f64,
    pub hi: f64,
    /// Share of its battles won (ties as halves).
    pub win_rate: f64,
    pub win_lo: f64,
    pub win_hi: f64,
    pub battles: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratings {
    pub ratings: Vec<Rating>,
    /// `matrix[i][j]`: share of i-vs-j battles i won (None when they never met).
    pub matrix: Vec<Vec<Option<f64>>>,
    pub battles: usize,
}

fn win_rates(n: usize, battles: &[Battle]) -> Vec<(f64, usize)> {
    let mut w = vec![0.0; n];
    let mut c = vec![0usize; n];
    for b in battles {
        w[b.a] += b.score;
        w[b.b] += 1.0 - b.score;
        c[b.a] += 1;
        c[b.b] += 1;
    }
    (0..n).map(|i| (if c[i] > 0 { w[i] / c[i] as f64 } else { f64::NAN }, c[i])).collect()
}

/// Ratings with `level` bootstrap intervals (battles resampled with replacement).
pub fn ratings(models: &[String], battles: &[Battle], resamples: usize, level: f64, seed: u64) -> Ratings {
    let n = models.len();
    let elo = bradley_terry(n, battles, 0.1);
    let wr = win_rates(n, battles);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut boot_elo: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut boot_wr: Vec<Vec<f64>> = vec![Vec::new(); n];
    if !battles.is_empty() {
        for _ in 0..resamples {
            let sample: Vec<Battle> = (0..battles.len()).map(|_| battles[rng.random_range(0..battles.len())]).collect();
            for (i, e) in bradley_terry(n, &sample, 0.1).into_iter().enumerate() {
                boot_elo[i].push(e);
            }
            for (i, (w, c)) in win_rates(n, &sample).into_iter().enumerate() {
                if c > 0 {
                    boot_wr[i].push(w);
                }
            }
        }
    }
    let q = |v: &mut Vec<f64>, p: f64, fallback: f64| -> f64 {
        if v.is_empty() {
            return fallback;
        }
        v.sort_by(f64::total_cmp);
        v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
    };
    let a = (1.0 - level) / 2.0;
    let ratings = (0..n)
        .map(|i| Rating {
            model: models[i].clone(),
            elo: elo[i],
            lo: q(&mut boot_elo[i], a, elo[i]),
            hi: q(&mut boot_elo[i], 1.0 - a, elo[i]),
            win_rate: wr[i].0,
            win_lo: q(&mut boot_wr[i], a, wr[i].0),
            win_hi: q(&mut boot_wr[i], 1.0 - a, wr[i].0),
            battles: wr[i].1,
        })
        .collect();
    let mut won = vec![vec![0.0; n]; n];
    let mut met = vec![vec![0usize; n]; n];
    for b in battles {
        won[b.a][b.b] += b.score;
        won[b.b][b.a] += 1.0 - b.score;
        met[b.a][b.b] += 1;
        met[b.b][b.a] += 1;
    }
    let matrix = (0..n).map(|i| (0..n).map(|j| (met[i][j] > 0).then(|| won[i][j] / met[i][j] as f64)).collect()).collect();
    Ratings { ratings, matrix, battles: battles.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bradley_terry_recovers_known_strengths() {
        let strengths = [1.0f64, 2.0, 4.0, 8.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut battles = Vec::new();
        for _ in 0..6000 {
            let a = rng.random_range(0..4);
            let mut b = rng.random_range(0..3);
            if b >= a {
                b += 1;
            }
            let p_a = strengths[a] / (strengths[a] + strengths[b]);
            battles.push(Battle { a, b, score: f64::from(rng.random::<f64>() < p_a) });
        }
        let elo = bradley_terry(4, &battles, 0.1);
        // Doubling strength = 400·log10(2) ≈ 120.4 Elo points between neighbours.
        for i in 1..4 {
            let gap = elo[i] - elo[i - 1];
            assert!((gap - 120.4).abs() < 15.0, "gap {i}: {gap} ({elo:?})");
        }
        let names: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
        let r = ratings(&names, &battles, 200, 0.95, 3);
        for (i, x) in r.ratings.iter().enumerate() {
            let truth = 1000.0 + 400.0 * (strengths[i] / (strengths.iter().map(|s| s.ln()).sum::<f64>() / 4.0).exp()).log10();
            assert!(x.lo <= truth + 5.0 && truth - 5.0 <= x.hi, "{i}: {x:?} vs {truth}");
        }
        // m3 beats m0 about 8/9 of the time.
        assert!((r.matrix[3][0].unwrap() - 8.0 / 9.0).abs() < 0.05, "{:?}", r.matrix);
        assert_eq!(r.matrix[2][2], None);
    }

    #[test]
    fn ties_are_half_wins_and_one_sided_records_stay_finite() {
        let b = vec![Battle { a: 0, b: 1, score: 0.5 }; 10];
        let e = bradley_terry(2, &b, 0.1);
        assert!((e[0] - e[1]).abs() < 1e-6);
        let sweep = vec![Battle { a: 0, b: 1, score: 1.0 }; 10];
        let e = bradley_terry(2, &sweep, 0.1);
        assert!(e[0].is_finite() && e[1].is_finite() && e[0] > e[1] + 300.0, "{e:?}");
        let r = ratings(&["x".into(), "y".into()], &sweep, 100, 0.95, 0);
        assert_eq!(r.ratings[0].win_rate, 1.0);
        assert_eq!(r.ratings[1].win_rate, 0.0);
    }
}
