//! `data.face`: how the face is found in a frame, what the model sees of it and which part is
//! masked. One section serves data preparation, generation and evaluation, so that a model is
//! used with the alignment it was trained with.

use serde::{Deserialize, Serialize};

/// `data.face.detector`: where the face box comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FaceDetectorKind {
    /// No detection: the whole frame is the face (the synthetic data set; frames that are
    /// already face crops).
    #[default]
    #[serde(rename = "none")]
    None,
    /// Boxes from a sidecar file next to each LRS2 clip (`<clip>.boxes.txt`, one `x0 y0 x1 y1`
    /// line per frame, source pixels); each frame is cropped to its box (a clip without one is
    /// rejected, `bad_boxes`).
    #[serde(rename = "boxes")]
    Boxes,
    /// dlib's HOG frontal-face detector (compiled into dlib, no model file).
    #[serde(rename = "dlib-hog")]
    DlibHog,
    /// dlib's CNN (MMOD) face detector: more robust to pose, slower; needs `cnn_model`.
    #[serde(rename = "dlib-cnn")]
    DlibCnn,
}

impl FaceDetectorKind {
    /// The name in configurations.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Boxes => "boxes",
            Self::DlibHog => "dlib-hog",
            Self::DlibCnn => "dlib-cnn",
        }
    }

    /// Whether this detector runs dlib (and gives landmarks).
    pub fn is_dlib(self) -> bool {
        matches!(self, Self::DlibHog | Self::DlibCnn)
    }
}

/// `data.face.crop`: what the model's square input is cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaceCrop {
    /// The whole frame, resized (LRS2/LRS3 frames are face crops already; the paper).
    #[default]
    Frame,
    /// A square around the face box, `margin` wider on each side (any other video).
    Face,
}

impl FaceCrop {
    /// The name in configurations.
    pub fn name(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::Face => "face",
        }
    }
}

/// `data.face.mask`: which part of the face the masked frame hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaceMask {
    /// The lower `data.mask_fraction` of the face box (the paper).
    #[default]
    BoxLowerHalf,
    /// The region below the nose bounded by the jaw line, from the 68 landmarks.
    Landmarks,
}

/// `data.face`: the face front-end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaceConfig {
    /// `none`, `boxes`, `dlib-hog` or `dlib-cnn`.
    pub detector: FaceDetectorKind,
    /// `frame` or `face`.
    pub crop: FaceCrop,
    /// `box-lower-half` or `landmarks`.
    pub mask: FaceMask,
    /// With `crop: face`: the square's margin on each side, as a fraction of the face box side.
    pub margin: f64,
    /// Run the detector on every k-th frame while it finds the face (after a miss: every frame
    /// until found or lost); boxes in between are interpolated, landmarks are predicted on every
    /// frame.
    pub detect_every: u32,
    /// Smallest face side in source pixels (at least 20); the detector runs on the frame scaled
    /// so that such a face meets its 80-pixel window.
    pub min_face: u32,
    /// Centred moving-average window, in frames (odd), over boxes and landmarks (1: none).
    pub smooth_window: u32,
    /// Longest time the tracked face may be missing before the clip is split, in seconds.
    pub max_gap_s: f64,
    /// Shortest segment with a face that is kept, in seconds (shorter ones: `no_face`).
    pub min_segment_s: f64,
    /// Longest stored clip, in seconds: a longer segment with a face is cut into equal parts no
    /// longer than this (ingest holds one part in memory at a time; at least twice
    /// `min_segment_s`).
    pub max_segment_s: f64,
    /// Smallest IoU between the tracked box and a new detection of the same face.
    pub track_iou: f64,
    /// Mean absolute difference between consecutive frames (0-255 grey levels, on a 32x32
    /// thumbnail) above which a frame starts a new shot (0 disables scene-cut detection).
    pub scene_cut: f64,
    /// dlib's 68-point landmark model (Debian `libdlib-data`).
    pub landmarks_model: String,
    /// dlib's CNN face detector model (`mmod_human_face_detector.dat`); `dlib-cnn` only.
    pub cnn_model: Option<String>,
}

/// Where Debian's `libdlib-data` puts the 68-point landmark model.
pub const DEBIAN_LANDMARKS_MODEL: &str = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat";

impl Default for FaceConfig {
    fn default() -> Self {
        Self {
            detector: FaceDetectorKind::None,
            crop: FaceCrop::Frame,
            mask: FaceMask::BoxLowerHalf,
            margin: 0.25,
            detect_every: 1,
            min_face: 80,
            smooth_window: 5,
            max_gap_s: 0.2,
            min_segment_s: 1.0,
            max_segment_s: 10.0,
            track_iou: 0.5,
            scene_cut: 40.0,
            landmarks_model: DEBIAN_LANDMARKS_MODEL.into(),
            cnn_model: None,
        }
    }
}
