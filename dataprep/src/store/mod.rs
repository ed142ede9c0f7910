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
use std::sync::Arc;

use half::f16;
use serde::{Deserialize, Serialize};
use zarrs::array::{codec, data_type, ArrayBuilder};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::GroupBuilder;

mod read;
pub use read::{context_window, ClipInfo, Dataset, Sample, SampleRequest};

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

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A per-frame array: shard files of FRAMES_PER_CHUNK frames, one zstd-compressed subchunk per frame.
fn frame_array<T: zarrs::array::Element + Copy + Default>(
    store: &Arc<FilesystemStore>,
    name: &str,
    frame_shape: &[u64],
    dtype: zarrs::array::DataType,
    data: &[T],
    path: &Path,
) -> Result<(), StoreError>
where
    zarrs::array::builder::ArrayBuilderFillValue: From<T>,
{
    let fill = T::default();
    let per: u64 = frame_shape.iter().product();
    let frames = data.len() as u64 / per;
    let shape: Vec<u64> = std::iter::once(frames.max(1))
        .chain(frame_shape.iter().copied())
        .collect();
    let chunk: Vec<u64> = std::iter::once(FRAMES_PER_CHUNK)
        .chain(frame_shape.iter().copied())
        .collect();
    // One frame per subchunk for latents (random access); a block of rows for mel (range reads).
    let sub: Vec<u64> = std::iter::once(if frame_shape.len() == 1 {
        MEL_ROWS_PER_SUBCHUNK
    } else {
        1
    })
    .chain(frame_shape.iter().copied())
    .collect();
    let array = ArrayBuilder::new(shape, chunk, dtype, fill)
        .subchunk_shape(sub)
        .bytes_to_bytes_codecs(vec![Arc::new(codec::ZstdCodec::new(3, false))])
        .build(store.clone(), &format!("/{name}"))
        .map_err(|e| zerr(path)(&e))?;
    array.store_metadata().map_err(|e| zerr(path)(&e))?;
    for (i, start) in (0..frames).step_by(FRAMES_PER_CHUNK as usize).enumerate() {
        let n = FRAMES_PER_CHUNK.min(frames - start);
        let mut chunk_data = data[(start * per) as usize..((start + n) * per) as usize].to_vec();
        // The last shard file is padded with the fill value to the full chunk.
        chunk_data.resize((FRAMES_PER_CHUNK * per) as usize, fill);
        let idx: Vec<u64> = std::iter::once(i as u64)
            .chain(frame_shape.iter().map(|_| 0))
            .collect();
        array
            .store_chunk(&idx, chunk_data)
            .map_err(|e| zerr(path)(&e))?;
    }
    Ok(())
}

/// Writes one shard store of whole clips at `path` (`.../shard-NNNNN.zarr`): first to
/// `<path>.partial`, renamed when complete, so an interrupted shard is never taken as finished.
/// `rejected` (any serialisable list) is kept with the shard's `entry.json`.
pub fn write_shard<R: Serialize>(
    path: &Path,
    clips: &[ClipData],
    meta: &StoreMeta,
    rejected: &[R],
) -> Result<ShardEntry, StoreError> {
    let partial = path.with_extension("zarr.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(ioerr(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(ioerr(&partial))?;
    let store = Arc::new(FilesystemStore::new(&partial).map_err(|e| zerr(&partial)(&e))?);
    let frames: u64 = clips.iter().map(|c| c.frames as u64).sum();
    let [c, h, w] = meta.latent_shape;
    let lat_len = (c * h * w) as usize;
    let mut latents = Vec::with_capacity(frames as usize * lat_len);
    let mut masked = Vec::with_capacity(frames as usize * lat_len);
    let mut mel = Vec::with_capacity(frames as usize * MEL_DIM as usize);
    let mut audio = Vec::new();
    let audio_dim = meta.audio_cache.as_ref().map(|t| t.dim as usize);
    let with_faces = meta.face.detector.is_dlib();
    let (mut boxes, mut marks, mut crops) =
        (Vec::<f32>::new(), Vec::<f32>::new(), Vec::<f32>::new());
    let mut offsets = vec![0i64];
    for clip in clips {
        if clip.latents.len() != clip.frames * lat_len
            || clip.masked_latents.len() != clip.frames * lat_len
            || clip.mel.len() != clip.frames * MEL_DIM as usize
        {
            return Err(StoreError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "clip {}: array sizes do not match {} frames",
                    clip.id, clip.frames
                ),
            });
        }
        latents.extend_from_slice(&clip.latents);
        masked.extend_from_slice(&clip.masked_latents);
        mel.extend_from_slice(&clip.mel);
        if let Some(d) = audio_dim {
            if clip.audio_features.len() != clip.frames * d {
                return Err(StoreError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "clip {}: {} cached audio values for {} frames of width {d}",
                        clip.id,
                        clip.audio_features.len(),
                        clip.frames
                    ),
                });
            }
            audio.extend_from_slice(&clip.audio_features);
        }
        if with_faces {
            if clip.faces.len() != clip.frames {
                return Err(StoreError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "clip {}: face records for {} of {} frames",
                        clip.id,
                        clip.faces.len(),
                        clip.frames
                    ),
                });
            }
            for f in &clip.faces {
                boxes.extend_from_slice(&f.face_box);
                marks.extend(f.landmarks.iter().flatten());
                crops.extend_from_slice(&f.crop);
            }
        }
        offsets.push(offsets[offsets.len() - 1] + clip.frames as i64);
    }
    let ids: Vec<&str> = clips.iter().map(|c| c.id.as_str()).collect();
    let mut attrs = serde_json::Map::new();
    attrs.insert(
        "syncdiff".into(),
        serde_json::to_value(meta).map_err(|e| zerr(path)(&e))?,
    );
    attrs.insert("clip_ids".into(), serde_json::json!(ids));
    // Frames are stored as displayed; this says which turn of the source file made them so.
    let rotations: Vec<u32> = clips.iter().map(|c| c.rotation).collect();
    attrs.insert("clip_rotation".into(), serde_json::json!(rotations));
    let mut group = GroupBuilder::new()
        .build(store.clone(), "/")
        .map_err(|e| zerr(path)(&e))?;
    *group.attributes_mut() = attrs;
    group.store_metadata().map_err(|e| zerr(path)(&e))?;
    frame_array(
        &store,
        "latents",
        &[c, h, w],
        data_type::float16(),
        &latents,
        path,
    )?;
    frame_array(
        &store,
        "masked_latents",
        &[c, h, w],
        data_type::float16(),
        &masked,
        path,
    )?;
    frame_array(&store, "mel", &[MEL_DIM], data_type::float32(), &mel, path)?;
    if let Some(d) = audio_dim {
        frame_array(
            &store,
            "audio_features",
            &[d as u64],
            data_type::float16(),
            &audio,
            path,
        )?;
    }
    if with_faces {
        frame_array(&store, "face_box", &[4], data_type::float32(), &boxes, path)?;
        frame_array(
            &store,
            "landmarks",
            &[68, 2],
            data_type::float32(),
            &marks,
            path,
        )?;
        frame_array(&store, "crop", &[6], data_type::float32(), &crops, path)?;
    }
    let n = offsets.len() as u64;
    let off = ArrayBuilder::new(vec![n], vec![n], data_type::int64(), 0i64)
        .build(store.clone(), "/clip_offsets")
        .map_err(|e| zerr(path)(&e))?;
    off.store_metadata().map_err(|e| zerr(path)(&e))?;
    off.store_chunk(&[0], offsets).map_err(|e| zerr(path)(&e))?;
    let entry = ShardEntry {
        name: path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string(),
        clips: ids.iter().map(|s| s.to_string()).collect(),
        frames: clips.iter().map(|c| c.frames as u64).collect(),
        bytes: dir_bytes(&partial),
    };
    // entry.json marks the shard finished; the rename makes it visible.
    let ep = partial.join("entry.json");
    let record = ShardRecord {
        meta: meta.clone(),
        entry: entry.clone(),
        rejected,
    };
    let text = serde_json::to_vec(&record).map_err(|e| zerr(&ep)(&e))?;
    std::fs::write(&ep, text).map_err(ioerr(&ep))?;
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(ioerr(path))?;
    }
    std::fs::rename(&partial, path).map_err(ioerr(path))?;
    Ok(entry)
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
