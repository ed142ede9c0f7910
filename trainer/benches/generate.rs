//! `syncdiff generate` throughput at the debug configuration: 8 clips generated as one batch vs
//! the same 8 clips one at a time, interleaved. Both run the same model code (audio features
//! prepared once; both decode the reference frames as they go, into frames kept in memory;
//! encoding the mp4s costs the same either way and is timed apart).
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench generate
//! ```
//! Prints frames per second of each and the speedup (one at a time / batched) with its bootstrap
//! 95% interval, first with one model on BENCH_THREADS libtorch threads, then with the batch
//! split over 2 worker threads (`syncdiff generate --workers 2`) against one clip at a time on
//! one thread. Target: >= 3.

mod common;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use common::debug_config;
use syncdiff_devkit::env_or;
use syncdiff_devkit::stats::{interleave, median};
use syncdiff_inference::generate::{
    self, Collect, FrameSink, GenerateOptions, Generator, Job, Mp4Sink, Prepared, Timings,
};
use tch::Device;

fn main() -> anyhow::Result<()> {
    let threads = common::threads();
    let reps = env_or("BENCH_REPS", 7);
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("lrs2");
    common::synthetic_clips(&root, 1.0, 2)?;
    let config = debug_config(&[])?;
    tch::manual_seed(0);
    let g = Generator::random(config, Device::Cpu)?;
    let clip = |s: usize, c: usize| root.join(format!("main/spk{s:02}/{:05}.mp4", c + 1));
    let start = Instant::now();
    let prepared: Vec<Prepared> = (0..8)
        .map(|i| {
            let job = Job {
                video: clip(i % 2, i / 2),
                audio: clip((i + 1) % 2, i / 2),
                out: dir.path().join(format!("out/{i}.mp4")),
            };
            generate::prepare(&g, &job, &g.config.data.face)
        })
        .collect::<Result<_, _>>()?;
    let prepare_s = start.elapsed().as_secs_f64();
    let frames: usize = prepared.iter().map(|p| p.frames).sum();
    let opts = GenerateOptions {
        sampler: g.config.sample.sampler,
        steps: g.config.sample.ddim_steps as usize,
        eta: 0.0,
        inpaint: false,
        guidance: 1.0,
        final_x0: false,
        seed: 0,
        precision: Default::default(),
    };
    let all: Vec<&Prepared> = prepared.iter().collect();
    // Frames kept in memory, one sink per clip.
    let collect = |n: usize| (0..n).map(|_| Collect::default()).collect::<Vec<_>>();
    // Time per phase of the frame loop, summed over the runs of each side.
    let (single_t, batched_t) = (RefCell::<Timings>::default(), RefCell::<Timings>::default());
    let run = |g: &Generator, clips: &[&Prepared], t: &RefCell<Timings>| -> anyhow::Result<()> {
        let mut sinks = collect(clips.len());
        let mut s: Vec<&mut dyn FrameSink> =
            sinks.iter_mut().map(|c| c as &mut dyn FrameSink).collect();
        let mut times = Timings::default();
        for r in generate::generate_batch(g, clips, &mut s, &opts, |_| {}, &mut times)? {
            r?;
        }
        t.borrow_mut().add(&times);
        Ok(())
    };
    let batched = || -> anyhow::Result<f64> {
        let t = Instant::now();
        run(&g, &all, &batched_t)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut single = || -> anyhow::Result<f64> {
        let t = Instant::now();
        for p in &all {
            run(&g, &[p], &single_t)?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    println!(
        "generate, debug config, 8 clips x 1 s ({frames} frames), {} DDIM steps, {threads} threads, {reps} interleaved repetitions",
        opts.steps
    );
    let cmp = interleave(reps, &mut single, batched)?;
    let s = cmp.summary();
    // Both sides ran once to warm up, then `reps` times.
    phase_table(
        (frames * (reps + 1)) as f64,
        &single_t.borrow(),
        &batched_t.borrow(),
    );
    let start = Instant::now();
    run(&g, &all, &RefCell::default())?;
    let gen_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut mp4s = prepared
        .iter()
        .map(Mp4Sink::create)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<&mut dyn FrameSink> =
        mp4s.iter_mut().map(|c| c as &mut dyn FrameSink).collect();
    for r in generate::generate_batch(&g, &all, &mut out, &opts, |_| {}, &mut Timings::default())? {
        r?;
    }
    drop(out);
    for m in mp4s {
        m.finish()?;
    }
    let write_s = start.elapsed().as_secs_f64() - gen_s;
    println!(
        "one at a time: {:.1} frames/s; batched (8): {:.1} frames/s",
        frames as f64 / median(&cmp.a),
        frames as f64 / median(&cmp.b)
    );
    println!(
        "speedup (one at a time / batched): median {:.2}x, 95% interval [{:.2}, {:.2}] (target >= 3)",
        s.median, s.low, s.high
    );
    println!(
        "end to end for the batch: prepare (audio features, frame count) {prepare_s:.2} s, generate {gen_s:.2} s, encoding the mp4s as they are made adds {write_s:.2} s"
    );

    // `--workers 2`: the batch split over 2 threads, each with its own model copy and one
    // libtorch thread, against one clip at a time on one libtorch thread (its fastest setting).
    tch::set_num_threads(1);
    let mut workers: Vec<Generator> = (0..2)
        .map(|_| {
            tch::manual_seed(0);
            Generator::random(debug_config(&[])?, Device::Cpu).map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<_>>()?;
    let parallel = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut sinks = collect(all.len());
        let mut s: Vec<&mut dyn FrameSink> =
            sinks.iter_mut().map(|c| c as &mut dyn FrameSink).collect();
        let mut times = Timings::default();
        for r in generate::generate_batch_parallel(
            &mut workers,
            &all,
            &mut s,
            &opts,
            |_| {},
            &mut times,
        )? {
            r?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let cmp = interleave(reps, &mut single, parallel)?;
    let s = cmp.summary();
    println!(
        "one at a time, 1 thread: {:.1} frames/s; batched (8) over 2 workers x 1 thread: {:.1} frames/s",
        frames as f64 / median(&cmp.a),
        frames as f64 / median(&cmp.b)
    );
    println!(
        "speedup (one at a time / batched over workers): median {:.2}x, 95% interval [{:.2}, {:.2}] (target >= 3)",
        s.median, s.low, s.high
    );
    Ok(())
}

/// Milliseconds per generated frame of each phase of the frame loop, one clip at a time against
/// batched, and what batching saves in each: where the speedup comes from and what limits it.
fn phase_table(frames: f64, single: &Timings, batched: &Timings) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / frames;
    println!("time per generated frame, ms: one at a time | batched (8) | ratio");
    let mut rows: Vec<(&str, Duration, Duration)> = single
        .phases()
        .iter()
        .zip(batched.phases())
        .map(|(&(n, a), (_, b))| (n, a, b))
        .collect();
    rows.push(("other", single.other(), batched.other()));
    rows.push(("total", single.total, batched.total));
    for (name, a, b) in rows {
        let (a, b) = (ms(a), ms(b));
        println!("  {name:<8} {a:8.3} | {b:8.3} | {:6.2}x", a / b.max(1e-9));
    }
}
