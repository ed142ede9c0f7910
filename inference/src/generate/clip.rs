//! One generation job: the list file it comes from, the reference video and driving audio read
//! and checked, the audio features computed and the face followed through the reference
//! (before any frame is generated: a bad file fails in seconds, not after the model ran).

use std::ops::Range;
use std::path::{Path, PathBuf};

use syncdiff_dataprep::face::{FaceFrame, FrontEnd};
use syncdiff_dataprep::video::{self, FrameReader};
use syncdiff_dataset::audio::{mel_group_features, FbankParams, LogFbank};
use syncdiff_dataset::shards::context_window;
use syncdiff_model::config::FaceConfig;
use tch::Tensor;

use super::{GenerateError, Generator};

/// Frame rate of every video the model sees and makes.
pub const FPS: u32 = 25;
/// Audio rate of the filterbank (the output keeps the drive's own track).
pub const RATE: u32 = 16_000;

/// Reference video, driving audio, output path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Reference video: identity (its first frame) and the masked frames.
    pub video: PathBuf,
    /// Driving audio: a wav, an mp4 or anything ffmpeg reads with an audio stream.
    pub audio: PathBuf,
    /// Output mp4.
    pub out: PathBuf,
}

/// Reads a list file: one job per line, `VIDEO AUDIO OUT` separated by whitespace; blank lines
/// and lines starting with `#` are skipped. Relative paths are taken as they are (relative to
/// the working directory).
pub fn read_list(path: &Path) -> Result<Vec<Job>, GenerateError> {
    let text = std::fs::read_to_string(path).map_err(|e| GenerateError::Input {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [v, a, o] = parts[..] else {
            return Err(GenerateError::Input {
                path: path.to_path_buf(),
                message: format!(
                    "line {}: expected `VIDEO AUDIO OUT`, found {} field(s)",
                    i + 1,
                    parts.len()
                ),
            });
        };
        jobs.push(Job {
            video: v.into(),
            audio: a.into(),
            out: o.into(),
        });
    }
    Ok(jobs)
}

/// A job read and looked at, before any frame is generated: the audio features, and where the
/// face is in every reference frame. Nothing here grows with the video's size: frames are read
/// again, one at a time, while generating.
#[derive(Debug)]
pub struct Prepared {
    /// The job.
    pub job: Job,
    /// Output frames (the driving audio's length at 25 fps).
    pub frames: usize,
    /// Size of the reference video as stored (the output's size).
    pub width: u32,
    /// Height of the reference video.
    pub height: u32,
    /// Reference frames at 25 fps (the video ping-pongs when the audio is longer).
    pub available: usize,
    /// Frame rate of the reference video (resampled to 25 fps when it differs).
    pub source_fps: f64,
    /// Output frames without a face, passed through unchanged.
    pub without_face: usize,
    /// Mel-group features of every output frame (frames, MEL_DIM) on the model's device.
    pub(crate) mel: Tensor,
    /// The tracked face of every reference frame; `None`: each whole frame is the face
    /// (`data.face.detector` none or boxes).
    pub(crate) faces: Option<Vec<Option<FaceFrame>>>,
    /// The face settings in use.
    pub(crate) face: FaceConfig,
    /// The model's input side.
    pub(crate) resolution: u32,
    /// `data.mask_fraction` of the model.
    pub(crate) mask_fraction: f64,
}

impl Prepared {
    /// Whether the reference frames are decoded at the model's size (whole-frame mode) rather
    /// than at their own.
    pub(crate) fn whole_frame(&self) -> bool {
        self.faces.is_none()
    }

    /// Whether reference frame `r` is generated (has a face).
    pub(crate) fn has_face(&self, r: usize) -> bool {
        self.faces
            .as_ref()
            .is_none_or(|f| f.get(r).is_some_and(Option::is_some))
    }

    /// The 25 fps resampling of the reference, when it runs at another rate.
    pub(crate) fn resample(&self) -> Option<f64> {
        ((self.source_fps - f64::from(FPS)).abs() > 0.01).then_some(f64::from(FPS))
    }
}

fn input(path: &Path, message: impl Into<String>) -> GenerateError {
    GenerateError::Input {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Which reference frame drives output frame t: forward, then backward, and so on.
pub fn ping_pong(t: usize, available: usize) -> usize {
    if available <= 1 {
        return 0;
    }
    let period = 2 * (available - 1);
    let k = t % period;
    if k < available {
        k
    } else {
        period - k
    }
}

/// Reads and checks a job's files, computes its audio features and, with a dlib detector in
/// `face`, follows the face through the reference video (one decoding pass, frame by frame).
pub fn prepare(g: &Generator, job: &Job, face: &FaceConfig) -> Result<Prepared, GenerateError> {
    for p in [&job.video, &job.audio] {
        if !p.is_file() {
            return Err(input(p, "no such file"));
        }
    }
    let info = video::probe(&job.video)?;
    video::check_pixel_format(&job.video, &info.pix_fmt)?;
    if info.fps <= 0.0 {
        return Err(input(&job.video, "the video states no frame rate"));
    }
    let audio = video::decode_audio(&job.audio, RATE).map_err(|e| match e {
        video::VideoError::Failed { path, message } if message.contains("matches no streams") => {
            input(&path, "no audio stream")
        }
        e => e.into(),
    })?;
    let frames = audio.len() * FPS as usize / RATE as usize;
    if frames == 0 {
        return Err(input(
            &job.audio,
            format!(
                "{:.3} s of audio is shorter than one video frame ({:.2} s)",
                audio.len() as f64 / f64::from(RATE),
                1.0 / f64::from(FPS)
            ),
        ));
    }
    let fb = LogFbank::new(FbankParams::default());
    let samples: Vec<f64> = audio.iter().map(|&v| f64::from(v)).collect();
    let mel = Tensor::from_slice(&mel_group_features(&fb, &samples, frames))
        .view([frames as i64, syncdiff_dataset::shards::MEL_DIM as i64])
        .to_device(g.device);
    let mut p = Prepared {
        job: job.clone(),
        frames,
        width: info.width,
        height: info.height,
        available: 0,
        source_fps: info.fps,
        without_face: 0,
        mel,
        faces: None,
        face: face.clone(),
        resolution: g.resolution(),
        mask_fraction: g.config.data.mask_fraction,
    };
    // With a detector the face is followed through full-size frames; whole frames (at the
    // model's size) are only counted now.
    let fe = if face.detector.is_dlib() {
        Some(FrontEnd::new(face)?)
    } else {
        None
    };
    let size = fe.is_none().then(|| g.resolution());
    let mut reader = FrameReader::open(&job.video, p.width, p.height, p.resample(), size)?;
    let mut tracker = fe
        .as_ref()
        .map(|fe| fe.tracker(p.width, p.height, f64::from(FPS)));
    let mut buf = vec![0u8; reader.frame_len()];
    let mut first = Vec::new();
    while reader.next_frame(&mut buf)? {
        if let Some(t) = tracker.as_mut() {
            t.push(&buf)?;
            if first.is_empty() {
                first = buf.clone();
            }
        }
    }
    p.available = reader.frames_read();
    if let (Some(fe), Some(tracker)) = (&fe, tracker) {
        let faces = tracker.finish();
        if p.available > 0 && faces.with_face() == 0 {
            let why = fe.no_face_message(&first, p.width, p.height, p.available);
            return Err(input(&job.video, why));
        }
        p.faces = Some(faces.frames);
    }
    if p.available == 0 {
        return Err(input(&job.video, "no frames decoded"));
    }
    p.without_face = (0..frames)
        .filter(|&t| !p.has_face(ping_pong(t, p.available)))
        .count();
    Ok(p)
}

/// The cross-attention context of output frames `range`: the audio window around each (as in
/// training: `context_frames` frames centred where the clip allows) through the audio path.
pub(crate) fn audio_context(g: &Generator, p: &Prepared, range: Range<usize>) -> Tensor {
    let max = u64::from(g.config.model.audio_encoder.context_frames);
    let (mels, offsets): (Vec<Tensor>, Vec<i64>) = range
        .map(|t| {
            let (start, len) = context_window(t as u64, p.frames as u64, max);
            (
                p.mel.narrow(0, start as i64, len as i64),
                (t as u64 - start) as i64,
            )
        })
        .unzip();
    tch::no_grad(|| {
        g.model
            .audio()
            .batch_context(&mels, &offsets, false, |_, _| true)
    })
}

/// Checks that `out` can be written (creating its directory), before any work goes into it;
/// returns the file to replace when the video is complete (`out`, or the file its symbolic
/// links lead to: the link is kept) and the name it is written under until then (beside it).
/// A device node, FIFO or socket is refused: it is never replaced by a regular file.
pub fn check_output(out: &Path) -> Result<(PathBuf, PathBuf), GenerateError> {
    if out.is_dir() {
        return Err(input(
            out,
            "is a directory; --out takes the video's file name (e.g. out/clip.mp4)",
        ));
    }
    if out.file_name().and_then(|n| n.to_str()).is_none() {
        return Err(input(out, "--out needs a file name (e.g. out/clip.mp4)"));
    }
    let target =
        syncdiff_dataprep::outpath::prepare_file(out).map_err(|e| input(&e.path, e.message))?;
    let partial = syncdiff_dataprep::outpath::partial_name(&target);
    Ok((target, partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_pong_runs_forward_then_backward() {
        let order: Vec<usize> = (0..9).map(|t| ping_pong(t, 4)).collect();
        assert_eq!(order, [0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(ping_pong(5, 1), 0);
        assert_eq!(ping_pong(3, 10), 3);
    }

    #[test]
    fn list_lines_are_parsed_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("pairs.txt");
        std::fs::write(
            &p,
            "# header\n\na.mp4  b.wav out/a.mp4\nc.mp4 d.mp4 e.mp4\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let jobs = read_list(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].out, PathBuf::from("out/a.mp4"));
        std::fs::write(&p, "a.mp4 b.wav\n").unwrap_or_else(|e| panic!("{e}"));
        let err = read_list(&p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("pairs.txt: line 1: expected `VIDEO AUDIO OUT`, found 2"),
            "{err}"
        );
    }
}
