//! One rank's training state and its optimizer step: the model, AdamW, EMA and the gradient
//! backend, each blocking operation under the watchdog. `train::train` drives it with the loader;
//! the benchmarks drive it with pre-built batches.

use std::path::Path;
use std::time::{Duration, Instant};

use syncdiff_runtime::rng::Rng;

use syncdiff_model::config::{BatchPlan, Config, DistBackend, OptimizerKind, Precision};
use tch::{Device, Tensor};

use crate::amp::{unscale_and_check, Autocast, LossScaleState, LossScaler};

use crate::data::Batch;
use crate::dist::{broadcast_params, check_params, Runtime, Watchdog};
use crate::error::TrainError;
use crate::model::TrainModel;
use crate::optim::{bucket_elements, clip_grad_norm, AdamW, Ema, Flat, Optimizer, Sgd};
use crate::parallelize::{parallelize, Reduce};
use syncdiff_checkpoint::{to_host, CkptError, Restored};

/// Test-only fault injection (cargo feature `fault-injection`): `RANK:STEP` perturbs one
/// parameter on that rank after that step, so the parameter checksum has something to catch.
pub const FAULT_DESYNC_ENV: &str = "SYNCDIFF_FAULT_DESYNC";

/// Test-only fault injection: `RANK:STEP` writes an inf into one gradient on that rank before
/// that step's all-reduce (the fp16 loss scaler must skip the step on every rank).
pub const FAULT_INF_GRAD_ENV: &str = "SYNCDIFF_FAULT_INF_GRAD";

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean loss over this rank's samples.
    pub loss: f64,
    /// Global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
    /// Some rank asked to stop after this step.
    pub stop: bool,
    /// The fp16 loss scale this step ran with (`train.precision: fp16`).
    pub loss_scale: Option<f32>,
    /// The step was skipped: its averaged gradients (or, under fp32/bf16, their norm) held an
    /// inf or NaN, so the parameters, AdamW and EMA did not move. The same on every rank.
    pub skipped: bool,
    /// fp32/bf16: skipped steps in a row up to this one (0 after an update; always 0 under
    /// fp16, whose loss scaler handles them).
    pub nonfinite_in_row: u32,
    /// Waiting for the batches.
    pub data: Duration,
    /// Gradient all-reduce: with `dist.overlap`, the part not hidden behind the backward pass
    /// (from the end of the backward pass to the last bucket reduced).
    pub all_reduce: Duration,
    /// Collectives (one per bucket) the gradient all-reduce issued this step.
    pub all_reduces: usize,
    /// The whole step.
    pub total: Duration,
}

/// The rank's model, optimizer, EMA and gradient backend.
pub struct Trainer<'a> {
    rt: &'a Runtime,
    /// The networks.
    pub model: TrainModel,
    /// Trained parameters and their gradients, as views of flat buckets (name order).
    flat: Flat,
    opt: Optimizer,
    ema: Option<Ema>,
    sync: Reduce<'a>,
    dog: Watchdog,
    device: Device,
    plan: BatchPlan,
    grad_clip: Option<f64>,
    collective_timeout: Duration,
    data_timeout: Duration,
    fault: Option<u64>,
    inf_fault: Option<u64>,
    seed: u64,
    precision: Precision,
    scaler: Option<LossScaler>,
    ema_decay: (f64, bool),
    nonfinite_in_row: u32,
}

/// Named tensors.
pub type Named = Vec<(String, Tensor)>;

/// Separates the per-step libtorch seed (dropout masks) from other streams.
const TORCH_STEP: u64 = 0x746f_7263;

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("device", &self.device)
            .field("plan", &self.plan)
            .field("parameters", &self.flat.params().len())
            .field("buckets", &self.flat.buckets().len())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "fault-injection")]
fn rank_step_fault(var: &str, rank: i32) -> Result<Option<u64>, TrainError> {
    let Ok(v) = std::env::var(var) else {
        return Ok(None);
    };
    let bad = || TrainError::Unsupported(format!("{var}={v}: expected RANK:STEP"));
    let (r, s) = v.split_once(':').ok_or_else(bad)?;
    let r: i32 = r.parse().map_err(|_| bad())?;
    let s: u64 = s.parse().map_err(|_| bad())?;
    Ok((r == rank).then_some(s))
}

#[cfg(not(feature = "fault-injection"))]
fn rank_step_fault(_var: &str, _rank: i32) -> Result<Option<u64>, TrainError> {
    Ok(None)
}

impl<'a> Trainer<'a> {
    /// Builds the model on the rank's device from the seed, copies rank 0's parameters to every
    /// rank and checks them, and sets up AdamW, EMA, the gradient backend and the watchdog.
    pub fn new(
        config: &Config,
        rt: &'a Runtime,
        device: Device,
        backend: DistBackend,
    ) -> Result<Self, TrainError> {
        let t = &config.train;
        let plan = config.batch_plan(rt.world_size() as u32)?;
        // Only set when asked for: libtorch's defaults stay untouched otherwise.
        if t.tf32 {
            crate::amp::set_tf32(true)?;
        }
        if t.tf32 && device == Device::Cpu && rt.is_main() {
            eprintln!(
                "{} train.tf32: no effect on CPU (TF32 is a GPU matmul and convolution mode)",
                rt.prefix()
            );
        }
        tch::manual_seed(t.seed as i64);
        let model = TrainModel::with_pretrained(config, device)
            .map_err(|e| TrainError::Weights(format!("model.audio_encoder.weights: {e}")))?;
        // From here on the parameters and their gradients live in flat buckets.
        let flat = Flat::new(model.trainable(), bucket_elements(config.dist.bucket_mb))?;
        let dog = Watchdog::start(rt.prefix(), {
            let abort = rt.abort_handle();
            Box::new(move |msg| {
                eprintln!("error: {msg}");
                abort.abort(3)
            })
        })
        .map_err(TrainError::Watchdog)?;
        let collective_timeout = Duration::from_secs(config.dist.collective_timeout_s);
        {
            let _w = dog.watch("parameter broadcast", 0, collective_timeout);
            broadcast_params(rt.comm(), flat.buckets())?;
            check_params(rt.comm(), flat.buckets(), 0)?;
        }
        let opt = match t.optimizer {
            OptimizerKind::Adamw => Optimizer::AdamW(AdamW::new(flat.share(), t.into())),
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(flat.share(), t.weight_decay)),
        };
        let ema = t
            .ema
            .enabled
            .then(|| Ema::new(flat.share(), t.ema.decay, t.ema.warmup));
        let sync = parallelize(config, rt, device, backend, &flat, &dog)?;
        Ok(Self {
            rt,
            model,
            flat,
            opt,
            ema,
            sync,
            dog,
            device,
            plan,
            grad_clip: t.grad_clip,
            collective_timeout,
            data_timeout: Duration::from_secs(config.dist.data_timeout_s),
            fault: rank_step_fault(FAULT_DESYNC_ENV, rt.rank())?,
            inf_fault: rank_step_fault(FAULT_INF_GRAD_ENV, rt.rank())?,
            seed: t.seed,
            precision: t.precision,
            scaler: (t.precision == Precision::Fp16).then(|| LossScaler::new(&t.loss_scale)),
            ema_decay: (t.ema.decay, t.ema.warmup),
            nonfinite_in_row: 0,
        })
    }

    /// The watchdog (for the loop's own collectives).
    pub fn watchdog(&self) -> &Watchdog {
        &self.dog
    }

    /// The collective timeout.
    pub fn collective_timeout(&self) -> Duration {
        self.collective_timeout
    }

    /// Optimizer step number `step` (1-based) at learning rate `lr`: fetch this rank's
    /// micro-batches, forward and backward each (accumulating), average the gradients over
    /// ranks with the stop flag, clip, AdamW, EMA.
    pub fn step(
        &mut self,
        step: u64,
        lr: f64,
        fetch: impl FnOnce() -> Result<Vec<Batch>, TrainError>,
        stop: bool,
    ) -> Result<StepStats, TrainError> {
        let t0 = Instant::now();
        // libtorch's generator (dropout) restarts from (seed, step): a resumed run draws the same.
        tch::manual_seed(Rng::new(&[self.seed, TORCH_STEP, step]).next_u64() as i64);
        let batches = {
            let _w = self.dog.watch("data fetch", step, self.data_timeout);
            fetch()?
        };
        let data = t0.elapsed();
        // The loss stays on the device until the step's one read of it.
        let mut loss_sum: Option<Tensor> = None;
        let loss_scale = self.scaler.as_ref().map(LossScaler::scale);
        if self.inf_fault == Some(step) {
            // Before the backward passes, which only add to it, so it is in the gradient on
            // both the overlapped and the non-overlapped path.
            if let Some(g) = self.flat.grads().first() {
                tch::no_grad(|| {
                    let _ = g.get(0).fill_(f64::INFINITY);
                });
            }
        }
        let last = batches.len().saturating_sub(1);
        if let (Reduce::Overlapped(o), true) = (&mut self.sync, batches.is_empty()) {
            o.arm(stop)?;
        }
        for (i, batch) in batches.iter().enumerate() {
            let batch = batch.to(self.device);
            // Mean over the rank's samples: each micro-batch contributes its share. The forward
            // and the loss under autocast (bf16/fp16), the backward outside it, as PyTorch does.
            let loss = {
                let _autocast = Autocast::enter(self.precision, self.device)?;
                self.model.loss(&batch, true)?
            } / f64::from(self.plan.accumulation);
            // Only the last micro-batch's gradients are reduced (DDP's no_sync before it).
            if let (Reduce::Overlapped(o), true) = (&mut self.sync, i == last) {
                o.arm(stop)?;
            }
            match loss_scale {
                Some(s) => (&loss * f64::from(s)).backward(),
                None => loss.backward(),
            }
            let loss = loss.detach();
            loss_sum = Some(match loss_sum {
                Some(sum) => sum + loss,
                None => loss,
            });
        }
        // A parameter this rank's backward did not reach (an AV-HuBERT layer skipped by
        // layerdrop) keeps its zeroed gradient: every rank reduces the same layout.
        self.flat.check()?;
        let t1 = Instant::now();
        let (stop, all_reduces) = {
            let _w = self
                .dog
                .watch("gradient all-reduce", step, self.collective_timeout);
            match &mut self.sync {
                Reduce::Alone => (stop, 0),
                Reduce::After(sync) => {
                    let buffers = self.flat.reduce_buffers();
                    (sync.sync(buffers, stop)?, buffers.len())
                }
                Reduce::Overlapped(o) => {
                    let done = o.finish()?;
                    // Once: every rank starts buckets in the order rank 0's completed in.
                    o.adopt_order(self.rt.comm())?;
                    done
                }
            }
        };
        let all_reduce = t1.elapsed();
        // fp16: unscale the averaged gradients; every rank sees the same ones, so every rank
        // skips a step with an inf or NaN together.
        let finite = match &mut self.scaler {
            Some(scaler) => {
                let finite = unscale_and_check(self.flat.grads(), scaler.scale())?;
                scaler.update(!finite);
                finite
            }
            None => true,
        };
        let mut grad_norm = None;
        let mut update = finite;
        if finite {
            grad_norm = self
                .grad_clip
                .map(|c| clip_grad_norm(self.flat.grads(), c))
                .transpose()?;
            // fp32/bf16 have no loss scaler to catch a diverged step: a non-finite norm, or
            // (without clipping) a non-finite averaged gradient, skips the update. Decided on
            // the averaged gradients, so every rank skips together.
            if self.scaler.is_none() {
                update = match grad_norm {
                    Some(n) => n.is_finite(),
                    None => crate::amp::all_finite(self.flat.grads())?,
                };
                self.nonfinite_in_row = if update { 0 } else { self.nonfinite_in_row + 1 };
            }
            if update {
                self.opt.step(lr);
                if let Some(e) = &mut self.ema {
                    e.update();
                }
            }
        }
        self.opt.zero_grad();
        if self.fault == Some(step) {
            if let Some(p) = self.flat.params().first() {
                tch::no_grad(|| {
                    let _ = p.shallow_clone().g_add_scalar_(1e-3);
                });
            }
        }
        let loss = match &loss_sum {
            Some(l) => crate::host::scalar(l)?,
            None => 0.0,
        };
        Ok(StepStats {
            loss,
            grad_norm,
            stop,
            loss_scale,
            skipped: !update,
            nonfinite_in_row: self.nonfinite_in_row,
            data,
            all_reduce,
            all_reduces,
            total: t0.elapsed(),
        })
    }

    /// The clean end of training: releases the gradient backend (NCCL destroys its
    /// communicator here; on an error path it is aborted instead, see `NcclGradSync`).
    pub fn shutdown(&mut self) -> Result<(), TrainError> {
        match &mut self.sync {
            Reduce::Alone => Ok(()),
            Reduce::After(sync) => Ok(sync.shutdown()?),
            Reduce::Overlapped(o) => Ok(o.shutdown()?),
        }
    }

    /// The fp16 loss scaler's state (none under fp32 and bf16).
    pub fn loss_scale(&self) -> Option<LossScaleState> {
        self.scaler.as_ref().map(LossScaler::state)
    }

    /// The autocast precision of the forward pass.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Copies of the model, EMA and optimizer tensors in host memory (for a checkpoint).
    pub fn snapshot(&self) -> (Named, Named, Named) {
        let mut model: Vec<(String, Tensor)> = self.model.nets.vs.variables().into_iter().collect();
        model.sort_by(|a, b| a.0.cmp(&b.0));
        let ema = self.ema.as_ref().map(Ema::state).unwrap_or_default();
        let opt = self.opt.state();
        (to_host(model), to_host(ema), to_host(opt))
    }

    /// Loads a checkpoint's model, EMA and optimizer state (strict names and shapes), then
    /// re-broadcasts rank 0's parameters and compares checksums (a collective).
    pub fn restore(&mut self, r: &Restored, url: &str, step: u64) -> Result<(), TrainError> {
        let bad = |message: String| {
            TrainError::Ckpt(CkptError::Incompatible {
                url: url.to_string(),
                message,
            })
        };
        let path = Path::new(url).join(syncdiff_checkpoint::MODEL);
        syncdiff_model::weights::load_into(&self.model.nets.vs, "", &path, &r.model)
            .map_err(|e| bad(e.to_string()))?;
        match (&mut self.opt, &r.optimizer) {
            (Optimizer::AdamW(o), Some(s)) => o.load_state(s).map_err(|e| bad(e.to_string()))?,
            (Optimizer::AdamW(_), None) => {
                eprintln!("warning: {url} has no optimizer state; AdamW moments start at zero")
            }
            (Optimizer::Sgd(_), _) => {}
        }
        match (&mut self.ema, &r.ema) {
            (Some(e), Some(s)) => e.load_state(s).map_err(|e| bad(e.to_string()))?,
            (Some(e), None) => {
                eprintln!("warning: {url} has no EMA; the EMA starts from the loaded weights");
                *e = Ema::new(self.flat.share(), self.ema_decay.0, self.ema_decay.1);
            }
            (None, _) => {}
        }
        match (&mut self.scaler, r.state.loss_scale) {
            (Some(s), Some(state)) => s.restore(state),
            (Some(s), None) => eprintln!(
                "warning: {url} has no fp16 loss scale (saved under another precision); it \
                 starts at {}",
                s.scale()
            ),
            (None, _) => {}
        }
        let _w = self
            .dog
            .watch("parameter broadcast", step, self.collective_timeout);
        broadcast_params(self.rt.comm(), self.flat.buckets())?;
        check_params(self.rt.comm(), self.flat.buckets(), step)?;
        Ok(())
    }

    /// Compares the parameter checksum across ranks (a collective).
    pub fn check_params(&self, step: u64) -> Result<(), TrainError> {
        let _w = self
            .dog
            .watch("parameter checksum", step, self.collective_timeout);
        Ok(check_params(self.rt.comm(), self.flat.buckets(), step)?)
    }
}
