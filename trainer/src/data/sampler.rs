//! The global sample order and every random choice of a sample.
//!
//! An epoch is a permutation of items (clips for `epoch_unit: clip`, usable frames for `frame`),
//! seeded by (seed, epoch) only. Optimizer step s of the epoch uses the global positions
//! [s G, (s + 1) G) of that order (G = `train.global_batch`); rank r of W takes the block
//! [s G + r G/W, s G + (r + 1) G/W), cut into micro-batches. Every random choice of a sample
//! (target frame for clip epochs, identity frame, diffusion step, noise) comes from a generator keyed
//! by (seed, epoch, global position). So a sample is the same whatever the world size, and the
//! loader state is just (epoch, samples consumed).

use serde::{Deserialize, Serialize};
use syncdiff_model::config::EpochUnit;
use syncdiff_runtime::rng::Rng;

/// Keys separating the random streams.
const PERMUTATION: u64 = 0x7065_726d;
const SAMPLE: u64 = 0x7361_6d70;

/// Where the loader is: everything a resume needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Epoch being read.
    pub epoch: u64,
    /// Samples of this epoch already consumed (a multiple of the global batch).
    pub consumed: u64,
}

/// One sample: what to read and the random choices made for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSpec {
    /// Position in the epoch's global order.
    pub position: u64,
    /// Clip index in the data set.
    pub clip: usize,
    /// Target frame.
    pub t: u64,
    /// Identity frame (another frame of the clip).
    pub identity: u64,
    /// Diffusion timestep in [0, T).
    pub timestep: u64,
    /// Seed of the sample's noise (see [`gaussian`]).
    pub noise_seed: u64,
}

/// Why a sampler cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// No usable sample.
    #[error("the data set has no usable sample: every clip needs more than {needed} frames (the previous frames of the pose prior plus a different identity frame)")]
    Empty {
        /// Frames a clip needs.
        needed: u64,
    },
    /// The epoch has fewer samples than one global batch.
    #[error("an epoch has {items} samples, fewer than train.global_batch = {global}")]
    TooSmall {
        /// Samples per epoch.
        items: u64,
        /// Global batch.
        global: u64,
    },
}

/// The sample order of a data set.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    unit: EpochUnit,
    /// Frames per clip (clips too short to train on are kept with their index, never drawn).
    frames: Vec<u64>,
    /// Usable clips (enough frames).
    usable: Vec<usize>,
    /// For frame epochs: cumulative usable frames of `usable` clips.
    cumulative: Vec<u64>,
    previous: u64,
    timesteps: u64,
    global_batch: u64,
}

impl Sampler {
    /// A sampler over clips with `frames[c]` frames; targets need `previous` earlier frames.
    pub fn new(
        seed: u64,
        unit: EpochUnit,
        frames: &[u64],
        previous: u64,
        timesteps: u64,
        global_batch: u64,
    ) -> Result<Self, SamplerError> {
        // A target needs `previous` frames before it and the clip a different identity frame.
        let needed = previous.max(1);
        let usable: Vec<usize> = frames
            .iter()
            .enumerate()
            .filter(|(_, &f)| f > needed)
            .map(|(i, _)| i)
            .collect();
        if usable.is_empty() {
            return Err(SamplerError::Empty { needed });
        }
        let mut acc = 0;
        let cumulative = usable
            .iter()
            .map(|&c| {
                acc += frames[c] - previous;
                acc
            })
            .collect();
        let s = Self {
            seed,
            unit,
            frames: frames.to_vec(),
            usable,
            cumulative,
            previous,
            timesteps,
            global_batch,
        };
        if s.epoch_len() < global_batch {
            return Err(SamplerError::TooSmall {
                items: s.epoch_len(),
                global: global_batch,
            });
        }
        Ok(s)
    }

    /// Items in one epoch.
    pub fn epoch_len(&self) -> u64 {
        match self.unit {
            EpochUnit::Clip => self.usable.len() as u64,
            EpochUnit::Frame => self.cumulative.last().copied().unwrap_or(0),
        }
    }

    /// Optimizer steps per epoch (the last partial global batch is dropped).
    pub fn steps_per_epoch(&self) -> u64 {
        self.epoch_len() / self.global_batch
    }

    /// The epoch's order of items (Fisher-Yates from a generator keyed by seed and epoch).
    pub fn permutation(&self, epoch: u64) -> Vec<u32> {
        let n = self.epoch_len() as usize;
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = Rng::new(&[self.seed, PERMUTATION, epoch]);
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }

    /// The sample at `position` of `epoch`, given the epoch's order.
    pub fn sample(&self, epoch: u64, position: u64, order: &[u32]) -> SampleSpec {
        let item = u64::from(order[position as usize]);
        let mut rng = Rng::new(&[self.seed, SAMPLE, epoch, position]);
        let (clip, t) = match self.unit {
            EpochUnit::Clip => {
                let clip = self.usable[item as usize];
                (
                    clip,
                    self.previous + rng.below(self.frames[clip] - self.previous),
                )
            }
            EpochUnit::Frame => {
                let k = self.cumulative.partition_point(|&c| c <= item);
                let before = if k == 0 { 0 } else { self.cumulative[k - 1] };
                let clip = self.usable[k];
                (clip, self.previous + item - before)
            }
        };
        // A uniformly drawn frame of the clip other than t.
        let other = rng.below(self.frames[clip] - 1);
        let identity = if other >= t { other + 1 } else { other };
        SampleSpec {
            position,
            clip,
            t,
            identity,
            timestep: rng.below(self.timesteps),
            noise_seed: rng.next_u64(),
        }
    }

    /// The micro-batches rank `rank` of `world` runs at the step after `state`.
    pub fn step(
        &self,
        state: LoaderState,
        rank: u64,
        world: u64,
        micro: u64,
        order: &[u32],
    ) -> Vec<Vec<SampleSpec>> {
        let per_rank = self.global_batch / world;
        let first = state.consumed + rank * per_rank;
        let specs: Vec<SampleSpec> = (first..first + per_rank)
            .map(|p| self.sample(state.epoch, p, order))
            .collect();
        specs
            .chunks(micro.max(1) as usize)
            .map(<[SampleSpec]>::to_vec)
            .collect()
    }

    /// The state after one more optimizer step (the next epoch starts when the current one has no
    /// whole global batch left).
    pub fn advance(&self, state: LoaderState) -> LoaderState {
        let consumed = state.consumed + self.global_batch;
        if consumed + self.global_batch > self.epoch_len() {
            LoaderState {
                epoch: state.epoch + 1,
                consumed: 0,
            }
        } else {
            LoaderState {
                epoch: state.epoch,
                consumed,
            }
        }
    }
}
