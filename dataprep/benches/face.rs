//! Face front-end throughput (detection + landmarks + tracking + smoothing, scene-cut check
//! included), frames per second on one core, for each detector and detect-every-k, on LRS2-size
//! face crops (160x160, face ~100 px) and on 1280x720 frames (face ~130-190 px). The frames are
//! scikit-image's astronaut portrait moved by small known transforms (real face, real texture).
//! Configurations are measured round-robin (3 rounds, median), then the LRS2 projection.
//!
//! ```text
//! source ci/env.sh && taskset -c 0 cargo bench -p syncdiff-dataprep --bench face
//! ```
//! Target: HOG detector, 160x160: >= 100 frames/s per core (LRS2's ~2.6 M frames in under 30
//! minutes on one 16-core node).

use std::time::Instant;

use syncdiff_dataprep::face::{warp, Affine, FrontEnd};
use syncdiff_dataprep::video;
use syncdiff_devkit::{cnn_face_model, env_or, photo, stats::median};
use syncdiff_model::config::{FaceConfig, FaceDetectorKind};

const LRS2_FRAMES: f64 = 2.6e6;

struct Case {
    name: String,
    cfg: FaceConfig,
    width: u32,
    height: u32,
    frames: Vec<u8>,
}

/// `n` frames of the portrait: face centre (224, 128) of the photo drawn at the frame's centre,
/// `scale` times its size, drifting a few pixels and turning a few degrees.
fn clip(photo_rgb: &[u8], n: usize, width: u32, height: u32, scale: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let t = i as f32 / n as f32;
        let (s, c) = (4f32.to_radians() * (6.0 * t).sin()).sin_cos();
        let k = scale * (1.0 + 0.05 * (4.0 * t).sin());
        let (a, b, d, e) = (c / k, s / k, -s / k, c / k);
        let (px, py) = (
            width as f32 / 2.0 + 0.03 * width as f32 * (5.0 * t).sin(),
            height as f32 / 2.0,
        );
        let m = Affine([
            a,
            b,
            224.0 - (a * px + b * py),
            d,
            e,
            128.0 - (d * px + e * py),
        ]);
        out.extend(warp(photo_rgb, 512, 512, &m, width, height));
    }
    out
}

fn cfg(detector: FaceDetectorKind, every: u32, min_face: u32) -> FaceConfig {
    FaceConfig {
        detector,
        detect_every: every,
        min_face,
        cnn_model: Some(cnn_face_model().display().to_string()),
        ..FaceConfig::default()
    }
}

fn run(case: &Case, fe: &FrontEnd) -> anyhow::Result<f64> {
    let size = (case.width * case.height * 3) as usize;
    let t = Instant::now();
    let mut tracker = fe.tracker(case.width, case.height, 25.0);
    for f in case.frames.chunks_exact(size) {
        tracker.push(f)?;
    }
    let faces = tracker.finish();
    let n = case.frames.len() / size;
    let fps = n as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(
        faces.with_face() == n,
        "{}: a face in {} of {n} frames (segments {:?}, cuts {:?})",
        case.name,
        faces.with_face(),
        faces.segments,
        faces.cuts
    );
    Ok(fps)
}

fn main() -> anyhow::Result<()> {
    let rounds = env_or("BENCH_REPS", 3);
    let small_n = env_or("BENCH_FRAMES_SMALL", 100);
    let large_n = env_or("BENCH_FRAMES_LARGE", 20);
    let astro = video::decode_frames(&photo("astronaut.png"), 512, 512)?;
    let small = clip(&astro, small_n, 160, 160, 160.0 / 140.0);
    let large = clip(&astro, large_n, 1280, 720, 1.8);
    use FaceDetectorKind::{DlibCnn, DlibHog};
    let small_cases = [
        (DlibHog, 1, 80),
        (DlibHog, 5, 80),
        (DlibCnn, 1, 80),
        (DlibCnn, 5, 80),
    ];
    let large_cases = [
        (DlibHog, 1, 80),
        (DlibHog, 1, 120),
        (DlibHog, 5, 120),
        (DlibCnn, 5, 120),
    ];
    let mut cases = Vec::new();
    for (label, width, height, frames, list) in [
        ("160x160 ", 160, 160, &small, small_cases),
        ("1280x720", 1280, 720, &large, large_cases),
    ] {
        for (det, every, min_face) in list {
            cases.push(Case {
                name: format!(
                    "{label} {:8} every {every}  min_face {min_face}",
                    det.name()
                ),
                cfg: cfg(det, every, min_face),
                width,
                height,
                frames: frames.clone(),
            });
        }
    }
    let fronts: Vec<FrontEnd> = cases
        .iter()
        .map(|c| FrontEnd::new(&c.cfg))
        .collect::<Result<_, _>>()?;
    eprintln!(
        "face front-end, one thread; {small_n} frames at 160x160, {large_n} at 1280x720; \
         {rounds} rounds round-robin (+1 warm-up)"
    );
    let mut fps: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..=rounds {
        for (i, (c, fe)) in cases.iter().zip(&fronts).enumerate() {
            let f = run(c, fe)?;
            if round > 0 {
                fps[i].push(f);
            }
        }
    }
    println!(
        "{:48} {:>10} {:>10} {:>22}",
        "configuration", "frames/s", "ms/frame", "LRS2, 16 cores"
    );
    for (c, f) in cases.iter().zip(&fps) {
        let m = median(f);
        let minutes = LRS2_FRAMES / (m * 16.0) / 60.0;
        println!(
            "{:48} {m:>10.1} {:>10.2} {minutes:>18.0} min",
            c.name,
            1000.0 / m
        );
    }
    let hog = median(&fps[0]);
    let hog5 = median(&fps[1]);
    println!(
        "target (HOG, 160x160, >= 100 frames/s per core): every 1: {hog:.0} ({}), every 5: {hog5:.0} ({})",
        if hog >= 100.0 { "met" } else { "missed" },
        if hog5 >= 100.0 { "met" } else { "missed" },
    );
    Ok(())
}
