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
    /// The memory a job can use: the GPU's capacity as its runtime reports it (Vulkan: the
    /// largest device-local heap), or the RAM available now for the CPU. `None` where the
    /// runtime gives no figure.
    pub memory_bytes: Option<u64>,
}

impl DeviceInfo {
    /// `name (description, 24.0 GB)`, as lists show it.
    pub fn label(&self) -> String {
        match self.memory_bytes {
            Some(b) => format!("{} ({}, {})", self.name, self.description, fmt_gb(b)),
            None => format!("{} ({})", self.name, self.description),
        }
    }
}

/// `12.3 GB`.
pub fn fmt_gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// The cubecl device under `device` (through an autodiff wrapper), if it is one.
fn cube_device(device: &Device) -> Option<burn::backend::CubeDevice> {
    use burn::backend::DispatchDevice;
    match device.as_dispatch() {
        DispatchDevice::Cube(d) => Some(d.clone()),
        DispatchDevice::Autodiff(inner) => match &**inner {
            DispatchDevice::Cube(d) => Some(d.clone()),
            #[allow(unreachable_patterns)]
            _ => None,
        },
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// RAM available now (Linux: `MemAvailable`), what a CPU job can use.
pub fn available_ram() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Whether `device` is a GPU (any cubecl runtime: wgpu, CUDA), with or without autodiff.
pub fn is_gpu(device: &Device) -> bool {
    cube_device(device).is_some()
}

/// The memory capacity of a GPU device, as its runtime reports it, or else (wgpu compiling to
/// WGSL reports none) the largest device-local heap that Vulkan reports for the adapter of that
/// name; `None` for the CPU, or where neither has a figure.
pub fn gpu_capacity(device: &Device) -> Option<u64> {
    let client = cube_device(device)?.client();
    let props = client.properties();
    props.memory.max_memory().or_else(|| {
        let name = &props.identity.name;
        vulkan_heaps().iter().find(|(n, _)| n == name).map(|&(_, bytes)| bytes)
    })
}

/// Each Vulkan physical device's name and its largest device-local memory heap, read once
/// (empty without a Vulkan loader or driver).
fn vulkan_heaps() -> &'static [(String, u64)] {
    static HEAPS: std::sync::OnceLock<Vec<(String, u64)>> = std::sync::OnceLock::new();
    HEAPS.get_or_init(|| read_vulkan_heaps().unwrap_or_default())
}

fn read_vulkan_heaps() -> Option<Vec<(String, u64)>> {
    use ash::vk;
    // SAFETY: loading the system's Vulkan loader, as wgpu does; every handle made here is
    // destroyed before returning, and nothing else uses them.
    unsafe {
        let entry = ash::Entry::load().ok()?;
        let app = vk::ApplicationInfo::default().api_version(vk::make_api_version(0, 1, 0, 0));
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        let instance = entry.create_instance(&info, None).ok()?;
        let mut out = Vec::new();
        for pd in instance.enumerate_physical_devices().unwrap_or_default() {
            let props = instance.get_physical_device_properties(pd);
            let Ok(name) = props.device_name_as_c_str() else { continue };
            let mem = instance.get_physical_device_memory_properties(pd);
            let largest =
                mem.memory_heaps_as_slice().iter().filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL)).map(|h| h.size).max();
            if let Some(size) = largest.filter(|&s| s > 0) {
                out.push((name.to_string_lossy().into_owned(), size));
            }
        }
        instance.destroy_instance(None);
        Some(out)
    }
}

/// Bytes the GPU's allocator holds now (live tensors plus pages kept for reuse); `None` for
/// the CPU.
pub fn gpu_memory_in_use(device: &Device) -> Option<u64> {
    if !is_gpu(device) {
        return None;
    }
    device.memory_pool_usage().map(|u| u.bytes_reserved)
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
        memory_bytes: available_ram(),
    }];
    for (i, d) in Device::enumerate(DeviceType::Wgpu).into_vec().into_iter().enumerate() {
        let description = d.identity().map(|id| id.name).unwrap_or_else(|| format!("{d:?}"));
        out.push(DeviceInfo { name: format!("wgpu:{i}"), backend: "wgpu".into(), description, memory_bytes: gpu_capacity(&d) });
    }
    #[cfg(feature = "cuda")]
    for (i, d) in Device::enumerate(DeviceType::Cuda).into_vec().into_iter().enumerate() {
        let description = d.identity().map(|id| id.name).unwrap_or_else(|| format!("{d:?}"));
        out.push(DeviceInfo { name: format!("cuda:{i}"), backend: "cuda".into(), description, memory_bytes: gpu_capacity(&d) });
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
