//! Filterbank throughput: Rust `LogFbank` vs python_speech_features `logfbank`, one core each,
//! interleaved, on 60 s of espeak-ng speech. Prints seconds of audio per second and the ratio.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-dataprep --bench logfbank
//! ```
//! Target: Rust >= 10x faster.

// Shared with the trainer crate (dataprep cannot depend on it); each bench uses a part.
#[allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use syncdiff_dataset::audio::{FbankParams, LogFbank};
use syncdiff_devkit::stats::{interleave, PyServer};

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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/logfbank_py.py");
    let env = [
        ("OMP_NUM_THREADS", "1"),
        ("OPENBLAS_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "1"),
    ];
    let mut py = PyServer::start(&script, &[raw.as_os_str()], &env)?;
    let fb = LogFbank::new(FbankParams::default());
    let rust = || {
        let start = Instant::now();
        std::hint::black_box(fb.compute(std::hint::black_box(&samples)));
        Ok(start.elapsed().as_secs_f64())
    };
    let c = interleave(reps, rust, || py.step())?;
    py.finish()?;
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
