//! The face front-end on real photographs (scikit-image's astronaut portrait and cat), moved by
//! known transforms into videos, so that every expected box is known.

use std::f32::consts::PI;
use std::sync::OnceLock;

use syncdiff_dataprep::face::{landmark_box, Affine, ClipFaces, FaceError, FrontEnd, Rect};
use syncdiff_dataprep::video;
use syncdiff_devkit::{cnn_face_model, photo};
use syncdiff_model::config::{FaceConfig, FaceDetectorKind};

const ASTRO: u32 = 512;

fn astronaut() -> &'static [u8] {
    static RGB: OnceLock<Vec<u8>> = OnceLock::new();
    RGB.get_or_init(|| video::decode_frames(&photo("astronaut.png"), ASTRO, ASTRO).unwrap())
}

fn hog(set: impl FnOnce(&mut FaceConfig)) -> FrontEnd {
    let mut cfg = FaceConfig {
        detector: FaceDetectorKind::DlibHog,
        ..FaceConfig::default()
    };
    set(&mut cfg);
    FrontEnd::new(&cfg).unwrap()
}

/// The face box of the still portrait: the detector's, and the one from its landmarks (the
/// ground truth: mapped through a frame's known transform, it is where that frame's face is).
pub(crate) fn still_box() -> (Rect, Rect) {
    let fe = hog(|_| {});
    let faces = fe.detect(astronaut(), ASTRO, ASTRO).unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    let lm = fe
        .landmarks(astronaut(), ASTRO, ASTRO, &faces[0])
        .unwrap()
        .unwrap();
    (faces[0], landmark_box(&lm))
}

/// Where the still's face centre goes and how large the face is, per frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pose {
    pub scale: f32,
    pub angle: f32,
    pub pos: [f32; 2],
}

/// The frame -> photo map that draws the portrait with its face centre `still` at `pose.pos`,
/// scaled and rotated about it.
fn frame_to_photo(pose: &Pose, still: [f32; 2]) -> Affine {
    Affine::similarity(pose.scale, pose.angle, still, pose.pos)
}

pub(crate) fn render(poses: &[Pose], still: [f32; 2], width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(poses.len() * (width * height * 3) as usize);
    for p in poses {
        let m = frame_to_photo(p, still);
        out.extend(syncdiff_dataprep::face::warp(
            astronaut(),
            ASTRO,
            ASTRO,
            &m,
            width,
            height,
        ));
    }
    out
}

fn track(fe: &FrontEnd, frames: &[u8], width: u32, height: u32, fps: f64) -> ClipFaces {
    let mut t = fe.tracker(width, height, fps);
    for f in frames.chunks_exact((width * height * 3) as usize) {
        t.push(f).unwrap();
    }
    t.finish()
}

#[test]
fn the_portrait_has_one_face_with_landmarks_inside_it_and_the_cat_none() {
    let _g = crate::common::torch(); // dlib uses both cores; keep the other CPU-heavy tests out
    let fe = hog(|_| {});
    let (face, from_landmarks) = still_box();
    // The landmark box is the detector's box within a few pixels on this frontal face.
    assert!(
        face.iou(&from_landmarks) > 0.85,
        "{face:?} vs {from_landmarks:?}"
    );
    let lm = fe
        .landmarks(astronaut(), ASTRO, ASTRO, &face)
        .unwrap()
        .unwrap();
    let inside = |p: &[f32; 2]| {
        p[0] > face.x0 - 10.0
            && p[0] < face.x1 + 10.0
            && p[1] > face.y0 - 10.0
            && p[1] < face.y1 + 10.0
    };
    assert!(lm.iter().all(inside), "{lm:?} outside {face:?}");
    // The nose is between the eyes and above the mouth.
    assert!(lm[36][0] < lm[30][0] && lm[30][0] < lm[45][0], "{lm:?}");
    assert!(lm[30][1] < lm[62][1], "{lm:?}");

    let cat = video::decode_frames(&photo("chelsea.png"), 451, 300).unwrap();
    assert_eq!(fe.detect(&cat, 451, 300).unwrap(), vec![]);
    let clip = track(&fe, &[cat.clone(), cat].concat(), 451, 300, 25.0);
    assert!(clip.segments.is_empty() && clip.with_face() == 0);

    let err = fe.detect(&[0u8; 10], 4, 4).unwrap_err();
    assert_eq!(err.to_string(), "frame 0: 10 bytes, not 4x4 RGB");
}

#[test]
fn the_cnn_detector_finds_the_portrait_and_not_the_cat() {
    let _g = crate::common::torch();
    let fe = FrontEnd::new(&FaceConfig {
        detector: FaceDetectorKind::DlibCnn,
        cnn_model: Some(cnn_face_model().display().to_string()),
        ..FaceConfig::default()
    })
    .unwrap();
    let (hog_box, _) = still_box();
    let faces = fe.detect(astronaut(), ASTRO, ASTRO).unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    assert!(faces[0].iou(&hog_box) > 0.5, "{faces:?} vs {hog_box:?}");
    let cat = video::decode_frames(&photo("chelsea.png"), 451, 300).unwrap();
    assert_eq!(fe.detect(&cat, 451, 300).unwrap(), vec![]);
}

#[test]
fn a_moving_portrait_in_a_720p_video_is_tracked_within_5_percent_and_smoothing_cuts_jitter() {
    let _g = crate::common::torch();
    let (_, still) = still_box();
    let (w, h, fps, n) = (1280u32, 720u32, 30.0, 120usize);
    // 4 s: slow translation, scale 0.8-1.2 of 1.8x the photo, rotation +-10 degrees.
    let poses: Vec<Pose> = (0..n)
        .map(|i| {
            let t = i as f32 / (n - 1) as f32;
            Pose {
                scale: 1.8 * (1.0 + 0.2 * (2.0 * PI * t).sin()),
                angle: 10f32.to_radians() * (3.0 * PI * t).sin(),
                pos: [640.0 + 300.0 * (t - 0.5), 360.0 + 40.0 * (PI * t).sin()],
            }
        })
        .collect();
    let rendered = render(&poses, still.centre(), w, h);
    // Through H.264 and back, as a real video would be.
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("astronaut.mp4");
    video::encode(&mp4, &rendered, w, h, fps as u32, None).unwrap();
    drop(rendered);
    let frames = video::decode_frames(&mp4, w, h).unwrap();
    assert_eq!(frames.len(), n * (w * h * 3) as usize);

    let fe = hog(|c| c.min_face = 110);
    let mut tracker = fe.tracker(w, h, fps);
    for f in frames.chunks_exact((w * h * 3) as usize) {
        tracker.push(f).unwrap();
    }
    let raw = tracker.unsmoothed();
    let clip = tracker.finish();
    assert_eq!(
        clip.with_face(),
        n,
        "a face in every frame: {:?}",
        clip.segments
    );
    assert_eq!(clip.segments, vec![0..n]);
    assert!(clip.cuts.is_empty(), "{:?}", clip.cuts);

    let errors = |c: &ClipFaces| -> Vec<f32> {
        (0..n)
            .map(|i| {
                let f = c.frames[i].as_ref().unwrap();
                let [x, y] = f.rect.centre();
                let size = still.side() * poses[i].scale;
                (x - poses[i].pos[0]).hypot(y - poses[i].pos[1]) / size
            })
            .collect()
    };
    let es = errors(&clip);
    let worst = es.into_iter().fold(0f32, f32::max);
    eprintln!(
        "largest box-centre error: {:.1} % of the face size",
        worst * 100.0
    );
    assert!(worst < 0.05, "{worst}");

    // Jitter: frame-to-frame motion of the box centre against the true motion.
    let jitter = |c: &ClipFaces| -> f32 {
        let centre = |i: usize| c.frames[i].as_ref().unwrap().rect.centre();
        let sq: f32 = (1..n)
            .map(|i| {
                let (a, b) = (centre(i - 1), centre(i));
                let (ga, gb) = (poses[i - 1].pos, poses[i].pos);
                ((b[0] - a[0]) - (gb[0] - ga[0])).powi(2)
                    + ((b[1] - a[1]) - (gb[1] - ga[1])).powi(2)
            })
            .sum();
        (sq / (n - 1) as f32).sqrt()
    };
    let (rough, smooth) = (jitter(&raw), jitter(&clip));
    eprintln!("jitter (RMS px/frame): unsmoothed {rough:.2}, smoothed (window 5) {smooth:.2}");
    assert!(
        smooth < 0.7 * rough,
        "smoothed {smooth} vs unsmoothed {rough}"
    );

    // Detecting every 3rd frame still covers every frame.
    let every3 = track(
        &hog(|c| {
            c.min_face = 110;
            c.detect_every = 3;
        }),
        &frames,
        w,
        h,
        fps,
    );
    assert_eq!(every3.with_face(), n);
    assert_eq!(every3.detector_runs, n.div_ceil(3));
    let worst3 = errors(&every3).into_iter().fold(0f32, f32::max);
    assert!(worst3 < 0.05, "{worst3}");
}

#[test]
fn a_face_that_leaves_the_frame_for_a_second_splits_the_clip() {
    let _g = crate::common::torch();
    let (still, _) = still_box();
    let (w, h, fps) = (320u32, 240u32, 25.0);
    // 3 s; during the second one the portrait is far outside the frame.
    let poses: Vec<Pose> = (0..75)
        .map(|i| Pose {
            scale: 1.2,
            angle: 0.0,
            pos: if (25..50).contains(&i) {
                [2000.0, 120.0]
            } else {
                [160.0, 120.0]
            },
        })
        .collect();
    let frames = render(&poses, still.centre(), w, h);
    // Without scene-cut detection: the gap alone splits.
    let clip = track(&hog(|c| c.scene_cut = 0.0), &frames, w, h, fps);
    assert_eq!(clip.segments, vec![0..25, 50..75]);
    // With it, the jumps are cuts too; same segments.
    let clip = track(&hog(|_| {}), &frames, w, h, fps);
    assert_eq!(clip.segments, vec![0..25, 50..75]);
    assert_eq!(clip.cuts, vec![25, 50]);
}

#[test]
fn missing_or_wrong_model_files_are_one_line_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.dat");
    let e = FrontEnd::new(&FaceConfig {
        detector: FaceDetectorKind::DlibHog,
        landmarks_model: missing.display().to_string(),
        ..FaceConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, FaceError::Model { .. }));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: the 68-point landmark model does not exist",
            missing.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("libdlib-data") && !msg.contains('\n'), "{msg}");

    let junk = dir.path().join("junk.dat");
    std::fs::write(&junk, b"not a model").unwrap();
    let e = FrontEnd::new(&FaceConfig {
        detector: FaceDetectorKind::DlibCnn,
        cnn_model: Some(junk.display().to_string()),
        ..FaceConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: not a dlib MMOD face detector model", junk.display())
    );
    let e = FrontEnd::new(&FaceConfig::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "data.face.detector none: the face front-end runs dlib-hog or dlib-cnn"
    );
}

/// An LRS2-layout root: a 3 s clip with the portrait throughout, one where it leaves the frame
/// during the second second, and the cat; 160x160 at 25 fps with a tone as sound.
fn lrs2_with_faces(root: &std::path::Path) {
    let (_, still) = still_box();
    let (w, h) = (160u32, 160u32);
    let here = Pose {
        scale: 1.15,
        angle: 0.0,
        pos: [80.0, 84.0],
    };
    let away = Pose {
        pos: [2000.0, 84.0],
        ..here
    };
    let always: Vec<Pose> = vec![here; 75];
    let leaves: Vec<Pose> = (0..75)
        .map(|i| if (25..50).contains(&i) { away } else { here })
        .collect();
    let tone: Vec<i16> = (0..3 * 16000)
        .map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16)
        .collect();
    let main = root.join("main/spk00");
    std::fs::create_dir_all(&main).unwrap();
    for (name, poses) in [("00001", &always), ("00002", &leaves)] {
        let frames = render(poses, still.centre(), w, h);
        video::encode(
            &main.join(format!("{name}.mp4")),
            &frames,
            w,
            h,
            25,
            Some((&tone, 16000)),
        )
        .unwrap();
    }
    let cat = video::decode_frames(&photo("chelsea.png"), 160, 160).unwrap();
    let cats: Vec<u8> = (0..75).flat_map(|_| cat.iter().copied()).collect();
    video::encode(
        &main.join("00003.mp4"),
        &cats,
        w,
        h,
        25,
        Some((&tone, 16000)),
    )
    .unwrap();
    std::fs::write(
        root.join("train.txt"),
        "spk00/00001\nspk00/00002\nspk00/00003\n",
    )
    .unwrap();
}

#[test]
fn ingest_stores_face_parts_and_rejects_faceless_ones() {
    let _g = crate::common::torch();
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("lrs2"), dir.path().join("ds"));
    lrs2_with_faces(&root);
    let o = crate::common::ingest(
        "lrs2",
        &root,
        &out,
        &["data.face.detector=dlib-hog", "data.face.mask=landmarks"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("2 rejected (1 clip(s) split by the face front-end, 2 scene cut(s))"),
        "{summary}"
    );
    let ds = syncdiff_dataset::shards::Dataset::open(&out).unwrap();
    let ids: Vec<&str> = ds.clips().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        ["spk00/00001", "spk00/00002#0-25", "spk00/00002#50-75"]
    );
    let rejected = std::fs::read_to_string(out.join("rejected.jsonl")).unwrap();
    let reasons: Vec<(String, String)> = rejected
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["clip"].as_str().unwrap().into(),
                v["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("spk00/00002#25-50".to_string(), "no_face".to_string()),
            ("spk00/00003".to_string(), "no_face".to_string())
        ]
    );
    // The stored records: the face where it was drawn, landmarks, the whole-frame crop (LRS2).
    for (ci, t) in [(0, 0), (0, 74), (1, 10), (2, 20)] {
        let f = ds.face(ci, t).unwrap().unwrap();
        let [x0, y0, x1, y1] = f.face_box;
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        assert!(
            (cx - 80.0).abs() < 3.0 && (cy - 84.0).abs() < 3.0,
            "{:?}",
            f.face_box
        );
        assert!(f.landmarks.iter().flatten().all(|v| v.is_finite()));
        assert_eq!(f.crop, [5.0, 0.0, 0.0, 0.0, 5.0, 0.0]);
        // The masked frame hides the mouth: its latent differs from the frame's.
        assert_ne!(ds.latent(ci, t).unwrap(), ds.masked_latent(ci, t).unwrap());
    }
    assert_eq!(ds.mel(1, 0, 25).unwrap().len(), 25 * 104);
}

#[test]
fn the_faces_command_draws_what_it_found_and_names_a_faceless_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::common::repo().join("configs/syncdiff-lrs2.yaml");
    let run = |input: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_syncdiff-dataprep"))
            .args(["faces", "--input", input.to_str().unwrap()])
            .args(["--out", dir.path().to_str().unwrap()])
            .args([
                "--config",
                config.to_str().unwrap(),
                "--set",
                "data.face.crop=face",
            ])
            .output()
            .unwrap()
    };
    let o = run(&photo("astronaut.png"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("512x512") && summary.contains("a face in 1"),
        "{summary}"
    );
    for f in ["frame-00000.png", "crop-00000.png"] {
        assert!(dir.path().join(f).metadata().unwrap().len() > 1000, "{f}");
    }
    let o = run(&photo("chelsea.png"));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.trim_end().lines().count() == 1
            && err.contains(
                "chelsea.png: no face of at least 80 px (data.face.min_face) in 1 frames"
            ),
        "{err}"
    );
}

#[test]
fn a_folder_of_own_videos_at_30_fps_is_prepared_at_25_with_face_crops() {
    let _g = crate::common::torch();
    let (_, still) = still_box();
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("own"), dir.path().join("ds"));
    std::fs::create_dir_all(root.join("talks")).unwrap();
    let (w, h) = (640u32, 360u32);
    // 3 s at 30 fps: the portrait drifting right.
    let poses: Vec<Pose> = (0..90)
        .map(|i| Pose {
            scale: 1.2,
            angle: 0.0,
            pos: [250.0 + i as f32, 180.0],
        })
        .collect();
    let tone: Vec<i16> = (0..3 * 44100)
        .map(|i| ((i as f32 * 0.02).sin() * 8000.0) as i16)
        .collect();
    let frames = render(&poses, still.centre(), w, h);
    video::encode(
        &root.join("talks/astronaut.mp4"),
        &frames,
        w,
        h,
        30,
        Some((&tone, 44100)),
    )
    .unwrap();
    let cat = video::decode_frames(&photo("chelsea.png"), w, h).unwrap();
    let cats: Vec<u8> = (0..60).flat_map(|_| cat.iter().copied()).collect();
    video::encode(&root.join("cat.mp4"), &cats, w, h, 30, Some((&tone, 44100))).unwrap();
    std::fs::write(root.join("notes.txt"), "not a video").unwrap();

    let o = crate::common::ingest(
        "videos",
        &root,
        &out,
        &["data.face.detector=dlib-hog", "data.face.crop=face"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = syncdiff_dataset::shards::Dataset::open(&out).unwrap();
    let clips = ds.clips();
    assert_eq!(clips.len(), 1, "{clips:?}");
    assert_eq!(clips[0].id, "talks/astronaut.mp4");
    assert!(
        (74..=76).contains(&clips[0].frames),
        "{} frames at 25 fps",
        clips[0].frames
    );
    let rejected = std::fs::read_to_string(out.join("rejected.jsonl")).unwrap();
    assert!(
        rejected.contains("\"clip\":\"cat.mp4\"") && rejected.contains("no_face"),
        "{rejected}"
    );
    // Frame t at 25 fps shows the pose of source frame ~1.2 t: the crop follows the face.
    for t in [0u64, 37, 70] {
        let f = ds.face(0, t).unwrap().unwrap();
        let [x0, y0, x1, y1] = f.face_box;
        let want = 250.0 + (t as f32 * 30.0 / 25.0);
        assert!(
            ((x0 + x1) / 2.0 - want).abs() < 4.0,
            "frame {t}: {:?} vs x {want}",
            f.face_box
        );
        assert!(((y0 + y1) / 2.0 - 180.0).abs() < 4.0, "{:?}", f.face_box);
        // crop: face -> a square 1.5 face boxes wide around it, into 32 pixels.
        let side = (x1 - x0) * 1.5;
        assert!(
            (f.crop[0] - side / 32.0).abs() < 1e-3 && f.crop[1] == 0.0,
            "{:?}",
            f.crop
        );
    }
}
