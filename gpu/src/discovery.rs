//! Which GPUs this machine has, found without a CUDA toolkit.
//!
//! NVML (`libnvidia-ml.so`, shipped with the driver) is asked first: it knows names, UUIDs,
//! memory, compute capability, the links between GPUs and per-process memory. Where NVML is
//! missing, the CUDA driver (`libcuda.so`) is loaded at run time and asked for what it knows.
//! With neither, the machine has zero GPUs and [`Discovery::reason`] says why.

use std::sync::OnceLock;

use nvml_wrapper::enum_wrappers::device::TopologyLevel;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use crate::GpuError;

/// Where the GPU list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Nvml,
    CudaDriver,
    /// Neither library could be loaded (or no GPU is visible): zero GPUs.
    None,
}

/// One GPU visible to this process. `index` is its CUDA ordinal here (after
/// `CUDA_VISIBLE_DEVICES`), `physical_index` NVML's index on the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: usize,
    pub physical_index: Option<u32>,
    pub name: String,
    pub uuid: String,
    pub memory_total: u64,
    /// Free memory when discovery ran (`None` where only the driver was asked).
    pub memory_free: Option<u64>,
    pub compute_capability: (u32, u32),
    pub pci_bus_id: Option<String>,
}

impl GpuInfo {
    /// Ray's `accelerator_type` label for this GPU: `NVIDIA H200` → `H200`,
    /// `NVIDIA A100-SXM4-80GB` → `A100`, `NVIDIA GeForce RTX 4090` → `RTX-4090`.
    pub fn accelerator_type(&self) -> String {
        accelerator_type(&self.name)
    }
}

fn accelerator_type(name: &str) -> String {
    let words: Vec<&str> = name
        .split_whitespace()
        .filter(|w| !matches!(w.to_ascii_lowercase().as_str(), "nvidia" | "tesla" | "geforce" | "quadro"))
        .collect();
    match words.as_slice() {
        [] => "unknown".to_string(),
        [first, second, ..] if matches!(*first, "RTX" | "GTX" | "TITAN") => format!("{first}-{second}"),
        [first, ..] => first.split('-').next().unwrap_or(first).to_string(),
    }
}

/// How two GPUs are connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    /// `links` active NVLinks from `a` lead to `b`.
    NvLink { links: u32 },
    /// No NVLink; the nearest common PCIe ancestor, in nvidia-smi's words
    /// (`PIX`, `PXB`, `PHB`, `NODE`, `SYS`, or `BOARD` for two GPUs on one board).
    Pcie { level: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub a: usize,
    pub b: usize,
    pub kind: LinkKind,
}

/// The GPUs of this machine as this process sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    pub source: Source,
    pub gpus: Vec<GpuInfo>,
    /// One entry per pair `a < b`, where NVML reports it.
    pub links: Vec<Link>,
    pub driver_version: Option<String>,
    /// Why there are no GPUs (or why some facts are missing), for logs and `flare status`.
    pub reason: Option<String>,
}

impl Discovery {
    /// The `accelerator_type` label of the node: that of its first GPU (Ray's rule).
    pub fn accelerator_type(&self) -> Option<String> {
        self.gpus.first().map(GpuInfo::accelerator_type)
    }

    fn none(reason: String) -> Discovery {
        Discovery { source: Source::None, gpus: Vec::new(), links: Vec::new(), driver_version: None, reason: Some(reason) }
    }
}

/// The GPUs visible to this process, found once and cached.
pub fn discover() -> &'static Discovery {
    static FOUND: OnceLock<Discovery> = OnceLock::new();
    FOUND.get_or_init(discover_now)
}

fn nvml() -> Result<&'static Nvml, GpuError> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| Nvml::init().map_err(|e| e.to_string())).as_ref().map_err(|e| GpuError::NvmlUnavailable(e.clone()))
}

/// Whether `libcuda.so` can be loaded. Every cudarc driver call must come after this check:
/// without the library the first call panics.
pub fn cuda_driver_present() -> bool {
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: only tries to dlopen the library.
        unsafe { cudarc::driver::sys::is_culib_present() }
    }
    #[cfg(feature = "cuda")]
    {
        // Under candle's `cuda` feature the driver is linked: the binary would not start without it.
        true
    }
}

/// Whether NCCL can be loaded (`libnccl.so` on the library path).
pub fn nccl_present() -> bool {
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: only tries to dlopen the library.
        unsafe { cudarc::nccl::sys::is_culib_present() }
    }
    #[cfg(feature = "cuda")]
    {
        true
    }
}

/// `CUDA_VISIBLE_DEVICES` as a list of entries (indices or UUIDs); `None` when unset.
fn visible_devices() -> Option<Vec<String>> {
    let v = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    let v = v.trim();
    // CUDA stops at the first invalid entry; "-1" or "" hide every GPU.
    let mut out = Vec::new();
    for entry in v.split(',').map(str::trim) {
        if entry.is_empty() || entry.starts_with('-') {
            break;
        }
        out.push(entry.to_string());
    }
    Some(out)
}

fn discover_now() -> Discovery {
    let nvml_err = match discover_nvml() {
        Ok(d) => return d,
        Err(e) => e.to_string(),
    };
    if !cuda_driver_present() {
        return Discovery::none(format!("{nvml_err}; the CUDA driver (libcuda.so) is not installed either"));
    }
    match discover_driver() {
        Ok(mut d) => {
            d.reason = Some(format!("{nvml_err}; facts come from the CUDA driver (no free memory or links)"));
            d
        }
        Err(e) => Discovery::none(format!("{nvml_err}; the CUDA driver failed: {e}")),
    }
}

fn nvml_call<T>(call: &'static str, r: Result<T, nvml_wrapper::error::NvmlError>) -> Result<T, GpuError> {
    r.map_err(|e| GpuError::Nvml { call, message: e.to_string() })
}

fn discover_nvml() -> Result<Discovery, GpuError> {
    let nvml = nvml()?;
    let count = nvml_call("nvmlDeviceGetCount", nvml.device_count())?;
    let mut all = Vec::new();
    for i in 0..count {
        let d = nvml_call("nvmlDeviceGetHandleByIndex", nvml.device_by_index(i))?;
        let mem = nvml_call("nvmlDeviceGetMemoryInfo", d.memory_info())?;
        let cc = nvml_call("nvmlDeviceGetCudaComputeCapability", d.cuda_compute_capability())?;
        all.push(GpuInfo {
            index: 0,
            physical_index: Some(i),
            name: nvml_call("nvmlDeviceGetName", d.name())?,
            uuid: nvml_call("nvmlDeviceGetUUID", d.uuid())?,
            memory_total: mem.total,
            memory_free: Some(mem.free),
            compute_capability: (cc.major.max(0) as u32, cc.minor.max(0) as u32),
            pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
        });
    }
    let gpus = match visible_devices() {
        None => all,
        Some(entries) => entries
            .iter()
            .filter_map(|e| match e.parse::<u32>() {
                Ok(i) => all.iter().find(|g| g.physical_index == Some(i)).cloned(),
                Err(_) => all.iter().find(|g| g.uuid.starts_with(e.as_str())).cloned(),
            })
            .collect(),
    };
    let gpus: Vec<GpuInfo> = gpus.into_iter().enumerate().map(|(index, g)| GpuInfo { index, ..g }).collect();
    let links = nvml_links(nvml, &gpus);
    let reason = gpus.is_empty().then(|| {
        if count == 0 {
            "NVML found no GPU".to_string()
        } else {
            format!("CUDA_VISIBLE_DEVICES hides all {count} GPUs")
        }
    });
    Ok(Discovery { source: Source::Nvml, gpus, links, driver_version: nvml.sys_driver_version().ok(), reason })
}

/// NVLink counts between each pair, else the PCIe level, as `nvidia-smi topo -m` shows them.
fn nvml_links(nvml: &Nvml, gpus: &[GpuInfo]) -> Vec<Link> {
    let mut links = Vec::new();
    let handle = |g: &GpuInfo| g.physical_index.and_then(|i| nvml.device_by_index(i).ok());
    for (ai, a) in gpus.iter().enumerate() {
        for b in &gpus[ai + 1..] {
            let (Some(da), Some(db)) = (handle(a), handle(b)) else { continue };
            let mut nvlinks = 0;
            // NVML_NVLINK_MAX_LINKS: the most NVLinks a GPU has.
            for l in 0..18 {
                let link = da.link_wrapper_for(l);
                if link.is_active().unwrap_or(false)
                    && link.remote_pci_info().map(|p| Some(p.bus_id) == b.pci_bus_id).unwrap_or(false)
                {
                    nvlinks += 1;
                }
            }
            let kind = if nvlinks > 0 {
                LinkKind::NvLink { links: nvlinks }
            } else {
                match da.topology_common_ancestor(db) {
                    Ok(level) => LinkKind::Pcie {
                        level: match level {
                            TopologyLevel::Internal => "BOARD",
                            TopologyLevel::Single => "PIX",
                            TopologyLevel::Multiple => "PXB",
                            TopologyLevel::HostBridge => "PHB",
                            TopologyLevel::Node => "NODE",
                            TopologyLevel::System => "SYS",
                        }
                        .to_string(),
                    },
                    Err(_) => continue,
                }
            };
            links.push(Link { a: a.index, b: b.index, kind });
        }
    }
    links
}

fn discover_driver() -> Result<Discovery, String> {
    use cudarc::driver::{result, sys};
    result::init().map_err(|e| e.to_string())?;
    let count = result::device::get_count().map_err(|e| e.to_string())?;
    let mut gpus = Vec::new();
    for i in 0..count {
        let dev = result::device::get(i).map_err(|e| e.to_string())?;
        // SAFETY: `dev` is a valid device handle from `cuDeviceGet`.
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.map_err(|e| e.to_string());
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let uuid = result::device::get_uuid(dev).map_err(|e| e.to_string())?;
        gpus.push(GpuInfo {
            index: i as usize,
            physical_index: None,
            name: result::device::get_name(dev).map_err(|e| e.to_string())?,
            uuid: format_uuid(&uuid.bytes.map(|b| b as u8)),
            // SAFETY: as above.
            memory_total: unsafe { result::device::total_mem(dev) }.map_err(|e| e.to_string())? as u64,
            memory_free: None,
            compute_capability: (major.max(0) as u32, minor.max(0) as u32),
            pci_bus_id: None,
        });
    }
    Ok(Discovery { source: Source::CudaDriver, gpus, links: Vec::new(), driver_version: None, reason: None })
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as NVML and nvidia-smi write UUIDs.
fn format_uuid(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", h[0..4].concat(), h[4..6].concat(), h[6..8].concat(), h[8..10].concat(), h[10..16].concat())
}

/// GPU memory one process holds on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub pid: u32,
    /// The GPU's index in [`Discovery::gpus`].
    pub gpu: usize,
    /// `None` where the driver does not say (some virtualized setups).
    pub used_bytes: Option<u64>,
}

/// Every compute process on the visible GPUs and the memory it holds, from NVML.
pub fn process_memory() -> Result<Vec<ProcessMemory>, GpuError> {
    let nvml = nvml()?;
    let mut out = Vec::new();
    for g in &discover().gpus {
        let Some(phys) = g.physical_index else { continue };
        let d = nvml_call("nvmlDeviceGetHandleByIndex", nvml.device_by_index(phys))?;
        for p in nvml_call("nvmlDeviceGetComputeRunningProcesses", d.running_compute_processes())? {
            let used_bytes = match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            };
            out.push(ProcessMemory { pid: p.pid, gpu: g.index, used_bytes });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerator_types_follow_ray() {
        assert_eq!(accelerator_type("NVIDIA H200"), "H200");
        assert_eq!(accelerator_type("NVIDIA A100-SXM4-80GB"), "A100");
        assert_eq!(accelerator_type("Tesla V100-PCIE-16GB"), "V100");
        assert_eq!(accelerator_type("NVIDIA GeForce RTX 4090"), "RTX-4090");
        assert_eq!(accelerator_type(""), "unknown");
    }

    #[test]
    fn uuids_are_formatted_like_nvidia_smi() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(format_uuid(&b), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn discovery_never_panics_and_explains_zero_gpus() {
        let d = discover();
        if std::env::var("FLARE_REQUIRE_GPU").is_ok() {
            assert!(!d.gpus.is_empty(), "FLARE_REQUIRE_GPU is set but no GPU was found: {d:?}");
        }
        if d.gpus.is_empty() {
            assert!(d.reason.as_deref().is_some_and(|r| !r.is_empty()), "zero GPUs needs a reason: {d:?}");
        } else {
            for (i, g) in d.gpus.iter().enumerate() {
                assert_eq!(g.index, i);
                assert!(g.memory_total > 0 && g.uuid.starts_with("GPU-"), "{g:?}");
            }
        }
        // process_memory is an error without NVML and a list with it; never a panic.
        let _ = process_memory();
    }
}
