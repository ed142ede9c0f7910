//! Long recordings in flat memory, and phone videos upright, through the streamed face path: a
//! 60 s 1280x720 recording of the astronaut portrait goes
//! through `syncdiff-dataprep videos` with the face front-end within 1.2x the peak memory of a
//! 10 s one, cut into parts no longer than `data.face.max_segment_s` (before streaming the
//! whole clip was held at source size: 1.17 GB for 10 s, 4.55 GB for 60 s).

use std::f32::consts::PI;
use std::path::Path;
use std::process::Command;

use syncdiff_dataprep::video::{self, FrameWriter};
use syncdiff_dataset::shards::Dataset;

use crate::face::{render, still_box, Pose};

/// 10 s of the portrait at 1280x720, 25 fps, moving on a closed 10 s path (so that copies of
/// it follow each other without a jump), no sound.
fn ten_seconds(path: &Path) {
    let (_, still) = still_box();
    let mut w = FrameWriter::create(path, 1280, 720, 25, None).unwrap();
    for i in 0..250 {
        let t = 2.0 * PI * i as f32 / 250.0;
        let pose = Pose {
            scale: 1.8,
            angle: 0.0,
            pos: [640.0 + 100.0 * t.sin(), 360.0 + 20.0 * (2.0 * t).sin()],
        };
        w.push(&render(&[pose], still.centre(), 1280, 720)).unwrap();
    }
    w.finish().unwrap();
}

/// `loops` copies of `src` back to back with a tone as the sound track.
fn recording(src: &Path, loops: u32, out: &Path) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-stream_loop"])
        .arg((loops - 1).to_string())
        .arg("-i")
        .arg(src)
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=220:sample_rate=16000:duration={}",
            loops * 10
        ))
        .args([
            "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-t",
        ])
        .arg((loops * 10).to_string())
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Ingests the one recording under `root`: its peak memory (MiB, from the summary line) and
/// the stored parts (id, frames).
fn ingest(root: &Path, out: &Path) -> (f64, Vec<(String, u64)>) {
    let o = crate::common::ingest(
        "videos",
        root,
        out,
        &[
            "data.face.detector=dlib-hog",
            "data.face.crop=face",
            "data.face.detect_every=5",
            "data.face.min_face=110",
            "data.face.max_segment_s=4",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    let summary = format!("{stdout}{stderr}");
    let mib = summary
        .split("peak memory ")
        .nth(1)
        .and_then(|r| r.split(" MiB").next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no peak memory in: {summary}"));
    let ds = Dataset::open(out).unwrap();
    let parts = ds
        .clips()
        .iter()
        .map(|c| (c.id.clone(), c.frames))
        .collect();
    (mib, parts)
}

#[test]
fn a_60_s_720p_recording_ingests_in_the_memory_of_a_10_s_one_in_parts_of_at_most_4_s() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("ten.mp4");
    ten_seconds(&src);
    let mut peaks = Vec::new();
    for seconds in [10u32, 60] {
        let root = d.join(format!("own{seconds}"));
        std::fs::create_dir_all(&root).unwrap();
        recording(&src, seconds / 10, &root.join("talk.mp4"));
        let info = video::probe(&root.join("talk.mp4")).unwrap();
        assert_eq!((info.width, info.height), (1280, 720));
        let (mib, parts) = ingest(&root, &d.join(format!("ds{seconds}")));
        // The face is there throughout: every frame stored, in equal parts of at most 100.
        let frames: u64 = parts.iter().map(|(_, f)| f).sum();
        assert_eq!(frames, u64::from(seconds) * 25, "{parts:?}");
        assert_eq!(
            parts.len() as u32,
            (seconds * 25).div_ceil(100),
            "{parts:?}"
        );
        let per = u64::from(seconds * 25) / parts.len() as u64;
        assert!(
            parts.iter().all(|(_, f)| *f <= 100 && f.abs_diff(per) <= 1),
            "{parts:?}"
        );
        assert!(parts[0].0.starts_with("talk.mp4#0-"), "{parts:?}");
        println!(
            "{seconds} s of 720p: peak memory {mib:.0} MiB, {} parts",
            parts.len()
        );
        peaks.push(mib);
    }
    assert!(
        peaks[1] <= 1.2 * peaks[0],
        "peak memory 10 s {} MiB, 60 s {} MiB",
        peaks[0],
        peaks[1]
    );
}

/// A phone's portrait video, stored as landscape frames with a display rotation, goes through the
/// streamed face path as it is displayed: every frame stored with a face, face boxes inside the
/// portrait frame, the rotation recorded.
#[test]
fn a_phone_video_stored_sideways_is_ingested_upright() {
    let (_, still) = still_box();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (w, h) = (360u32, 640u32);
    let upright = d.join("upright.mp4");
    let mut wr = FrameWriter::create(&upright, w, h, 25, None).unwrap();
    for i in 0..75 {
        let pose = Pose {
            scale: 1.4,
            angle: 0.0,
            pos: [180.0, 300.0 + i as f32 * 0.2],
        };
        wr.push(&render(&[pose], still.centre(), w, h)).unwrap();
    }
    wr.finish().unwrap();
    // Stored as a phone stores it: frames turned a quarter clockwise, rotate=90 in the container.
    let turned = d.join("turned.mp4");
    let root = d.join("phone");
    std::fs::create_dir_all(&root).unwrap();
    let phone = root.join("portrait.mp4");
    let (up, tu, ph) = (
        upright.to_str().unwrap(),
        turned.to_str().unwrap(),
        phone.to_str().unwrap(),
    );
    syncdiff_devkit::ffmpeg(&["-i", up, "-vf", "transpose=1", "-crf", "12", tu]);
    let tone = "sine=frequency=220:sample_rate=16000:duration=3";
    syncdiff_devkit::ffmpeg(&[
        "-i",
        tu,
        "-f",
        "lavfi",
        "-i",
        tone,
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        "-metadata:s:v:0",
        "rotate=90",
        ph,
    ]);
    let info = video::probe(&phone).unwrap();
    assert_eq!((info.width, info.height, info.rotation % 180), (w, h, 90));
    let out = d.join("ds");
    let o = crate::common::ingest(
        "videos",
        &root,
        &out,
        &[
            "data.face.detector=dlib-hog",
            "data.face.crop=face",
            "data.face.min_face=60",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = Dataset::open(&out).unwrap();
    let clips = ds.clips();
    let rejected = std::fs::read_to_string(out.join("rejected.jsonl")).unwrap();
    assert_eq!(clips.len(), 1, "{clips:?} {rejected}");
    assert_eq!(clips[0].frames, 75, "{clips:?} {rejected}");
    assert_eq!(clips[0].rotation.map(|r| r % 180), Some(90));
    for t in [0u64, 37, 74] {
        let [x0, y0, x1, y1] = ds.face(0, t).unwrap().unwrap().face_box;
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        // The face centre of the upright video, within a few pixels.
        assert!(
            (cx - 180.0).abs() < 8.0 && (cy - (300.0 + t as f32 * 0.2)).abs() < 8.0,
            "frame {t}: box {:?}",
            [x0, y0, x1, y1]
        );
    }
}
