//! GPU devices for Flare.
//!
//! - [`Device`]: where a computation runs (`Cpu` or `Cuda(ordinal)`), mapped onto candle's
//!   devices. A CPU-only build (the `cuda` feature off, the default) has the same types.
//! - [`discover`]: which GPUs this machine has, found through NVML or the CUDA driver loaded at
//!   run time. Nothing here needs a CUDA toolkit to build, and a machine without a driver gets
//!   zero GPUs and the reason, never a panic.
//! - [`process_memory`]: per-process GPU memory use, from NVML.

mod device;
mod discovery;

pub use device::{Device, DeviceParseError};
pub use discovery::{
    cuda_driver_present, discover, nccl_present, process_memory, Discovery, GpuInfo, Link, LinkKind, ProcessMemory, Source,
};

/// Errors from GPU discovery and telemetry.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No NVML library or no NVIDIA driver on this machine.
    #[error("NVML is not available: {0}")]
    NvmlUnavailable(String),
    /// NVML answered with an error.
    #[error("NVML call `{call}` failed: {message}")]
    Nvml { call: &'static str, message: String },
    /// A device the caller named does not exist.
    #[error("no CUDA device {ordinal}: this machine has {count} ({reason})")]
    NoSuchDevice { ordinal: usize, count: usize, reason: String },
    /// candle could not create or use the device.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}
