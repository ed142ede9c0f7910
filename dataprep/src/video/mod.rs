//! Video and audio I/O through ffmpeg/ffprobe processes: probe, decode RGB frames at the source
//! rate, decode audio resampled to mono 16 kHz int16, encode frames (+ audio) to mp4.

mod av_stream;
mod stream;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use av_stream::{AudioFile, AvEnd, AvStream};
pub use stream::{FrameReader, FrameWriter};

/// Why a video could not be read or written. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// ffmpeg or ffprobe could not be started.
    #[error("cannot run {tool}: {message} (is ffmpeg installed? `bash ci/setup.sh` installs it)")]
    Tool {
        /// Program.
        tool: &'static str,
        /// Reason.
        message: String,
    },
    /// ffmpeg/ffprobe failed on the file.
    #[error("{path}: {message}")]
    Failed {
        /// File.
        path: PathBuf,
        /// First line of the tool's error output, or what is wrong.
        message: String,
    },
}

/// What ffprobe says about a file.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Frame width as displayed (after the display rotation: what every decoder here returns).
    pub width: u32,
    /// Frame height as displayed.
    pub height: u32,
    /// The display rotation the file asks for (0, 90, 180 or 270 degrees, ffmpeg's sign: a
    /// phone's portrait video stored as landscape frames says 90 or 270). Decoders apply it.
    pub rotation: u32,
    /// Frames per second of the video stream.
    pub fps: f64,
    /// Whether there is an audio stream.
    pub has_audio: bool,
    /// Duration of the audio stream in seconds (0 without audio).
    pub audio_seconds: f64,
    /// ffmpeg's name of the video stream's pixel format (`yuv420p`, `gray`, `yuv420p10le`).
    pub pix_fmt: String,
}

/// Bits per sample of an ffmpeg pixel format name (8 unless the name says more).
fn bit_depth(pix_fmt: &str) -> u32 {
    let f = pix_fmt.trim_end_matches("le").trim_end_matches("be");
    if let Some(i) = f.rfind('p') {
        let tail = &f[i + 1..];
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            return tail.parse().unwrap_or(8);
        }
    }
    if ["rgb48", "bgr48", "rgba64", "bgra64"]
        .iter()
        .any(|n| f.starts_with(n))
    {
        return 16;
    }
    8
}

/// Refuses the videos the pipeline would silently change: grayscale (the model sees colour),
/// and more than 8 bits per sample (frames are decoded to 8-bit RGB).
pub fn check_pixel_format(path: &Path, pix_fmt: &str) -> Result<(), VideoError> {
    if pix_fmt.is_empty() {
        return Err(failed(
            path,
            "ffmpeg did not name the video's pixel format, so it cannot be checked for \
             grayscale or more than 8 bits: not a readable video",
        ));
    }
    let grey = ["gray", "ya8", "ya16", "monow", "monob"]
        .iter()
        .any(|g| pix_fmt.starts_with(g));
    if grey {
        return Err(failed(
            path,
            format!("grayscale video (pixel format {pix_fmt}); the model needs colour frames"),
        ));
    }
    let bits = bit_depth(pix_fmt);
    if bits > 8 {
        return Err(failed(
            path,
            format!(
                "{bits}-bit video (pixel format {pix_fmt}); convert it to 8 bits first: \
                 ffmpeg -i IN -pix_fmt yuv420p OUT.mp4"
            ),
        ));
    }
    Ok(())
}

fn failed(path: &Path, message: impl Into<String>) -> VideoError {
    VideoError::Failed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Runs a tool, returning stdout; a failure carries the first line of stderr.
fn run(
    tool: &'static str,
    args: &[&str],
    path: &Path,
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>, VideoError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| VideoError::Tool {
            tool,
            message: e.to_string(),
        })?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || pipe.write_all(&data)))
        }
        _ => None,
    };
    let out = child.wait_with_output().map_err(|e| VideoError::Tool {
        tool,
        message: e.to_string(),
    })?;
    if let Some(w) = writer {
        // A broken pipe here means ffmpeg stopped early; its own error below says why.
        let _ = w.join();
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed without a message");
        // ffprobe failing means the file is not a video it can read (a text file, a truncated
        // download): say so in words, then ffprobe's own detail.
        let message = match tool {
            "ffprobe" => format!("not a readable video file (ffprobe: {})", line.trim()),
            _ => format!("{tool}: {}", line.trim()),
        };
        return Err(failed(path, message));
    }
    Ok(out.stdout)
}

/// The ffmpeg output arguments that write the first video stream to stdout as raw RGB24 frames,
/// resampled to `fps` (the `fps` filter) and scaled to `size` (area filter) when given.
fn rgb_frames_args(fps: Option<f64>, size: Option<(u32, u32)>) -> Vec<String> {
    let mut args = vec!["-map".to_string(), "0:v:0".to_string()];
    let mut filters = Vec::new();
    if let Some(f) = fps {
        filters.push(format!("fps={f}"));
    }
    if let Some((w, h)) = size {
        filters.push(format!("scale={w}:{h}:flags=area"));
    }
    if !filters.is_empty() {
        args.extend(["-vf".to_string(), filters.join(",")]);
    }
    let raw = [
        "-vsync",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ];
    args.extend(raw.iter().map(|s| s.to_string()));
    args
}

fn path_str(path: &Path) -> Result<&str, VideoError> {
    path.to_str()
        .ok_or_else(|| failed(path, "path is not valid UTF-8"))
}

/// Probes the first video stream (and whether an audio stream exists).
pub fn probe(path: &Path) -> Result<VideoInfo, VideoError> {
    let p = path_str(path)?;
    let out = run(
        "ffprobe",
        &["-v", "error", "-show_streams", "-of", "json", p],
        path,
        None,
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| failed(path, format!("ffprobe output: {e}")))?;
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .ok_or_else(|| failed(path, "no video stream"))?;
    let rate = video["avg_frame_rate"]
        .as_str()
        .or(video["r_frame_rate"].as_str())
        .unwrap_or("0/1");
    let fps = match rate.split_once('/') {
        Some((n, d)) => n.parse::<f64>().unwrap_or(0.0) / d.parse::<f64>().unwrap_or(1.0).max(1e-9),
        None => rate.parse().unwrap_or(0.0),
    };
    let rotation = stream_rotation(video);
    let (coded_w, coded_h) = (
        video["width"].as_u64().unwrap_or(0) as u32,
        video["height"].as_u64().unwrap_or(0) as u32,
    );
    let (width, height) = if rotation % 180 == 90 {
        (coded_h, coded_w)
    } else {
        (coded_w, coded_h)
    };
    let audio = streams.iter().find(|s| s["codec_type"] == "audio");
    let seconds = |s: &serde_json::Value| {
        s["duration"]
            .as_str()
            .and_then(|d| d.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(VideoInfo {
        width,
        height,
        rotation,
        fps,
        has_audio: audio.is_some(),
        audio_seconds: audio.map(seconds).unwrap_or(0.0),
        pix_fmt: video["pix_fmt"].as_str().unwrap_or("").to_string(),
    })
}

/// A rotation in degrees as 0, 90, 180 or 270 (the nearest; ffmpeg's counter-clockwise sign).
fn quarter_turns(deg: f64) -> u32 {
    ((deg / 90.0).round() as i64).rem_euclid(4) as u32 * 90
}

/// The display rotation of an ffprobe stream: its display matrix, else a `rotate` tag.
fn stream_rotation(stream: &serde_json::Value) -> u32 {
    let from_matrix = stream["side_data_list"].as_array().and_then(|list| {
        list.iter()
            .find(|d| d["side_data_type"] == "Display Matrix")
            .and_then(|d| d["rotation"].as_f64())
    });
    let from_tag = || {
        stream["tags"]["rotate"]
            .as_str()
            .and_then(|r| r.parse::<f64>().ok())
    };
    from_matrix.or_else(from_tag).map_or(0, quarter_turns)
}

/// The display rotation ffmpeg logs for its first input's video stream
/// (`displaymatrix: rotation of -90.00 degrees`), 0 without one.
fn parse_rotation(stderr: &str) -> u32 {
    let input = stderr.split("Stream mapping:").next().unwrap_or("");
    input
        .split("displaymatrix: rotation of ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|d| d.parse::<f64>().ok())
        .map_or(0, quarter_turns)
}

/// Decodes every frame at the source rate as RGB24, scaled to `width` x `height` (area filter).
/// Returns the frames back to back (frames x height x width x 3 bytes).
pub fn decode_frames(path: &Path, width: u32, height: u32) -> Result<Vec<u8>, VideoError> {
    decode_frames_upto(path, width, height, None)
}

/// [`decode_frames`] of at most the first `seconds`.
pub fn decode_frames_upto(
    path: &Path,
    width: u32,
    height: u32,
    seconds: Option<f64>,
) -> Result<Vec<u8>, VideoError> {
    let p = path_str(path)?;
    let limit = seconds.map(|s| format!("{s:.3}"));
    // Frames as displayed: ffmpeg applies a display rotation (phone videos) before the scale.
    let mut args: Vec<String> = ["-v", "error", "-nostdin"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(l) = limit {
        args.extend(["-t".to_string(), l]);
    }
    args.extend(["-i".to_string(), p.to_string()]);
    args.extend(rgb_frames_args(None, Some((width, height))));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("ffmpeg", &refs, path, None)?;
    let frame = (width * height * 3) as usize;
    if out.is_empty() || out.len() % frame != 0 {
        return Err(failed(
            path,
            format!(
                "decoded {} bytes, not a whole number of {width}x{height} frames",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Writes one RGB24 frame as a PNG.
pub fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<(), VideoError> {
    let p = path_str(path)?;
    let size = format!("{width}x{height}");
    run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            &size,
            "-i",
            "-",
            "-frames:v",
            "1",
            "-f",
            "image2",
            "-c:v",
            "png",
            p,
        ],
        path,
        Some(rgb),
    )
    .map(|_| ())
}

/// Decodes the first audio stream as mono int16 at `rate` Hz (ffmpeg resamples).
pub fn decode_audio(path: &Path, rate: u32) -> Result<Vec<i16>, VideoError> {
    let p = path_str(path)?;
    let r = rate.to_string();
    let out = run(
        "ffmpeg",
        &[
            "-v", "error", "-nostdin", "-i", p, "-map", "0:a:0", "-ac", "1", "-ar", &r, "-f",
            "s16le", "-",
        ],
        path,
        None,
    )?;
    Ok(out
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// Encodes RGB24 frames (frames x height x width x 3) at `fps` to an H.264 mp4, muxed with mono
/// int16 audio at `rate` Hz when given.
pub fn encode(
    path: &Path,
    frames: &[u8],
    width: u32,
    height: u32,
    fps: u32,
    audio: Option<(&[i16], u32)>,
) -> Result<(), VideoError> {
    let audio = audio.map(|(samples, rate)| AudioSource::Samples(samples, rate));
    encode_with(path, frames, width, height, fps, audio)
}

/// The sound of an encoded video.
#[derive(Debug, Clone, Copy)]
pub enum AudioSource<'a> {
    /// Mono int16 samples at a rate in Hz.
    Samples(&'a [i16], u32),
    /// The first audio stream of a file (audio or video), with its own sample rate and
    /// channels: re-encoded to AAC at 192 kb/s, not resampled.
    File(&'a Path),
}

/// [`encode`] with any [`AudioSource`]. The output is an mp4 whatever the file name says; the
/// video ends with the shorter of frames and sound. (All frames at once: [`FrameWriter`]
/// streams them.)
pub fn encode_with(
    path: &Path,
    frames: &[u8],
    width: u32,
    height: u32,
    fps: u32,
    audio: Option<AudioSource<'_>>,
) -> Result<(), VideoError> {
    let mut w = FrameWriter::create(path, width, height, fps, audio)?;
    for f in frames.chunks((width * height * 3).max(1) as usize) {
        w.push(f)?;
    }
    w.finish()
}

/// A scratch file for intermediate audio of `path`: in the temporary directory (a source
/// directory may be read-only) and unique to this call, since threads of one process may decode
/// the same file at once (a clip that is both the video and the audio of a generation job, or
/// two ingests in one process).
fn tempfile_for(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    std::env::temp_dir().join(format!(".syncdiff-{}-{n}-{name}.s16", std::process::id()))
}

/// A clip decoded in one ffmpeg pass: RGB24 frames and mono int16 audio.
#[derive(Debug, Clone)]
pub struct DecodedAv {
    /// Frame rate of the source video stream.
    pub fps: f64,
    /// Width of the returned frames.
    pub width: u32,
    /// Height of the returned frames.
    pub height: u32,
    /// Frames back to back (frames x height x width x 3 bytes).
    pub rgb: Vec<u8>,
    /// Whether the source has an audio stream.
    pub has_audio: bool,
    /// Audio at the requested rate (empty without an audio stream).
    pub audio: Vec<i16>,
    /// The container's duration in seconds, when it states one.
    pub duration_s: Option<f64>,
    /// Messages ffmpeg logged at error level while decoding (a damaged stream), first first.
    pub errors: Vec<String>,
    /// The source's pixel format as ffmpeg names it (empty when it did not say, which
    /// [`check_pixel_format`] refuses).
    pub pix_fmt: String,
    /// The source's display rotation (0, 90, 180, 270), already applied to `rgb`.
    pub rotation: u32,
}

/// Error-level messages of an ffmpeg log written with `-v level+info`, without the markers.
fn logged_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| {
            let (_, msg) = l.split_once("[error] ")?;
            Some(msg.trim().to_string())
        })
        .collect()
}

/// The log of `-v level+info` without its `[info] ` markers, as `-v info` writes it.
fn without_levels(stderr: &str) -> String {
    stderr
        .lines()
        .map(|l| l.strip_prefix("[info] ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `Duration: HH:MM:SS.ss` of the first input.
fn parse_duration(stderr: &str) -> Option<f64> {
    let text = stderr.split("Duration: ").nth(1)?.split(',').next()?;
    let mut parts = text.trim().split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Parses ffmpeg's description of its first input's streams (`-v info`): (fps, width, height) of
/// the video stream and whether an audio stream exists.
fn parse_input_streams(stderr: &str) -> (Option<(f64, u32, u32)>, bool) {
    let input = stderr.split("Stream mapping:").next().unwrap_or("");
    let mut video = None;
    let mut audio = false;
    for line in input
        .lines()
        .filter(|l| l.trim_start().starts_with("Stream #0:"))
    {
        if line.contains(": Audio:") {
            audio = true;
        }
        if video.is_none() && line.contains(": Video:") {
            let fps = line
                .split(" fps")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|s| s.parse::<f64>().ok());
            let size = line.split([',', ' ']).find_map(|tok| {
                let (w, h) = tok.split_once('x')?;
                Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?))
            });
            if let (Some(fps), Some((w, h))) = (fps, size) {
                video = Some((fps, w, h));
            }
        }
    }
    (video, audio)
}

/// The pixel format of the first input's video stream in ffmpeg's description of it
/// (`Video: h264 (High), yuv420p(tv, progressive), 1280x720, ...`).
fn parse_pix_fmt(stderr: &str) -> Option<String> {
    let input = stderr.split("Stream mapping:").next().unwrap_or("");
    let line = input
        .lines()
        .find(|l| l.trim_start().starts_with("Stream #0:") && l.contains(": Video:"))?;
    let fields = line.split(": Video:").nth(1)?;
    let fmt = fields.split(", ").nth(1)?.split('(').next()?.trim();
    (!fmt.is_empty()).then(|| fmt.to_string())
}

/// Decodes video and audio in one ffmpeg process (one demux pass): frames at the source rate,
/// scaled to `size` x `size` (area filter) when given, and audio as mono int16 at `rate` Hz.
pub fn decode_av(path: &Path, size: Option<u32>, rate: u32) -> Result<DecodedAv, VideoError> {
    decode_av_at(path, size, rate, None)
}

/// The ffmpeg arguments of one decoding pass: frames to stdout (resampled to `fps`, scaled to a
/// square `size` when given) and the first audio stream as mono int16 at `rate` Hz to `audio_out`.
fn av_args(
    p: &str,
    size: Option<u32>,
    rate: u32,
    fps: Option<f64>,
    audio_out: &str,
) -> Vec<String> {
    // Level markers tell a damaged stream's errors apart from the stream description.
    // Frames as displayed: ffmpeg applies a display rotation (phone videos); the size read from
    // the input stream is then swapped for quarter turns (`parse_rotation`).
    let mut args: Vec<String> = ["-v", "level+info", "-nostdin", "-y", "-i", p]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(rgb_frames_args(fps, size.map(|s| (s, s))));
    args.extend(
        ["-map", "0:a:0?", "-ac", "1", "-ar"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend([
        rate.to_string(),
        "-f".into(),
        "s16le".into(),
        audio_out.into(),
    ]);
    args
}

/// What the log of a decoding pass (`-v level+info`) says.
#[derive(Debug, Clone)]
struct AvLog {
    /// The log as `-v info` writes it.
    text: String,
    errors: Vec<String>,
    /// (fps, width, height as displayed) of the video stream.
    video: Option<(f64, u32, u32)>,
    has_audio: bool,
    rotation: u32,
    duration_s: Option<f64>,
    pix_fmt: String,
}

impl AvLog {
    fn parse(raw: &str) -> Self {
        let errors = logged_errors(raw);
        let text = without_levels(raw);
        let (video, has_audio) = parse_input_streams(&text);
        let rotation = parse_rotation(&text);
        // The stream line gives the coded size; frames come out turned for display.
        let video = video.map(|(fps, w, h)| {
            if rotation % 180 == 90 {
                (fps, h, w)
            } else {
                (fps, w, h)
            }
        });
        Self {
            duration_s: parse_duration(&text),
            pix_fmt: parse_pix_fmt(&text).unwrap_or_default(),
            text,
            errors,
            video,
            has_audio,
            rotation,
        }
    }

    /// Why ffmpeg failed on `path`: no video stream, else its last error line.
    fn failure(&self, path: &Path) -> VideoError {
        // A readable input without a video stream (e.g. audio only).
        if self.video.is_none() && self.text.contains("Stream #0:") {
            return failed(path, "no video stream");
        }
        let line = self.errors.last().cloned().unwrap_or_else(|| {
            self.text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed without a message")
                .trim()
                .to_string()
        });
        failed(path, format!("ffmpeg: {line}"))
    }
}

/// [`decode_av`] with the frames resampled to `fps` when given (ffmpeg's `fps` filter: frames
/// dropped or repeated to the nearest time stamp); the result's `fps` is then that rate.
pub fn decode_av_at(
    path: &Path,
    size: Option<u32>,
    rate: u32,
    fps: Option<f64>,
) -> Result<DecodedAv, VideoError> {
    let p = path_str(path)?;
    let audio_tmp = tempfile_for(path).with_extension("a.s16");
    let audio_out = audio_tmp
        .to_str()
        .ok_or_else(|| failed(&audio_tmp, "path is not valid UTF-8"))?
        .to_string();
    let out = Command::new("ffmpeg")
        .args(av_args(p, size, rate, fps, &audio_out))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| VideoError::Tool {
            tool: "ffmpeg",
            message: e.to_string(),
        })?;
    let log = AvLog::parse(&String::from_utf8_lossy(&out.stderr));
    // Read before the status is judged (the file goes either way); an error matters only when
    // ffmpeg succeeded, and then it is the clip's error, not silence.
    let audio_read = std::fs::read(&audio_tmp);
    let _ = std::fs::remove_file(&audio_tmp);
    if !out.status.success() {
        // Without an audio stream the second output is empty, which ffmpeg treats as an error.
        if let (Some((fps, w, h)), false) = (log.video, log.has_audio) {
            return Ok(DecodedAv {
                fps,
                width: w,
                height: h,
                rgb: Vec::new(),
                has_audio: false,
                audio: Vec::new(),
                duration_s: log.duration_s,
                errors: log.errors,
                pix_fmt: log.pix_fmt,
                rotation: log.rotation,
            });
        }
        return Err(log.failure(path));
    }
    let (source_fps, w, h) = log.video.ok_or_else(|| failed(path, "no video stream"))?;
    let fps = fps.unwrap_or(source_fps);
    let audio_bytes = match (audio_read, log.has_audio) {
        (Ok(bytes), _) => bytes,
        (Err(_), false) => Vec::new(),
        (Err(e), true) => return Err(failed(path, format!("reading the decoded audio: {e}"))),
    };
    let (width, height) = size.map_or((w, h), |s| (s, s));
    let rgb = out.stdout;
    let frame = (width * height * 3) as usize;
    if rgb.len() % frame != 0 {
        return Err(failed(
            path,
            format!(
                "decoded {} bytes, not a whole number of {width}x{height} frames",
                rgb.len()
            ),
        ));
    }
    Ok(DecodedAv {
        fps,
        width,
        height,
        rgb,
        has_audio: log.has_audio,
        audio: audio_bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
        duration_s: log.duration_s,
        errors: log.errors,
        pix_fmt: log.pix_fmt,
        rotation: log.rotation,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn grey_and_deep_pixel_formats_are_refused_and_read_from_ffmpeg_logs() {
        for ok in ["yuv420p", "yuvj420p", "nv12", "rgb24", "gbrp"] {
            assert!(check_pixel_format(Path::new("a.mp4"), ok).is_ok(), "{ok}");
        }
        // Not named: refused, not taken for 8-bit colour.
        let e = check_pixel_format(Path::new("a.mp4"), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not name the video's pixel format"), "{e}");
        for (fmt, bits) in [
            ("yuv420p10le", 10),
            ("p010le", 10),
            ("gbrp12be", 12),
            ("rgb48le", 16),
        ] {
            let e = check_pixel_format(Path::new("a.mp4"), fmt)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("a.mp4: {bits}-bit video (pixel format {fmt})")),
                "{e}"
            );
        }
        let e = check_pixel_format(Path::new("g.mkv"), "gray")
            .unwrap_err()
            .to_string();
        assert!(e.contains("g.mkv: grayscale video"), "{e}");
        let log =
            "Input #0, mov,mp4, from 'x.mp4':\n  Stream #0:0[0x1](und): Video: h264 (High 10) \
                   (avc1 / 0x31637661), yuv420p10le(tv, bt709, progressive), 1280x720, 30 fps\n\
                   Stream mapping:\n  Stream #0:0 -> #0:0 (h264 -> rawvideo)\n";
        assert_eq!(parse_pix_fmt(log).as_deref(), Some("yuv420p10le"));
        assert_eq!(parse_pix_fmt("nothing"), None);
    }
}
