//! `syncdiff eval --pred DIR --gt DIR`: PSNR and SSIM (scikit-image definitions) per frame and
//! averaged, on the full frame and on the mouth region, for every video of `gt` that has a
//! prediction of the same name in `pred`. Writes a JSON report and returns a table.
//! (LSE-C/D, LPIPS and the WER hook of issue 8 are not written yet.)

use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::eval::{psnr, ssim, Region, View};

/// The mouth region as fractions of the frame: x, y, width, height.
#[derive(Debug, Clone, Copy)]
pub struct MouthBox(pub [f64; 4]);

impl Default for MouthBox {
    /// The lower-middle part of a face crop (where the mask of the masked frame lies).
    fn default() -> Self {
        Self([0.25, 0.5, 0.5, 0.5])
    }
}

impl MouthBox {
    /// Parses `x,y,w,h` fractions.
    pub fn parse(s: &str) -> Result<Self, String> {
        let v: Vec<f64> = s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<f64>()
                    .map_err(|e| format!("--mouth {s}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let [x, y, w, h] = v[..] else {
            return Err(format!(
                "--mouth {s}: expected x,y,w,h as fractions of the frame"
            ));
        };
        if x < 0.0 || y < 0.0 || w <= 0.0 || h <= 0.0 || x + w > 1.0 || y + h > 1.0 {
            return Err(format!(
                "--mouth {s}: the box must lie inside [0, 1] x [0, 1]"
            ));
        }
        Ok(Self([x, y, w, h]))
    }

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
    /// Per-frame [psnr, ssim, mouth psnr, mouth ssim] (infinite PSNR written as null).
    pub per_frame: Vec<[f64; 4]>,
}

fn mean_finite(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::INFINITY
    } else {
        s / n as f64
    }
}

fn score(name: &str, gt: &Path, pred: &Path, mouth: MouthBox) -> anyhow::Result<VideoScores> {
    let info = syncdiff_dataprep::video::probe(gt)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let a = syncdiff_dataprep::video::decode_frames(gt, info.width, info.height)?;
    // The prediction is compared at the ground truth's size.
    let b = syncdiff_dataprep::video::decode_frames(pred, info.width, info.height)?;
    let size = w * h * 3;
    let (na, nb) = (a.len() / size, b.len() / size);
    if na != nb {
        eprintln!(
            "warning: {name}: {na} ground-truth frames, {nb} predicted; comparing the first {}",
            na.min(nb)
        );
    }
    let region = mouth.region(w, h);
    let mut per_frame = Vec::new();
    for i in 0..na.min(nb) {
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
    let col = |k: usize| mean_finite(per_frame.iter().map(|f| f[k]));
    Ok(VideoScores {
        name: name.to_string(),
        frames: per_frame.len(),
        psnr: col(0),
        ssim: col(1),
        mouth_psnr: col(2),
        mouth_ssim: col(3),
        per_frame,
    })
}

/// Scores every `*.mp4` of `gt` against the same name in `pred`; writes `report` (JSON).
pub fn run(pred: &Path, gt: &Path, report: &Path, mouth: MouthBox) -> anyhow::Result<String> {
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
    let mut videos = Vec::new();
    for name in &names {
        let p = pred.join(name);
        if !p.exists() {
            bail!("{}: no prediction for the ground truth {name}", p.display());
        }
        videos.push(score(name, &gt.join(name), &p, mouth)?);
    }
    let all = |f: fn(&VideoScores) -> f64| mean_finite(videos.iter().map(f));
    let summary = serde_json::json!({
        "videos": videos.len(),
        "frames": videos.iter().map(|v| v.frames).sum::<usize>(),
        "psnr": all(|v| v.psnr),
        "ssim": all(|v| v.ssim),
        "mouth_psnr": all(|v| v.mouth_psnr),
        "mouth_ssim": all(|v| v.mouth_ssim),
        "mouth_box": mouth.0,
    });
    let json = serde_json::json!({ "summary": summary, "videos": videos });
    std::fs::write(report, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("--report {}", report.display()))?;
    let mut out = vec![format!(
        "{:<20} {:>7} {:>8} {:>7} {:>11} {:>11}",
        "video", "frames", "PSNR", "SSIM", "mouth PSNR", "mouth SSIM"
    )];
    for v in &videos {
        out.push(format!(
            "{:<20} {:>7} {:>8.3} {:>7.4} {:>11.3} {:>11.4}",
            v.name, v.frames, v.psnr, v.ssim, v.mouth_psnr, v.mouth_ssim
        ));
    }
    out.push(format!(
        "{:<20} {:>7} {:>8.3} {:>7.4} {:>11.3} {:>11.4}",
        "mean",
        summary["frames"].to_string(),
        all(|v| v.psnr),
        all(|v| v.ssim),
        all(|v| v.mouth_psnr),
        all(|v| v.mouth_ssim)
    ));
    out.push(format!("report: {}", report.display()));
    Ok(out.join("\n"))
}
