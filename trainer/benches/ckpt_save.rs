//! Checkpoint cost, measured in one run:
//!
//! 1. wall time of N training steps (debug config, 1 rank) with an asynchronous save every K
//!    steps vs the same N steps without saves (target <= 1.10x), and with synchronous saves;
//! 2. save throughput (snapshot to manifest) vs a plain object_store put of the same bytes to
//!    the same store (target >= 0.8), for the mid-size model (model + EMA + AdamW moments).
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench ckpt_save
//! BENCH_URL=s3://bucket/bench cargo bench ...   # another store (credentials from the environment)
//! ```

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{debug_config, with_dataset, MID_SIZE};
use syncdiff_checkpoint::{
    now_unix, write, Retention, Retry, Saver, Snapshot, Store, TrainerState,
};
use syncdiff_dataset::shards::Dataset;
use syncdiff_devkit::env_or;
use syncdiff_devkit::stats::{interleave, Comparison};
use syncdiff_model::config::{Config, DistBackend};
use syncdiff_trainer::data::{Loader, LoaderState, RankShare, Sampler};
use syncdiff_trainer::dist::Runtime;
use syncdiff_trainer::trainer::Trainer;
use tch::Device;

fn state(step: u64) -> TrainerState {
    TrainerState {
        format: 1,
        step,
        epoch: 0,
        consumed: 0,
        seed: 0,
        world_size: 1,
        global_batch: 4,
        dataset_sha256: "bench".into(),
        external_weights: Default::default(),
        saved_unix: now_unix(),
        run: Some("run-bench".into()),
        loss_scale: None,
    }
}

fn snapshot(trainer: &Trainer<'_>, step: u64, config: &Config) -> Snapshot {
    let (model, ema, optimizer) = trainer.snapshot();
    Snapshot {
        model,
        ema,
        optimizer,
        state: state(step),
        config_yaml: config.to_yaml(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    None,
    Async,
    Sync,
}

fn main() -> anyhow::Result<()> {
    let reps = env_or("BENCH_REPS", 10);
    let steps = env_or("BENCH_STEPS", 40) as u64;
    let every = env_or("BENCH_EVERY", 5) as u64;
    common::threads();
    let rt = Runtime::init()?;
    let dir = tempfile::tempdir()?;
    let url = std::env::var("BENCH_URL")
        .unwrap_or_else(|_| dir.path().join("ckpt").display().to_string());
    let retry = Retry {
        attempts: 3,
        backoff: Duration::from_secs(1),
    };
    let store = Arc::new(Store::open(&url, retry)?);
    let keep = Retention {
        keep_last: 2,
        keep_every: None,
    };

    // 1. Steps with and without saves, debug configuration.
    let config = with_dataset(dir.path(), debug_config(&[])?)?;
    let ds = Arc::new(Dataset::open(std::path::Path::new(&config.data.dataset))?);
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let m = &config.model;
    let np = m.priors.needed_previous_frames();
    let sampler = Arc::new(Sampler::new(
        0,
        config.train.epoch_unit,
        &frames,
        u64::from(np),
        u64::from(m.diffusion.timesteps),
        4,
    )?);
    let share = RankShare {
        rank: 0,
        world: 1,
        micro: 4,
        previous: np,
        context: u64::from(m.audio_encoder.context_frames),
    };
    let mut trainer = Trainer::new(&config, &rt, Device::Cpu, DistBackend::Mpi)?;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        let t = Instant::now();
        for _ in 0..10 {
            let _ = snapshot(&trainer, 1, &config);
        }
        println!(
            "  snapshot (host copies) {:.2} ms",
            t.elapsed().as_secs_f64() * 100.0
        );
        let t = Instant::now();
        for k in 0..10 {
            write(&store, keep, snapshot(&trainer, 1_000_000 + k, &config))?;
        }
        println!(
            "  snapshot + write {:.2} ms",
            t.elapsed().as_secs_f64() * 100.0
        );
    }
    let mut loader = Loader::new(ds.clone(), sampler.clone(), share, 2);
    let mut saver = Saver::new(store.clone(), keep);
    let (mut state_at, mut step) = (LoaderState::default(), 0u64);
    let mut run = |mode: Mode| -> anyhow::Result<f64> {
        let start = Instant::now();
        for i in 1..=steps {
            step += 1;
            trainer.step(step, 3e-4, || Ok(loader.next(state_at)?), false)?;
            state_at = sampler.advance(state_at);
            if i % every == 0 {
                match mode {
                    Mode::None => {}
                    Mode::Async => {
                        if let Some(r) = saver.save_async(snapshot(&trainer, step, &config)) {
                            r?;
                        }
                    }
                    Mode::Sync => {
                        saver.save_blocking(snapshot(&trainer, step, &config))?;
                    }
                }
            }
        }
        // The run is not over until its last save is.
        if let Some(r) = saver.wait() {
            r?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    for mode in [Mode::None, Mode::Async, Mode::Sync] {
        run(mode)?; // warm-up
    }
    let (mut with_async, mut with_sync) = (Comparison::default(), Comparison::default());
    for i in 0..reps {
        let order = match i % 3 {
            0 => [Mode::None, Mode::Async, Mode::Sync],
            1 => [Mode::Async, Mode::Sync, Mode::None],
            _ => [Mode::Sync, Mode::None, Mode::Async],
        };
        let mut t = [0.0; 3];
        for mode in order {
            let s = run(mode)?;
            t[mode as usize] = s;
        }
        with_async.a.push(t[Mode::Async as usize]);
        with_async.b.push(t[Mode::None as usize]);
        with_sync.a.push(t[Mode::Sync as usize]);
        with_sync.b.push(t[Mode::None as usize]);
    }
    println!(
        "{steps} debug-config steps, a save every {every} steps to {url}, {reps} rotated repetitions:"
    );
    println!("  async saves / no saves: {}", with_async.summary());
    println!("  sync saves / no saves:  {}", with_sync.summary());
    drop(trainer);

    // 2. Throughput of one save vs a plain put of the same bytes, mid-size model.
    let mut mid = debug_config(MID_SIZE)?;
    mid.data.dataset = config.data.dataset.clone();
    let trainer = Trainer::new(&mid, &rt, Device::Cpu, DistBackend::Mpi)?;
    // Its own store: retention of part 1 must not see these steps.
    let store = Store::open(&format!("{url}/mid"), retry)?;
    let keep = Retention {
        keep_last: 1000,
        keep_every: None,
    };
    // The bytes a save uploads, once, for the plain put.
    let probe = write(&store, keep, snapshot(&trainer, 1, &mid))?;
    let files: Vec<(String, Vec<u8>)> = [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ]
    .iter()
    .filter_map(|f| {
        let rel = format!("step-000000001/{f}");
        store.get_bytes(&rel).ok().map(|b| (f.to_string(), b))
    })
    .collect();
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let mut k = 1u64;
    let cmp = interleave(
        reps.min(6),
        || -> anyhow::Result<f64> {
            k += 1;
            // Timed from the hand-over: the host copy is the loop's part (measured above).
            let snap = snapshot(&trainer, k, &mid);
            let start = Instant::now();
            write(&store, keep, snap)?;
            Ok(start.elapsed().as_secs_f64())
        },
        || -> anyhow::Result<f64> {
            let start = Instant::now();
            for (name, data) in &files {
                store.put_bytes(&format!("plain/{name}"), data)?;
            }
            Ok(start.elapsed().as_secs_f64())
        },
    )?;
    let s = cmp.summary();
    println!(
        "save of the mid-size model ({:.0} MB, {} MB in the probe save) vs plain put of the same bytes:",
        bytes as f64 / 1e6,
        probe.bytes / 1_000_000
    );
    println!(
        "  {s}; throughput ours {:.0} MB/s vs plain {:.0} MB/s: ratio {:.2}",
        bytes as f64 / 1e6 / s.a_median,
        bytes as f64 / 1e6 / s.b_median,
        s.b_median / s.a_median
    );
    Ok(())
}
