//! What the trainer's benchmarks share: the configurations they measure and a small synthetic
//! data set prepared the way users prepare one (the repository root, the project's Python and
//! the statistics are in `syncdiff-devkit`, shared with dataprep's benchmarks).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use syncdiff_dataprep::layout::Layout::Lrs2;
use syncdiff_devkit::repo;

use syncdiff_model::config::{Config, Override};

/// libtorch's intra-op threads from `BENCH_THREADS` (default 2), set and returned.
pub fn threads() -> usize {
    let threads = syncdiff_devkit::env_or("BENCH_THREADS", 2);
    tch::set_num_threads(threads as i32);
    threads
}

/// Overrides of `configs/debug.yaml` giving the mid-size model: the paper's UNet layout at
/// width 64 and a 768-wide audio context (32x32 latents with `data.resolution=128`).
pub const MID_SIZE: &[&str] = &[
    "model.unet.model_channels=64",
    "model.unet.channel_mult=[1, 2, 3, 4]",
    "model.unet.num_res_blocks=2",
    "model.unet.attention_resolutions=[8, 4, 2]",
    "model.unet.head_dim=32",
    "model.unet.norm_num_groups=32",
    "model.audio_encoder.embed_dim=768",
];

/// `configs/debug.yaml` with `sets` applied.
pub fn debug_config(sets: &[&str]) -> anyhow::Result<Config> {
    let sets: Vec<Override> = sets
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<_, _>>()?;
    Ok(Config::load(&repo().join("configs/debug.yaml"), &sets)?)
}

/// The configurations the step benches compare at (1 rank): debug, mid-size (128 px) and the
/// demo's model (configs/demo.yaml) with one rank's share of its batch (8 of 16 on 2 ranks).
pub fn step_configs() -> anyhow::Result<Vec<(&'static str, Config)>> {
    let mut mid = vec!["data.resolution=128"];
    mid.extend_from_slice(MID_SIZE);
    let demo = Config::load(
        &repo().join("configs/demo.yaml"),
        &[Override::parse("train.global_batch=8")?],
    )?;
    Ok(vec![
        ("debug config", debug_config(&[])?),
        ("mid-size config", debug_config(&mid)?),
        ("demo config, batch 8", demo),
    ])
}

/// One timed `Trainer::step` on prebuilt step `k` (cycled), its audio the sample's own; bumps
/// `k`. Seconds of the whole step.
pub fn timed_step(
    trainer: &mut syncdiff_trainer::trainer::Trainer<'_>,
    prebuilt: &[Vec<syncdiff_trainer::data::Batch>],
    k: &mut usize,
    lr: f64,
) -> anyhow::Result<f64> {
    *k += 1;
    let b: Vec<syncdiff_trainer::data::Batch> = prebuilt[*k % prebuilt.len()]
        .iter()
        .map(|b| b.with_audio_of(b))
        .collect();
    let st = trainer.step(*k as u64, lr, || Ok(b), false)?;
    Ok(st.total.as_secs_f64())
}

/// `config` with `data.dataset` set to [`synthetic_dataset`] prepared with it in `dir`.
pub fn with_dataset(dir: &Path, mut config: Config) -> anyhow::Result<Config> {
    config.data.dataset = synthetic_dataset(dir, &config)?.display().to_string();
    Ok(config)
}

/// Synthetic clips in LRS2's layout under `root`: 2 speakers x 4 clips of `seconds`.
pub fn synthetic_clips(root: &Path, seconds: f64, seed: u64) -> anyhow::Result<()> {
    let opts = syncdiff_dataprep::synth::SynthOptions {
        out: root.to_path_buf(),
        speakers: 2,
        clips_per_speaker: 4,
        seconds,
        seed,
    };
    syncdiff_dataprep::synth::synth(&opts, |_, _| {})?;
    Ok(())
}

/// The train split of a synthetic data set (2 speakers x 4 clips of 2 s) prepared with
/// `config` in `dir/ds-<resolution>` (the clips are drawn once per directory).
pub fn synthetic_dataset(dir: &Path, config: &Config) -> anyhow::Result<PathBuf> {
    let root = dir.join("lrs2");
    if !root.exists() {
        synthetic_clips(&root, 2.0, 1)?;
    }
    let out = dir.join(format!("ds-{}", config.data.resolution));
    let opts = syncdiff_dataprep::ingest::IngestOptions {
        batch: 16,
        ..syncdiff_dataprep::ingest::IngestOptions::new(root, Lrs2, "train", &out)
    };
    syncdiff_dataprep::ingest::ingest(&opts, config, |_, _, _| {})?;
    Ok(out)
}

/// The micro-batches of the first `steps` steps of `config`'s data set on 1 rank, read once (for
/// benchmarks that time the step without the loader).
pub fn prebuilt_steps(
    config: &Config,
    steps: usize,
) -> anyhow::Result<Vec<Vec<syncdiff_trainer::data::Batch>>> {
    prebuilt_rank_steps(config, steps, 0, 1)
}

/// The micro-batches of rank `rank` of `world` in the first `steps` steps, read once.
pub fn prebuilt_rank_steps(
    config: &Config,
    steps: usize,
    rank: u64,
    world: u32,
) -> anyhow::Result<Vec<Vec<syncdiff_trainer::data::Batch>>> {
    use std::sync::Arc;
    use syncdiff_trainer::data::{Loader, LoaderState};
    let ds = Arc::new(syncdiff_dataset::shards::Dataset::open(Path::new(
        &config.data.dataset,
    ))?);
    let sampler = Arc::new(syncdiff_trainer::train::sampler(config, &ds, world)?);
    let share = syncdiff_trainer::train::rank_share(config, rank, world)?;
    let mut direct = Loader::new(ds, sampler.clone(), share, 0);
    let mut out = Vec::new();
    let mut s = LoaderState::default();
    for _ in 0..steps {
        out.push(direct.next(s)?);
        s = sampler.advance(s);
    }
    Ok(out)
}

/// Runs this bench again under `mpirun -n ranks` with the same arguments (for a bench started
/// without `mpirun`; it checks `OMPI_COMM_WORLD_SIZE` first).
pub fn relaunch(ranks: u32) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-n", &ranks.to_string()])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .status()?;
    anyhow::ensure!(status.success(), "mpirun -n {ranks} failed: {status}");
    Ok(())
}

/// Starts the Python side of a benchmark (`script`, relative to the repository) on `spec`,
/// written to a JSON file it reads before it prints `ready`.
pub fn py_server(
    script: &str,
    spec: &serde_json::Value,
) -> anyhow::Result<syncdiff_devkit::stats::PyServer> {
    let dir = tempfile::tempdir()?;
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string())?;
    Ok(syncdiff_devkit::stats::PyServer::start(
        &repo().join(script),
        &[spec_path.as_os_str()],
        &[],
    )?)
}
