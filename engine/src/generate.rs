//! Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p, repetition
//! penalty), seeded, with stop on EOS ids and stop strings, a max-token limit and a streaming
//! callback per token. One decoding loop ([`decode`]) serves every caller.

use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{KvCache, LoadedModel, Transformer, ids_tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// 1.0 means none; > 1 discourages repeating tokens already in the context (CTRL / HF rule).
    pub repetition_penalty: f32,
    pub seed: u64,
    pub stop_strings: Vec<String>,
    /// Stop at the model's EOS ids.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop_strings: vec![],
            stop_at_eos: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    StopString,
    MaxTokens,
    ContextFull,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Generated tokens per second of decoding (after the first token).
    pub tokens_per_second: f64,
}

/// Pick the next token from a logits row. `history` is the context so far (for the penalty).
pub fn sample(logits: &mut [f32], history: &[u32], opts: &GenerateOptions, rng: &mut ChaCha8Rng) -> u32 {
    if opts.repetition_penalty != 1.0 {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &id in &seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l < 0.0 { *l * opts.repetition_penalty } else { *l / opts.repetition_penalty };
            }
        }
    }
    if opts.temperature <= 0.0 {
        // First index of the maximum, like torch.argmax.
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if opts.top_k > 0 && opts.top_k < idx.len() {
        idx.truncate(opts.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f64> = idx.iter().map(|&i| (((logits[i] - max) / opts.temperature) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if opts.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (always at least one token).
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= opts.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let r: f64 = rng.random();
    let mut acc = 0.0;
    for (n, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return idx[n] as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

/// What [`decode`] produced: the new tokens (without a final EOS), the EOS id it stopped at,
/// why it stopped, and how long the prompt took.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub ids: Vec<u32>,
    pub eos: Option<u32>,
    pub finish: FinishReason,
    pub prefill_seconds: f64,
}

/// The one decoding loop every sampler uses (chat, evaluation, drafting, RL rollouts): the
/// prompt, then one token at a time through the KV cache, each picked by [`sample`]. Stops at an
/// id in `eos`, at `opts.max_new_tokens`, when the context reaches `max_context`, or when
/// `on_token(tokens so far)` answers a reason to stop.
pub fn decode(
    model: &Transformer,
    prompt: &[u32],
    opts: &GenerateOptions,
    eos: &[u32],
    max_context: usize,
    rng: &mut ChaCha8Rng,
    on_token: &mut dyn FnMut(&[u32]) -> Result<Option<FinishReason>>,
) -> Result<Decoded> {
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let device = model.device();
    let mut cache = KvCache::default();
    let mut history = prompt.to_vec();
    let mut out = Decoded { ids: Vec::new(), eos: None, finish: FinishReason::MaxTokens, prefill_seconds: 0.0 };
    let t0 = Instant::now();
    let mut input: Vec<u32> = prompt.to_vec();
    while out.ids.len() < opts.max_new_tokens {
        if history.len() >= max_context && !out.ids.is_empty() {
            out.finish = FinishReason::ContextFull;
            break;
        }
        let mut row = crate::kernels::on_pool(|| {
            let hidden = model.forward_hidden(ids_tensor(&input, &device), Some(&mut cache));
            let t = hidden.dims()[1];
            let logits = model.logits(hidden.slice_dim(1, t - 1..t));
            logits.try_into_vec_as::<f32>().map_err(|e| anyhow!("{e:?}"))
        })?;
        if out.ids.is_empty() {
            out.prefill_seconds = t0.elapsed().as_secs_f64();
        }
        let id = sample(&mut row, &history, opts, rng);
        if eos.contains(&id) {
            out.eos = Some(id);
            out.finish = FinishReason::Eos;
            break;
        }
        out.ids.push(id);
        history.push(id);
        input = vec![id];
        if let Some(reason) = on_token(&out.ids)? {
            out.finish = reason;
            break;
        }
    }
    Ok(out)
}

/// Sample one completion for training (RL rollouts, on-policy distillation): the new tokens
/// with the EOS id kept when it stopped at one, so the sequence trains on ending.
pub fn sample_completion(
    model: &Transformer,
    prompt: &[u32],
    eos: &[u32],
    opts: &GenerateOptions,
    max_context: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<u32>> {
    let d = decode(model, prompt, opts, eos, max_context, rng, &mut |_| Ok(None))?;
    let mut ids = d.ids;
    ids.extend(d.eos);
    Ok(ids)
}

/// Generate from `prompt_ids`. `on_text` receives each new piece of decoded text as soon as it
/// is complete UTF-8 and returns `false` to cancel.
pub fn generate(m: &LoadedModel, prompt_ids: &[u32], opts: &GenerateOptions, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
    if prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    m.check_len(prompt_ids.len())?;
    let eos = if opts.stop_at_eos { m.eos_ids() } else { vec![] };
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut emitted = 0usize; // bytes of `text` already sent to on_text
    let mut text = String::new();
    let t0 = Instant::now();
    let d = decode(&m.model, prompt_ids, opts, &eos, m.config.max_position_embeddings, &mut rng, &mut |generated| {
        text = m.tokenizer.decode(generated, true)?;
        if let Some((pos, _)) =
            opts.stop_strings.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str()).map(|p| (p, s))).min_by_key(|(p, _)| *p)
        {
            text.truncate(pos);
            if pos > emitted && !on_text(&text[emitted..]) {
                return Ok(Some(FinishReason::Cancelled));
            }
            emitted = text.len();
            return Ok(Some(FinishReason::StopString));
        }
        // Hold back an incomplete multi-byte character (decoded as U+FFFD) and any text that
        // could be the start of a stop string.
        let mut safe = if text.ends_with('\u{FFFD}') { text.trim_end_matches('\u{FFFD}').len() } else { text.len() };
        for s in &opts.stop_strings {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                    safe = safe.min(text.len() - k);
                    break;
                }
            }
        }
        if safe > emitted && text.is_char_boundary(safe) {
            if !on_text(&text[emitted..safe]) {
                return Ok(Some(FinishReason::Cancelled));
            }
            emitted = safe;
        }
        Ok(None)
    })?;
    let finish = d.finish;
    if finish != FinishReason::StopString && finish != FinishReason::Cancelled && emitted < text.len() {
        on_text(&text[emitted..]);
    }
    let total = t0.elapsed().as_secs_f64();
    let prefill_seconds = d.prefill_seconds;
    let decode_seconds = (total - prefill_seconds).max(0.0);
    let decoded_after_first = d.ids.len().saturating_sub(1);
    Ok(Generation {
        prompt_ids: prompt_ids.to_vec(),
        generated_ids: d.ids,
        text,
        finish_reason: finish,
        prefill_seconds,
        decode_seconds,
        tokens_per_second: if decode_seconds > 0.0 { decoded_after_first as f64 / decode_seconds } else { 0.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max_and_penalty_follows_hf_rule() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let o = GenerateOptions::default();
        assert_eq!(sample(&mut [1.0, 3.0, 3.0, 2.0], &[], &o, &mut rng), 1);
        let o = GenerateOptions { repetition_penalty: 2.0, ..Default::default() };
        // token 1 (3.0 -> 1.5) is penalised below token 3 (2.0)
        assert_eq!(sample(&mut [1.0, 3.0, 0.0, 2.0], &[1], &o, &mut rng), 3);
        let mut l = [-1.0f32, 4.0];
        sample(&mut l, &[0, 1], &o, &mut rng);
        assert_eq!(l, [-2.0, 2.0]);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_is_reproducible() {
        let logits = [0.5f32, 0.1, 0.4, 0.3];
        let o = GenerateOptions { temperature: 1.0, top_k: 1, ..Default::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..10 {
            assert_eq!(sample(&mut logits.clone(), &[], &o, &mut rng), 0);
        }
        let o = GenerateOptions { temperature: 1.0, top_p: 0.9, ..Default::default() };
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20).map(|_| sample(&mut logits.clone(), &[], &o, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probs ~ [0.64, 0.24, 0.09, 0.03]; top_p 0.8 keeps the first two only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let o = GenerateOptions { temperature: 1.0, top_p: 0.8, ..Default::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            assert!(sample(&mut logits.clone(), &[], &o, &mut rng) < 2);
        }
    }
}
