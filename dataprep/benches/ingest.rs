//! Ingest throughput: `syncdiff-dataprep lrs2` (one process, rayon over the 2 cores) vs a Python
//! pipeline doing the same steps in two processes (benches/ingest_py.py), interleaved, on a
//! synthetic data set, with the debug autoencoder. Prints frames/s, the ratio and the time per stage.
//! Also (b): the VQ-f4 encoder's CPU cost per 256x256 frame and a projection of the full LRS2 ingest.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-dataprep --bench ingest
//! ```
//! Target (a): Rust >= 1.5x the Python pipeline.

// Shared with the trainer crate (dataprep cannot depend on it); each bench uses a part.
#[allow(dead_code)]
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use syncdiff_dataprep::synth::{synth, SynthOptions};
use syncdiff_devkit::stats::Comparison;
use syncdiff_devkit::{python, repo};
use syncdiff_model::config::{AutoencoderConfig, Config};
use syncdiff_model::vq::VqModel;
use tch::{Device, Kind, Tensor};

/// Parses "(decode+features X s, encode Y s, write Z s)" from the Rust summary line.
fn stages(line: &str) -> Vec<f64> {
    ["threads busy ", "encode ", "write "]
        .iter()
        .filter_map(|k| line.split(k).nth(1)?.split(" s").next()?.parse().ok())
        .collect()
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("lrs2");
    let opts = SynthOptions {
        out: root.clone(),
        speakers: 4,
        clips_per_speaker: 10,
        seconds: 3.0,
        seed: 5,
    };
    synth(&opts, |_, _| {})?;
    let config = repo().join("configs/debug.yaml");
    let cfg = Config::load(&config, &[])?;
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        })
        .join("syncdiff-dataprep");
    anyhow::ensure!(
        bin.exists(),
        "{} not built: run `cargo build -p syncdiff-dataprep` (same profile) first",
        bin.display()
    );
    let mut c = Comparison::default();
    let (mut rust_stages, mut py_stages, mut frames) = (vec![0.0; 3], vec![0.0; 3], 0.0);
    for i in 0..reps {
        let run_rust = |out: &Path| -> anyhow::Result<(f64, Vec<f64>)> {
            let start = Instant::now();
            let o = Command::new(&bin)
                .args([
                    "lrs2",
                    "--root",
                    root.to_str().unwrap_or_default(),
                    "--out",
                    out.to_str().unwrap_or_default(),
                    "--config",
                    config.to_str().unwrap_or_default(),
                    "--set",
                    "data.clips_per_shard=8",
                ])
                .output()?;
            anyhow::ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            Ok((
                start.elapsed().as_secs_f64(),
                stages(&String::from_utf8_lossy(&o.stdout)),
            ))
        };
        let run_py = |out: &Path| -> anyhow::Result<serde_json::Value> {
            std::fs::create_dir_all(out)?;
            let o = python()
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ingest_py.py"))
                .args([
                    root.to_str().unwrap_or_default(),
                    out.to_str().unwrap_or_default(),
                    "8",
                    &cfg.data.resolution.to_string(),
                ])
                .output()?;
            anyhow::ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            Ok(serde_json::from_slice(&o.stdout)?)
        };
        let (r, p) = if i % 2 == 0 {
            let r = run_rust(&dir.path().join(format!("rust{i}")))?;
            (r, run_py(&dir.path().join(format!("py{i}")))?)
        } else {
            let p = run_py(&dir.path().join(format!("py{i}")))?;
            (run_rust(&dir.path().join(format!("rust{i}")))?, p)
        };
        c.a.push(r.0);
        c.b.push(p["wall"].as_f64().unwrap_or(f64::NAN));
        for (k, v) in r.1.iter().enumerate() {
            rust_stages[k] += v / reps as f64;
        }
        for (k, name) in ["decode", "encode", "write"].iter().enumerate() {
            py_stages[k] += p[name].as_f64().unwrap_or(0.0) / reps as f64;
        }
        frames = p["frames"].as_f64().unwrap_or(0.0);
    }
    let s = c.summary();
    println!("(a) ingest of {frames} frames (32 clips x 3 s, {}x{} frames, debug autoencoder), {reps} interleaved runs:", cfg.data.resolution, cfg.data.resolution);
    println!(
        "  Rust {:.0} frames/s (wall {:.2} s), Python pipeline {:.0} frames/s (wall {:.2} s): Rust is {:.2}x faster (95% CI {:.2}-{:.2}x)",
        frames / s.a_median,
        s.a_median,
        frames / s.b_median,
        s.b_median,
        1.0 / s.median,
        1.0 / s.high,
        1.0 / s.low
    );
    println!(
        "  per stage, mean seconds — Rust: decoding threads busy (summed over threads) {:.2}, encode (wall) {:.2}, write (wall) {:.2}; Python (summed over its 2 processes): decode+features {:.2}, encode {:.2}, write {:.2}",
        rust_stages[0], rust_stages[1], rust_stages[2], py_stages[0], py_stages[1], py_stages[2]
    );

    // (b) VQ-f4 at the paper size on this CPU: seconds per frame, and the full-LRS2 projection.
    tch::set_num_threads(2);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let vq = VqModel::new(vs.root(), &AutoencoderConfig::default());
    let x = Tensor::randn([4, 3, 256, 256], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| vq.encode(&x));
    let start = Instant::now();
    for _ in 0..3 {
        let _ = tch::no_grad(|| vq.encode(&x));
    }
    let per_frame = start.elapsed().as_secs_f64() / 12.0;
    // Encoder FLOPs per frame, counted from the architecture (conv MACs x 2).
    let gflop = vq_encoder_gflop();
    let lrs2_frames = 2.6e6 * 2.0; // frames and masked frames of the LRS2 train split (model-spec estimate)
    let gpu_tflops = 200.0; // assumed sustained fp16/bf16 throughput per H100-class GPU (~20% of peak dense)
    let gpu_hours = lrs2_frames * gflop / (gpu_tflops * 1e3) / 3600.0;
    println!("(b) VQ-f4 encoder, 256x256 frames, CPU 2 threads: {per_frame:.3} s/frame ({:.1} GFLOP/s); {gflop:.1} GFLOP per frame", gflop / per_frame);
    println!(
        "  projection for LRS2 train (~2.6 M frames, each encoded twice: frame + masked frame): CPU {:.0} h on this machine; \
         6 GPUs at an assumed {gpu_tflops:.0} TFLOP/s sustained each: {:.2} h of encoding ({:.1} min)",
        lrs2_frames * per_frame / 3600.0,
        gpu_hours / 6.0,
        gpu_hours / 6.0 * 60.0
    );
    Ok(())
}

/// Multiply-adds of the VQ-f4 encoder (paper config) on one 256x256 frame, times 2, in GFLOP.
fn vq_encoder_gflop() -> f64 {
    let conv = |cin: f64, cout: f64, k: f64, px: f64| cin * cout * k * k * px;
    let res = |cin: f64, cout: f64, px: f64| {
        conv(cin, cout, 3.0, px)
            + conv(cout, cout, 3.0, px)
            + if cin != cout {
                conv(cin, cout, 1.0, px)
            } else {
                0.0
            }
    };
    let mut macs = conv(3.0, 128.0, 3.0, 65536.0);
    let (mut cin, mut side) = (128.0, 256.0);
    for (i, ch) in [128.0, 256.0, 512.0].iter().enumerate() {
        let px = side * side;
        macs += res(cin, *ch, px) + res(*ch, *ch, px);
        cin = *ch;
        if i < 2 {
            side /= 2.0;
            macs += conv(*ch, *ch, 3.0, side * side);
        }
    }
    let px = side * side;
    // Mid block: two resnets and single-head attention over the pixels (q, k, v, out + scores).
    macs += 2.0 * res(512.0, 512.0, px) + 4.0 * 512.0 * 512.0 * px + 2.0 * px * px * 512.0;
    macs += conv(512.0, 3.0, 3.0, px) + conv(3.0, 3.0, 1.0, px);
    2.0 * macs / 1e9
}
