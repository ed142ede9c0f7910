//! `syncdiff-dataprep lrs2`: a split of LRS2 -> shard stores + manifest, parallel and resumable.
//!
//! Clips are taken in filelist order, `clips_per_shard` per shard. Shard i belongs to rank
//! i mod world (ranks from `mpirun`'s environment). A finished shard (`shard-NNNNN.zarr`) is never
//! redone; an interrupted one (`shard-NNNNN.zarr.partial`) is rebuilt. Whoever finishes last writes
//! `rejected.jsonl` and `manifest.json` (last), from the `entry.json` every shard carries.

use std::path::{Path, PathBuf};

use syncdiff_model::config::Config;
use tch::nn::VarStore;
use tch::Device;

use crate::clip::{ClipSettings, DecodedClip, Rejection};
use crate::pipeline::{encode_clip, stream_clip_parts};
use syncdiff_dataset::audio::{FbankParams, LogFbank};
use syncdiff_dataset::shards::{
    meta_for, shard_name, write_manifest, AudioCacheTag, ClipData, Manifest, ShardRecord,
    ShardWriter, StoreError, StoreMeta,
};

/// Options of an ingest run.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Source root (LRS2: the filelists and `main/`; or a folder of videos).
    pub root: PathBuf,
    /// How the root is laid out.
    pub layout: crate::layout::Layout,
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
    /// Rebuild finished shards whose recorded settings differ from this run's (else refuse).
    pub rebuild: bool,
    /// Where the data set is published (`--out s3://...`); `out` is then the staging directory.
    pub publish: Option<std::sync::Arc<syncdiff_dataset::publish::Publish>>,
}

impl IngestOptions {
    /// One rank's ingest of `split` of the tree `root` (laid out as `layout`) into the directory
    /// `out`: encoder batches of 32 frames in float32, finished shards kept, nothing published.
    pub fn new(
        root: impl Into<PathBuf>,
        layout: crate::layout::Layout,
        split: &str,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            root: root.into(),
            layout,
            split: split.to_string(),
            out: out.into(),
            batch: 32,
            half: false,
            rank: 0,
            world: 1,
            rebuild: false,
            publish: None,
        }
    }
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
    /// The configured autoencoder cannot be loaded.
    #[error(transparent)]
    Autoencoder(#[from] syncdiff_dataset::autoencoder::AutoencoderError),
    /// The face front-end cannot start (a model file is missing or wrong).
    #[error(transparent)]
    Face(#[from] crate::face::FaceError),
    /// Object storage (the `--out` URL).
    #[error(transparent)]
    Publish(#[from] syncdiff_dataset::publish::PublishError),
    /// The output holds shards prepared with other settings.
    #[error(
        "{path} was prepared with other settings ({differences}; stored -> now); adding to it \
         would mix two data sets: use another --out, or --rebuild to rebuild those shards"
    )]
    Settings {
        /// The shard.
        path: PathBuf,
        /// `key: stored -> now`, joined.
        differences: String,
    },
}

/// A finished shard's record; an `entry.json` of an older build (no settings) is
/// [`IngestError::Settings`] too: what shaped it is unknown.
fn read_record(path: &Path) -> Result<ShardRecord<Vec<Rejection>>, IngestError> {
    let p = path.join("entry.json");
    let text = std::fs::read(&p).map_err(|e| IngestError::Io {
        path: p.clone(),
        message: e.to_string(),
    })?;
    serde_json::from_slice(&text).map_err(|e| IngestError::Settings {
        path: path.to_path_buf(),
        differences: format!("its entry.json records no settings ({e}): an older build made it"),
    })
}

/// The record of the finished shard at `path`, when it was built with `meta` from the clips
/// `ids`.
fn check_record(
    path: &Path,
    meta: &StoreMeta,
    ids: &[String],
) -> Result<ShardRecord<Vec<Rejection>>, IngestError> {
    let record = read_record(path)?;
    let mut differences = record.meta.differences(meta);
    // Stored and rejected parts (`<id>#<first>-<end>` for a split clip) cover the shard's clips.
    let base = |c: &String| crate::segments::source_id(c).to_string();
    let covered: std::collections::BTreeSet<String> = record
        .entry
        .clips
        .iter()
        .chain(record.rejected.iter().map(|r| &r.clip))
        .map(base)
        .collect();
    if covered != ids.iter().cloned().collect() {
        differences.push("clips: the filelist or data.clips_per_shard changed".into());
    }
    if differences.is_empty() {
        Ok(record)
    } else {
        Err(IngestError::Settings {
            path: path.to_path_buf(),
            differences: differences.join(", "),
        })
    }
}

/// sha256 of a file, hex (streamed: `hash::sha256_file`).
pub fn sha256_file(path: &Path) -> Result<String, IngestError> {
    syncdiff_runtime::hash::sha256_file(path)
        .map(|(_, sha)| sha)
        .map_err(|e| IngestError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

pub use syncdiff_dataset::autoencoder::load_autoencoder;

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
            let dim = syncdiff_dataset::shards::MEL_DIM as usize;
            let x = tch::Tensor::from_slice(&mel[start * dim..(start + len) * dim])
                .view([1, len as i64, dim as i64])
                .to_device(self.device);
            let f = self
                .encoder
                .frozen_features(&x)
                .to_kind(tch::Kind::Float)
                .to_device(Device::Cpu);
            // float32 on the CPU by construction: the conversion cannot fail.
            let v: Vec<f32> = Vec::try_from(f.flatten(0, -1)).expect("float32 CPU features");
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
    /// Clips (or parts of clips) rejected by this rank.
    pub rejected: usize,
    /// Source clips the face front-end split into several parts (lost face, scene cut).
    pub split: usize,
    /// Scene cuts found.
    pub scene_cuts: usize,
    /// Whether this rank wrote the manifest (all shards were finished).
    pub manifest_written: bool,
    /// Seconds the decoding threads were busy (ffmpeg, the face front-end, the filterbank),
    /// summed over the threads: they run while clips are encoded.
    pub decode_s: f64,
    /// Wall seconds encoding frames and masked frames with the autoencoder and appending them to
    /// the shard (without waiting for decoded clips).
    pub encode_s: f64,
    /// Wall seconds finishing and publishing shard stores.
    pub write_s: f64,
    /// Wall seconds the encoder waited for decoded clips.
    pub decode_wait_s: f64,
}

impl IngestReport {
    /// The summary line of rank `rank` of `world` after `secs` seconds (`out`: the data set's
    /// directory or URL, named when this rank wrote its manifest).
    pub fn summary(&self, rank: usize, world: usize, secs: f64, out: &str) -> String {
        let memory = syncdiff_runtime::progress::peak_memory_mib()
            .map_or(String::new(), |m| format!(", peak memory {m} MiB"));
        let split = if self.split + self.scene_cuts > 0 {
            format!(
                " ({} clip(s) split by the face front-end, {} scene cut(s))",
                self.split, self.scene_cuts
            )
        } else {
            String::new()
        };
        let manifest = if self.manifest_written {
            let url = syncdiff_runtime::objstore::safe_url(out.trim_end_matches('/'));
            format!("; wrote {url}/manifest.json (reasons in rejected.jsonl)")
        } else {
            String::new()
        };
        format!(
            "rank {rank}/{world}: built {} shard(s), {} already finished; {} clips, {} frames in \
             {secs:.1} s (decoding threads busy {:.2} s, encode {:.2} s, write {:.2} s{memory}); \
             {} rejected{split}{manifest}",
            self.built,
            self.skipped,
            self.clips,
            self.frames,
            self.decode_s,
            self.encode_s,
            self.write_s,
            self.rejected,
        )
    }
}

impl IngestReport {
    fn add(&mut self, o: &Self) {
        self.clips += o.clips;
        self.frames += o.frames;
        self.rejected += o.rejected;
        self.split += o.split;
        self.scene_cuts += o.scene_cuts;
        self.decode_s += o.decode_s;
        self.decode_wait_s += o.decode_wait_s;
    }
}

/// What a decoding thread hands over for one source clip.
enum Msg {
    /// A part: a clip to store, or a rejected run of frames.
    Part(Result<DecodedClip, Rejection>),
    /// The clip is finished: its scene cuts, or the rejection of the whole clip (its parts are
    /// taken back).
    Done(Result<usize, Rejection>),
}

/// Builds one shard from the clips `ids`: decoding threads (as many as rayon's) take clips in
/// order and stream each one's parts through a channel of its own that holds one part; this
/// thread encodes the parts in clip order and appends them to `writer`, so memory holds a few
/// parts whatever the clips' lengths. A clip rejected as a whole after some of its parts were
/// appended is rolled back. `done(frames so far)` after each source clip. Returns the
/// rejections (in clip order) and the counts.
fn build_shard(
    ids: &[String],
    writer: &mut ShardWriter,
    decode: impl Fn(&str, &mut dyn FnMut(Result<DecodedClip, Rejection>) -> bool) -> Result<usize, Rejection>
        + Sync,
    mut encode: impl FnMut(DecodedClip) -> ClipData,
    mut done: impl FnMut(u64),
) -> Result<(Vec<Rejection>, IngestReport), IngestError> {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
    let threads = rayon::current_num_threads().clamp(1, ids.len().max(1));
    let (senders, receivers): (Vec<SyncSender<Msg>>, Vec<Receiver<Msg>>) =
        (0..ids.len()).map(|_| sync_channel(1)).unzip();
    let senders: Vec<std::sync::Mutex<Option<SyncSender<Msg>>>> = senders
        .into_iter()
        .map(|s| std::sync::Mutex::new(Some(s)))
        .collect();
    let (next, stop, busy_ns) = (
        AtomicUsize::new(0),
        AtomicBool::new(false),
        AtomicU64::new(0),
    );
    let mut report = IngestReport::default();
    let mut rejected = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                // Clips are taken in order, so the clip this thread waits to hand over is never
                // behind one that no thread has started.
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= ids.len() || stop.load(Ordering::SeqCst) {
                    break;
                }
                let Some(tx) = senders[k].lock().ok().and_then(|mut s| s.take()) else {
                    break;
                };
                let t = std::time::Instant::now();
                let end = decode(&ids[k], &mut |p| tx.send(Msg::Part(p)).is_ok());
                busy_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
                let _ = tx.send(Msg::Done(end));
            });
        }
        let result = (|| -> Result<(), IngestError> {
            for (k, rx) in receivers.into_iter().enumerate() {
                let mark = writer.mark();
                let (mut parts, mut frames, mut clips) = (0usize, 0u64, 0usize);
                let mut clip_rejected = Vec::new();
                loop {
                    let t = std::time::Instant::now();
                    let msg = rx.recv();
                    report.decode_wait_s += t.elapsed().as_secs_f64();
                    match msg {
                        Ok(Msg::Part(Ok(c))) => {
                            parts += 1;
                            let clip = encode(c);
                            frames += clip.frames as u64;
                            clips += 1;
                            writer.push(&clip)?;
                        }
                        Ok(Msg::Part(Err(r))) => {
                            parts += 1;
                            clip_rejected.push(r);
                        }
                        Ok(Msg::Done(Ok(cuts))) => {
                            report.scene_cuts += cuts;
                            report.split += usize::from(parts > 1);
                            report.clips += clips;
                            report.frames += frames;
                            report.rejected += clip_rejected.len();
                            rejected.append(&mut clip_rejected);
                            break;
                        }
                        Ok(Msg::Done(Err(r))) => {
                            writer.rollback(&mark)?;
                            report.rejected += 1;
                            rejected.push(r);
                            break;
                        }
                        Err(_) => {
                            // The thread decoding it stopped without a word (a panic).
                            writer.rollback(&mark)?;
                            report.rejected += 1;
                            rejected.push(crate::clip::reject(
                                &ids[k],
                                "undecodable",
                                "the thread decoding this clip stopped unexpectedly",
                            ));
                            break;
                        }
                    }
                }
                done(report.frames);
            }
            Ok(())
        })();
        if result.is_err() {
            // Stop the decoding threads: no new clips, and their next hand-over fails.
            stop.store(true, Ordering::SeqCst);
        }
        result
    })?;
    report.decode_s = busy_ns.load(Ordering::SeqCst) as f64 * 1e-9;
    Ok((rejected, report))
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
    let ids = opts
        .layout
        .clip_ids(&opts.root, &opts.split)
        .map_err(|(path, e)| io(&path)(e))?;
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    // This rank's GPU when there is one (a launcher's local rank picks it), else the CPU.
    let device = syncdiff_runtime::ranks::Ranks::from_env()
        .map_err(|e| e.to_string())
        .and_then(|l| {
            let auto = syncdiff_runtime::device::DeviceChoice::Auto;
            auto.device(l.local_rank).map_err(|e| e.to_string())
        })
        .map_err(|message| IngestError::Io {
            path: opts.out.clone(),
            message,
        })?;
    let (mut vs, ae, ae_sha) = load_autoencoder(cfg, device)?;
    if opts.half {
        // float16 weights and inputs (meant for GPUs; works, slowly, on CPU).
        vs.half();
    }
    let fb = LogFbank::new(FbankParams::default());
    let audio_cache = if cfg.data.cache_audio_features {
        Some(AudioCache::load(cfg, device)?)
    } else {
        None
    };
    let meta = meta_for(
        cfg,
        &opts.split,
        ae_sha,
        audio_cache.as_ref().map(|c| c.tag.clone()),
    );
    let settings = ClipSettings {
        resolution: cfg.data.resolution,
        fps: f64::from(cfg.data.fps),
        sample_rate: cfg.data.sample_rate,
        mask_fraction: cfg.data.mask_fraction,
        audio_tolerance_s: 0.1,
        layout: opts.layout,
        sidecar_boxes: cfg.data.face.detector == syncdiff_model::config::FaceDetectorKind::Boxes,
        face: cfg
            .data
            .face
            .detector
            .is_dlib()
            .then(|| cfg.data.face.clone()),
    };
    if settings.sidecar_boxes && opts.layout != crate::layout::Layout::Lrs2 {
        return Err(IngestError::Io {
            path: opts.root.clone(),
            message: "data.face.detector boxes: sidecar boxes are read in the LRS2 layout only; \
                      use dlib-hog or dlib-cnn"
                .into(),
        });
    }
    if let Some(face) = &settings.face {
        // A missing or wrong model file stops the run before any work, naming the file.
        crate::face::FrontEnd::new(face)?;
    }
    let per = cfg.data.clips_per_shard as usize;
    let shards: Vec<&[String]> = ids.chunks(per).collect();
    let mine: Vec<usize> = (0..shards.len())
        .filter(|i| i % opts.world == opts.rank)
        .collect();
    let total: usize = mine.iter().map(|&i| shards[i].len()).sum();
    let mut report = IngestReport::default();
    let mut done = 0usize;
    // Finished shards built with other settings are refused (or, with --rebuild, rebuilt):
    // all checked before any work, and the manifest goes first so it never describes shards it
    // does not match.
    if let Some(p) = &opts.publish {
        p.pull_records(&opts.out, mine.iter().copied())?;
    }
    let mut redo = vec![false; shards.len()];
    for &i in &mine {
        let path = opts.out.join(shard_name(i));
        if path.join("entry.json").exists() {
            match check_record(&path, &meta, shards[i]) {
                Ok(_) => {}
                Err(IngestError::Settings { .. }) if opts.rebuild => redo[i] = true,
                Err(e) => return Err(e),
            }
        }
    }
    if redo.iter().any(|&r| r) {
        if let Some(p) = &opts.publish {
            p.remove_manifest()?;
        }
        let m = opts.out.join("manifest.json");
        match std::fs::remove_file(&m) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&m)(e)),
            _ => {}
        }
    }
    if let Some(p) = &opts.publish {
        // The stage is no proof that the store has a shard (a bucket emptied, a prefix deleted).
        for name in p.reconcile(&opts.out, mine.iter().copied().filter(|&i| !redo[i]))? {
            eprintln!(
                "{name}: finished in the staging directory but missing or different in the \
                 store: uploaded again"
            );
        }
    }
    for &i in &mine {
        let path = opts.out.join(shard_name(i));
        if path.join("entry.json").exists() && !redo[i] {
            report.skipped += 1;
            done += shards[i].len();
            progress(done, total, report.frames);
            continue;
        }
        let t0 = std::time::Instant::now();
        let mut writer = ShardWriter::create(&path, &meta)?;
        let (rejected, shard_report) = build_shard(
            shards[i],
            &mut writer,
            |id, send| stream_clip_parts(&opts.root, id, &settings, &fb, send),
            |c| {
                let mut clip = encode_clip(&ae, c, &settings, device, opts.batch, opts.half);
                if let Some(cache) = &audio_cache {
                    clip.audio_features = cache.features(&clip.mel, clip.frames);
                }
                clip
            },
            |frames| {
                done += 1;
                progress(done, total, report.frames + frames);
            },
        )?;
        report.add(&shard_report);
        let t1 = std::time::Instant::now();
        writer.finish(&rejected)?;
        if let Some(p) = &opts.publish {
            p.push_shard(&opts.out, i)?;
        }
        report.write_s += t1.elapsed().as_secs_f64();
        report.encode_s += (t1 - t0).as_secs_f64() - shard_report.decode_wait_s;
        report.built += 1;
    }
    report.manifest_written = match &opts.publish {
        None => finish(&opts.out, &shards, &meta)?,
        Some(p) => {
            // Other ranks' and tasks' shards are in the store, not in this staging directory.
            p.pull_records(&opts.out, 0..shards.len())?;
            p.reconcile(&opts.out, 0..shards.len())?;
            let done = finish(&opts.out, &shards, &meta)?;
            if done {
                let names: Vec<String> = (0..shards.len()).map(shard_name).collect();
                p.verify(&opts.out, &names)?;
                p.push_manifest(&opts.out)?;
            }
            done
        }
    };
    Ok(report)
}

/// Writes `rejected.jsonl` and `manifest.json` when every shard (`shards[i]`: its clip ids) is
/// finished; false otherwise. Every shard must have been built with `meta` from its clips (the
/// other ranks' too), so the manifest describes exactly what is there.
pub fn finish(out: &Path, shards: &[&[String]], meta: &StoreMeta) -> Result<bool, IngestError> {
    let mut entries = Vec::with_capacity(shards.len());
    let mut rejected = String::new();
    for (i, ids) in shards.iter().enumerate() {
        let path = out.join(shard_name(i));
        if !path.join("entry.json").exists() {
            return Ok(false);
        }
        let ShardRecord {
            entry,
            rejected: rej,
            ..
        } = check_record(&path, meta, ids)?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clip::reject;

    /// A decoded part of `frames` frames whose pixels say which clip it is.
    fn part(id: &str, frames: usize) -> DecodedClip {
        DecodedClip {
            id: id.into(),
            frames,
            rgb: vec![0; frames * 4 * 4 * 3],
            mel: vec![0.0; frames * syncdiff_dataset::shards::MEL_DIM as usize],
            masks: None,
            faces: Vec::new(),
            width: 4,
            height: 4,
            rotation: 0,
        }
    }

    /// Clips finish out of order on the decoding threads, one of them fails after handing over a
    /// part: the shard holds the parts in clip order without the failed clip's, and the
    /// rejections are in clip order too.
    #[test]
    fn parts_are_stored_in_clip_order_and_a_clip_failing_late_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let meta = StoreMeta {
            latent_shape: [1, 2, 2],
            ..meta_for(&cfg, "train", "none".into(), None)
        };
        let ids: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
        let path = dir.path().join(shard_name(0));
        let mut writer = ShardWriter::create(&path, &meta).unwrap();
        let mut dones = Vec::new();
        let (rejected, report) = build_shard(
            &ids,
            &mut writer,
            |id, send| {
                let i: u64 = id[1..].parse().unwrap();
                // Later clips often finish first.
                std::thread::sleep(std::time::Duration::from_millis((12 - i) * 3 % 17));
                match i % 4 {
                    // Two parts and a rejected run between them.
                    0 => {
                        send(Ok(part(&format!("{id}#0-5"), 5)));
                        send(Err(reject(&format!("{id}#5-9"), "no_face", "")));
                        send(Ok(part(&format!("{id}#9-12"), 3)));
                        Ok(1)
                    }
                    // A part, then the clip turns out damaged.
                    1 => {
                        send(Ok(part(&format!("{id}#0-4"), 4)));
                        Err(reject(id, "undecodable", "second reading ended early"))
                    }
                    // Rejected before any part.
                    2 => Err(reject(id, "no_face", "")),
                    _ => {
                        send(Ok(part(id, 2)));
                        Ok(0)
                    }
                }
            },
            |c| ClipData {
                id: c.id,
                frames: c.frames,
                latents: vec![half::f16::ZERO; c.frames * 4],
                masked_latents: vec![half::f16::ZERO; c.frames * 4],
                mel: c.mel,
                ..ClipData::default()
            },
            |frames| dones.push(frames),
        )
        .unwrap();
        let entry = writer.finish(&rejected).unwrap();
        let want: Vec<String> = (0..12)
            .flat_map(|i| match i % 4 {
                0 => vec![format!("c{i:02}#0-5"), format!("c{i:02}#9-12")],
                3 => vec![format!("c{i:02}")],
                _ => vec![],
            })
            .collect();
        assert_eq!(entry.clips, want);
        let reasons: Vec<(String, String)> = rejected
            .iter()
            .map(|r| (r.clip.clone(), r.reason.clone()))
            .collect();
        let want: Vec<(String, String)> = (0..12)
            .filter_map(|i| match i % 4 {
                0 => Some((format!("c{i:02}#5-9"), "no_face".to_string())),
                1 => Some((format!("c{i:02}"), "undecodable".to_string())),
                2 => Some((format!("c{i:02}"), "no_face".to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, want);
        assert_eq!(
            (
                report.clips,
                report.frames,
                report.rejected,
                report.split,
                report.scene_cuts
            ),
            (9, 3 * 8 + 3 * 2, 9, 3, 3)
        );
        assert_eq!(dones.len(), 12);
        assert_eq!(dones.last(), Some(&30));
    }
}
