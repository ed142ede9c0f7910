//! Filterbank throughput: Rust `LogFbank` vs python_speech_features `logfbank`, one core each,
//! interleaved, on 60 s of espeak-ng speech. Prints seconds of audio per second and the ratio.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-dataprep --bench logfbank
//! ```
//! Target: Rust >= 10x faster.

#[path = "../../trainer/src/benchstats.rs"]
mod benchstats;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use benchstats::Comparison;
use syncdiff_dataprep::audio::{FbankParams, LogFbank};

fn python() -> Command {
    let exe = std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"));
    Command::new(exe)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let o = cmd.output()?;
    anyhow::ensure!(
        o.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// 60 s of speech: espeak-ng sentences resampled to 16 kHz int16, repeated.
fn speech(dir: &Path) -> anyhow::Result<(PathBuf, Vec<f64>)> {
    let wav = dir.join("s.wav");
    run(Command::new("espeak-ng").args(["-w", wav.to_str().unwrap_or_default(), "Lip sync needs audio features that are computed fast and exactly the same way every time the data is prepared."]))?;
    let raw = dir.join("s.s16");
    run(Command::new("ffmpeg").args([
        "-v",
        "error",
        "-y",
        "-i",
        wav.to_str().unwrap_or_default(),
        "-ac",
        "1",
        "-ar",
        "16000",
        "-f",
        "s16le",
        raw.to_str().unwrap_or_default(),
    ]))?;
    let one = std::fs::read(&raw)?;
    let mut bytes = Vec::with_capacity(60 * 32000);
    while bytes.len() < 60 * 32000 {
        bytes.extend_from_slice(&one);
    }
    bytes.truncate(60 * 32000);
    std::fs::write(&raw, &bytes)?;
    let samples = bytes
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    Ok((raw, samples))
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir()?;
    let (raw, samples) = speech(dir.path())?;
    let seconds = samples.len() as f64 / 16000.0;
    let mut child = python()
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/logfbank_py.py"))
        .arg(&raw)
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_py = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut from_py = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    );
    let mut line = String::new();
    from_py.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "python side failed: {line}");
    let mut py = || -> anyhow::Result<f64> {
        writeln!(to_py, "step")?;
        to_py.flush()?;
        let mut l = String::new();
        from_py.read_line(&mut l)?;
        Ok(l.trim().parse()?)
    };
    let fb = LogFbank::new(FbankParams::default());
    let rust = || {
        let start = Instant::now();
        std::hint::black_box(fb.compute(std::hint::black_box(&samples)));
        start.elapsed().as_secs_f64()
    };
    rust();
    py()?;
    let mut c = Comparison::default();
    for i in 0..reps {
        if i % 2 == 0 {
            c.a.push(rust());
            c.b.push(py()?);
        } else {
            c.b.push(py()?);
            c.a.push(rust());
        }
    }
    drop(to_py);
    child.wait()?;
    let s = c.summary();
    println!(
        "logfbank on {seconds:.0} s of 16 kHz speech, one core, {reps} interleaved repetitions:"
    );
    println!(
        "  Rust {:.0} s of audio/s, python_speech_features {:.0} s of audio/s: Rust is {:.1}x faster (95% CI {:.1}-{:.1}x)",
        seconds / s.a_median,
        seconds / s.b_median,
        1.0 / s.median,
        1.0 / s.high,
        1.0 / s.low
    );
    Ok(())
}
