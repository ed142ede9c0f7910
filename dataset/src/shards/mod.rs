//! The data set format: Zarr v3 shard stores of whole clips plus a manifest written last.
//!
//! ```text
//! DATASET/manifest.json            written last: a data set without it is incomplete
//! DATASET/shard-00000.zarr/        one Zarr v3 group per shard (written as .partial, then renamed)
//!   latents         float16 [F, C, h, w]   chunk = 256 frames (one file), subchunk = 1 frame
//!   masked_latents  float16 [F, C, h, w]   the same frame with the lower half of the face zeroed
//!   mel             float32 [F, 104]       stacked normalised filterbank, 1:1 with frames
//!                                          (subchunks of 64 rows: contexts are read as ranges)
//!   clip_offsets    int64   [C + 1]        frames of clip c: [offsets[c], offsets[c + 1])
//!   face_box        float32 [F, 4]         with a dlib detector (data.face): the tracked face
//!                                          box x0 y0 x1 y1, source pixels
//!   landmarks       float32 [F, 68, 2]     its 68 landmarks (NaN where none were predicted)
//!   crop            float32 [F, 6]         crop -> source affine map [a b c d e f] of the frame
//!   (group attributes: format version, clip ids, autoencoder kind + sha256, filterbank, split)
//! ```
//! Reading one frame's latent touches one subchunk of one shard file.

use std::path::{Path, PathBuf};

use half::f16;
use serde::{Deserialize, Serialize};

mod read;
mod write;
pub use read::{context_window, ClipInfo, Dataset, Sample, SampleRequest};
pub use write::{write_shard, Mark, ShardWriter};

/// Version of the store layout written here (2: the settings that shaped the shards are
/// recorded in the manifest and in every shard's `entry.json`; 3: the face front-end's
/// settings are among them, and its per-frame boxes, landmarks and crops are stored).
pub const FORMAT_VERSION: u32 = 3;
/// Frames per shard file (outer chunk) of the per-frame arrays.
pub const FRAMES_PER_CHUNK: u64 = 256;
/// Width of one mel row.
pub use syncdiff_model::config::MEL_DIM;
/// Mel rows per subchunk: the audio context is read as a range of up to 250 rows.
pub const MEL_ROWS_PER_SUBCHUNK: u64 = 64;

/// Why a store could not be written or read. Messages name the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Reason.
        source: std::io::Error,
    },
    /// Zarr error.
    #[error("{path}: {message}")]
    Zarr {
        /// Path.
        path: PathBuf,
        /// Reason.
        message: String,
    },
    /// The store is not in the expected format.
    #[error("{path}: {message}")]
    Format {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn zerr(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError::Zarr {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn ioerr(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One prepared clip.
#[derive(Debug, Clone, Default)]
pub struct ClipData {
    /// `<speaker>/<clip>` as in the LRS2 filelists.
    pub id: String,
    /// Frames.
    pub frames: usize,
    /// Latents, frames x C x h x w.
    pub latents: Vec<f16>,
    /// Masked-frame latents, same shape.
    pub masked_latents: Vec<f16>,
    /// Mel rows, frames x 104.
    pub mel: Vec<f32>,
    /// Cached output of the frozen audio-encoder layers, frames x D (empty when not cached).
    pub audio_features: Vec<f16>,
    /// Per frame, the face front-end's result (empty without a dlib detector).
    pub faces: Vec<FaceRecord>,
    /// The display rotation of the source video (0, 90, 180, 270), already applied: every
    /// frame and face record of the clip is in the displayed orientation.
    pub rotation: u32,
}

/// What the face front-end found on one stored frame, in the source video's pixels as displayed
/// (its display rotation applied).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceRecord {
    /// Face box `x0 y0 x1 y1`.
    pub face_box: [f32; 4],
    /// The 68 landmarks (x, y); NaN where none were predicted.
    pub landmarks: [[f32; 2]; 68],
    /// Crop -> source affine map `[a b c d e f]`: `x = a u + b v + c`, `y = d u + e v + f`.
    pub crop: [f32; 6],
}

/// What identifies cached frozen audio-encoder features: they are valid only for these weights
/// and this number of frozen layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioCacheTag {
    /// sha256 of the audio-encoder weights file.
    pub weights_sha256: String,
    /// Frozen layers NF the features come out of.
    pub frozen_layers: u32,
    /// Feature width D.
    pub dim: u64,
    /// Longest audio context the encoder saw (longer clips were encoded in windows of this size).
    pub context_frames: u64,
}

/// What every shard of a data set shares: every setting that shaped the shards. A re-run of
/// the ingest with other settings refuses to add to them ([`StoreMeta::differences`]), and the
/// trainer checks them against its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// Layout version.
    pub format_version: u32,
    /// `vq_f4` or `resample`.
    pub autoencoder: String,
    /// sha256 of the autoencoder weights file ("none" for `resample`).
    pub autoencoder_sha256: String,
    /// Latent (C, h, w).
    pub latent_shape: [u64; 3],
    /// Split the clips come from.
    pub split: String,
    /// Filterbank parameters.
    pub filterbank: serde_json::Value,
    /// Present when the shards hold `audio_features` (cached frozen audio-encoder output).
    #[serde(default)]
    pub audio_cache: Option<AudioCacheTag>,
    /// `data.resolution`: side of the frames the autoencoder saw.
    #[serde(default)]
    pub resolution: u32,
    /// `data.fps`.
    #[serde(default)]
    pub fps: u32,
    /// `data.sample_rate`.
    #[serde(default)]
    pub sample_rate: u32,
    /// `data.mask_fraction`: lower fraction of the face box zeroed in the masked frame.
    #[serde(default)]
    pub mask_fraction: f64,
    /// `data.face`: how faces were found, cropped and masked.
    #[serde(default)]
    pub face: syncdiff_model::config::FaceConfig,
}

impl StoreMeta {
    /// The settings that differ between `self` (what is stored) and `now`, as
    /// `key: stored -> now` (keys as in the manifest's `meta`, nested ones dotted).
    pub fn differences(&self, now: &StoreMeta) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).unwrap_or_default(),
            serde_json::to_value(now).unwrap_or_default(),
        );
        let mut out = Vec::new();
        diff_values("", &a, &b, &mut out);
        // Where the dlib models lie does not shape the data (another machine may keep them
        // elsewhere).
        out.retain(|d| {
            !d.starts_with("face.landmarks_model:") && !d.starts_with("face.cnn_model:")
        });
        out
    }
}

fn diff_values(key: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                let null = Value::Null;
                diff_values(
                    &sub,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (x, y) if x != y => out.push(format!("{key}: {x} -> {y}")),
        _ => {}
    }
}

/// What a finished shard's `entry.json` holds: its manifest entry, the settings it was built
/// with, and the clips rejected while building it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardRecord<L> {
    /// Settings of the run that built the shard.
    pub meta: StoreMeta,
    /// The manifest entry.
    pub entry: ShardEntry,
    /// Clips of the shard's range that were rejected (a list).
    pub rejected: L,
}

/// A shard as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Directory name, `shard-NNNNN.zarr`.
    pub name: String,
    /// Clip ids in order.
    pub clips: Vec<String>,
    /// Frames of each clip.
    pub frames: Vec<u64>,
    /// Bytes on disk.
    pub bytes: u64,
}

/// `manifest.json`: written last; its sha256 identifies the data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Shared metadata.
    pub meta: StoreMeta,
    /// Shards in order.
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    /// Clips over all shards.
    pub fn clips(&self) -> u64 {
        self.shards.iter().map(|s| s.clips.len() as u64).sum()
    }

    /// Frames over all shards.
    pub fn frames(&self) -> u64 {
        self.shards.iter().flat_map(|s| &s.frames).sum()
    }
}

/// Name of shard `i`.
pub fn shard_name(i: usize) -> String {
    format!("shard-{i:05}.zarr")
}

/// Writes `manifest.json` (atomically: temp file, then rename) — the last step of a data set.
pub fn write_manifest(dataset: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let p = dataset.join("manifest.json");
    // A per-process temp name: several ranks may finish at once and write the same content.
    let tmp = dataset.join(format!(".manifest.json.{}.partial", std::process::id()));
    let text = serde_json::to_string_pretty(manifest).map_err(|e| zerr(&p)(&e))?;
    std::fs::write(&tmp, text).map_err(ioerr(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(ioerr(&p))
}

/// The metadata an ingest with `cfg` records: every setting that shapes the shards.
pub fn meta_for(
    cfg: &syncdiff_model::config::Config,
    split: &str,
    autoencoder_sha256: String,
    audio_cache: Option<AudioCacheTag>,
) -> StoreMeta {
    let side = u64::from(cfg.data.resolution / cfg.model.autoencoder.downsample_factor());
    let fb = crate::audio::FbankParams::default();
    StoreMeta {
        format_version: FORMAT_VERSION,
        autoencoder: format!("{:?}", cfg.model.autoencoder.kind).to_lowercase(),
        autoencoder_sha256,
        latent_shape: [u64::from(cfg.model.latent_channels()), side, side],
        split: split.to_string(),
        audio_cache,
        filterbank: serde_json::json!({
            "sample_rate": fb.sample_rate, "winlen": fb.frame_len, "winstep": fb.frame_step,
            "nfilt": fb.nfilt, "nfft": fb.nfft, "preemph": fb.preemph, "stack": fb.stack,
            "norm": "per-frame layer norm"
        }),
        resolution: cfg.data.resolution,
        fps: cfg.data.fps,
        sample_rate: cfg.data.sample_rate,
        mask_fraction: cfg.data.mask_fraction,
        face: cfg.data.face.clone(),
    }
}

/// How a prepared data set's settings differ from what `cfg` would prepare (`key: stored ->
/// configured`), leaving out what the configuration cannot know (the split, the audio cache,
/// the autoencoder weights' sha256: compare that where the weights are hashed).
pub fn differences_from_config(
    meta: &StoreMeta,
    cfg: &syncdiff_model::config::Config,
) -> Vec<String> {
    let want = meta_for(
        cfg,
        &meta.split,
        meta.autoencoder_sha256.clone(),
        meta.audio_cache.clone(),
    );
    meta.differences(&want)
}
