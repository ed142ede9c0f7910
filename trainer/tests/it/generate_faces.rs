//! `syncdiff generate` on videos of a real face at any size and frame rate: scikit-image's
//! astronaut portrait moved through a 1280x720, 30 fps video (slow translation, scale 0.8-1.2,
//! rotation +-10 degrees) and spoken over by espeak-ng. The face is found, cropped, generated
//! and pasted back so that every pixel outside the dilated mouth mask is the input's exactly;
//! frames without a face pass through unchanged; a video without one is an error naming it; and
//! peak memory does not grow with the video's length.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use syncdiff_dataprep::face::{landmark_box, warp, Affine, CropTransform, FrontEnd};
use syncdiff_dataprep::video::{self, FrameReader, FrameWriter};
use syncdiff_devkit::photo;
use syncdiff_inference::generate::{
    self, Collect, FrameSink, GenerateOptions, Generator, Job, WeightChoice,
};
use syncdiff_model::config::{FaceConfig, FaceDetectorKind};

use crate::common;
use crate::generate::{audio_format, bundle, mad, s, syncdiff};

const PHOTO: u32 = 512;

fn portrait() -> &'static [u8] {
    static RGB: OnceLock<Vec<u8>> = OnceLock::new();
    RGB.get_or_init(|| video::decode_frames(&photo("astronaut.png"), PHOTO, PHOTO).unwrap())
}

/// Where the portrait's face is: the centre of the box around its 68 landmarks.
fn face_centre() -> [f32; 2] {
    static CENTRE: OnceLock<[f32; 2]> = OnceLock::new();
    *CENTRE.get_or_init(|| {
        let cfg = FaceConfig {
            detector: FaceDetectorKind::DlibHog,
            ..FaceConfig::default()
        };
        let fe = FrontEnd::new(&cfg).unwrap();
        let faces = fe.detect(portrait(), PHOTO, PHOTO).unwrap();
        assert_eq!(faces.len(), 1, "{faces:?}");
        let lm = fe
            .landmarks(portrait(), PHOTO, PHOTO, &faces[0])
            .unwrap()
            .unwrap();
        landmark_box(&lm).centre()
    })
}

/// A video of the portrait drawn per frame by `pose(i) = (scale, angle, where its face centre
/// is)`, streamed to the encoder.
fn moving_portrait(
    path: &Path,
    (w, h, fps): (u32, u32, u32),
    frames: usize,
    pose: impl Fn(usize) -> (f32, f32, [f32; 2]),
) {
    let mut wr = FrameWriter::create(path, w, h, fps, None).unwrap();
    for i in 0..frames {
        let (scale, angle, pos) = pose(i);
        let m = Affine::similarity(scale, angle, face_centre(), pos);
        wr.push(&warp(portrait(), PHOTO, PHOTO, &m, w, h)).unwrap();
    }
    wr.finish().unwrap();
}

/// espeak-ng speech, padded or cut to `seconds`, at 44.1 kHz stereo (the model hears it
/// resampled to 16 kHz mono; the output keeps this track).
fn speech(dir: &Path, seconds: f64) -> PathBuf {
    let raw = dir.join("speech.wav");
    let o = Command::new("espeak-ng")
        .args([
            "-w",
            &s(&raw),
            "the quick brown fox jumps over the lazy dog, twice over",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o).1);
    let out = dir.join(format!("drive-{seconds}.wav"));
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i", &s(&raw), "-af", "apad", "-t"])
        .arg(format!("{seconds}"))
        .args(["-ar", "44100", "-ac", "2", &s(&out)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o).1);
    out
}

/// Face settings for these videos: the model was trained on whole synthetic frames, so every
/// one of these departs from its training (and is warned about).
fn face_sets(min_face: u32) -> Vec<String> {
    vec![
        "data.face.detector=dlib-hog".into(),
        "data.face.crop=face".into(),
        format!("data.face.min_face={min_face}"),
        "data.face.detect_every=5".into(),
    ]
}

fn options() -> GenerateOptions {
    GenerateOptions {
        sampler: syncdiff_model::config::SamplerKind::Ddim,
        steps: 2,
        eta: 0.0,
        inpaint: false,
        guidance: 1.0,
        final_x0: false,
        seed: 1,
        precision: Default::default(),
    }
}

/// The frames generation makes for one prepared clip, before encoding.
fn generate_frames(g: &Generator, p: &generate::Prepared) -> (generate::ClipReport, Vec<Vec<u8>>) {
    let mut sink = Collect::default();
    let reports = {
        let mut sinks: [&mut dyn FrameSink; 1] = [&mut sink];
        let mut times = generate::Timings::default();
        generate::generate_batch(g, &[p], &mut sinks, &options(), |_| {}, &mut times).unwrap()
    };
    let report = reports.into_iter().next().unwrap().unwrap();
    (report, sink.frames)
}

/// The reference frames at 25 fps, as generation reads them.
fn reference_frames(path: &Path, w: u32, h: u32) -> Vec<Vec<u8>> {
    let mut rd = FrameReader::open(path, w, h, Some(25.0), None).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; rd.frame_len()];
    while rd.next_frame(&mut buf).unwrap() {
        out.push(buf.clone());
    }
    out
}

/// Full-frame pixels that may differ from the input: those whose centre falls within `dilate`
/// crop pixels of the crop's mouth mask.
fn changeable(crop: &CropTransform, mask: &[bool], dilate: i64, w: u32, h: u32) -> Vec<bool> {
    let n = i64::from(crop.size);
    let near = |x: i64, y: i64| {
        (-dilate..=dilate).any(|dy| {
            (-dilate..=dilate).any(|dx| {
                let (u, v) = (x + dx, y + dy);
                (0..n).contains(&u) && (0..n).contains(&v) && mask[(v * n + u) as usize]
            })
        })
    };
    let to_crop = crop.to_crop();
    let mut out = vec![false; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let [u, v] = to_crop.apply([x as f32 + 0.5, y as f32 + 0.5]);
            if u > -2.0 && v > -2.0 && u < n as f32 + 2.0 && v < n as f32 + 2.0 {
                out[(y * w + x) as usize] = near(u.floor() as i64, v.floor() as i64);
            }
        }
    }
    out
}

#[test]
fn a_720p_video_gets_a_generated_mouth_and_keeps_every_other_pixel() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = bundle(d, 20);
    let (w, h) = (1280u32, 720u32);
    let src = d.join("interview.mp4");
    moving_portrait(&src, (w, h, 30), 120, |i| {
        let t = i as f32 / 119.0;
        (
            1.8 * (1.0 + 0.2 * (2.0 * PI * t).sin()),
            10f32.to_radians() * (3.0 * PI * t).sin(),
            [640.0 + 300.0 * (t - 0.5), 360.0 + 40.0 * (PI * t).sin()],
        )
    });
    let drive = speech(d, 3.0);
    let g = Generator::load(&s(&model), WeightChoice::Ema, None, tch::Device::Cpu).unwrap();
    let (face, departures) = generate::face_settings(&g.config, &face_sets(110)).unwrap();
    assert_eq!(departures.len(), 4, "{departures:?}");
    let job = Job {
        video: src.clone(),
        audio: drive.clone(),
        out: d.join("unused.mp4"),
    };
    let p = generate::prepare(&g, &job, &face).unwrap();
    // 4 s at 30 fps read at 25 fps; 3 s of drive.
    assert_eq!((p.width, p.height, p.available, p.frames), (w, h, 100, 75));
    assert_eq!(p.without_face, 0, "a face in every frame");
    let (report, frames) = generate_frames(&g, &p);
    assert_eq!(report.generated, 75);
    assert_eq!(frames.len(), 75);
    let input = reference_frames(&src, w, h);
    let (mut inside_diff, mut inside_n) = (0f64, 0usize);
    for (t, out) in frames.iter().enumerate() {
        let (crop, mask) = p.face_crop(t).unwrap();
        let may = changeable(&crop, &mask, 2, w, h);
        let mut outside_changed = 0;
        for (px, &m) in may.iter().enumerate() {
            let (a, b) = (&out[px * 3..px * 3 + 3], &input[t][px * 3..px * 3 + 3]);
            if m {
                inside_diff += a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| f64::from(x.abs_diff(*y)))
                    .sum::<f64>();
                inside_n += 3;
            } else if a != b {
                outside_changed += 1;
            }
        }
        assert_eq!(
            outside_changed, 0,
            "frame {t}: pixels outside the mask changed"
        );
    }
    let inside = inside_diff / inside_n as f64;
    println!("mean abs change inside the dilated mouth mask: {inside:.1} levels; outside: 0");
    assert!(inside > 2.0, "the mouth region was not generated: {inside}");

    // The command line: a 1280x720 mp4 at 25 fps with the drive's own sound track.
    let out = d.join("out/interview.mp4");
    let o = generate_cli(
        &model,
        &src,
        &drive,
        &out,
        110,
        &["--steps", "2", "--preview"],
    );
    let (stdout, stderr) = common::text(&o);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(
        stderr
            .matches("face settings depart from what the model was trained with")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("data.face.crop: \"face\" (trained with \"frame\")"),
        "{stderr}"
    );
    assert!(stdout.contains("1 clip(s), 75 frames"), "{stdout}");
    let info = video::probe(&out).unwrap();
    assert_eq!((info.width, info.height), (w, h));
    assert!((info.fps - 25.0).abs() < 1e-6);
    assert_eq!(audio_format(&out), (44100, 2));
    assert!(
        (info.audio_seconds - 3.0).abs() <= 0.05,
        "{}",
        info.audio_seconds
    );
    // The before / after / difference strip, each panel 360 rows high.
    let png = d.join("out/interview.mp4.preview.png");
    let strip = video::probe(&png).unwrap();
    assert_eq!((strip.width, strip.height), (3 * 640, 360));
    // docs/images/generate-strip.png is this picture (copied where SYNCDIFF_KEEP_PREVIEW says).
    if let Ok(keep) = std::env::var("SYNCDIFF_KEEP_PREVIEW") {
        std::fs::copy(&png, keep).unwrap();
    }
}

#[test]
fn a_phone_video_stored_sideways_with_a_rotation_tag_comes_back_upright() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = bundle(d, 2);
    // The video as a phone shows it: portrait 360x640 ...
    let (w, h) = (360u32, 640u32);
    let upright = d.join("upright.mp4");
    moving_portrait(&upright, (w, h, 25), 40, |i| {
        let t = i as f32 / 39.0;
        (
            1.0,
            4f32.to_radians() * (2.0 * PI * t).sin(),
            [180.0, 300.0 + 10.0 * t],
        )
    });
    // ... and as it stores it: landscape 640x360 frames (turned a quarter clockwise) with a
    // display rotation of 90 degrees in the container.
    let turned = d.join("turned.mp4");
    let phone = d.join("phone.mp4");
    let (up, tu, ph) = (s(&upright), s(&turned), s(&phone));
    syncdiff_devkit::ffmpeg(&[
        "-i",
        &up,
        "-vf",
        "transpose=1",
        "-c:v",
        "libx264",
        "-crf",
        "12",
        &tu,
    ]);
    syncdiff_devkit::ffmpeg(&["-i", &tu, "-c", "copy", "-metadata:s:v:0", "rotate=90", &ph]);
    // Read as displayed (before: 640x360 frames, the face lying on its side).
    let info = video::probe(&phone).unwrap();
    assert_eq!((info.width, info.height, info.rotation % 180), (w, h, 90));
    let input = reference_frames(&phone, w, h);
    let want = reference_frames(&upright, w, h);
    assert_eq!(input.len(), want.len());
    assert!(
        mad(&input[10], &want[10]) < 3.0,
        "{}",
        mad(&input[10], &want[10])
    );
    // A face in every frame (HOG misses a face on its side), and generation keeps every pixel
    // outside the mouth mask of the frame as displayed.
    let g = Generator::load(&s(&model), WeightChoice::Ema, None, tch::Device::Cpu).unwrap();
    let (face, _) = generate::face_settings(&g.config, &face_sets(80)).unwrap();
    let job = Job {
        video: phone.clone(),
        audio: speech(d, 1.0),
        out: d.join("unused.mp4"),
    };
    let p = generate::prepare(&g, &job, &face).unwrap();
    assert_eq!((p.width, p.height), (w, h));
    assert_eq!(p.without_face, 0, "a face in every frame");
    let (_, frames) = generate_frames(&g, &p);
    for (t, out) in frames.iter().enumerate() {
        let (crop, mask) = p.face_crop(t).unwrap();
        let may = changeable(&crop, &mask, 2, w, h);
        let changed = may
            .iter()
            .enumerate()
            .filter(|&(px, &m)| !m && out[px * 3..px * 3 + 3] != input[t][px * 3..px * 3 + 3])
            .count();
        assert_eq!(changed, 0, "frame {t}: pixels outside the mask changed");
    }
    // The command line's mp4 displays like the input: portrait, no rotation left to apply.
    let out = d.join("phone-out.mp4");
    let o = generate_cli(&model, &phone, &job.audio, &out, 80, &["--steps", "2"]);
    assert!(o.status.success(), "{}", common::text(&o).1);
    let oi = video::probe(&out).unwrap();
    assert_eq!((oi.width, oi.height, oi.rotation), (w, h, 0));
    let shown = reference_frames(&out, w, h);
    assert!(
        mad(&shown[0], &input[0]) < 3.0,
        "{}",
        mad(&shown[0], &input[0])
    );
}

#[test]
fn frames_without_a_face_pass_through_and_a_faceless_video_is_named() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = bundle(d, 2);
    let (w, h) = (320u32, 240u32);
    // 3 s; during the second one the portrait is far outside the frame.
    let src = d.join("leaves.mp4");
    moving_portrait(&src, (w, h, 25), 75, |i| {
        let pos = if (25..50).contains(&i) {
            [3000.0, 120.0]
        } else {
            [160.0, 120.0]
        };
        (0.7, 0.0, pos)
    });
    let drive = speech(d, 3.0);
    let g = Generator::load(&s(&model), WeightChoice::Ema, None, tch::Device::Cpu).unwrap();
    let (face, _) = generate::face_settings(&g.config, &face_sets(60)).unwrap();
    let job = Job {
        video: src.clone(),
        audio: drive.clone(),
        out: d.join("unused.mp4"),
    };
    let p = generate::prepare(&g, &job, &face).unwrap();
    assert_eq!(p.without_face, 25);
    // Faces smaller than data.face.min_face: the error says so.
    let (big, _) = generate::face_settings(&g.config, &face_sets(160)).unwrap();
    let err = generate::prepare(&g, &job, &big).unwrap_err().to_string();
    assert!(
        err.contains(
            "leaves.mp4: no face of at least 160 px (data.face.min_face) in 75 frames; a face of"
        ) && err.ends_with("px is there: lower data.face.min_face to find it"),
        "{err}"
    );
    let (report, frames) = generate_frames(&g, &p);
    assert_eq!((report.generated, report.passed_through), (50, 25));
    let input = reference_frames(&src, w, h);
    for t in 25..50 {
        assert!(
            frames[t] == input[t],
            "frame {t} without a face was changed"
        );
    }
    assert!(mad(&frames[10], &input[10]) > 0.0);

    // `syncdiff eval --faces`: the mouth region and the LSE crops come from the face.
    let (gt, pred) = (d.join("gt"), d.join("pred"));
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::copy(&src, gt.join("leaves.mp4")).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    let audio = video::AudioSource::File(&drive);
    let mut wr = FrameWriter::create(&pred.join("leaves.mp4"), w, h, 25, Some(audio)).unwrap();
    for f in &frames {
        wr.push(f).unwrap();
    }
    wr.finish().unwrap();
    let syncnet = d.join("syncnet.pt");
    crate::eval_scripts::reference(
        "syncnet_ref.py",
        &["make", "--out", &s(&syncnet), "--seed", "3"],
    );
    let eval = |extra: &[&str]| {
        let rep = d.join("eval.json");
        let o = Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
            .args([
                "eval",
                "--pred",
                &s(&pred),
                "--gt",
                &s(&gt),
                "--report",
                &s(&rep),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::text(&o).1);
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
        r["videos"][0].clone()
    };
    let faces = eval(&[
        "--faces",
        "--min-face",
        "60",
        "--syncnet",
        &s(&syncnet),
        "--vshift",
        "3",
    ]);
    let fixed = eval(&[]);
    let (mouth, whole) = (
        faces["mouth_psnr"].as_f64().unwrap(),
        faces["psnr"].as_f64().unwrap(),
    );
    println!(
        "eval --faces: PSNR {whole:.2}, mouth PSNR {mouth:.2}, LSE {}",
        faces["lse"]
    );
    // Only the mouth was generated: it differs more than the frame as a whole.
    assert!(mouth < whole, "{mouth} vs {whole}");
    assert_ne!(faces["mouth_psnr"], fixed["mouth_psnr"]);
    // A frame without a face has no mouth score; LSE ran on the face crops.
    assert!(
        faces["per_frame"][30][3].is_null(),
        "{}",
        faces["per_frame"][30]
    );
    assert!(fixed["per_frame"][30][3].is_number());
    assert!(faces["lse"]["lse_c"].as_f64().unwrap().is_finite());

    // A video of a cat: no face at all, an error naming it.
    let cat = video::decode_frames(&photo("chelsea.png"), 451, 300).unwrap();
    let cat_video = d.join("cat.mp4");
    let mut wr = FrameWriter::create(&cat_video, w, h, 25, None).unwrap();
    let m = Affine([451.0 / 320.0, 0.0, 0.0, 0.0, 300.0 / 240.0, 0.0]);
    let frame = warp(&cat, 451, 300, &m, w, h);
    for _ in 0..25 {
        wr.push(&frame).unwrap();
    }
    wr.finish().unwrap();
    let out = d.join("cat-out.mp4");
    let o = generate_cli(&model, &cat_video, &drive, &out, 60, &[]);
    let (_, stderr) = common::text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("cat.mp4: no face of at least 60 px (data.face.min_face) in 25 frames"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}

/// `syncdiff generate` with the face settings of [`face_sets`] and `extra` arguments.
fn generate_cli(
    model: &Path,
    video: &Path,
    audio: &Path,
    out: &Path,
    min_face: u32,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = ["generate", "--checkpoint", &s(model), "--video", &s(video)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(["--audio".into(), s(audio), "--out".into(), s(out)]);
    args.extend(extra.iter().map(|a| a.to_string()));
    for set in face_sets(min_face) {
        args.extend(["--set".into(), set]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    syncdiff(&refs)
}

/// `syncdiff generate`'s own peak-memory figure for a reference and drive of `seconds`.
fn peak_mib(d: &Path, model: &Path, seconds: usize) -> f64 {
    let (w, h) = (320u32, 240u32);
    let frames = seconds * 25;
    let src = d.join(format!("ref-{seconds}.mp4"));
    moving_portrait(&src, (w, h, 25), frames, |i| {
        let t = i as f32 / 25.0;
        (0.7, 0.0, [160.0 + 20.0 * (t * 0.5).sin(), 120.0])
    });
    let drive = speech(d, seconds as f64);
    let out = d.join(format!("out-{seconds}.mp4"));
    let o = generate_cli(model, &src, &drive, &out, 60, &["--steps", "1"]);
    let (stdout, stderr) = common::text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("{frames} frames")), "{stdout}");
    let mib = stdout
        .split("peak memory ")
        .nth(1)
        .and_then(|r| r.split(" MiB").next())
        .and_then(|n| n.parse::<f64>().ok());
    mib.unwrap_or_else(|| panic!("no peak memory in: {stdout}"))
}

#[test]
fn peak_memory_of_a_60_s_video_is_within_1_2x_of_a_10_s_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = bundle(d, 2);
    let short = peak_mib(d, &model, 10);
    let long = peak_mib(d, &model, 60);
    println!(
        "syncdiff generate peak memory: 10 s {short:.0} MiB, 60 s {long:.0} MiB ({:.3}x)",
        long / short
    );
    assert!(long <= 1.2 * short, "10 s {short} MiB, 60 s {long} MiB");
}
