//! The report of `syncdiff eval`: a table (one row per video and their mean) and a JSON document
//! (`summary`: the means under fixed keys; `videos`: every score, per frame too).

use serde_json::{Map, Value};

use super::videos::{mean_finite, MouthBox, OpeningScores, VideoScores};

/// One score as a column: its table header, its JSON key, width and decimals, and its value for
/// a video (`None`: not computed).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Table header.
    pub header: &'static str,
    /// Key of its mean in the JSON summary.
    pub key: &'static str,
    /// Table width.
    pub width: usize,
    /// Decimals in the table.
    pub decimals: usize,
    /// The value of a video.
    pub value: fn(&VideoScores) -> Option<f64>,
}

const fn col(
    header: &'static str,
    key: &'static str,
    width: usize,
    decimals: usize,
    value: fn(&VideoScores) -> Option<f64>,
) -> Column {
    Column {
        header,
        key,
        width,
        decimals,
        value,
    }
}

/// Which optional scores a report has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scored {
    /// LSE-C/D (a SyncNet was given).
    pub lse: bool,
    /// LPIPS.
    pub lpips: bool,
    /// WER (a lip reader was given).
    pub wer: bool,
    /// Mouth openings (synthetic data set).
    pub openings: bool,
}

/// The columns of a report.
pub fn columns(s: Scored) -> Vec<Column> {
    let mut c = vec![
        col("PSNR", "psnr", 8, 3, |v| Some(v.psnr)),
        col("SSIM", "ssim", 7, 4, |v| Some(v.ssim)),
        col("mouth PSNR", "mouth_psnr", 11, 3, |v| Some(v.mouth_psnr)),
        col("mouth SSIM", "mouth_ssim", 11, 4, |v| Some(v.mouth_ssim)),
    ];
    if s.lse {
        c.push(col("LSE-C", "lse_c", 7, 4, |v| v.lse.map(|l| l.lse_c)));
        c.push(col("LSE-D", "lse_d", 7, 4, |v| v.lse.map(|l| l.lse_d)));
    }
    if s.lpips {
        c.push(col("LPIPS", "lpips", 7, 4, |v| v.lpips));
    }
    if s.wer {
        c.push(col("WER %", "wer_pct", 7, 3, |v| {
            let w = v.wer.as_ref()?;
            Some(100.0 * w.errors as f64 / w.words.max(1) as f64)
        }));
    }
    if s.openings {
        c.push(col("open MAE", "open_mae", 9, 4, |v| {
            opening(v)?.mae.into()
        }));
        c.push(col("open corr", "open_corr", 10, 4, |v| opening(v)?.corr));
        c.push(col("copy-id MAE", "copy_id_mae", 12, 4, |v| {
            opening(v)?.copy_identity_mae.into()
        }));
        c.push(col("reader MAE", "reader_mae", 11, 4, |v| {
            opening(v)?.reader_mae_gt.into()
        }));
    }
    c
}

/// A video's mouth-opening scores.
fn opening(v: &VideoScores) -> Option<&OpeningScores> {
    v.openings.as_ref()
}

/// The mean of a column over the videos (NaN when none has it).
fn mean(videos: &[VideoScores], c: &Column) -> f64 {
    mean_finite(videos.iter().filter_map(c.value))
}

/// The JSON report: `summary` (counts, each column's mean, the corpus WER, the mouth box) and
/// `videos`.
pub fn json(videos: &[VideoScores], cols: &[Column], wer: bool, mouth: MouthBox) -> Value {
    let mut summary = Map::new();
    summary.insert("videos".into(), videos.len().into());
    let frames: usize = videos.iter().map(|v| v.frames).sum();
    summary.insert("frames".into(), frames.into());
    for c in cols {
        let v = mean(videos, c);
        let v = if v.is_finite() { v.into() } else { Value::Null };
        summary.insert(c.key.into(), v);
    }
    if wer {
        let (e, w) = videos
            .iter()
            .filter_map(|v| v.wer.as_ref())
            .fold((0, 0), |(e, w), x| (e + x.errors, w + x.words));
        let pct = 100.0 * e as f64 / w.max(1) as f64;
        summary.insert("corpus_wer_pct".into(), pct.into());
    }
    summary.insert("mouth_box".into(), mouth.0.to_vec().into());
    serde_json::json!({ "summary": summary, "videos": videos })
}

/// The table: a header, one row per video, and the mean.
pub fn table(videos: &[VideoScores], cols: &[Column]) -> Vec<String> {
    let mut header = format!("{:<20} {:>7}", "video", "frames");
    for c in cols {
        header += &format!(" {:>w$}", c.header, w = c.width);
    }
    let row = |label: &str, frames: usize, values: Vec<Option<f64>>| {
        let mut line = format!("{label:<20} {frames:>7}");
        for (c, value) in cols.iter().zip(values) {
            let (w, d) = (c.width, c.decimals);
            line += &match value {
                Some(x) if x.is_finite() => format!(" {x:>w$.d$}"),
                _ => format!(" {:>w$}", "-"),
            };
        }
        line
    };
    let mut out = vec![header];
    for v in videos {
        out.push(row(
            &v.name,
            v.frames,
            cols.iter().map(|c| (c.value)(v)).collect(),
        ));
    }
    let total = videos.iter().map(|v| v.frames).sum();
    let means = cols.iter().map(|c| Some(mean(videos, c))).collect();
    out.push(row("mean", total, means));
    out
}
