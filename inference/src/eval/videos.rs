//! Scoring generated videos against their ground truth (`syncdiff eval`): for each video of a
//! ground-truth directory with a prediction of the same name, PSNR and SSIM per frame (full frame
//! and mouth region), LSE-C/D with a SyncNet, LPIPS, WER through a lip reader, and on the
//! synthetic data set the mouth opening read back from the frames.

use std::path::{Path, PathBuf};

use serde::Serialize;
use syncdiff_dataprep::face::{ClipFaces, CropTransform, FaceError, FrontEnd, Rect};
use syncdiff_dataprep::video::{self, VideoError};
use syncdiff_model::config::{FaceConfig, FaceCrop, FaceDetectorKind};

use super::{lpips, lse, mouth, psnr, ssim, wer, Lpips, Lse, MetricError, Region, ScriptError};
use super::{SyncNet, View, CROP};

/// Why scoring stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file or directory is missing or unusable.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// ffmpeg could not read a video.
    #[error(transparent)]
    Video(#[from] VideoError),
    /// The face front-end could not run.
    #[error(transparent)]
    Face(#[from] FaceError),
    /// Frames that cannot be compared.
    #[error(transparent)]
    Metric(#[from] MetricError),
    /// A metric network failed on a video.
    #[error("{path}: {source}")]
    Net {
        /// The video.
        path: PathBuf,
        /// What failed.
        source: ScriptError,
    },
    /// A reference (transcript, mouth openings) or the lip reader failed.
    #[error(transparent)]
    Reference(#[from] wer::ReferenceError),
}

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
    /// The box in pixels of a `width` x `height` frame.
    pub fn region(&self, width: usize, height: usize) -> Region {
        let [x, y, w, h] = self.0;
        Region {
            x: (x * width as f64) as usize,
            y: (y * height as f64) as usize,
            w: ((w * width as f64) as usize).max(1),
            h: ((h * height as f64) as usize).max(1),
        }
    }
}

/// What to score and how (the metric networks are [`Nets`]).
#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// The mouth region without `faces`.
    pub mouth: MouthBox,
    /// Audio-video offsets LSE searches, +- frames.
    pub vshift: i64,
    /// Find the face in every frame (dlib HOG) as syncnet_python crops faces.
    pub faces: bool,
    /// With `faces`: the smallest face looked for, in pixels.
    pub min_face: u32,
    /// Where `<name>.txt` and `<name>.mouth.txt` are (`None`: beside the ground truth).
    pub truth_dir: Option<PathBuf>,
    /// The lip reader's command for WER (`{video}` is replaced).
    pub wer_cmd: Option<String>,
    /// Score the mouth opening against `<name>.mouth.txt` (synthetic data set).
    pub openings: bool,
}

/// The loaded metric networks.
#[derive(Debug, Default)]
pub struct Nets {
    /// SyncNet for LSE-C/D.
    pub syncnet: Option<SyncNet>,
    /// LPIPS.
    pub lpips: Option<Lpips>,
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

/// The mean of the finite values (NaN when there are none).
pub fn mean_finite(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// The `*.mp4` names of `gt`, sorted, each with a prediction in `pred`.
pub fn pairs(pred: &Path, gt: &Path) -> Result<Vec<String>, EvalError> {
    let input = |path: &Path, message: String| EvalError::Input {
        path: path.to_path_buf(),
        message,
    };
    let mut names: Vec<String> = std::fs::read_dir(gt)
        .map_err(|e| input(gt, e.to_string()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".mp4"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(input(gt, "no .mp4 files".into()));
    }
    if let Some(name) = names.iter().find(|n| !pred.join(n).exists()) {
        let message = format!("no prediction for the ground truth {name}");
        return Err(input(&pred.join(name), message));
    }
    Ok(names)
}

/// Both videos decoded at the ground truth's size (warning when the prediction is scaled, or
/// when their lengths differ), and the frames they have in common.
struct Pair {
    a: Vec<u8>,
    b: Vec<u8>,
    w: usize,
    h: usize,
    n: usize,
    fps: f64,
}

impl Pair {
    fn read(name: &str, gt: &Path, pred: &Path) -> Result<Self, EvalError> {
        let info = video::probe(gt)?;
        let a = video::decode_frames(gt, info.width, info.height)?;
        // The prediction is compared at the ground truth's size: say so when that means scaling.
        let pi = video::probe(pred)?;
        let (gw, gh) = (info.width, info.height);
        if (pi.width, pi.height) != (gw, gh) {
            eprintln!(
                "warning: {name}: the prediction is {}x{}, the ground truth {gw}x{gh}; the \
                 prediction is scaled to {gw}x{gh} before scoring (scores then include the \
                 scaling's blur)",
                pi.width, pi.height
            );
        }
        let b = video::decode_frames(pred, gw, gh)?;
        let (w, h) = (gw as usize, gh as usize);
        let (na, nb) = (a.len() / (w * h * 3), b.len() / (w * h * 3));
        if na != nb {
            let n = na.min(nb);
            eprintln!("warning: {name}: {na} ground-truth frames, {nb} predicted; comparing the first {n}");
        }
        let (n, fps) = (na.min(nb), info.fps);
        Ok(Self { a, b, w, h, n, fps })
    }

    /// The ground truth's and the prediction's frame `i`.
    fn frames(&self, i: usize) -> (View<'_>, View<'_>) {
        let size = self.w * self.h * 3;
        let frame = i * size..(i + 1) * size;
        let x = View {
            data: &self.a[frame.clone()],
            width: self.w,
            height: self.h,
            channels: 3,
        };
        (
            x,
            View {
                data: &self.b[frame],
                ..x
            },
        )
    }

    /// The common frames of (ground truth, prediction).
    fn common(&self) -> (&[u8], &[u8]) {
        let len = self.n * self.w * self.h * 3;
        (&self.a[..len], &self.b[..len])
    }
}

/// Scores the prediction `pred` of the ground truth `gt` (named `name`).
pub fn score(
    name: &str,
    gt: &Path,
    pred: &Path,
    opts: &ScoreOptions,
    nets: &Nets,
) -> Result<VideoScores, EvalError> {
    let pair = Pair::read(name, gt, pred)?;
    let fe = if opts.faces {
        Some(FrontEnd::new(&face_config(opts))?)
    } else {
        None
    };
    let regions = mouth_regions(&pair, fe.as_ref(), opts, gt)?;
    let mut per_frame = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let (x, y) = pair.frames(i);
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
    let net_error = |source| EvalError::Net {
        path: pred.to_path_buf(),
        source,
    };
    let lse = match &nets.syncnet {
        Some(net) => Some(sync_scores(net, fe.as_ref(), opts, pred)?),
        None => None,
    };
    let (a, b) = pair.common();
    let lpips = match &nets.lpips {
        Some(net) => Some(lpips(net, b, a, pair.w, pair.h).map_err(net_error)?),
        None => None,
    };
    // References default to the ground truth's directory (`--gt`).
    let truth_dir = opts
        .truth_dir
        .as_deref()
        .unwrap_or(gt.parent().unwrap_or(Path::new(".")));
    let stem = name.trim_end_matches(".mp4");
    let wer = match &opts.wer_cmd {
        Some(cmd) => Some(word_errors(
            cmd,
            pred,
            &truth_dir.join(format!("{stem}.txt")),
        )?),
        None => None,
    };
    let openings = match opts.openings {
        true => Some(openings(
            &pair,
            &truth_dir.join(format!("{stem}.mouth.txt")),
        )?),
        false => None,
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

/// The mouth region of each common frame: fixed (`mouth`), or the lower half of the ground
/// truth's face (`faces`; `None` where a frame has none).
fn mouth_regions(
    pair: &Pair,
    fe: Option<&FrontEnd>,
    opts: &ScoreOptions,
    gt: &Path,
) -> Result<Vec<Option<Region>>, EvalError> {
    let Some(fe) = fe else {
        return Ok(vec![Some(opts.mouth.region(pair.w, pair.h)); pair.n]);
    };
    let (w, h) = (pair.w as u32, pair.h as u32);
    let faces = track(fe, pair.common().0, w, h, pair.fps)?;
    if faces.with_face() == 0 {
        return Err(EvalError::Input {
            path: gt.to_path_buf(),
            message: format!("no face found for --faces (--min-face {})", opts.min_face),
        });
    }
    Ok(faces
        .frames
        .iter()
        .map(|f| f.as_ref().and_then(|f| lower_half(&f.rect, pair.w, pair.h)))
        .collect())
}

/// LSE-C/D of the prediction with its own audio track (on face crops with `faces`).
fn sync_scores(
    net: &SyncNet,
    fe: Option<&FrontEnd>,
    opts: &ScoreOptions,
    pred: &Path,
) -> Result<Lse, EvalError> {
    let size = if fe.is_some() { None } else { Some(CROP) };
    let av = video::decode_av(pred, size, 16_000)?;
    if !av.has_audio {
        return Err(EvalError::Input {
            path: pred.to_path_buf(),
            message: "no audio track to score lip sync against".into(),
        });
    }
    let (rgb, audio) = match fe {
        None => (av.rgb, av.audio),
        Some(fe) => face_crops(fe, &face_config(opts), &av, pred)?,
    };
    lse(net, &rgb, &audio, opts.vshift, 20).map_err(|source| EvalError::Net {
        path: pred.to_path_buf(),
        source,
    })
}

/// Word errors of the lip reader's transcript of `pred` against the reference file.
fn word_errors(cmd: &str, pred: &Path, reference: &Path) -> Result<wer::Wer, EvalError> {
    let reference = wer::read_reference(reference)?;
    Ok(wer::score(cmd, pred, &reference)?)
}

/// The mouth opening read from the prediction against the true openings.
fn openings(pair: &Pair, truth: &Path) -> Result<OpeningScores, EvalError> {
    let truth = mouth::read_truth(truth)?;
    let (a, b) = pair.common();
    let predicted = mouth::openings(b, pair.w, pair.h);
    let on_gt = mouth::openings(a, pair.w, pair.h);
    let first = vec![on_gt.first().copied().unwrap_or(0.0); pair.n];
    let corr = mouth::pearson(&predicted, &truth);
    Ok(OpeningScores {
        mae: mouth::mae(&predicted, &truth),
        corr: corr.is_finite().then_some(corr),
        copy_identity_mae: mouth::mae(&first, &truth),
        reader_mae_gt: mouth::mae(&on_gt, &truth),
        predicted,
    })
}

/// The face settings of `faces`: HOG, square face crops with syncnet_python's 0.4 margin.
fn face_config(opts: &ScoreOptions) -> FaceConfig {
    FaceConfig {
        detector: FaceDetectorKind::DlibHog,
        crop: FaceCrop::Face,
        margin: 0.4,
        min_face: opts.min_face,
        ..FaceConfig::default()
    }
}

/// The face of every frame of an RGB24 video.
fn track(fe: &FrontEnd, rgb: &[u8], w: u32, h: u32, fps: f64) -> Result<ClipFaces, EvalError> {
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

/// SyncNet's input with `faces`: the prediction's face cropped square (CROP pixels) over its
/// longest face track, and the audio of those frames.
fn face_crops(
    fe: &FrontEnd,
    cfg: &FaceConfig,
    av: &video::DecodedAv,
    pred: &Path,
) -> Result<(Vec<u8>, Vec<i16>), EvalError> {
    let input = |message: String| EvalError::Input {
        path: pred.to_path_buf(),
        message,
    };
    let faces = track(fe, &av.rgb, av.width, av.height, av.fps)?;
    let Some(seg) = faces.segments.iter().max_by_key(|s| s.len()).cloned() else {
        return Err(input(format!(
            "no face found for LSE (--min-face {})",
            cfg.min_face
        )));
    };
    let len = (av.width * av.height * 3) as usize;
    let mut rgb = Vec::with_capacity(seg.len() * (CROP * CROP * 3) as usize);
    for i in seg.clone() {
        let Some(f) = &faces.frames[i] else {
            return Err(input(format!("frame {i} of a face track has no face")));
        };
        let crop = CropTransform::new(cfg, &f.rect, av.width, av.height, CROP);
        rgb.extend(crop.warp(&av.rgb[i * len..(i + 1) * len], av.width, av.height));
    }
    // 16 kHz audio: 640 samples per 25 fps frame.
    let per = (16_000.0 / av.fps).round() as usize;
    let end = (seg.end * per).min(av.audio.len());
    let audio = av.audio[(seg.start * per).min(end)..end].to_vec();
    Ok((rgb, audio))
}
