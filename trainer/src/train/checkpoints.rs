//! The checkpoint policy of a run: what a checkpoint records beside the tensors, resuming (find,
//! verify, check the lineage and the compatibility, restore) as one call, when to save (every
//! `checkpoint.interval` steps in the background, and always at the end, blocking), and how
//! each outcome is reported. Rank 0 saves; every rank resumes. The storage, the formats and
//! retention are `syncdiff_checkpoint`'s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::Config;

use super::output::RunLog;
use super::TrainOptions;
use crate::data::LoaderState;
use crate::dist::Runtime;
use crate::error::TrainError;
use crate::trainer::Trainer;
use syncdiff_checkpoint::{
    self as ckpt, sha256_file, CkptError, Lease, Retention, Retry, SaveReport, Saver, Snapshot,
    Store, Takeover, TrainerState,
};

/// Where the run starts: step 0, or the step and loader position of the checkpoint it resumed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Start {
    /// Optimizer steps already taken.
    pub step: u64,
    /// The loader's position.
    pub at: LoaderState,
}

/// The checkpoint side of the loop.
pub(super) struct Checkpoints {
    store: Arc<Store>,
    saver: Option<Saver>,
    state: TrainerState,
    config_yaml: String,
    interval: u64,
    last_saved: Option<u64>,
    /// URL of the newest checkpoint this run saved or resumed from (rank 0).
    newest: Option<String>,
    /// Rank 0's writer lease on `checkpoint.url` (taken before resuming).
    lease: Option<Arc<Lease>>,
}

impl Checkpoints {
    /// Opens `checkpoint.url`. Rank 0 hashes the external weights the run depends on, and refuses
    /// a data set encoded with other autoencoder weights than the configured ones.
    pub fn open(config: &Config, rt: &Runtime, ds: &Dataset) -> Result<Self, TrainError> {
        let c = &config.checkpoint;
        let store = Arc::new(
            Store::open(
                &c.url,
                Retry {
                    attempts: c.retries,
                    backoff: Duration::from_secs_f64(c.retry_backoff_s),
                },
            )
            .map_err(syncdiff_checkpoint::CkptError::from)?,
        );
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
        let meta = &ds.manifest().meta;
        if let Some(sha) = external.get("vq_f4") {
            if *sha != meta.autoencoder_sha256 {
                return Err(TrainError::DatasetSettings(format!(
                    "data.dataset {} was encoded with autoencoder weights of sha256 {}, but \
                     model.autoencoder.weights has sha256 {sha}: prepare the data set with these \
                     weights, or configure the ones it was prepared with",
                    config.data.dataset, meta.autoencoder_sha256
                )));
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
                format: ckpt::FORMAT,
                step: 0,
                epoch: 0,
                consumed: 0,
                seed: config.train.seed,
                world_size: rt.world_size() as u32,
                global_batch: config.train.global_batch,
                dataset_sha256: ds.sha256().to_string(),
                external_weights: external,
                saved_unix: 0,
                run: None,
                loss_scale: None,
            },
            config_yaml: config.to_yaml(),
            interval: c.interval,
            last_saved: None,
            newest: None,
            lease: None,
        })
    }

    /// Resumes as `--resume` and `--move-aside` say: picks and verifies the checkpoint (or none,
    /// refusing one that would mix runs), checks it against this configuration and data set,
    /// and restores it into `trainer` on every rank. Rank 0 says what it did.
    pub fn resume(
        &mut self,
        opts: &TrainOptions<'_>,
        trainer: &mut Trainer<'_>,
        config: &Config,
        rt: &Runtime,
    ) -> Result<Start, TrainError> {
        // One writer per URL: rank 0 takes the lease before anything is read, moved or saved.
        if rt.is_main() {
            let takeover = if opts.take_lease {
                Takeover::Now
            } else {
                Takeover::Never
            };
            let say = |line: &str| println!("{} {line}", rt.prefix());
            let lease = Arc::new(Lease::acquire(
                self.store.clone(),
                &config.checkpoint.lease,
                takeover,
                &say,
            )?);
            self.saver = self.saver.take().map(|s| s.fenced_by(lease.clone()));
            self.lease = Some(lease);
        }
        let resumed = super::resume::resume(&opts.resume, opts.move_aside, &self.store, rt)?;
        if let Some(lease) = &self.lease {
            lease.set_run(&resumed.run)?;
        }
        self.state.run = Some(resumed.run.clone());
        let Some((url, r)) = &resumed.from else {
            if rt.is_main() {
                println!(
                    "{} new run {} (checkpoints to {})",
                    rt.prefix(),
                    resumed.run,
                    self.store.url()
                );
            }
            return Ok(Start::default());
        };
        let incompatible = |message: String| {
            TrainError::Ckpt(CkptError::Incompatible {
                url: url.to_string(),
                message,
            })
        };
        let saved = Config::from_yaml(&r.config_yaml, &format!("{url}/config.yaml"), &[])
            .map_err(|e| incompatible(e.to_string()))?;
        ckpt::check_compatible(&r.state, &saved, config, &self.state.dataset_sha256)
            .map_err(incompatible)?;
        trainer.restore(r, url, r.state.step)?;
        let start = Start {
            step: r.state.step,
            at: LoaderState {
                epoch: r.state.epoch,
                consumed: r.state.consumed,
            },
        };
        self.last_saved = Some(start.step);
        self.newest = Some(url.to_string());
        if rt.is_main() {
            println!(
                "{} resumed {} from {url} at step {} (epoch {}, sample {}; saved by {} ranks)",
                rt.prefix(),
                resumed.run,
                start.step,
                start.at.epoch,
                start.at.consumed,
                r.state.world_size
            );
        }
        Ok(start)
    }

    /// Saves in the background every `checkpoint.interval` steps before the last (the last
    /// state is saved by [`finish`](Self::finish)); reports the previous background save.
    pub fn maybe_save(
        &mut self,
        trainer: &Trainer<'_>,
        step: u64,
        at: LoaderState,
        total: u64,
        log: &RunLog,
    ) {
        let due = self.interval > 0 && step % self.interval == 0 && step < total;
        if !due || self.saver.is_none() {
            return;
        }
        let snap = self.snapshot(trainer, step, at);
        if let Some(saver) = &mut self.saver {
            if let Some(r) = saver.save_async(snap) {
                self.report(log, r);
            }
            self.last_saved = Some(step);
        }
    }

    /// Whether rank 0's lease was taken over by another job (the run must stop, saving
    /// nothing).
    pub fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.lost())
    }

    /// The clean end of the run: gives the lease back, so that the next job (a requeue, a
    /// resume) starts at once.
    pub fn release(&self) -> Result<(), TrainError> {
        if let Some(lease) = &self.lease {
            lease.release()?;
        }
        Ok(())
    }

    /// A run that stops without a final save (it diverged): waits for the background save and
    /// returns the newest checkpoint of the run (rank 0; `None` on the other ranks).
    pub fn abandon(&mut self, log: &RunLog) -> Option<String> {
        if let Some(r) = self.saver.as_mut().and_then(Saver::wait) {
            self.report(log, r);
        }
        self.newest.clone()
    }

    /// Says how a save ended; a successful one becomes the newest checkpoint.
    fn report(&mut self, log: &RunLog, r: Result<SaveReport, CkptError>) {
        if let Ok(r) = &r {
            self.newest = Some(r.url.clone());
        }
        log.say(&report(log.prefix(), r));
    }

    /// The end of the run (planned or stopped): waits for the background save, then saves the
    /// last state, blocking, unless it is already saved.
    pub fn finish(
        &mut self,
        trainer: &Trainer<'_>,
        step: u64,
        at: LoaderState,
        log: &RunLog,
    ) -> Result<(), TrainError> {
        if self.saver.is_none() {
            return Ok(());
        }
        let snap = (self.last_saved != Some(step)).then(|| self.snapshot(trainer, step, at));
        if let Some(r) = self.saver.as_mut().and_then(Saver::wait) {
            self.report(log, r);
        }
        if let (Some(snap), Some(saver)) = (snap, &mut self.saver) {
            let r = saver.save_blocking(snap)?;
            self.report(log, Ok(r));
        }
        Ok(())
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
                saved_unix: ckpt::now_unix(),
                loss_scale: trainer.loss_scale(),
                ..self.state.clone()
            },
            config_yaml: self.config_yaml.clone(),
        }
    }
}

/// Line for a finished save, or a warning for a failed background save (training goes on: the
/// previous checkpoint stays the newest valid one).
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
