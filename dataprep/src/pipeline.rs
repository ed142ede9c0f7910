//! One source clip -> latents, masked latents and aligned filterbank rows.
//!
//! Where clips are: `crate::layout` (LRS2, or a folder of videos). In the LRS2 layout, optional
//! face boxes: `ROOT/main/<speaker>/<clip>.boxes.txt`, one line `x0 y0 x1 y1` (source pixels) per
//! frame; without it (and without a dlib detector, `crate::segments`) the whole frame is the face
//! box (LRS2 frames are face crops). The masked frame zeroes (black pixels) the lower
//! `mask_fraction` of the box.

use std::path::Path;

use half::f16;

use syncdiff_model::vq::Autoencoder;
use tch::{Device, Kind, Tensor};

use crate::clip::{check_pass, check_stream, clip_file, decode_failure, reject};
pub use crate::clip::{ClipSettings, DecodedClip, Rejection, TRUNCATION_TOLERANCE_S};
use crate::video;
use syncdiff_dataset::audio::{mel_group_features, LogFbank};
use syncdiff_dataset::shards::ClipData;

/// Reads the face boxes sidecar: one `x0 y0 x1 y1` line per frame (blank lines ignored). An
/// unreadable or non-UTF-8 file, a line that is not exactly four numbers with `x1 > x0` and
/// `y1 > y0`, or a count other than `frames` rejects the clip (`bad_boxes`, naming the file and
/// the line).
fn boxes(root: &Path, id: &str, frames: usize) -> Result<Vec<[f64; 4]>, Rejection> {
    let p = root.join("main").join(format!("{id}.boxes.txt"));
    let bad = |detail: String| reject(id, "bad_boxes", format!("{}: {detail}", p.display()));
    let bytes = std::fs::read(&p).map_err(|e| bad(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
    let mut rows = Vec::with_capacity(frames);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Result<Vec<f64>, _> = line.split_whitespace().map(str::parse::<f64>).collect();
        match v.as_deref() {
            Ok([a, b, c, d]) if [a, b, c, d].iter().all(|x| x.is_finite()) && c > a && d > b => {
                rows.push([*a, *b, *c, *d])
            }
            _ => {
                return Err(bad(format!(
                    "line {}: `{line}` is not `x0 y0 x1 y1` (four numbers, x1 > x0, y1 > y0)",
                    n + 1
                )))
            }
        }
    }
    if rows.len() != frames {
        return Err(bad(format!("{} boxes for {frames} frames", rows.len())));
    }
    Ok(rows)
}

/// Crops each frame to its box and resizes to `size` (bilinear). rgb: frames x h x w x 3.
fn crop_resize(rgb: &[u8], w: u32, h: u32, boxes: &[[f64; 4]], size: u32) -> Vec<u8> {
    let frames = Tensor::from_slice(rgb).view([boxes.len() as i64, i64::from(h), i64::from(w), 3]);
    let out: Vec<Tensor> = boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let x0 = (b[0].max(0.0) as i64).min(i64::from(w) - 1);
            let y0 = (b[1].max(0.0) as i64).min(i64::from(h) - 1);
            let x1 = (b[2].ceil() as i64).clamp(x0 + 1, i64::from(w));
            let y1 = (b[3].ceil() as i64).clamp(y0 + 1, i64::from(h));
            // (h, w, 3) -> (1, 3, h, w)
            let crop = frames
                .get(i as i64)
                .narrow(0, y0, y1 - y0)
                .narrow(1, x0, x1 - x0)
                .permute([2, 0, 1])
                .unsqueeze(0)
                .to_kind(Kind::Float);
            let r = crop.upsample_bilinear2d([i64::from(size), i64::from(size)], false, None, None);
            r.squeeze_dim(0)
                .permute([1, 2, 0])
                .round()
                .clamp(0.0, 255.0)
                .to_kind(Kind::Uint8)
        })
        .collect();
    // A uint8 CPU tensor by construction: the conversion cannot fail.
    Vec::<u8>::try_from(Tensor::stack(&out, 0).flatten(0, -1)).expect("uint8 CPU frames")
}

/// Decodes a clip and computes its aligned filterbank rows; the checks of `rejected.jsonl`.
pub fn decode_clip(
    root: &Path,
    id: &str,
    s: &ClipSettings,
    fb: &LogFbank,
) -> Result<DecodedClip, Rejection> {
    let path = clip_file(root, id, s)?;
    let size = s.resolution;
    let sidecar = root.join("main").join(format!("{id}.boxes.txt"));
    let has_boxes = s.sidecar_boxes && s.layout == crate::layout::Layout::Lrs2;
    if has_boxes && !sidecar.exists() {
        return Err(reject(
            id,
            "bad_boxes",
            format!(
                "no sidecar {} (data.face.detector: boxes)",
                sidecar.display()
            ),
        ));
    }
    // One ffmpeg pass: frames (scaled here unless boxes or the face front-end need the source
    // frames) and audio.
    let scaled = !has_boxes && s.face.is_none();
    let resample = s.layout.resamples().then_some(s.fps);
    let av = video::decode_av_at(&path, scaled.then_some(size), s.sample_rate, resample)
        .map_err(|e| decode_failure(id, &e))?;
    check_stream(id, &path, &av.pix_fmt, av.fps, av.has_audio, s)?;
    let frames = av.rgb.len() / (av.width * av.height * 3) as usize;
    let audio_s = av.audio.len() as f64 / f64::from(s.sample_rate);
    check_pass(id, frames, audio_s, av.duration_s, &av.errors, s)?;
    let rotation = av.rotation;
    let (rgb, width, height) = if has_boxes {
        let b = boxes(root, id, frames)?;
        (
            crop_resize(&av.rgb, av.width, av.height, &b, size),
            size,
            size,
        )
    } else {
        (av.rgb, av.width, av.height)
    };
    let samples: Vec<f64> = av.audio.iter().map(|&v| f64::from(v)).collect();
    let mel = mel_group_features(fb, &samples, frames);
    Ok(DecodedClip {
        id: id.to_string(),
        frames,
        rgb,
        mel,
        masks: None,
        faces: Vec::new(),
        width,
        height,
        rotation,
    })
}

/// One source clip's parts, each handed to `send` as soon as it is ready (`send` returning false
/// stops the work): without the face front-end the clip itself ([`decode_clip`]); with it, its
/// segments with a face, each cropped and masked, streamed (`crate::segments`). Returns the
/// scene cuts found, or the rejection of the whole clip, which replaces any parts already sent.
pub fn stream_clip_parts(
    root: &Path,
    id: &str,
    s: &ClipSettings,
    fb: &LogFbank,
    send: &mut dyn FnMut(Result<DecodedClip, Rejection>) -> bool,
) -> Result<usize, Rejection> {
    match &s.face {
        Some(face) => crate::segments::stream_face_clip(root, id, face, s, fb, send),
        None => {
            send(Ok(decode_clip(root, id, s, fb)?));
            Ok(0)
        }
    }
}

/// [`stream_clip_parts`], collected.
pub fn decode_clip_parts(root: &Path, id: &str, s: &ClipSettings, fb: &LogFbank) -> ClipParts {
    let mut parts = Vec::new();
    match stream_clip_parts(root, id, s, fb, &mut |p| {
        parts.push(p);
        true
    }) {
        Ok(cuts) => ClipParts { parts, cuts },
        Err(r) => ClipParts {
            parts: vec![Err(r)],
            cuts: 0,
        },
    }
}

/// What one source clip became.
#[derive(Debug)]
pub struct ClipParts {
    /// The stored clips (one, or one per segment with a face) and the rejected ones.
    pub parts: Vec<Result<DecodedClip, Rejection>>,
    /// Scene cuts found in it.
    pub cuts: usize,
}

/// Frames as model input: RGB bytes (F, S, S, 3) -> (F, 3, S, S) in [-1, 1], and the masked copy
/// with the lower `mask_fraction` rows black.
pub fn frames_to_tensors(
    rgb: &[u8],
    frames: usize,
    size: u32,
    mask_fraction: f64,
    device: Device,
) -> (Tensor, Tensor) {
    let s = i64::from(size);
    let x = Tensor::from_slice(rgb)
        .view([frames as i64, s, s, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0;
    let x = x.to_device(device);
    let first = ((1.0 - mask_fraction) * size as f64).round() as i64;
    let masked = x.copy();
    let _ = masked.narrow(2, first, s - first).fill_(-1.0);
    (x, masked)
}

/// Frames (F, 3, S, S) with the pixels `masks` hides (F x S x S, row-major, true: hidden) black,
/// as the front-end's mouth masks are applied.
pub fn mask_pixels(x: &Tensor, masks: &[bool]) -> Tensor {
    let size = x.size();
    let bytes: Vec<u8> = masks.iter().map(|&b| u8::from(b)).collect();
    let m = Tensor::from_slice(&bytes)
        .view([size[0], 1, size[2], size[3]])
        .to_kind(Kind::Bool)
        .to_device(x.device());
    x.masked_fill(&m, -1.0)
}

/// Encodes frames (N, 3, S, S) in batches of `batch` on their device; `half` encodes in float16
/// (CUDA only). Returns float32 latents on the same device.
pub fn encode_batches(ae: &Autoencoder, x: &Tensor, batch: i64, half: bool) -> Tensor {
    let n = x.size()[0];
    let parts: Vec<Tensor> = (0..n)
        .step_by(batch.max(1) as usize)
        .map(|start| {
            let b = x.narrow(0, start, batch.min(n - start));
            let b = if half { b.to_kind(Kind::Half) } else { b };
            tch::no_grad(|| ae.encode(&b)).to_kind(Kind::Float)
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// [`encode_batches`] as float16 values on the host, in store order.
pub fn encode_latents(ae: &Autoencoder, x: &Tensor, batch: i64, half: bool) -> Vec<f16> {
    let all = encode_batches(ae, x, batch, half).to_device(Device::Cpu);
    // float32 on the CPU by construction: the conversion cannot fail.
    let flat: Vec<f32> = Vec::try_from(all.flatten(0, -1)).expect("float32 CPU latents");
    flat.into_iter().map(f16::from_f32).collect()
}

/// A decoded clip encoded into store form.
pub fn encode_clip(
    ae: &Autoencoder,
    clip: DecodedClip,
    s: &ClipSettings,
    device: Device,
    batch: i64,
    half: bool,
) -> ClipData {
    let (x, mut masked) = frames_to_tensors(
        &clip.rgb,
        clip.frames,
        s.resolution,
        s.mask_fraction,
        device,
    );
    if let Some(m) = &clip.masks {
        masked = mask_pixels(&x, m);
    }
    ClipData {
        id: clip.id,
        frames: clip.frames,
        latents: encode_latents(ae, &x, batch, half),
        masked_latents: encode_latents(ae, &masked, batch, half),
        mel: clip.mel,
        audio_features: Vec::new(),
        faces: clip.faces,
        rotation: clip.rotation,
    }
}
