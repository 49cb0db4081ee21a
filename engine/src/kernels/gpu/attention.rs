//! Attention on the GPU without the `[B, H, T, S]` scores: `softmax(q·kᵀ·scale, masked) · v`
//! with grouped key/value heads, one unit per query row.
//!
//! The forward pass runs an online softmax over the keys (the running maximum rescales the
//! running sum and the output accumulator) and keeps one log-sum-exp per query row. The
//! backward pass recomputes each probability from it: `D = rowsum(dO ∘ O)` first, then `dQ`
//! one unit per query row, and `dK`, `dV` one unit per key row, which loops over the query
//! heads that share it, so no two units write one value. The composite form keeps the scores
//! and the probabilities (`2·B·H·T·S` floats) for its backward pass; this keeps `B·H·T`.

use burn::backend::Cube;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::{Bool, Tensor as BTensor};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{GPrim, contiguous, elementwise, empty, finish, prim, prims};

/// The shapes one launch needs, as kernel scalars.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    h: usize,
    kvh: usize,
    t: usize,
    s: usize,
    d: usize,
    /// The mask is `[B, 1, T, S]` (else `[1, 1, T, S]`).
    mask_per_batch: bool,
}

impl Geom {
    fn u(v: usize) -> u32 {
        u32::try_from(v).expect("attention dimension fits in u32")
    }
}

/// Whether key `j` is hidden from query `i` of batch row `bi`.
#[cube]
fn masked(mask: &Tensor<f32>, bi: usize, i: usize, j: usize, t: usize, s: usize, per_batch: u32, #[comptime] has_mask: bool) -> bool {
    let mut hidden = false;
    if has_mask {
        let mb = select(per_batch == 1, bi, 0usize);
        hidden = mask[(mb * t + i) * s + j] != 0.0f32;
    }
    hidden
}

#[cube(launch)]
fn attention_forward(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    mask: &Tensor<f32>,
    out: &mut Tensor<f32>,
    lse: &mut Tensor<f32>,
    scale: f32,
    heads: u32,
    kv_heads: u32,
    t: u32,
    s: u32,
    per_batch: u32,
    #[comptime] d: usize,
    #[comptime] has_mask: bool,
) {
    let r = ABSOLUTE_POS;
    if r >= lse.len() {
        terminate!();
    }
    let heads = heads as usize;
    let kv_heads = kv_heads as usize;
    let t = t as usize;
    let s = s as usize;
    let i = r % t;
    let hi = (r / t) % heads;
    let bi = r / (t * heads);
    let kv = hi / (heads / kv_heads);
    let qb = r * d;
    let kb0 = (bi * kv_heads + kv) * s * d;
    let mut acc = Array::<f32>::new(d);
    for x in 0..d {
        acc[x] = 0.0f32;
    }
    let mut m = f32::new(-3.0e38);
    let mut l = 0.0f32;
    for j in 0..s {
        if !masked(mask, bi, i, j, t, s, per_batch, has_mask) {
            let kb = kb0 + j * d;
            let mut dot = 0.0f32;
            for x in 0..d {
                dot += q[qb + x] * k[kb + x];
            }
            let sc = dot * scale;
            if sc > m {
                let c = (m - sc).exp();
                l = l * c + 1.0f32;
                for x in 0..d {
                    acc[x] = acc[x] * c + v[kb + x];
                }
                m = sc;
            } else {
                let p = (sc - m).exp();
                l += p;
                for x in 0..d {
                    acc[x] += p * v[kb + x];
                }
            }
        }
    }
    if l > 0.0f32 {
        let inv = 1.0f32 / l;
        for x in 0..d {
            out[qb + x] = acc[x] * inv;
        }
        lse[r] = m + l.ln();
    } else {
        // Every key hidden: a zero output, and a log-sum-exp no score reaches.
        for x in 0..d {
            out[qb + x] = 0.0f32;
        }
        lse[r] = 3.0e38f32;
    }
}

/// `delta[r] = dO[r] · O[r]`, one unit per query row.
#[cube(launch)]
fn attention_delta(out: &Tensor<f32>, dout: &Tensor<f32>, delta: &mut Tensor<f32>, #[comptime] d: usize) {
    let r = ABSOLUTE_POS;
    if r >= delta.len() {
        terminate!();
    }
    let mut acc = 0.0f32;
    for x in 0..d {
        acc += out[r * d + x] * dout[r * d + x];
    }
    delta[r] = acc;
}

/// `dQ[r] = scale · Σ_j p_rj (dO_r·v_j − delta_r) k_j`, one unit per query row.
#[cube(launch)]
fn attention_dq(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    mask: &Tensor<f32>,
    dout: &Tensor<f32>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dq: &mut Tensor<f32>,
    scale: f32,
    heads: u32,
    kv_heads: u32,
    t: u32,
    s: u32,
    per_batch: u32,
    #[comptime] d: usize,
    #[comptime] has_mask: bool,
) {
    let r = ABSOLUTE_POS;
    if r >= lse.len() {
        terminate!();
    }
    let heads = heads as usize;
    let kv_heads = kv_heads as usize;
    let t = t as usize;
    let s = s as usize;
    let i = r % t;
    let hi = (r / t) % heads;
    let bi = r / (t * heads);
    let kv = hi / (heads / kv_heads);
    let qb = r * d;
    let kb0 = (bi * kv_heads + kv) * s * d;
    let l = lse[r];
    let dl = delta[r];
    let mut acc = Array::<f32>::new(d);
    for x in 0..d {
        acc[x] = 0.0f32;
    }
    for j in 0..s {
        if !masked(mask, bi, i, j, t, s, per_batch, has_mask) {
            let kb = kb0 + j * d;
            let mut dot = 0.0f32;
            let mut dp = 0.0f32;
            for x in 0..d {
                dot += q[qb + x] * k[kb + x];
                dp += dout[qb + x] * v[kb + x];
            }
            let p = (dot * scale - l).exp();
            let ds = p * (dp - dl) * scale;
            for x in 0..d {
                acc[x] += ds * k[kb + x];
            }
        }
    }
    for x in 0..d {
        dq[qb + x] = acc[x];
    }
}

/// `dK[c] = scale · Σ p (dO·v_c − delta) q`, `dV[c] = Σ p dO`, over every query row of every
/// query head sharing key/value head `c`; one unit per key row.
#[cube(launch)]
fn attention_dkv(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    mask: &Tensor<f32>,
    dout: &Tensor<f32>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dk: &mut Tensor<f32>,
    dv: &mut Tensor<f32>,
    scale: f32,
    heads: u32,
    kv_heads: u32,
    t: u32,
    s: u32,
    per_batch: u32,
    #[comptime] d: usize,
    #[comptime] has_mask: bool,
) {
    let c = ABSOLUTE_POS;
    if c * d >= dk.len() {
        terminate!();
    }
    let heads = heads as usize;
    let kv_heads = kv_heads as usize;
    let t = t as usize;
    let s = s as usize;
    let j = c % s;
    let kv = (c / s) % kv_heads;
    let bi = c / (s * kv_heads);
    let group = heads / kv_heads;
    let kb = c * d;
    let mut ak = Array::<f32>::new(d);
    let mut av = Array::<f32>::new(d);
    for x in 0..d {
        ak[x] = 0.0f32;
        av[x] = 0.0f32;
    }
    for g in 0..group {
        let hi = kv * group + g;
        for i in 0..t {
            if !masked(mask, bi, i, j, t, s, per_batch, has_mask) {
                let r = (bi * heads + hi) * t + i;
                let qb = r * d;
                let mut dot = 0.0f32;
                let mut dp = 0.0f32;
                for x in 0..d {
                    dot += q[qb + x] * k[kb + x];
                    dp += dout[qb + x] * v[kb + x];
                }
                let p = (dot * scale - lse[r]).exp();
                let ds = p * (dp - delta[r]) * scale;
                for x in 0..d {
                    ak[x] += ds * q[qb + x];
                    av[x] += p * dout[qb + x];
                }
            }
        }
    }
    for x in 0..d {
        dk[kb + x] = ak[x];
        dv[kb + x] = av[x];
    }
}

/// Head sizes the kernels are compiled for (each one a separate shader).
const MAX_HEAD_DIM: usize = 256;

/// `softmax(q·kᵀ·scale, masked) · v` on a cube device, or the inputs back when they are not
/// f32 cube tensors. `q`: `[B, H, T, D]`; `k`, `v`: `[B, KVH, S, D]` with `H` a multiple of
/// `KVH`; `mask`: `[B or 1, 1, T, S]`, true where a key is hidden.
pub(crate) fn attend(
    q: BTensor<4>,
    k: BTensor<4>,
    v: BTensor<4>,
    scale: f64,
    mask: Option<&BTensor<4, Bool>>,
) -> Result<BTensor<4>, (BTensor<4>, BTensor<4>, BTensor<4>)> {
    let [b, h, t, d] = q.dims();
    let [kb, kvh, s, kd] = k.dims();
    let fits = kb == b && kd == d && v.dims() == k.dims() && kvh > 0 && h % kvh == 0 && d > 0 && d <= MAX_HEAD_DIM;
    let mask_fits = mask.is_none_or(|m| {
        let [mb, one, mt, ms] = m.dims();
        (mb == 1 || mb == b) && one == 1 && mt == t && ms == s
    });
    let Some([pq, pk, pv]) = (if fits && mask_fits { prims([&q, &k, &v]) } else { None }) else {
        return Err((q, k, v));
    };
    drop((q, k, v));
    let (qs, ks, vs) = (contiguous(pq.cube()), contiguous(pk.cube()), contiguous(pv.cube()));
    // The mask as 0/1 floats on the device, plain whatever the inputs are.
    let (mask_t, per_batch) = match mask {
        Some(m) => {
            let f = m.clone().float();
            let pm = prim(&f).expect("the mask lives on the inputs' device");
            (contiguous(pm.cube()), m.dims()[0] != 1)
        }
        None => (empty(&qs, &[1]), false),
    };
    let g = Geom { b, h, kvh, t, s, d, mask_per_batch: per_batch };
    let out = empty(&qs, &[b, h, t, d]);
    let lse = empty(&qs, &[b * h * t]);
    let client = qs.client.clone();
    let (count, dim) = elementwise(&client, b * h * t);
    attention_forward::launch(
        &client,
        count,
        dim,
        qs.clone().into_tensor_arg(),
        ks.clone().into_tensor_arg(),
        vs.clone().into_tensor_arg(),
        mask_t.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        scale as f32,
        Geom::u(h),
        Geom::u(kvh),
        Geom::u(t),
        Geom::u(s),
        u32::from(per_batch),
        d,
        mask.is_some(),
    );
    let has_mask = mask.is_some();
    let saved_out = out.clone();
    Ok(finish(
        pq.is_ad(),
        Attend,
        || match (&pq, &pk, &pv) {
            (GPrim::Ad(a), GPrim::Ad(b_), GPrim::Ad(c)) => [a.node(), b_.node(), c.node()],
            _ => unreachable!("all inputs are tracked"),
        },
        || State { q: qs, k: ks, v: vs, mask: mask_t, has_mask, out: saved_out, lse, scale: scale as f32, g },
        out,
    ))
}

#[derive(Debug)]
struct Attend;

#[derive(Debug, Clone)]
struct State {
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    mask: CubeTensor,
    has_mask: bool,
    out: CubeTensor,
    lse: CubeTensor,
    scale: f32,
    g: Geom,
}

impl Backward<Cube, 3> for Attend {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pq, pk, pv] = ops.parents;
        let dout = grads.consume::<Cube>(&ops.node);
        if pq.is_none() && pk.is_none() && pv.is_none() {
            return;
        }
        let st = ops.state;
        let g = st.g;
        let dout = contiguous(&dout);
        let client = st.q.client.clone();
        let rows = g.b * g.h * g.t;
        let delta = empty(&st.q, &[rows]);
        let (count, dim) = elementwise(&client, rows);
        attention_delta::launch(
            &client,
            count,
            dim,
            st.out.into_tensor_arg(),
            dout.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            g.d,
        );
        let scalars = (st.scale, Geom::u(g.h), Geom::u(g.kvh), Geom::u(g.t), Geom::u(g.s), u32::from(g.mask_per_batch));
        if let Some(p) = pq {
            let dq = empty(&st.q, &[g.b, g.h, g.t, g.d]);
            let (count, dim) = elementwise(&client, rows);
            attention_dq::launch(
                &client,
                count,
                dim,
                st.q.clone().into_tensor_arg(),
                st.k.clone().into_tensor_arg(),
                st.v.clone().into_tensor_arg(),
                st.mask.clone().into_tensor_arg(),
                dout.clone().into_tensor_arg(),
                st.lse.clone().into_tensor_arg(),
                delta.clone().into_tensor_arg(),
                dq.clone().into_tensor_arg(),
                scalars.0,
                scalars.1,
                scalars.2,
                scalars.3,
                scalars.4,
                scalars.5,
                g.d,
                st.has_mask,
            );
            grads.register::<Cube>(p.id, dq);
        }
        if pk.is_some() || pv.is_some() {
            let shape = [g.b, g.kvh, g.s, g.d];
            let (dk, dv) = (empty(&st.k, &shape), empty(&st.k, &shape));
            let (count, dim) = elementwise(&client, g.b * g.kvh * g.s);
            attention_dkv::launch(
                &client,
                count,
                dim,
                st.q.into_tensor_arg(),
                st.k.into_tensor_arg(),
                st.v.into_tensor_arg(),
                st.mask.into_tensor_arg(),
                dout.into_tensor_arg(),
                st.lse.into_tensor_arg(),
                delta.into_tensor_arg(),
                dk.clone().into_tensor_arg(),
                dv.clone().into_tensor_arg(),
                scalars.0,
                scalars.1,
                scalars.2,
                scalars.3,
                scalars.4,
                scalars.5,
                g.d,
                st.has_mask,
            );
            if let Some(p) = pk {
                grads.register::<Cube>(p.id, dk);
            }
            if let Some(p) = pv {
                grads.register::<Cube>(p.id, dv);
            }
        }
    }
}
