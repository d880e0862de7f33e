//! Where the forward pass runs: the CPU (always built, zero-copy over the memory map), or
//! a GPU through candle's CUDA or Metal backend when pupil is built with the `cuda` or
//! `metal` feature. The choice is made at run time (`--device`); asking for a backend the
//! binary lacks, or a GPU the machine lacks, is an error that names the fix.

use std::fmt;

/// A device the model can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// pupil's own SIMD kernels over the mapped file.
    Cpu,
    /// NVIDIA GPU number N (feature `cuda`).
    Cuda(usize),
    /// Apple GPU number N (feature `metal`).
    Metal(usize),
    /// The GPU path (candle's device ops) run on the host: checks that path on machines
    /// without a GPU (`--device candle-cpu`, any build with a GPU feature).
    CandleCpu,
}

/// What the user asked for: a device, or the best one this binary and machine offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The first GPU this build can open, else the CPU.
    Auto,
    Exact(Device),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?} (use auto, cpu, cuda, cuda:N, metal or metal:N)")]
    Unknown(String),
    #[error(
        "this pupil was built without {backend} support: rebuild with `cargo build --release --features {feature}` \
         (README, \"GPU builds\"), or use --device cpu"
    )]
    NotBuilt { backend: &'static str, feature: &'static str },
    #[error("cannot open {device}: {reason} (is a GPU and its driver present? `nvidia-smi` should list it; or use --device cpu)")]
    Open { device: Device, reason: String },
    #[error("{device}: {reason}")]
    Compute { device: Device, reason: String },
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Metal(n) => write!(f, "metal:{n}"),
            Device::CandleCpu => write!(f, "candle-cpu"),
        }
    }
}

impl std::str::FromStr for DeviceRequest {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let lower = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match lower.split_once(':') {
            Some((k, n)) => (k, Some(n.parse::<usize>().map_err(|_| DeviceError::Unknown(s.into()))?)),
            None => (lower.as_str(), None),
        };
        Ok(match (kind, ordinal) {
            ("auto", None) => DeviceRequest::Auto,
            ("cpu", None) => DeviceRequest::Exact(Device::Cpu),
            ("cuda", n) => DeviceRequest::Exact(Device::Cuda(n.unwrap_or(0))),
            ("metal", n) => DeviceRequest::Exact(Device::Metal(n.unwrap_or(0))),
            ("candle-cpu", None) => DeviceRequest::Exact(Device::CandleCpu),
            _ => return Err(DeviceError::Unknown(s.into())),
        })
    }
}

impl Device {
    /// Whether this binary has the backend `self` needs.
    pub fn check_built(self) -> Result<(), DeviceError> {
        let (built, backend, feature) = match self {
            Device::Cpu => return Ok(()),
            Device::Cuda(_) => (cfg!(feature = "cuda"), "CUDA", "cuda"),
            Device::Metal(_) => (cfg!(feature = "metal"), "Metal", "metal"),
            Device::CandleCpu => (cfg!(feature = "gpu"), "candle", "cuda"),
        };
        if built {
            Ok(())
        } else {
            Err(DeviceError::NotBuilt { backend, feature })
        }
    }

    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }

    /// The backend's name in bench rows and reports (llama-bench's `backend` column).
    pub fn backend(self) -> &'static str {
        match self {
            Device::Cpu => "CPU",
            Device::Cuda(_) => "CUDA",
            Device::Metal(_) => "Metal",
            Device::CandleCpu => "candle-CPU",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ones_are_refused() {
        let p = |s: &str| s.parse::<DeviceRequest>();
        assert_eq!(p("auto").unwrap(), DeviceRequest::Auto);
        assert_eq!(p("CPU").unwrap(), DeviceRequest::Exact(Device::Cpu));
        assert_eq!(p("cuda").unwrap(), DeviceRequest::Exact(Device::Cuda(0)));
        assert_eq!(p("cuda:1").unwrap(), DeviceRequest::Exact(Device::Cuda(1)));
        assert_eq!(p("metal").unwrap(), DeviceRequest::Exact(Device::Metal(0)));
        for bad in ["gpu", "cuda:x", "cpu:0", "", "cuda:-1"] {
            assert!(matches!(p(bad), Err(DeviceError::Unknown(_))), "{bad:?} accepted");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_a_build_without_it_names_the_feature() {
        let err = DeviceRequest::Exact(Device::Cuda(0)).resolve().unwrap_err().to_string();
        assert!(err.contains("--features cuda") && err.contains("--device cpu"), "{err}");
    }

    #[test]
    fn auto_without_a_gpu_backend_is_the_cpu() {
        if !cfg!(feature = "gpu") {
            assert_eq!(DeviceRequest::Auto.resolve().unwrap(), Device::Cpu);
        }
    }
}
