//! Parameters by module path (`layers.3.attn.q.lora.a`), on the host: the form checkpoints
//! save and resume restores, and the form a run's tuned model is loaded back from.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::io::HostTensor;
use crate::io::safetensors::SafetensorsFolder;

/// Every float parameter of `m` by path. With `trainable_only`, only those that take gradients.
pub fn named_params<M: Module>(m: &M, trainable_only: bool) -> BTreeMap<String, HostTensor> {
    struct V {
        path: Vec<String>,
        out: BTreeMap<String, HostTensor>,
        trainable_only: bool,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _n: &str, _c: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let t = p.val();
            if self.trainable_only && !t.is_require_grad() {
                return;
            }
            let shape = t.dims().to_vec();
            let data = t.try_into_vec_as::<f32>().expect("float tensor");
            self.out.insert(self.path.join("."), HostTensor::new(shape, data));
        }
    }
    let mut v = V { path: vec![], out: BTreeMap::new(), trainable_only };
    m.visit(&mut v);
    v.out
}

/// Replace the parameters named in `values` (shapes must match); every name must be used.
pub fn set_named_params<M: Module>(m: M, values: &BTreeMap<String, HostTensor>) -> Result<M> {
    struct S<'a> {
        path: Vec<String>,
        values: &'a BTreeMap<String, HostTensor>,
        used: usize,
        error: Option<String>,
    }
    impl ModuleMapper for S<'_> {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _n: &str, _c: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let key = self.path.join(".");
            let Some(h) = self.values.get(&key) else { return p };
            let (id, t, mapper) = p.consume();
            if t.dims().as_slice() != h.shape.as_slice() {
                self.error.get_or_insert(format!("{key}: checkpoint shape {:?}, model shape {:?}", h.shape, t.dims()));
                return Param::from_mapped_value(id, t, mapper);
            }
            self.used += 1;
            let req = t.is_require_grad();
            let dims: [usize; D] = t.dims();
            let mut n = Tensor::<D>::from_data(TensorData::new(h.data.clone(), dims), &t.device());
            if req {
                n = n.require_grad();
            }
            Param::from_mapped_value(id, n, mapper)
        }
    }
    let mut s = S { path: vec![], values, used: 0, error: None };
    let m = m.map(&mut s);
    if let Some(e) = s.error {
        bail!("{e}");
    }
    if s.used != values.len() {
        let known = named_params(&m, false);
        let missing: Vec<_> = values.keys().filter(|k| !known.contains_key(*k)).take(3).collect();
        bail!("checkpoint has parameters the model does not: {missing:?}");
    }
    Ok(m)
}

/// Every tensor of one safetensors file, by name (f32 on the host).
pub fn read_all(path: &std::path::Path) -> Result<BTreeMap<String, HostTensor>> {
    let st = SafetensorsFolder::open_file(path)?;
    st.names().map(|n| Ok((n.to_string(), st.get(n)?))).collect()
}

/// Sum two sets of gradients parameter by parameter (a parameter in only one keeps its own).
pub fn add_grads<M: Module>(
    model: &M,
    mut a: burn::optim::GradientsParams,
    mut b: burn::optim::GradientsParams,
) -> burn::optim::GradientsParams {
    use burn::optim::GradientsParams;
    struct Add<'a> {
        a: &'a mut GradientsParams,
        b: &'a mut GradientsParams,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(gb) = self.b.remove::<D>(p.id) {
                let sum = match self.a.remove::<D>(p.id) {
                    Some(ga) => ga + gb,
                    None => gb,
                };
                self.a.register::<D>(p.id, sum);
            }
        }
    }
    model.visit(&mut Add { a: &mut a, b: &mut b });
    a
}
