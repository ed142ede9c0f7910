//! `syncdiff eval --pred DIR --gt DIR`: for every video of `gt` with a prediction of the same
//! name in `pred`: PSNR and SSIM (scikit-image definitions) per frame and averaged, on the full
//! frame and the mouth region; LSE-C/D with `--syncnet`; LPIPS with `--lpips`; WER with
//! `--wer-cmd`; and, on the synthetic data set, the mouth-opening error and correlation with
//! `--openings`. Writes a JSON report and returns a table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use syncdiff_dataprep::launch::DeviceChoice;
use syncdiff_dataprep::video;

use syncdiff_trainer::eval::{self, mouth, psnr, ssim, wer, Lse, Region, Script, View};

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
    /// SyncNet as TorchScript (methods forward_lip, forward_aud): LSE-C and LSE-D.
    #[arg(long)]
    syncnet: Option<PathBuf>,
    /// Audio-video offsets LSE searches, +- frames.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(i64).range(1..))]
    vshift: i64,
    /// LPIPS as TorchScript (forward(x, y) on [-1, 1] images).
    #[arg(long)]
    lpips: Option<PathBuf>,
    /// Lip reader for WER: a shell command whose last stdout line is the transcript of
    /// `{video}`; references from `<name>.txt` (LRS2 `Text:` line) in --truth-dir.
    #[arg(long)]
    wer_cmd: Option<String>,
    /// Synthetic data set: mouth opening read from the frames vs `<name>.mouth.txt`.
    #[arg(long)]
    openings: bool,
    /// Where the `.mouth.txt` and `.txt` references are [default: --gt].
    #[arg(long)]
    truth_dir: Option<PathBuf>,
    /// Device of the TorchScript metrics: cpu, cuda, cuda:N, auto (a GPU when there is one).
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

/// The loaded TorchScript metrics.
struct Nets {
    syncnet: Option<Script>,
    lpips: Option<Script>,
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
    let region = opts.mouth.region(w, h);
    let mut per_frame = Vec::new();
    for i in 0..n {
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
        per_frame.push([
            psnr(&x, &y, None)?,
            ssim(&x, &y, None)?,
            psnr(&x, &y, Some(region))?,
            ssim(&x, &y, Some(region))?,
        ]);
    }
    let lse = match &nets.syncnet {
        Some(net) => {
            let av = video::decode_av(pred, Some(eval::CROP), 16_000)?;
            if !av.has_audio {
                bail!(
                    "{}: no audio track to score lip sync against",
                    pred.display()
                );
            }
            Some(
                eval::lse(net, &av.rgb, &av.audio, opts.vshift, 20)
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
    // The report's place is made and checked before any scoring.
    if let Some(dir) = opts.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "--report {}: cannot create {}",
                opts.report.display(),
                dir.display()
            )
        })?;
    }
    if opts.report.is_dir() {
        bail!(
            "--report {}: is a directory; give the report's file name",
            opts.report.display()
        );
    }
    let existed = opts.report.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&opts.report)
        .with_context(|| format!("--report {}: cannot write", opts.report.display()))?;
    if !existed {
        // Only a report that is complete is left behind.
        let _ = std::fs::remove_file(&opts.report);
    }
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
            .map(|p| Script::load(p, device))
            .transpose()?,
        lpips: opts
            .lpips
            .as_deref()
            .map(|p| Script::load(p, device))
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
    std::fs::write(&opts.report, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("--report {}", opts.report.display()))?;
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
