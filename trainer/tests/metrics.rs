//! PSNR and SSIM against scikit-image, run live on the same pixels: random images, smooth images
//! with noise, and real frames of a synthetic talking-face video (with a mouth-region crop).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use syncdiff_dataprep::rng::Rng;
use syncdiff_trainer::eval::{psnr, ssim, Region, View};

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
        let o = Command::new(common::python())
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
