//! Supervised fine-tuning: format each example with the model's chat template (or as plain
//! prompt + response + EOS when it has none), train on the response tokens only (configurable),
//! truncate to `max_seq_len`, and minimise the mean token cross-entropy.

use anyhow::{Result, bail};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::Transformer;
use crate::text::chat_template::Message;
use crate::text::tokenizer::Tokenizer;

/// One training example: a conversation whose assistant turns are the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub messages: Vec<Message>,
}

impl SftExample {
    pub fn from_pair(system: Option<&str>, prompt: &str, response: &str) -> Self {
        let mut messages = Vec::new();
        if let Some(s) = system.filter(|s| !s.is_empty()) {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", prompt));
        messages.push(Message::new("assistant", response));
        Self { messages }
    }
}

/// Token ids and the per-token loss mask (true = this token is a training target).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub target: Vec<bool>,
}

/// Encode an example. With a chat template, every assistant message's tokens (including the
/// template's end-of-turn marker) are targets; without one, the example is
/// `prompt + response + eos` with the response and EOS as targets. `train_on_prompt` makes every
/// token a target.
pub fn encode(tok: &Tokenizer, ex: &SftExample, max_seq_len: usize, train_on_prompt: bool, eos: Option<u32>) -> Result<Encoded> {
    if ex.messages.is_empty() {
        bail!("example has no messages");
    }
    if !ex.messages.iter().any(|m| m.role == "assistant") {
        bail!("example has no assistant message to learn from");
    }
    let mut ids = Vec::new();
    let mut target = Vec::new();
    match &tok.chat_template {
        Some(t) => {
            // Render growing prefixes: the text an assistant turn adds is its target span.
            let mut prev_text = String::new();
            for (i, m) in ex.messages.iter().enumerate() {
                let is_asst = m.role == "assistant";
                if is_asst {
                    // The generation prompt ("<|im_start|>assistant\n") is context, not target.
                    let with_prompt = t.render(&ex.messages[..i], true)?;
                    push_text(tok, &mut ids, &mut target, &prev_text, &with_prompt, train_on_prompt)?;
                    prev_text = with_prompt;
                }
                let upto = t.render(&ex.messages[..=i], false)?;
                push_text(tok, &mut ids, &mut target, &prev_text, &upto, is_asst || train_on_prompt)?;
                prev_text = upto;
            }
        }
        None => {
            let mut prompt = String::new();
            for m in &ex.messages[..ex.messages.len() - 1] {
                prompt.push_str(&m.content);
                prompt.push('\n');
            }
            let last = ex.messages.last().unwrap();
            let p = tok.encode(&prompt, true)?;
            target.extend(std::iter::repeat_n(train_on_prompt, p.len()));
            ids.extend(p);
            let r = tok.encode(&last.content, false)?;
            target.extend(std::iter::repeat_n(true, r.len()));
            ids.extend(r);
            if let Some(e) = eos {
                ids.push(e);
                target.push(true);
            }
        }
    }
    ids.truncate(max_seq_len);
    target.truncate(max_seq_len);
    Ok(Encoded { ids, target })
}

/// Append the tokens of `full[prev.len()..]`. Tokenising the increment on its own matches
/// tokenising the whole text when templates put special tokens at the joins (as chat
/// templates do).
fn push_text(tok: &Tokenizer, ids: &mut Vec<u32>, target: &mut Vec<bool>, prev: &str, full: &str, is_target: bool) -> Result<()> {
    let Some(new) = full.strip_prefix(prev) else {
        bail!("the chat template does not render conversations incrementally; cannot locate assistant turns");
    };
    if new.is_empty() {
        return Ok(());
    }
    let t = tok.encode(new, false)?;
    target.extend(std::iter::repeat_n(is_target, t.len()));
    ids.extend(t);
    Ok(())
}

/// A right-padded batch: inputs `[B, T]`, next-token targets `[B, T]`, weights `[B, T]`
/// (1 where the next token is a training target).
pub struct Batch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    pub weights: Tensor<2>,
    /// Number of target tokens.
    pub n_targets: usize,
    /// Number of real (non-pad) tokens.
    pub n_tokens: usize,
    /// Packed rows: each input token's position within its example, and its example number.
    pub packing: Option<(Vec<Vec<usize>>, Vec<Vec<u32>>)>,
}

/// A right-padded batch of whole examples, one per row.
pub fn make_batch(examples: &[&Encoded], pad_id: u32, device: &burn::tensor::Device) -> Batch {
    // One example per row, plain causal attention.
    let rows: Vec<Vec<&Encoded>> = examples.iter().map(|e| vec![*e]).collect();
    let mut batch = make_packed_batch(&rows, pad_id, usize::MAX, device);
    batch.packing = None;
    batch
}

/// Group examples into rows of at most `max_len` input positions, in order (an example needs
/// `len - 1` positions: each token but the last predicts the next).
pub fn pack_examples<'a>(examples: &[&'a Encoded], max_len: usize) -> Vec<Vec<&'a Encoded>> {
    let mut rows: Vec<Vec<&Encoded>> = Vec::new();
    let mut used = 0;
    for e in examples {
        let n = e.ids.len().saturating_sub(1).min(max_len);
        if rows.is_empty() || used + n > max_len {
            rows.push(Vec::new());
            used = 0;
        }
        rows.last_mut().expect("row").push(e);
        used += n;
    }
    rows
}

/// A batch of packed rows: each row holds several examples back to back; positions restart
/// at 0 for each and attention stays within it (see `Transformer::forward_hidden_packed`).
pub fn make_packed_batch(rows: &[Vec<&Encoded>], pad: u32, max_len: usize, device: &burn::tensor::Device) -> Batch {
    let t = rows
        .iter()
        .map(|r| r.iter().map(|e| e.ids.len().saturating_sub(1).min(max_len)).sum::<usize>())
        .max()
        .unwrap_or(0)
        .max(1);
    let b = rows.len();
    let mut inputs = vec![pad as i32; b * t];
    let mut targets = vec![0i32; b * t];
    let mut weights = vec![0f32; b * t];
    let mut positions = vec![vec![0usize; t]; b];
    // Padding gets its own segment so it never attends to real tokens.
    let mut segments = vec![vec![u32::MAX; t]; b];
    let (mut n_targets, mut n_tokens) = (0, 0);
    for (r, row) in rows.iter().enumerate() {
        let mut o = 0;
        for (k, e) in row.iter().enumerate() {
            let n = e.ids.len().saturating_sub(1).min(max_len);
            n_tokens += e.ids.len();
            for j in 0..n {
                inputs[r * t + o + j] = e.ids[j] as i32;
                targets[r * t + o + j] = e.ids[j + 1] as i32;
                positions[r][o + j] = j;
                segments[r][o + j] = k as u32;
                if e.target[j + 1] {
                    weights[r * t + o + j] = 1.0;
                    n_targets += 1;
                }
            }
            o += n;
        }
    }
    Batch {
        inputs: Tensor::from_data(TensorData::new(inputs, [b, t]), device),
        targets: Tensor::from_data(TensorData::new(targets, [b, t]), device),
        weights: Tensor::from_data(TensorData::new(weights, [b, t]), device),
        n_targets,
        n_tokens,
        packing: Some((positions, segments)),
    }
}

/// Summed negative log-likelihood of the target tokens and the number of correct argmax
/// predictions among them.
pub fn nll_sum(model: &Transformer, batch: &Batch) -> (Tensor<1>, Tensor<1>) {
    let logits = match &batch.packing {
        Some((pos, seg)) => model.logits(model.forward_hidden_packed(batch.inputs.clone(), pos, seg)),
        None => model.forward(batch.inputs.clone(), None),
    };
    // A target counts as predicted when its log-prob is the row maximum (argmax, ties aside).
    let (tok_lp, correct) = crate::kernels::cross_entropy::token_logprobs(logits, &batch.targets);
    let correct = correct.mul(batch.weights.clone()).sum();
    let nll = tok_lp.neg().mul(batch.weights.clone()).sum();
    (nll, correct)
}
