//! One decoding pass streamed: frames come out of ffmpeg's pipe one at a time while the audio
//! goes to a scratch file, so a recording of any length is decoded in flat memory; at the end the
//! pass's log is read as [`super::decode_av_at`] reads it (damage, duration, pixel format).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
use std::thread::JoinHandle;

use super::stream::{read_frame, spawn_reader};
use super::{av_args, failed, path_str, tempfile_for, AvLog, VideoError};

/// A decoding pass in progress: [`AvStream::next_frame`] until it says the end, then
/// [`AvStream::finish`].
#[derive(Debug)]
pub struct AvStream {
    path: PathBuf,
    child: Child,
    stdout: ChildStdout,
    log: Option<JoinHandle<String>>,
    audio: PathBuf,
    fps: Option<f64>,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    frames: usize,
}

/// What a finished pass gives besides its frames.
#[derive(Debug)]
pub struct AvEnd {
    /// Frames read.
    pub frames: usize,
    /// The frames' rate (the source's, or the rate they were resampled to).
    pub fps: f64,
    /// Whether the source has an audio stream.
    pub has_audio: bool,
    /// The decoded audio (mono int16 at the requested rate; empty without an audio stream).
    pub audio: AudioFile,
    /// The container's duration in seconds, when it states one.
    pub duration_s: Option<f64>,
    /// Messages ffmpeg logged at error level (a damaged stream), first first.
    pub errors: Vec<String>,
    /// The source's pixel format as ffmpeg names it (empty when it did not say).
    pub pix_fmt: String,
    /// The source's display rotation (0, 90, 180, 270), already applied to the frames.
    pub rotation: u32,
}

impl AvStream {
    /// Starts decoding `path`, whose displayed size is `width` x `height` (from
    /// [`super::probe`]), frames resampled to `fps` and scaled to a square `size` when given,
    /// audio at `rate` Hz.
    pub fn open(
        path: &Path,
        width: u32,
        height: u32,
        size: Option<u32>,
        rate: u32,
        fps: Option<f64>,
    ) -> Result<Self, VideoError> {
        let p = path_str(path)?;
        let audio = tempfile_for(path).with_extension("a.s16");
        let audio_out = audio
            .to_str()
            .ok_or_else(|| failed(&audio, "path is not valid UTF-8"))?
            .to_string();
        let (child, stdout, log) = spawn_reader(&av_args(p, size, rate, fps, &audio_out))?;
        let (width, height) = size.map_or((width, height), |s| (s, s));
        Ok(Self {
            path: path.to_path_buf(),
            child,
            stdout,
            log: Some(log),
            audio,
            fps,
            width,
            height,
            frames: 0,
        })
    }

    /// Bytes of one frame.
    pub fn frame_len(&self) -> usize {
        (self.width * self.height * 3) as usize
    }

    /// Reads the next frame into `buf` (`frame_len()` bytes); `Ok(false)` at the end of the
    /// frames (then [`AvStream::finish`]).
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Result<bool, VideoError> {
        let got = read_frame(&mut self.stdout, buf, &self.path)?;
        if got == buf.len() && got > 0 {
            self.frames += 1;
            return Ok(true);
        }
        if got > 0 {
            return Err(failed(
                &self.path,
                format!(
                    "decoded {got} bytes after frame {}, not a whole {}x{} frame",
                    self.frames, self.width, self.height
                ),
            ));
        }
        Ok(false)
    }

    /// Waits for ffmpeg and reads its log: the pass's facts, or why it failed.
    pub fn finish(mut self) -> Result<AvEnd, VideoError> {
        // Whatever is left unread (a caller that stopped early) would block ffmpeg.
        let _ = std::io::copy(&mut self.stdout, &mut std::io::sink());
        let status = self.child.wait().map_err(|e| VideoError::Tool {
            tool: "ffmpeg",
            message: e.to_string(),
        })?;
        let raw = self
            .log
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let log = AvLog::parse(&raw);
        let path = self.path.clone();
        let audio = std::mem::take(&mut self.audio);
        // The scratch file goes with the `AudioFile` from here on (or now, on an error).
        let audio = AudioFile::open(audio, log.has_audio, &path);
        if !status.success() && (log.video.is_none() || log.has_audio) {
            // (Without an audio stream the second output is empty, which ffmpeg treats as an
            // error: the caller sees `has_audio: false`.)
            return Err(log.failure(&path));
        }
        let audio = audio?;
        let (source_fps, w, h) = log.video.ok_or_else(|| failed(&path, "no video stream"))?;
        if self.fps.is_none() && self.frames > 0 && (w, h) != (self.width, self.height) {
            return Err(failed(
                &path,
                format!(
                    "frames are {w}x{h} as ffmpeg decoded them, {}x{} as probed",
                    self.width, self.height
                ),
            ));
        }
        Ok(AvEnd {
            frames: self.frames,
            fps: self.fps.unwrap_or(source_fps),
            has_audio: log.has_audio,
            audio,
            duration_s: log.duration_s,
            errors: log.errors,
            pix_fmt: log.pix_fmt,
            rotation: log.rotation,
        })
    }
}

impl Drop for AvStream {
    fn drop(&mut self) {
        if self.log.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !self.audio.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.audio);
        }
    }
}

/// Decoded audio in a scratch file (removed when dropped), read a range at a time.
#[derive(Debug)]
pub struct AudioFile {
    path: PathBuf,
    file: Option<File>,
    samples: usize,
}

impl AudioFile {
    fn open(path: PathBuf, expected: bool, source: &Path) -> Result<Self, VideoError> {
        match File::open(&path) {
            Ok(file) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                Ok(Self {
                    path,
                    file: Some(file),
                    samples: (len / 2) as usize,
                })
            }
            Err(e) if expected => {
                let _ = std::fs::remove_file(&path);
                Err(failed(source, format!("reading the decoded audio: {e}")))
            }
            Err(_) => Ok(Self {
                path,
                file: None,
                samples: 0,
            }),
        }
    }

    /// Samples in the file.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Samples `range` (clipped to the file) as f64.
    pub fn read(&mut self, range: Range<usize>) -> Result<Vec<f64>, VideoError> {
        let (a, b) = (range.start.min(self.samples), range.end.min(self.samples));
        let Some(f) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        let mut bytes = vec![0u8; (b - a) * 2];
        f.seek(SeekFrom::Start(a as u64 * 2))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| failed(&self.path, format!("reading decoded audio: {e}")))?;
        Ok(bytes
            .chunks_exact(2)
            .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])))
            .collect())
    }
}

impl Drop for AudioFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
