//! The rank's data loader: the micro-batches of the next steps are read in the background on a
//! small rayon pool while the current step computes. Batches are pure functions of the loader
//! state, so prefetching never changes what a step sees.
//!
//! The pool's threads run at a lower scheduling priority (nice +10): reading is far cheaper than a
//! step and starts `prefetch` steps early, so it only needs the CPU time the step leaves idle and
//! should not take cores from the step's own threads (which matters on CPU-only ranks).

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use syncdiff_dataset::shards::{Dataset, StoreError};

use super::{Batch, LoaderState, Sampler};

/// Why the next step's batches are not there.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// Reading a sample failed (names the shard).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading a batch hit a bug (a panic); the message says where.
    #[error(
        "reading the batch of loader state (epoch {epoch}, sample {consumed}) failed: {message}"
    )]
    Panicked {
        /// Epoch.
        epoch: u64,
        /// Samples consumed.
        consumed: u64,
        /// The panic's message.
        message: String,
    },
    /// The background job ended without an answer.
    #[error("the background reader of loader state (epoch {epoch}, sample {consumed}) died")]
    Lost {
        /// Epoch.
        epoch: u64,
        /// Samples consumed.
        consumed: u64,
    },
}

/// Where this rank reads from and what shape its steps have.
#[derive(Debug, Clone, Copy)]
pub struct RankShare {
    /// This rank.
    pub rank: u64,
    /// Number of ranks.
    pub world: u64,
    /// Samples per micro-batch.
    pub micro: u64,
    /// Previous frames per sample (pose prior).
    pub previous: u32,
    /// Audio context frames.
    pub context: u64,
}

type Pending = (LoaderState, Receiver<Result<Vec<Batch>, LoaderError>>);

/// Reads the micro-batches of each step, `depth` steps ahead.
#[derive(Debug)]
pub struct Loader {
    ds: Arc<Dataset>,
    sampler: Arc<Sampler>,
    share: RankShare,
    depth: usize,
    /// The device the batches are for (see `Batch::read_for`).
    device: tch::Device,
    /// The epoch order in use (one permutation per epoch, shared with the readers).
    order: Option<(u64, Arc<Vec<u32>>)>,
    pending: VecDeque<Pending>,
    /// Background readers (None: the global pool, when a pool cannot be built).
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// Threads reading ahead.
const READERS: usize = 2;

/// Lowers the calling thread's priority (Linux: the nice value is per thread).
fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers and only affect this thread's
    // scheduling; failure (e.g. a sandbox forbidding it) is harmless and ignored.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

impl Loader {
    /// A loader reading `depth` steps ahead (0: read on the calling thread when asked).
    pub fn new(ds: Arc<Dataset>, sampler: Arc<Sampler>, share: RankShare, depth: usize) -> Self {
        Self {
            ds,
            sampler,
            share,
            depth,
            device: tch::Device::Cpu,
            order: None,
            pending: VecDeque::new(),
            pool: (depth > 0)
                .then(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(READERS)
                        .thread_name(|i| format!("loader-{i}"))
                        .start_handler(|_| lower_priority())
                        .build()
                        .ok()
                })
                .flatten()
                .map(Arc::new),
        }
    }

    /// Batches for training on `device` (default: the CPU). For a GPU they are staged in
    /// pinned memory as float16, on the loader's threads.
    pub fn for_device(mut self, device: tch::Device) -> Self {
        self.device = device;
        self
    }

    fn order(&mut self, epoch: u64) -> Arc<Vec<u32>> {
        match &self.order {
            Some((e, o)) if *e == epoch => o.clone(),
            _ => {
                let o = Arc::new(self.sampler.permutation(epoch));
                self.order = Some((epoch, o.clone()));
                o
            }
        }
    }

    /// The micro-batches of one step. A panic while reading (a bug: data errors are errors)
    /// becomes an error too: on a pool thread it would abort the process without naming
    /// anything, and on the calling thread it would skip the job's error path.
    fn read(
        ds: &Dataset,
        sampler: &Sampler,
        share: RankShare,
        device: tch::Device,
        state: LoaderState,
        order: &[u32],
    ) -> Result<Vec<Batch>, LoaderError> {
        let read = || -> Result<Vec<Batch>, StoreError> {
            sampler
                .step(state, share.rank, share.world, share.micro, order)
                .iter()
                .map(|specs| Batch::read_for(ds, specs, share.previous, share.context, device))
                .collect()
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
            Ok(r) => Ok(r?),
            Err(payload) => Err(LoaderError::Panicked {
                epoch: state.epoch,
                consumed: state.consumed,
                message: payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into()),
            }),
        }
    }

    fn spawn(&mut self, state: LoaderState) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (ds, sampler, share) = (self.ds.clone(), self.sampler.clone(), self.share);
        let device = self.device;
        let order = self.order(state.epoch);
        let job = move || {
            let _ = tx.send(Self::read(&ds, &sampler, share, device, state, &order));
        };
        match &self.pool {
            Some(pool) => pool.spawn(job),
            None => rayon::spawn(job),
        }
        self.pending.push_back((state, rx));
    }

    /// The micro-batches of the step at `state` (waiting as long as it takes: the trainer's
    /// watchdog times the wait, `dist.data_timeout_s`); then schedules the following steps.
    pub fn next(&mut self, state: LoaderState) -> Result<Vec<Batch>, LoaderError> {
        if self.depth == 0 {
            let order = self.order(state.epoch);
            return Self::read(
                &self.ds,
                &self.sampler,
                self.share,
                self.device,
                state,
                &order,
            );
        }
        if self.pending.front().is_none_or(|(s, _)| *s != state) {
            // First call, or a jump (resume): drop what was read ahead.
            self.pending.clear();
            self.spawn(state);
        }
        let mut ahead = self.pending.back().map_or(state, |(s, _)| *s);
        while self.pending.len() <= self.depth {
            ahead = self.sampler.advance(ahead);
            self.spawn(ahead);
        }
        let Some((_, rx)) = self.pending.pop_front() else {
            return Err(LoaderError::Lost {
                epoch: state.epoch,
                consumed: state.consumed,
            });
        };
        rx.recv().unwrap_or(Err(LoaderError::Lost {
            epoch: state.epoch,
            consumed: state.consumed,
        }))
    }
}
