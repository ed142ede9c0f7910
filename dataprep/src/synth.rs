//! A synthetic data set in LRS2's layout whose content is learnable: procedurally drawn faces whose
//! mouth opening follows the loudness of real speech (espeak-ng), with the true opening of every
//! frame written beside each clip so generated videos can be scored against it.
//!
//! ```text
//! OUT/main/<speaker>/<clip>.mp4         160x160, 25 fps, H.264 + AAC 16 kHz mono
//! OUT/main/<speaker>/<clip>.mouth.txt   one opening in [0, 1] per frame
//! OUT/{train,val,test}.txt              "<speaker>/<clip>" per line (clip 0 of a speaker: test,
//!                                       clip 1: val, the rest: train)
//! ```
//! The whole mouth lies below the middle row at every frame, so masking the lower half of the
//! frame (the default face box) hides it completely.
//!
//! For testing sync experts and data filters, [`synth_with`] can also misalign a share of the
//! clips on purpose ([`SyncFaults`]): the mouth still follows the clip's own speech, but the audio
//! track is shifted by a known number of frames, or is another clip's speech. Each such clip gets
//! `<clip>.sync.txt` beside it: `delay K` (the audio is K frames late; negative: early) or
//! `audio-of SPEAKER/CLIP`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::video::{self, VideoError};
use syncdiff_runtime::rng::Rng;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Speakers (identities).
    pub speakers: u32,
    /// Clips per speaker.
    pub clips_per_speaker: u32,
    /// Seconds per clip.
    pub seconds: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

/// Clips whose audio is misaligned on purpose (none by default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncFaults {
    /// Share of the clips whose audio track is shifted by 1..=`max_delay` frames, late or early.
    pub delayed: f64,
    /// The largest shift, frames.
    pub max_delay: u32,
    /// Share of the clips that carry another clip's speech (of another speaker).
    pub swapped: f64,
}

/// What [`SyncFaults`] did to one clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Audio as spoken.
    None,
    /// Audio `k` frames late (negative: early).
    Delay(i64),
    /// The speech of clip (speaker, clip).
    AudioOf(u32, u32),
}

impl SyncFaults {
    /// Checks the shares and the shift.
    fn check(&self) -> Result<(), SynthError> {
        let share = |v: f64| (0.0..=1.0).contains(&v);
        if !share(self.delayed) || !share(self.swapped) || self.delayed + self.swapped > 1.0 {
            return Err(SynthError::Options(format!(
                "--delayed {} and --swapped {} must be shares in [0, 1] that sum to at most 1",
                self.delayed, self.swapped
            )));
        }
        if self.delayed > 0.0 && self.max_delay == 0 {
            return Err(SynthError::Options(
                "--delayed needs --max-delay of at least 1 frame".into(),
            ));
        }
        Ok(())
    }

    /// The fault of clip `c` of speaker `s` (keyed by the seed: the same on every run).
    fn of(&self, opts: &SynthOptions, s: u32, c: u32) -> Fault {
        let mut r = Rng::new(&[opts.seed, 3, u64::from(s), u64::from(c)]);
        let u = r.uniform();
        if u < self.swapped && opts.speakers > 1 {
            let other = (s + 1 + r.below(u64::from(opts.speakers - 1)) as u32) % opts.speakers;
            return Fault::AudioOf(other, r.below(u64::from(opts.clips_per_speaker)) as u32);
        }
        if u < self.swapped + self.delayed {
            let k = 1 + r.below(u64::from(self.max_delay)) as i64;
            return Fault::Delay(if r.uniform() < 0.5 { -k } else { k });
        }
        Fault::None
    }
}

/// `samples` shifted `frames` video frames later (negative: earlier), silence filling the gap,
/// the length kept.
pub fn shift_audio(samples: &[i16], frames: i64) -> Vec<i16> {
    let per = (RATE / FPS) as i64;
    let n = samples.len() as i64;
    let by = (frames * per).clamp(-n, n);
    (0..n)
        .map(|i| {
            let j = i - by;
            if (0..n).contains(&j) {
                samples[j as usize]
            } else {
                0
            }
        })
        .collect()
}

/// Why synthesis failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// espeak-ng failed or is missing.
    #[error("espeak-ng: {0} (`bash ci/setup.sh` installs it)")]
    Speech(String),
    /// ffmpeg failed.
    #[error(transparent)]
    Video(#[from] VideoError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Reason.
        source: std::io::Error,
    },
    /// Options out of range.
    #[error("{0}")]
    Options(String),
}

/// Frame side, rate and audio rate of LRS2.
pub const SIZE: u32 = 160;
/// Video frame rate.
pub const FPS: u32 = 25;
/// Audio sample rate.
pub const RATE: u32 = 16000;

const SUBJECTS: &[&str] = &[
    "The old captain",
    "My sister",
    "A tired engineer",
    "The small dog",
    "Every student",
    "Our neighbour",
    "The quiet painter",
    "A famous chef",
    "The night guard",
    "Their teacher",
];
const VERBS: &[&str] = &[
    "carefully opened",
    "quickly painted",
    "never forgot",
    "proudly carried",
    "slowly repaired",
    "happily announced",
    "secretly borrowed",
    "loudly praised",
    "gently moved",
    "barely noticed",
];
const OBJECTS: &[&str] = &[
    "the wooden boat",
    "a bright yellow kite",
    "seven purple umbrellas",
    "the broken window",
    "an enormous map of the harbour",
    "the morning news",
    "a bowl of warm soup",
    "the heavy iron gate",
    "two ancient violins",
    "the city bus timetable",
];
const ENDINGS: &[&str] = &[
    "before the storm arrived.",
    "on Tuesday afternoon.",
    "while everybody was sleeping.",
    "in the middle of the market.",
    "without saying a single word.",
    "after a very long winter.",
    "under the old bridge.",
    "at exactly nine o'clock.",
];
const VOICES: &[&str] = &[
    "en", "en+m1", "en+m3", "en+m5", "en+f1", "en+f2", "en+f4", "en-us", "en-us+m2", "en-us+f3",
];

/// Appearance of one speaker.
#[derive(Debug, Clone)]
struct Speaker {
    background: [f32; 3],
    skin: [f32; 3],
    face_rx: f64,
    face_ry: f64,
    eye_dx: f64,
    eye_r: f64,
    iris: [f32; 3],
    mouth_w: f64,
    lips: [f32; 3],
    voice: &'static str,
}

fn colour(rng: &mut Rng, lo: f64, hi: f64) -> [f32; 3] {
    [
        rng.range(lo, hi) as f32,
        rng.range(lo, hi) as f32,
        rng.range(lo, hi) as f32,
    ]
}

impl Speaker {
    fn new(seed: u64, s: u32) -> Self {
        let mut r = Rng::new(&[seed, 1, u64::from(s)]);
        let tone = r.range(0.45, 0.95);
        Self {
            background: colour(&mut r, 0.05, 0.6),
            skin: [
                tone as f32,
                (tone * r.range(0.7, 0.85)) as f32,
                (tone * r.range(0.5, 0.7)) as f32,
            ],
            face_rx: r.range(44.0, 54.0),
            face_ry: r.range(58.0, 66.0),
            eye_dx: r.range(17.0, 23.0),
            eye_r: r.range(6.0, 9.0),
            iris: colour(&mut r, 0.0, 0.5),
            mouth_w: r.range(14.0, 21.0),
            lips: [
                r.range(0.5, 0.8) as f32,
                r.range(0.1, 0.3) as f32,
                r.range(0.15, 0.35) as f32,
            ],
            voice: *r.pick(VOICES),
        }
    }
}

/// Filled ellipse test.
fn inside(x: f64, y: f64, cx: f64, cy: f64, rx: f64, ry: f64) -> bool {
    let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
    dx * dx + dy * dy <= 1.0
}

/// Mouth centre offset below the face centre, and the largest inner half-height.
const MOUTH_DY: f64 = 32.0;
const MOUTH_MAX: f64 = 12.0;

/// Draws one frame (RGB24) with 2x2 supersampling.
fn draw(sp: &Speaker, cx: f64, cy: f64, opening: f64, out: &mut Vec<u8>) {
    let my = cy + MOUTH_DY;
    let inner_h = 1.2 + opening * MOUTH_MAX;
    for y in 0..SIZE {
        for x in 0..SIZE {
            let mut acc = [0.0f32; 3];
            for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let (px, py) = (f64::from(x) + sx, f64::from(y) + sy);
                let c = if inside(px, py, cx, my, sp.mouth_w, inner_h) {
                    [0.08, 0.02, 0.03]
                } else if inside(px, py, cx, my, sp.mouth_w + 3.0, inner_h + 3.0) {
                    sp.lips
                } else if [-1.0, 1.0].iter().any(|s| {
                    inside(
                        px,
                        py,
                        cx + s * sp.eye_dx,
                        cy - 18.0,
                        sp.eye_r * 0.45,
                        sp.eye_r * 0.45,
                    )
                }) {
                    sp.iris
                } else if [-1.0, 1.0].iter().any(|s| {
                    inside(
                        px,
                        py,
                        cx + s * sp.eye_dx,
                        cy - 18.0,
                        sp.eye_r,
                        sp.eye_r * 0.7,
                    )
                }) {
                    [0.95, 0.95, 0.95]
                } else if inside(px, py, cx, cy, sp.face_rx, sp.face_ry) {
                    sp.skin
                } else {
                    sp.background
                };
                for (a, v) in acc.iter_mut().zip(c) {
                    *a += v * 0.25;
                }
            }
            out.extend(
                acc.iter()
                    .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8),
            );
        }
    }
}

/// Speech for a clip: espeak-ng -> ffmpeg -> mono int16 at 16 kHz, exactly `n` samples (leading
/// silence of up to 0.3 s, padded or cut at the end).
fn speech(sp: &Speaker, rng: &mut Rng, n: usize, scratch: &Path) -> Result<Vec<i16>, SynthError> {
    let mut text = String::new();
    for _ in 0..3 {
        text += &format!(
            "{} {} {} {} ",
            rng.pick(SUBJECTS),
            rng.pick(VERBS),
            rng.pick(OBJECTS),
            rng.pick(ENDINGS)
        );
    }
    let speed = (150.0 + rng.range(-20.0, 25.0)) as u32;
    let pitch = rng.range(30.0, 70.0) as u32;
    let out = std::process::Command::new("espeak-ng")
        .args([
            "-v",
            sp.voice,
            "-s",
            &speed.to_string(),
            "-p",
            &pitch.to_string(),
            "-w",
        ])
        .arg(scratch)
        .arg(&text)
        .output()
        .map_err(|e| SynthError::Speech(e.to_string()))?;
    if !out.status.success() {
        return Err(SynthError::Speech(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let voice = video::decode_audio(scratch, RATE)?;
    let _ = std::fs::remove_file(scratch);
    let lead = (rng.range(0.0, 0.3) * f64::from(RATE)) as usize;
    let mut samples = vec![0i16; lead];
    samples.extend(voice);
    samples.resize(n, 0);
    Ok(samples)
}

/// Mouth opening per video frame from the audio loudness: RMS over each 40 ms frame, smoothed,
/// scaled by the clip's 95th percentile, gated below 8% of it, clipped to [0, 1].
pub fn openings(samples: &[i16], frames: usize) -> Vec<f64> {
    let per = (RATE / FPS) as usize;
    let rms: Vec<f64> = (0..frames)
        .map(|k| {
            let s = &samples[(k * per).min(samples.len())..((k + 1) * per).min(samples.len())];
            let e: f64 = s.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            (e / s.len().max(1) as f64).sqrt()
        })
        .collect();
    let smooth: Vec<f64> = (0..frames)
        .map(|k| {
            let a = rms[k.saturating_sub(1)];
            let c = rms[(k + 1).min(frames - 1)];
            0.25 * a + 0.5 * rms[k] + 0.25 * c
        })
        .collect();
    let mut sorted = smooth.clone();
    sorted.sort_by(f64::total_cmp);
    let p95 = sorted[((frames as f64 * 0.95) as usize).min(frames - 1)].max(1.0);
    smooth
        .iter()
        .map(|&v| {
            let x = v / p95;
            if x < 0.08 {
                0.0
            } else {
                x.min(1.0)
            }
        })
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The speech of clip `c` of speaker `s` (espeak-ng writes to `scratch`, a name no other clip
/// uses), and the random generator after it (the clip's other choices follow from it).
fn clip_speech(
    opts: &SynthOptions,
    (s, c): (u32, u32),
    n: usize,
    scratch: &Path,
) -> Result<(Vec<i16>, Rng), SynthError> {
    let sp = Speaker::new(opts.seed, s);
    let mut rng = Rng::new(&[opts.seed, 2, u64::from(s), u64::from(c)]);
    Ok((speech(&sp, &mut rng, n, scratch)?, rng))
}

/// Generates one clip: video, audio (misaligned as `fault` says), true openings.
fn clip(opts: &SynthOptions, s: u32, c: u32, fault: Fault) -> Result<(), SynthError> {
    let sp = Speaker::new(opts.seed, s);
    let frames = (opts.seconds * f64::from(FPS)).round() as usize;
    let n = frames * (RATE / FPS) as usize;
    let dir = opts.out.join("main").join(format!("spk{s:02}"));
    let name = format!("{:05}", c + 1);
    let (samples, mut rng) =
        clip_speech(opts, (s, c), n, &dir.join(format!(".{name}.espeak.wav")))?;
    let open = openings(&samples, frames);
    // Per-clip position and a slow head bob: pose information the previous frame carries.
    let (dx, dy) = (rng.range(-6.0, 6.0), rng.range(-5.0, 4.0));
    let (amp, period, phase) = (
        rng.range(0.5, 2.0),
        rng.range(40.0, 90.0),
        rng.range(0.0, std::f64::consts::TAU),
    );
    let mut rgb = Vec::with_capacity(frames * (SIZE * SIZE * 3) as usize);
    for (k, &o) in open.iter().enumerate() {
        let bob = amp * (std::f64::consts::TAU * k as f64 / period + phase).sin();
        draw(&sp, 80.0 + dx, 76.0 + dy + bob, o, &mut rgb);
    }
    let (track, note) = match fault {
        Fault::None => (samples, None),
        Fault::Delay(k) => (shift_audio(&samples, k), Some(format!("delay {k}\n"))),
        Fault::AudioOf(s2, c2) => {
            let scratch = dir.join(format!(".{name}.borrowed.espeak.wav"));
            let (other, _) = clip_speech(opts, (s2, c2), n, &scratch)?;
            (other, Some(format!("audio-of spk{s2:02}/{:05}\n", c2 + 1)))
        }
    };
    video::encode(
        &dir.join(format!("{name}.mp4")),
        &rgb,
        SIZE,
        SIZE,
        FPS,
        Some((&track, RATE)),
    )?;
    if let Some(note) = note {
        let p = dir.join(format!("{name}.sync.txt"));
        std::fs::write(&p, note).map_err(io(&p))?;
    }
    let text: String = open.iter().map(|o| format!("{o:.4}\n")).collect();
    let truth = dir.join(format!("{name}.mouth.txt"));
    std::fs::write(&truth, text).map_err(io(&truth))
}

/// Writes the data set; clips are generated in parallel (rayon). Returns the number of clips.
pub fn synth(
    opts: &SynthOptions,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<usize, SynthError> {
    synth_with(opts, &SyncFaults::default(), progress)
}

/// [`synth`] with a share of the clips misaligned as `faults` says.
pub fn synth_with(
    opts: &SynthOptions,
    faults: &SyncFaults,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<usize, SynthError> {
    faults.check()?;
    if opts.speakers == 0 || opts.clips_per_speaker == 0 || opts.seconds < 0.5 {
        return Err(SynthError::Options(
            "need at least 1 speaker, 1 clip per speaker and 0.5 s per clip".into(),
        ));
    }
    let jobs: Vec<(u32, u32)> = (0..opts.speakers)
        .flat_map(|s| (0..opts.clips_per_speaker).map(move |c| (s, c)))
        .collect();
    for s in 0..opts.speakers {
        let dir = opts.out.join("main").join(format!("spk{s:02}"));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    jobs.par_iter().try_for_each(|&(s, c)| {
        clip(opts, s, c, faults.of(opts, s, c))?;
        let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(d, jobs.len());
        Ok::<(), SynthError>(())
    })?;
    let mut lists = [String::new(), String::new(), String::new()];
    for &(s, c) in &jobs {
        let split = match (c, opts.clips_per_speaker >= 3) {
            (0, true) => 2,
            (1, true) => 1,
            _ => 0,
        };
        lists[split] += &format!("spk{s:02}/{:05}\n", c + 1);
    }
    for (name, text) in ["train.txt", "val.txt", "test.txt"].iter().zip(&lists) {
        let p = opts.out.join(name);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(jobs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mouth_is_invisible_above_the_mask_line() {
        // The most extreme head positions the generator draws (dy and bob at their limits).
        for seed in 0..20 {
            let sp = Speaker::new(seed, 0);
            for cy in [76.0 - 5.0 - 2.0, 76.0 + 4.0 + 2.0] {
                let (mut closed, mut open) = (Vec::new(), Vec::new());
                draw(&sp, 80.0, cy, 0.0, &mut closed);
                draw(&sp, 80.0, cy, 1.0, &mut open);
                let half = (SIZE * SIZE / 2 * 3) as usize;
                assert_eq!(closed[..half], open[..half], "seed {seed}, cy {cy}");
                assert_ne!(closed[half..], open[half..]);
            }
        }
    }

    #[test]
    fn shifted_audio_moves_by_whole_frames_and_keeps_its_length() {
        let per = (RATE / FPS) as usize;
        let s: Vec<i16> = (0..4 * per).map(|i| (i / per + 1) as i16).collect();
        let late = shift_audio(&s, 1);
        assert_eq!(late.len(), s.len());
        assert!(late[..per].iter().all(|&v| v == 0));
        assert_eq!(late[per..], s[..3 * per]);
        let early = shift_audio(&s, -2);
        assert_eq!(early[..2 * per], s[2 * per..]);
        assert!(early[2 * per..].iter().all(|&v| v == 0));
        assert_eq!(shift_audio(&s, 0), s);
        assert!(shift_audio(&s, 9).iter().all(|&v| v == 0));
    }

    #[test]
    fn faults_take_their_shares_and_stay_in_range() {
        let opts = SynthOptions {
            out: PathBuf::new(),
            speakers: 10,
            clips_per_speaker: 100,
            seconds: 1.0,
            seed: 7,
        };
        let f = SyncFaults {
            delayed: 0.3,
            max_delay: 6,
            swapped: 0.2,
        };
        let (mut delayed, mut swapped) = (0, 0);
        for s in 0..10 {
            for c in 0..100 {
                match f.of(&opts, s, c) {
                    Fault::Delay(k) => {
                        assert!((1..=6).contains(&k.abs()));
                        delayed += 1;
                    }
                    Fault::AudioOf(s2, c2) => {
                        assert!(s2 != s && s2 < 10 && c2 < 100);
                        swapped += 1;
                    }
                    Fault::None => {}
                }
                assert_eq!(f.of(&opts, s, c), f.of(&opts, s, c));
            }
        }
        assert!((250..350).contains(&delayed), "{delayed}");
        assert!((150..250).contains(&swapped), "{swapped}");
        assert_eq!(SyncFaults::default().of(&opts, 3, 3), Fault::None);
        assert!(SyncFaults {
            delayed: 0.7,
            max_delay: 1,
            swapped: 0.4
        }
        .check()
        .is_err());
        assert!(SyncFaults {
            delayed: 0.5,
            max_delay: 0,
            swapped: 0.0
        }
        .check()
        .is_err());
    }

    #[test]
    fn openings_follow_loudness() {
        let per = (RATE / FPS) as usize;
        // Silence, a loud frame, a quiet frame, silence.
        let mut s = vec![0i16; per];
        s.extend((0..per).map(|i| if i % 2 == 0 { 8000 } else { -8000 }));
        s.extend((0..per).map(|i| if i % 2 == 0 { 2000 } else { -2000 }));
        s.extend(vec![0i16; per]);
        let o = openings(&s, 4);
        assert!(o[1] > o[2] && o[2] > 0.0 && o[0] < o[2], "{o:?}");
        assert!(o.iter().all(|&x| (0.0..=1.0).contains(&x)));
    }
}
