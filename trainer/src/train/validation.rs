//! Validation as the loop runs it: the val split's losses every `log.val_interval` steps and an
//! image grid every `log.image_interval` steps (both also at the last step and at a stop), under
//! the watchdog. Set up only when `data.val_dataset` is configured.

use syncdiff_model::config::Config;
use syncdiff_model::vq::Autoencoder;
use tch::nn::VarStore;
use tch::Device;

use super::output::RunLog;
use crate::cadence::Due;
use crate::dist::Runtime;
use crate::error::TrainError;
use crate::heldout::{image_decoder, ValLoss, Validator};
use crate::trainer::Trainer;

/// The run's validation, or nothing.
pub(super) struct Validation {
    validator: Option<Validator>,
    /// Rank 0's decoder for image grids (when the autoencoder can be built).
    decoder: Option<(VarStore, Autoencoder)>,
    val_every: u64,
    image_every: u64,
    device: Device,
}

impl Validation {
    /// Reads this rank's validation batches (when configured and `log.val_interval` > 0).
    pub fn new(config: &Config, rt: &Runtime, device: Device) -> Result<Self, TrainError> {
        let world = rt.world_size() as u64;
        let validator = match (&config.data.val_dataset, config.log.val_interval) {
            (Some(path), n) if n > 0 => {
                let local = syncdiff_dataset::remote::local(
                    "data.val_dataset",
                    path,
                    config,
                    rt.local_rank() as usize,
                    rt.local_size() as usize,
                    &rt.prefix(),
                )?;
                let local = local.to_string_lossy();
                Some(Validator::new(config, &local, rt.rank() as u64, world)?)
            }
            _ => None,
        };
        let decoder = if rt.is_main() && config.log.image_interval > 0 && validator.is_some() {
            image_decoder(config, device).map_err(TrainError::Weights)?
        } else {
            None
        };
        Ok(Self {
            validator,
            decoder,
            val_every: config.log.val_interval,
            image_every: config.log.image_interval,
            device,
        })
    }

    /// Runs what is due at this step (a collective for the losses: every rank calls it) and
    /// logs it; returns the losses when they ran.
    pub fn maybe_run(
        &self,
        due: Due,
        trainer: &Trainer<'_>,
        rt: &Runtime,
        config: &Config,
        log: &mut RunLog,
    ) -> Result<Option<ValLoss>, TrainError> {
        let Some(v) = &self.validator else {
            return Ok(None);
        };
        let mut loss = None;
        if due.every(self.val_every) {
            let l = {
                let _w =
                    trainer
                        .watchdog()
                        .watch("validation", due.step, trainer.collective_timeout());
                v.run(&trainer.model, self.device, trainer.precision(), rt.comm())?
            };
            log.val(due.step, &l)?;
            loss = Some(l);
        }
        if let Some((_, dec)) = self
            .decoder
            .as_ref()
            .filter(|_| due.every(self.image_every))
        {
            if let Some(img) = v.images(&trainer.model, dec, config, self.device, 4)? {
                log.image(due.step, &img)?;
            }
        }
        Ok(loss)
    }
}
