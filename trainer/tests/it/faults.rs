//! Failure handling under `mpirun -n 2`: an error on one rank, a frozen rank, desynchronised
//! replicas, and the preflight check.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{mpirun, prepared, rank_pids, repo, signal, text};
use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::Config;
use syncdiff_trainer::data::{LoaderState, Sampler};

fn base(ds: &Path, dir: &Path) -> Vec<String> {
    [
        "--config",
        "configs/debug.yaml",
        "--resume",
        "never",
        "--set",
        &format!("data.dataset={}", ds.display()),
        "--set",
        &format!("log.dir={}", dir.join("runs").display()),
        "--set",
        &format!("checkpoint.url={}", dir.join("ckpt").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Clips that `rank` of 2 reads in steps [0, steps) with `seed`.
fn clips_read(ds: &Dataset, cfg: &Config, seed: u64, rank: u64, steps: u64) -> Vec<usize> {
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = u64::from(cfg.model.priors.needed_previous_frames());
    let s = Sampler::new(
        seed,
        cfg.train.epoch_unit,
        &frames,
        np,
        u64::from(cfg.model.diffusion.timesteps),
        u64::from(cfg.train.global_batch),
    )
    .unwrap();
    let mut state = LoaderState::default();
    let mut out = Vec::new();
    for _ in 0..steps {
        let order = s.permutation(state.epoch);
        for specs in s.step(state, rank, 2, 1, &order) {
            out.extend(specs.iter().map(|x| x.clip));
        }
        state = s.advance(state);
    }
    out
}

#[test]
fn an_error_on_rank_1_only_ends_the_job_within_30_s_naming_rank_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let ds_path = prepared(dir.path(), "train", &["data.clips_per_shard=1"]);
    let ds = Dataset::open(&ds_path).unwrap();
    let cfg = Config::load(&repo().join("configs/debug.yaml"), &[]).unwrap();
    // A seed and a clip such that rank 1 reads the clip in step 1 while rank 0 does not read it
    // in its first steps, read-ahead included: only rank 1 can fail.
    let ahead = u64::from(cfg.data.prefetch) + 2;
    let (seed, clip) = (0..100u64)
        .find_map(|seed| {
            let r0 = clips_read(&ds, &cfg, seed, 0, ahead);
            let r1 = clips_read(&ds, &cfg, seed, 1, 1);
            r1.into_iter().find(|c| !r0.contains(c)).map(|c| (seed, c))
        })
        .unwrap();
    let id = &ds.clips()[clip].id;
    let shard = ds
        .manifest()
        .shards
        .iter()
        .find(|s| s.clips.contains(id))
        .unwrap()
        .name
        .clone();
    let chunk = ds_path.join(&shard).join("latents/c/0/0/0/0");
    assert!(chunk.exists(), "{}", chunk.display());
    std::fs::write(&chunk, b"corrupt").unwrap();
    let start = Instant::now();
    let o = mpirun(2)
        .args(base(&ds_path, dir.path()))
        .args([
            "--set",
            &format!("train.seed={seed}"),
            "--set",
            "train.steps=50",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        err.contains("error: [rank 1/2]")
            && err.contains(&shard)
            && err.contains("aborting all 2 ranks"),
        "{err}"
    );
    assert!(!err.contains("error: [rank 0/2]"), "{err}");
}

#[test]
fn a_rank_frozen_with_sigstop_is_caught_by_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let mut child = mpirun(2)
        .args(base(ds, dir.path()))
        .args([
            "--set",
            "train.steps=100000",
            "--set",
            "log.interval=1",
            "--set",
            "dist.checksum_interval=0",
            "--set",
            "dist.collective_timeout_s=5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("step 3/") {
            break;
        }
    }
    let pids = rank_pids(child.id());
    assert_eq!(pids.len(), 2, "{pids:?}");
    let (_, frozen) = *pids.iter().find(|(r, _)| *r == 1).unwrap();
    assert!(signal(frozen, "-STOP"));
    let stopped_at = Instant::now();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let status = child.wait().unwrap();
    let waited = stopped_at.elapsed();
    // Whatever happened, do not leave a stopped process behind.
    signal(frozen, "-KILL");
    assert!(!status.success(), "{err}");
    assert!(waited < Duration::from_secs(30), "took {waited:?}: {err}");
    let line = err
        .lines()
        .find(|l| l.contains("watchdog"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.starts_with("error: [rank 0/2] watchdog: step ")
            && line.contains(": gradient all-reduce did not finish within 5 s"),
        "{line}"
    );
    let step: u64 = line
        .split("step ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(step >= 4, "{line}");
}

#[test]
#[cfg(feature = "fault-injection")]
fn a_desynchronised_parameter_is_caught_by_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let o = mpirun(2)
        .env(syncdiff_trainer::trainer::FAULT_DESYNC_ENV, "1:4")
        .args(base(ds, dir.path()))
        .args([
            "--set",
            "train.steps=20",
            "--set",
            "dist.checksum_interval=3",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    // Checked (and equal) at step 3; rank 1 perturbed after step 4; caught at step 6.
    assert!(
        err.contains("parameters differ from rank 0's at step 6 on rank(s) [1]"),
        "{err}"
    );
    assert!(
        out.contains("step 5/20") && !out.contains("step 7/20"),
        "{out}"
    );
}

#[test]
#[cfg(feature = "fault-injection")]
fn an_inf_gradient_on_one_rank_makes_every_fp16_rank_skip_that_step() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    // An inf in rank 1's gradients before step 3's all-reduce: the averaged gradients hold it on
    // both ranks, both skip the step and halve the scale; a rank that stepped alone would be
    // caught by the parameter checksum at every step.
    let o = mpirun(2)
        .env(syncdiff_trainer::trainer::FAULT_INF_GRAD_ENV, "1:3")
        .args(base(ds, dir.path()))
        .args([
            "--set",
            "train.steps=6",
            "--set",
            "train.precision=fp16",
            "--set",
            "train.loss_scale.init_scale=1024",
            "--set",
            "dist.checksum_interval=1",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for (step, line) in [
        (2, "loss-scale 1024 (0 skipped)"),
        (3, "loss-scale 1024 (1 skipped)"),
        (4, "loss-scale 512 (0 skipped)"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("step {step}/6")) && l.contains(line)),
            "step {step}: no {line:?} in\n{out}"
        );
    }
}

#[test]
fn preflight_reports_every_rank_and_names_a_failed_check() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let ckpt = dir.path().join("ckpt");
    let o = mpirun(2)
        .args(base(ds, dir.path()))
        .args(["--preflight", "--set"])
        .arg(format!("checkpoint.url={}", ckpt.display()))
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for r in 0..2 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("[rank {r}/2] host ")))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.contains("device cpu")
                && line.contains("no GPU on this node")
                && line.contains("mpi all-reduce ok")
                && line.contains("dataset ok (4 clips"),
            "{line}"
        );
    }
    assert!(
        out.contains("writable") && out.contains("preflight passed on all 2 ranks"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(&ckpt).unwrap().count(), 0);

    // A checkpoint URL under a regular file cannot be written.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let o = mpirun(2)
        .args(base(ds, dir.path()))
        .args(["--preflight", "--set"])
        .arg(format!("checkpoint.url={}/ckpt", file.display()))
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains("error: [rank 0/2] preflight checkpoint: checkpoint.url")
            && err.contains("1 check(s) failed"),
        "{err}"
    );
}

#[test]
fn a_diverged_run_stops_within_the_limit_naming_step_loss_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let o = mpirun(2)
        .args(base(ds, dir.path()))
        .args([
            "--set",
            "train.lr=1e12",
            "--set",
            "train.steps=30",
            "--set",
            "checkpoint.interval=1",
            "--set",
            "checkpoint.keep_last=100",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    // Every rank stops at the same step, without an abort; rank 0 says why.
    assert!(!err.contains("aborting"), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("training diverged"))
        .unwrap_or_else(|| panic!("{out}\n{err}"));
    assert!(
        line.starts_with("error: [rank 0/2] training diverged: steps "),
        "{line}"
    );
    assert_eq!(err.matches("training diverged").count(), 1, "{err}");
    let steps: Vec<u64> = line
        .split("steps ")
        .nth(1)
        .unwrap()
        .split(" had ")
        .next()
        .unwrap()
        .split(" to ")
        .map(|s| s.parse().unwrap())
        .collect();
    let (first, last) = (steps[0], steps[1]);
    // train.max_nonfinite_steps is 3 by default: three skipped steps in a row, then the stop.
    assert_eq!(last - first + 1, 3, "{line}");
    assert!(last < 10, "{line}");
    assert!(out.contains(&format!("step {last}/30")), "{out}");
    assert!(!out.contains(&format!("step {}/30", last + 1)), "{out}");
    assert!(
        out.contains("step(s) skipped: non-finite loss or gradients"),
        "{out}"
    );
    assert!(line.contains("the last finite loss was "), "{line}");
    // The newest checkpoint is named, and the skipped steps did not move the model, AdamW or
    // the EMA: the checkpoints saved during them hold the tensors of the last update.
    let ckpt = dir.path().join("ckpt");
    let newest = ckpt.join(syncdiff_checkpoint::step_dir(last - 1));
    assert!(
        line.contains(&format!("resume from {}", newest.display())),
        "{line}"
    );
    let hashes = |step: u64| {
        let m = ckpt
            .join(syncdiff_checkpoint::step_dir(step))
            .join("manifest.json");
        common::tensor_hashes(&std::fs::read(m).unwrap())
    };
    assert!(first >= 2, "{line}");
    for s in first..last {
        assert_eq!(hashes(s), hashes(first - 1), "step {s}");
    }
    assert!(!ckpt.join(syncdiff_checkpoint::step_dir(last)).exists());
    // The job ended on its own: the writer lease is given back.
    assert!(!ckpt.join(syncdiff_checkpoint::LEASE).exists());
}
