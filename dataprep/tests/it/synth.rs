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

/// Pearson correlation of `a[t]` with `b[t - lag]` over the frames both have.
fn corr_at(a: &[f64], b: &[f64], lag: i64) -> f64 {
    let pairs: Vec<(f64, f64)> = (0..a.len() as i64)
        .filter(|t| (0..b.len() as i64).contains(&(t - lag)))
        .map(|t| (a[t as usize], b[(t - lag) as usize]))
        .collect();
    let n = pairs.len() as f64;
    let (ma, mb) = pairs
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in &pairs {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt().max(1e-12)
}

#[test]
fn misaligned_clips_carry_the_delay_or_the_speech_their_note_says() {
    use syncdiff_dataprep::synth::{openings, synth_with, SyncFaults};
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        out: dir.path().to_path_buf(),
        speakers: 3,
        clips_per_speaker: 3,
        seconds: 3.0,
        seed: 11,
    };
    let faults = SyncFaults {
        delayed: 0.45,
        max_delay: 5,
        swapped: 0.25,
    };
    assert_eq!(synth_with(&opts, &faults, |_, _| {}).unwrap(), 9);
    let (mut aligned, mut delayed, mut swapped) = (0, 0, 0);
    for s in 0..3 {
        for c in 1..=3 {
            let base = dir.path().join(format!("main/spk{s:02}/{c:05}"));
            let truth: Vec<f64> = std::fs::read_to_string(base.with_extension("mouth.txt"))
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            // The opening the clip's own audio track implies, frame by frame.
            let audio = video::decode_audio(&base.with_extension("mp4"), 16000).unwrap();
            let heard = openings(&audio, truth.len());
            let (best, lag) = (-6..=6)
                .map(|lag| (corr_at(&heard, &truth, lag), lag))
                .fold((f64::MIN, 0), |m, x| if x.0 > m.0 { x } else { m });
            let note = std::fs::read_to_string(base.with_extension("sync.txt")).ok();
            match note.as_deref().map(str::trim) {
                None => {
                    assert_eq!(
                        lag,
                        0,
                        "{}: aligned, best lag {lag} ({best:.3})",
                        base.display()
                    );
                    assert!(best > 0.9, "{}: {best:.3}", base.display());
                    aligned += 1;
                }
                Some(n) if n.starts_with("delay ") => {
                    let k: i64 = n["delay ".len()..].parse().unwrap();
                    assert!((1..=5).contains(&k.abs()), "{n}");
                    assert_eq!(
                        lag,
                        k,
                        "{}: {n}, best lag {lag} ({best:.3})",
                        base.display()
                    );
                    assert!(best > 0.9, "{}: {best:.3}", base.display());
                    delayed += 1;
                }
                Some(n) => {
                    let other = n.strip_prefix("audio-of ").unwrap();
                    assert!(!other.starts_with(&format!("spk{s:02}/")), "{n}");
                    let theirs: Vec<f64> =
                        std::fs::read_to_string(dir.path().join(format!("main/{other}.mouth.txt")))
                            .unwrap()
                            .lines()
                            .map(|l| l.parse().unwrap())
                            .collect();
                    // The track is the other clip's speech: it matches that clip's mouth, not
                    // this one's.
                    assert!(corr_at(&heard, &theirs, 0) > 0.9, "{}: {n}", base.display());
                    assert!(best < 0.6, "{}: {n}, own mouth {best:.3}", base.display());
                    swapped += 1;
                }
            }
        }
    }
    assert!(
        aligned > 0 && delayed > 0 && swapped > 0,
        "{aligned} {delayed} {swapped}"
    );
}
