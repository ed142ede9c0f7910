//! MPI bootstrap: rank, world size and node-local rank.

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::DistError;

/// One process of the job. Created once, at start; MPI is finalised when it drops.
pub struct Runtime {
    // Field order matters: communicators must drop before the universe finalises MPI.
    world: SimpleCommunicator,
    node: SimpleCommunicator,
    _universe: Universe,
    rank: i32,
    size: i32,
    local_rank: i32,
    local_size: i32,
    host: String,
    thread_multiple: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("local_rank", &self.local_rank)
            .field("local_size", &self.local_size)
            .field("host", &self.host)
            .finish()
    }
}

impl Runtime {
    /// Initialises MPI (works without `mpirun` too: a single-rank world).
    pub fn init() -> Result<Self, DistError> {
        // The watchdog thread may call MPI_Abort while the main thread waits in a collective.
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or(DistError::AlreadyInitialized)?;
        let world = universe.world();
        let rank = world.rank();
        let size = world.size();
        // Ranks that share memory are the ranks of one node.
        let node = world.split_shared(rank);
        let local_rank = node.rank();
        let local_size = node.size();
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "unknown-host".into());
        Ok(Self {
            world,
            node,
            _universe: universe,
            rank,
            size,
            local_rank,
            local_size,
            host,
            thread_multiple: threading == Threading::Multiple,
        })
    }

    /// Whether MPI granted MPI_THREAD_MULTIPLE (any thread may call MPI at any time): the
    /// overlapped all-reduce's communication thread needs it.
    pub fn thread_multiple(&self) -> bool {
        self.thread_multiple
    }

    /// The world communicator.
    pub fn comm(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// The ranks of this node (rank 0 of it is the node's leader).
    pub fn node_comm(&self) -> &SimpleCommunicator {
        &self.node
    }

    /// This rank.
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> i32 {
        self.size
    }

    /// Rank among the ranks of this node.
    pub fn local_rank(&self) -> i32 {
        self.local_rank
    }

    /// Ranks on this node.
    pub fn local_size(&self) -> i32 {
        self.local_size
    }

    /// Host name as MPI reports it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The one check behind which rank-0-only side effects (logs, manifests, progress) live.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Log prefix of this rank, e.g. `[rank 1/6]`.
    pub fn prefix(&self) -> String {
        format!("[rank {}/{}]", self.rank, self.size)
    }

    /// Ends the whole job now (MPI_Abort): used when this rank fails, so no other rank is left
    /// waiting in a collective or in MPI_Finalize.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// A handle that ends the whole job from any thread (the watchdog's action).
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle { _private: () }
    }

    /// Blocks until every rank arrives.
    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// Runs `f` on each rank in turn, rank 0 first (for readable per-rank reports).
    pub fn in_rank_order(&self, mut f: impl FnMut()) {
        for r in 0..self.size {
            if r == self.rank {
                f();
            }
            self.world.barrier();
        }
    }

    /// Sums `len` values over all ranks (rank r contributes r + 1 + i at index i) and checks the
    /// result on every rank. Proves the ranks form one job and MPI moves data between them.
    pub fn check_all_reduce(&self, len: usize) -> Result<(), DistError> {
        let r = f64::from(self.rank);
        let send: Vec<f64> = (0..len).map(|i| r + 1.0 + i as f64).collect();
        let mut recv = vec![0.0f64; len];
        self.world
            .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        let n = f64::from(self.size);
        for (i, got) in recv.iter().enumerate() {
            // sum over r of (r + 1 + i) = n (n + 1) / 2 + n i
            let want = n * (n + 1.0) / 2.0 + n * i as f64;
            if *got != want {
                return Err(DistError::AllReduceMismatch {
                    rank: self.rank,
                    index: i,
                    got: *got,
                    want,
                });
            }
        }
        Ok(())
    }
}

/// Ends the whole job from any thread: `MPI_Abort` on the world communicator.
#[derive(Debug, Clone, Copy)]
pub struct AbortHandle {
    _private: (),
}

impl AbortHandle {
    /// Aborts every rank of the job with `code`. Only obtainable from a live [`Runtime`].
    pub fn abort(self, code: i32) -> ! {
        // SAFETY: MPI is initialised (a Runtime exists, and it is never finalised while a handle
        // is in use: the loop drops the watchdog before the runtime); MPI_Abort takes the world
        // communicator and an error code and does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::abort()
    }
}

/// Writes `error: LINE` and its newline to stderr in one write, so that the lines of several
/// ranks (and mpirun's own messages) interleave only as whole lines (`eprintln!` writes each
/// formatted piece separately).
pub fn error_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("error: {line}\n").as_bytes());
}
