//! Mouth opening read from a frame of the synthetic talking faces (`syncdiff-dataprep synth`), to
//! score generated videos against the true opening `synth` writes beside each clip.
//!
//! `synth` draws the mouth interior as a near-black ellipse of half-height `1.2 + 12 * opening`
//! pixels (in its 160-pixel frames) inside a lip ring at least 58/255 bright. The reader weighs
//! every pixel of the lower-middle box by how dark it is (1 at the interior's brightness, 0 at
//! the darkest lips, linear between: a pixel mixing interior and lips counts by its interior
//! share), sums each column, and takes the mean of the three tallest columns as the interior's
//! height: the ellipse is tallest at its centre, whatever its width.

/// Luminance of the mouth interior drawn by `synth` (RGB 0.08, 0.02, 0.03).
const INTERIOR: f64 = 10.0;
/// Darkest lip colour `synth` draws.
const LIPS: f64 = 58.0;
/// `synth`'s frame side, in which its geometry is defined.
const SYNTH_SIDE: f64 = 160.0;
/// The interior's half-height at opening 0 and its growth per unit of opening (synth pixels).
const BASE: f64 = 1.2;
const SPAN: f64 = 12.0;

/// Opening in [0, 1] of one RGB24 frame (`width` x `height`) of a synthetic face.
pub fn opening(rgb: &[u8], width: usize, height: usize) -> f64 {
    // Where synth's mouth can be (any speaker, offset and head bob), as fractions of the frame.
    let (x0, x1) = (
        (0.28 * width as f64) as usize,
        (0.72 * width as f64) as usize,
    );
    let (y0, y1) = (
        (0.5 * height as f64) as usize,
        (0.86 * height as f64) as usize,
    );
    let mut columns: Vec<f64> = (x0..x1.min(width))
        .map(|x| {
            (y0..y1.min(height))
                .map(|y| {
                    let p = &rgb[(y * width + x) * 3..][..3];
                    let l =
                        0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
                    ((LIPS - l) / (LIPS - INTERIOR)).clamp(0.0, 1.0)
                })
                .sum()
        })
        .collect();
    columns.sort_by(|a, b| b.total_cmp(a));
    let top = &columns[..columns.len().min(3)];
    let tallest = top.iter().sum::<f64>() / top.len().max(1) as f64;
    let half = tallest * SYNTH_SIDE / height as f64 / 2.0;
    ((half - BASE) / SPAN).clamp(0.0, 1.0)
}

/// Openings of every frame of an RGB24 video.
pub fn openings(rgb: &[u8], width: usize, height: usize) -> Vec<f64> {
    rgb.chunks_exact(width * height * 3)
        .map(|f| opening(f, width, height))
        .collect()
}

/// Reads a `synth` truth file (one opening per line).
pub fn read_truth(path: &std::path::Path) -> Result<Vec<f64>, super::wer::ReferenceError> {
    use super::wer::ReferenceError;
    let text = std::fs::read_to_string(path).map_err(|e| ReferenceError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            l.trim().parse::<f64>().map_err(|e| ReferenceError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Mean absolute difference over the common length.
pub fn mae(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return f64::NAN;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64
}

/// Pearson correlation over the common length; NaN when either side is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return f64::NAN;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa <= 1e-12 || sbb <= 1e-12 {
        return f64::NAN;
    }
    sab / (saa * sbb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_known_series() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&a, &[1.0, 1.0, 1.0, 1.0]).is_nan());
        assert!((mae(&a, &[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
    }
}
