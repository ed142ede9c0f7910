//! Writing a shard store clip by clip: [`ShardWriter`] appends each clip's per-frame arrays to raw
//! spill files inside the shard's `.partial` directory (memory holds one clip, whatever the
//! shard's length), and [`ShardWriter::finish`] turns them into the Zarr arrays, chunk by chunk.
//! A clip found bad after it was pushed is taken back with [`ShardWriter::rollback`].

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use serde::Serialize;
use zarrs::array::{codec, data_type, ArrayBuilder, DataType};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::GroupBuilder;

use super::{
    ioerr, zerr, ClipData, ShardEntry, ShardRecord, StoreError, StoreMeta, FRAMES_PER_CHUNK,
    MEL_DIM, MEL_ROWS_PER_SUBCHUNK,
};

/// Where the spill files live inside `<shard>.partial` (removed before the shard is finished).
const SPILL: &str = ".spill";

/// A value stored in a per-frame array, spilled as little-endian bytes.
trait Raw: zarrs::array::Element + Copy + Default {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(b: &[u8]) -> Self;
}

impl Raw for f16 {
    const SIZE: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        f16::from_le_bytes([b[0], b[1]])
    }
}

impl Raw for f32 {
    const SIZE: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// One per-frame array while the shard is written: its spill file and how many values a frame
/// has.
struct Spill {
    name: &'static str,
    frame_shape: Vec<u64>,
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
}

impl Spill {
    fn per_frame(&self) -> usize {
        self.frame_shape.iter().product::<u64>() as usize
    }

    fn append<T: Raw>(&mut self, values: &[T]) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(values.len() * T::SIZE);
        for &v in values {
            v.put(&mut buf);
        }
        self.file.write_all(&buf).map_err(ioerr(&self.path))?;
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

/// The state of a shard between two clips, to return to with [`ShardWriter::rollback`].
#[derive(Debug, Clone)]
pub struct Mark {
    clips: usize,
    bytes: Vec<u64>,
}

/// A shard store written one clip at a time (`<path>.partial`, renamed to `path` by
/// [`ShardWriter::finish`]: an interrupted shard is never taken as finished).
pub struct ShardWriter {
    path: PathBuf,
    partial: PathBuf,
    meta: StoreMeta,
    lat_len: usize,
    audio_dim: Option<usize>,
    with_faces: bool,
    /// latents, masked_latents, mel, then audio_features, then face_box, landmarks, crop.
    spills: Vec<Spill>,
    ids: Vec<String>,
    frames: Vec<u64>,
    rotations: Vec<u32>,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("path", &self.path)
            .field("clips", &self.ids.len())
            .finish()
    }
}

impl ShardWriter {
    /// Starts the shard at `path` (`.../shard-NNNNN.zarr`); a `.partial` left by an interrupted
    /// run is removed first.
    pub fn create(path: &Path, meta: &StoreMeta) -> Result<Self, StoreError> {
        let partial = path.with_extension("zarr.partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(ioerr(&partial))?;
        }
        let dir = partial.join(SPILL);
        std::fs::create_dir_all(&dir).map_err(ioerr(&dir))?;
        let [c, h, w] = meta.latent_shape;
        let audio_dim = meta.audio_cache.as_ref().map(|t| t.dim as usize);
        let with_faces = meta.face.detector.is_dlib();
        let mut arrays: Vec<(&'static str, Vec<u64>)> = vec![
            ("latents", vec![c, h, w]),
            ("masked_latents", vec![c, h, w]),
            ("mel", vec![MEL_DIM]),
        ];
        if let Some(d) = audio_dim {
            arrays.push(("audio_features", vec![d as u64]));
        }
        if with_faces {
            arrays.push(("face_box", vec![4]));
            arrays.push(("landmarks", vec![68, 2]));
            arrays.push(("crop", vec![6]));
        }
        let spills = arrays
            .into_iter()
            .map(|(name, frame_shape)| {
                let p = dir.join(name);
                let file = File::create(&p).map_err(ioerr(&p))?;
                Ok(Spill {
                    name,
                    frame_shape,
                    path: p,
                    file: BufWriter::new(file),
                    bytes: 0,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            meta: meta.clone(),
            lat_len: (c * h * w) as usize,
            audio_dim,
            with_faces,
            spills,
            ids: Vec::new(),
            frames: Vec::new(),
            rotations: Vec::new(),
        })
    }

    /// Clips pushed so far.
    pub fn clips(&self) -> usize {
        self.ids.len()
    }

    fn format(&self, message: String) -> StoreError {
        StoreError::Format {
            path: self.path.clone(),
            message,
        }
    }

    /// Appends one clip (its arrays checked against its frame count first).
    pub fn push(&mut self, clip: &ClipData) -> Result<(), StoreError> {
        let n = clip.frames;
        if clip.latents.len() != n * self.lat_len
            || clip.masked_latents.len() != n * self.lat_len
            || clip.mel.len() != n * MEL_DIM as usize
        {
            return Err(self.format(format!(
                "clip {}: array sizes do not match {n} frames",
                clip.id
            )));
        }
        if let Some(d) = self.audio_dim {
            if clip.audio_features.len() != n * d {
                return Err(self.format(format!(
                    "clip {}: {} cached audio values for {n} frames of width {d}",
                    clip.id,
                    clip.audio_features.len(),
                )));
            }
        }
        if self.with_faces && clip.faces.len() != n {
            return Err(self.format(format!(
                "clip {}: face records for {} of {n} frames",
                clip.id,
                clip.faces.len(),
            )));
        }
        let mut k = 0;
        let mut next = || {
            k += 1;
            k - 1
        };
        self.spills[next()].append(&clip.latents)?;
        self.spills[next()].append(&clip.masked_latents)?;
        self.spills[next()].append(&clip.mel)?;
        if self.audio_dim.is_some() {
            self.spills[next()].append(&clip.audio_features)?;
        }
        if self.with_faces {
            let boxes: Vec<f32> = clip.faces.iter().flat_map(|f| f.face_box).collect();
            let marks: Vec<f32> = clip
                .faces
                .iter()
                .flat_map(|f| f.landmarks.iter().flatten().copied())
                .collect();
            let crops: Vec<f32> = clip.faces.iter().flat_map(|f| f.crop).collect();
            self.spills[next()].append(&boxes)?;
            self.spills[next()].append(&marks)?;
            self.spills[next()].append(&crops)?;
        }
        self.ids.push(clip.id.clone());
        self.frames.push(n as u64);
        self.rotations.push(clip.rotation);
        Ok(())
    }

    /// Where the shard stands now.
    pub fn mark(&self) -> Mark {
        Mark {
            clips: self.ids.len(),
            bytes: self.spills.iter().map(|s| s.bytes).collect(),
        }
    }

    /// Takes back every clip pushed since `mark`.
    pub fn rollback(&mut self, mark: &Mark) -> Result<(), StoreError> {
        for (s, &len) in self.spills.iter_mut().zip(&mark.bytes) {
            s.file.flush().map_err(ioerr(&s.path))?;
            let f = s.file.get_mut();
            f.set_len(len)
                .and_then(|()| f.seek(SeekFrom::Start(len)).map(|_| ()))
                .map_err(ioerr(&s.path))?;
            s.bytes = len;
        }
        self.ids.truncate(mark.clips);
        self.frames.truncate(mark.clips);
        self.rotations.truncate(mark.clips);
        Ok(())
    }

    /// Writes the Zarr arrays from the spill files, the group's attributes, `clip_offsets` and
    /// `entry.json` (with `rejected`, any serialisable list), then renames the shard into place.
    pub fn finish<R: Serialize>(self, rejected: &[R]) -> Result<ShardEntry, StoreError> {
        let Self {
            path,
            partial,
            meta,
            spills,
            ids,
            frames,
            rotations,
            ..
        } = self;
        let store = Arc::new(FilesystemStore::new(&partial).map_err(|e| zerr(&partial)(&e))?);
        let mut attrs = serde_json::Map::new();
        attrs.insert(
            "syncdiff".into(),
            serde_json::to_value(&meta).map_err(|e| zerr(&path)(&e))?,
        );
        attrs.insert("clip_ids".into(), serde_json::json!(ids));
        // Frames are stored as displayed; this says which turn of the source file made them so.
        attrs.insert("clip_rotation".into(), serde_json::json!(rotations));
        let mut group = GroupBuilder::new()
            .build(store.clone(), "/")
            .map_err(|e| zerr(&path)(&e))?;
        *group.attributes_mut() = attrs;
        group.store_metadata().map_err(|e| zerr(&path)(&e))?;
        let total: u64 = frames.iter().sum();
        for mut s in spills {
            s.file.flush().map_err(ioerr(&s.path))?;
            let half = matches!(s.name, "latents" | "masked_latents" | "audio_features");
            if half {
                frame_array::<f16>(&store, &s, data_type::float16(), total, &path)?;
            } else {
                frame_array::<f32>(&store, &s, data_type::float32(), total, &path)?;
            }
        }
        let spill = partial.join(SPILL);
        std::fs::remove_dir_all(&spill).map_err(ioerr(&spill))?;
        let mut offsets = vec![0i64];
        for &n in &frames {
            offsets.push(offsets[offsets.len() - 1] + n as i64);
        }
        let n = offsets.len() as u64;
        let off = ArrayBuilder::new(vec![n], vec![n], data_type::int64(), 0i64)
            .build(store.clone(), "/clip_offsets")
            .map_err(|e| zerr(&path)(&e))?;
        off.store_metadata().map_err(|e| zerr(&path)(&e))?;
        off.store_chunk(&[0], offsets)
            .map_err(|e| zerr(&path)(&e))?;
        let entry = ShardEntry {
            name: path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string(),
            clips: ids,
            frames,
            bytes: dir_bytes(&partial),
        };
        // entry.json marks the shard finished; the rename makes it visible.
        let ep = partial.join("entry.json");
        let record = ShardRecord {
            meta,
            entry: entry.clone(),
            rejected,
        };
        let text = serde_json::to_vec(&record).map_err(|e| zerr(&ep)(&e))?;
        std::fs::write(&ep, text).map_err(ioerr(&ep))?;
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(ioerr(&path))?;
        }
        std::fs::rename(&partial, &path).map_err(ioerr(&path))?;
        Ok(entry)
    }
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
    let mut w = ShardWriter::create(path, meta)?;
    for clip in clips {
        w.push(clip)?;
    }
    w.finish(rejected)
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

/// A per-frame array from its spill file: shard files of FRAMES_PER_CHUNK frames, one
/// zstd-compressed subchunk per frame (per MEL_ROWS_PER_SUBCHUNK rows for mel: range reads).
fn frame_array<T: Raw>(
    store: &Arc<FilesystemStore>,
    spill: &Spill,
    dtype: DataType,
    frames: u64,
    path: &Path,
) -> Result<(), StoreError>
where
    zarrs::array::builder::ArrayBuilderFillValue: From<T>,
{
    let fill = T::default();
    let frame_shape = &spill.frame_shape;
    let per = spill.per_frame();
    if spill.bytes != frames * (per * T::SIZE) as u64 {
        return Err(StoreError::Format {
            path: spill.path.clone(),
            message: format!(
                "{} bytes spilled for {frames} frames of {per} values",
                spill.bytes
            ),
        });
    }
    let shape: Vec<u64> = std::iter::once(frames.max(1))
        .chain(frame_shape.iter().copied())
        .collect();
    let chunk: Vec<u64> = std::iter::once(FRAMES_PER_CHUNK)
        .chain(frame_shape.iter().copied())
        .collect();
    // One frame per subchunk for latents (random access); a block of rows for rows (range reads).
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
        .build(store.clone(), &format!("/{}", spill.name))
        .map_err(|e| zerr(path)(&e))?;
    array.store_metadata().map_err(|e| zerr(path)(&e))?;
    let mut file = File::open(&spill.path).map_err(ioerr(&spill.path))?;
    let mut bytes = vec![0u8; FRAMES_PER_CHUNK as usize * per * T::SIZE];
    for (i, start) in (0..frames).step_by(FRAMES_PER_CHUNK as usize).enumerate() {
        let n = FRAMES_PER_CHUNK.min(frames - start) as usize;
        let len = n * per * T::SIZE;
        file.read_exact(&mut bytes[..len])
            .map_err(ioerr(&spill.path))?;
        let mut chunk_data: Vec<T> = bytes[..len].chunks_exact(T::SIZE).map(T::get).collect();
        // The last shard file is padded with the fill value to the full chunk.
        chunk_data.resize(FRAMES_PER_CHUNK as usize * per, fill);
        let idx: Vec<u64> = std::iter::once(i as u64)
            .chain(frame_shape.iter().map(|_| 0))
            .collect();
        array
            .store_chunk(&idx, chunk_data)
            .map_err(|e| zerr(path)(&e))?;
    }
    Ok(())
}
