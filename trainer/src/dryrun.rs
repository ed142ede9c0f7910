//! `syncdiff-train --dry-run`: resolve the configuration for this launch and report what a run
//! would do, touching no data and no GPU memory.

use syncdiff_model::config::{BatchPlan, Config, ConfigError, StepPlan};

use crate::dist::{choose_device, DistError, Placement, Runtime};

/// Elements of the all-reduce the dry run checks.
pub const CHECK_LEN: usize = 1024;

/// Everything the dry run derives for one rank.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Device and backend of this rank.
    pub placement: Placement,
    /// Split of the global batch.
    pub batch: BatchPlan,
    /// Run length.
    pub steps: StepPlan,
    /// Where the data set size came from.
    pub size_source: &'static str,
}

/// Why a dry run failed.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// The configuration does not fit this launch.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The distributed runtime failed.
    #[error(transparent)]
    Dist(#[from] DistError),
}

impl DryRun {
    /// Derives the plan of this rank and checks a real all-reduce across ranks.
    pub fn run(config: &Config, rt: &Runtime) -> Result<Self, DryRunError> {
        let batch = config.batch_plan(rt.world_size() as u32)?;
        let placement = choose_device(
            config.dist.backend,
            rt.rank(),
            rt.local_rank(),
            rt.local_size(),
            config.dist.cpu_threads,
            tch::Cuda::device_count(),
        )?;
        let (size, size_source) = match &config.data.size_hint {
            Some(h) => (Some((h.clips, h.frames)), "data.size_hint"),
            None => (None, "unknown"),
        };
        let steps = config.step_plan(size);
        rt.check_all_reduce(CHECK_LEN)?;
        Ok(Self {
            placement,
            batch,
            steps,
            size_source,
        })
    }

    /// The line each rank prints about itself.
    pub fn rank_line(&self, rt: &Runtime) -> String {
        format!(
            "{} host {}, node-local rank {}/{}, device {}, backend {}, cpu threads {}",
            rt.prefix(),
            rt.host(),
            rt.local_rank(),
            rt.local_size(),
            device_name(self.placement.device),
            format!("{:?}", self.placement.backend).to_lowercase(),
            self.placement.cpu_threads,
        )
    }

    /// The summary rank 0 prints for the job.
    pub fn summary(&self, config: &Config, rt: &Runtime) -> Vec<String> {
        let b = &self.batch;
        let p = rt.prefix();
        let length = match (config.train.steps, self.steps.total_steps) {
            (Some(s), _) => format!("{s} optimizer steps (train.steps)"),
            (None, Some(total)) => format!(
                "{total} optimizer steps = {} epochs x {} steps ({} samples per {:?} epoch / global batch {}; size from {})",
                config.train.epochs,
                self.steps.steps_per_epoch.unwrap_or(0),
                self.steps.samples_per_epoch.unwrap_or(0),
                config.train.epoch_unit,
                b.global_batch,
                self.size_source,
            )
            .replace("Clip", "clip")
            .replace("Frame", "frame"),
            (None, None) => format!(
                "{} epochs; steps unknown until the data set is prepared (or set data.size_hint)",
                config.train.epochs
            ),
        };
        vec![
            format!("{p} world size {}", b.world_size),
            format!(
                "{p} batch: global {} = {} ranks x {} per rank = micro-batch {} x {} accumulation step(s)",
                b.global_batch, b.world_size, b.per_rank, b.micro_batch, b.accumulation
            ),
            format!("{p} run length: {length}"),
            format!(
                "{p} model: UNet in/out channels {}/{}, latent {}x{}x{}, context dim {}",
                config.model.unet_in_channels(),
                config.model.unet_out_channels(),
                config.model.latent_channels(),
                config.latent_side(),
                config.latent_side(),
                config.model.context_dim(),
            ),
            format!(
                "{p} MPI all-reduce check: ok ({CHECK_LEN} x f64 summed over {} ranks)",
                b.world_size
            ),
        ]
    }
}

fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}
