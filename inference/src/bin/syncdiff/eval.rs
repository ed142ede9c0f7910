//! `syncdiff eval --pred DIR --gt DIR`: for every video of `gt` with a prediction of the same
//! name in `pred`: PSNR and SSIM (scikit-image definitions) per frame and averaged, on the full
//! frame and the mouth region; LSE-C/D with `--syncnet`; LPIPS with `--lpips`; WER with
//! `--wer-cmd`; and, on the synthetic data set, the mouth-opening error and correlation with
//! `--openings`. Writes a JSON report and returns a table.

use std::path::PathBuf;

use syncdiff_runtime::device::DeviceChoice;

use syncdiff_inference::eval::report::{self, Scored};
use syncdiff_inference::eval::{self, EvalError, Lpips, MouthBox, Nets, ScoreOptions, SyncNet};

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

impl Args {
    /// What the library scores, from the options.
    fn score_options(&self) -> ScoreOptions {
        ScoreOptions {
            mouth: self.mouth,
            vshift: self.vshift,
            faces: self.faces,
            min_face: self.min_face,
            truth_dir: self.truth_dir.clone(),
            wer_cmd: self.wer_cmd.clone(),
            openings: self.openings,
        }
    }

    /// The metric networks asked for, on `device`.
    fn nets(&self, device: tch::Device) -> anyhow::Result<Nets> {
        let syncnet = self.syncnet.as_deref().map(|p| SyncNet::load(p, device));
        let alexnet = self.alexnet.as_deref();
        let lpips = self
            .lpips
            .as_deref()
            .map(|p| Lpips::load(p, alexnet, device));
        Ok(Nets {
            syncnet: syncnet.transpose()?,
            lpips: lpips.transpose()?,
        })
    }
}

/// Scores every `*.mp4` of `gt` against the same name in `pred`; writes the JSON report.
pub fn run(opts: Args) -> anyhow::Result<String> {
    let (pred, gt) = (opts.pred.as_path(), opts.gt.as_path());
    let device = opts.device.device(0)?;
    // The report's place is made and checked before any scoring: a directory, a device node, a
    // FIFO or a socket is refused; a symbolic link is written through.
    syncdiff_dataprep::outpath::prepare_file(&opts.report)
        .map_err(|e| anyhow::anyhow!("--report {e}"))?;
    let names = eval::pairs(pred, gt).map_err(|e| match &e {
        EvalError::Input { path, .. } if path == gt => anyhow::anyhow!("--gt {e}"),
        _ => e.into(),
    })?;
    let nets = opts.nets(device)?;
    let score_opts = opts.score_options();
    let videos = names
        .iter()
        .map(|n| eval::score(n, &gt.join(n), &pred.join(n), &score_opts, &nets))
        .collect::<Result<Vec<_>, _>>()?;
    let scored = Scored {
        lse: opts.syncnet.is_some(),
        lpips: opts.lpips.is_some(),
        wer: opts.wer_cmd.is_some(),
        openings: opts.openings,
    };
    let cols = report::columns(scored);
    let json = report::json(&videos, &cols, scored.wer, opts.mouth);
    syncdiff_dataprep::outpath::write_atomic(&opts.report, &serde_json::to_vec_pretty(&json)?)
        .map_err(|e| anyhow::anyhow!("--report {e}"))?;
    let mut out = report::table(&videos, &cols);
    out.push(format!("report: {}", opts.report.display()));
    Ok(out.join("\n"))
}
