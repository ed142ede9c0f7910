//! Reader throughput: training samples per second on one core, `Dataset::sample` vs zarr-python
//! reading the same samples from the same stores, interleaved. Target: >= 3x, and the absolute
//! rate against the >= 500 samples/s per node a 6-GPU step needs.
//!
//! ```text
//! source ci/env.sh && taskset -c 0 cargo bench -p syncdiff-dataprep --bench reader
//! ```
//! The stores hold paper-size latents (3 x 64 x 64 float16) of 48 clips x 100 frames.

// Shared with the trainer crate (dataprep cannot depend on it); each bench uses a part.
#[allow(dead_code)]
use std::path::Path;
use std::time::Instant;

use half::f16;
use syncdiff_dataset::shards::{
    context_window, shard_name, write_manifest, write_shard, ClipData, Dataset, Manifest,
    SampleRequest, StoreMeta, FORMAT_VERSION,
};
use syncdiff_devkit::stats::{interleave, PyServer};
use syncdiff_runtime::rng::Rng;

const CLIPS: usize = 48;
const FRAMES: usize = 100;
const LATENT: usize = 3 * 64 * 64;
const SAMPLES: usize = 500;

/// Smooth pseudo-latents (compress like real ones, unlike white noise).
fn clip(c: usize) -> ClipData {
    let lat = |f: usize, off: f32| -> Vec<f16> {
        (0..LATENT)
            .map(|e| {
                f16::from_f32(
                    ((e % 64) as f32 * 0.1
                        + (e / 64) as f32 * 0.05
                        + f as f32 * 0.2
                        + c as f32
                        + off)
                        .sin(),
                )
            })
            .collect()
    };
    ClipData {
        id: format!("spk{:02}/{:05}", c / 12, c % 12),
        frames: FRAMES,
        latents: (0..FRAMES).flat_map(|f| lat(f, 0.0)).collect(),
        masked_latents: (0..FRAMES).flat_map(|f| lat(f, 1.0)).collect(),
        mel: (0..FRAMES * 104).map(|i| (i as f32 * 0.01).cos()).collect(),
        audio_features: Vec::new(),
        faces: Vec::new(),
        rotation: 0,
    }
}

fn build(dir: &Path) -> anyhow::Result<()> {
    let meta = StoreMeta {
        format_version: FORMAT_VERSION,
        autoencoder: "resample".into(),
        autoencoder_sha256: "none".into(),
        latent_shape: [3, 64, 64],
        split: "train".into(),
        filterbank: serde_json::json!({}),
        audio_cache: None,
        resolution: 256,
        fps: 25,
        sample_rate: 16000,
        mask_fraction: 0.5,
        face: Default::default(),
    };
    let clips: Vec<ClipData> = (0..CLIPS).map(clip).collect();
    let entries = clips
        .chunks(16)
        .enumerate()
        .map(|(i, c)| write_shard::<String>(&dir.join(shard_name(i)), c, &meta, &[]))
        .collect::<Result<Vec<_>, _>>()?;
    write_manifest(
        dir,
        &Manifest {
            meta,
            shards: entries,
        },
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir()?;
    build(dir.path())?;
    let ds = Dataset::open(dir.path())?;
    let mut rng = Rng::new(&[7]);
    let reqs: Vec<SampleRequest> = (0..SAMPLES)
        .map(|_| {
            let clip = rng.below(CLIPS as u64) as usize;
            let t = 1 + rng.below(FRAMES as u64 - 1);
            let identity = (t + 1 + rng.below(FRAMES as u64 - 1)) % FRAMES as u64;
            SampleRequest {
                clip,
                t,
                identity,
                previous: 1,
                context_frames: 250,
            }
        })
        .collect();
    let json: Vec<serde_json::Value> = reqs
        .iter()
        .map(|r| {
            let (s, n) = context_window(r.t, FRAMES as u64, r.context_frames);
            serde_json::json!({"clip": r.clip, "t": r.t, "identity": r.identity, "previous": r.previous, "ctx_start": s, "ctx_len": n})
        })
        .collect();
    let req_path = dir.path().join("requests.json");
    std::fs::write(&req_path, serde_json::to_string(&json)?)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reader_py.py");
    let mut py = PyServer::start(
        &script,
        &[dir.path().as_os_str(), req_path.as_os_str()],
        &[],
    )?;
    let rust = || -> anyhow::Result<f64> {
        let start = Instant::now();
        for r in &reqs {
            std::hint::black_box(ds.sample(r)?);
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let c = interleave(reps, rust, || Ok(py.step()?))?;
    py.finish()?;
    let s = c.summary();
    let n = SAMPLES as f64;
    println!("reader: {SAMPLES} training samples (3 latents + 1 previous of 3x64x64 f16, 100 mel rows), one core, {reps} interleaved repetitions:");
    println!(
        "  Rust {:.0} samples/s, zarr-python {:.0} samples/s: Rust is {:.1}x faster (95% CI {:.1}-{:.1}x); needed per 6-GPU node: 500 samples/s",
        n / s.a_median,
        n / s.b_median,
        1.0 / s.median,
        1.0 / s.high,
        1.0 / s.low
    );
    Ok(())
}
