//! Which device and gradient backend a rank uses.

use syncdiff_model::config::DistBackend;
use syncdiff_runtime::device::DeviceChoice;
use syncdiff_runtime::ranks::cpu_threads_per_rank;
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
    let threads = if cpu_threads > 0 {
        cpu_threads
    } else {
        cpu_threads_per_rank(local_size.max(1) as usize) as u32
    };
    let err = |message: String| DistError::Backend { rank, message };
    if cuda_devices > 0 {
        if i64::from(local_size) > cuda_devices {
            return Err(err(format!(
                "{local_size} ranks on this node but only {cuda_devices} visible GPUs; launch one rank per GPU"
            )));
        }
        if backend == DistBackend::Mpi {
            // Found at the first step otherwise, after the model is built and resumed.
            return Err(err(
                "mpi all-reduces CPU tensors, but this rank trains on a GPU; use nccl (or auto) \
                 on GPU nodes"
                    .into(),
            ));
        }
        // The rank's GPU is chosen as for data preparation and generation (one rule).
        let device = DeviceChoice::Cuda(None)
            .resolve(local_rank as usize, cuda_devices as usize)
            .map_err(|e| err(e.to_string()))?;
        return Ok(Placement {
            device,
            backend: DistBackend::Nccl,
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

/// What a node shows of its NVIDIA GPUs, whatever libtorch makes of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuNode {
    /// `/dev/nvidia0`, `/dev/nvidia1`, ... device nodes.
    pub device_nodes: usize,
    /// The kernel driver's version (`/proc/driver/nvidia/version`), when loaded.
    pub kernel_driver: Option<String>,
    /// The CUDA version the user-space driver supports (`cuDriverGetVersion`), when libcuda
    /// loads: `12.4`.
    pub driver_cuda: Option<String>,
}

impl GpuNode {
    /// Reads the device nodes, the kernel driver's version and libcuda's CUDA version.
    pub fn probe() -> Self {
        let device_nodes = std::fs::read_dir("/dev")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix("nvidia")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0);
        let kernel_driver = std::fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .and_then(|t| {
                let line = t.lines().next()?.to_string();
                // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar ..."
                line.split_whitespace()
                    .find(|w| w.contains('.') && w.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
                    .map(str::to_string)
                    .or(Some(line))
            });
        Self {
            device_nodes,
            kernel_driver,
            driver_cuda: driver_cuda_version(),
        }
    }

    /// Why training must not start when this node has GPUs (device nodes and a driver) but
    /// libtorch sees `torch_devices` = 0 of them: it would train on the CPU instead. The usual
    /// cause is a driver older than the wheel's CUDA (`wheel_cuda`).
    pub fn unusable(&self, torch_devices: i64, wheel_cuda: &str) -> Option<String> {
        if torch_devices > 0 || self.device_nodes == 0 {
            return None;
        }
        let driver = match (&self.kernel_driver, &self.driver_cuda) {
            (Some(k), Some(c)) => format!("driver {k}, which supports CUDA up to {c}"),
            (Some(k), None) => format!("driver {k}, whose libcuda.so cannot be loaded"),
            (None, Some(c)) => format!("a driver supporting CUDA up to {c}"),
            (None, None) => "no loaded NVIDIA driver".into(),
        };
        Some(format!(
            "this node has {} NVIDIA device(s) and {driver}, but libtorch sees no GPU (the torch \
             wheel is built for CUDA {wheel_cuda}): install a driver that supports CUDA \
             {wheel_cuda}, or a torch wheel built for the driver's CUDA; refusing to train on the \
             CPU of a GPU node",
            self.device_nodes
        ))
    }
}

/// The CUDA version of the user-space driver, `major.minor`, when libcuda loads.
fn driver_cuda_version() -> Option<String> {
    // SAFETY: only tries to open the library by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    let mut v = 0i32;
    // SAFETY: libcuda is present; cuDriverGetVersion needs no cuInit and writes one int.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS && v > 0)
        .then(|| format!("{}.{}", v / 1000, v % 1000 / 10))
}

/// The CUDA version of the torch wheel the binaries were built against (`13.0`).
pub const WHEEL_CUDA: &str = match option_env!("SYNCDIFF_TORCH_CUDA") {
    Some(v) => v,
    None => "unknown",
};

/// This rank's placement for training: its GPU when libtorch sees one (a node whose driver cannot
/// run the wheel's CUDA is refused, naming both versions), else the CPU with its share of the
/// node's cores; the configured backend checked against it.
pub fn place(
    config: &syncdiff_model::config::Config,
    rt: &super::Runtime,
) -> Result<Placement, DistError> {
    let gpus = tch::Cuda::device_count();
    if let Some(message) = GpuNode::probe().unusable(gpus, WHEEL_CUDA) {
        return Err(DistError::Backend {
            rank: rt.rank(),
            message,
        });
    }
    choose_device(
        config.dist.backend,
        rt.rank(),
        rt.local_rank(),
        rt.local_size(),
        config.dist.cpu_threads,
        gpus,
    )
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
        // MPI reduces CPU tensors: refused on GPU ranks before anything is built (before: the
        // first step failed, after the model build and the resume).
        let e = choose_device(DistBackend::Mpi, 7, 3, 6, 0, 8)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rank 7: dist.backend: mpi all-reduces CPU tensors"),
            "{e}"
        );
    }

    #[test]
    fn a_gpu_node_whose_gpus_libtorch_cannot_see_is_refused() {
        let node = GpuNode {
            device_nodes: 8,
            kernel_driver: Some("535.104.05".into()),
            driver_cuda: Some("12.2".into()),
        };
        let e = node.unusable(0, "13.0").unwrap();
        assert!(
            e.starts_with("this node has 8 NVIDIA device(s) and driver 535.104.05, which supports CUDA up to 12.2, but libtorch sees no GPU (the torch wheel is built for CUDA 13.0)"),
            "{e}"
        );
        assert_eq!(node.unusable(8, "13.0"), None);
        // A CPU node: nothing to refuse.
        assert_eq!(GpuNode::default().unusable(0, "13.0"), None);
        // This machine (no GPU): the probe finds no device nodes.
        assert_eq!(GpuNode::probe().unusable(0, WHEEL_CUDA), None);
        assert_ne!(
            WHEEL_CUDA, "unknown",
            "build.rs reads the wheel's CUDA version"
        );
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
