//! `syncdiff-dataprep`: make the training data.
//!
//! ```text
//! syncdiff-dataprep synth --out data/synth --speakers 8 --clips-per-speaker 12 --seconds 3 --seed 0
//! syncdiff-dataprep config --config configs/debug.yaml
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncdiff_dataprep::ingest;
use syncdiff_dataprep::layout::Layout;
use syncdiff_dataprep::synth::{synth_with, SyncFaults, SynthOptions};
use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::{parse_args, ConfigArgs};
use syncdiff_runtime::progress::Progress;
use syncdiff_runtime::ranks::Ranks;

/// Prepare SyncDiff training data.
#[derive(Debug, Parser)]
#[command(name = "syncdiff-dataprep", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic data set in LRS2's layout: procedurally drawn faces whose mouth follows
    /// the loudness of espeak-ng speech, with the true mouth opening of every frame.
    Synth {
        /// Output directory.
        #[arg(long, value_parser = local_dir)]
        out: PathBuf,
        /// Speakers (identities).
        #[arg(long, default_value_t = 8)]
        speakers: u32,
        /// Clips per speaker (clip 1 goes to test.txt, clip 2 to val.txt, the rest to train.txt).
        #[arg(long, default_value_t = 12)]
        clips_per_speaker: u32,
        /// Seconds per clip.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Share of the clips whose audio is shifted by 1..=--max-delay frames, late or early
        /// (for testing sync experts and filters; `<clip>.sync.txt` says by how much).
        #[arg(long, default_value_t = 0.0)]
        delayed: f64,
        /// The largest shift of --delayed, frames.
        #[arg(long, default_value_t = 6)]
        max_delay: u32,
        /// Share of the clips that carry another speaker's clip's speech (`<clip>.sync.txt`
        /// names it).
        #[arg(long, default_value_t = 0.0)]
        swapped: f64,
    },
    /// Turn a split of LRS2 (or a synthetic data set) into shard stores plus manifest.json.
    /// Resumable: finished shards are kept, interrupted ones rebuilt. Under `mpirun -n K` the
    /// ranks split the shards. ROOT holds train.txt / val.txt / test.txt and main/.
    Lrs2(IngestArgs),
    /// The same from a plain folder of videos (LRS3, your own recordings): every video under
    /// ROOT (or those ROOT/<split>.txt lists), any frame rate (resampled to data.fps) and size;
    /// use a dlib detector (`--set data.face.detector=dlib-hog --set data.face.crop=face`).
    Videos(IngestArgs),
    /// Run the face front-end (`data.face`) on a video or an image and draw what it found:
    /// `OUT/frame-NNNNN.png` (crop square yellow, face box green, mask blue, landmarks red) and
    /// `OUT/crop-NNNNN.png` (the model's input) every `--every` frames. Check alignment here
    /// before a long preparation.
    Faces {
        /// A video (any size and frame rate) or an image.
        #[arg(long)]
        input: PathBuf,
        /// Directory for the pictures.
        #[arg(long, value_parser = local_dir)]
        out: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
        /// Draw every N-th frame.
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..))]
        every: u32,
        /// Look at the first SECONDS only.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        seconds: f64,
    },
    /// Summarise a prepared data set.
    Inspect {
        /// Data set directory.
        dataset: PathBuf,
    },
    /// Resolve a configuration and print what dataprep uses from it (data, model.autoencoder).
    Config {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// What an ingest from either layout takes.
#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// Source root (see the subcommand).
    #[arg(long, value_parser = local_dir)]
    root: PathBuf,
    /// train, val or test (videos: the list ROOT/<split>.txt if present, else every video).
    #[arg(long, default_value = "train")]
    split: String,
    /// Output data set: a directory, or s3://, gs://, az:// (built in --stage, each shard
    /// uploaded when finished, manifest.json last; credentials from the environment).
    #[arg(long)]
    out: String,
    /// Staging directory for an object-store --out (default: under the temporary directory,
    /// named by the URL, so a rerun resumes there).
    #[arg(long, value_parser = local_dir)]
    stage: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Frames per encoder batch.
    #[arg(long, default_value_t = 32)]
    batch: i64,
    /// Encode in float16 (for GPUs; slow on CPU). Its error against float32: docs/dataprep.md.
    #[arg(long)]
    half: bool,
    /// libtorch threads of the encoder, which runs while clips are decoded on rayon's threads
    /// (RAYON_NUM_THREADS, default one per core): 1 leaves the cores to the decoders; raise it
    /// when a CPU encoder is the bottleneck (docs/dataprep.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    encode_threads: u32,
    /// Rebuild finished shards that were prepared with other settings (resolution,
    /// autoencoder, mask, filterbank, clips) instead of refusing to mix them with new ones.
    #[arg(long)]
    rebuild: bool,
}

fn positive_seconds(arg: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err(format!("{arg}: expected a number of seconds above 0")),
    }
}

/// A directory argument: a path, never an object-store URL (which would otherwise become a local
/// directory named `s3:`).
fn local_dir(arg: &str) -> Result<PathBuf, String> {
    if arg.contains("://") {
        return Err("clips and sources are read from a local or shared file system, not object storage (only --out may be an s3://, gs:// or az:// URL)".into());
    }
    Ok(PathBuf::from(arg))
}

fn main() -> ExitCode {
    let result = match parse_args::<Cli>().command {
        Command::Synth { out, speakers, clips_per_speaker, seconds, seed, delayed, max_delay, swapped } => {
            let opts = SynthOptions { out: out.clone(), speakers, clips_per_speaker, seconds, seed };
            let faults = SyncFaults { delayed, max_delay, swapped };
            let bar = Progress::new(true, "synth", "clip", 0, u64::from(speakers * clips_per_speaker));
            let r = synth_with(&opts, &faults, |done, _| bar.set(done as u64));
            bar.finish();
            r.map(|n| format!("wrote {n} clips to {} ({} s each; train/val/test lists beside main/)", out.display(), seconds))
                .map_err(anyhow::Error::from)
        }
        Command::Lrs2(args) => match run_ingest(Layout::Lrs2, args) {
            Ok(r) => r,
            Err(code) => return code,
        },
        Command::Videos(args) => match run_ingest(Layout::Videos, args) {
            Ok(r) => r,
            Err(code) => return code,
        },
        Command::Faces { input, out, config, every, seconds } => faces(&input, &out, &config, every, seconds),
        Command::Inspect { dataset } => inspect(&dataset),
        Command::Config { config } => match config.load() {
            Ok(c) => Ok(format!(
                "data set: {}\nframes: {}x{} at {} fps, audio {} Hz, mask: lower {} of the face box\nautoencoder: {:?}, latent {}x{}x{}",
                c.data.dataset,
                c.data.resolution,
                c.data.resolution,
                c.data.fps,
                c.data.sample_rate,
                c.data.mask_fraction,
                c.model.autoencoder.kind,
                c.model.latent_channels(),
                c.latent_side(),
                c.latent_side()
            )),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `lrs2` / `videos`: the ingest with a progress bar and its summary line; `Err` is the exit
/// code of a configuration error (already printed).
fn run_ingest(layout: Layout, args: IngestArgs) -> Result<anyhow::Result<String>, ExitCode> {
    let IngestArgs {
        root,
        split,
        out,
        stage,
        config,
        batch,
        half,
        encode_threads,
        rebuild,
    } = args;
    let (publish, dir) = ingest_target(&out, stage)?;
    let cfg = match config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let Ranks { rank, world, .. } = match Ranks::from_env() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(2));
        }
    };
    // The encoder runs while the decoding threads (rayon's, one per core by default) work: with
    // more libtorch threads than the cores left, OpenMP's idle workers spin on the cores the
    // decoders and their ffmpeg processes need (docs/dataprep.md, "Threads").
    tch::set_num_threads(encode_threads as i32);
    let opts = ingest::IngestOptions {
        root,
        layout,
        split,
        out: dir,
        batch,
        half,
        rank,
        world,
        rebuild,
        publish,
    };
    let bar = Progress::new(rank == 0, layout.name(), "clip", 0, 0);
    let start = std::time::Instant::now();
    let r = ingest::ingest(&opts, &cfg, |done, total, frames| {
        bar.set_total(total as u64);
        bar.set(done as u64);
        bar.message(|| {
            format!(
                "{:.0} frames/s",
                frames as f64 / start.elapsed().as_secs_f64().max(1e-3)
            )
        });
    });
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    Ok(r.map(|rep| rep.summary(rank, world, secs, &out))
        .map_err(anyhow::Error::from))
}

/// The publisher of an ingest to object storage, shared by its decoding threads.
type Publisher = std::sync::Arc<syncdiff_dataset::publish::Publish>;

/// Where an ingest writes: `--out` on disk, or a staging directory (`--stage`, else the default
/// beside the temporary directory) published to the `--out` URL. `Err`: exit code 2, printed.
fn ingest_target(
    out: &str,
    stage: Option<PathBuf>,
) -> Result<(Option<Publisher>, PathBuf), ExitCode> {
    let usage = |e: &dyn std::fmt::Display| {
        eprintln!("error: --out {e}");
        ExitCode::from(2)
    };
    let publish = if out.contains("://") && !out.starts_with("file://") {
        let p = syncdiff_dataset::publish::Publish::open(out).map_err(|e| usage(&e))?;
        Some(std::sync::Arc::new(p))
    } else {
        None
    };
    let dir = match (&publish, stage) {
        (Some(_), Some(stage)) => stage,
        (Some(_), None) => syncdiff_dataset::publish::default_stage(out),
        (None, _) => PathBuf::from(out.strip_prefix("file://").unwrap_or(out)),
    };
    syncdiff_dataprep::outpath::output_dir(&dir).map_err(|e| usage(&e))?;
    if let Some(p) = &publish {
        eprintln!("publishing to {} (staging in {})", p.url(), dir.display());
    }
    Ok((publish, dir))
}

/// `faces`: the front-end on one video, pictures of every `every`-th frame, and a summary.
fn faces(
    input: &std::path::Path,
    out: &std::path::Path,
    config: &ConfigArgs,
    every: u32,
    seconds: f64,
) -> anyhow::Result<String> {
    use syncdiff_dataprep::face::FrontEnd;
    let cfg = config.load()?;
    let face_cfg = &cfg.data.face;
    let fe = FrontEnd::new(face_cfg)?;
    let v = Decoded::read(input, seconds)?;
    let bar = Progress::new(true, "faces", "frame", 0, v.frames as u64);
    let mut tracker = fe.tracker(v.w, v.h, v.fps);
    for (i, f) in v.rgb.chunks_exact(v.frame_len()).enumerate() {
        tracker.push(f)?;
        bar.set(i as u64 + 1);
    }
    bar.finish();
    let clip = tracker.finish();
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let drawn = draw_faces(&v, &clip, &cfg, every, out)?;
    if clip.with_face() == 0 {
        let hint = match fe.smaller_face(&v.rgb[..v.frame_len()], v.w, v.h)? {
            Some(r) => format!(
                " (a face of {:.0} px is in the first frame: lower data.face.min_face)",
                r.side()
            ),
            None => String::new(),
        };
        anyhow::bail!(
            "{}: no face of at least {} px (data.face.min_face) in {} frames{hint}",
            input.display(),
            face_cfg.min_face,
            v.frames
        );
    }
    Ok(format!(
        "{}: {}x{} at {:.2} fps, {} frames; a face in {} ({} segment(s) {:?}, {} scene cut(s), detector on {} frames); {drawn} picture pair(s) in {}",
        input.display(),
        v.w,
        v.h,
        v.fps,
        v.frames,
        clip.with_face(),
        clip.segments.len(),
        clip.segments,
        clip.cuts.len(),
        clip.detector_runs,
        out.display()
    ))
}

/// The first seconds of a video, decoded at its own size.
struct Decoded {
    rgb: Vec<u8>,
    w: u32,
    h: u32,
    fps: f64,
    frames: usize,
}

impl Decoded {
    fn read(input: &std::path::Path, seconds: f64) -> anyhow::Result<Self> {
        use syncdiff_dataprep::video;
        let info = video::probe(input)?;
        video::check_pixel_format(input, &info.pix_fmt)?;
        let (w, h) = (info.width, info.height);
        anyhow::ensure!(
            w > 0 && h > 0,
            "{}: no frame size in the video stream",
            input.display()
        );
        let fps = if info.fps > 0.0 { info.fps } else { 25.0 };
        let rgb = video::decode_frames_upto(input, w, h, Some(seconds))?;
        let frames = rgb.len() / (w * h * 3) as usize;
        anyhow::ensure!(
            frames > 0,
            "{}: no frames decoded in the first {seconds} s",
            input.display()
        );
        Ok(Self {
            rgb,
            w,
            h,
            fps,
            frames,
        })
    }

    fn frame_len(&self) -> usize {
        (self.w * self.h * 3) as usize
    }
}

/// `frame-NNNNN.png` (box, landmarks, crop and mask drawn) and `crop-NNNNN.png` (the crop) of
/// every `every`-th frame with a face; returns how many pairs.
fn draw_faces(
    v: &Decoded,
    clip: &syncdiff_dataprep::face::ClipFaces,
    cfg: &syncdiff_model::config::Config,
    every: u32,
    out: &std::path::Path,
) -> anyhow::Result<usize> {
    use syncdiff_dataprep::face::{overlay, CropTransform};
    use syncdiff_dataprep::video;
    let (w, h, len) = (v.w, v.h, v.frame_len());
    let (face_cfg, s) = (&cfg.data.face, cfg.data.resolution);
    let mut drawn = 0;
    for i in (0..v.frames).step_by(every as usize) {
        let Some(face) = &clip.frames[i] else {
            continue;
        };
        let src = &v.rgb[i * len..(i + 1) * len];
        let mut pic = src.to_vec();
        overlay(&mut pic, w, h, face, face_cfg, cfg.data.mask_fraction, s);
        video::write_png(&out.join(format!("frame-{i:05}.png")), &pic, w, h)?;
        let crop = CropTransform::new(face_cfg, &face.rect, w, h, s).warp(src, w, h);
        video::write_png(&out.join(format!("crop-{i:05}.png")), &crop, s, s)?;
        drawn += 1;
    }
    Ok(drawn)
}

/// `inspect`: clips, frames, shards, sizes, compression ratio, format, autoencoder.
fn inspect(path: &std::path::Path) -> anyhow::Result<String> {
    let ds = Dataset::open(path)?;
    let m = ds.manifest();
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    let [c, h, w] = m.meta.latent_shape;
    // Uncompressed: two float16 latents and one float32 mel row per frame.
    let raw = m.frames() * (2 * 2 * c * h * w + 4 * syncdiff_dataset::shards::MEL_DIM);
    Ok(format!(
        "{}\n  format version {}, split {}, sha256 {}\n  clips {}, frames {}, shards {}\n  latent {c}x{h}x{w} from {} (weights sha256 {})\n  {:.1} MiB on disk, {:.1} MiB uncompressed: compression {:.2}x",
        path.display(),
        m.meta.format_version,
        m.meta.split,
        ds.sha256(),
        m.clips(),
        m.frames(),
        m.shards.len(),
        m.meta.autoencoder,
        m.meta.autoencoder_sha256,
        bytes as f64 / (1 << 20) as f64,
        raw as f64 / (1 << 20) as f64,
        raw as f64 / bytes.max(1) as f64,
    ))
}
