//! SFT on a tiny fixture model memorises a small dataset, and greedy generation then
//! reproduces the trained answers.

mod common;

use common::*;
use whetstone_engine::Device;
use whetstone_engine::generate::{GenerateOptions, generate};
use whetstone_engine::model::LoadedModel;
use whetstone_engine::model::batch::make_batch;
use whetstone_engine::text::chat_template::Message;
use whetstone_engine::text::sft::{SftExample, encode};
use whetstone_engine::train::optim::{AdamW, AdamWConfig, Decay, lr_at};
use whetstone_engine::train::sft::SftTrainer;

#[test]
fn sft_memorises_and_generation_reproduces_the_answers() {
    let dir = fixture("tiny-models/qwen3");
    let ad = Device::flex().autodiff();
    let mut lm = LoadedModel::load(&dir, &ad).unwrap();
    let data = [
        ("Fever 39C and stiff neck?", "Urgent: possible meningitis."),
        ("Mild cough for two days?", "Routine: rest and fluids."),
        ("Chest pain at rest?", "Emergency: call an ambulance."),
        ("Itchy rash on arm?", "Routine: see a GP this week."),
    ];
    let eos = lm.tokenizer.eos_id();
    let encoded: Vec<_> =
        data.iter().map(|(p, r)| encode(&lm.tokenizer, &SftExample::from_pair(None, p, r), 128, false, eos).unwrap()).collect();
    // Only the assistant turn is a target, and it ends with the end-of-turn token.
    let e0 = &encoded[0];
    let first_target = e0.target.iter().position(|&t| t).unwrap();
    let answer = lm.tokenizer.decode(&e0.ids[first_target..], false).unwrap();
    assert!(answer.starts_with("Urgent: possible meningitis.<|im_end|>"), "{answer:?}");
    assert!(e0.target[..first_target].iter().all(|&t| !t));

    let pad = lm.tokenizer.pad_id().unwrap();
    let mut trainer = SftTrainer::new(lm.model.clone(), AdamW::new(AdamWConfig::default()), Some(1.0), encoded.clone(), pad);
    let steps = 80;
    let mut first = None;
    let mut last = f64::MAX;
    for s in 0..steps {
        // two micro-batches of two: gradient accumulation
        let mb: Vec<_> = encoded.chunks(2).map(|c| make_batch(&c.iter().collect::<Vec<_>>(), pad, &ad)).collect();
        let m = trainer.step_batches(&mb, lr_at(s, steps, 5, 1e-2, Decay::Cosine)).unwrap();
        assert!(m.loss.is_finite() && m.grad_norm.is_finite());
        first.get_or_insert(m.loss);
        last = m.loss;
    }
    assert!(first.unwrap() > 3.0, "initial loss {first:?}");
    assert!(last < 0.05, "final loss {last}");

    lm.model = trainer.model.without_autodiff();
    lm.device = Device::flex();
    for (p, r) in data {
        let (_, ids) = lm.tokenizer.apply_chat(&[Message::new("user", p)], true).unwrap();
        let g = generate(&lm, &ids, &GenerateOptions { max_new_tokens: 64, ..Default::default() }, &mut |_| true).unwrap();
        assert_eq!(g.text, r, "answer to {p:?}");
        assert_eq!(g.finish_reason, whetstone_engine::generate::FinishReason::Eos, "stops at the learned end of turn");
    }
}

#[test]
fn plain_models_train_on_response_plus_eos() {
    // Every fixture has a chat template, so take it away to get a plain model.
    let mut plain = LoadedModel::load(&fixture("tiny-models/gpt2"), &Device::flex()).unwrap();
    plain.tokenizer.chat_template = None;
    let eos = Some(2);
    let e = encode(&plain.tokenizer, &SftExample::from_pair(None, "Q", "A b"), 64, false, eos).unwrap();
    let n_resp = plain.tokenizer.encode("A b", false).unwrap().len();
    assert_eq!(e.target.iter().filter(|&&t| t).count(), n_resp + 1);
    assert_eq!(*e.ids.last().unwrap(), 2);
    let all = encode(&plain.tokenizer, &SftExample::from_pair(None, "Q", "A b"), 64, true, eos).unwrap();
    assert!(all.target.iter().all(|&t| t));
    let short = encode(&plain.tokenizer, &SftExample::from_pair(None, "Q", "A b"), 2, false, eos).unwrap();
    assert_eq!(short.ids.len(), 2);
}

/// Packing several examples into one row (block-diagonal attention, positions restarting at 0)
/// gives the same summed NLL as running them one by one, for RoPE and for learned positions.
#[test]
fn packed_rows_compute_what_separate_examples_compute() {
    use whetstone_engine::model::batch::{make_packed_batch, nll_sum, pack_examples};
    for name in ["llama", "gpt2"] {
        let lm = LoadedModel::load(&fixture(&format!("tiny-models/{name}")), &Device::flex()).unwrap();
        let eos = lm.tokenizer.eos_id();
        let pad = lm.tokenizer.pad_id().unwrap();
        let ex: Vec<_> = [("Fever?", "Urgent."), ("Mild cough for two days?", "Routine: rest."), ("Chest pain?", "Emergency.")]
            .iter()
            .map(|(p, r)| encode(&lm.tokenizer, &SftExample::from_pair(None, p, r), 128, false, eos).unwrap())
            .collect();
        let refs: Vec<_> = ex.iter().collect();
        let separate: f64 =
            ex.iter().map(|e| nll_sum(&lm.model, &make_batch(&[e], pad, &Device::flex())).0.into_scalar::<f32>() as f64).sum();
        let rows = pack_examples(&refs, 200);
        assert_eq!(rows.len(), 1, "all three fit one row");
        let packed = nll_sum(&lm.model, &make_packed_batch(&rows, pad, 200, &Device::flex())).0.into_scalar::<f32>() as f64;
        assert!((packed - separate).abs() < 1e-3 * separate.abs(), "{name}: packed {packed} vs separate {separate}");
        // A short row limit splits them.
        assert!(pack_examples(&refs, 40).len() > 1);
    }
}

/// f16 loss scaling: at a scale where the f16 gradients overflow, the step changes nothing and
/// says so (GradScaler's skipped step); at the default scale the scale divides out, so the
/// gradient norm and the next loss are f32's within f16's rounding.
#[test]
fn f16_loss_scaling_skips_overflowed_steps_and_divides_out() {
    use whetstone_engine::kernels::precision::{LossScaler, Precision, with};
    let ad = Device::flex().autodiff();
    let lm = LoadedModel::load(&fixture("tiny-models/qwen3"), &ad).unwrap();
    let eos = lm.tokenizer.eos_id();
    let pad = lm.tokenizer.pad_id().unwrap();
    let encoded: Vec<_> = [("Fever 39C and stiff neck?", "Urgent: possible meningitis."), ("Mild cough?", "Routine: rest.")]
        .iter()
        .map(|(p, r)| encode(&lm.tokenizer, &SftExample::from_pair(None, p, r), 64, false, eos).unwrap())
        .collect();
    let mb = vec![make_batch(&encoded.iter().collect::<Vec<_>>(), pad, &ad)];
    let trainer = || SftTrainer::new(lm.model.clone(), AdamW::new(AdamWConfig::default()), Some(1.0), encoded.clone(), pad);

    let mut t = trainer();
    let a0 = t.step_batches(&mb, 1e-2).unwrap();
    let a1 = t.step_batches(&mb, 1e-2).unwrap();

    let mut t = trainer();
    let huge = LossScaler { scale: 1e30, good_steps: 0 };
    let (s0, overflow) = with(Precision::F16, || huge.scoped(|| t.step_batches(&mb, 1e-2)));
    let s0 = s0.unwrap();
    assert!(overflow && s0.grad_norm == 0.0, "overflow {overflow}, norm {}", s0.grad_norm);
    let (s1, overflow) = with(Precision::F16, || huge.scoped(|| t.step_batches(&mb, 1e-2)));
    assert!(overflow);
    assert_eq!(s1.unwrap().loss, s0.loss, "a skipped step leaves the model as it was");

    let scaler = LossScaler::new();
    let (b0, overflow) = with(Precision::F16, || scaler.scoped(|| t.step_batches(&mb, 1e-2)));
    let b0 = b0.unwrap();
    assert!(!overflow);
    assert!((b0.loss - a0.loss).abs() < 1e-2 * a0.loss, "f16 loss {} vs f32 {}", b0.loss, a0.loss);
    assert!((b0.grad_norm - a0.grad_norm).abs() < 1e-2 * a0.grad_norm, "f16 norm {} vs f32 {}", b0.grad_norm, a0.grad_norm);
    let (b1, _) = with(Precision::F16, || scaler.scoped(|| t.step_batches(&mb, 1e-2)));
    let b1 = b1.unwrap();
    assert!((b1.loss - a1.loss).abs() < 1e-2 * a1.loss, "after one step: f16 loss {} vs f32 {}", b1.loss, a1.loss);
}
