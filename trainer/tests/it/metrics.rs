//! PSNR and SSIM against scikit-image, run live on the same pixels: random images, smooth images
//! with noise, and real frames of a synthetic talking-face video (with a mouth-region crop).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::Command;

use syncdiff_inference::eval::{psnr, ssim, Region, View};
use syncdiff_runtime::rng::Rng;

/// (name, width, height, a, b, region).
type Case = (String, usize, usize, Vec<u8>, Vec<u8>, Option<Region>);

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng::new(&[seed]);
    (0..n).map(|_| (r.uniform() * 256.0) as u8).collect()
}

fn cases(dir: &std::path::Path) -> Vec<Case> {
    let (w, h) = (40, 31);
    let smooth: Vec<u8> = (0..w * h * 3)
        .map(|i| {
            let (p, c) = (i / 3, i % 3);
            ((p % w) * 5 + (p / w) * 3 + c * 40) as u8
        })
        .collect();
    let mut noisy = smooth.clone();
    for (v, n) in noisy.iter_mut().zip(noise(9, w * h * 3)) {
        *v = v.saturating_add(n / 16);
    }
    let mut out: Vec<Case> = vec![
        (
            "random".into(),
            w,
            h,
            noise(1, w * h * 3),
            noise(2, w * h * 3),
            None,
        ),
        (
            "smooth+noise".into(),
            w,
            h,
            smooth.clone(),
            noisy.clone(),
            None,
        ),
        (
            "smooth+noise region".into(),
            w,
            h,
            smooth,
            noisy,
            Some(Region {
                x: 5,
                y: 9,
                w: 20,
                h: 12,
            }),
        ),
    ];
    // Real frames: two frames of a synthetic clip (the mouth moves between them).
    syncdiff_dataprep::synth::synth(
        &syncdiff_dataprep::synth::SynthOptions {
            out: dir.join("lrs2"),
            speakers: 1,
            clips_per_speaker: 1,
            seconds: 1.0,
            seed: 3,
        },
        |_, _| {},
    )
    .unwrap();
    let video = dir.join("lrs2/main/spk00/00001.mp4");
    let info = syncdiff_dataprep::video::probe(&video).unwrap();
    let (vw, vh) = (info.width as usize, info.height as usize);
    let frames = syncdiff_dataprep::video::decode_frames(&video, info.width, info.height).unwrap();
    let size = vw * vh * 3;
    let (f0, f1) = (
        frames[..size].to_vec(),
        frames[12 * size..13 * size].to_vec(),
    );
    out.push(("real frames".into(), vw, vh, f0.clone(), f1.clone(), None));
    let mouth = Region {
        x: vw / 4,
        y: vh / 2,
        w: vw / 2,
        h: vh / 3,
    };
    out.push(("real frames, mouth".into(), vw, vh, f0, f1, Some(mouth)));
    out
}

#[test]
fn psnr_and_ssim_match_scikit_image() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import sys, numpy as np\nfrom skimage.metrics import peak_signal_noise_ratio as P, structural_similarity as S\nw, h = int(sys.argv[3]), int(sys.argv[4])\nx0, y0, rw, rh = map(int, sys.argv[5:9])\na = np.fromfile(sys.argv[1], np.uint8).reshape(h, w, 3)[y0:y0+rh, x0:x0+rw]\nb = np.fromfile(sys.argv[2], np.uint8).reshape(h, w, 3)[y0:y0+rh, x0:x0+rw]\nprint(repr(float(P(a, b, data_range=255))), repr(float(S(a, b, data_range=255, channel_axis=-1))))\n";
    for (name, w, h, a, b, region) in cases(dir.path()) {
        let (pa, pb) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
        std::fs::write(&pa, &a).unwrap();
        std::fs::write(&pb, &b).unwrap();
        let r = region.unwrap_or(Region { x: 0, y: 0, w, h });
        let o = common::python()
            .arg("-c")
            .arg(script)
            .args([&pa, &pb])
            .args([w, h, r.x, r.y, r.w, r.h].map(|v| v.to_string()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        let want: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
        let va = View {
            data: &a,
            width: w,
            height: h,
            channels: 3,
        };
        let vb = View {
            data: &b,
            width: w,
            height: h,
            channels: 3,
        };
        let got = [
            psnr(&va, &vb, region).unwrap(),
            ssim(&va, &vb, region).unwrap(),
        ];
        println!(
            "{name}: ours psnr {:.6} ssim {:.6}; skimage {want:?}",
            got[0], got[1]
        );
        for (g, e) in got.iter().zip(&want) {
            assert!(
                (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                "{name}: {g} vs {e}"
            );
        }
    }
}

#[test]
fn metrics_refuse_mismatched_or_tiny_images() {
    let a = vec![0u8; 8 * 8 * 3];
    let b = vec![0u8; 8 * 6 * 3];
    let va = View {
        data: &a,
        width: 8,
        height: 8,
        channels: 3,
    };
    let vb = View {
        data: &b,
        width: 8,
        height: 6,
        channels: 3,
    };
    assert!(psnr(&va, &vb, None)
        .unwrap_err()
        .to_string()
        .starts_with("images differ in shape"));
    let r = Some(Region {
        x: 0,
        y: 0,
        w: 6,
        h: 6,
    });
    assert_eq!(
        ssim(&va, &va, r).unwrap_err().to_string(),
        "6x6 is smaller than the 7x7 SSIM window"
    );
    assert!(psnr(&va, &va, None).unwrap().is_infinite());
}

#[test]
fn syncdiff_eval_scores_videos_and_names_missing_predictions() {
    let dir = tempfile::tempdir().unwrap();
    syncdiff_dataprep::synth::synth(
        &syncdiff_dataprep::synth::SynthOptions {
            out: dir.path().join("lrs2"),
            speakers: 1,
            clips_per_speaker: 2,
            seconds: 1.0,
            seed: 5,
        },
        |_, _| {},
    )
    .unwrap();
    let (gt, pred) = (dir.path().join("gt"), dir.path().join("pred"));
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    for c in ["00001", "00002"] {
        std::fs::copy(
            dir.path().join(format!("lrs2/main/spk00/{c}.mp4")),
            gt.join(format!("{c}.mp4")),
        )
        .unwrap();
    }
    // Prediction 1: the other clip (same face, other mouth); prediction 2: the clip itself.
    std::fs::copy(gt.join("00002.mp4"), pred.join("00001.mp4")).unwrap();
    std::fs::copy(gt.join("00002.mp4"), pred.join("00002.mp4")).unwrap();
    let report = dir.path().join("eval.json");
    let run = || {
        Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
            .args([
                "eval",
                "--pred",
                pred.to_str().unwrap(),
                "--gt",
                gt.to_str().unwrap(),
            ])
            .args(["--report", report.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let v = r["videos"].as_array().unwrap();
    assert_eq!(v.len(), 2);
    assert!(v[0]["frames"].as_u64().unwrap() >= 20);
    let ssim0 = v[0]["ssim"].as_f64().unwrap();
    assert!(ssim0 < 1.0 && ssim0 > 0.3, "{ssim0}");
    // Identical videos: SSIM 1, PSNR infinite (null in JSON).
    assert!((v[1]["ssim"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    assert!(v[1]["psnr"].is_null());
    // The mouth differs more than the frame as a whole.
    assert!(v[0]["mouth_ssim"].as_f64().unwrap() < ssim0);

    std::fs::remove_file(pred.join("00002.mp4")).unwrap();
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("00002.mp4: no prediction for the ground truth"),
        "{err}"
    );

    // The report's place is checked before scoring: a missing directory is made, a file in the
    // way is named (before: the failure came after every video was scored).
    let eval = |pred: &std::path::Path, report: &std::path::Path| {
        Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
            .args(["eval", "--pred", pred.to_str().unwrap()])
            .args([
                "--gt",
                gt.to_str().unwrap(),
                "--report",
                report.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    std::fs::write(dir.path().join("afile"), b"x").unwrap();
    // (With a missing prediction: the report error comes first, so nothing was scored.)
    let o = eval(&pred, &dir.path().join("afile/eval.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--report") && err.contains("cannot create"),
        "{err}"
    );
    std::fs::copy(gt.join("00002.mp4"), pred.join("00002.mp4")).unwrap();
    let nested = dir.path().join("new/dir/eval.json");
    let o = eval(&pred, &nested);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(nested.is_file());

    // Outputs never clobber what they do not own: a FIFO (before: the open blocked forever)
    // and a character device (/dev/full's numbers; before: the report was written into it at
    // the end) are refused before scoring and left as they are; a symbolic link is written
    // through, the link kept.
    let (dev, fifo) = crate::common::special_files(
        &dir.path().join("report.dev"),
        &dir.path().join("report.fifo"),
    );
    for (p, kind) in [(&fifo, "a FIFO"), (&dev, "a character device")] {
        let o = Command::new("timeout")
            .args(["-s", "KILL", "120"])
            .arg(syncdiff_devkit::workspace_bin("syncdiff"))
            .args(["eval", "--pred", pred.to_str().unwrap()])
            .args([
                "--gt",
                gt.to_str().unwrap(),
                "--report",
                p.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("--report {}: is {kind}", p.display())),
            "{err}"
        );
        let ft = std::fs::symlink_metadata(p).unwrap().file_type();
        use std::os::unix::fs::FileTypeExt;
        assert!(ft.is_fifo() || ft.is_char_device(), "{}", p.display());
    }
    std::fs::remove_file(&dev).unwrap();
    let link = dir.path().join("latest.json");
    std::os::unix::fs::symlink("new/dir/eval.json", &link).unwrap();
    std::fs::write(&nested, b"old").unwrap();
    let o = eval(&pred, &link);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&nested).unwrap()).unwrap();
    assert_eq!(r["videos"].as_array().unwrap().len(), 2);

    // A prediction of another size is scaled to the ground truth's, with a warning.
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    for c in ["00001", "00002"] {
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(gt.join(format!("{c}.mp4")))
            .args(["-vf", "scale=32:32"])
            .arg(small.join(format!("{c}.mp4")))
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let o = eval(&small, &dir.path().join("small.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("00001.mp4: the prediction is 32x32, the ground truth 160x160"),
        "{err}"
    );
}
