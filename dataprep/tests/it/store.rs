//! Shard stores: write, open through the manifest, random access, and zarr-python reads them.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::python;
use std::path::Path;

use half::f16;
use syncdiff_dataset::shards::{
    shard_name, write_manifest, write_shard, ClipData, Dataset, FaceRecord, Manifest, StoreMeta,
    FORMAT_VERSION,
};
use syncdiff_model::config::{FaceConfig, FaceDetectorKind};

fn meta() -> StoreMeta {
    StoreMeta {
        format_version: FORMAT_VERSION,
        autoencoder: "resample".into(),
        autoencoder_sha256: "none".into(),
        latent_shape: [3, 4, 4],
        split: "train".into(),
        filterbank: serde_json::json!({"nfilt": 26, "stack": 4}),
        audio_cache: None,
        resolution: 16,
        fps: 25,
        sample_rate: 16000,
        mask_fraction: 0.5,
        face: Default::default(),
    }
}

/// A clip whose values encode (clip, frame, element).
fn clip(c: usize, frames: usize) -> ClipData {
    let lat = |f: usize, e: usize, off: f32| {
        f16::from_f32(c as f32 * 100.0 + f as f32 + e as f32 / 64.0 + off)
    };
    ClipData {
        id: format!("spk{c:02}/00001"),
        frames,
        latents: (0..frames)
            .flat_map(|f| (0..48).map(move |e| lat(f, e, 0.0)))
            .collect(),
        masked_latents: (0..frames)
            .flat_map(|f| (0..48).map(move |e| lat(f, e, 0.5)))
            .collect(),
        mel: (0..frames)
            .flat_map(|f| (0..104).map(move |e| (c * 1000 + f) as f32 + e as f32 * 1e-3))
            .collect(),
        // 8 cached audio values per frame (used when the meta has an audio cache tag).
        audio_features: (0..frames * 8)
            .map(|i| f16::from_f32(((c * 7 + i) % 512) as f32 * 0.25))
            .collect(),
        // Face records (stored when the meta says a dlib detector made them).
        faces: (0..frames).map(|f| face_record(c, f)).collect(),
        rotation: 0,
    }
}

fn face_record(c: usize, f: usize) -> FaceRecord {
    let v = (c * 1000 + f) as f32;
    let mut landmarks = [[0f32; 2]; 68];
    for (k, p) in landmarks.iter_mut().enumerate() {
        *p = [v + k as f32, if k == 67 { f32::NAN } else { -v }];
    }
    FaceRecord {
        face_box: [v, v + 1.0, v + 2.0, v + 3.0],
        landmarks,
        crop: [1.0, 0.0, v, 0.0, 1.0, -v],
    }
}

#[test]
fn face_records_round_trip_when_a_detector_made_them() {
    let dir = tempfile::tempdir().unwrap();
    for (name, detector) in [
        ("none", FaceDetectorKind::None),
        ("hog", FaceDetectorKind::DlibHog),
    ] {
        let d = dir.path().join(name);
        let m = StoreMeta {
            face: FaceConfig {
                detector,
                ..FaceConfig::default()
            },
            ..meta()
        };
        let entry =
            write_shard::<String>(&d.join(shard_name(0)), &[clip(0, 7), clip(1, 300)], &m, &[])
                .unwrap();
        write_manifest(
            &d,
            &Manifest {
                meta: m,
                shards: vec![entry],
            },
        )
        .unwrap();
        let ds = Dataset::open(&d).unwrap();
        for (ci, t) in [(0, 0), (0, 6), (1, 0), (1, 299)] {
            let got = ds.face(ci, t).unwrap();
            match detector {
                FaceDetectorKind::None => assert!(got.is_none()),
                _ => {
                    let (got, want) = (got.unwrap(), face_record(ci, t as usize));
                    assert_eq!((got.face_box, got.crop), (want.face_box, want.crop));
                    assert_eq!(got.landmarks[..67], want.landmarks[..67]);
                    assert!(got.landmarks[67][1].is_nan());
                }
            }
        }
        assert!(ds.face(1, 300).is_err());
    }
    // A clip without records in a data set that should have them is refused by name.
    let mut bare = clip(0, 3);
    bare.faces.clear();
    let m = StoreMeta {
        face: FaceConfig {
            detector: FaceDetectorKind::DlibHog,
            ..FaceConfig::default()
        },
        ..meta()
    };
    let e = write_shard::<String>(&dir.path().join("x").join(shard_name(0)), &[bare], &m, &[])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("clip spk00/00001: face records for 0 of 3 frames"),
        "{e}"
    );
}

#[test]
fn shards_round_trip_and_zarr_python_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 300 frames in the second shard: more than one 256-frame shard file.
    let shards = [vec![clip(0, 7), clip(1, 5)], vec![clip(2, 300)]];
    let entries: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, clips)| {
            write_shard::<String>(&d.join(shard_name(i)), clips, &meta(), &[]).unwrap()
        })
        .collect();
    assert!(!d.join("shard-00000.zarr.partial").exists());
    // Without the manifest the data set is incomplete.
    let e = Dataset::open(d).unwrap_err().to_string();
    assert!(
        e.contains("manifest.json") && e.contains("incomplete"),
        "{e}"
    );
    write_manifest(
        d,
        &Manifest {
            meta: meta(),
            shards: entries,
        },
    )
    .unwrap();
    let ds = Dataset::open(d).unwrap();
    assert_eq!(ds.manifest().clips(), 3);
    assert_eq!(ds.manifest().frames(), 312);
    assert_eq!(
        ds.clips().iter().map(|c| c.frames).collect::<Vec<_>>(),
        vec![7, 5, 300]
    );
    for (ci, t) in [
        (0usize, 0u64),
        (0, 6),
        (1, 0),
        (1, 4),
        (2, 0),
        (2, 255),
        (2, 256),
        (2, 299),
    ] {
        let want = clip(ci, ds.clips()[ci].frames as usize);
        let n = 48 * t as usize;
        assert_eq!(
            ds.latent(ci, t).unwrap(),
            want.latents[n..n + 48],
            "clip {ci} frame {t}"
        );
        assert_eq!(
            ds.masked_latent(ci, t).unwrap(),
            want.masked_latents[n..n + 48]
        );
    }
    assert_eq!(
        ds.mel(2, 250, 10).unwrap(),
        clip(2, 300).mel[250 * 104..260 * 104]
    );
    let e = ds.latent(1, 5).unwrap_err().to_string();
    assert!(e.contains("frames 5..6 out of range (5 frames)"), "{e}");

    let out = d.join("py.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/zarr_read.py");
    let o = python()
        .arg(script)
        .arg(d.join("shard-00000.zarr"))
        .arg(&out)
        .arg("8")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "spk00/00001,spk01/00001"
    );
    let py: std::collections::BTreeMap<String, tch::Tensor> = tch::Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    // Frame 8 of shard 0 is frame 1 of clip 1.
    let ours: Vec<f32> = ds
        .latent(1, 1)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_eq!(
        Vec::<f32>::try_from(py["latent"].flatten(0, -1)).unwrap(),
        ours
    );
    let offsets: Vec<i64> = Vec::try_from(&py["clip_offsets"]).unwrap();
    assert_eq!(offsets, vec![0, 7, 12]);
    assert_eq!(py["mel"].size(), vec![12, 104]);
}

#[test]
fn samples_read_target_identity_previous_and_context() {
    use syncdiff_dataset::shards::{context_window, SampleRequest};
    assert_eq!(context_window(0, 300, 250), (0, 250));
    assert_eq!(context_window(150, 300, 250), (25, 250));
    assert_eq!(context_window(299, 300, 250), (50, 250));
    assert_eq!(context_window(3, 7, 250), (0, 7));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let entry = write_shard::<String>(
        &d.join(shard_name(0)),
        &[clip(0, 7), clip(1, 300)],
        &meta(),
        &[],
    )
    .unwrap();
    write_manifest(
        d,
        &Manifest {
            meta: meta(),
            shards: vec![entry],
        },
    )
    .unwrap();
    let ds = Dataset::open(d).unwrap();
    let s = ds
        .sample(&SampleRequest {
            clip: 1,
            t: 200,
            identity: 17,
            previous: 2,
            context_frames: 250,
        })
        .unwrap();
    let c = clip(1, 300);
    assert_eq!(s.target, c.latents[200 * 48..201 * 48]);
    assert_eq!(s.masked, c.masked_latents[200 * 48..201 * 48]);
    assert_eq!(s.identity, c.latents[17 * 48..18 * 48]);
    assert_eq!(
        s.previous,
        vec![
            c.latents[198 * 48..199 * 48].to_vec(),
            c.latents[199 * 48..200 * 48].to_vec()
        ]
    );
    assert_eq!((s.context_len, s.offset), (250, 150));
    assert_eq!(s.mel, c.mel[50 * 104..300 * 104]);
    let e = ds
        .sample(&SampleRequest {
            clip: 0,
            t: 0,
            identity: 1,
            previous: 1,
            context_frames: 250,
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs 1 previous frames"), "{e}");
}

#[test]
fn cached_audio_features_are_served_only_for_matching_weights_and_nf() {
    use syncdiff_dataset::shards::AudioCacheTag;
    let tag = AudioCacheTag {
        weights_sha256: "abc".into(),
        frozen_layers: 9,
        dim: 8,
        context_frames: 250,
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = StoreMeta {
        audio_cache: Some(tag.clone()),
        ..meta()
    };
    let entry =
        write_shard::<String>(&d.join(shard_name(0)), &[clip(0, 7), clip(1, 70)], &m, &[]).unwrap();
    write_manifest(
        d,
        &Manifest {
            meta: m,
            shards: vec![entry],
        },
    )
    .unwrap();
    let ds = Dataset::open(d).unwrap();
    let got = ds.audio_features(1, 10, 20, &tag).unwrap().unwrap();
    assert_eq!(got, clip(1, 70).audio_features[80..240]);
    let other_nf = AudioCacheTag {
        frozen_layers: 6,
        ..tag.clone()
    };
    assert_eq!(ds.audio_features(1, 10, 20, &other_nf).unwrap(), None);
    let other_weights = AudioCacheTag {
        weights_sha256: "def".into(),
        ..tag
    };
    assert_eq!(ds.audio_features(1, 10, 20, &other_weights).unwrap(), None);
}

/// Clips pushed one at a time, one taken back after it was pushed (a clip found bad late): the
/// shard holds exactly what a shard written from the clips that stayed holds (every array and
/// attribute, read back by zarr-python), and no spill file is left in it.
#[test]
fn a_shard_written_clip_by_clip_takes_back_a_clip_pushed_by_mistake() {
    use syncdiff_dataset::shards::ShardWriter;
    let dir = tempfile::tempdir().unwrap();
    let m = StoreMeta {
        face: FaceConfig {
            detector: FaceDetectorKind::DlibHog,
            ..FaceConfig::default()
        },
        ..meta()
    };
    let kept = [clip(0, 7), clip(2, 600)];
    let (a, b) = (
        dir.path().join("a").join(shard_name(0)),
        dir.path().join("b").join(shard_name(0)),
    );
    let once = write_shard::<String>(&a, &kept, &m, &[]).unwrap();
    let mut w = ShardWriter::create(&b, &m).unwrap();
    w.push(&kept[0]).unwrap();
    let mark = w.mark();
    w.push(&clip(1, 300)).unwrap();
    w.rollback(&mark).unwrap();
    assert_eq!(w.clips(), 1);
    w.push(&kept[1]).unwrap();
    let streamed = w.finish::<String>(&[]).unwrap();
    assert_eq!(once, streamed);
    assert!(!b.join(".spill").exists());
    // zarrs writes a shard's subchunks in parallel, so the files' bytes differ run to run:
    // compare what they hold.
    let script = r#"
import sys, zarr, numpy as np
a, b = zarr.open_group(sys.argv[1], mode="r"), zarr.open_group(sys.argv[2], mode="r")
assert dict(a.attrs) == dict(b.attrs), "attributes differ"
names = sorted(a.array_keys())
assert names == sorted(b.array_keys()), (names, sorted(b.array_keys()))
for n in names:
    assert np.array_equal(a[n][:], b[n][:], equal_nan=True), n
print(",".join(names), a["latents"].shape[0])
"#;
    let o = python()
        .arg("-c")
        .arg(script)
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "clip_offsets,crop,face_box,landmarks,latents,masked_latents,mel 607"
    );
}
