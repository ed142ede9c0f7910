//! Distributed runtime: MPI bootstrap, the device of each rank, gradient all-reduce and the watchdog.

mod device;
mod grad_sync;
mod nccl;
mod overlap;
mod runtime;
mod watchdog;

pub use device::{choose_device, place, GpuNode, Placement, WHEEL_CUDA};
pub use grad_sync::{broadcast_params, check_params, GradSync, MpiGradSync};
pub use nccl::{nccl_available, nccl_copies, nccl_library, NcclGradSync, NcclLibrary};
pub use overlap::{Arrival, BucketReducer, MpiThread, NcclStream, Overlap, Schedule};
pub use runtime::{error_line, AbortHandle, Runtime};
pub use watchdog::{OnTimeout, WatchGuard, Watchdog};

/// Errors of the distributed runtime. Messages name the rank.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// MPI was initialised twice in one process.
    #[error("MPI is already initialised in this process")]
    AlreadyInitialized,
    /// An all-reduce returned a wrong value.
    #[error(
        "rank {rank}: MPI all-reduce check failed at element {index}: got {got}, expected {want}"
    )]
    AllReduceMismatch {
        /// Rank that saw the wrong value.
        rank: i32,
        /// Element index.
        index: usize,
        /// Value received.
        got: f64,
        /// Value expected.
        want: f64,
    },
    /// Parameters differ between ranks.
    #[error("rank {rank}: parameters differ from rank 0's at step {step} on rank(s) {ranks:?} (desynchronised replicas)")]
    Desync {
        /// Rank reporting.
        rank: i32,
        /// Step.
        step: u64,
        /// Ranks whose checksum differs from rank 0's.
        ranks: Vec<usize>,
    },
    /// The configured backend cannot run on this rank.
    #[error("rank {rank}: dist.backend: {message}")]
    Backend {
        /// Rank.
        rank: i32,
        /// Why.
        message: String,
    },
}
