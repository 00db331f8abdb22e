use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{discover, GpuError};

/// Where tensors live and kernels run.
///
/// `Cuda(i)` is the `i`-th device *visible to this process*: the scheduler sets each worker's
/// `CUDA_VISIBLE_DEVICES` to the GPUs it was given, so a worker holding one GPU always sees it
/// as `Cuda(0)`, as in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl Device {
    /// `Cuda(ordinal)` when this process can use that GPU, `Cpu` otherwise: what
    /// `torch.device("cuda" if torch.cuda.is_available() else "cpu")` does.
    ///
    /// Without the `cuda` feature candle cannot run kernels on a GPU, so this is always `Cpu`
    /// there, even on a machine that has GPUs (they can still be discovered, scheduled and used
    /// through NCCL).
    pub fn cuda_if_available(ordinal: usize) -> Device {
        if cfg!(feature = "cuda") && discover().gpus.len() > ordinal {
            Device::Cuda(ordinal)
        } else {
            Device::Cpu
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// The CUDA ordinal, `None` for the CPU.
    pub fn ordinal(&self) -> Option<usize> {
        match self {
            Device::Cpu => None,
            Device::Cuda(i) => Some(*i),
        }
    }

    /// The candle device. For `Cuda(i)` this creates (or reuses) the CUDA context and fails with
    /// a clear error when the GPU does not exist or the build lacks the `cuda` feature.
    pub fn to_candle(&self) -> Result<candle_core::Device, GpuError> {
        match self {
            Device::Cpu => Ok(candle_core::Device::Cpu),
            Device::Cuda(i) => {
                let found = discover();
                if found.gpus.len() <= *i {
                    return Err(GpuError::NoSuchDevice {
                        ordinal: *i,
                        count: found.gpus.len(),
                        reason: found.reason.clone().unwrap_or_else(|| "fewer GPUs are visible".into()),
                    });
                }
                Ok(candle_core::Device::new_cuda(*i)?)
            }
        }
    }

    /// The Flare device of a candle device (`Metal` devices are not ours and map to `Cpu`).
    pub fn from_candle(device: &candle_core::Device) -> Device {
        match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Device::Cuda(gpu_id),
            _ => Device::Cpu,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A device string that is not `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a device: write `cpu`, `cuda` or `cuda:N`")]
pub struct DeviceParseError(pub String);

impl FromStr for Device {
    type Err = DeviceParseError;

    /// Parses PyTorch's spellings: `cpu`, `cuda` (device 0), `cuda:1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .or_else(|| t.strip_prefix("gpu:"))
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| DeviceParseError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pytorch_spellings() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("CUDA:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        let err = "tpu".parse::<Device>().unwrap_err();
        assert!(err.to_string().contains("cuda:N"), "{err}");
        assert!("cuda:x".parse::<Device>().is_err());
    }

    #[test]
    fn cpu_maps_onto_candle() {
        let d = Device::Cpu.to_candle().unwrap();
        assert!(d.is_cpu());
        assert_eq!(Device::from_candle(&d), Device::Cpu);
    }

    #[test]
    fn a_missing_gpu_is_a_clear_error() {
        // Ordinal 1000 exists on no machine.
        let err = Device::Cuda(1000).to_candle().unwrap_err().to_string();
        assert!(err.contains("no CUDA device 1000"), "{err}");
        assert_eq!(Device::cuda_if_available(1000), Device::Cpu);
    }
}
