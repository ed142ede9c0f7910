//! `syncdiff eval --pred DIR --gt DIR`: for every video of `gt` with a prediction of the same
//! name in `pred`: PSNR and SSIM (scikit-image definitions) per frame and averaged, on the full
//! frame and the mouth region; LSE-C/D with `--syncnet`; LPIPS with `--lpips`; WER with
//! `--wer-cmd`; and, on the synthetic data set, the mouth-opening error and correlation with
//! `--openings`. Writes a JSON report and returns a table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use syncdiff_dataprep::face::{ClipFaces, CropTransform, FrontEnd, Rect};
use syncdiff_dataprep::video;
use syncdiff_model::config::{FaceConfig, FaceCrop, FaceDetectorKind};
use syncdiff_runtime::launch::DeviceChoice;

use syncdiff_inference::eval::{self, mouth, psnr, ssim, wer, Lpips, Lse, Region, SyncNet, View};

/// The mouth region as fractions of the frame: x, y, width, height.
#[derive(Debug, Clone, Copy)]
pub struct MouthBox(pub [f64; 4]);

impl Default for MouthBox {
    /// The lower-middle part of a face crop (where the mask of the masked frame lies).
    fn default() -> Self {
        Self([0.25, 0.5, 0.5, 0.5])
    }
}

impl std::str::FromStr for MouthBox {
    type Err = String;

    /// Parses `x,y,w,h` fractions.
    fn from_str(s: &str) -> Result<Self, String> {
        let v: Vec<f64> = s
            .split(',')
            .map(|x| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let [x, y, w, h] = v[..] else {
            return Err("expected x,y,w,h as fractions of the frame".into());
        };
        if x < 0.0 || y < 0.0 || w <= 0.0 || h <= 0.0 || x + w > 1.0 || y + h > 1.0 {
            return Err("the box must lie inside [0, 1] x [0, 1]".into());
        }
        Ok(Self([x, y, w, h]))
    }
}

impl MouthBox {
    fn region(&self, width: usize, height: usize) -> Region {
        let [x, y, w, h] = self.0;
        Region {
            x: (x * width as f64) as usize,
            y: (y * height as f64) as usize,
            w: ((w * width as f64) as usize).max(1),
            h: ((h * height as f64) as usize).max(1),
        }
    }
}

/// `syncdiff eval`: what to score and how.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory of generated videos.
    #[arg(long)]
    pred: PathBuf,
    /// Directory of ground-truth videos (*.mp4); each needs a prediction of the same name.
    #[arg(long)]
    gt: PathBuf,
    /// Mouth box as fractions of the frame: x,y,w,h.
    #[arg(long, default_value = "0.25,0.5,0.5,0.5", value_name = "X,Y,W,H")]
    mouth: MouthBox,
    /// Where to write the JSON report.
    #[arg(long, default_value = "eval.json")]
    report: PathBuf,
    /// SyncNet for LSE-C and LSE-D: syncnet_python's syncnet_v2.model as it is downloaded (a
    /// state dict, read without executing it), or TorchScript with forward_lip and forward_aud.
    #[arg(long)]
    syncnet: Option<PathBuf>,
    /// Audio-video offsets LSE searches, +- frames.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(i64).range(1..))]
    vshift: i64,
    /// LPIPS: the lpips package's linear weights (lpips/weights/v0.1/alex.pth, with --alexnet),
    /// or TorchScript (forward(x, y) on [-1, 1] images).
    #[arg(long)]
    lpips: Option<PathBuf>,
    /// AlexNet trunk for --lpips alex.pth: torchvision's state dict (alexnet-owt-7be5be79.pth).
    #[arg(long, requires = "lpips")]
    alexnet: Option<PathBuf>,
    /// Lip reader for WER: a shell command whose last stdout line is the transcript of
    /// `{video}`; references from `<name>.txt` (LRS2 `Text:` line) in --truth-dir.
    #[arg(long)]
    wer_cmd: Option<String>,
    /// Synthetic data set: mouth opening read from the frames vs `<name>.mouth.txt`.
    #[arg(long)]
    openings: bool,
    /// Find the face in every frame (dlib HOG, docs/faces.md), as syncnet_python crops faces
    /// before scoring: PSNR/SSIM of the mouth take the lower half of the ground truth's face
    /// box (not --mouth), and LSE scores square crops of the prediction's face over its
    /// longest face track.
    #[arg(long)]
    faces: bool,
    /// With --faces: the smallest face looked for, in pixels.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(20..))]
    min_face: u32,
    /// Where the `.mouth.txt` and `.txt` references are [default: --gt].
    #[arg(long)]
    truth_dir: Option<PathBuf>,
    /// Device of the metric networks (SyncNet, LPIPS): cpu, cuda, cuda:N, auto (a GPU when there is one).
    #[arg(long, default_value = "cpu", value_name = "auto|cpu|cuda|cuda:N")]
    device: DeviceChoice,
}

/// Mouth-opening scores of one video (synthetic data set).
#[derive(Debug, Clone, Serialize)]
pub struct OpeningScores {
    /// Mean absolute error of the opening read from the prediction against the truth.
    pub mae: f64,
    /// Pearson correlation of the two (null when either is constant).
    pub corr: Option<f64>,
    /// The error of holding the ground truth's first frame ("copy the identity frame").
    pub copy_identity_mae: f64,
    /// The reader's own error on the ground-truth frames.
    pub reader_mae_gt: f64,
    /// Openings read from the prediction.
    pub predicted: Vec<f64>,
}

/// Scores of one video.
#[derive(Debug, Clone, Serialize)]
pub struct VideoScores {
    /// File name.
    pub name: String,
    /// Frames compared.
    pub frames: usize,
    /// Mean PSNR (dB) over frames with a finite PSNR (identical frames are skipped).
    pub psnr: f64,
    /// Mean SSIM.
    pub ssim: f64,
    /// Mean PSNR of the mouth region.
    pub mouth_psnr: f64,
    /// Mean SSIM of the mouth region.
    pub mouth_ssim: f64,
    /// LSE-C/D of the prediction (with its own audio track).
    pub lse: Option<Lse>,
    /// Mean LPIPS against the ground truth.
    pub lpips: Option<f64>,
    /// Lip-reading word errors.
    pub wer: Option<wer::Wer>,
    /// Mouth-opening scores.
    pub openings: Option<OpeningScores>,
    /// Per-frame [psnr, ssim, mouth psnr, mouth ssim] (infinite PSNR written as null).
    pub per_frame: Vec<[f64; 4]>,
}

fn mean_finite(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// The loaded metric networks.
struct Nets {
    syncnet: Option<SyncNet>,
    lpips: Option<Lpips>,
}

fn score(
    name: &str,
    gt: &Path,
    pred: &Path,
    opts: &Args,
    nets: &Nets,
) -> anyhow::Result<VideoScores> {
    let info = video::probe(gt)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let a = video::decode_frames(gt, info.width, info.height)?;
    // The prediction is compared at the ground truth's size: say so when that means scaling.
    let pi = video::probe(pred)?;
    if (pi.width, pi.height) != (info.width, info.height) {
        eprintln!(
            "warning: {name}: the prediction is {}x{}, the ground truth {}x{}; the prediction is \
             scaled to {}x{} before scoring (scores then include the scaling's blur)",
            pi.width, pi.height, info.width, info.height, info.width, info.height
        );
    }
    let b = video::decode_frames(pred, info.width, info.height)?;
    let size = w * h * 3;
    let (na, nb) = (a.len() / size, b.len() / size);
    if na != nb {
        eprintln!(
            "warning: {name}: {na} ground-truth frames, {nb} predicted; comparing the first {}",
            na.min(nb)
        );
    }
    let n = na.min(nb);
    let fe = if opts.faces {
        Some(FrontEnd::new(&face_config(opts))?)
    } else {
        None
    };
    // The mouth region of each frame: fixed (--mouth), or from the ground truth's face.
    let regions: Vec<Option<Region>> = match &fe {
        None => vec![Some(opts.mouth.region(w, h)); n],
        Some(fe) => {
            let faces = track(fe, &a[..n * size], info.width, info.height, info.fps)?;
            if faces.with_face() == 0 {
                bail!(
                    "{}: no face found for --faces (--min-face {})",
                    gt.display(),
                    opts.min_face
                );
            }
            faces
                .frames
                .iter()
                .map(|f| f.as_ref().and_then(|f| lower_half(&f.rect, w, h)))
                .collect()
        }
    };
    let mut per_frame = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let frame = i * size..(i + 1) * size;
        let x = View {
            data: &a[frame.clone()],
            width: w,
            height: h,
            channels: 3,
        };
        let y = View {
            data: &b[frame],
            ..x
        };
        // A frame without a face has no mouth score (NaN: left out of the means).
        let (mouth_psnr, mouth_ssim) = match region {
            Some(r) => (psnr(&x, &y, Some(*r))?, ssim(&x, &y, Some(*r))?),
            None => (f64::NAN, f64::NAN),
        };
        per_frame.push([
            psnr(&x, &y, None)?,
            ssim(&x, &y, None)?,
            mouth_psnr,
            mouth_ssim,
        ]);
    }
    let lse = match &nets.syncnet {
        Some(net) => {
            let size = if fe.is_some() { None } else { Some(eval::CROP) };
            let av = video::decode_av(pred, size, 16_000)?;
            if !av.has_audio {
                bail!(
                    "{}: no audio track to score lip sync against",
                    pred.display()
                );
            }
            let (rgb, audio) = match &fe {
                None => (av.rgb, av.audio),
                Some(fe) => face_crops(fe, &face_config(opts), &av, pred)?,
            };
            Some(
                eval::lse(net, &rgb, &audio, opts.vshift, 20)
                    .with_context(|| pred.display().to_string())?,
            )
        }
        None => None,
    };
    let lpips = match &nets.lpips {
        Some(net) => Some(
            eval::lpips(net, &b[..n * size], &a[..n * size], w, h)
                .with_context(|| pred.display().to_string())?,
        ),
        None => None,
    };
    let stem = name.trim_end_matches(".mp4");
    // References default to the ground truth's directory (`--gt`).
    let truth_dir = opts
        .truth_dir
        .as_deref()
        .unwrap_or(gt.parent().unwrap_or(Path::new(".")));
    let wer = match &opts.wer_cmd {
        Some(cmd) => {
            let reference = wer::read_reference(&truth_dir.join(format!("{stem}.txt")))
                .map_err(anyhow::Error::msg)?;
            Some(wer::score(cmd, pred, &reference).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let openings = if opts.openings {
        let truth = mouth::read_truth(&truth_dir.join(format!("{stem}.mouth.txt")))
            .map_err(anyhow::Error::msg)?;
        let predicted = mouth::openings(&b[..n * size], w, h);
        let on_gt = mouth::openings(&a[..n * size], w, h);
        let first = vec![on_gt.first().copied().unwrap_or(0.0); n];
        let corr = mouth::pearson(&predicted, &truth);
        Some(OpeningScores {
            mae: mouth::mae(&predicted, &truth),
            corr: corr.is_finite().then_some(corr),
            copy_identity_mae: mouth::mae(&first, &truth),
            reader_mae_gt: mouth::mae(&on_gt, &truth),
            predicted,
        })
    } else {
        None
    };
    let col = |k: usize| mean_finite(per_frame.iter().map(|f| f[k]));
    Ok(VideoScores {
        name: name.to_string(),
        frames: per_frame.len(),
        psnr: col(0),
        ssim: col(1),
        mouth_psnr: col(2),
        mouth_ssim: col(3),
        lse,
        lpips,
        wer,
        openings,
        per_frame,
    })
}

/// The face settings of --faces: HOG, square face crops with syncnet_python's 0.4 margin.
fn face_config(opts: &Args) -> FaceConfig {
    FaceConfig {
        detector: FaceDetectorKind::DlibHog,
        crop: FaceCrop::Face,
        margin: 0.4,
        min_face: opts.min_face,
        ..FaceConfig::default()
    }
}

/// The face of every frame of an RGB24 video.
fn track(fe: &FrontEnd, rgb: &[u8], w: u32, h: u32, fps: f64) -> anyhow::Result<ClipFaces> {
    let mut t = fe.tracker(w, h, fps);
    for f in rgb.chunks_exact((w * h * 3) as usize) {
        t.push(f)?;
    }
    Ok(t.finish())
}

/// The lower half of a face box, inside the frame (`None` when nothing of it is).
fn lower_half(r: &Rect, w: usize, h: usize) -> Option<Region> {
    let clamp = |v: f32, hi: usize| (v.max(0.0) as usize).min(hi);
    let (x0, x1) = (clamp(r.x0, w), clamp(r.x1, w));
    let (y0, y1) = (clamp(r.y0 + r.height() / 2.0, h), clamp(r.y1, h));
    (x1 > x0 && y1 > y0).then_some(Region {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    })
}

/// SyncNet's input with --faces: the prediction's face cropped square (eval::CROP pixels) over
/// its longest face track, and the audio of those frames.
fn face_crops(
    fe: &FrontEnd,
    cfg: &FaceConfig,
    av: &video::DecodedAv,
    pred: &Path,
) -> anyhow::Result<(Vec<u8>, Vec<i16>)> {
    let faces = track(fe, &av.rgb, av.width, av.height, av.fps)?;
    let Some(seg) = faces.segments.iter().max_by_key(|s| s.len()).cloned() else {
        bail!(
            "{}: no face found for LSE (--min-face {})",
            pred.display(),
            cfg.min_face
        );
    };
    let len = (av.width * av.height * 3) as usize;
    let mut rgb = Vec::with_capacity(seg.len() * (eval::CROP * eval::CROP * 3) as usize);
    for i in seg.clone() {
        let Some(f) = &faces.frames[i] else {
            bail!("{}: frame {i} of a face track has no face", pred.display());
        };
        let crop = CropTransform::new(cfg, &f.rect, av.width, av.height, eval::CROP);
        rgb.extend(crop.warp(&av.rgb[i * len..(i + 1) * len], av.width, av.height));
    }
    // 16 kHz audio: 640 samples per 25 fps frame.
    let per = (16_000.0 / av.fps).round() as usize;
    let end = (seg.end * per).min(av.audio.len());
    let audio = av.audio[(seg.start * per).min(end)..end].to_vec();
    Ok((rgb, audio))
}

/// One column of the table: header, width, and the value of a video (None: not computed).
type Column = (&'static str, usize, fn(&VideoScores) -> Option<f64>);

fn columns(opts: &Args) -> Vec<Column> {
    let mut c: Vec<Column> = vec![
        ("PSNR", 8, |v| Some(v.psnr)),
        ("SSIM", 7, |v| Some(v.ssim)),
        ("mouth PSNR", 11, |v| Some(v.mouth_psnr)),
        ("mouth SSIM", 11, |v| Some(v.mouth_ssim)),
    ];
    if opts.syncnet.is_some() {
        c.push(("LSE-C", 7, |v| v.lse.map(|l| l.lse_c)));
        c.push(("LSE-D", 7, |v| v.lse.map(|l| l.lse_d)));
    }
    if opts.lpips.is_some() {
        c.push(("LPIPS", 7, |v| v.lpips));
    }
    if opts.wer_cmd.is_some() {
        c.push(("WER %", 7, |v| {
            v.wer
                .as_ref()
                .map(|w| 100.0 * w.errors as f64 / w.words.max(1) as f64)
        }));
    }
    if opts.openings {
        c.push(("open MAE", 9, |v| v.openings.as_ref().map(|o| o.mae)));
        c.push(("open corr", 10, |v| {
            v.openings.as_ref().and_then(|o| o.corr)
        }));
        c.push(("copy-id MAE", 12, |v| {
            v.openings.as_ref().map(|o| o.copy_identity_mae)
        }));
        c.push(("reader MAE", 11, |v| {
            v.openings.as_ref().map(|o| o.reader_mae_gt)
        }));
    }
    c
}

/// Scores every `*.mp4` of `gt` against the same name in `pred`; writes the JSON report.
pub fn run(opts: Args) -> anyhow::Result<String> {
    let (pred, gt) = (opts.pred.as_path(), opts.gt.as_path());
    let device = opts.device.device(0).map_err(anyhow::Error::msg)?;
    // The report's place is made and checked before any scoring: a directory, a device node, a
    // FIFO or a socket is refused; a symbolic link is written through.
    syncdiff_dataprep::outpath::prepare_file(&opts.report)
        .map_err(|e| anyhow::anyhow!("--report {e}"))?;
    let mut names: Vec<String> = std::fs::read_dir(gt)
        .with_context(|| format!("--gt {}", gt.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".mp4"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("--gt {}: no .mp4 files", gt.display());
    }
    let nets = Nets {
        syncnet: opts
            .syncnet
            .as_deref()
            .map(|p| SyncNet::load(p, device))
            .transpose()?,
        lpips: opts
            .lpips
            .as_deref()
            .map(|p| Lpips::load(p, opts.alexnet.as_deref(), device))
            .transpose()?,
    };
    let mut videos = Vec::new();
    for name in &names {
        let p = pred.join(name);
        if !p.exists() {
            bail!("{}: no prediction for the ground truth {name}", p.display());
        }
        videos.push(score(name, &gt.join(name), &p, &opts, &nets)?);
    }
    let cols = columns(&opts);
    let mean = |f: fn(&VideoScores) -> Option<f64>| mean_finite(videos.iter().filter_map(f));
    let mut summary = serde_json::Map::new();
    summary.insert("videos".into(), videos.len().into());
    summary.insert(
        "frames".into(),
        videos.iter().map(|v| v.frames).sum::<usize>().into(),
    );
    for (name, _, f) in &cols {
        let key = name
            .to_lowercase()
            .replace([' ', '-'], "_")
            .replace('%', "pct");
        let v = mean(*f);
        summary.insert(
            key,
            if v.is_finite() {
                v.into()
            } else {
                serde_json::Value::Null
            },
        );
    }
    if opts.wer_cmd.is_some() {
        let (e, w) = videos
            .iter()
            .filter_map(|v| v.wer.as_ref())
            .fold((0, 0), |(e, w), x| (e + x.errors, w + x.words));
        summary.insert(
            "corpus_wer_pct".into(),
            (100.0 * e as f64 / w.max(1) as f64).into(),
        );
    }
    summary.insert("mouth_box".into(), opts.mouth.0.to_vec().into());
    let json = serde_json::json!({ "summary": summary, "videos": videos });
    syncdiff_dataprep::outpath::write_atomic(&opts.report, &serde_json::to_vec_pretty(&json)?)
        .map_err(|e| anyhow::anyhow!("--report {e}"))?;
    let mut out = vec![format!("{:<20} {:>7}", "video", "frames")];
    for (name, width, _) in &cols {
        out[0] += &format!(" {name:>width$}");
    }
    let row = |label: &str, frames: usize, values: Vec<Option<f64>>| {
        let mut line = format!("{label:<20} {frames:>7}");
        for ((name, width, _), value) in cols.iter().zip(values) {
            let prec = if name.contains("PSNR") || name.starts_with("WER") {
                3
            } else {
                4
            };
            line += &match value {
                Some(x) if x.is_finite() => format!(" {x:>width$.prec$}"),
                _ => format!(" {:>width$}", "-"),
            };
        }
        line
    };
    for v in &videos {
        out.push(row(
            &v.name,
            v.frames,
            cols.iter().map(|c| (c.2)(v)).collect(),
        ));
    }
    let total = videos.iter().map(|v| v.frames).sum();
    out.push(row(
        "mean",
        total,
        cols.iter().map(|c| Some(mean(c.2))).collect(),
    ));
    out.push(format!("report: {}", opts.report.display()));
    Ok(out.join("\n"))
}
