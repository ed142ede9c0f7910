//! `syncdiff-train --dry-run`: resolve the configuration for this launch and report what a run
//! would do, touching no data and no GPU memory.

use std::path::Path;
use syncdiff_model::avhubert::{AvHubert, MelEncoder};
use syncdiff_model::config::{
    AudioEncoderKind, AutoencoderKind, BatchPlan, Config, ConfigError, Precision, StepPlan,
};
use syncdiff_model::syncdiff::SyncDiff;
use syncdiff_model::temporal::TemporalFilter;
use syncdiff_model::unet::UnetShape;
use syncdiff_model::vq::VqModel;
use syncdiff_model::weights;

use tch::nn::VarStore;

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

    /// `--dry-run`: rank 0 prints the job's plan and the model's parameters and memory, then
    /// every rank its own line, in rank order.
    pub fn print(config: &Config, rt: &Runtime, config_path: &Path) -> Result<(), DryRunError> {
        let plan = Self::run(config, rt)?;
        if rt.is_main() {
            let p = rt.prefix();
            let file = config_path.display();
            println!("{p} config {file} (resolved; --print-config shows it)");
            for line in plan.summary(config, rt) {
                println!("{line}");
            }
            let report = ModelReport::build(config, plan.batch.micro_batch);
            for line in report.lines(&p, plan.batch.micro_batch) {
                println!("{line}");
            }
        }
        rt.in_rank_order(|| println!("{}", plan.rank_line(rt)));
        Ok(())
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

/// Parameter counts per component and a training-memory estimate, from models built on the CPU
/// (random initialisation; no weights or data are read).
#[derive(Debug, Clone)]
pub struct ModelReport {
    /// (component, parameters, trainable).
    pub components: Vec<(String, i64, bool)>,
    /// Estimated bytes per rank for training at the micro-batch.
    pub memory: MemoryEstimate,
}

/// Training memory of one rank, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct MemoryEstimate {
    /// fp32 weights resident on the device (trainable, plus frozen AV-HuBERT layers when their
    /// output is not cached by dataprep).
    pub weights: i64,
    /// fp32 gradients.
    pub grads: i64,
    /// AdamW first and second moments.
    pub optimizer: i64,
    /// EMA copy of the trainable weights.
    pub ema: i64,
    /// UNet activations kept for backward at the micro-batch (rough estimate; the audio encoder's
    /// activations over the context are not included), at the training precision's element size.
    pub activations: i64,
    /// bf16/fp16: autocast's low-precision copies of the trainable weights, cached for the
    /// forward and backward of a step.
    pub cast_cache: i64,
    /// `train.precision` the estimate is for.
    pub precision: Precision,
    /// The same estimate under fp32, for comparison.
    pub fp32_total: i64,
}

impl MemoryEstimate {
    /// Sum of all parts.
    pub fn total(&self) -> i64 {
        self.weights + self.grads + self.optimizer + self.ema + self.cast_cache + self.activations
    }
}

impl ModelReport {
    /// Builds the configured networks on the CPU and counts their parameters.
    pub fn build(config: &Config, micro_batch: u32) -> Self {
        let m = &config.model;
        let vs = VarStore::new(tch::Device::Cpu);
        let _model = SyncDiff::new(vs.root(), m);
        let mut components = vec![
            ("unet".to_string(), weights::count(&vs, "unet."), true),
            (
                "pose bottleneck".to_string(),
                weights::count(&vs, "bottleneck."),
                true,
            ),
        ];
        let audio = VarStore::new(tch::Device::Cpu);
        let _temporal = TemporalFilter::new(
            audio.root() / "temporal",
            &m.temporal,
            i64::from(m.context_dim()),
        );
        components.push((
            "temporal filter".to_string(),
            weights::count(&audio, "temporal."),
            true,
        ));
        match m.audio_encoder.kind {
            AudioEncoderKind::Avhubert => {
                let _enc = AvHubert::new(audio.root() / "audio", &m.audio_encoder);
                let (trained, frozen): (Vec<_>, Vec<_>) = audio
                    .variables()
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("audio."))
                    .partition(|(_, v)| v.requires_grad());
                let n = |v: &[(String, tch::Tensor)]| {
                    v.iter().map(|(_, t)| t.numel() as i64).sum::<i64>()
                };
                let nf = m.audio_encoder.frozen_layers;
                components.push((
                    format!("AV-HuBERT layers {nf}.. + final norm"),
                    n(&trained),
                    true,
                ));
                components.push((
                    format!("AV-HuBERT front end + layers ..{nf}"),
                    n(&frozen),
                    false,
                ));
            }
            AudioEncoderKind::Mel => {
                let _enc = MelEncoder::new(audio.root() / "audio", &m.audio_encoder);
                components.push((
                    "mel audio encoder".to_string(),
                    weights::count(&audio, "audio."),
                    true,
                ));
            }
        }
        if m.autoencoder.kind == AutoencoderKind::VqF4 {
            let ae = VarStore::new(tch::Device::Cpu);
            let _vq = VqModel::new(ae.root(), &m.autoencoder);
            // Latents are precomputed by dataprep: the autoencoder is not resident while training.
            components.push((
                "autoencoder (dataprep/generation only)".to_string(),
                weights::count(&ae, ""),
                false,
            ));
        }
        let trainable: i64 = components.iter().filter(|c| c.2).map(|c| c.1).sum();
        // Frozen AV-HuBERT layers stay resident (fp32) unless dataprep cached their output.
        let resident_frozen: i64 = components
            .iter()
            .filter(|c| !c.2 && c.0.starts_with("AV-HuBERT") && !config.data.cache_audio_features)
            .map(|c| c.1)
            .sum();
        let shape = UnetShape::of(m);
        let side = i64::from(config.latent_side());
        let f32b = 4;
        let precision = config.train.precision;
        let activation_elems = shape.activation_floats(side, side) * i64::from(micro_batch);
        let low = |elems: i64, p: Precision| (p.activation_bytes() * elems as f64) as i64;
        let mut memory = MemoryEstimate {
            weights: f32b * (trainable + resident_frozen),
            grads: f32b * trainable,
            optimizer: 2 * f32b * trainable,
            ema: if config.train.ema.enabled {
                f32b * trainable
            } else {
                0
            },
            cast_cache: 0,
            activations: low(activation_elems, Precision::Fp32),
            precision: Precision::Fp32,
            fp32_total: 0,
        };
        memory.fp32_total = memory.total();
        if precision != Precision::Fp32 {
            memory.precision = precision;
            memory.cast_cache = low(trainable + resident_frozen, precision);
            memory.activations = low(activation_elems, precision);
        }
        Self { components, memory }
    }

    /// Report lines.
    pub fn lines(&self, prefix: &str, micro_batch: u32) -> Vec<String> {
        let m = |n: i64| {
            if n < 1_000_000 {
                n.to_string()
            } else {
                format!("{:.2} M", n as f64 / 1e6)
            }
        };
        let g = |b: i64| {
            let mib = b as f64 / (1u64 << 20) as f64;
            if mib < 1024.0 {
                format!("{mib:.1} MiB")
            } else {
                format!("{:.2} GiB", mib / 1024.0)
            }
        };
        let parts: Vec<String> = self
            .components
            .iter()
            .map(|(name, n, t)| {
                format!(
                    "{name} {} ({})",
                    m(*n),
                    if *t { "trainable" } else { "frozen" }
                )
            })
            .collect();
        let trainable: i64 = self.components.iter().filter(|c| c.2).map(|c| c.1).sum();
        let total: i64 = self.components.iter().map(|c| c.1).sum();
        let e = &self.memory;
        let precision = match e.precision {
            Precision::Fp32 => String::new(),
            p => format!(
                ", {} autocast; fp32 would be ~{}",
                p.name(),
                g(e.fp32_total)
            ),
        };
        let cast = match e.precision {
            Precision::Fp32 => String::new(),
            p => format!(" + {} weight copies {}", p.name(), g(e.cast_cache)),
        };
        vec![
            format!("{prefix} parameters: {}", parts.join(", ")),
            format!("{prefix} parameters: trainable {}, total {}", m(trainable), m(total)),
            format!(
                "{prefix} parameter + optimizer bytes (fp32 master weights, grads, AdamW, EMA): {}",
                g(e.weights + e.grads + e.optimizer + e.ema)
            ),
            format!(
                "{prefix} memory estimate per rank (micro-batch {micro_batch}{precision}): weights {} + grads {} + AdamW {} + EMA {}{cast} + activations ~{} = ~{}",
                g(e.weights),
                g(e.grads),
                g(e.optimizer),
                g(e.ema),
                g(e.activations),
                g(e.total())
            ),
        ]
    }
}
