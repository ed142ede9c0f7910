//! Boxes, the crop transform between a source frame and the model's square input, warping RGB
//! images through it, the mouth mask and the feathered paste-back.
//!
//! Coordinates are continuous: pixel `(i, j)` covers `[i, i+1) x [j, j+1)`, its centre is at
//! `(i + 0.5, j + 0.5)`. A crop transform maps crop coordinates to source coordinates.

use serde::{Deserialize, Serialize};
use syncdiff_model::config::{FaceConfig, FaceCrop, FaceMask};

/// The 68 iBUG landmarks (x, y) in source pixels (Face-Alignment's and dlib's layout).
pub type Landmarks = [[f32; 2]; 68];

/// Landmark indices (0-based, iBUG 68): the jaw line runs 0..=16, the nose's lowest point is 33.
const JAW: std::ops::RangeInclusive<usize> = 2..=14;
const NOSE_BOTTOM: usize = 33;
/// Outer eye corners (left, right in the image).
const EYE_OUTER: (usize, usize) = (36, 45);

/// Side of the face box made from landmarks, in RMS radii of the 68 points about their mean: on a
/// frontal face dlib's HOG box is this wide (2.51 on the astronaut portrait).
pub const LANDMARK_BOX_SCALE: f32 = 2.5;

/// The face box of a set of landmarks: a square centred on their mean, [`LANDMARK_BOX_SCALE`]
/// RMS radii wide. Unlike a detector's box it moves exactly with the face (mean and RMS radius
/// follow any similarity transform), which keeps crops steady.
pub fn landmark_box(lm: &Landmarks) -> Rect {
    let n = lm.len() as f32;
    let cx = lm.iter().map(|p| p[0]).sum::<f32>() / n;
    let cy = lm.iter().map(|p| p[1]).sum::<f32>() / n;
    let rms = (lm
        .iter()
        .map(|p| (p[0] - cx).powi(2) + (p[1] - cy).powi(2))
        .sum::<f32>()
        / n)
        .sqrt();
    let half = LANDMARK_BOX_SCALE * rms / 2.0;
    Rect {
        x0: cx - half,
        y0: cy - half,
        x1: cx + half,
        y1: cy + half,
    }
}

/// An axis-aligned box `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Right edge.
    pub x1: f32,
    /// Bottom edge.
    pub y1: f32,
}

impl Rect {
    /// Width.
    pub fn width(&self) -> f32 {
        self.x1 - self.x0
    }

    /// Height.
    pub fn height(&self) -> f32 {
        self.y1 - self.y0
    }

    /// Centre.
    pub fn centre(&self) -> [f32; 2] {
        [(self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0]
    }

    /// The larger side.
    pub fn side(&self) -> f32 {
        self.width().max(self.height())
    }

    fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Intersection over union (0 for disjoint boxes).
    pub fn iou(&self, o: &Rect) -> f32 {
        let inter = Rect {
            x0: self.x0.max(o.x0),
            y0: self.y0.max(o.y0),
            x1: self.x1.min(o.x1),
            y1: self.y1.min(o.y1),
        };
        let i = if inter.width() > 0.0 && inter.height() > 0.0 {
            inter.area()
        } else {
            0.0
        };
        let u = self.area() + o.area() - i;
        if u > 0.0 {
            i / u
        } else {
            0.0
        }
    }

    /// `a * (1 - t) + b * t`, corner by corner.
    pub fn lerp(&self, b: &Rect, t: f32) -> Rect {
        let l = |x: f32, y: f32| x + (y - x) * t;
        Rect {
            x0: l(self.x0, b.x0),
            y0: l(self.y0, b.y0),
            x1: l(self.x1, b.x1),
            y1: l(self.y1, b.y1),
        }
    }
}

/// An affine map `(u, v) -> (a u + b v + c, d u + e v + f)`, stored as `[a, b, c, d, e, f]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Affine(pub [f32; 6]);

impl Affine {
    /// Applies the map.
    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        let m = &self.0;
        [
            m[0] * p[0] + m[1] * p[1] + m[2],
            m[3] * p[0] + m[4] * p[1] + m[5],
        ]
    }

    /// The map that draws an image scaled by `scale` and turned by `angle` (radians,
    /// counter-clockwise on screen) about its point `from`, placed at `to`: it takes a point of
    /// the drawing to the image point shown there (what [`warp`] needs to draw it).
    pub fn similarity(scale: f32, angle: f32, from: [f32; 2], to: [f32; 2]) -> Affine {
        let (s, c) = angle.sin_cos();
        let (a, b, d, e) = (c / scale, s / scale, -s / scale, c / scale);
        Affine([
            a,
            b,
            from[0] - (a * to[0] + b * to[1]),
            d,
            e,
            from[1] - (d * to[0] + e * to[1]),
        ])
    }

    /// The inverse map; `None` for a degenerate one.
    pub fn inverse(&self) -> Option<Affine> {
        let [a, b, c, d, e, f] = self.0.map(f64::from);
        let det = a * e - b * d;
        if det.abs() < 1e-12 {
            return None;
        }
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        let m = [ia, ib, -(ia * c + ib * f), id, ie, -(id * c + ie * f)];
        Some(Affine(m.map(|x| x as f32)))
    }

    /// The larger of the two axis scales (source pixels per crop pixel).
    fn max_scale(&self) -> f32 {
        let m = &self.0;
        (m[0].hypot(m[3])).max(m[1].hypot(m[4]))
    }
}

/// The square the model sees, for one frame: `size` x `size` crop pixels mapped into the source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropTransform {
    /// Crop side in pixels (`data.resolution`).
    pub size: u32,
    /// Crop coordinates -> source coordinates.
    pub to_source: Affine,
}

impl CropTransform {
    /// The transform `data.face.crop` asks for: the whole `width` x `height` frame, or a square
    /// of side `(1 + 2 margin) * face.side()` centred on the face box.
    pub fn new(cfg: &FaceConfig, face: &Rect, width: u32, height: u32, size: u32) -> Self {
        let s = size as f32;
        let to_source = match cfg.crop {
            FaceCrop::Frame => Affine([width as f32 / s, 0.0, 0.0, 0.0, height as f32 / s, 0.0]),
            FaceCrop::Face => {
                let side = face.side() * (1.0 + 2.0 * cfg.margin as f32);
                let [cx, cy] = face.centre();
                let k = side / s;
                Affine([k, 0.0, cx - side / 2.0, 0.0, k, cy - side / 2.0])
            }
        };
        Self { size, to_source }
    }

    /// Source coordinates -> crop coordinates.
    pub fn to_crop(&self) -> Affine {
        // Both kinds of crop scale by a positive factor: the inverse exists.
        self.to_source
            .inverse()
            .unwrap_or(Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
    }

    /// A box in source coordinates as seen in the crop (axis-aligned crops keep it a box).
    pub fn rect_to_crop(&self, r: &Rect) -> Rect {
        let m = self.to_crop();
        let [x0, y0] = m.apply([r.x0, r.y0]);
        let [x1, y1] = m.apply([r.x1, r.y1]);
        Rect {
            x0: x0.min(x1),
            y0: y0.min(y1),
            x1: x0.max(x1),
            y1: y0.max(y1),
        }
    }

    /// The crop as RGB bytes (`size` x `size` x 3), bilinear, supersampled when the crop
    /// shrinks the source (no aliasing); outside the frame the nearest edge pixel is repeated.
    pub fn warp(&self, rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
        warp(rgb, width, height, &self.to_source, self.size, self.size)
    }
}

/// Bilinear sample of channel-interleaved RGB at continuous `(x, y)`, edges clamped.
fn sample(rgb: &[u8], w: usize, h: usize, x: f32, y: f32, out: &mut [f32; 3]) {
    let fx = (x - 0.5).clamp(0.0, (w - 1) as f32);
    let fy = (y - 0.5).clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    for (c, o) in out.iter_mut().enumerate() {
        let p = |xx: usize, yy: usize| f32::from(rgb[(yy * w + xx) * 3 + c]);
        let top = p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx;
        let bottom = p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx;
        *o = top * (1.0 - ty) + bottom * ty;
    }
}

/// Warps `rgb` (`width` x `height`) into an `out_w` x `out_h` image: output pixel centre `p`
/// takes the source at `to_source(p)`.
pub fn warp(
    rgb: &[u8],
    width: u32,
    height: u32,
    to_source: &Affine,
    out_w: u32,
    out_h: u32,
) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let n = (to_source.max_scale().ceil() as usize).clamp(1, 4);
    let step = 1.0 / n as f32;
    let mut out = vec![0u8; out_w as usize * out_h as usize * 3];
    let mut px = [0f32; 3];
    for v in 0..out_h as usize {
        for u in 0..out_w as usize {
            let mut acc = [0f32; 3];
            for sy in 0..n {
                for sx in 0..n {
                    let p = [
                        u as f32 + (sx as f32 + 0.5) * step,
                        v as f32 + (sy as f32 + 0.5) * step,
                    ];
                    let [x, y] = to_source.apply(p);
                    sample(rgb, w, h, x, y, &mut px);
                    for c in 0..3 {
                        acc[c] += px[c];
                    }
                }
            }
            let o = (v * out_w as usize + u) * 3;
            for c in 0..3 {
                out[o + c] = (acc[c] / (n * n) as f32).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// The masked region of the crop (`size` x `size`, row-major, true = hidden from the model):
/// the lower `mask_fraction` of the face box, or the region below the nose inside the jaw line.
pub fn mouth_mask(
    cfg: &FaceConfig,
    mask_fraction: f64,
    crop: &CropTransform,
    face: &Rect,
    landmarks: Option<&Landmarks>,
) -> Vec<bool> {
    let s = crop.size as usize;
    let mut mask = vec![false; s * s];
    match (cfg.mask, landmarks) {
        (FaceMask::Landmarks, Some(lm)) => {
            let m = crop.to_crop();
            let nose = m.apply(lm[NOSE_BOTTOM]);
            let jaw: Vec<[f32; 2]> = lm[JAW].iter().map(|p| m.apply(*p)).collect();
            // The top edge runs through the nose parallel to the eye line (outer corners 36,
            // 45), so that a tilted head is masked below its nose, not below a horizontal.
            let (l, r) = (m.apply(lm[EYE_OUTER.0]), m.apply(lm[EYE_OUTER.1]));
            let len = (r[0] - l[0]).hypot(r[1] - l[1]);
            let d = if len > 1e-3 {
                [(r[0] - l[0]) / len, (r[1] - l[1]) / len]
            } else {
                [1.0, 0.0]
            };
            let on_line = |p: [f32; 2]| {
                let t = (p[0] - nose[0]) * d[0] + (p[1] - nose[1]) * d[1];
                [nose[0] + t * d[0], nose[1] + t * d[1]]
            };
            let (first, last) = (jaw[0], jaw[jaw.len() - 1]);
            let mut poly = vec![on_line(first)];
            poly.extend(jaw);
            poly.push(on_line(last));
            fill_polygon(&poly, s, &mut mask);
        }
        _ => {
            let r = crop.rect_to_crop(face);
            let top = r.y1 - (r.height() * mask_fraction as f32);
            for y in 0..s {
                let cy = y as f32 + 0.5;
                if cy < top || cy >= r.y1 {
                    continue;
                }
                for x in 0..s {
                    let cx = x as f32 + 0.5;
                    mask[y * s + x] = cx >= r.x0 && cx < r.x1;
                }
            }
        }
    }
    mask
}

/// Even-odd fill of a polygon over pixel centres.
fn fill_polygon(poly: &[[f32; 2]], s: usize, mask: &mut [bool]) {
    for y in 0..s {
        let cy = y as f32 + 0.5;
        let mut xs: Vec<f32> = Vec::new();
        for i in 0..poly.len() {
            let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
            if (a[1] <= cy) != (b[1] <= cy) {
                xs.push(a[0] + (cy - a[1]) / (b[1] - a[1]) * (b[0] - a[0]));
            }
        }
        xs.sort_by(f32::total_cmp);
        for pair in xs.chunks_exact(2) {
            for x in 0..s {
                let cx = x as f32 + 0.5;
                if cx >= pair[0] && cx < pair[1] {
                    mask[y * s + x] = true;
                }
            }
        }
    }
}

/// A soft version of `mask` for pasting back: eroded by `erode` pixels, then blurred by two box
/// filters of radius `blur`; zero wherever `mask` is false, so that blending with it leaves every
/// pixel outside the mask exactly as it was.
pub fn feather(mask: &[bool], size: usize, erode: usize, blur: usize) -> Vec<f32> {
    let mut m: Vec<f32> = mask.iter().map(|&b| f32::from(u8::from(b))).collect();
    for _ in 0..erode {
        let prev = m.clone();
        for y in 0..size {
            for x in 0..size {
                let edge = x == 0 || y == 0 || x + 1 == size || y + 1 == size;
                let i = y * size + x;
                if edge
                    || prev[i - 1] == 0.0
                    || prev[i + 1] == 0.0
                    || prev[i - size] == 0.0
                    || prev[i + size] == 0.0
                {
                    m[i] = 0.0;
                }
            }
        }
    }
    for _ in 0..2 {
        m = box_blur(&m, size, blur);
    }
    for (v, &inside) in m.iter_mut().zip(mask) {
        if !inside {
            *v = 0.0;
        }
    }
    m
}

fn box_blur(m: &[f32], s: usize, r: usize) -> Vec<f32> {
    if r == 0 {
        return m.to_vec();
    }
    let pass = |src: &[f32], horizontal: bool| {
        let mut out = vec![0f32; s * s];
        for a in 0..s {
            for b in 0..s {
                let lo = b.saturating_sub(r);
                let hi = (b + r).min(s - 1);
                let sum: f32 = (lo..=hi)
                    .map(|k| {
                        if horizontal {
                            src[a * s + k]
                        } else {
                            src[k * s + a]
                        }
                    })
                    .sum();
                let i = if horizontal { a * s + b } else { b * s + a };
                out[i] = sum / (2 * r + 1) as f32;
            }
        }
        out
    };
    pass(&pass(m, true), false)
}

/// Pastes a generated crop back into the source frame: each source pixel whose crop position has
/// a non-zero `alpha` becomes `alpha * generated + (1 - alpha) * source`; all others are left
/// untouched. `frame` is `width` x `height` RGB, `generated` is `size` x `size` RGB.
pub fn paste_back(
    frame: &mut [u8],
    width: u32,
    height: u32,
    crop: &CropTransform,
    generated: &[u8],
    alpha: &[f32],
) {
    let s = crop.size as usize;
    let to_crop = crop.to_crop();
    // Only the source pixels under the crop can change.
    let corners = [
        [0.0, 0.0],
        [s as f32, 0.0],
        [0.0, s as f32],
        [s as f32, s as f32],
    ]
    .map(|p| crop.to_source.apply(p));
    let lo = |i: usize, lim: u32| {
        (corners
            .iter()
            .map(|c| c[i])
            .fold(f32::MAX, f32::min)
            .floor()
            .max(0.0) as u32)
            .min(lim)
    };
    let hi = |i: usize, lim: u32| {
        (corners
            .iter()
            .map(|c| c[i])
            .fold(f32::MIN, f32::max)
            .ceil()
            .max(0.0) as u32)
            .min(lim)
    };
    let mut g = [0f32; 3];
    for y in lo(1, height)..hi(1, height) {
        for x in lo(0, width)..hi(0, width) {
            let [u, v] = to_crop.apply([x as f32 + 0.5, y as f32 + 0.5]);
            if u < 0.0 || v < 0.0 || u >= s as f32 || v >= s as f32 {
                continue;
            }
            let a = sample_alpha(alpha, s, u, v);
            if a <= 0.0 {
                continue;
            }
            sample(generated, s, s, u, v, &mut g);
            let o = (y as usize * width as usize + x as usize) * 3;
            for c in 0..3 {
                let src = f32::from(frame[o + c]);
                frame[o + c] = (a * g[c] + (1.0 - a) * src).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Bilinear alpha at crop position `(u, v)`, zero if any of its four neighbours is outside the
/// mask (so the soft edge never reaches past the hard one).
fn sample_alpha(alpha: &[f32], s: usize, u: f32, v: f32) -> f32 {
    let fx = (u - 0.5).clamp(0.0, (s - 1) as f32);
    let fy = (v - 0.5).clamp(0.0, (s - 1) as f32);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
    let q = [
        alpha[y0 * s + x0],
        alpha[y0 * s + x1],
        alpha[y1 * s + x0],
        alpha[y1 * s + x1],
    ];
    if q.iter().any(|&a| a <= 0.0) {
        return 0.0;
    }
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    (q[0] * (1.0 - tx) + q[1] * tx) * (1.0 - ty) + (q[2] * (1.0 - tx) + q[3] * tx) * ty
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn face_cfg(crop: FaceCrop) -> FaceConfig {
        FaceConfig {
            crop,
            ..FaceConfig::default()
        }
    }

    #[test]
    fn iou_of_shifted_boxes() {
        let a = Rect {
            x0: 0.0,
            y0: 0.0,
            x1: 10.0,
            y1: 10.0,
        };
        let b = Rect {
            x0: 5.0,
            y0: 0.0,
            x1: 15.0,
            y1: 10.0,
        };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        let far = Rect {
            x0: 20.0,
            y0: 20.0,
            x1: 30.0,
            y1: 30.0,
        };
        assert_eq!(a.iou(&far), 0.0);
        assert_eq!(a.iou(&a), 1.0);
    }

    #[test]
    fn affine_inverse_round_trips() {
        let m = Affine([1.5, 0.2, 10.0, -0.3, 0.9, -4.0]);
        let inv = m.inverse().unwrap();
        let p = inv.apply(m.apply([3.0, 7.0]));
        assert!(
            (p[0] - 3.0).abs() < 1e-4 && (p[1] - 7.0).abs() < 1e-4,
            "{p:?}"
        );
        assert!(Affine([1.0, 2.0, 0.0, 2.0, 4.0, 0.0]).inverse().is_none());
    }

    #[test]
    fn frame_crop_with_the_whole_frame_masks_the_lower_rows() {
        // detector none: the face is the frame; the mask is today's lower mask_fraction rows.
        let cfg = face_cfg(FaceCrop::Frame);
        let face = Rect {
            x0: 0.0,
            y0: 0.0,
            x1: 64.0,
            y1: 48.0,
        };
        let crop = CropTransform::new(&cfg, &face, 64, 48, 16);
        let mask = mouth_mask(&cfg, 0.5, &crop, &face, None);
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(mask[y * 16 + x], y >= 8, "({x}, {y})");
            }
        }
    }

    #[test]
    fn face_crop_is_a_square_around_the_box_and_warps_exactly() {
        let cfg = face_cfg(FaceCrop::Face);
        let face = Rect {
            x0: 20.0,
            y0: 10.0,
            x1: 40.0,
            y1: 30.0,
        };
        let crop = CropTransform::new(&cfg, &face, 64, 48, 30);
        // side 20 * 1.5 = 30 source pixels -> 30 crop pixels: a pure translation by (15, 5).
        assert_eq!(crop.to_source.0, [1.0, 0.0, 15.0, 0.0, 1.0, 5.0]);
        let rgb: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let out = crop.warp(&rgb, 64, 48);
        for (v, u) in [(0usize, 0usize), (12, 29), (29, 3)] {
            let s = ((v + 5) * 64 + u + 15) * 3;
            assert_eq!(&out[(v * 30 + u) * 3..][..3], &rgb[s..s + 3], "({u}, {v})");
        }
        let r = crop.rect_to_crop(&face);
        assert_eq!((r.x0, r.y0, r.x1, r.y1), (5.0, 5.0, 25.0, 25.0));
    }

    #[test]
    fn landmark_mask_is_below_the_nose_and_inside_the_jaw() {
        let cfg = FaceConfig {
            mask: FaceMask::Landmarks,
            ..face_cfg(FaceCrop::Frame)
        };
        // A U-shaped jaw from (4, 8) down to (16, 30) and up to (28, 8); nose bottom at y 12.
        let mut lm = [[16.0f32, 16.0]; 68];
        for (k, i) in JAW.enumerate() {
            let t = k as f32 / (JAW.count() - 1) as f32 * std::f32::consts::PI;
            lm[i] = [16.0 - 12.0 * t.cos(), 8.0 + 22.0 * t.sin()];
        }
        lm[NOSE_BOTTOM] = [16.0, 12.0];
        lm[EYE_OUTER.0] = [8.0, 6.0];
        lm[EYE_OUTER.1] = [24.0, 6.0];
        let face = Rect {
            x0: 0.0,
            y0: 0.0,
            x1: 32.0,
            y1: 32.0,
        };
        let crop = CropTransform::new(&cfg, &face, 32, 32, 32);
        let mask = mouth_mask(&cfg, 0.5, &crop, &face, Some(&lm));
        let at = |x: usize, y: usize| mask[y * 32 + x];
        assert!(at(16, 20) && at(10, 14) && at(22, 14));
        assert!(!at(16, 10), "above the nose");
        assert!(!at(1, 20) && !at(30, 20), "outside the jaw");
        assert!(!at(16, 31), "below the chin");
        // A tilted head (eye line sloping down to the right): the top edge tilts with it.
        lm[EYE_OUTER.0] = [8.0, 2.0];
        lm[EYE_OUTER.1] = [24.0, 10.0];
        let mask = mouth_mask(&cfg, 0.5, &crop, &face, Some(&lm));
        let at = |x: usize, y: usize| mask[y * 32 + x];
        assert!(!at(22, 13), "above the tilted nose line");
        assert!(at(10, 11), "below the tilted nose line");
    }

    #[test]
    fn paste_back_leaves_pixels_outside_the_mask_untouched() {
        let cfg = face_cfg(FaceCrop::Face);
        let face = Rect {
            x0: 30.0,
            y0: 20.0,
            x1: 70.0,
            y1: 60.0,
        };
        let (w, h) = (100u32, 80u32);
        let crop = CropTransform::new(&cfg, &face, w, h, 64);
        let mask = mouth_mask(&cfg, 0.5, &crop, &face, None);
        let alpha = feather(&mask, 64, 2, 2);
        assert!(alpha.iter().zip(&mask).all(|(a, m)| *m || *a == 0.0));
        assert!(
            alpha.iter().any(|&a| a > 0.99),
            "the centre is fully generated"
        );
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i % 200) as u8).collect();
        let mut frame = src.clone();
        let generated = vec![255u8; 64 * 64 * 3];
        paste_back(&mut frame, w, h, &crop, &generated, &alpha);
        let to_crop = crop.to_crop();
        let mut changed = 0;
        for y in 0..h as usize {
            for x in 0..w as usize {
                let o = (y * w as usize + x) * 3;
                let [u, v] = to_crop.apply([x as f32 + 0.5, y as f32 + 0.5]);
                let inside = (0.0..64.0).contains(&u)
                    && (0.0..64.0).contains(&v)
                    && mask[v as usize * 64 + u as usize];
                if frame[o..o + 3] != src[o..o + 3] {
                    changed += 1;
                    assert!(inside, "({x}, {y}) changed outside the mask");
                }
            }
        }
        assert!(changed > 100, "{changed} pixels changed");
    }
}
