//! The fused flex kernels (`engine/src/kernels/`) and the GPU kernels (`engine/src/kernels/gpu/`,
//! run here on wgpu: Mesa's lavapipe in CI, where the tests fail rather than skip without an
//! adapter) compute the same values and gradients as the composite burn ops they replace, on
//! the autodiff device and off it; and a whole training step gives the same loss, gradient norm
//! and weights either way.

mod common;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use whetstone_engine::Device;
use whetstone_engine::kernels::{self, attention, cross_entropy, mlp, norm, qlinear};

fn dev() -> Device {
    Device::flex().autodiff()
}

/// The first wgpu adapter, with autodiff.
fn gpu() -> Device {
    whetstone_engine::device::parse_device("wgpu").expect("a wgpu adapter (CI installs Mesa lavapipe)").autodiff()
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: fused {x} vs composite {y} (scale {scale})");
    }
}

/// Seeded values in about [-3.5, 3.5] (the same on every run, so no assertion depends on luck).
fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    use rand::{Rng, SeedableRng};
    let n: usize = shape.iter().product();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n as u64 ^ 0x5eed);
    let v: Vec<f32> = (0..n).map(|_| (0..3).map(|_| rng.random_range(-2.0f32..2.0)).sum()).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Value of `f(inputs)` and the gradients of `Σ f(inputs) · r` for each input, with the fused
/// kernels and with the composite ops.
fn both<const D: usize, const N: usize>(inputs: [Tensor<D>; N], f: impl Fn(&[Tensor<D>]) -> Tensor<D>) -> [(Vec<f32>, Vec<Vec<f32>>); 2] {
    let run = |inputs: &[Tensor<D>]| {
        let xs: Vec<Tensor<D>> = inputs.iter().map(|x| x.clone().detach().require_grad()).collect();
        let y = f(&xs);
        // A fixed weighting, the same for both paths.
        let r = Tensor::<D>::from_data(TensorData::new(seeded(y.dims().iter().product()), y.dims()), &y.device());
        let grads = (y.clone() * r).sum().backward();
        let gs = xs.iter().map(|x| vals(x.grad(&grads).expect("gradient"))).collect();
        (vals(y), gs)
    };
    // The comparison means something only if the two runs take different paths.
    assert!(kernels::fused_for(&inputs[0]) && !kernels::composite(|| kernels::fused_for(&inputs[0])));
    let fused = run(&inputs);
    let composite = kernels::composite(|| run(&inputs));
    [fused, composite]
}

fn seeded(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2.0).collect()
}

fn compare(what: &str, [fused, composite]: [(Vec<f32>, Vec<Vec<f32>>); 2], tol: f32) {
    assert_close(&format!("{what} value"), &fused.0, &composite.0, tol);
    for (i, (a, b)) in fused.1.iter().zip(&composite.1).enumerate() {
        assert_close(&format!("{what} grad of input {i}"), a, b, tol);
    }
}

#[test]
fn rms_norm_matches_composite() {
    rms_norm_case(&dev());
}

#[test]
fn gpu_rms_norm_matches_composite() {
    rms_norm_case(&gpu());
}

fn rms_norm_case(d: &Device) {
    // Row lengths off the 16-lane boundary too; on the GPU, rows longer than a workgroup and
    // more rows than one weight-gradient block.
    for (rows, h) in [(5, 64), (5, 37), (70, 300)] {
        let x = random([3, rows, h], d);
        let w = random([h], d);
        let out = both([x.clone(), w.unsqueeze::<3>()], |xs| norm::rms_norm(xs[0].clone(), xs[1].clone().reshape([h]), 1e-5));
        compare(&format!("rms_norm h={h}"), out, 2e-5);
    }
}

#[test]
fn swiglu_matches_composite() {
    swiglu_case(&dev());
}

#[test]
fn gpu_swiglu_matches_composite() {
    swiglu_case(&gpu());
}

fn swiglu_case(d: &Device) {
    let g = random([2, 7, 300], d);
    let u = random([2, 7, 300], d);
    compare("swiglu", both([g, u], |xs| mlp::swiglu(xs[0].clone(), xs[1].clone())), 2e-5);
}

#[test]
fn masked_softmax_matches_composite() {
    let d = dev();
    let (b, h, t) = (2, 3, 19);
    // Causal, shared by the batch.
    let causal: Vec<bool> = (0..t).flat_map(|i| (0..t).map(move |j| j > i)).collect();
    let mask = Tensor::<4, Bool>::from_data(TensorData::new(causal, [1, 1, t, t]), &d);
    let s = random([b, h, t, t], &d);
    compare("softmax causal", both([s.clone()], |xs| attention::softmax_scores(xs[0].clone(), 0.125, Some(&mask))), 2e-5);
    // Per-row masks (packing), and no mask.
    let packed: Vec<bool> =
        (0..b).flat_map(|r| (0..t).flat_map(move |i| (0..t).map(move |j| j > i || (i < 7 + r) != (j < 7 + r)))).collect();
    let mask = Tensor::<4, Bool>::from_data(TensorData::new(packed, [b, 1, t, t]), &d);
    compare("softmax packed", both([s.clone()], |xs| attention::softmax_scores(xs[0].clone(), 0.3, Some(&mask))), 2e-5);
    compare("softmax unmasked", both([s], |xs| attention::softmax_scores(xs[0].clone(), 1.0, None)), 2e-5);
}

#[test]
fn rope_head_split_matches_composite() {
    rope_case(&dev());
}

#[test]
fn gpu_rope_head_split_matches_composite() {
    rope_case(&gpu());
}

fn rope_case(d: &Device) {
    let d = d.clone();
    let (b, t, h, dh) = (2, 6, 3, 8);
    let inv: Vec<f32> = (0..dh / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / dh as f32)).collect();
    for per_row in [false, true] {
        let (cos, sin) = if per_row {
            let pos: Vec<Vec<usize>> = (0..b).map(|r| (0..t).map(|i| (i + 3 * r) % 5).collect()).collect();
            whetstone_engine::model::blocks::rope_tables_at(&inv, &pos, &d)
        } else {
            whetstone_engine::model::blocks::rope_tables(&inv, 2, t, &d)
        };
        let x = random([b, t, h, dh], &d);
        let out = both([x], |xs| attention::rope_heads(xs[0].clone(), &cos, &sin));
        compare(&format!("rope per_row={per_row}"), out, 2e-5);
    }
}

#[test]
fn token_logprobs_match_composite() {
    token_logprobs_case(&dev());
}

#[test]
fn gpu_token_logprobs_match_composite() {
    token_logprobs_case(&gpu());
}

fn token_logprobs_case(d: &Device) {
    let d = d.clone();
    let (b, t, v) = (2, 5, 1000);
    let logits = random([b, t, v], &d);
    let ids: Vec<i64> = (0..b * t).map(|i| (i * 397 % v) as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &d);
    // Make one target the argmax (row 1, whose target is 397) so the flag is exercised both ways.
    let bump = Tensor::<3>::from_data(
        TensorData::new((0..b * t * v).map(|i| if i == v + 397 { 50.0 } else { 0.0 }).collect::<Vec<f32>>(), [b, t, v]),
        &d,
    );
    let logits = logits + bump;
    let run = |fused: bool| {
        let f = || {
            let x = logits.clone().detach().require_grad();
            let (lp, correct) = cross_entropy::token_logprobs(x.clone(), &targets);
            let w = Tensor::<2>::from_data(TensorData::new(seeded(b * t), [b, t]), &d);
            let grads = (lp.clone() * w).sum().backward();
            (vals(lp), vals(correct), vals(x.grad(&grads).unwrap()))
        };
        if fused { f() } else { kernels::composite(f) }
    };
    assert!(kernels::fused_for(&logits) && !kernels::composite(|| kernels::fused_for(&logits)));
    let (a, b_) = (run(true), run(false));
    assert_close("log-probs", &a.0, &b_.0, 2e-6);
    assert_eq!(a.1, b_.1, "argmax flags");
    assert_eq!(a.1.iter().sum::<f32>(), 1.0);
    assert_close("logit gradients", &a.2, &b_.2, 2e-5);
}

#[test]
fn linear_matches_composite_with_contiguous_strided_and_frozen_weights() {
    use whetstone_engine::kernels::linear::matmul_last;
    let d = dev();
    let x0 = random([3, 50, 40], &d);
    let w0 = random([40, 70], &d);
    let wt0 = random([70, 40], &d); // used transposed: a strided [40, 70] view, as the tied LM head
    for (name, frozen) in [("trained", false), ("frozen", true)] {
        let run = || {
            let x = x0.clone().detach().require_grad();
            let w = if frozen { w0.clone().detach() } else { w0.clone().detach().require_grad() };
            let wt = wt0.clone().detach().require_grad();
            let y = matmul_last(x.clone(), w.clone());
            let z = matmul_last(x.clone(), wt.clone().transpose());
            let r = Tensor::<3>::from_data(TensorData::new(seeded(3 * 50 * 70), [3, 50, 70]), &d);
            let grads = (y.clone() * r.clone() + z.clone() * r * 0.5).sum().backward();
            let gw = w.grad(&grads).map(vals);
            (vals(y), vals(z), vals(x.grad(&grads).unwrap()), gw, vals(wt.grad(&grads).unwrap()))
        };
        assert!(kernels::fused_for(&x0) && kernels::fused_for(&w0));
        let a = run();
        let b = kernels::composite(run);
        assert_close(&format!("{name}: x·w"), &a.0, &b.0, 1e-5);
        assert_close(&format!("{name}: x·wtᵀ"), &a.1, &b.1, 1e-5);
        assert_close(&format!("{name}: dx"), &a.2, &b.2, 1e-5);
        assert_eq!(a.3.is_some(), !frozen, "{name}: a weight gradient exactly when the weight trains");
        if let (Some(ga), Some(gb)) = (&a.3, &b.3) {
            assert_close(&format!("{name}: dw"), ga, gb, 1e-5);
        }
        assert_close(&format!("{name}: d(wt)"), &a.4, &b.4, 1e-5);
    }
}

#[test]
fn kernels_run_off_the_autodiff_device_too() {
    let d = Device::flex();
    let x = random([4, 33], &d);
    let w = random([33], &d);
    assert!(kernels::fused_for(&x));
    let a = vals(norm::rms_norm(x.clone(), w.clone(), 1e-6));
    let b = kernels::composite(|| vals(norm::rms_norm(x, w, 1e-6)));
    assert_close("plain rms_norm", &a, &b, 2e-6);
}

#[test]
fn a_training_step_is_the_same_fused_or_composite() {
    training_step_case(&dev());
}

/// On wgpu the whole step (RMSNorm, RoPE, attention, SwiGLU, the loss and AdamW on GPU kernels)
/// against the same step in composite ops.
#[test]
fn gpu_a_training_step_is_the_same_fused_or_composite() {
    training_step_case(&gpu());
}

fn training_step_case(d: &Device) {
    use whetstone_engine::model::LoadedModel;
    use whetstone_engine::model::batch::make_batch;
    use whetstone_engine::text::sft::Encoded;
    use whetstone_engine::train::optim::{AdamW, AdamWConfig};
    use whetstone_engine::train::sft::SftTrainer;
    let d = d.clone();
    let m = LoadedModel::load(&common::fixture("tiny-models/llama"), &d).unwrap();
    let ex: Vec<Encoded> = (0..3)
        .map(|r| Encoded { ids: (0..12).map(|i| ((i * 7 + r * 13) % 200) as u32).collect(), target: (0..12).map(|i| i > 3).collect() })
        .collect();
    let batch = make_batch(&ex.iter().collect::<Vec<_>>(), 0, &d);
    let run = || {
        let mut tr = SftTrainer::new(
            m.model.clone(),
            AdamW::new(AdamWConfig { weight_decay: 0.01, ..Default::default() }),
            Some(1.0),
            ex.clone(),
            0,
        );
        let mut out = Vec::new();
        for _ in 0..3 {
            let s = tr.step_batches(std::slice::from_ref(&batch), 1e-3).unwrap();
            out.push((s.loss, s.grad_norm));
        }
        (out, tr.model.to_weights().layers[0].q.0.data.clone())
    };
    // The two runs take different paths on this device.
    let probe = Tensor::<1>::zeros([1], &d);
    assert!(kernels::fused_for(&probe) && !kernels::composite(|| kernels::fused_for(&probe)));
    let fused = run();
    let composite = kernels::composite(run);
    for (i, (a, b)) in fused.0.iter().zip(&composite.0).enumerate() {
        assert!((a.0 - b.0).abs() < 1e-5 * b.0.abs().max(1.0), "step {i} loss: fused {} vs composite {}", a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-4 * b.1.abs().max(1.0), "step {i} grad norm: fused {} vs composite {}", a.1, b.1);
    }
    assert_close("weights after 3 steps", &fused.1, &composite.1, 1e-4);
}

/// `x · Wᵀ` with W packed (bf16 and every block format with a dot-product kernel): the tiled GEMM
/// path (many rows) and the dot-product path (one row and a few, as in decoding) against the
/// composite form on the dequantised weight, and the input gradient (W is frozen).
#[test]
fn packed_matmul_matches_the_dequantised_weight() {
    use whetstone_engine::io::quant::GgmlType;
    packed_case(&dev(), &[GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K]);
}

/// The GPU kernel reads the block formats (repacked once into groups of 16); 16-bit float
/// weights have no GPU kernel and are not listed.
#[test]
fn gpu_packed_matmul_matches_the_dequantised_weight() {
    use whetstone_engine::io::quant::GgmlType;
    packed_case(&gpu(), &[GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K]);
}

fn packed_case(d: &Device, types: &[whetstone_engine::io::quant::GgmlType]) {
    use std::sync::Arc;
    use whetstone_engine::io::HostTensor;
    use whetstone_engine::io::quant::PackedMatrix;
    let d = d.clone();
    let (din, dout) = (512, 300);
    let w = HostTensor::new(vec![dout, din], seeded(dout * din).iter().map(|v| v * 0.05).collect());
    for &ty in types {
        let p = Arc::new(PackedMatrix::quantize(ty, &w).unwrap());
        for rows in [1, 3, 40] {
            let x = random([1, rows, din], &d);
            let r = compare_fn(&x, |x| qlinear::packed_matmul(x.clone(), &p));
            compare(&format!("{} x{rows}", ty.name()), r, 2e-5);
        }
    }
}

fn compare_fn(x: &Tensor<3>, f: impl Fn(&Tensor<3>) -> Tensor<3>) -> [(Vec<f32>, Vec<Vec<f32>>); 2] {
    both([x.clone()], |xs| f(&xs[0]))
}

/// The LM head fused with the target log-probs, in row chunks: against the composite
/// (logits, then log-softmax and gather) for a contiguous head, a transposed (tied) one and a
/// packed one; gradients for the hidden states and the dense head.
#[test]
fn fused_head_matches_logits_then_logprobs() {
    head_case(&dev());
}

/// On the GPU the dense head runs in chunks of 5 rows here (18 rows: four chunks, the last
/// short), and the packed head on the quantised matmul and log-prob kernels.
#[test]
fn gpu_fused_head_matches_logits_then_logprobs() {
    kernels::gpu::head::with_chunk_rows(5, || head_case(&gpu()));
}

fn head_case(d: &Device) {
    use std::sync::Arc;
    use whetstone_engine::io::HostTensor;
    use whetstone_engine::io::quant::{GgmlType, PackedMatrix};
    use whetstone_engine::kernels::head::{Head, head_logprobs};
    let d = d.clone();
    let (b, t, h, v) = (2, 9, 64, 300);
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 5) % v) as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &d);
    let x = random([b, t, h], &d) * 0.3;
    let w = random([h, v], &d) * 0.2;
    let we = random([v, h], &d) * 0.2; // a tied embedding: the head is its transpose
    for (name, tied) in [("contiguous", false), ("transposed", true)] {
        let run = |x: Tensor<3>, w: Tensor<2>| {
            let x = x.detach().require_grad();
            let w = w.detach().require_grad();
            let head = if tied { w.clone().transpose() } else { w.clone() };
            let (lp, correct) = head_logprobs(x.clone(), Head::Dense(head), &targets);
            let r = Tensor::<2>::from_data(TensorData::new(seeded(b * t), [b, t]), &d);
            let g = (lp.clone() * r).sum().backward();
            (vals(lp), vals(correct), vals(x.grad(&g).unwrap()), vals(w.grad(&g).unwrap()))
        };
        let wt = if tied { we.clone() } else { w.clone() };
        assert!(kernels::fused_for(&x) && !kernels::composite(|| kernels::fused_for(&x)));
        let f = run(x.clone(), wt.clone());
        let c = kernels::composite(|| run(x.clone(), wt.clone()));
        assert_close(&format!("{name} log-probs"), &f.0, &c.0, 1e-5);
        assert_eq!(f.1, c.1, "{name}: argmax flags");
        assert_close(&format!("{name} dx"), &f.2, &c.2, 1e-4);
        assert_close(&format!("{name} dW"), &f.3, &c.3, 1e-4);
    }
    let host = HostTensor::new(vec![v, h], vals(we.clone()));
    let p = Arc::new(PackedMatrix::quantize(GgmlType::Q8_0, &host).unwrap());
    let r = compare_fn(&x, |x| {
        let (lp, _) = head_logprobs(x.clone(), Head::Packed(&p), &targets);
        lp.unsqueeze::<3>()
    });
    compare("packed head", r, 1e-4);
}

/// In bf16 the fused head's products run on the bf16 kernel (on a CPU with AVX512-BF16): the
/// log-probs are those of the bf16-rounded hidden states and weight with f32 logits, and the
/// gradients those of `dl = g·(onehot − softmax)` rounded to bf16, as autocast's bf16 linear
/// gives them, for a contiguous, a transposed (tied) and a packed head. The reference is
/// computed here in f64 from the rounded operands. On a CPU without AVX512-BF16 the products
/// stay f32 on the rounded hidden states, and the reference says so.
#[test]
fn bf16_head_is_the_product_of_rounded_operands() {
    use std::sync::Arc;
    use whetstone_engine::io::HostTensor;
    use whetstone_engine::io::quant::{GgmlType, PackedMatrix};
    use whetstone_engine::kernels::head::{Head, head_logprobs};
    use whetstone_engine::kernels::precision::{Precision, round_bf16, with};
    let d = dev();
    let (b, t, h, v) = (2, 21, 96, 700);
    let n = b * t;
    let ids: Vec<usize> = (0..n).map(|i| (i * 37 + 5) % v).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [b, t]), &d);
    let x = random([b, t, h], &d) * 0.3;
    let we = random([v, h], &d) * 0.2; // [vocab, hidden], as an embedding or a packed head
    let g = seeded(n);
    let kernel = whetstone_engine::kernels::bf16gemm::available();
    let r = |x: f32| round_bf16(x) as f64;
    // The weight and the logits' gradient are rounded only on the kernel.
    let rk = |x: f32| if kernel { round_bf16(x) as f64 } else { x as f64 };
    // Reference from `wv[o][k]` ([vocab, hidden]): log-probs, dx (rounded to bf16, as the hidden
    // state's gradient is) and dW ([vocab, hidden]).
    let reference = |wv: &[f32]| {
        let xv = vals(x.clone());
        let (mut lp, mut dx, mut dw) = (vec![0f64; n], vec![0f64; n * h], vec![0f64; v * h]);
        for i in 0..n {
            let logits: Vec<f64> = (0..v).map(|o| (0..h).map(|k| r(xv[i * h + k]) * rk(wv[o * h + k])).sum()).collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            lp[i] = logits[ids[i]] - lse;
            for o in 0..v {
                let p = (logits[o] - lse).exp();
                let dl = rk((g[i] as f64 * ((o == ids[i]) as u8 as f64 - p)) as f32);
                for k in 0..h {
                    dx[i * h + k] += dl * rk(wv[o * h + k]);
                    dw[o * h + k] += dl * r(xv[i * h + k]);
                }
            }
        }
        (lp, dx.iter().map(|&d| r(d as f32)).collect::<Vec<f64>>(), dw)
    };
    let close = |what: &str, got: &[f32], want: &[f64], tol: f64| {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        let worst = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        assert!(worst <= tol * scale, "{what}: worst |Δ| {worst:.3e} against scale {scale:.3e}");
    };
    let wev = vals(we.clone());
    let p = Arc::new(PackedMatrix::quantize(GgmlType::Q8_0, &HostTensor::new(vec![v, h], wev.clone())).unwrap());
    let run = |kind: &str, w: Tensor<2>| {
        let x = x.clone().detach().require_grad();
        let w = w.detach().require_grad();
        let head = match kind {
            "tied" => Head::Dense(w.clone().transpose()),
            "contiguous" => Head::Dense(w.clone()),
            _ => Head::Packed(&p),
        };
        let (lp, _) = with(Precision::Bf16, || head_logprobs(x.clone(), head, &targets));
        let gr = Tensor::<2>::from_data(TensorData::new(g.clone(), [b, t]), &d);
        let grads = (lp.clone() * gr).sum().backward();
        (vals(lp), vals(x.grad(&grads).unwrap()), w.grad(&grads).map(vals))
    };
    let (lp, dx, dw) = reference(&wev);
    // Transposed: the head is the embedding's transpose; its gradient comes back [vocab, hidden].
    let (got_lp, got_dx, got_dw) = run("tied", we.clone());
    close("tied log-probs", &got_lp, &lp, 1e-5);
    close("tied dx", &got_dx, &dx, 8e-3);
    close("tied dW", &got_dw.unwrap(), &dw, 2e-3);
    // Contiguous `[hidden, vocab]`: the same numbers, dW transposed.
    let wc = we.clone().transpose().reshape([h, v]);
    let (got_lp, got_dx, got_dw) = run("contiguous", Tensor::from_data(TensorData::new(vals(wc), [h, v]), &d));
    close("contiguous log-probs", &got_lp, &lp, 1e-5);
    close("contiguous dx", &got_dx, &dx, 8e-3);
    let dw_t: Vec<f64> = (0..h * v).map(|j| dw[(j % v) * h + j / v]).collect();
    close("contiguous dW", &got_dw.unwrap(), &dw_t, 2e-3);
    // Packed (frozen): the dequantised weight is the reference's weight.
    let (lp, dx, _) = reference(&p.to_host().data);
    let (got_lp, got_dx, _) = run("packed", we.clone());
    close("packed log-probs", &got_lp, &lp, 1e-5);
    close("packed dx", &got_dx, &dx, 8e-3);
}

/// Attention's per-head products with grouped key/value heads in bf16: the kernel path (each
/// head on the bf16 kernel, key/value heads read in place) against the composite (heads
/// expanded, burn's matmul on rounded copies), values and gradients, for scores (`q · kᵀ`) and
/// weighted values (`p · v`), three query heads per key/value head and a shared one.
#[test]
fn head_matmul_matches_the_expanded_composite_in_bf16() {
    use whetstone_engine::kernels::precision::{Precision, with};
    let d = dev();
    for (h, kvh) in [(6, 2), (4, 4), (3, 1)] {
        let (b, t, s, dh) = (2, 13, 17, 24);
        let q = random([b, h, t, dh], &d) * 0.5;
        let k = random([b, kvh, s, dh], &d) * 0.5;
        let p = random([b, h, t, s], &d) * 0.3;
        let v = random([b, kvh, s, dh], &d) * 0.5;
        for (name, a, bt, tr) in [("scores", q.clone(), k.clone(), true), ("values", p.clone(), v.clone(), false)] {
            let run = |a: Tensor<4>, bt: Tensor<4>| {
                let a = a.detach().require_grad();
                let bt = bt.detach().require_grad();
                let y = with(Precision::Bf16, || attention::head_matmul(a.clone(), bt.clone(), tr));
                let r = Tensor::<4>::from_data(TensorData::new(seeded(y.dims().iter().product()), y.dims()), &d);
                let g = (y.clone() * r).sum().backward();
                (vals(y), vals(a.grad(&g).unwrap()), vals(bt.grad(&g).unwrap()))
            };
            if !kernels::bf16gemm::available() {
                eprintln!("no AVX512-BF16: head_matmul takes the composite path everywhere");
            }
            assert!(kernels::fused_for(&a) && !kernels::composite(|| kernels::fused_for(&a)));
            let f = run(a.clone(), bt.clone());
            let c = kernels::composite(|| run(a.clone(), bt.clone()));
            // Both round their result to bf16 (2⁻⁸ relative); the summation orders differ.
            assert_close(&format!("{name} {h}/{kvh} value"), &f.0, &c.0, 8e-3);
            assert_close(&format!("{name} {h}/{kvh} grad a"), &f.1, &c.1, 8e-3);
            assert_close(&format!("{name} {h}/{kvh} grad b"), &f.2, &c.2, 8e-3);
        }
    }
}

#[test]
fn attention_matches_composite() {
    attention_case(&dev());
}

/// The fused GPU attention (`kernels/gpu/attention.rs`), which never holds the scores, against
/// the two products around the masked softmax.
#[test]
fn gpu_attention_matches_composite() {
    attention_case(&gpu());
}

fn attention_case(d: &Device) {
    // (heads, kv heads, queries, keys): grouped heads, plain heads, and queries after a cache
    // (keys longer than the queries, the causal mask offset).
    for (h, kvh, t, s) in [(4, 2, 9, 9), (3, 3, 7, 7), (4, 1, 3, 8)] {
        let (b, dh) = (2, 16);
        let q = random([b, h, t, dh], d);
        let k = random([b, kvh, s, dh], d) * 0.5;
        let v = random([b, kvh, s, dh], d);
        let off = s - t;
        let causal: Vec<bool> = (0..t).flat_map(|i| (0..s).map(move |j| j > i + off)).collect();
        let causal = Tensor::<4, Bool>::from_data(TensorData::new(causal, [1, 1, t, s]), d);
        // Per-row masks, as packed sequences give: row r's first document ends at 3 + r.
        let packed: Vec<bool> =
            (0..b).flat_map(|r| (0..t).flat_map(move |i| (0..s).map(move |j| j > i + off || (i + off < 3 + r) != (j < 3 + r)))).collect();
        let packed = Tensor::<4, Bool>::from_data(TensorData::new(packed, [b, 1, t, s]), d);
        for (name, mask) in [("causal", Some(&causal)), ("packed", Some(&packed)), ("unmasked", None)] {
            let out =
                both([q.clone(), k.clone(), v.clone()], |xs| attention::attend(xs[0].clone(), xs[1].clone(), xs[2].clone(), 0.25, mask));
            compare(&format!("attention {name} h={h} kvh={kvh} t={t} s={s}"), out, 2e-5);
        }
    }
}
