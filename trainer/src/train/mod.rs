//! The training loop. Per step, in order: learning rate, the step itself (data, forward and
//! backward, gradient averaging with the stop flag, clipping, AdamW, EMA: `crate::trainer`),
//! logging, the parameter checksum, validation, checkpoints. Where each part lives:
//!
//! | part | file |
//! |---|---|
//! | the loop and its set-up | `train/mod.rs` (this file) |
//! | one step | `trainer.rs` (`Trainer::step`) |
//! | the networks and the loss | `model.rs` (`TrainModel`) |
//! | checkpoint policy and resume | `train/checkpoints.rs` |
//! | checkpoint storage and formats | `ckpt/` |
//! | validation: when and what is logged; the held-out losses and image grid | `train/validation.rs`; `heldout.rs` |
//! | log lines, TensorBoard, progress bar | `train/output.rs`, `log/` |
//!
//! Every blocking operation runs under the watchdog.

mod checkpoints;
mod output;
pub mod resume;
mod validation;

use std::sync::Arc;

use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::{Config, DistBackend};
use tch::Device;

use crate::cadence::Due;
use crate::data::{Loader, LoaderState, RankShare, Sampler};
use crate::dist::Runtime;
use crate::error::TrainError;
use crate::heldout::ValLoss;
use crate::optim::lr_at;
use crate::trainer::Trainer;
use checkpoints::Checkpoints;
use output::RunLog;
pub use resume::{ResumePolicy, Resumed};
use validation::Validation;

/// How a process trains: where, and how it learns that it should stop.
pub struct TrainOptions<'a> {
    /// The rank's device (`dist::choose_device`).
    pub device: Device,
    /// The gradient backend (`Mpi` or `Nccl`).
    pub backend: DistBackend,
    /// Polled once per step: a stop request (signal) on any rank stops every rank after that step.
    pub stop_requested: &'a dyn Fn() -> bool,
    /// `--resume`.
    pub resume: ResumePolicy,
    /// `--move-aside`: checkpoints under `checkpoint.url` that would mix with this run are moved
    /// to `set-aside/` instead of refusing the start.
    pub move_aside: bool,
    /// `--take-lease`: take the writer lease on `checkpoint.url` even from a live job (which
    /// then saves nothing more and stops).
    pub take_lease: bool,
}

impl std::fmt::Debug for TrainOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("device", &self.device)
            .field("backend", &self.backend)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Optimizer steps taken in this process.
    pub steps: u64,
    /// Loader position at the end.
    pub state: LoaderState,
    /// Mean loss of the last logged interval.
    pub last_loss: f64,
    /// The last validation losses, when validation ran.
    pub last_val: Option<ValLoss>,
    /// Seconds of training.
    pub seconds: f64,
    /// Whether a stop was requested (preemption) before the planned end.
    pub stopped: bool,
}

impl std::fmt::Display for RunSummary {
    /// `finished after N steps in S s; last loss L; loader at epoch E sample K`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.stopped {
            "stopped on request"
        } else {
            "finished"
        };
        write!(
            f,
            "{how} after {} steps in {:.1} s; last loss {:.4}; loader at epoch {} sample {}",
            self.steps, self.seconds, self.last_loss, self.state.epoch, self.state.consumed
        )
    }
}

/// A flag set by SIGUSR1 (SLURM's warning before the time limit) or SIGTERM: the loop stops
/// after the current step on every rank (the flag travels in the gradient all-reduce).
pub fn stop_on_signals() -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// Trains on the configured data set, from the checkpoint `--resume` picks or from scratch.
pub fn train(
    config: &Config,
    rt: &Runtime,
    opts: &TrainOptions<'_>,
) -> Result<RunSummary, TrainError> {
    let (ds, sampler) = open_data(config, rt)?;
    let mut ckpts = Checkpoints::open(config, rt, &ds)?;
    let t = &config.train;
    let total = t
        .steps
        .unwrap_or(sampler.steps_per_epoch() * u64::from(t.epochs));
    let mut loader = Loader::new(
        Arc::new(ds),
        sampler.clone(),
        rank_share(config, rt.rank() as u64, rt.world_size() as u32)?,
        config.data.prefetch as usize,
    )
    .for_device(opts.device);
    let validation = Validation::new(config, rt, opts.device)?;
    let mut trainer = Trainer::new(config, rt, opts.device, opts.backend)?;
    let start = ckpts.resume(opts, &mut trainer, config, rt)?;
    let (mut step, mut at) = (start.step, start.at);
    let mut log = RunLog::open(config, rt, step, total)?;
    let (mut last_val, mut stopped, mut last_finite) = (None, false, None);
    while step < total {
        let lr = lr_at(t, step, total);
        let fetch = || Ok(loader.next(at)?);
        // A lost lease stops every rank like a stop request; the final save then refuses.
        let stop = (opts.stop_requested)() || ckpts.lease_lost();
        let st = trainer.step(step + 1, lr, fetch, stop)?;
        step += 1;
        at = sampler.advance(at);
        let due = Due {
            step,
            total,
            stop: st.stop,
        };
        log.step(due, lr, &st)?;
        if st.loss.is_finite() && !st.skipped {
            last_finite = Some((step, st.loss));
        }
        if st.nonfinite_in_row >= t.max_nonfinite_steps {
            log.end_progress();
            let resume = ckpts.abandon(&log);
            return Err(diverged(
                step,
                st.nonfinite_in_row,
                t,
                last_finite,
                resume,
                rt,
            ));
        }
        if due.every(config.dist.checksum_interval) {
            trainer.check_params(step)?;
        }
        if let Some(loss) = validation.maybe_run(due, &trainer, rt, config, &mut log)? {
            last_val = Some(loss);
        }
        if st.stop {
            stopped = true;
            break;
        }
        ckpts.maybe_save(&trainer, step, at, total, &log);
    }
    log.end_progress();
    // The last state is always saved (end of run or stop request), waiting for the upload.
    ckpts.finish(&trainer, step, at, &log)?;
    log.flush()?;
    trainer.shutdown()?;
    ckpts.release()?;
    Ok(RunSummary {
        steps: step,
        state: at,
        last_loss: log.last_loss(),
        last_val,
        seconds: log.seconds(),
        stopped,
    })
}

/// The error of a diverged run: where it diverged, the last finite loss, and the checkpoint to
/// resume from (`newest`: the newest one rank 0 saved or resumed from).
fn diverged(
    step: u64,
    in_row: u32,
    t: &syncdiff_model::config::TrainConfig,
    last_finite: Option<(u64, f64)>,
    newest: Option<String>,
    rt: &Runtime,
) -> TrainError {
    let advice = "lower train.lr, or set train.grad_clip";
    TrainError::Diverged {
        first: step + 1 - u64::from(in_row),
        step,
        limit: t.max_nonfinite_steps,
        last_finite: match last_finite {
            Some((s, loss)) => format!("the last finite loss was {loss:.6} at step {s}"),
            None => "no step of this run had a finite loss".into(),
        },
        resume: match (newest, rt.is_main()) {
            (Some(url), _) => format!("resume from {url} ({advice})"),
            (None, true) => {
                format!("no checkpoint of this run to resume from: start again ({advice})")
            }
            (None, false) => "rank 0 names the checkpoint to resume from".into(),
        },
    }
}

/// The training data set, checked against the configuration, and the sample order over it.
fn open_data(config: &Config, rt: &Runtime) -> Result<(Dataset, Arc<Sampler>), TrainError> {
    let path = &config.data.dataset;
    let local = syncdiff_dataset::remote::local(
        "data.dataset",
        path,
        config,
        rt.local_rank() as usize,
        rt.local_size() as usize,
        &rt.prefix(),
    )?;
    let ds = Dataset::open(&local).map_err(|source| TrainError::Dataset {
        path: path.clone(),
        source,
    })?;
    crate::data::check_dataset_settings("data.dataset", path, &ds.manifest().meta, config)
        .map_err(TrainError::DatasetSettings)?;
    let sampler = sampler(config, &ds, rt.world_size() as u32)?;
    Ok((ds, Arc::new(sampler)))
}

/// The training sample order over `ds` for `world` ranks (`train.seed`, `train.epoch_unit`,
/// the global batch).
pub fn sampler(config: &Config, ds: &Dataset, world: u32) -> Result<Sampler, TrainError> {
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let (t, m) = (&config.train, &config.model);
    let plan = config.batch_plan(world)?;
    Ok(Sampler::new(
        t.seed,
        t.epoch_unit,
        &frames,
        u64::from(m.priors.needed_previous_frames()),
        u64::from(m.diffusion.timesteps),
        u64::from(plan.global_batch),
    )?)
}

/// Rank `rank` of `world`'s share of every step's samples.
pub fn rank_share(config: &Config, rank: u64, world: u32) -> Result<RankShare, TrainError> {
    let plan = config.batch_plan(world)?;
    let m = &config.model;
    Ok(RankShare {
        rank,
        world: u64::from(plan.world_size),
        micro: u64::from(plan.micro_batch),
        previous: m.priors.needed_previous_frames(),
        context: u64::from(m.audio_encoder.context_frames),
    })
}
