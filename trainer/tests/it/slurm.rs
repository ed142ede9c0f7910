//! The project's SLURM scripts under a real one-machine SLURM (`ci/slurm-local.sh`: munged,
//! slurmctld, slurmd from Debian's slurm-wlm), checkpoints on a real S3 server (moto):
//! `sbatch` trains; `scancel --batch --signal=USR1` and the `--signal=B:USR1@N` time limit stop all
//! ranks after one step, save, exit 0 and requeue, and the requeued job resumes (bit-identical to
//! an uninterrupted run); a rank killed with SIGKILL fails the job without a requeue and leaves a
//! valid checkpoint; job arrays of `syncdiff-dataprep` and `syncdiff generate` give what one
//! process gives.
//!
//! The GPU scripts run as they are, with the GPU-specific numbers overridden on the command line
//! (`--gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1`), as docs/cluster.md shows for a
//! CPU partition. One cluster per test process, started by the first test that needs it and
//! stopped at exit; its jobs run one test at a time (the node has this machine's CPUs).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{text, MotoServer};
use syncdiff_devkit::slurm::{cluster, wait_for_text};

/// Arguments that make a GPU script run here: 2 tasks of 1 CPU on the one node, no GPUs.
fn cpu(extra: &[&str]) -> Vec<String> {
    [
        "--gpus-per-node=0",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// The trainer's `--set` overrides for the debug run these tests submit.
fn train_sets(ds: &Path, url: &str, logs: &Path, steps: u64, interval: u64) -> Vec<String> {
    [
        format!("data.dataset={}", ds.display()),
        format!("checkpoint.url={url}"),
        format!("log.dir={}", logs.display()),
        format!("train.steps={steps}"),
        format!("checkpoint.interval={interval}"),
        "log.interval=1".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

/// Environment for a training job: the debug config, the test binaries, the S3 server.
fn job_env(moto: &MotoServer, preflight: bool) -> Vec<(&'static str, String)> {
    let bin = Path::new(env!("CARGO_BIN_EXE_syncdiff-train"));
    let mut env = moto.env();
    env.push(("CONFIG", "configs/debug.yaml".into()));
    env.push(("SYNCDIFF_BIN", bin.parent().unwrap().display().to_string()));
    env.push(("SKIP_PREFLIGHT", if preflight { "0" } else { "1" }.into()));
    env
}

/// The sha256 of every `.safetensors` file of `step` in the S3 run `url`, from its manifest.
fn s3_hashes(moto: &MotoServer, url: &str, step: u64) -> Vec<(String, String)> {
    let store = syncdiff_checkpoint::Store::open_with_options(
        url,
        syncdiff_checkpoint::Retry {
            attempts: 2,
            backoff: Duration::from_millis(100),
        },
        &moto.options(),
    )
    .unwrap();
    let m = store
        .get_bytes(&format!("step-{step:09}/manifest.json"))
        .unwrap();
    let mut v = common::tensor_hashes(&m);
    v.sort();
    v
}

/// The step in "stopped on request after K steps".
fn stopped_at(log: &str) -> u64 {
    log.split("stopped on request after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no stop line:\n{log}"))
}

const STEPS: u64 = 200;

#[test]
fn sbatch_trains_and_a_batch_usr1_stops_requeues_and_resumes_bit_identical() {
    let Some(slurm) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let moto = MotoServer::start();
    moto.create_bucket("runs");
    let logs = dir.path().join("runs");
    let script = "launch/slurm-1node-6gpu.sbatch".to_string();

    // B: straight through (with the preflight checks, as a site runs it).
    let out_b = dir.path().join("b.out");
    let mut args = cpu(&["--wait", "--time=10"]);
    args.push(format!("--output={}", out_b.display()));
    args.push(script.clone());
    args.extend(train_sets(ds, "s3://runs/b", &logs, STEPS, 50));
    let b = slurm.sbatch(&args, &job_env(&moto, true));
    let log_b = std::fs::read_to_string(&out_b).unwrap();
    assert_eq!(slurm.job(b)["JobState"], "COMPLETED", "{log_b}");
    assert!(log_b.contains("[preflight] all checks passed"), "{log_b}");
    assert!(log_b.contains("srun --mpi=pmix"), "{log_b}");
    assert!(
        log_b.contains(&format!("finished after {STEPS} steps")),
        "{log_b}"
    );

    // A: the same, stopped by `scancel --batch --signal=USR1` a few steps in.
    let out_a = dir.path().join("a.out");
    let mut args = cpu(&["--time=10"]);
    args.push(format!("--output={}", out_a.display()));
    args.push(script);
    args.extend(train_sets(ds, "s3://runs/a", &logs, STEPS, 50));
    let a = slurm.sbatch(&args, &job_env(&moto, false));
    wait_for_text(&out_a, &format!("step 3/{STEPS}"), Duration::from_secs(120));
    let o = slurm
        .cmd("scancel")
        .args(["--batch", "--signal=USR1", &a.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let log = wait_for_text(&out_a, "requeueing job", Duration::from_secs(60));
    let k = stopped_at(&log);
    assert!(k < STEPS, "{log}");
    assert!(
        log.contains(&format!("checkpoint step {k} saved to s3://runs/a/")),
        "{log}"
    );
    // The requeued job (restart 1) resumes from that checkpoint and finishes.
    let j = slurm.wait_state(
        a,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(180),
    );
    let log = std::fs::read_to_string(&out_a).unwrap();
    assert_eq!(j["JobState"], "COMPLETED", "{log}");
    assert_eq!(j["Restarts"], "1", "{log}");
    assert!(log.contains("(restart 1)"), "{log}");
    assert!(
        log.contains(&format!(" from s3://runs/a/step-{k:09} at step {k}")),
        "{log}"
    );
    let (ha, hb) = (
        s3_hashes(&moto, "s3://runs/a", STEPS),
        s3_hashes(&moto, "s3://runs/b", STEPS),
    );
    assert_eq!(ha.len(), 3, "{ha:?}");
    assert_eq!(
        ha, hb,
        "model, EMA and optimizer differ after requeue at step {k}"
    );
}

#[test]
fn the_time_limit_signal_stops_saves_and_requeues_and_the_requeued_job_resumes() {
    let Some(slurm) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("runs");
    let out = dir.path().join("t.out");
    // --time=1 with B:USR1@15: SLURM checks limits every 30 s and signals once at most 15 + 30 s
    // remain, i.e. 15 to 45 s after the start. The run has more steps than it can take by then.
    let mut args = cpu(&["--time=1", "--signal=B:USR1@15"]);
    args.push(format!("--output={}", out.display()));
    args.push("launch/slurm-1node-6gpu.sbatch".into());
    let logs = dir.path().join("runs");
    args.extend(train_sets(
        common::dataset(),
        "s3://runs/t",
        &logs,
        1_000_000,
        100_000,
    ));
    let t0 = std::time::Instant::now();
    let id = slurm.sbatch(&args, &job_env(&moto, false));
    let log = wait_for_text(&out, "requeueing job", Duration::from_secs(90));
    let after = t0.elapsed();
    assert!(
        log.contains("SIGUSR1 (time limit near): forwarded to the ranks"),
        "{log}"
    );
    let k = stopped_at(&log);
    assert!(
        log.contains(&format!("checkpoint step {k} saved to s3://runs/t/")),
        "{log}"
    );
    println!("time-limit signal: stopped after step {k}, {after:.0?} after submission");
    let log = wait_for_text(
        &out,
        &format!(" from s3://runs/t/step-{k:09} at step {k}"),
        Duration::from_secs(90),
    );
    assert!(log.contains("(restart 1)"), "{log}");
    assert_eq!(slurm.job(id)["Restarts"], "1");
    let o = slurm.cmd("scancel").arg(id.to_string()).output().unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    slurm.wait_state(
        id,
        &["CANCELLED", "COMPLETED", "FAILED"],
        Duration::from_secs(60),
    );
    // The state saved at the signal is the state of an uninterrupted run of k steps (constant
    // learning rate: nothing depends on train.steps); resuming from such a state is bit-identical
    // (the batch-signal test above).
    let local = dir.path().join("k-steps");
    let o = common::mpirun(2)
        .args(["--config", "configs/debug.yaml", "--resume", "never"])
        .args(train_sets(
            common::dataset(),
            &local.display().to_string(),
            &logs,
            k,
            100_000,
        ))
        .args(["--set", "dist.cpu_threads=1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let mut uninterrupted = common::tensor_hashes(
        &std::fs::read(local.join(format!("step-{k:09}/manifest.json"))).unwrap(),
    );
    uninterrupted.sort();
    assert_eq!(
        s3_hashes(&moto, "s3://runs/t", k),
        uninterrupted,
        "the state saved at the time-limit signal (step {k}) differs from {k} uninterrupted steps"
    );
}

/// (SLURM_PROCID, pid) of the job's rank processes.
fn job_ranks(job: u64) -> Vec<(u32, u32)> {
    let o = std::process::Command::new("pgrep")
        .args(["-x", "syncdiff-train"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|p| {
            let pid: u32 = p.parse().ok()?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<&str> = env
                .split(|&b| b == 0)
                .filter_map(|v| std::str::from_utf8(v).ok())
                .collect();
            let get = |k: &str| vars.iter().find_map(|v| v.strip_prefix(k));
            (get("SLURM_JOB_ID=")? == job.to_string()).then_some(())?;
            Some((get("SLURM_PROCID=")?.parse().ok()?, pid))
        })
        .collect()
}

#[test]
fn a_rank_killed_with_sigkill_fails_the_job_without_requeue_and_keeps_a_valid_checkpoint() {
    let Some(slurm) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("runs");
    let out = dir.path().join("k.out");
    let mut args = cpu(&["--time=10"]);
    args.push(format!("--output={}", out.display()));
    args.push("launch/slurm-1node-6gpu.sbatch".into());
    let logs = dir.path().join("runs");
    let ds = common::dataset();
    args.extend(train_sets(ds, "s3://runs/k", &logs, 1_000_000, 20));
    let id = slurm.sbatch(&args, &job_env(&moto, false));
    wait_for_text(&out, "checkpoint step 40 saved", Duration::from_secs(120));
    let ranks = job_ranks(id);
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    let (_, pid) = ranks.iter().find(|(r, _)| *r == 1).copied().unwrap();
    let t0 = std::time::Instant::now();
    assert!(common::signal(pid, "-KILL"));
    let j = slurm.wait_state(
        id,
        &["FAILED", "COMPLETED", "CANCELLED", "PENDING"],
        Duration::from_secs(30),
    );
    let ended = t0.elapsed();
    let log = std::fs::read_to_string(&out).unwrap();
    println!("SIGKILL of rank 1: job {} after {ended:.1?}", j["JobState"]);
    assert_eq!(j["JobState"], "FAILED", "{log}");
    assert_eq!(j["Restarts"], "0", "{log}");
    assert!(log.contains("not requeueing"), "{log}");
    assert!(job_ranks(id).is_empty(), "rank processes left behind");
    // `--resume auto` continues from the newest valid checkpoint: the last one the log reports
    // saved, or one the kill interrupted after its manifest (never a partial one).
    let last: u64 = log
        .rsplit("checkpoint step ")
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(last >= 40, "{log}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_syncdiff-train"))
        .current_dir(common::repo())
        .envs(moto.env().iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--config", "configs/debug.yaml", "--resume", "auto"])
        .args(train_sets(ds, "s3://runs/k", &logs, last + 41, 20))
        .output()
        .unwrap();
    let (so, se) = text(&o);
    assert!(o.status.success(), "{se}");
    let from: u64 = so
        .split(" from s3://runs/k/step-")
        .nth(1)
        .and_then(|s| s.split(" at step ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{so}\n{se}"));
    assert!(
        from >= last && from % 20 == 0,
        "resumed at {from}, last saved {last}"
    );
}

#[test]
fn a_generate_job_array_gives_what_one_process_gives() {
    let Some(slurm) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = crate::generate::bundle(dir.path(), 20);
    let root = common::synthetic();
    let clip = |id: &str| {
        root.join("main")
            .join(format!("{id}.mp4"))
            .display()
            .to_string()
    };
    let pairs = [
        ("spk00/00001", "spk01/00001", "x.mp4"),
        ("spk01/00001", "spk00/00002", "y.mp4"),
    ];
    let list = |out: &Path| -> String {
        pairs
            .iter()
            .map(|(v, a, o)| format!("{} {} {}\n", clip(v), clip(a), out.join(o).display()))
            .collect()
    };
    let (one, arr) = (dir.path().join("one"), dir.path().join("arr"));
    std::fs::write(dir.path().join("one.txt"), list(&one)).unwrap();
    std::fs::write(dir.path().join("arr.txt"), list(&arr)).unwrap();
    let m = model.display().to_string();
    let o = crate::generate::syncdiff(&[
        "generate",
        "--checkpoint",
        &m,
        "--list",
        &dir.path().join("one.txt").display().to_string(),
        "--batch",
        "1",
        "--threads",
        "1",
    ]);
    let (so, se) = text(&o);
    assert!(o.status.success(), "{se}");
    assert!(so.contains(" 1 libtorch thread(s))"), "{so}");
    let bin = syncdiff_devkit::workspace_bin("syncdiff")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let mut args: Vec<String> = [
        "--wait",
        "--array=0-1",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--output={}/gen-%a.out", dir.path().display()));
    args.push("launch/slurm-array.sbatch".into());
    args.extend(
        ["syncdiff", "generate", "--checkpoint", &m, "--list"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.push(dir.path().join("arr.txt").display().to_string());
    // One clip per UNet call and one libtorch thread on both sides: a batch of other clips, or
    // another thread count, changes the float results in the last bits (the batched-vs-single
    // test in generate.rs bounds that difference), enough to move a pixel of the mp4 by one.
    args.extend(["--batch", "1", "--threads", "1"].map(String::from));
    slurm.sbatch(&args, &[("SYNCDIFF_BIN", bin)]);
    let logs: Vec<String> = (0..2)
        .map(|i| std::fs::read_to_string(dir.path().join(format!("gen-{i}.out"))).unwrap())
        .collect();
    // Task 0 took line 1, task 1 line 2, as ranks 0 and 1 of 2 would.
    assert!(logs[0].contains("rank 0/2: 1 clip(s)"), "{}", logs[0]);
    assert!(logs[1].contains("rank 1/2: 1 clip(s)"), "{}", logs[1]);
    for log in &logs {
        assert!(log.contains(" 1 libtorch thread(s))"), "{log}");
    }
    for (_, _, name) in pairs {
        let a = syncdiff_dataprep::video::decode_frames(&arr.join(name), 160, 160).unwrap();
        let b = syncdiff_dataprep::video::decode_frames(&one.join(name), 160, 160).unwrap();
        assert!(
            a == b,
            "{name}: the array task's frames differ from one process's"
        );
    }
}
