//! `--device`: which device a process computes on (`auto`, `cpu`, `cuda`, `cuda:N`), one rule
//! for data preparation, training and generation.

use std::str::FromStr;

use tch::Device;

/// Why `--device` cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A GPU was asked for and libtorch sees none.
    #[error(
        "--device {choice}: this machine has no CUDA GPU visible to libtorch; use --device cpu"
    )]
    NoGpu {
        /// The choice as given.
        choice: String,
    },
    /// A GPU index beyond the visible ones.
    #[error("--device {choice}: only {gpus} GPU(s) visible")]
    TooFew {
        /// The choice as given.
        choice: String,
        /// GPUs visible.
        gpus: usize,
    },
}

/// A `--device` argument: `auto` (this rank's GPU when there is one, else the CPU), `cpu`,
/// `cuda` (this rank's GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A GPU when libtorch sees one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// GPU N, or this rank's GPU (`local_rank` modulo the GPUs) when `None`.
    Cuda(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(|i| Self::Cuda(Some(i)))
                .ok_or_else(|| format!("{s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(i)) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    /// The device for the rank `local_rank` of its node on a machine with `gpus` visible GPUs
    /// (`tch::Cuda::device_count()`, passed in so the choice is testable without GPUs).
    pub fn resolve(self, local_rank: usize, gpus: usize) -> Result<Device, DeviceError> {
        let cuda = |i: usize| {
            if i < gpus {
                Ok(Device::Cuda(i))
            } else if gpus == 0 {
                Err(DeviceError::NoGpu {
                    choice: self.to_string(),
                })
            } else {
                Err(DeviceError::TooFew {
                    choice: self.to_string(),
                    gpus,
                })
            }
        };
        match self {
            Self::Auto if gpus > 0 => Ok(Device::Cuda(local_rank % gpus)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(None) => cuda(local_rank % gpus.max(1)),
            Self::Cuda(Some(i)) => cuda(i),
        }
    }

    /// [`DeviceChoice::resolve`] with the GPUs libtorch sees.
    pub fn device(self, local_rank: usize) -> Result<Device, DeviceError> {
        self.resolve(local_rank, tch::Cuda::device_count().max(0) as usize)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_resolve() {
        let p = |s: &str| s.parse::<DeviceChoice>();
        assert_eq!(p("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(p("cuda:3"), Ok(DeviceChoice::Cuda(Some(3))));
        assert!(p("gpu")
            .unwrap_err()
            .contains("expected auto, cpu, cuda or cuda:N"));
        assert_eq!(DeviceChoice::Auto.resolve(1, 0), Ok(Device::Cpu));
        assert_eq!(DeviceChoice::Auto.resolve(5, 4), Ok(Device::Cuda(1)));
        assert_eq!(DeviceChoice::Cuda(None).resolve(1, 2), Ok(Device::Cuda(1)));
        assert!(DeviceChoice::Cuda(Some(2))
            .resolve(0, 2)
            .unwrap_err()
            .to_string()
            .contains("only 2 GPU(s)"));
        assert!(DeviceChoice::Cuda(None)
            .resolve(0, 0)
            .unwrap_err()
            .to_string()
            .contains("no CUDA GPU"));
    }
}
