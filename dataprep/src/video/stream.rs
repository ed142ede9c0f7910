//! Frames streamed through one ffmpeg process at a time, so that memory does not grow with a
//! video's length: [`FrameReader`] decodes a video frame by frame, [`FrameWriter`] encodes
//! frames to an mp4 as they are made.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use super::{failed, path_str, rgb_frames_args, tempfile_for, AudioSource, VideoError};

/// Starts a tool with piped stdio; its stderr is collected on a thread (a full pipe would block
/// it).
pub(super) fn spawn(
    tool: &'static str,
    args: &[String],
    stdin: bool,
) -> Result<(Child, JoinHandle<String>), VideoError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(if stdin { Stdio::null() } else { Stdio::piped() })
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| VideoError::Tool {
            tool,
            message: e.to_string(),
        })?;
    let mut err = child.stderr.take();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    Ok((child, log))
}

/// Starts ffmpeg writing to its stdout: the process, its output pipe, its log collector.
pub(super) fn spawn_reader(
    args: &[String],
) -> Result<(Child, ChildStdout, JoinHandle<String>), VideoError> {
    let (mut child, log) = spawn("ffmpeg", args, false)?;
    let stdout = child.stdout.take().ok_or_else(|| VideoError::Tool {
        tool: "ffmpeg",
        message: "no output pipe".into(),
    })?;
    Ok((child, stdout, log))
}

/// Waits for a tool; a failure carries the first line of its log.
fn wait(
    tool: &'static str,
    child: &mut Child,
    log: JoinHandle<String>,
    path: &Path,
) -> Result<(), VideoError> {
    let status = child.wait().map_err(|e| VideoError::Tool {
        tool,
        message: e.to_string(),
    })?;
    let log = log.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let line = log
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed without a message");
    Err(failed(path, format!("{tool}: {}", line.trim())))
}

/// Reads from a decoder's pipe until `buf` is full or the pipe ends: the bytes read.
pub(super) fn read_frame(
    pipe: &mut ChildStdout,
    buf: &mut [u8],
    path: &Path,
) -> Result<usize, VideoError> {
    let mut got = 0;
    while got < buf.len() {
        match pipe.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(path, format!("reading frames: {e}"))),
        }
    }
    Ok(got)
}

/// Decodes a video's frames one at a time as RGB24 as they are displayed (a display rotation
/// applied), resampled to `fps` and scaled to a square `size` when asked.
#[derive(Debug)]
pub struct FrameReader {
    path: PathBuf,
    child: Child,
    stdout: ChildStdout,
    log: Option<JoinHandle<String>>,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    read: usize,
}

impl FrameReader {
    /// Starts decoding `path`, whose displayed size is `width` x `height` (from
    /// [`super::probe`]: rotation applied).
    pub fn open(
        path: &Path,
        width: u32,
        height: u32,
        fps: Option<f64>,
        size: Option<u32>,
    ) -> Result<Self, VideoError> {
        let p = path_str(path)?;
        let mut args: Vec<String> = ["-v", "error", "-nostdin", "-i", p]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(rgb_frames_args(fps, size.map(|s| (s, s))));
        let (child, stdout, log) = spawn_reader(&args)?;
        let (width, height) = size.map_or((width, height), |s| (s, s));
        Ok(Self {
            path: path.to_path_buf(),
            child,
            stdout,
            log: Some(log),
            width,
            height,
            read: 0,
        })
    }

    /// Bytes of one frame.
    pub fn frame_len(&self) -> usize {
        (self.width * self.height * 3) as usize
    }

    /// Frames read so far.
    pub fn frames_read(&self) -> usize {
        self.read
    }

    /// Reads the next frame into `buf` (`frame_len()` bytes); `Ok(false)` at the end of the
    /// video, after which ffmpeg's exit status has been checked.
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Result<bool, VideoError> {
        let got = read_frame(&mut self.stdout, buf, &self.path)?;
        if got == buf.len() && got > 0 {
            self.read += 1;
            return Ok(true);
        }
        if let Some(log) = self.log.take() {
            wait("ffmpeg", &mut self.child, log, &self.path)?;
        }
        if got > 0 {
            return Err(failed(
                &self.path,
                format!("frame {}: {got} of {} bytes decoded", self.read, buf.len()),
            ));
        }
        Ok(false)
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        if self.log.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Encodes RGB24 frames to an H.264 mp4 as they are pushed, muxed with a sound track. An odd
/// width or height is padded by one black column or row (H.264 4:2:0 needs even sizes). The
/// file is complete only after [`FrameWriter::finish`]; a writer dropped before that kills
/// ffmpeg and removes what it wrote.
#[derive(Debug)]
pub struct FrameWriter {
    path: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    log: Option<JoinHandle<String>>,
    frame_len: usize,
    scratch: Option<PathBuf>,
    written: usize,
}

impl FrameWriter {
    /// Starts ffmpeg writing `path`.
    pub fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: u32,
        audio: Option<AudioSource<'_>>,
    ) -> Result<Self, VideoError> {
        let p = path_str(path)?;
        let size = format!("{width}x{height}");
        let rate = fps.to_string();
        let mut args: Vec<String> = [
            "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &size, "-r", &rate,
            "-i", "-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut scratch = None;
        match audio {
            Some(AudioSource::Samples(samples, sr)) => {
                let tmp = tempfile_for(path);
                let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                std::fs::write(&tmp, bytes).map_err(|e| failed(&tmp, e.to_string()))?;
                args.extend(owned(&["-f", "s16le", "-ar", &sr.to_string(), "-ac", "1"]));
                args.extend(owned(&[
                    "-i",
                    path_str(&tmp)?,
                    "-map",
                    "0:v:0",
                    "-map",
                    "1:a:0",
                ]));
                args.extend(owned(&["-c:a", "aac", "-b:a", "96k"]));
                scratch = Some(tmp);
            }
            Some(AudioSource::File(src)) => {
                args.extend(owned(&[
                    "-i",
                    path_str(src)?,
                    "-map",
                    "0:v:0",
                    "-map",
                    "1:a:0",
                ]));
                args.extend(owned(&["-c:a", "aac", "-b:a", "192k"]));
            }
            None => {}
        }
        if width % 2 == 1 || height % 2 == 1 {
            args.extend(owned(&["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]));
        }
        args.extend(owned(&[
            "-c:v",
            "libx264",
            "-preset",
            "fast",
            "-crf",
            "12",
            "-pix_fmt",
            "yuv420p",
            "-shortest",
            "-f",
            "mp4",
            p,
        ]));
        let started = spawn("ffmpeg", &args, true);
        let (mut child, log) = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(t) = &scratch {
                    let _ = std::fs::remove_file(t);
                }
                return Err(e);
            }
        };
        let stdin = child.stdin.take();
        Ok(Self {
            path: path.to_path_buf(),
            child,
            stdin,
            log: Some(log),
            frame_len: (width * height * 3) as usize,
            scratch,
            written: 0,
        })
    }

    /// Frames pushed so far.
    pub fn frames_written(&self) -> usize {
        self.written
    }

    /// Encodes one frame (`width * height * 3` bytes).
    pub fn push(&mut self, rgb: &[u8]) -> Result<(), VideoError> {
        if rgb.len() != self.frame_len {
            return Err(failed(
                &self.path,
                format!(
                    "frame {}: {} bytes, not {}",
                    self.written,
                    rgb.len(),
                    self.frame_len
                ),
            ));
        }
        let Some(pipe) = self.stdin.as_mut() else {
            return Err(failed(&self.path, "the encoder is closed"));
        };
        if let Err(e) = pipe.write_all(rgb) {
            // ffmpeg stopped: its own message says why.
            self.stdin = None;
            if let Some(log) = self.log.take() {
                wait("ffmpeg", &mut self.child, log, &self.path)?;
            }
            return Err(failed(&self.path, format!("writing frames: {e}")));
        }
        self.written += 1;
        Ok(())
    }

    /// Closes the input and waits for ffmpeg to finish the file.
    pub fn finish(mut self) -> Result<(), VideoError> {
        self.stdin = None;
        let result = match self.log.take() {
            Some(log) => wait("ffmpeg", &mut self.child, log, &self.path),
            None => Err(failed(&self.path, "the encoder stopped early")),
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        result
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        if let Some(t) = &self.scratch {
            let _ = std::fs::remove_file(t);
        }
        if self.log.is_some() {
            // Dropped unfinished: the file is not a video anyone should use.
            self.stdin = None;
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pattern(frames: usize, w: u32, h: u32) -> Vec<u8> {
        (0..frames * (w * h * 3) as usize)
            .map(|i| ((i / 3 % 97) * 2 + i / (w * h * 3) as usize * 20) as u8)
            .collect()
    }

    #[test]
    fn frames_streamed_in_come_back_out_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mp4");
        let (w, h) = (48, 31);
        let rgb = pattern(7, w, h);
        let mut wr = FrameWriter::create(&path, w, h, 25, None).unwrap();
        for f in rgb.chunks(w as usize * h as usize * 3) {
            wr.push(f).unwrap();
        }
        assert_eq!(wr.frames_written(), 7);
        wr.finish().unwrap();
        // Odd height: padded to 32.
        let info = super::super::probe(&path).unwrap();
        assert_eq!((info.width, info.height), (48, 32));
        let mut rd = FrameReader::open(&path, info.width, info.height, None, None).unwrap();
        let mut buf = vec![0u8; rd.frame_len()];
        let mut n = 0;
        while rd.next_frame(&mut buf).unwrap() {
            n += 1;
        }
        assert_eq!(n, 7);
        // Resampled to 50 fps: twice as many frames.
        let mut rd = FrameReader::open(&path, w, 32, Some(50.0), Some(16)).unwrap();
        let mut buf = vec![0u8; rd.frame_len()];
        while rd.next_frame(&mut buf).unwrap() {}
        assert_eq!(rd.frames_read(), 14);
    }

    #[test]
    fn a_writer_dropped_unfinished_leaves_no_file_and_bad_frames_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mp4");
        let mut wr = FrameWriter::create(&path, 16, 16, 25, None).unwrap();
        let err = wr.push(&[0u8; 10]).unwrap_err().to_string();
        assert!(err.contains("frame 0: 10 bytes, not 768"), "{err}");
        wr.push(&[0u8; 768]).unwrap();
        drop(wr);
        assert!(!path.exists());
        let garbage = dir.path().join("g.mp4");
        std::fs::write(&garbage, b"not a video").unwrap();
        let mut rd = FrameReader::open(&garbage, 16, 16, None, None).unwrap();
        let err = rd.next_frame(&mut [0u8; 768]).unwrap_err().to_string();
        assert!(err.contains("g.mp4: ffmpeg:"), "{err}");
    }
}
