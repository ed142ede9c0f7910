//! The reader: a prepared data set opened for random access (one frame's latent touches one
//! subchunk of one shard file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use zarrs::array::{
    Array, ArrayShardedReadableExt, ArrayShardedReadableExtCache, ArraySubset, CodecOptions,
};
use zarrs::filesystem::FilesystemStore;

use super::{
    zerr, AudioCacheTag, FaceRecord, Manifest, StoreError, StoreMeta, FORMAT_VERSION, MEL_DIM,
};

/// One open per-frame array with its shard-index cache (indices are read once, then kept).
struct FrameArray {
    array: Array<FilesystemStore>,
    cache: ArrayShardedReadableExtCache,
}

impl FrameArray {
    fn open(store: &Arc<FilesystemStore>, name: &str, path: &Path) -> Result<Self, StoreError> {
        let array = Array::open(store.clone(), &format!("/{name}")).map_err(|e| zerr(path)(&e))?;
        let cache = ArrayShardedReadableExtCache::new(&array);
        Ok(Self { array, cache })
    }

    /// Frames `first..first + count`, all other dimensions whole.
    fn read<T: zarrs::array::FromArrayBytes>(
        &self,
        first: u64,
        count: u64,
        path: &Path,
    ) -> Result<T, StoreError> {
        let ranges: Vec<std::ops::Range<u64>> = std::iter::once(first..first + count)
            .chain(self.array.shape()[1..].iter().map(|&n| 0..n))
            .collect();
        let subset = ArraySubset::new_with_ranges(&ranges);
        // A read is a few small subchunks: decoding them on the calling thread beats fanning
        // out to rayon (parallelism comes from reading many samples at once).
        let options = CodecOptions::default().with_concurrent_target(1);
        self.array
            .retrieve_array_subset_sharded_opt::<T>(&self.cache, &subset, &options)
            .map_err(|e| zerr(path)(&e))
    }
}

/// One open shard.
struct Shard {
    latents: FrameArray,
    masked: FrameArray,
    mel: FrameArray,
    audio: Option<FrameArray>,
    /// face_box, landmarks, crop.
    faces: Option<[FrameArray; 3]>,
    path: PathBuf,
}

impl Shard {
    /// The arrays must have the shapes the manifest describes: a manifest that misdescribes its
    /// shards (mixed data sets) is an error here, not a wrong read later.
    fn check(&self, meta: &StoreMeta, frames: u64) -> Result<(), StoreError> {
        let mut arrays = vec![
            ("latents", &self.latents, meta.latent_shape.to_vec()),
            ("masked_latents", &self.masked, meta.latent_shape.to_vec()),
            ("mel", &self.mel, vec![MEL_DIM]),
        ];
        if let (Some(a), Some(tag)) = (&self.audio, &meta.audio_cache) {
            arrays.push(("audio_features", a, vec![tag.dim]));
        }
        if let Some([b, l, c]) = &self.faces {
            arrays.push(("face_box", b, vec![4]));
            arrays.push(("landmarks", l, vec![68, 2]));
            arrays.push(("crop", c, vec![6]));
        }
        for (name, a, frame) in arrays {
            let shape = a.array.shape();
            let want: Vec<u64> = std::iter::once(frames.max(1)).chain(frame).collect();
            if shape != want.as_slice() {
                return Err(StoreError::Format {
                    path: self.path.clone(),
                    message: format!(
                        "{name} has shape {shape:?}, the manifest describes {want:?}: the data set \
                         mixes shards of different settings; prepare it again with \
                         `syncdiff-dataprep lrs2 ... --rebuild`"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Where a clip lives.
#[derive(Debug, Clone)]
pub struct ClipInfo {
    /// `<speaker>/<clip>`.
    pub id: String,
    /// Frames.
    pub frames: u64,
    /// The source's display rotation applied to the stored frames (0, 90, 180, 270); `None`
    /// for shards written before it was recorded.
    pub rotation: Option<u32>,
    shard: usize,
    start: u64,
}

/// A prepared data set opened for random access.
pub struct Dataset {
    root: PathBuf,
    manifest: Manifest,
    manifest_sha256: String,
    shards: Vec<Shard>,
    clips: Vec<ClipInfo>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("root", &self.root)
            .field("clips", &self.clips.len())
            .finish()
    }
}

impl Dataset {
    /// Opens a data set directory; fails when `manifest.json` is missing (an incomplete data set).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let mp = root.join("manifest.json");
        let text = std::fs::read(&mp).map_err(|e| StoreError::Format {
            path: mp.clone(),
            message: format!("cannot read ({e}); a data set without manifest.json is incomplete: rerun syncdiff-dataprep"),
        })?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| zerr(&mp)(&e))?;
        if manifest.meta.format_version != FORMAT_VERSION {
            return Err(StoreError::Format {
                path: mp,
                message: format!(
                    "format version {} (this build reads {FORMAT_VERSION}); prepare it again with \
                     `syncdiff-dataprep lrs2 ... --rebuild`",
                    manifest.meta.format_version
                ),
            });
        }
        use sha2::Digest;
        let manifest_sha256 = format!("{:x}", sha2::Sha256::digest(&text));
        let mut shards = Vec::new();
        let mut clips = Vec::new();
        for (si, entry) in manifest.shards.iter().enumerate() {
            let path = root.join(&entry.name);
            let store = Arc::new(FilesystemStore::new(&path).map_err(|e| zerr(&path)(&e))?);
            let shard = Shard {
                latents: FrameArray::open(&store, "latents", &path)?,
                masked: FrameArray::open(&store, "masked_latents", &path)?,
                mel: FrameArray::open(&store, "mel", &path)?,
                audio: match manifest.meta.audio_cache {
                    Some(_) => Some(FrameArray::open(&store, "audio_features", &path)?),
                    None => None,
                },
                faces: if manifest.meta.face.detector.is_dlib() {
                    Some([
                        FrameArray::open(&store, "face_box", &path)?,
                        FrameArray::open(&store, "landmarks", &path)?,
                        FrameArray::open(&store, "crop", &path)?,
                    ])
                } else {
                    None
                },
                path: path.clone(),
            };
            shard.check(&manifest.meta, entry.frames.iter().sum())?;
            shards.push(shard);
            let group =
                zarrs::group::Group::open(store.clone(), "/").map_err(|e| zerr(&path)(&e))?;
            let rotations: Option<Vec<u32>> = group
                .attributes()
                .get("clip_rotation")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            let mut start = 0;
            for (i, (id, &frames)) in entry.clips.iter().zip(&entry.frames).enumerate() {
                clips.push(ClipInfo {
                    id: id.clone(),
                    frames,
                    rotation: rotations.as_ref().and_then(|r| r.get(i).copied()),
                    shard: si,
                    start,
                });
                start += frames;
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            manifest,
            manifest_sha256,
            shards,
            clips,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// sha256 of `manifest.json`: the data set's identity in checkpoints.
    pub fn sha256(&self) -> &str {
        &self.manifest_sha256
    }

    /// Clips in order.
    pub fn clips(&self) -> &[ClipInfo] {
        &self.clips
    }

    fn check(&self, clip: usize, t: u64, count: u64) -> Result<&ClipInfo, StoreError> {
        let c = self.clips.get(clip).ok_or_else(|| StoreError::Format {
            path: self.root.clone(),
            message: format!("clip {clip} out of range ({} clips)", self.clips.len()),
        })?;
        if t + count > c.frames {
            return Err(StoreError::Format {
                path: self.root.clone(),
                message: format!(
                    "clip {}: frames {t}..{} out of range ({} frames)",
                    c.id,
                    t + count,
                    c.frames
                ),
            });
        }
        Ok(c)
    }

    fn read_f16(&self, clip: usize, t: u64, masked: bool) -> Result<Vec<f16>, StoreError> {
        let c = self.check(clip, t, 1)?;
        let s = &self.shards[c.shard];
        let a = if masked { &s.masked } else { &s.latents };
        a.read(c.start + t, 1, &s.path)
    }

    /// The face front-end's record of frame `t` of clip `clip`; `None` for a data set prepared
    /// without a dlib detector.
    pub fn face(&self, clip: usize, t: u64) -> Result<Option<FaceRecord>, StoreError> {
        let c = self.check(clip, t, 1)?;
        let s = &self.shards[c.shard];
        let Some([b, l, cr]) = &s.faces else {
            return Ok(None);
        };
        let at = c.start + t;
        let bv: Vec<f32> = b.read(at, 1, &s.path)?;
        let lv: Vec<f32> = l.read(at, 1, &s.path)?;
        let cv: Vec<f32> = cr.read(at, 1, &s.path)?;
        let bad = || StoreError::Format {
            path: s.path.clone(),
            message: format!("clip {} frame {t}: face arrays of the wrong size", c.id),
        };
        let mut landmarks = [[0f32; 2]; 68];
        if lv.len() != 136 {
            return Err(bad());
        }
        for (k, p) in landmarks.iter_mut().enumerate() {
            *p = [lv[2 * k], lv[2 * k + 1]];
        }
        Ok(Some(FaceRecord {
            face_box: bv.try_into().map_err(|_| bad())?,
            landmarks,
            crop: cv.try_into().map_err(|_| bad())?,
        }))
    }

    /// Latent of frame `t` of clip `clip` (C x h x w values).
    pub fn latent(&self, clip: usize, t: u64) -> Result<Vec<f16>, StoreError> {
        self.read_f16(clip, t, false)
    }

    /// Masked-frame latent of frame `t` of clip `clip`.
    pub fn masked_latent(&self, clip: usize, t: u64) -> Result<Vec<f16>, StoreError> {
        self.read_f16(clip, t, true)
    }

    /// Mel rows `t..t + count` of clip `clip` (count x 104 values).
    pub fn mel(&self, clip: usize, t: u64, count: u64) -> Result<Vec<f32>, StoreError> {
        let c = self.check(clip, t, count)?;
        let s = &self.shards[c.shard];
        s.mel.read(c.start + t, count, &s.path)
    }

    /// Cached frozen audio-encoder features of frames `t..t + count` (count x D), or None when the
    /// data set has no cache or its tag differs from `want` (other weights or another NF).
    pub fn audio_features(
        &self,
        clip: usize,
        t: u64,
        count: u64,
        want: &AudioCacheTag,
    ) -> Result<Option<Vec<f16>>, StoreError> {
        if self.manifest.meta.audio_cache.as_ref() != Some(want) {
            return Ok(None);
        }
        let c = self.check(clip, t, count)?;
        let s = &self.shards[c.shard];
        match &s.audio {
            Some(a) => a.read(c.start + t, count, &s.path).map(Some),
            None => Ok(None),
        }
    }

    /// Everything one training sample needs, reading one subchunk per latent and one mel range.
    pub fn sample(&self, req: &SampleRequest) -> Result<Sample, StoreError> {
        let c = self.check(req.clip, req.t, 1)?;
        let np = u64::from(req.previous);
        if req.t < np || req.identity >= c.frames {
            return Err(StoreError::Format {
                path: self.root.clone(),
                message: format!("clip {}: target {} needs {np} previous frames and identity {} must be a frame ({} frames)", c.id, req.t, req.identity, c.frames),
            });
        }
        let (start, len) = context_window(req.t, c.frames, req.context_frames);
        Ok(Sample {
            target: self.latent(req.clip, req.t)?,
            masked: self.masked_latent(req.clip, req.t)?,
            identity: self.latent(req.clip, req.identity)?,
            previous: (req.t - np..req.t)
                .map(|p| self.latent(req.clip, p))
                .collect::<Result<_, _>>()?,
            mel: self.mel(req.clip, start, len)?,
            context_len: len,
            offset: req.t - start,
        })
    }
}

/// Which frames of a sample to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRequest {
    /// Clip index.
    pub clip: usize,
    /// Target frame.
    pub t: u64,
    /// Identity frame (another frame of the clip).
    pub identity: u64,
    /// Previous frames NP (t - NP .. t).
    pub previous: u32,
    /// Longest audio context in frames.
    pub context_frames: u64,
}

/// One training sample's data (latents C x h x w each).
#[derive(Debug, Clone)]
pub struct Sample {
    /// Target latent.
    pub target: Vec<f16>,
    /// Masked target latent.
    pub masked: Vec<f16>,
    /// Identity latent.
    pub identity: Vec<f16>,
    /// Previous latents, oldest first.
    pub previous: Vec<Vec<f16>>,
    /// Mel rows of the audio context (context_len x 104).
    pub mel: Vec<f32>,
    /// Frames in the audio context.
    pub context_len: u64,
    /// Position of the target in the context.
    pub offset: u64,
}

/// The audio context for target `t` of a clip of `frames` frames: at most `max` frames,
/// centred on t where the clip allows. Returns (start, length).
pub fn context_window(t: u64, frames: u64, max: u64) -> (u64, u64) {
    if frames == 0 {
        return (0, 0);
    }
    let len = max.min(frames).max(1);
    let start = t.saturating_sub(len / 2).min(frames - len);
    (start, len)
}
