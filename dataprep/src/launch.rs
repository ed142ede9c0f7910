//! Where this process runs in a launch, and which device it computes on: the one place that
//! reads launcher variables and parses `--device`.
//!
//! `syncdiff-train` learns its rank from MPI itself (`dist::Runtime`) and then takes its device
//! from [`DeviceChoice::resolve`] like everyone else; data preparation and generation, which do not
//! start MPI, read the launcher's environment here: OpenMPI (`OMPI_COMM_WORLD_*`), MPICH and
//! Intel MPI (`PMI_*`, `MPI_LOCAL*`), PMIx (`PMIX_RANK`) and SLURM (`SLURM_PROCID`, ...).

use std::str::FromStr;

use tch::Device;

/// This process's place in a launch (one process when no launcher set anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Rank among all processes, `0..world`.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank among the processes on this node.
    pub local_rank: usize,
    /// Processes on this node.
    pub local_size: usize,
}

impl Launch {
    /// From this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From variables looked up by `get` (the first launcher variable that parses wins).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| get(n)?.trim().parse::<usize>().ok())
        };
        let world = first(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"])
            .unwrap_or(1)
            .max(1);
        let rank = first(&[
            "OMPI_COMM_WORLD_RANK",
            "PMI_RANK",
            "PMIX_RANK",
            "SLURM_PROCID",
        ])
        .unwrap_or(0)
        .min(world - 1);
        let local_size = first(&[
            "OMPI_COMM_WORLD_LOCAL_SIZE",
            "MPI_LOCALNRANKS",
            "SLURM_NTASKS_PER_NODE",
        ])
        .unwrap_or(world)
        .clamp(1, world);
        let local_rank = first(&[
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "SLURM_LOCALID",
        ])
        .unwrap_or(0)
        .min(local_size - 1);
        Self {
            rank,
            world,
            local_rank,
            local_size,
        }
    }

    /// libtorch threads for a rank computing on the CPU: [`cpu_threads_per_rank`].
    pub fn cpu_threads(&self) -> usize {
        cpu_threads_per_rank(self.local_size)
    }
}

/// libtorch threads for each of `local_size` ranks on one node computing on the CPU: the
/// node's cores shared among them, at least one.
pub fn cpu_threads_per_rank(local_size: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local_size.max(1)).max(1)
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
    pub fn resolve(self, local_rank: usize, gpus: usize) -> Result<Device, String> {
        let cuda = |i: usize| {
            if i < gpus {
                Ok(Device::Cuda(i))
            } else if gpus == 0 {
                Err(format!(
                    "--device {self}: this machine has no CUDA GPU visible to libtorch; use --device cpu"
                ))
            } else {
                Err(format!("--device {self}: only {gpus} GPU(s) visible"))
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
    pub fn device(self, local_rank: usize) -> Result<Device, String> {
        self.resolve(local_rank, tch::Cuda::device_count().max(0) as usize)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Launch {
        Launch::from_vars(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn launchers_are_read_in_order_and_kept_consistent() {
        assert_eq!(
            launch(&[]),
            Launch {
                rank: 0,
                world: 1,
                local_rank: 0,
                local_size: 1
            }
        );
        let ompi = launch(&[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("SLURM_PROCID", "0"),
        ]);
        assert_eq!(
            ompi,
            Launch {
                rank: 3,
                world: 4,
                local_rank: 1,
                local_size: 2
            }
        );
        let slurm = launch(&[
            ("SLURM_NTASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "1"),
        ]);
        assert_eq!(
            slurm,
            Launch {
                rank: 1,
                world: 2,
                local_rank: 1,
                local_size: 2
            }
        );
        // A rank beyond the world (a stale variable) is clamped, never out of range.
        let odd = launch(&[("PMI_SIZE", "2"), ("PMI_RANK", "7")]);
        assert_eq!((odd.rank, odd.world), (1, 2));
    }

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
            .contains("only 2 GPU(s)"));
        assert!(DeviceChoice::Cuda(None)
            .resolve(0, 0)
            .unwrap_err()
            .contains("no CUDA GPU"));
    }
}
