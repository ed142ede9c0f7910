//! Quantities derived from the configuration and the world size: the batch split and the run length.

use super::{Config, ConfigError, EpochUnit};

/// How `train.global_batch` is split over ranks and accumulation steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// Ranks.
    pub world_size: u32,
    /// Samples per optimizer step over all ranks.
    pub global_batch: u32,
    /// Samples per optimizer step on one rank.
    pub per_rank: u32,
    /// Samples per forward/backward on one rank.
    pub micro_batch: u32,
    /// Forward/backward passes per optimizer step (gradients all-reduced once, after the last).
    pub accumulation: u32,
}

/// Length of the run in optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Samples in one epoch (None when the data set size is unknown).
    pub samples_per_epoch: Option<u64>,
    /// Optimizer steps per epoch (the last partial global batch of an epoch is dropped).
    pub steps_per_epoch: Option<u64>,
    /// Optimizer steps of the whole run.
    pub total_steps: Option<u64>,
}

impl Config {
    /// Splits the global batch for `world_size` ranks.
    ///
    /// The per-rank batch is `global_batch / world_size` (which must divide); the micro-batch is
    /// its largest divisor not above `train.max_micro_batch`.
    pub fn batch_plan(&self, world_size: u32) -> Result<BatchPlan, ConfigError> {
        let g = self.train.global_batch;
        if world_size == 0 || g % world_size != 0 {
            return Err(ConfigError::Plan {
                key: "train.global_batch".into(),
                message: format!(
                    "{g} samples cannot be split evenly over {world_size} ranks; use a multiple of \
                     {world_size} or launch a number of ranks that divides {g}"
                ),
            });
        }
        let per_rank = g / world_size;
        let cap = self.train.max_micro_batch.unwrap_or(per_rank).min(per_rank);
        let micro_batch = (1..=cap).rev().find(|m| per_rank % m == 0).unwrap_or(1);
        Ok(BatchPlan {
            world_size,
            global_batch: g,
            per_rank,
            micro_batch,
            accumulation: per_rank / micro_batch,
        })
    }

    /// Samples in one epoch of a data set with `clips` clips and `frames` frames: one per clip for
    /// clip epochs; every frame with enough previous frames for the pose prior for frame epochs.
    pub fn samples_per_epoch(&self, clips: u64, frames: u64) -> u64 {
        match self.train.epoch_unit {
            EpochUnit::Clip => clips,
            EpochUnit::Frame => {
                let np = u64::from(self.model.priors.needed_previous_frames());
                frames.saturating_sub(clips * np)
            }
        }
    }

    /// Run length given the data set size (clips, frames) when known.
    pub fn step_plan(&self, size: Option<(u64, u64)>) -> StepPlan {
        let samples_per_epoch = size.map(|(c, f)| self.samples_per_epoch(c, f));
        let steps_per_epoch = samples_per_epoch.map(|s| s / u64::from(self.train.global_batch));
        let total_steps = match self.train.steps {
            Some(s) => Some(s),
            None => steps_per_epoch.map(|s| s * u64::from(self.train.epochs)),
        };
        StepPlan {
            samples_per_epoch,
            steps_per_epoch,
            total_steps,
        }
    }
}
