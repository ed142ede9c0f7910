//! Image metrics with scikit-image's definitions (checked live against it in the tests):
//! `peak_signal_noise_ratio` and `structural_similarity` with its defaults (7x7 uniform window,
//! sample covariance, K1 = 0.01, K2 = 0.03, borders of 3 pixels excluded from the mean, the mean
//! over channels for colour images).

/// An 8-bit image, rows top to bottom, `channels` values per pixel.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Pixels.
    pub data: &'a [u8],
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Values per pixel (1 or 3).
    pub channels: usize,
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left.
    pub x: usize,
    /// Top.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

/// Why two images cannot be compared.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricError {
    /// Different shapes.
    #[error("images differ in shape: {0:?} vs {1:?}")]
    Shape((usize, usize, usize), (usize, usize, usize)),
    /// Smaller than the SSIM window.
    #[error("{0}x{1} is smaller than the 7x7 SSIM window")]
    TooSmall(usize, usize),
    /// A region outside the image.
    #[error("region {0:?} lies outside the {1}x{2} image")]
    Region(Region, usize, usize),
    /// The buffer does not hold width x height x channels values.
    #[error("buffer of {0} bytes for {1}x{2}x{3}")]
    Buffer(usize, usize, usize, usize),
}

const WIN: usize = 7;
const DATA_RANGE: f64 = 255.0;

impl View<'_> {
    fn shape(&self) -> (usize, usize, usize) {
        (self.height, self.width, self.channels)
    }

    fn check(&self) -> Result<(), MetricError> {
        if self.data.len() != self.width * self.height * self.channels {
            return Err(MetricError::Buffer(
                self.data.len(),
                self.width,
                self.height,
                self.channels,
            ));
        }
        Ok(())
    }

    /// Channel `c` of `region` as f64, row-major.
    fn plane(&self, c: usize, r: Region) -> Vec<f64> {
        let mut out = Vec::with_capacity(r.w * r.h);
        for y in r.y..r.y + r.h {
            for x in r.x..r.x + r.w {
                out.push(f64::from(
                    self.data[(y * self.width + x) * self.channels + c],
                ));
            }
        }
        out
    }
}

fn pair<'a>(a: &View<'a>, b: &View<'a>, region: Option<Region>) -> Result<Region, MetricError> {
    a.check()?;
    b.check()?;
    if a.shape() != b.shape() {
        return Err(MetricError::Shape(a.shape(), b.shape()));
    }
    let r = region.unwrap_or(Region {
        x: 0,
        y: 0,
        w: a.width,
        h: a.height,
    });
    if r.x + r.w > a.width || r.y + r.h > a.height || r.w == 0 || r.h == 0 {
        return Err(MetricError::Region(r, a.width, a.height));
    }
    Ok(r)
}

/// PSNR in dB over all values of `region` (whole image when `None`); infinite for equal images.
pub fn psnr(a: &View<'_>, b: &View<'_>, region: Option<Region>) -> Result<f64, MetricError> {
    let r = pair(a, b, region)?;
    let (mut sum, mut n) = (0.0, 0usize);
    for c in 0..a.channels {
        for (x, y) in a.plane(c, r).iter().zip(b.plane(c, r)) {
            sum += (x - y) * (x - y);
            n += 1;
        }
    }
    let mse = sum / n as f64;
    Ok(10.0 * (DATA_RANGE * DATA_RANGE / mse).log10())
}

/// Sums of every 7x7 window (top-left corners over the valid range), from a summed-area table.
fn window_sums(p: &[f64], w: usize, h: usize) -> Vec<f64> {
    let mut sat = vec![0.0; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0.0;
        for x in 0..w {
            row += p[y * w + x];
            sat[(y + 1) * (w + 1) + x + 1] = sat[y * (w + 1) + x + 1] + row;
        }
    }
    let (ow, oh) = (w - WIN + 1, h - WIN + 1);
    let mut out = Vec::with_capacity(ow * oh);
    for y in 0..oh {
        for x in 0..ow {
            let at = |yy: usize, xx: usize| sat[yy * (w + 1) + xx];
            out.push(at(y + WIN, x + WIN) - at(y, x + WIN) - at(y + WIN, x) + at(y, x));
        }
    }
    out
}

fn ssim_plane(x: &[f64], y: &[f64], w: usize, h: usize) -> f64 {
    let np = (WIN * WIN) as f64;
    let cov_norm = np / (np - 1.0);
    let (c1, c2) = ((0.01 * DATA_RANGE).powi(2), (0.03 * DATA_RANGE).powi(2));
    let prod = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).collect::<Vec<f64>>();
    let sx = window_sums(x, w, h);
    let sy = window_sums(y, w, h);
    let sxx = window_sums(&prod(x, x), w, h);
    let syy = window_sums(&prod(y, y), w, h);
    let sxy = window_sums(&prod(x, y), w, h);
    let mut total = 0.0;
    for i in 0..sx.len() {
        let (ux, uy) = (sx[i] / np, sy[i] / np);
        let vx = cov_norm * (sxx[i] / np - ux * ux);
        let vy = cov_norm * (syy[i] / np - uy * uy);
        let vxy = cov_norm * (sxy[i] / np - ux * uy);
        let a = (2.0 * ux * uy + c1) * (2.0 * vxy + c2);
        let b = (ux * ux + uy * uy + c1) * (vx + vy + c2);
        total += a / b;
    }
    total / sx.len() as f64
}

/// Mean SSIM over `region` (whole image when `None`), averaged over channels.
pub fn ssim(a: &View<'_>, b: &View<'_>, region: Option<Region>) -> Result<f64, MetricError> {
    let r = pair(a, b, region)?;
    if r.w < WIN || r.h < WIN {
        return Err(MetricError::TooSmall(r.w, r.h));
    }
    let per: f64 = (0..a.channels)
        .map(|c| ssim_plane(&a.plane(c, r), &b.plane(c, r), r.w, r.h))
        .sum();
    Ok(per / a.channels as f64)
}
