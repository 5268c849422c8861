//! Where the model runs: `--device auto|cpu|cuda[:N]` and `--dtype auto|f32|f16|bf16`.
//!
//! CUDA needs a binary built with the `cuda` feature (scripts/build_cuda.sh); the default build
//! is CPU-only and says so when asked for a GPU.

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when this build has CUDA and a device answers, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

/// The device picked, and a line saying why (for the user).
pub struct Selected {
    pub device: Device,
    pub description: String,
}

pub fn select(choice: DeviceChoice) -> Result<Selected> {
    let cpu = |why: &str| Selected { device: Device::Cpu, description: format!("device: CPU{why}") };
    match choice {
        DeviceChoice::Cpu => Ok(cpu("")),
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this binary was built without CUDA support; build it with scripts/build_cuda.sh (cargo build --release --features cuda)");
            }
            match Device::new_cuda(n) {
                Ok(device) => Ok(Selected { device, description: format!("device: CUDA {n}") }),
                Err(e) => bail!("--device cuda:{n}: no usable CUDA device ({e})"),
            }
        }
        DeviceChoice::Auto => {
            if !candle_core::utils::cuda_is_available() {
                return Ok(cpu(" (this build has no CUDA)"));
            }
            match Device::new_cuda(0) {
                Ok(device) => Ok(Selected { device, description: "device: CUDA 0".into() }),
                Err(e) => Ok(cpu(&format!(" (no CUDA device answered: {e})"))),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeChoice {
    /// float16 on a GPU, float32 on the CPU.
    Auto,
    F32,
    F16,
    Bf16,
}

impl DTypeChoice {
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => DType::F16,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:1".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(1)));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn auto_falls_back_to_the_cpu_without_cuda() {
        if candle_core::utils::cuda_is_available() {
            return; // a CUDA build on a GPU machine: nothing to check here
        }
        let s = select(DeviceChoice::Auto).unwrap();
        assert!(s.device.is_cpu());
        assert!(s.description.contains("no CUDA"), "{}", s.description);
        let err = select(DeviceChoice::Cuda(0)).err().expect("cuda without the feature must fail").to_string();
        assert!(err.contains("without CUDA support"), "{err}");
    }
}
