//! The synthetic data set: LRS2 layout, playable mp4 with 16 kHz audio, true openings per frame.
#![allow(clippy::unwrap_used)]

use syncdiff_dataprep::synth::{synth, SynthOptions, FPS, SIZE};
use syncdiff_dataprep::video;

#[test]
fn synth_writes_an_lrs2_layout_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        out: dir.path().to_path_buf(),
        speakers: 2,
        clips_per_speaker: 3,
        seconds: 1.2,
        seed: 7,
    };
    assert_eq!(synth(&opts, |_, _| {}).unwrap(), 6);
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
    assert_eq!(read("test.txt"), "spk00/00001\nspk01/00001\n");
    assert_eq!(read("val.txt"), "spk00/00002\nspk01/00002\n");
    assert_eq!(read("train.txt"), "spk00/00003\nspk01/00003\n");
    let clip = dir.path().join("main/spk01/00003.mp4");
    let info = video::probe(&clip).unwrap();
    assert_eq!(
        (info.width, info.height, info.fps),
        (SIZE, SIZE, f64::from(FPS))
    );
    assert!(
        info.has_audio && (info.audio_seconds - 1.2).abs() < 0.1,
        "{info:?}"
    );
    let frames = video::decode_frames(&clip, SIZE, SIZE).unwrap();
    assert_eq!(frames.len(), 30 * (SIZE * SIZE * 3) as usize);
    let audio = video::decode_audio(&clip, 16000).unwrap();
    assert!((audio.len() as f64 / 16000.0 - 1.2).abs() < 0.1);
    let open: Vec<f64> = read("main/spk01/00003.mouth.txt")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(open.len(), 30);
    assert!(
        open.iter().any(|&o| o > 0.3),
        "the mouth never opens: {open:?}"
    );
    // Same seed, same data set.
    let again = tempfile::tempdir().unwrap();
    let opts2 = SynthOptions {
        out: again.path().to_path_buf(),
        ..opts
    };
    synth(&opts2, |_, _| {}).unwrap();
    assert_eq!(
        std::fs::read_to_string(again.path().join("main/spk01/00003.mouth.txt")).unwrap(),
        read("main/spk01/00003.mouth.txt")
    );
}
