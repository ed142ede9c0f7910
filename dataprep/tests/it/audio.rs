//! Filterbank and MFCC parity with python_speech_features (run live) on real speech from espeak-ng.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::python;
use std::path::{Path, PathBuf};
use std::process::Command;

use syncdiff_dataset::audio::{
    align_rows, mel_group_features, mel_group_rows, normalize_rows, stack_frames, FbankParams,
    LogFbank,
};

/// Speech from espeak-ng, resampled by ffmpeg to 16 kHz mono int16 (raw little-endian).
fn speech(dir: &Path) -> (PathBuf, Vec<f64>) {
    let wav = dir.join("speech.wav");
    let o = Command::new("espeak-ng")
        .args([
            "-w",
            wav.to_str().unwrap(),
            "The quick brown fox jumps over the lazy dog, twice.",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "espeak-ng: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let raw = dir.join("speech.s16");
    let o = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-i",
            wav.to_str().unwrap(),
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "s16le",
            raw.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bytes = std::fs::read(&raw).unwrap();
    let samples = bytes
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    (raw, samples)
}

#[test]
fn logfbank_matches_python_speech_features() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, samples) = speech(dir.path());
    assert!(
        samples.len() > 32000,
        "espeak produced only {} samples",
        samples.len()
    );
    // Lengths on and off the hop grid, shorter than one frame, and the whole clip.
    let lengths = [399, 400, 401, 1000, 16000, 16001, 23457, samples.len()];
    let out = dir.path().join("ref.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/logfbank_ref.py");
    let mut cmd = python();
    cmd.arg(script).arg(&raw).arg(&out);
    for n in lengths {
        cmd.arg(n.to_string());
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: std::collections::BTreeMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&out)
            .unwrap()
            .into_iter()
            .collect();

    let fb = LogFbank::new(FbankParams::default());
    for n in lengths {
        let ours = fb.compute(&samples[..n]);
        let r = &reference[&format!("fbank_{n}")];
        assert_eq!(
            r.size(),
            vec![fb.num_frames(n) as i64, 26],
            "frames for {n} samples"
        );
        let r: Vec<f32> = Vec::try_from(r.flatten(0, -1)).unwrap();
        let err = ours
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - f64::from(*b)).abs())
            .fold(0.0, f64::max);
        println!(
            "{n} samples: {} frames, max abs error {err:.2e}",
            ours.len() / 26
        );
        assert!(err <= 1e-3, "{n} samples: max abs error {err}");

        // MFCC (SyncNet's features): same frames, 13 cepstra.
        let m = fb.mfcc(&samples[..n]);
        let r: Vec<f32> = Vec::try_from(reference[&format!("mfcc_{n}")].flatten(0, -1)).unwrap();
        assert_eq!(m.len(), r.len(), "mfcc values for {n} samples");
        let err = m
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - f64::from(*b)).abs() / (1.0 + f64::from(*b).abs()))
            .fold(0.0, f64::max);
        println!("{n} samples: mfcc max relative error {err:.2e}");
        assert!(err <= 1e-3, "{n} samples mfcc: max relative error {err}");

        // Stacking by 4 and per-frame layer norm, checked on their own.
        let mut st = stack_frames(&ours, 26, 4);
        normalize_rows(&mut st, 104);
        let r: Vec<f32> = Vec::try_from(reference[&format!("stacked_{n}")].flatten(0, -1)).unwrap();
        assert_eq!(st.len(), r.len());
        let err = st
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - f64::from(*b)).abs())
            .fold(0.0, f64::max);
        assert!(err <= 1e-3, "{n} samples stacked: max abs error {err}");
    }
}

#[test]
fn stacking_pads_and_alignment_trims() {
    // 5 frames of width 2 -> 2 groups of 4 (3 zero frames appended).
    let x: Vec<f64> = (0..10).map(f64::from).collect();
    let s = stack_frames(&x, 2, 4);
    assert_eq!(s.len(), 16);
    assert_eq!(&s[..10], &x[..]);
    assert!(s[10..].iter().all(|&v| v == 0.0));
    assert_eq!(align_rows(s.clone(), 8, 1), s[..8].to_vec());
    assert_eq!(align_rows(s, 8, 3)[16..], [0.0; 8]);
    let mut r = vec![1.0, 3.0, 5.0, 7.0];
    normalize_rows(&mut r, 4);
    let mean: f64 = r.iter().sum::<f64>() / 4.0;
    let var: f64 = r.iter().map(|v| v * v).sum::<f64>() / 4.0;
    assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-4);
}

#[test]
fn features_align_to_video_frames() {
    let fb = LogFbank::new(FbankParams::default());
    // 1 s of a 440 Hz tone: 99 frames -> 25 stacked rows; 30 video frames pad, 20 trim.
    let tone: Vec<f64> = (0..16000)
        .map(|i| 8000.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 16000.0).sin())
        .collect();
    let long = mel_group_features(&fb, &tone, 30);
    assert_eq!(long.len(), 30 * 104);
    assert!(long[25 * 104..].iter().all(|&v| v == 0.0));
    assert!(long[..104].iter().any(|&v| v != 0.0));
    let short = mel_group_features(&fb, &tone, 20);
    assert_eq!(short[..], long[..20 * 104]);
}

/// A long recording is featurised a segment at a time from only the samples around it: every
/// row range, from the exact minimum of samples or more, equals the whole clip's rows bit for bit
/// (clip starts and ends, audio shorter or longer than the video, empty audio), and too few
/// samples is `None`, never a guess.
#[test]
fn rows_of_a_segment_from_its_samples_equal_the_whole_clips() {
    let dir = tempfile::tempdir().unwrap();
    let (_, speech) = speech(dir.path());
    let fb = LogFbank::new(FbankParams::default());
    for (n, frames) in [
        (speech.len(), speech.len() / 640),
        (speech.len(), speech.len() / 640 + 7),
        (20_000, 31),
        (1_000, 4),
        (0, 3),
    ] {
        let all = &speech[..n];
        let whole = mel_group_features(&fb, all, frames);
        let mut ranges = vec![0..frames, 0..1, frames - 1..frames, frames / 2..frames];
        ranges.extend((0..frames).step_by(5).map(|a| a..(a + 7).min(frames)));
        for rows in ranges {
            let need = fb.samples_for_rows(rows.clone());
            let (a, b) = (need.start.min(n), need.end.min(n));
            let want = &whole[rows.start * 104..rows.end * 104];
            // Exactly the samples needed, and a wider window.
            for (start, end) in [(a, b), (a.saturating_sub(999), (b + 999).min(n))] {
                let got = mel_group_rows(&fb, &all[start..end], start, n, rows.clone()).unwrap();
                let same = got
                    .iter()
                    .zip(want)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same && got.len() == want.len(), "n {n}, rows {rows:?}");
            }
            if b > a {
                let short = mel_group_rows(&fb, &all[a..b - 1], a, n, rows.clone());
                assert!(short.is_none(), "n {n}, rows {rows:?}: one sample short");
            }
            if a > 0 && a < b {
                let late = mel_group_rows(&fb, &all[a + 1..b], a + 1, n, rows.clone());
                assert!(
                    late.is_none(),
                    "n {n}, rows {rows:?}: starts one sample late"
                );
            }
        }
    }
}
