//! Which device and gradient backend a rank uses.

use syncdiff_model::config::DistBackend;
use tch::Device;

use super::DistError;

/// Where a rank computes and how it all-reduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// `Device::Cuda(local_rank)` on GPU nodes, else `Device::Cpu`.
    pub device: Device,
    /// `Nccl` or `Mpi` (never `Auto`).
    pub backend: DistBackend,
    /// Intra-op threads on CPU.
    pub cpu_threads: u32,
}

/// Chooses the device of a rank: GPU `local_rank` when CUDA is available, else the CPU with
/// `cpu_threads` threads (0: the node's cores divided among its ranks).
///
/// `cuda_devices` is the number of visible GPUs (`tch::Cuda::device_count()`), passed in so the
/// choice can be tested without GPUs.
pub fn choose_device(
    backend: DistBackend,
    rank: i32,
    local_rank: i32,
    local_size: i32,
    cpu_threads: u32,
    cuda_devices: i64,
) -> Result<Placement, DistError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let threads = if cpu_threads > 0 {
        cpu_threads
    } else {
        (cores / local_size.max(1) as u32).max(1)
    };
    let err = |message: String| DistError::Backend { rank, message };
    if cuda_devices > 0 {
        if i64::from(local_size) > cuda_devices {
            return Err(err(format!(
                "{local_size} ranks on this node but only {cuda_devices} visible GPUs; launch one rank per GPU"
            )));
        }
        let backend = match backend {
            DistBackend::Auto | DistBackend::Nccl => DistBackend::Nccl,
            DistBackend::Mpi => DistBackend::Mpi,
        };
        return Ok(Placement {
            device: Device::Cuda(local_rank as usize),
            backend,
            cpu_threads: threads,
        });
    }
    if backend == DistBackend::Nccl {
        return Err(err(
            "nccl needs a CUDA GPU, but this rank sees none; use `auto` or `mpi` on CPU machines"
                .into(),
        ));
    }
    Ok(Placement {
        device: Device::Cpu,
        backend: DistBackend::Mpi,
        cpu_threads: threads,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gpu_nodes_use_local_rank_and_nccl() {
        let p = choose_device(DistBackend::Auto, 7, 1, 6, 0, 8).unwrap();
        assert_eq!(p.device, Device::Cuda(1));
        assert_eq!(p.backend, DistBackend::Nccl);
        let p = choose_device(DistBackend::Mpi, 7, 3, 6, 0, 8).unwrap();
        assert_eq!((p.device, p.backend), (Device::Cuda(3), DistBackend::Mpi));
    }

    #[test]
    fn more_ranks_than_gpus_is_an_error() {
        let e = choose_device(DistBackend::Auto, 5, 5, 6, 0, 4)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rank 5: dist.backend: 6 ranks on this node but only 4 visible GPUs"),
            "{e}"
        );
    }

    #[test]
    fn cpu_nodes_use_mpi_and_split_cores() {
        let p = choose_device(DistBackend::Auto, 0, 0, 1, 3, 0).unwrap();
        assert_eq!(
            (p.device, p.backend, p.cpu_threads),
            (Device::Cpu, DistBackend::Mpi, 3)
        );
        let p = choose_device(DistBackend::Auto, 0, 0, 10_000, 0, 0).unwrap();
        assert_eq!(p.cpu_threads, 1);
        let e = choose_device(DistBackend::Nccl, 2, 0, 1, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rank 2: dist.backend: nccl needs a CUDA GPU"),
            "{e}"
        );
    }
}
