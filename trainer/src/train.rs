//! The training loop: one screen, in a fixed order per step (lr, data, micro-batches with
//! backward, gradient averaging with the stop flag, clipping, AdamW, EMA, logging, checksum,
//! validation). Every blocking operation runs under the watchdog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use syncdiff_dataprep::store::{Dataset, StoreError};
use syncdiff_model::config::{Config, ConfigError, DistBackend};
use tch::Device;

use crate::ckpt::{
    self, sha256_file, CkptError, ResumePolicy, Retention, Retry, SaveReport, Saver, Snapshot,
    Store, TrainerState,
};
use crate::data::{Loader, LoaderError, LoaderState, RankShare, Sampler, SamplerError};
use crate::dist::{DistError, Runtime};
use crate::engine::Trainer;
use crate::log::{png, EventWriter, Progress};
use crate::optim::lr_at;
use crate::validate::{image_decoder, ValLoss, ValidateError, Validator};

pub use crate::engine::FAULT_DESYNC_ENV;

/// Why training stopped with an error. Messages name the file, key or rank.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration does not fit this job.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The training data set cannot be opened.
    #[error("data.dataset {path}: {source}")]
    Dataset {
        /// Data set path.
        path: String,
        /// Cause.
        source: StoreError,
    },
    /// The data set does not match the configuration.
    #[error("{0}")]
    DatasetSettings(String),
    /// The data set cannot feed the configured batch.
    #[error("data.dataset: {0}")]
    Sampler(#[from] SamplerError),
    /// Reading a batch failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A collective failed or ranks disagree.
    #[error(transparent)]
    Dist(#[from] DistError),
    /// Validation failed.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] syncdiff_model::syncdiff::SyncDiffError),
    /// The trained parameters cannot be laid out in flat buffers, or left them.
    #[error("trained parameters: {0}")]
    Flat(#[from] crate::optim::FlatError),
    /// A tensor could not be read back.
    #[error("tensor: {0}")]
    Tensor(#[from] tch::TchError),
    /// The log directory cannot be written.
    #[error("log.dir {path}: {source}")]
    Log {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Something the loop does not support yet.
    #[error("{0}")]
    Unsupported(String),
    /// External weights cannot be loaded.
    #[error("{0}")]
    Weights(String),
    /// A checkpoint could not be saved or resumed.
    #[error(transparent)]
    Ckpt(#[from] crate::ckpt::CkptError),
}

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

/// Timings of the steps since the last log line.
#[derive(Debug, Default)]
struct Interval {
    losses: Vec<f64>,
    data: Duration,
    all_reduce: Duration,
    step: Duration,
}

/// The checkpoint side of the loop (rank 0 saves; every rank resumes).
struct Checkpoints {
    store: Arc<Store>,
    saver: Option<Saver>,
    state: TrainerState,
    config_yaml: String,
    last_saved: Option<u64>,
}

impl Checkpoints {
    fn open(config: &Config, rt: &Runtime, dataset_sha256: &str) -> Result<Self, TrainError> {
        let c = &config.checkpoint;
        let store = Arc::new(Store::open(
            &c.url,
            Retry {
                attempts: c.retries,
                backoff: Duration::from_secs_f64(c.retry_backoff_s),
            },
        )?);
        let mut external = std::collections::BTreeMap::new();
        for (key, path) in [
            ("vq_f4", &config.model.autoencoder.weights),
            ("avhubert", &config.model.audio_encoder.weights),
        ] {
            if let (Some(p), true) = (path, rt.is_main()) {
                let (_, sha) = sha256_file(Path::new(p))
                    .map_err(|e| TrainError::Weights(format!("{key} weights {p}: {e}")))?;
                external.insert(key.to_string(), sha);
            }
        }
        let retention = Retention {
            keep_last: c.keep_last,
            keep_every: c.keep_every,
        };
        Ok(Self {
            saver: rt.is_main().then(|| Saver::new(store.clone(), retention)),
            store,
            state: TrainerState {
                format: crate::ckpt::FORMAT,
                step: 0,
                epoch: 0,
                consumed: 0,
                seed: config.train.seed,
                world_size: rt.world_size() as u32,
                global_batch: config.train.global_batch,
                dataset_sha256: dataset_sha256.to_string(),
                external_weights: external,
                saved_unix: 0,
                run: None,
            },
            config_yaml: config.to_yaml(),
            last_saved: None,
        })
    }

    fn snapshot(&self, trainer: &Trainer<'_>, step: u64, at: LoaderState) -> Snapshot {
        let (model, ema, optimizer) = trainer.snapshot();
        Snapshot {
            model,
            ema,
            optimizer,
            state: TrainerState {
                step,
                epoch: at.epoch,
                consumed: at.consumed,
                saved_unix: crate::ckpt::now_unix(),
                ..self.state.clone()
            },
            config_yaml: self.config_yaml.clone(),
        }
    }

    /// Line for a finished save, or a warning for a failed background save (training goes on:
    /// the previous checkpoint stays the newest valid one).
    fn report(prefix: &str, r: Result<SaveReport, CkptError>) -> String {
        match r {
            Ok(r) => format!(
                "{prefix} checkpoint step {} saved to {} ({:.1} MB in {:.1} s{})",
                r.step,
                r.url,
                r.bytes as f64 / 1e6,
                r.seconds,
                if r.deleted.is_empty() {
                    String::new()
                } else {
                    format!("; retention deleted {}", r.deleted.join(", "))
                }
            ),
            Err(e) => format!(
                "{prefix} warning: {e}; training goes on, the previous checkpoint stays the newest"
            ),
        }
    }
}

/// Trains on the configured data set, from the checkpoint `--resume` picks or from scratch.
pub fn train(
    config: &Config,
    rt: &Runtime,
    opts: &TrainOptions<'_>,
) -> Result<RunSummary, TrainError> {
    let t = &config.train;
    let plan = config.batch_plan(rt.world_size() as u32)?;
    let ds =
        Dataset::open(Path::new(&config.data.dataset)).map_err(|source| TrainError::Dataset {
            path: config.data.dataset.clone(),
            source,
        })?;
    let meta = &ds.manifest().meta;
    crate::data::check_dataset_settings("data.dataset", &config.data.dataset, meta, config)
        .map_err(TrainError::DatasetSettings)?;
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let mut ckpts = Checkpoints::open(config, rt, ds.sha256())?;
    if let Some(sha) = ckpts.state.external_weights.get("vq_f4") {
        if *sha != meta.autoencoder_sha256 {
            return Err(TrainError::DatasetSettings(format!(
                "data.dataset {} was encoded with autoencoder weights of sha256 {}, but \
                 model.autoencoder.weights has sha256 {sha}: prepare the data set with these \
                 weights, or configure the ones it was prepared with",
                config.data.dataset, meta.autoencoder_sha256
            )));
        }
    }
    let resumed = ckpt::resume(&opts.resume, opts.move_aside, &ckpts.store, rt)?;
    ckpts.state.run = Some(resumed.run.clone());
    let m = &config.model;
    let np = m.priors.needed_previous_frames();
    let sampler = Arc::new(Sampler::new(
        t.seed,
        t.epoch_unit,
        &frames,
        u64::from(np),
        u64::from(m.diffusion.timesteps),
        u64::from(plan.global_batch),
    )?);
    let total = t
        .steps
        .unwrap_or(sampler.steps_per_epoch() * u64::from(t.epochs));
    let share = RankShare {
        rank: rt.rank() as u64,
        world: u64::from(plan.world_size),
        micro: u64::from(plan.micro_batch),
        previous: np,
        context: u64::from(m.audio_encoder.context_frames),
    };
    let mut loader = Loader::new(
        Arc::new(ds),
        sampler.clone(),
        share,
        config.data.prefetch as usize,
    )
    .for_device(opts.device);
    let validator = match (&config.data.val_dataset, config.log.val_interval) {
        (Some(path), n) if n > 0 => Some(Validator::new(
            config,
            path,
            rt.rank() as u64,
            u64::from(plan.world_size),
        )?),
        _ => None,
    };

    let device = opts.device;
    let mut trainer = Trainer::new(config, rt, opts)?;
    let (mut state, mut step) = (LoaderState::default(), 0);
    if let Some((url, r)) = &resumed.from {
        let saved = Config::from_yaml(&r.config_yaml, &format!("{url}/config.yaml"), &[])
            .map_err(|e| incompatible(url, e.to_string()))?;
        ckpt::check_compatible(&r.state, &saved, config, &ckpts.state.dataset_sha256)
            .map_err(|m| incompatible(url, m))?;
        trainer.restore(r, url, r.state.step)?;
        state = LoaderState {
            epoch: r.state.epoch,
            consumed: r.state.consumed,
        };
        step = r.state.step;
        ckpts.last_saved = Some(step);
        if rt.is_main() {
            println!(
                "{} resumed {} from {url} at step {step} (epoch {}, sample {}; saved by {} ranks)",
                rt.prefix(),
                resumed.run,
                state.epoch,
                state.consumed,
                r.state.world_size
            );
        }
    } else if rt.is_main() {
        println!(
            "{} new run {} (checkpoints to {})",
            rt.prefix(),
            resumed.run,
            ckpts.store.url()
        );
    }
    drop(resumed);
    let mut tb = if rt.is_main() {
        let dir = Path::new(&config.log.dir);
        Some(EventWriter::create(dir).map_err(|source| TrainError::Log {
            path: dir.to_path_buf(),
            source,
        })?)
    } else {
        None
    };
    let decoder = (rt.is_main() && config.log.image_interval > 0 && validator.is_some())
        .then(|| image_decoder(config, device))
        .flatten();
    let progress = Progress::new(rt.is_main() && config.log.progress, step, total);
    let say = |line: String| progress.println(&line);

    let (first, mut iv) = (step, Interval::default());
    let (mut last_loss, mut last_val) = (f64::NAN, None);
    let start = Instant::now();
    let mut stopped = false;
    while step < total {
        let now = step + 1;
        let lr = lr_at(t, step, total);
        let st = trainer.step(
            now,
            lr,
            || Ok(loader.next(state, Duration::ZERO)?),
            (opts.stop_requested)(),
        )?;
        let stop = st.stop;
        state = sampler.advance(state);
        step = now;
        iv.losses.push(st.loss);
        iv.data += st.data;
        iv.all_reduce += st.all_reduce;
        iv.step += st.total;
        let sps =
            f64::from(plan.global_batch) * (step - first) as f64 / start.elapsed().as_secs_f64();
        progress.update(step, st.loss, sps);
        if step % config.log.interval == 0 || step == total || stop {
            last_loss = iv.losses.iter().sum::<f64>() / iv.losses.len().max(1) as f64;
            if let Some(tb) = &mut tb {
                log_interval(tb, &iv, step, last_loss, lr, st.grad_norm, sps)
                    .map_err(|source| log_err(config, source))?;
                let n = iv.losses.len().max(1) as f64;
                say(format!(
                    "{} step {step}/{total} loss {last_loss:.4} lr {lr:.2e} {sps:.1} samples/s \
                     data {:.1} ms all-reduce {:.1} ms ({:.0}% of step)",
                    rt.prefix(),
                    iv.data.as_secs_f64() * 1e3 / n,
                    iv.all_reduce.as_secs_f64() * 1e3 / n,
                    100.0 * iv.all_reduce.as_secs_f64() / iv.step.as_secs_f64().max(1e-9),
                ));
            }
            iv = Interval::default();
        }
        let due = |every: u64| every > 0 && (step % every == 0 || step == total || stop);
        if due(config.dist.checksum_interval) {
            trainer.check_params(step)?;
        }
        if let Some(v) = validator.as_ref().filter(|_| due(config.log.val_interval)) {
            let loss = {
                let _w = trainer
                    .watchdog()
                    .watch("validation", step, trainer.collective_timeout());
                v.run(&trainer.model, device, rt.comm())?
            };
            last_val = Some(loss);
            if let Some(tb) = &mut tb {
                log_val(tb, &loss, step).map_err(|source| log_err(config, source))?;
                say(format!(
                    "{} val step {step}: loss true-audio {:.4} other-audio {:.4} (gap {:+.4}, {} samples)",
                    rt.prefix(),
                    loss.true_audio,
                    loss.other_audio,
                    loss.other_audio - loss.true_audio,
                    loss.samples
                ));
            }
        }
        if let (Some(v), Some((_, dec)), Some(tb)) = (&validator, &decoder, &mut tb) {
            if due(config.log.image_interval) {
                if let Some(img) = v.images(&trainer.model, dec, config, device, 4)? {
                    tb.image("val/frames", &png(&img), img.width, img.height, step as i64)
                        .map_err(|source| log_err(config, source))?;
                }
            }
        }
        if stop {
            stopped = true;
            break;
        }
        let every = config.checkpoint.interval;
        if every > 0 && step % every == 0 && step < total && ckpts.saver.is_some() {
            let snap = ckpts.snapshot(&trainer, step, state);
            if let Some(saver) = &mut ckpts.saver {
                if let Some(r) = saver.save_async(snap) {
                    say(Checkpoints::report(&rt.prefix(), r));
                }
                ckpts.last_saved = Some(step);
            }
        }
    }
    progress.finish();
    // The last state is always saved (end of run or stop request), waiting for the upload.
    if ckpts.saver.is_some() {
        let snap = (ckpts.last_saved != Some(step)).then(|| ckpts.snapshot(&trainer, step, state));
        if let Some(saver) = &mut ckpts.saver {
            if let Some(r) = saver.wait() {
                say(Checkpoints::report(&rt.prefix(), r));
            }
            if let Some(snap) = snap {
                let r = saver.save_blocking(snap)?;
                say(Checkpoints::report(&rt.prefix(), Ok(r)));
            }
        }
    }
    if let Some(tb) = &mut tb {
        tb.flush().map_err(|source| log_err(config, source))?;
    }
    trainer.shutdown()?;
    Ok(RunSummary {
        steps: step,
        state,
        last_loss,
        last_val,
        seconds: start.elapsed().as_secs_f64(),
        stopped,
    })
}

fn incompatible(url: &str, message: String) -> TrainError {
    TrainError::Ckpt(CkptError::Incompatible {
        url: url.to_string(),
        message,
    })
}

fn log_err(config: &Config, source: std::io::Error) -> TrainError {
    TrainError::Log {
        path: PathBuf::from(&config.log.dir),
        source,
    }
}

fn log_interval(
    tb: &mut EventWriter,
    iv: &Interval,
    step: u64,
    loss: f64,
    lr: f64,
    grad_norm: Option<f64>,
    sps: f64,
) -> std::io::Result<()> {
    let s = step as i64;
    let n = iv.losses.len().max(1) as f64;
    tb.scalar("train/loss", loss as f32, s)?;
    tb.scalar("train/lr", lr as f32, s)?;
    if let Some(g) = grad_norm {
        tb.scalar("train/grad_norm", g as f32, s)?;
    }
    tb.scalar("train/samples_per_s", sps as f32, s)?;
    tb.scalar("time/step_s", (iv.step.as_secs_f64() / n) as f32, s)?;
    tb.scalar("time/data_wait_s", (iv.data.as_secs_f64() / n) as f32, s)?;
    tb.scalar(
        "time/all_reduce_s",
        (iv.all_reduce.as_secs_f64() / n) as f32,
        s,
    )?;
    let share = iv.all_reduce.as_secs_f64() / iv.step.as_secs_f64().max(1e-9);
    tb.scalar("time/all_reduce_share", share as f32, s)
}

fn log_val(tb: &mut EventWriter, v: &ValLoss, step: u64) -> std::io::Result<()> {
    let s = step as i64;
    tb.scalar("val/loss_true_audio", v.true_audio as f32, s)?;
    tb.scalar("val/loss_other_audio", v.other_audio as f32, s)?;
    tb.scalar("val/audio_gap", (v.other_audio - v.true_audio) as f32, s)
}
