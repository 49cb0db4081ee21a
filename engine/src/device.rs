//! Devices, chosen at run time: `cpu` (burn's flex backend, the default), `wgpu` (Vulkan, Metal,
//! DX12 or GL, whichever the system has) and `cuda` (only in builds with the `cuda` feature).

use anyhow::{Result, bail};
use burn::tensor::{Device, DeviceType};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// What to pass to `--device`.
    pub name: String,
    pub backend: String,
    pub description: String,
}

/// Parse a `--device` value: `cpu`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => match i.parse::<usize>() {
            Ok(i) => (k, Some(i)),
            Err(_) => bail!("device `{spec}`: `{i}` is not a device number"),
        },
        None => (spec, None),
    };
    match kind {
        "cpu" | "flex" => {
            if index.is_some_and(|i| i > 0) {
                bail!("device `{spec}`: there is one CPU device, `cpu`");
            }
            Ok(Device::flex())
        }
        "wgpu" | "gpu" => {
            let devices = Device::enumerate(DeviceType::Wgpu).into_vec();
            if devices.is_empty() {
                bail!(
                    "device `{spec}`: no wgpu adapter found (install a Vulkan, Metal or DX12 driver; `whetstone devices` lists what is available)"
                );
            }
            let i = index.unwrap_or(0);
            match devices.into_iter().nth(i) {
                Some(d) => Ok(d),
                None => bail!("device `{spec}`: no wgpu adapter number {i} (`whetstone devices` lists them)"),
            }
        }
        "cuda" => cuda_device(index.unwrap_or(0), spec),
        other => bail!("unknown device `{other}` (expected cpu, wgpu or cuda)"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(i: usize, spec: &str) -> Result<Device> {
    let devices = Device::enumerate(DeviceType::Cuda).into_vec();
    match devices.into_iter().nth(i) {
        Some(d) => Ok(d),
        None => bail!("device `{spec}`: no CUDA device number {i}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_i: usize, spec: &str) -> Result<Device> {
    bail!("device `{spec}`: this build has no CUDA support; rebuild with `cargo build --release --features cuda`")
}

/// Every device this build can use on this machine.
pub fn list_devices() -> Vec<DeviceInfo> {
    let mut out = vec![DeviceInfo {
        name: "cpu".into(),
        backend: "flex".into(),
        description: format!("CPU, {} threads", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
    }];
    for (i, d) in Device::enumerate(DeviceType::Wgpu).into_vec().into_iter().enumerate() {
        let description = d.identity().map(|id| id.name).unwrap_or_else(|| format!("{d:?}"));
        out.push(DeviceInfo { name: format!("wgpu:{i}"), backend: "wgpu".into(), description });
    }
    #[cfg(feature = "cuda")]
    for (i, d) in Device::enumerate(DeviceType::Cuda).into_vec().into_iter().enumerate() {
        let description = d.identity().map(|id| id.name).unwrap_or_else(|| format!("{d:?}"));
        out.push(DeviceInfo { name: format!("cuda:{i}"), backend: "cuda".into(), description });
    }
    out
}

/// The device name a user typed, normalised for display and run cards.
pub fn device_label(spec: &str) -> String {
    match spec {
        "flex" => "cpu".into(),
        "gpu" => "wgpu".into(),
        s => s.into(),
    }
}
