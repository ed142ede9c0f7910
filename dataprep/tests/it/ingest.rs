//! synth -> lrs2 ingest -> reader: values equal a direct computation, bad clips are rejected with
//! their reason, interrupted runs resume without redoing finished shards.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::repo;
use std::path::{Path, PathBuf};
use std::process::Command;

use syncdiff_dataprep::pipeline::{encode_clip, frames_to_tensors, ClipSettings, DecodedClip};
use syncdiff_dataprep::synth::{synth, SynthOptions};
use syncdiff_dataprep::video;
use syncdiff_dataset::audio::{mel_group_features, FbankParams, LogFbank};
use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::Config;

fn dataprep(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_syncdiff-dataprep"))
        .args(args)
        .output()
        .unwrap()
}

/// `syncdiff-dataprep lrs2 --root ROOT --out OUT --config CONFIG` (train split).
fn lrs2(root: &Path, out: &Path, config: &str) -> std::process::Output {
    dataprep(&[
        "lrs2",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--config",
        config,
    ])
}

fn make_synth(dir: &Path, clips: u32) {
    let opts = SynthOptions {
        out: dir.to_path_buf(),
        speakers: 2,
        clips_per_speaker: clips,
        seconds: 1.0,
        seed: 3,
    };
    synth(&opts, |_, _| {}).unwrap();
}

fn debug_config() -> String {
    repo().join("configs/debug.yaml").display().to_string()
}

#[test]
fn ingest_round_trip_equals_direct_computation() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("lrs2"), dir.path().join("ds"));
    make_synth(&root, 4);
    let o = dataprep(&[
        "lrs2",
        "--root",
        root.to_str().unwrap(),
        "--split",
        "train",
        "--out",
        out.to_str().unwrap(),
        "--config",
        &debug_config(),
        "--set",
        "data.clips_per_shard=3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = Dataset::open(&out).unwrap();
    let ids: Vec<&str> = ds.clips().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        ["spk00/00003", "spk00/00004", "spk01/00003", "spk01/00004"]
    );
    assert_eq!(ds.manifest().shards.len(), 2);

    let cfg = Config::load(&repo().join("configs/debug.yaml"), &[]).unwrap();
    let ae = syncdiff_model::vq::Autoencoder::new(
        tch::nn::VarStore::new(tch::Device::Cpu).root(),
        &cfg.model.autoencoder,
    );
    let s = ClipSettings {
        resolution: 32,
        fps: 25.0,
        sample_rate: 16000,
        mask_fraction: 0.5,
        audio_tolerance_s: 0.1,
        layout: Default::default(),
        sidecar_boxes: false,
        face: None,
    };
    let fb = LogFbank::new(FbankParams::default());
    for (ci, clip) in ds.clips().iter().enumerate() {
        // Decode independently and compute the expected values directly.
        let mp4 = root.join("main").join(format!("{}.mp4", clip.id));
        let rgb = video::decode_frames(&mp4, 32, 32).unwrap();
        let frames = rgb.len() / (32 * 32 * 3);
        assert_eq!(clip.frames, frames as u64, "clip boundaries of {}", clip.id);
        let audio: Vec<f64> = video::decode_audio(&mp4, 16000)
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let mel = mel_group_features(&fb, &audio, frames);
        let want = encode_clip(
            &ae,
            DecodedClip {
                id: clip.id.clone(),
                frames,
                rgb: rgb.clone(),
                mel: mel.clone(),
                masks: None,
                faces: Vec::new(),
                width: 32,
                height: 32,
                rotation: 0,
            },
            &s,
            tch::Device::Cpu,
            8,
            false,
        );
        for t in [0, frames as u64 / 2, frames as u64 - 1] {
            let n = 3 * 8 * 8 * t as usize;
            assert_eq!(
                ds.latent(ci, t).unwrap(),
                want.latents[n..n + 192],
                "{} frame {t}",
                clip.id
            );
            assert_eq!(
                ds.masked_latent(ci, t).unwrap(),
                want.masked_latents[n..n + 192]
            );
        }
        assert_eq!(ds.mel(ci, 0, frames as u64).unwrap(), mel);
        // The masked frame is black below the middle row and untouched above it.
        let (x, masked) = frames_to_tensors(&rgb, frames, 32, 0.5, tch::Device::Cpu);
        assert!(masked.narrow(2, 0, 16).equal(&x.narrow(2, 0, 16)));
        assert_eq!(f64::try_from(masked.narrow(2, 16, 16).max()).unwrap(), -1.0);
    }
}

#[test]
fn bad_clips_are_rejected_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("lrs2"), dir.path().join("ds"));
    make_synth(&root, 3);
    let main = root.join("main/bad");
    std::fs::create_dir_all(&main).unwrap();
    let frame = vec![128u8; 160 * 160 * 3];
    let frames = |n: usize| frame.repeat(n);
    std::fs::write(main.join("undecodable.mp4"), b"this is not a video").unwrap();
    video::encode(&main.join("no_audio.mp4"), &frames(25), 160, 160, 25, None).unwrap();
    video::encode(
        &main.join("wrong_fps.mp4"),
        &frames(30),
        160,
        160,
        30,
        Some((&vec![0i16; 16000], 16000)),
    )
    .unwrap();
    video::encode(
        &main.join("audio_short.mp4"),
        &frames(50),
        160,
        160,
        25,
        Some((&vec![100i16; 8000], 16000)),
    )
    .unwrap();
    let o = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            "-c:a",
            "aac",
        ])
        .arg(main.join("zero_frames.mp4"))
        .output()
        .unwrap();
    assert!(o.status.success());
    // A faststart mp4 (index first) cut to half its bytes: ffmpeg decodes the first half and
    // reports `partial file`; the container still states 3 s.
    let whole = main.join("whole.mp4");
    // Noisy frames: the media data, not the index, makes up most of the file.
    let noisy: Vec<u8> = (0..75 * 160 * 160 * 3u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 16) as u8)
        .collect();
    video::encode(
        &whole,
        &noisy,
        160,
        160,
        25,
        Some((&vec![100i16; 48000], 16000)),
    )
    .unwrap();
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&whole)
        .args(["-c", "copy", "-movflags", "+faststart"])
        .arg(main.join("faststart.mp4"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let bytes = std::fs::read(main.join("faststart.mp4")).unwrap();
    std::fs::write(main.join("truncated.mp4"), &bytes[..bytes.len() / 2]).unwrap();
    let list = "spk00/00003\nbad/undecodable\nbad/no_audio\nbad/zero_frames\nbad/wrong_fps\nbad/audio_short\nbad/truncated\nbad/missing\nspk01/00003\n";
    std::fs::write(root.join("train.txt"), list).unwrap();
    let o = lrs2(&root, &out, &debug_config());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("2 clips, 50 frames"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("7 rejected"));
    let rejected = std::fs::read_to_string(out.join("rejected.jsonl")).unwrap();
    for (clip, reason) in [
        ("undecodable", "undecodable"),
        ("no_audio", "no_audio"),
        ("zero_frames", "zero_frames"),
        ("wrong_fps", "wrong_fps"),
        ("audio_short", "audio_short"),
        ("truncated", "truncated"),
        ("missing", "missing"),
    ] {
        let line = rejected
            .lines()
            .find(|l| l.contains(&format!("\"bad/{clip}\"")))
            .unwrap_or_else(|| panic!("{clip} not rejected: {rejected}"));
        assert!(line.contains(&format!("\"reason\":\"{reason}\"")), "{line}");
        if clip == "truncated" {
            assert!(
                line.contains("of the 3.00 s the container states"),
                "{line}"
            );
            // ffmpeg's first error: `Invalid NAL unit size` or `partial file`.
            assert!(line.contains("; ffmpeg: "), "{line}");
        }
    }
    assert_eq!(Dataset::open(&out).unwrap().clips().len(), 2);
}

#[test]
fn killed_runs_resume_without_redoing_finished_shards() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lrs2");
    make_synth(&root, 5);
    let run = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_syncdiff-dataprep"))
            .args([
                "lrs2",
                "--root",
                root.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--config",
                &debug_config(),
                "--set",
                "data.clips_per_shard=1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let reference = dir.path().join("reference");
    let start = std::time::Instant::now();
    assert!(run(&reference).wait().unwrap().success());
    let full = start.elapsed();
    let manifest = std::fs::read_to_string(reference.join("manifest.json")).unwrap();

    // Kill points: while shard k (random) is being written, after a random extra delay.
    let mut rng = syncdiff_runtime::rng::Rng::new(&[42]);
    let mut mid_run = 0;
    for attempt in 0..3 {
        let out = dir.path().join(format!("killed{attempt}"));
        let k = 1 + rng.below(4);
        let extra = std::time::Duration::from_millis(rng.below(30));
        let mut child = run(&out);
        let partial = out.join(format!("shard-{k:05}.zarr.partial"));
        let deadline = std::time::Instant::now() + full * 4;
        while !partial.exists()
            && child.try_wait().unwrap().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(extra);
        let at = format!("shard {k} + {extra:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        // Shards finished before the kill, with their inode and mtime.
        let finished: Vec<(PathBuf, u64, i64)> = (0..6)
            .map(|i| out.join(format!("shard-{i:05}.zarr/entry.json")))
            .filter(|p| p.exists())
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap();
                (p, m.ino(), m.mtime_nsec())
            })
            .collect();
        assert!(
            run(&out).wait().unwrap().success(),
            "re-run after a kill at {at} failed"
        );
        for (p, ino, mtime) in &finished {
            let m = std::fs::metadata(p).unwrap();
            assert_eq!(
                (m.ino(), m.mtime_nsec()),
                (*ino, *mtime),
                "{} was redone",
                p.display()
            );
        }
        assert!(!std::fs::read_dir(&out).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")));
        assert_eq!(
            std::fs::read_to_string(out.join("manifest.json")).unwrap(),
            manifest,
            "kill at {at}: result differs"
        );
        let (a, b) = (
            Dataset::open(&reference).unwrap(),
            Dataset::open(&out).unwrap(),
        );
        for ci in 0..a.clips().len() {
            assert_eq!(a.latent(ci, 3).unwrap(), b.latent(ci, 3).unwrap());
        }
        println!(
            "kill at {at} of {full:?}: {} shard(s) had finished",
            finished.len()
        );
        mid_run += usize::from((1..6).contains(&finished.len()));
    }
    assert!(
        mid_run > 0,
        "no kill landed between shards: the test did not exercise resuming"
    );
}

#[test]
fn mpirun_ranks_split_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("lrs2"), dir.path().join("ds"));
    make_synth(&root, 5);
    let o = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args([
            "--oversubscribe",
            "-n",
            "2",
            env!("CARGO_BIN_EXE_syncdiff-dataprep"),
        ])
        .args([
            "lrs2",
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            &debug_config(),
            "--set",
            "data.clips_per_shard=1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("rank 0/2: built 3 shard(s)") && text.contains("rank 1/2: built 3 shard(s)"),
        "{text}"
    );
    let ds = Dataset::open(&out).unwrap();
    assert_eq!((ds.manifest().shards.len(), ds.clips().len()), (6, 6));
}

#[test]
fn half_precision_encode_error_against_float32() {
    let _torch = common::torch();
    use syncdiff_dataprep::pipeline::encode_latents;
    use syncdiff_model::config::AutoencoderConfig;
    use syncdiff_model::vq::Autoencoder;
    // A VQ autoencoder of the paper's structure at reduced width, random weights, real frames.
    let cfg = AutoencoderConfig {
        block_out_channels: vec![32, 64, 64],
        layers_per_block: 2,
        norm_num_groups: 8,
        ..Default::default()
    };
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let ae = Autoencoder::new(vs.root(), &cfg);
    let dir = tempfile::tempdir().unwrap();
    make_synth(dir.path(), 1);
    let rgb = video::decode_frames(&dir.path().join("main/spk00/00001.mp4"), 64, 64).unwrap();
    let (x, _) = frames_to_tensors(&rgb[..8 * 64 * 64 * 3], 8, 64, 0.5, tch::Device::Cpu);
    let full = encode_latents(&ae, &x, 4, false);
    vs.half();
    let half = encode_latents(&ae, &x, 4, true);
    let scale = full.iter().map(|v| v.to_f32().abs()).fold(0.0, f32::max);
    let err = full
        .iter()
        .zip(&half)
        .map(|(a, b)| (a.to_f32() - b.to_f32()).abs())
        .fold(0.0, f32::max);
    let mean = full
        .iter()
        .zip(&half)
        .map(|(a, b)| (a.to_f32() - b.to_f32()).abs())
        .sum::<f32>()
        / full.len() as f32;
    println!("float16 encode vs float32: max abs error {err:.2e} (mean {mean:.2e}), max |latent| {scale:.2e}");
    assert!(
        err <= 1e-2 * scale.max(1.0),
        "max abs error {err} for latents up to {scale}"
    );
}

#[test]
fn frozen_audio_features_are_cached_with_their_tag() {
    let _torch = common::torch();
    use syncdiff_dataprep::ingest::sha256_file;
    use syncdiff_dataset::shards::AudioCacheTag;
    use syncdiff_model::avhubert::AvHubert;
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("lrs2"), dir.path().join("ds"));
    make_synth(&root, 3);
    let cfg_path = dir.path().join("cache.yaml");
    let weights = dir.path().join("avhubert.safetensors");
    let yaml = format!(
        "extends: {}\ndata:\n  cache_audio_features: true\nmodel:\n  audio_encoder:\n    kind: avhubert\n    weights: {}\n    embed_dim: 32\n    layers: 3\n    heads: 4\n    ffn_dim: 64\n    frozen_layers: 2\n    pos_conv_kernel: 16\n    pos_conv_groups: 4\n    context_frames: 16\n",
        debug_config(),
        weights.display()
    );
    std::fs::write(&cfg_path, yaml).unwrap();
    let cfg = Config::load(&cfg_path, &[]).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let enc = AvHubert::new(vs.root(), &cfg.model.audio_encoder);
    // Missing weights: a one-line error naming the key.
    let o = lrs2(&root, &out, &cfg_path.display().to_string());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("avhubert.safetensors") && err.lines().count() == 1,
        "{err}"
    );
    vs.save(&weights).unwrap();
    let o = lrs2(&root, &out, &cfg_path.display().to_string());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = Dataset::open(&out).unwrap();
    let tag = AudioCacheTag {
        weights_sha256: sha256_file(&weights).unwrap(),
        frozen_layers: 2,
        dim: 32,
        context_frames: 16,
    };
    let frames = ds.clips()[0].frames;
    let cached = ds.audio_features(0, 0, frames, &tag).unwrap().unwrap();
    // Direct computation: frozen layers over windows of 16 frames of the clip's mel rows.
    let mel = ds.mel(0, 0, frames).unwrap();
    let mut want = Vec::new();
    for start in (0..frames as usize).step_by(16) {
        let len = 16.min(frames as usize - start);
        let x = tch::Tensor::from_slice(&mel[start * 104..(start + len) * 104])
            .view([1, len as i64, 104]);
        let f: Vec<f32> = Vec::try_from(enc.frozen_features(&x).flatten(0, -1)).unwrap();
        want.extend(f);
    }
    let err = cached
        .iter()
        .zip(&want)
        .map(|(a, b)| (a.to_f32() - b).abs())
        .fold(0.0, f32::max);
    assert_eq!(cached.len(), want.len());
    assert!(err < 1e-2, "cached features differ by {err}");
    assert_eq!(
        ds.audio_features(
            0,
            0,
            4,
            &AudioCacheTag {
                frozen_layers: 3,
                ..tag
            }
        )
        .unwrap(),
        None
    );
}

#[test]
fn face_box_sidecar_crops_each_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("lrs2"), dir.path().join("ds"));
    let main = root.join("main/spk");
    std::fs::create_dir_all(&main).unwrap();
    // 64x64 frames: left half red, right half blue; the box is the left half.
    let frame: Vec<u8> = (0..64 * 64)
        .flat_map(|i| {
            if i % 64 < 32 {
                [230u8, 20, 20]
            } else {
                [20u8, 20, 230]
            }
        })
        .collect();
    video::encode(
        &main.join("clip.mp4"),
        &frame.repeat(10),
        64,
        64,
        25,
        Some((&vec![500i16; 6400], 16000)),
    )
    .unwrap();
    std::fs::write(main.join("clip.boxes.txt"), "0 0 32 64\n".repeat(10)).unwrap();
    std::fs::write(root.join("train.txt"), "spk/clip\n").unwrap();
    let boxes = |out: &Path| common::ingest("lrs2", &root, out, &["data.face.detector=boxes"]);
    let o = boxes(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = Dataset::open(&out).unwrap();
    // resample autoencoder: 8x8 latent of the 32x32 crop, values in [-1, 1]: red everywhere.
    let lat: Vec<f32> = ds
        .latent(0, 5)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    let (r, b) = (&lat[..64], &lat[128..]);
    assert!(
        r.iter().all(|&v| v > 0.6) && b.iter().all(|&v| v < -0.6),
        "red {r:?} blue {b:?}"
    );
    // A box count that does not match the frames rejects the clip.
    std::fs::write(main.join("clip.boxes.txt"), "0 0 32 64\n".repeat(3)).unwrap();
    let out2 = dir.path().join("ds2");
    let o = boxes(&out2);
    assert!(o.status.success());
    assert!(std::fs::read_to_string(out2.join("rejected.jsonl"))
        .unwrap()
        .contains("\"reason\":\"bad_boxes\""));
    // Garbage sidecars reject the clip with the file and the line; never a panic.
    let sidecar = main.join("clip.boxes.txt");
    let mut bad_token = "0 0 32 64\n".repeat(10);
    bad_token.insert_str(20, "10 20 x 30 40\n");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("token", bad_token.into_bytes(), "line 3: `10 20 x 30 40`"),
        (
            "utf8",
            b"0 0 32 64\n\xff\xfe 0 32 64\n".repeat(5),
            "not UTF-8",
        ),
        ("dir", Vec::new(), "cannot read"),
    ];
    for (name, bytes, want) in cases {
        if name == "dir" {
            std::fs::remove_file(&sidecar).unwrap();
            std::fs::create_dir(&sidecar).unwrap();
        } else {
            std::fs::write(&sidecar, bytes).unwrap();
        }
        let out = dir.path().join(format!("ds-{name}"));
        let o = boxes(&out);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let rejected = std::fs::read_to_string(out.join("rejected.jsonl")).unwrap();
        assert!(
            rejected.contains("\"reason\":\"bad_boxes\"")
                && rejected.contains("clip.boxes.txt")
                && rejected.contains(want),
            "{name}: {rejected}"
        );
    }
    std::fs::remove_dir(&sidecar).unwrap();
    std::fs::write(&sidecar, "0 0 32 64\n".repeat(10)).unwrap();
    // detector none: the sidecar is not read, the whole frame is the face.
    let out3 = dir.path().join("ds3");
    let o = lrs2(&root, &out3, &debug_config());
    assert!(o.status.success());
    assert_eq!(Dataset::open(&out3).unwrap().clips().len(), 1);
    // detector boxes without a sidecar: rejected.
    std::fs::remove_file(main.join("clip.boxes.txt")).unwrap();
    let out4 = dir.path().join("ds4");
    let o = boxes(&out4);
    assert!(o.status.success());
    let rejected = std::fs::read_to_string(out4.join("rejected.jsonl")).unwrap();
    assert!(
        rejected.contains("\"reason\":\"bad_boxes\"") && rejected.contains("no sidecar"),
        "{rejected}"
    );
}

#[test]
fn a_rerun_with_other_settings_refuses_to_mix_data_sets() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("lrs2"), dir.path().join("ds"));
    make_synth(&root, 4);
    let run = |sets: &[&str]| {
        let mut args = vec![
            "lrs2",
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        let cfg = debug_config();
        args.extend(["--config", &cfg, "--set", "data.clips_per_shard=2"]);
        args.extend(sets);
        let o = dataprep(&args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&[]);
    assert_eq!(code, Some(0), "{err}");
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    // The same settings again: nothing to do.
    let (code, so, err) = run(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(so.contains("built 0 shard(s), 2 already finished"), "{so}");

    // Another resolution: refused before any work, naming the shard and the keys (before: "0
    // built, 2 already finished" and a manifest describing the new shape over the old shards).
    let (code, so, err) = run(&["--set", "data.resolution=64"]);
    assert_eq!(code, Some(1), "{so}{err}");
    assert!(
        err.contains("shard-00000.zarr was prepared with other settings"),
        "{err}"
    );
    assert!(err.contains("resolution: 32 -> 64"), "{err}");
    assert!(err.contains("latent_shape"), "{err}");
    assert!(err.contains("--rebuild"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("manifest.json")).unwrap(),
        manifest,
        "a refused run changed the manifest"
    );
    let (code, _, err) = run(&["--set", "data.mask_fraction=0.4"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("mask_fraction: 0.5 -> 0.4"), "{err}");

    // --rebuild: the shards are rebuilt and the manifest matches them.
    let (code, so, err) = run(&["--set", "data.resolution=64", "--rebuild"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(so.contains("built 2 shard(s), 0 already finished"), "{so}");
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.manifest().meta.latent_shape, [3, 16, 16]);
    assert_eq!(ds.manifest().meta.resolution, 64);
    assert_eq!(ds.latent(0, 0).unwrap().len(), 3 * 16 * 16);

    // A manifest that misdescribes its shards (edited by hand, or left by an older build) is
    // an error naming the shard when the data set is opened, not a wrong read later.
    let edited = std::fs::read_to_string(out.join("manifest.json"))
        .unwrap()
        .replace("\"resolution\": 64", "\"resolution\": 32")
        .replacen("16,\n      16", "8,\n      8", 1);
    assert!(edited.contains("8,\n      8"), "{edited}");
    std::fs::write(out.join("manifest.json"), edited).unwrap();
    let e = Dataset::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("shard-00000.zarr") && e.contains("latents has shape"),
        "{e}"
    );
}

/// An object-store `--out` is published there, never a local directory named `s3:`; an unknown
/// scheme is refused in one line (a URL as `--root` too).
#[test]
fn object_store_outputs_are_never_local_directories() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_syncdiff-dataprep"))
            .current_dir(dir.path())
            .args(args)
            .args(["--config", &debug_config()])
            .output()
            .unwrap()
    };
    let o = run(&["lrs2", "--root", "r", "--out", "ftp://bucket/ds"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: --out ftp://bucket/ds: unsupported scheme ftp://"),
        "{err}"
    );
    // The missing source is found before any request to the store.
    let o = run(&[
        "lrs2",
        "--root",
        "r",
        "--out",
        "s3://bucket/ds",
        "--stage",
        "st",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("publishing to s3://bucket/ds (staging in st)") && err.contains("error: r"),
        "{err}"
    );
    let o = run(&["lrs2", "--root", "s3://bucket/r", "--out", "ds"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not object storage"), "{err}");
    assert!(!dir.path().join("s3:").exists() && !dir.path().join("ftp:").exists());
}

/// Threads of one process decoding the same clip at once each get the whole clip (the scratch
/// file for its audio is unique per call; it once lived beside the clip, named by the process,
/// and one thread deleted another's), and nothing is written beside the source.
#[test]
fn one_clip_decoded_by_many_threads_at_once_is_whole_every_time() {
    let dir = tempfile::tempdir().unwrap();
    make_synth(dir.path(), 1);
    let clip = dir.path().join("main/spk00/00001.mp4");
    let one = video::decode_av(&clip, Some(32), 16000).unwrap();
    assert!(!one.audio.is_empty());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| video::decode_av(&clip, Some(32), 16000)))
            .collect();
        for h in handles {
            let d = h.join().unwrap().unwrap();
            assert_eq!(
                (d.audio.len(), d.rgb.len()),
                (one.audio.len(), one.rgb.len())
            );
            assert!(d.audio == one.audio);
        }
    });
    let beside: Vec<_> = std::fs::read_dir(dir.path().join("main/spk00"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".s16"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
}
