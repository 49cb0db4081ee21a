//! Batches of encoded examples on a device, and the per-token log-probabilities every training
//! method is built from: right-padded rows (one example each) or packed rows (several examples
//! back to back, attention kept within each).

use burn::tensor::{Int, Tensor, TensorData};

use crate::model::Transformer;
use crate::text::sft::Encoded;

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
    let t = rows.iter().map(|r| r.iter().map(|e| e.ids.len().saturating_sub(1).min(max_len)).sum::<usize>()).max().unwrap_or(0).max(1);
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
    // A target counts as predicted when its log-prob is the row maximum (argmax, ties aside).
    let (tok_lp, correct) = model.target_logprobs(hidden(model, batch), &batch.targets);
    let correct = correct.mul(batch.weights.clone()).sum();
    let nll = tok_lp.neg().mul(batch.weights.clone()).sum();
    (nll, correct)
}

/// Log-probability of every next token, `[B, T]` (pad positions included; mask with weights).
pub fn token_logps(model: &Transformer, batch: &Batch) -> Tensor<2> {
    model.target_logprobs(hidden(model, batch), &batch.targets).0
}

/// Final hidden states of a batch (packed rows keep their examples apart).
fn hidden(model: &Transformer, batch: &Batch) -> Tensor<3> {
    match &batch.packing {
        Some((pos, seg)) => model.forward_hidden_packed(batch.inputs.clone(), pos, seg),
        None => model.forward_hidden(batch.inputs.clone(), None),
    }
}

/// Summed log-probability of each row's target tokens, `[B]`.
pub fn sequence_logps(model: &Transformer, batch: &Batch) -> Tensor<1> {
    let tok = token_logps(model, batch);
    let [b, _] = tok.dims();
    (tok * batch.weights.clone()).sum_dim(1).reshape([b])
}
