//! `syncdiff-dataprep lrs2`: a split of LRS2 -> shard stores + manifest, parallel and resumable.
//!
//! Clips are taken in filelist order, `clips_per_shard` per shard. Shard i belongs to rank
//! i mod world (ranks from `mpirun`'s environment). A finished shard (`shard-NNNNN.zarr`) is never
//! redone; an interrupted one (`shard-NNNNN.zarr.partial`) is rebuilt. Whoever finishes last writes
//! `rejected.jsonl` and `manifest.json` (last), from the `entry.json` every shard carries.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::Digest;
use syncdiff_model::config::{AutoencoderKind, Config};
use syncdiff_model::vq::Autoencoder;
use tch::nn::VarStore;
use tch::Device;

use crate::audio::{FbankParams, LogFbank};
use crate::lrs2::{decode_clip, encode_clip, read_filelist, ClipSettings, Rejection};
use crate::store::{
    shard_name, write_manifest, write_shard, AudioCacheTag, Manifest, ShardEntry, StoreError,
    StoreMeta, FORMAT_VERSION,
};

/// Options of an ingest run.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// LRS2 root (holds the filelists and `main/`).
    pub root: PathBuf,
    /// `train`, `val` or `test`.
    pub split: String,
    /// Output data set directory.
    pub out: PathBuf,
    /// Frames per encoder batch.
    pub batch: i64,
    /// Encode in float16 (CUDA only).
    pub half: bool,
    /// This process's rank and the world size.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
}

/// Why the ingest stopped (bad clips never stop it: they are rejected).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A file or directory could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Reason.
        message: String,
    },
    /// The store could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The autoencoder weights could not be loaded.
    #[error(transparent)]
    Weights(#[from] syncdiff_model::weights::WeightsError),
}

/// Rank and world size from the MPI launcher's environment (1 process without one).
pub fn launcher_rank() -> (usize, usize) {
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok()?.parse::<usize>().ok())
    };
    let rank = get(&[
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ])
    .unwrap_or(0);
    let world = get(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"])
        .unwrap_or(1)
        .max(1);
    (rank.min(world - 1), world)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, IngestError> {
    let bytes = std::fs::read(path).map_err(|e| IngestError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// The configured autoencoder on `device`, and the sha256 of its weights ("none" for resample).
pub fn load_autoencoder(
    cfg: &Config,
    device: Device,
) -> Result<(VarStore, Autoencoder, String), IngestError> {
    let mut vs = VarStore::new(device);
    let ae = Autoencoder::new(vs.root(), &cfg.model.autoencoder);
    let sha = match (cfg.model.autoencoder.kind, &cfg.model.autoencoder.weights) {
        (AutoencoderKind::Resample, _) => "none".to_string(),
        (AutoencoderKind::VqF4, Some(w)) => {
            syncdiff_model::weights::load(&vs, Path::new(w))?;
            sha256_file(Path::new(w))?
        }
        (AutoencoderKind::VqF4, None) => {
            return Err(IngestError::Io {
                path: PathBuf::from("model.autoencoder.weights"),
                message: "vq_f4 needs weights (syncdiff convert vq-f4 makes them)".into(),
            })
        }
    };
    vs.freeze();
    Ok((vs, ae, sha))
}

/// The frozen AV-HuBERT layers, to cache their output per frame in the data set.
pub struct AudioCache {
    _vs: VarStore,
    encoder: syncdiff_model::avhubert::AvHubert,
    device: Device,
    /// What the cached features are valid for.
    pub tag: AudioCacheTag,
}

impl std::fmt::Debug for AudioCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioCache")
            .field("tag", &self.tag)
            .finish()
    }
}

impl AudioCache {
    /// Loads `model.audio_encoder` (AV-HuBERT with weights) on `device`.
    pub fn load(cfg: &Config, device: Device) -> Result<Self, IngestError> {
        let a = &cfg.model.audio_encoder;
        let bad = |message: &str| IngestError::Io {
            path: PathBuf::from("model.audio_encoder"),
            message: format!("data.cache_audio_features: {message}"),
        };
        if a.kind != syncdiff_model::config::AudioEncoderKind::Avhubert {
            return Err(bad("only the avhubert encoder has frozen layers to cache"));
        }
        let weights = a.weights.as_ref().ok_or_else(|| {
            bad("needs model.audio_encoder.weights (syncdiff convert avhubert makes them)")
        })?;
        let mut vs = VarStore::new(device);
        let encoder = syncdiff_model::avhubert::AvHubert::new(vs.root(), a);
        syncdiff_model::weights::load(&vs, Path::new(weights))?;
        vs.freeze();
        let tag = AudioCacheTag {
            weights_sha256: sha256_file(Path::new(weights))?,
            frozen_layers: a.frozen_layers,
            dim: u64::from(a.embed_dim),
            context_frames: u64::from(a.context_frames),
        };
        Ok(Self {
            _vs: vs,
            encoder,
            device,
            tag,
        })
    }

    /// Frozen features of a clip's mel rows (frames x 104) -> frames x D, computed over windows
    /// of `context_frames` (the whole clip when it is shorter).
    pub fn features(&self, mel: &[f32], frames: usize) -> Vec<half::f16> {
        let ctx = (self.tag.context_frames as usize).max(1);
        let mut out = Vec::with_capacity(frames * self.tag.dim as usize);
        for start in (0..frames).step_by(ctx) {
            let len = ctx.min(frames - start);
            let x = tch::Tensor::from_slice(&mel[start * 104..(start + len) * 104])
                .view([1, len as i64, 104])
                .to_device(self.device);
            let f = self
                .encoder
                .frozen_features(&x)
                .to_kind(tch::Kind::Float)
                .to_device(Device::Cpu);
            let v: Vec<f32> = Vec::try_from(f.flatten(0, -1)).unwrap_or_default();
            out.extend(v.into_iter().map(half::f16::from_f32));
        }
        out
    }
}

/// Summary of a run on this rank.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// Shards this rank built.
    pub built: usize,
    /// Shards that were already finished.
    pub skipped: usize,
    /// Clips written by this rank.
    pub clips: usize,
    /// Frames written by this rank.
    pub frames: u64,
    /// Clips rejected by this rank.
    pub rejected: usize,
    /// Whether this rank wrote the manifest (all shards were finished).
    pub manifest_written: bool,
    /// Wall seconds decoding (ffmpeg) and computing the filterbank, in parallel over clips.
    pub decode_s: f64,
    /// Wall seconds encoding frames and masked frames with the autoencoder.
    pub encode_s: f64,
    /// Wall seconds writing shard stores.
    pub write_s: f64,
}

/// Runs the ingest for this rank. `progress(clips_done, clips_total, frames_done)`.
pub fn ingest(
    opts: &IngestOptions,
    cfg: &Config,
    progress: impl Fn(usize, usize, u64) + Sync,
) -> Result<IngestReport, IngestError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| IngestError::Io {
            path,
            message: e.to_string(),
        }
    };
    let ids = read_filelist(&opts.root, &opts.split)
        .map_err(io(&opts.root.join(format!("{}.txt", opts.split))))?;
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let local = [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|n| std::env::var(n).ok()?.parse::<usize>().ok())
    .unwrap_or(0);
    let gpus = tch::Cuda::device_count();
    let device = if gpus > 0 {
        Device::Cuda(local % gpus as usize)
    } else {
        Device::Cpu
    };
    let (mut vs, ae, ae_sha) = load_autoencoder(cfg, device)?;
    if opts.half {
        // float16 weights and inputs (meant for GPUs; works, slowly, on CPU).
        vs.half();
    }
    let factor = cfg.model.autoencoder.downsample_factor();
    let side = u64::from(cfg.data.resolution / factor);
    let fb = LogFbank::new(FbankParams::default());
    let audio_cache = if cfg.data.cache_audio_features {
        Some(AudioCache::load(cfg, device)?)
    } else {
        None
    };
    let meta = StoreMeta {
        format_version: FORMAT_VERSION,
        autoencoder: format!("{:?}", cfg.model.autoencoder.kind).to_lowercase(),
        autoencoder_sha256: ae_sha,
        latent_shape: [u64::from(cfg.model.latent_channels()), side, side],
        split: opts.split.clone(),
        audio_cache: audio_cache.as_ref().map(|c| c.tag.clone()),
        filterbank: serde_json::json!({"sample_rate": 16000, "winlen": 400, "winstep": 160, "nfilt": 26, "nfft": 512, "preemph": 0.97, "stack": 4, "norm": "per-frame layer norm"}),
    };
    let settings = ClipSettings {
        resolution: cfg.data.resolution,
        fps: f64::from(cfg.data.fps),
        sample_rate: cfg.data.sample_rate,
        mask_fraction: cfg.data.mask_fraction,
        audio_tolerance_s: 0.1,
    };
    let per = cfg.data.clips_per_shard as usize;
    let shards: Vec<&[String]> = ids.chunks(per).collect();
    let mine: Vec<usize> = (0..shards.len())
        .filter(|i| i % opts.world == opts.rank)
        .collect();
    let total: usize = mine.iter().map(|&i| shards[i].len()).sum();
    let mut report = IngestReport::default();
    let mut done = 0usize;
    for &i in &mine {
        let path = opts.out.join(shard_name(i));
        if path.join("entry.json").exists() {
            report.skipped += 1;
            done += shards[i].len();
            progress(done, total, report.frames);
            continue;
        }
        // Decode and compute features in parallel; encode in batches on the device.
        let t0 = std::time::Instant::now();
        let decoded: Vec<Result<_, Rejection>> = shards[i]
            .par_iter()
            .map(|id| decode_clip(&opts.root, id, &settings, &fb))
            .collect();
        report.decode_s += t0.elapsed().as_secs_f64();
        let t0 = std::time::Instant::now();
        let mut clips = Vec::new();
        let mut rejected = Vec::new();
        for d in decoded {
            match d {
                Ok(c) => {
                    let mut clip = encode_clip(&ae, c, &settings, device, opts.batch, opts.half);
                    if let Some(cache) = &audio_cache {
                        clip.audio_features = cache.features(&clip.mel, clip.frames);
                    }
                    report.frames += clip.frames as u64;
                    clips.push(clip);
                }
                Err(r) => rejected.push(r),
            }
            done += 1;
            progress(done, total, report.frames);
        }
        report.encode_s += t0.elapsed().as_secs_f64();
        report.clips += clips.len();
        report.rejected += rejected.len();
        let t0 = std::time::Instant::now();
        write_shard(&path, &clips, &meta, &rejected)?;
        report.write_s += t0.elapsed().as_secs_f64();
        report.built += 1;
    }
    report.manifest_written = finish(&opts.out, shards.len(), &meta)?;
    Ok(report)
}

/// Writes `rejected.jsonl` and `manifest.json` when every shard is finished; false otherwise.
pub fn finish(out: &Path, shards: usize, meta: &StoreMeta) -> Result<bool, IngestError> {
    let mut entries = Vec::with_capacity(shards);
    let mut rejected = String::new();
    for i in 0..shards {
        let p = out.join(shard_name(i)).join("entry.json");
        let Ok(text) = std::fs::read(&p) else {
            return Ok(false);
        };
        let (entry, rej): (ShardEntry, Vec<Rejection>) =
            serde_json::from_slice(&text).map_err(|e| IngestError::Io {
                path: p.clone(),
                message: e.to_string(),
            })?;
        for r in rej {
            rejected += &serde_json::to_string(&r).unwrap_or_default();
            rejected.push('\n');
        }
        entries.push(entry);
    }
    // Per-process temp names: several ranks may finish at once and write the same content.
    let rp = out.join("rejected.jsonl");
    let tmp = out.join(format!(".rejected.jsonl.{}.partial", std::process::id()));
    std::fs::write(&tmp, rejected)
        .and_then(|()| std::fs::rename(&tmp, &rp))
        .map_err(|e| IngestError::Io {
            path: rp,
            message: e.to_string(),
        })?;
    write_manifest(
        out,
        &Manifest {
            meta: meta.clone(),
            shards: entries,
        },
    )?;
    Ok(true)
}
