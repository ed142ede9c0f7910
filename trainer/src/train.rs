//! The training loop: one screen, in a fixed order per step (lr, micro-batches with backward,
//! gradient averaging with the stop flag, clipping, AdamW, EMA, logging, loader advance).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use syncdiff_dataprep::store::Dataset;
use syncdiff_model::config::{Config, OptimizerKind};

use crate::data::{Batch, LoaderState, Sampler};
use crate::dist::{broadcast_params, check_params, GradSync, MpiGradSync, Runtime};
use crate::log::EventWriter;
use crate::optim::{clip_grad_norm, lr_at, AdamW, AdamWConfig, Ema};
use crate::step::TrainModel;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Optimizer steps taken in this process.
    pub steps: u64,
    /// Loader position at the end.
    pub state: LoaderState,
    /// Mean loss of the last logged interval.
    pub last_loss: f64,
    /// Seconds of training.
    pub seconds: f64,
    /// Whether a stop was requested (preemption) before the planned end.
    pub stopped: bool,
}

/// Trains from a fresh start on the configured data set (CPU, MPI gradient averaging).
pub fn train(
    config: &Config,
    rt: &Runtime,
    stop_requested: &dyn Fn() -> bool,
) -> anyhow::Result<RunSummary> {
    anyhow::ensure!(
        config.train.optimizer == OptimizerKind::Adamw,
        "train.optimizer: only adamw is wired into the loop"
    );
    let plan = config.batch_plan(rt.world_size() as u32)?;
    let ds = Dataset::open(Path::new(&config.data.dataset))
        .with_context(|| format!("data.dataset {}", config.data.dataset))?;
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let m = &config.model;
    let np = m.priors.needed_previous_frames();
    let sampler = Sampler::new(
        config.train.seed,
        config.train.epoch_unit,
        &frames,
        u64::from(np),
        u64::from(m.diffusion.timesteps),
        u64::from(plan.global_batch),
    )?;
    let total = config
        .train
        .steps
        .unwrap_or(sampler.steps_per_epoch() * u64::from(config.train.epochs));
    tch::manual_seed(config.train.seed as i64);
    let model = TrainModel::new(m, tch::Device::Cpu);
    let params = model.trainable();
    let tensors: Vec<tch::Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    broadcast_params(rt.comm(), &tensors)?;
    check_params(rt.comm(), &tensors, 0)?;
    let t = &config.train;
    let named: Vec<(String, tch::Tensor)> = params
        .iter()
        .map(|(n, p)| (n.clone(), p.shallow_clone()))
        .collect();
    let mut opt = AdamW::new(
        named,
        AdamWConfig {
            beta1: t.betas[0],
            beta2: t.betas[1],
            eps: t.eps,
            weight_decay: t.weight_decay,
        },
    );
    let mut ema = t
        .ema
        .enabled
        .then(|| Ema::new(&params, t.ema.decay, t.ema.warmup));
    let mut sync = MpiGradSync::new(rt.comm(), config.dist.bucket_mb);
    let mut tb = if rt.is_main() {
        Some(EventWriter::create(Path::new(&config.log.dir))?)
    } else {
        None
    };
    let context = u64::from(m.audio_encoder.context_frames);
    let (mut state, mut losses, mut last_loss) = (LoaderState::default(), Vec::new(), f64::NAN);
    let start = Instant::now();
    let mut step = 0;
    let mut stopped = false;
    while step < total {
        let lr = lr_at(t, step, total);
        let order = sampler.permutation(state.epoch);
        let mut step_loss = 0.0;
        for specs in sampler.step(
            state,
            rt.rank() as u64,
            u64::from(plan.world_size),
            u64::from(plan.micro_batch),
            &order,
        ) {
            let batch = Batch::read(&ds, &specs, np, context)?;
            // Mean over the rank's samples: each micro-batch contributes its share.
            let loss = model.loss(&batch, true)? / f64::from(plan.accumulation);
            loss.backward();
            step_loss += f64::try_from(&loss)?;
        }
        let grads: Vec<tch::Tensor> = tensors.iter().map(tch::Tensor::grad).collect();
        let stop = sync.sync(&grads, stop_requested())?;
        let grad_norm = t.grad_clip.map(|c| clip_grad_norm(&grads, c));
        opt.step(lr);
        opt.zero_grad();
        if let Some(e) = &mut ema {
            e.update(&tensors);
        }
        state = sampler.advance(state);
        step += 1;
        losses.push(step_loss);
        if let Some(tb) = &mut tb {
            if step % config.log.interval == 0 || step == total || stop {
                last_loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
                tb.scalar("train/loss", last_loss as f32, step as i64)?;
                tb.scalar("train/lr", lr as f32, step as i64)?;
                if let Some(n) = grad_norm {
                    tb.scalar("train/grad_norm", n as f32, step as i64)?;
                }
                let sps =
                    f64::from(plan.global_batch) * step as f64 / start.elapsed().as_secs_f64();
                tb.scalar("train/samples_per_s", sps as f32, step as i64)?;
                println!(
                    "{} step {step}/{total} loss {last_loss:.4} lr {lr:.2e} {sps:.1} samples/s",
                    rt.prefix()
                );
                losses.clear();
            }
        }
        if config.dist.checksum_interval > 0 && step % config.dist.checksum_interval == 0 {
            check_params(rt.comm(), &tensors, step)?;
        }
        if stop {
            stopped = true;
            break;
        }
    }
    if let Some(tb) = &mut tb {
        tb.flush()?;
    }
    Ok(RunSummary {
        steps: step,
        state,
        last_loss,
        seconds: start.elapsed().as_secs_f64(),
        stopped,
    })
}
