//! Pictures of what the front-end decided, drawn on the source frame: the crop square (yellow),
//! the face box (green), the mouth mask (tinted blue) and the landmarks (red). Used by
//! `syncdiff-dataprep faces` to check alignment before a long preparation.

use syncdiff_model::config::FaceConfig;

use super::geometry::{mouth_mask, CropTransform, Rect};
use super::track::FaceFrame;

fn put(rgb: &mut [u8], w: usize, h: usize, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
        let o = (y as usize * w + x as usize) * 3;
        rgb[o..o + 3].copy_from_slice(&c);
    }
}

/// A line from `a` to `b`, `thick` pixels wide.
fn line(rgb: &mut [u8], w: usize, h: usize, a: [f32; 2], b: [f32; 2], c: [u8; 3], thick: i64) {
    let n = ((b[0] - a[0]).abs().max((b[1] - a[1]).abs()).ceil() as usize).max(1);
    for k in 0..=n {
        let t = k as f32 / n as f32;
        let (x, y) = (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t);
        for dy in 0..thick {
            for dx in 0..thick {
                put(
                    rgb,
                    w,
                    h,
                    x as i64 + dx - thick / 2,
                    y as i64 + dy - thick / 2,
                    c,
                );
            }
        }
    }
}

fn rect(rgb: &mut [u8], w: usize, h: usize, r: &Rect, c: [u8; 3], thick: i64) {
    let corners = [[r.x0, r.y0], [r.x1, r.y0], [r.x1, r.y1], [r.x0, r.y1]];
    for i in 0..4 {
        line(rgb, w, h, corners[i], corners[(i + 1) % 4], c, thick);
    }
}

/// Draws the front-end's view of one frame onto `rgb` (`width` x `height`), the crop being
/// `size` pixels square as the model sees it.
pub fn overlay(
    rgb: &mut [u8],
    width: u32,
    height: u32,
    face: &FaceFrame,
    cfg: &FaceConfig,
    mask_fraction: f64,
    size: u32,
) {
    let (w, h) = (width as usize, height as usize);
    let thick = ((w.max(h) / 400).max(1)) as i64;
    let crop = CropTransform::new(cfg, &face.rect, width, height, size);
    let mask = mouth_mask(
        cfg,
        mask_fraction,
        &crop,
        &face.rect,
        face.landmarks.as_ref(),
    );
    let to_crop = crop.to_crop();
    let s = size as f32;
    for y in 0..h {
        for x in 0..w {
            let [u, v] = to_crop.apply([x as f32 + 0.5, y as f32 + 0.5]);
            if u >= 0.0
                && v >= 0.0
                && u < s
                && v < s
                && mask[v as usize * size as usize + u as usize]
            {
                let o = (y * w + x) * 3;
                rgb[o] = (f32::from(rgb[o]) * 0.5) as u8;
                rgb[o + 1] = (f32::from(rgb[o + 1]) * 0.5) as u8;
                rgb[o + 2] = (f32::from(rgb[o + 2]) * 0.5 + 127.0) as u8;
            }
        }
    }
    let sq = [[0.0, 0.0], [s, 0.0], [s, s], [0.0, s]].map(|p| crop.to_source.apply(p));
    for i in 0..4 {
        line(rgb, w, h, sq[i], sq[(i + 1) % 4], [255, 220, 0], thick);
    }
    rect(rgb, w, h, &face.rect, [0, 220, 0], thick);
    if let Some(lm) = &face.landmarks {
        for p in lm {
            let r = thick + 1;
            for dy in -r..=r {
                for dx in -r..=r {
                    put(rgb, w, h, p[0] as i64 + dx, p[1] as i64 + dy, [255, 30, 30]);
                }
            }
        }
    }
}
