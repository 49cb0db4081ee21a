//! `x · Wᵀ` on the GPU for a frozen weight kept in a block format (Q8_0, Q4_0, Q4_1, Q4_K,
//! Q5_K, Q6_K), so a QLoRA base never exists in f32 on the device.
//!
//! At first use on a device the blocks are repacked once into one layout for every format
//! (`PackedMatrix::groups16`): groups of 16 values, each `code · scale + offset` with a signed
//! 8-bit code, 12 bits a value in all (f32 takes 32), dequantising bit for bit as the CPU's
//! blocks do. That copy is cached against the matrix's storage (held weakly: it goes when the
//! matrix goes). Forward, one unit per output: each group adds `scale · Σ x·code +
//! offset · Σ x`. The backward pass gives `x` its gradient, `dx = dy · W`, one unit per input
//! feature, each weight value dequantised as it is read; `W` is frozen and takes none.
//!
//! 16- and 32-bit float weights take the composite path (`kernels/qlinear.rs`): the weight
//! dequantised on the host and multiplied by burn's matmul.

use std::sync::{Arc, Mutex, Weak};

use burn::backend::Cube;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::{DType, Shape, Tensor as BTensor};
use burn_cubecl::CubeDevice;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{GPrim, contiguous, elementwise, empty, finish, prim};
use crate::io::quant::PackedMatrix;

/// A weight on one device: the repacked groups.
#[derive(Debug, Clone)]
struct Groups {
    codes: CubeTensor,
    scales: CubeTensor,
    offsets: CubeTensor,
}

struct Entry {
    key: Weak<Vec<u8>>,
    device: CubeDevice,
    groups: Groups,
}

/// Every weight's copy on every device it was used on, dropped with its matrix.
static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Bytes of f32 values as a new device buffer.
fn upload_f32(like: &CubeTensor, values: &[f32], shape: &[usize]) -> CubeTensor {
    let handle = like.client.create_from_slice(bytemuck::cast_slice(values));
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), Shape::from(shape.to_vec()), handle, DType::F32)
}

/// `w`'s groups on `like`'s device, repacked and uploaded at first use.
fn groups_on(w: &PackedMatrix, like: &CubeTensor) -> Option<Groups> {
    let key = w.storage();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.retain(|e| e.key.strong_count() > 0);
    if let Some(e) = cache.iter().find(|e| e.device == like.device && e.key.upgrade().is_some_and(|k| Arc::ptr_eq(&k, key))) {
        return Some(e.groups.clone());
    }
    let (words, scales, offsets) = w.groups16()?;
    let handle = like.client.create_from_slice(bytemuck::cast_slice(&words));
    let codes = CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), Shape::from(vec![words.len()]), handle, DType::U32);
    let g = w.cols / 16;
    let groups = Groups { codes, scales: upload_f32(like, &scales, &[w.rows, g]), offsets: upload_f32(like, &offsets, &[w.rows, g]) };
    cache.push(Entry { key: Arc::downgrade(key), device: like.device.clone(), groups: groups.clone() });
    Some(groups)
}

/// The code of value `index` (four codes a little-endian word), sign-extended.
#[cube]
fn code_at(codes: &Tensor<u32>, index: usize) -> f32 {
    let word = codes[index / 4];
    let byte = (word >> (8 * (index % 4) as u32)) & 0xFFu32;
    let signed = i32::cast_from(byte) - select(byte >= 128u32, 256i32, 0i32);
    f32::cast_from(signed)
}

/// `y[r, j] = Σ_g scale[j, g] · Σ x[r, k]·code[j, k] + offset[j, g] · Σ x[r, k]` over the
/// groups `g` of 16 inputs `k`; one unit per output.
#[cube(launch)]
fn packed_forward(
    x: &Tensor<f32>,
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    offsets: &Tensor<f32>,
    y: &mut Tensor<f32>,
    dout: u32,
    din: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= y.len() {
        terminate!();
    }
    let dout = dout as usize;
    let din = din as usize;
    let r = i / dout;
    let j = i % dout;
    let groups = din / 16;
    let mut acc = 0.0f32;
    for g in 0..groups {
        let mut dot = 0.0f32;
        let mut sum = 0.0f32;
        for l in 0..16usize {
            let k = g * 16 + l;
            let xv = x[r * din + k];
            dot += xv * code_at(codes, j * din + k);
            sum += xv;
        }
        acc += scales[j * groups + g] * dot + offsets[j * groups + g] * sum;
    }
    y[i] = acc;
}

/// `dx[r, k] = Σ_j dy[r, j] · W[j, k]`, each `W[j, k] = code · scale + offset` as the CPU
/// dequantises it; one unit per input feature.
#[cube(launch)]
fn packed_backward(
    dy: &Tensor<f32>,
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    offsets: &Tensor<f32>,
    dx: &mut Tensor<f32>,
    dout: u32,
    din: u32,
) {
    let i = ABSOLUTE_POS;
    if i >= dx.len() {
        terminate!();
    }
    let dout = dout as usize;
    let din = din as usize;
    let r = i / din;
    let k = i % din;
    let groups = din / 16;
    let g = k / 16;
    let mut acc = 0.0f32;
    for j in 0..dout {
        let w = code_at(codes, j * din + k) * scales[j * groups + g] + offsets[j * groups + g];
        acc += dy[r * dout + j] * w;
    }
    dx[i] = acc;
}

fn launch(kernel_forward: bool, src: &CubeTensor, g: &Groups, out: &CubeTensor, dout: usize, din: usize) {
    let n = out.meta.shape().iter().product::<usize>();
    let client = src.client.clone();
    let (count, dim) = elementwise(&client, n);
    let u = |v: usize| u32::try_from(v).expect("weight dimension fits in u32");
    let args = (
        src.clone().into_tensor_arg(),
        g.codes.clone().into_tensor_arg(),
        g.scales.clone().into_tensor_arg(),
        g.offsets.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
    );
    if kernel_forward {
        packed_forward::launch(&client, count, dim, args.0, args.1, args.2, args.3, args.4, u(dout), u(din));
    } else {
        packed_backward::launch(&client, count, dim, args.0, args.1, args.2, args.3, args.4, u(dout), u(din));
    }
}

/// `x · Wᵀ` (`x` `[..., in]`, `w` `[out, in]` in a block format) on a cube device, or `x`
/// back when it is not an f32 cube tensor or `w` is a float type.
pub(crate) fn packed_matmul<const D: usize>(x: BTensor<D>, w: &Arc<PackedMatrix>) -> Result<BTensor<D>, BTensor<D>> {
    let Some(px) = prim(&x) else { return Err(x) };
    let Some(groups) = groups_on(w, px.cube()) else { return Err(x) };
    let dims = x.dims();
    let (dout, din) = (w.rows, w.cols);
    let rows = dims.iter().product::<usize>() / din.max(1);
    drop(x);
    let xs = contiguous(px.cube());
    let mut out_dims = dims.to_vec();
    out_dims[D - 1] = dout;
    let y = empty(&xs, &out_dims);
    launch(true, &xs, &groups, &y, dout, din);
    drop(xs);
    Ok(finish(
        px.is_ad(),
        PackedLinear,
        || match &px {
            GPrim::Ad(a) => [a.node()],
            GPrim::Plain(_) => unreachable!("the input is tracked"),
        },
        || State { groups, x_dims: dims.to_vec(), rows, dout, din },
        y,
    ))
}

#[derive(Debug)]
struct PackedLinear;

#[derive(Debug, Clone)]
struct State {
    groups: Groups,
    x_dims: Vec<usize>,
    rows: usize,
    dout: usize,
    din: usize,
}

impl Backward<Cube, 1> for PackedLinear {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<Cube>(&ops.node);
        let Some(parent) = parent else { return };
        let st = ops.state;
        let dy = contiguous(&dy);
        debug_assert_eq!(dy.meta.shape().iter().product::<usize>(), st.rows * st.dout);
        let dx = empty(&dy, &st.x_dims);
        launch(false, &dy, &st.groups, &dx, st.dout, st.din);
        grads.register::<Cube>(parent.id, dx);
    }
}
