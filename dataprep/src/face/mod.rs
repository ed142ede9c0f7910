//! The face front-end: find the speaker's face in frames of any size, follow it through a clip,
//! smooth it, and derive what the model needs per frame (the square crop and its inverse, the
//! mouth mask).
//!
//! ```text
//! frame ─▶ scene-cut check ─▶ detector (every k-th frame, or while no face is tracked)
//!       ─▶ match to the tracked face (IoU) ─▶ 68 landmarks in its box
//! clip  ─▶ segments (face lost > max_gap_s, or a scene cut, splits) ─▶ boxes interpolated
//!       ─▶ centred moving average (boxes, landmarks) ─▶ crop transform, mouth mask
//! ```
//!
//! Detection and landmarks are dlib's (HOG or CNN detector, the iBUG 68-point shape predictor),
//! through the `dlib-face-recognition` crate; see docs/faces.md.

mod dlib;
mod draw;
pub mod geometry;
mod track;

use std::ops::Range;
use std::path::{Path, PathBuf};

use syncdiff_model::config::{FaceConfig, FaceDetectorKind};

pub use draw::overlay;
pub use geometry::{
    feather, landmark_box, mouth_mask, paste_back, warp, Affine, CropTransform, Landmarks, Rect,
    LANDMARK_BOX_SCALE,
};
pub use track::FaceFrame;

/// Why the front-end cannot run. Messages name the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    /// A dlib model file is missing or is not what it should be.
    #[error("{path}: {message}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The configured detector does not run on frames.
    #[error("data.face.detector {0}: the face front-end runs dlib-hog or dlib-cnn")]
    NotADetector(&'static str),
    /// A frame does not hold `width * height * 3` bytes.
    #[error("frame {frame}: {bytes} bytes, not {width}x{height} RGB")]
    FrameSize {
        /// Frame index in the clip.
        frame: usize,
        /// Bytes given.
        bytes: usize,
        /// Expected width.
        width: u32,
        /// Expected height.
        height: u32,
    },
}

/// The detector and landmark model for one thread (dlib's detectors are not shareable; the
/// 99 MB landmark model is loaded once per process and shared).
#[derive(Debug)]
pub struct FrontEnd {
    cfg: FaceConfig,
    detector: dlib::Detector,
    predictor: dlib::Predictor,
}

impl FrontEnd {
    /// Loads what `cfg.detector` needs.
    pub fn new(cfg: &FaceConfig) -> Result<Self, FaceError> {
        let detector = match cfg.detector {
            FaceDetectorKind::DlibHog => dlib::Detector::hog(),
            FaceDetectorKind::DlibCnn => {
                let path = cfg.cnn_model.as_deref().unwrap_or_default();
                dlib::Detector::cnn(Path::new(path))?
            }
            other => return Err(FaceError::NotADetector(other.name())),
        };
        let predictor = dlib::Predictor::load(Path::new(&cfg.landmarks_model))?;
        Ok(Self {
            cfg: cfg.clone(),
            detector,
            predictor,
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &FaceConfig {
        &self.cfg
    }

    /// Every face of at least `min_face` pixels in an RGB frame (the detector runs on the frame
    /// scaled by `80 / min_face`, so that its 80-pixel window matches the smallest face).
    pub fn detect(&self, rgb: &[u8], width: u32, height: u32) -> Result<Vec<Rect>, FaceError> {
        let img = image(rgb, width, height, 0)?;
        Ok(self.detect_in(&img, width, height, self.cfg.min_face as f32))
    }

    fn detect_in(
        &self,
        img: &dlib_face_recognition::ImageMatrix,
        width: u32,
        height: u32,
        min_face: f32,
    ) -> Vec<Rect> {
        let scale = dlib::DETECTOR_WINDOW / min_face;
        let (found, sx, sy) = match dlib::rescale(img, width, height, scale) {
            Some((scaled, sx, sy)) => (self.detector.detect(&scaled), sx, sy),
            None => (self.detector.detect(img), 1.0, 1.0),
        };
        found
            .into_iter()
            .map(|r| Rect {
                x0: r.x0 / sx,
                y0: r.y0 / sy,
                x1: r.x1 / sx,
                y1: r.y1 / sy,
            })
            .collect()
    }

    /// The largest face at half the minimum size, for telling a user that the faces in a video
    /// are smaller than `data.face.min_face` (`None`: no face even then).
    pub fn smaller_face(
        &self,
        rgb: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Option<Rect>, FaceError> {
        let img = image(rgb, width, height, 0)?;
        let found = self.detect_in(&img, width, height, self.cfg.min_face as f32 / 2.0);
        Ok(largest(&found))
    }

    /// Why no face was found in a clip of `frames` frames, for an error message: with a hint
    /// when `sample` (one of its frames) holds a face smaller than `data.face.min_face`.
    pub fn no_face_message(&self, sample: &[u8], width: u32, height: u32, frames: usize) -> String {
        let min = self.cfg.min_face;
        let base = format!("no face of at least {min} px (data.face.min_face) in {frames} frames");
        match self.smaller_face(sample, width, height) {
            Ok(Some(r)) => format!(
                "{base}; a face of {:.0} px is there: lower data.face.min_face to find it",
                r.side()
            ),
            _ => base,
        }
    }

    /// The 68 landmarks of the face in `rect`.
    pub fn landmarks(
        &self,
        rgb: &[u8],
        width: u32,
        height: u32,
        rect: &Rect,
    ) -> Result<Option<Landmarks>, FaceError> {
        let img = image(rgb, width, height, 0)?;
        Ok(self.predictor.landmarks(&img, rect))
    }

    /// A tracker for one clip of `width` x `height` frames at `fps`.
    pub fn tracker(&self, width: u32, height: u32, fps: f64) -> Tracker<'_> {
        let k = self.cfg.detect_every.max(1) as usize;
        Tracker {
            fe: self,
            width,
            height,
            detect_every: k,
            allowance: (self.cfg.max_gap_s * fps).round() as usize,
            raw: Vec::new(),
            last_match: None,
            first_miss: None,
            last_run: None,
            prev_thumb: None,
        }
    }
}

fn image(
    rgb: &[u8],
    width: u32,
    height: u32,
    frame: usize,
) -> Result<dlib_face_recognition::ImageMatrix, FaceError> {
    dlib::image(rgb, width, height).ok_or(FaceError::FrameSize {
        frame,
        bytes: rgb.len(),
        width,
        height,
    })
}

fn largest(rects: &[Rect]) -> Option<Rect> {
    rects
        .iter()
        .copied()
        .max_by(|a, b| (a.width() * a.height()).total_cmp(&(b.width() * b.height())))
}

/// Side of the grey thumbnail compared for scene cuts.
const THUMB: usize = 32;

/// Block-mean grey thumbnail (THUMB x THUMB) of an RGB frame.
fn thumbnail(rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
    let mut sum = vec![0f32; THUMB * THUMB];
    let mut count = vec![0u32; THUMB * THUMB];
    for y in 0..h {
        let ty = y * THUMB / h;
        for x in 0..w {
            let o = (y * w + x) * 3;
            let g = 0.299 * f32::from(rgb[o])
                + 0.587 * f32::from(rgb[o + 1])
                + 0.114 * f32::from(rgb[o + 2]);
            let t = ty * THUMB + x * THUMB / w;
            sum[t] += g;
            count[t] += 1;
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(s, &c)| s / c.max(1) as f32)
        .collect()
}

/// Follows one face through the frames of a clip, pushed in order; [`Tracker::finish`] gives the
/// per-frame faces. Memory: one small record per frame, never the frames.
#[derive(Debug)]
pub struct Tracker<'a> {
    fe: &'a FrontEnd,
    width: u32,
    height: u32,
    detect_every: usize,
    allowance: usize,
    raw: Vec<track::RawFrame>,
    /// Where the tracked face is: its last detection, moved along by the landmarks since.
    last_match: Option<Rect>,
    first_miss: Option<usize>,
    last_run: Option<usize>,
    prev_thumb: Option<Vec<f32>>,
}

impl Tracker<'_> {
    /// Looks at the next frame.
    pub fn push(&mut self, rgb: &[u8]) -> Result<(), FaceError> {
        let i = self.raw.len();
        let (w, h) = (self.width, self.height);
        let img = image(rgb, w, h, i)?;
        let cfg = &self.fe.cfg;
        let mut f = track::RawFrame::default();
        if cfg.scene_cut > 0.0 {
            let thumb = thumbnail(rgb, w as usize, h as usize);
            if let Some(prev) = &self.prev_thumb {
                let mad = prev
                    .iter()
                    .zip(&thumb)
                    .map(|(a, b)| (a - b).abs())
                    .sum::<f32>()
                    / thumb.len() as f32;
                f.cut = f64::from(mad) > cfg.scene_cut;
            }
            self.prev_thumb = Some(thumb);
        }
        if f.cut {
            self.last_match = None;
        }
        // Lost for longer than max_gap_s (counted from the first run that missed): a new track.
        if self.first_miss.is_some_and(|m| i - m > self.allowance) {
            self.last_match = None;
            self.first_miss = None;
        }
        // Every k-th frame while the face is found; after a miss, every frame until it is found
        // again or lost.
        let missed = self.last_run.is_some_and(|r| self.raw[r].det.is_none());
        let due = self.last_run.is_none_or(|r| i - r >= self.detect_every);
        if self.last_match.is_none() || f.cut || due || missed {
            f.ran = true;
            self.last_run = Some(i);
            let faces = self.fe.detect_in(&img, w, h, cfg.min_face as f32);
            f.det = match self.last_match {
                None => largest(&faces),
                Some(prev) => faces
                    .iter()
                    .map(|r| (r.iou(&prev), *r))
                    .filter(|(iou, _)| f64::from(*iou) >= cfg.track_iou)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, r)| r),
            };
            match f.det {
                Some(d) => {
                    self.last_match = Some(d);
                    self.first_miss = None;
                }
                None if self.last_match.is_some() => {
                    self.first_miss.get_or_insert(i);
                }
                None => {}
            }
        }
        // Landmarks in the detection on a detector frame, else in the box of the previous
        // frame's landmarks (the face as it was one frame ago, not at the last detection).
        if let Some(r) = f.det.or(self.last_match) {
            f.landmarks = self.fe.predictor.landmarks(&img, &r);
            if let Some(lm) = &f.landmarks {
                self.last_match = Some(geometry::landmark_box(lm));
            }
        }
        self.raw.push(f);
        Ok(())
    }

    /// Segments, boxes and landmarks of the clip.
    pub fn finish(self) -> ClipFaces {
        self.resolve(self.fe.cfg.smooth_window.max(1) as usize)
    }

    /// What [`Tracker::finish`] would give without smoothing (to see what smoothing does).
    pub fn unsmoothed(&self) -> ClipFaces {
        self.resolve(1)
    }

    fn resolve(&self, window: usize) -> ClipFaces {
        let (frames, segments) =
            track::resolve(&self.raw, self.allowance, self.detect_every, window);
        ClipFaces {
            cuts: (0..self.raw.len()).filter(|&i| self.raw[i].cut).collect(),
            detector_runs: self.raw.iter().filter(|f| f.ran).count(),
            frames,
            segments,
        }
    }
}

/// The tracked face of every frame of a clip.
#[derive(Debug, Clone)]
pub struct ClipFaces {
    /// Per frame: the face, or `None` outside every segment.
    pub frames: Vec<Option<FaceFrame>>,
    /// Runs of frames following one face (a split at every lost face and scene cut).
    pub segments: Vec<Range<usize>>,
    /// Frames that start a new shot.
    pub cuts: Vec<usize>,
    /// Frames the detector ran on.
    pub detector_runs: usize,
}

impl ClipFaces {
    /// Frames with a face.
    pub fn with_face(&self) -> usize {
        self.frames.iter().filter(|f| f.is_some()).count()
    }
}
