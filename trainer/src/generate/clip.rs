//! One generation job: the reference video and driving audio read and turned into the model's
//! inputs (latents of every masked reference frame, the identity latent, the audio context of
//! every output frame), and the generated frames written back as an mp4 with the driving audio.

use std::path::{Path, PathBuf};

use syncdiff_dataprep::audio::{mel_group_features, FbankParams, LogFbank};
use syncdiff_dataprep::lrs2::{encode_batches, frames_to_tensors};
use syncdiff_dataprep::store::context_window;
use syncdiff_dataprep::video;
use tch::{Device, Kind, Tensor};

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

/// A job's inputs on the model's device.
#[derive(Debug)]
pub struct Prepared {
    /// The job.
    pub job: Job,
    /// Output frames (the driving audio's length at 25 fps).
    pub frames: usize,
    /// Size of the reference video (the output is resized back to it).
    pub width: u32,
    /// Height of the reference video.
    pub height: u32,
    /// Driving audio, mono 16 kHz (the model's input; the output gets the original track).
    pub audio: Vec<i16>,
    /// Latent of the identity frame (C, h, w).
    pub identity: Tensor,
    /// Latents of the reference frames as they are (N, C, h, w): the pose of frame 0 and the
    /// inpainting reference.
    pub reference: Tensor,
    /// Latents of the masked reference frames (N, C, h, w).
    pub masked: Tensor,
    /// Cross-attention context of every output frame (N, M, D).
    pub context: Tensor,
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

/// Reads and checks a job's files and computes its model inputs.
pub fn prepare(g: &Generator, job: &Job) -> Result<Prepared, GenerateError> {
    let res = g.resolution();
    for p in [&job.video, &job.audio] {
        if !p.is_file() {
            return Err(input(p, "no such file"));
        }
    }
    let info = video::probe(&job.video)?;
    if (info.fps - f64::from(FPS)).abs() > 0.01 {
        return Err(input(
            &job.video,
            format!(
                "{:.3} fps; the model works at {FPS} fps (convert with `ffmpeg -i IN -r {FPS} OUT.mp4`)",
                info.fps
            ),
        ));
    }
    if info.width < res || info.height < res {
        return Err(input(
            &job.video,
            format!(
                "{}x{} is smaller than the model's input {res}x{res}",
                info.width, info.height
            ),
        ));
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
    let av = video::decode_av(&job.video, Some(res), RATE)?;
    let available = av.rgb.len() / (res * res * 3) as usize;
    if available == 0 {
        return Err(input(&job.video, "no frames decoded"));
    }
    let (x, masked) = frames_to_tensors(
        &av.rgb,
        available,
        res,
        g.config.data.mask_fraction,
        g.device,
    );
    // Reference frame of each output frame: the video ping-pongs when shorter than the audio.
    let order: Vec<i64> = (0..frames)
        .map(|t| ping_pong(t, available) as i64)
        .collect();
    let index = Tensor::from_slice(&order).to_device(g.device);
    let encode = |x: &Tensor| encode_batches(&g.autoencoder, x, 16, false).index_select(0, &index);
    let (reference, masked_latents) = (encode(&x), encode(&masked));
    let identity = reference.get(0);
    let context = audio_context(g, &audio, frames);
    Ok(Prepared {
        job: job.clone(),
        frames,
        width: info.width,
        height: info.height,
        audio,
        identity,
        reference,
        masked: masked_latents,
        context,
    })
}

/// The cross-attention context of every output frame: the audio window around it (as in
/// training: `context_frames` frames centred where the clip allows) through the audio path.
fn audio_context(g: &Generator, audio: &[i16], frames: usize) -> Tensor {
    let fb = LogFbank::new(FbankParams::default());
    let samples: Vec<f64> = audio.iter().map(|&v| f64::from(v)).collect();
    let mel = Tensor::from_slice(&mel_group_features(&fb, &samples, frames))
        .view([frames as i64, syncdiff_dataprep::store::MEL_DIM as i64])
        .to_device(g.device);
    let max = u64::from(g.config.model.audio_encoder.context_frames);
    let mut parts = Vec::new();
    for chunk in (0..frames).collect::<Vec<_>>().chunks(32) {
        let (mels, offsets): (Vec<Tensor>, Vec<i64>) = chunk
            .iter()
            .map(|&t| {
                let (start, len) = context_window(t as u64, frames as u64, max);
                (
                    mel.narrow(0, start as i64, len as i64),
                    (t as u64 - start) as i64,
                )
            })
            .unzip();
        parts.push(tch::no_grad(|| {
            g.model
                .audio()
                .batch_context(&mels, &offsets, false, |_, _| true)
        }));
    }
    Tensor::cat(&parts, 0)
}

/// Writes generated frames (N, 3, S, S) in [-1, 1] as the job's mp4: resized to the reference
/// video's size, muxed with the driving audio. Written under a temporary name and renamed, so an
/// interrupted run never leaves a file that looks finished.
pub fn write(p: &Prepared, frames: &Tensor) -> Result<(), GenerateError> {
    let (w, h) = (i64::from(p.width), i64::from(p.height));
    let rgb = tch::no_grad(|| {
        let x = frames.to_device(Device::Cpu).to_kind(Kind::Float);
        let x = if x.size()[2..] == [h, w] {
            x
        } else {
            x.upsample_bilinear2d([h, w], false, None, None)
        };
        ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)
            .round()
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous()
    });
    let bytes =
        Vec::<u8>::try_from(rgb.flatten(0, -1)).map_err(|e| GenerateError::Model(e.to_string()))?;
    let partial = check_output(&p.job.out)?;
    // The drive's own sound track (its rate and channels), not the model's 16 kHz mono copy.
    video::encode_with(
        &partial,
        &bytes,
        p.width,
        p.height,
        FPS,
        Some(video::AudioSource::File(&p.job.audio)),
    )?;
    std::fs::rename(&partial, &p.job.out).map_err(|e| input(&p.job.out, e.to_string()))
}

/// Checks that `out` can be written (creating its directory), before any work goes into it;
/// returns the name the video is written under until it is complete.
pub fn check_output(out: &Path) -> Result<PathBuf, GenerateError> {
    if out.is_dir() {
        return Err(input(
            out,
            "is a directory; --out takes the video's file name (e.g. out/clip.mp4)",
        ));
    }
    let Some(name) = out.file_name().and_then(|n| n.to_str()) else {
        return Err(input(out, "--out needs a file name (e.g. out/clip.mp4)"));
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| input(dir, format!("cannot create: {e}")))?;
    }
    let partial = out.with_file_name(format!(".partial.{name}"));
    std::fs::File::create(&partial)
        .and_then(|_| std::fs::remove_file(&partial))
        .map_err(|e| input(out, format!("cannot write here: {e}")))?;
    Ok(partial)
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
