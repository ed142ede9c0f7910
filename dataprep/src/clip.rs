//! One source clip on its way into a data set: where it is and with which settings
//! (`ClipSettings`), what decoding made of it (`DecodedClip`), why it or a part of it was
//! skipped (`Rejection`, written to `rejected.jsonl`), and the checks every decoding path applies.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use syncdiff_dataset::shards::FaceRecord;

use crate::video;

/// Why a clip (or a part of it) was skipped (written to `rejected.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// `<speaker>/<clip>`.
    pub clip: String,
    /// Short reason code: missing, undecodable, truncated, no_audio, zero_frames, wrong_fps,
    /// audio_short, bad_boxes, no_face (no face, or a segment with one shorter than
    /// `data.face.min_segment_s`), face_model, pixel_format (grayscale or more than 8 bits).
    pub reason: String,
    /// Details.
    pub detail: String,
}

/// How much shorter than its container's duration a clip's decoded video and audio may be
/// before it counts as truncated (three frames at 25 fps; or 4 % of the duration, if more).
pub const TRUNCATION_TOLERANCE_S: f64 = 0.12;

/// Settings of the per-clip work.
#[derive(Debug, Clone)]
pub struct ClipSettings {
    /// Frame side after resizing.
    pub resolution: u32,
    /// Required frame rate.
    pub fps: f64,
    /// Audio rate for the filterbank.
    pub sample_rate: u32,
    /// Fraction of the box, from the bottom, zeroed in the masked frame.
    pub mask_fraction: f64,
    /// Largest allowed shortfall of audio against video, in seconds.
    pub audio_tolerance_s: f64,
    /// Where the clips are (LRS2 or a folder of videos).
    pub layout: crate::layout::Layout,
    /// `data.face.detector: boxes`: crop each frame to its sidecar box (LRS2 layout).
    pub sidecar_boxes: bool,
    /// `data.face` when a dlib detector runs (the face front-end crops and masks); `None`: the
    /// whole frame (or the sidecar box) is the face.
    pub face: Option<syncdiff_model::config::FaceConfig>,
}

/// Decoded clip before encoding: frames (F, S, S, 3) as RGB bytes and the mel rows.
#[derive(Debug)]
pub struct DecodedClip {
    /// `<speaker>/<clip>`.
    pub id: String,
    /// Frames.
    pub frames: usize,
    /// RGB bytes, frames x S x S x 3.
    pub rgb: Vec<u8>,
    /// Mel rows, frames x 104.
    pub mel: Vec<f32>,
    /// Per-pixel masks, frames x S x S (true: hidden), from the face front-end; `None`: the
    /// lower `mask_fraction` rows of every frame.
    pub masks: Option<Vec<bool>>,
    /// Per frame, what the face front-end found (empty without it).
    pub faces: Vec<FaceRecord>,
    /// Frame width of `rgb` (S, or the source's before the face front-end crops).
    pub width: u32,
    /// The source's display rotation, already applied to `rgb` (0, 90, 180, 270).
    pub rotation: u32,
    /// Frame height of `rgb`.
    pub height: u32,
}

pub(crate) fn reject(clip: &str, reason: &str, detail: impl Into<String>) -> Rejection {
    Rejection {
        clip: clip.to_string(),
        reason: reason.into(),
        detail: detail.into(),
    }
}

/// Where clip `id` is; `missing` when there is no such file.
pub(crate) fn clip_file(root: &Path, id: &str, s: &ClipSettings) -> Result<PathBuf, Rejection> {
    let path = s.layout.clip_path(root, id);
    if path.is_file() {
        Ok(path)
    } else {
        Err(reject(
            id,
            "missing",
            format!("{} does not exist", path.display()),
        ))
    }
}

/// A clip ffmpeg could not decode: `zero_frames` when it has no video stream, else
/// `undecodable`.
pub(crate) fn decode_failure(id: &str, e: &video::VideoError) -> Rejection {
    let msg = e.to_string();
    let reason = if msg.ends_with("no video stream") || msg.contains("matches no streams") {
        "zero_frames"
    } else {
        "undecodable"
    };
    reject(id, reason, msg)
}

/// The checks of a clip's streams: 8-bit colour (`pixel_format`: grayscale or more than 8 bits
/// would change silently when decoded to 8-bit RGB), the frame rate (`wrong_fps`), a sound
/// track (`no_audio`).
pub(crate) fn check_stream(
    id: &str,
    path: &Path,
    pix_fmt: &str,
    fps: f64,
    has_audio: bool,
    s: &ClipSettings,
) -> Result<(), Rejection> {
    if let Err(e) = video::check_pixel_format(path, pix_fmt) {
        return Err(reject(id, "pixel_format", e.to_string()));
    }
    if (fps - s.fps).abs() > 0.01 {
        return Err(reject(
            id,
            "wrong_fps",
            format!("{fps:.3} fps, expected {}", s.fps),
        ));
    }
    if !has_audio {
        return Err(reject(id, "no_audio", "no audio stream"));
    }
    Ok(())
}

/// The checks of one decoding pass that gave `frames` frames and `audio_s` seconds of audio: no
/// frames (`zero_frames`), less than the container states (`truncated`), errors logged while
/// decoding (`undecodable`), audio shorter than the video (`audio_short`).
pub(crate) fn check_pass(
    id: &str,
    frames: usize,
    audio_s: f64,
    duration_s: Option<f64>,
    errors: &[String],
    s: &ClipSettings,
) -> Result<(), Rejection> {
    if frames == 0 {
        return Err(reject(id, "zero_frames", "no frames decoded"));
    }
    // A cut-off file decodes what it has and says so at error level; its container still
    // states the whole duration.
    let video_s = frames as f64 / s.fps;
    let decoded_s = video_s.max(audio_s);
    let first_error = errors
        .first()
        .map_or(String::new(), |e| format!("; ffmpeg: {e}"));
    if let Some(d) = duration_s {
        if d - decoded_s > TRUNCATION_TOLERANCE_S.max(0.04 * d) {
            return Err(reject(
                id,
                "truncated",
                format!(
                    "{frames} frames ({decoded_s:.2} s) decoded of the {d:.2} s the container states{first_error}"
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(reject(
            id,
            "undecodable",
            format!("{} decoding error(s){first_error}", errors.len()),
        ));
    }
    if audio_s + s.audio_tolerance_s < video_s {
        return Err(reject(
            id,
            "audio_short",
            format!("{audio_s:.2} s of audio for {video_s:.2} s of video"),
        ));
    }
    Ok(())
}
