//! Stopping and resuming `syncdiff-train` end to end: bit-identical resume on 2 ranks, resume
//! on 1 rank, a save killed mid-upload, and an S3 server restarted during a run.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{mpirun, rank_pids, repo, signal, text, MotoServer};

fn args(ds: &Path, ckpt: &str, logs: &Path, steps: u64) -> Vec<String> {
    [
        "--config",
        "configs/debug.yaml",
        "--set",
        &format!("data.dataset={}", ds.display()),
        "--set",
        &format!("checkpoint.url={ckpt}"),
        "--set",
        &format!("log.dir={}", logs.display()),
        "--set",
        &format!("train.steps={steps}"),
        "--set",
        "log.interval=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn train() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_syncdiff-train"));
    c.current_dir(repo());
    c
}

/// Lines of a child's stdout and stderr as they come.
pub(crate) fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns every line seen.
pub(crate) fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let start = Instant::now();
    loop {
        let left = Duration::from_secs(120).saturating_sub(start.elapsed());
        let l = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {needle:?}:\n{}", seen.join("\n")));
        let hit = l.contains(needle);
        seen.push(l);
        if hit {
            return;
        }
    }
}

fn manifest_hashes(dir: &Path) -> Vec<(String, String)> {
    common::tensor_hashes(&std::fs::read(dir.join("manifest.json")).unwrap())
}

const STEPS: u64 = 40;

/// Runs B (2 ranks straight through) and A (2 ranks, SIGUSR1 to rank 0 a few steps in, then
/// resumed to the end) with `extra` settings; returns A's and B's directories and the stop step,
/// after checking both end with the same model, EMA and optimizer. A copy of the stop
/// checkpoint is in `dir/kept`.
fn stop_resume_pair(dir: &Path, steps: u64, extra: &[&str]) -> (PathBuf, PathBuf, u64) {
    let ds = common::dataset();
    let logs = dir.join("runs");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let s = |p: &PathBuf| p.display().to_string();
    let sets: Vec<String> = extra
        .iter()
        .flat_map(|e| ["--set".to_string(), e.to_string()])
        .collect();

    // B: 2 ranks, straight through.
    let o = mpirun(2)
        .args(args(ds, &s(&b), &logs, steps))
        .args(&sets)
        .args(["--resume", "auto"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);

    // A: 2 ranks, SIGUSR1 to one rank a few steps in, then resumed to the end.
    let mut child = mpirun(2)
        .args(args(ds, &s(&a), &logs, steps))
        .args(&sets)
        .args(["--resume", "auto"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    wait_for(&rx, "step 3/", &mut seen);
    let pids = rank_pids(child.id());
    assert!(signal(pids[0].1, "-USR1"));
    assert!(child.wait().unwrap().success());
    seen.extend(rx.try_iter());
    let stopped = seen
        .iter()
        .find(|l| l.contains("stopped on request after"))
        .unwrap_or_else(|| panic!("{}", seen.join("\n")));
    let k: u64 = stopped
        .split("after ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(k < steps, "{stopped}");
    let stop_dir = a.join(format!("step-{k:09}"));
    assert!(stop_dir.join("manifest.json").exists());
    let kept = dir.join("kept");
    std::fs::create_dir_all(kept.join(format!("step-{k:09}"))).unwrap();
    for f in std::fs::read_dir(&stop_dir).unwrap() {
        let f = f.unwrap();
        std::fs::copy(
            f.path(),
            kept.join(format!("step-{k:09}")).join(f.file_name()),
        )
        .unwrap();
    }
    let o = mpirun(2)
        .args(args(ds, &s(&a), &logs, steps))
        .args(&sets)
        .args(["--resume", "auto"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!(" from {}/step-{k:09} at step {k}", s(&a))),
        "{out}"
    );

    let end = format!("step-{steps:09}");
    let (ha, hb) = (
        manifest_hashes(&a.join(&end)),
        manifest_hashes(&b.join(&end)),
    );
    assert_eq!(ha.len(), 3, "{ha:?}");
    assert_eq!(
        ha, hb,
        "model, EMA and optimizer differ after stop + resume at step {k} ({extra:?})"
    );
    (a, b, k)
}

#[test]
fn a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let logs = dir.path().join("runs");
    let c = dir.path().join("c");
    let s = |p: &PathBuf| p.display().to_string();
    let kept = dir.path().join("kept");
    let (_, b, k) = stop_resume_pair(dir.path(), STEPS, &[]);
    let end = format!("step-{STEPS:09}");
    let hb = manifest_hashes(&b.join(&end));

    // C: the same stop point resumed on 1 rank with the same global batch as two micro-batches
    // (the same samples as the two ranks' micro-batches) and the same intra-op threads as each
    // rank had: gradients accumulate as g0/2 + g1/2 exactly as the all-reduce sums them, so even
    // this is bit-identical. (With 2 threads instead, kernels reduce in another order; AdamW
    // amplifies those last-bit differences on parameters whose gradients are near zero.)
    // Resumed from a copy: retention removed the stop checkpoint from A's directory since.
    let o = train()
        .args(args(ds, &s(&c), &logs, STEPS))
        .args(["--resume", &format!("{}/step-{k:09}", s(&kept))])
        .args([
            "--set",
            "train.max_micro_batch=2",
            "--set",
            "dist.cpu_threads=1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let read = |d: &Path, f: &str| {
        let mut v = tch::Tensor::read_safetensors(d.join(&end).join(f)).unwrap();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let mut worst = 0.0f64;
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        for ((n1, t1), (n2, t2)) in read(&c, f).iter().zip(read(&b, f).iter()) {
            assert_eq!(n1, n2);
            if t1.is_floating_point() {
                let d = f64::try_from((t1 - t2).abs().max()).unwrap();
                let scale = f64::try_from(t2.abs().max()).unwrap().max(1e-3);
                worst = worst.max(d / scale);
            } else {
                assert!(t1.equal(t2), "{f} {n1}");
            }
        }
    }
    println!("1-rank resume vs 2-rank run: max relative difference {worst:.3e}");
    assert_eq!(worst, 0.0);
    assert_eq!(manifest_hashes(&c.join(&end)), hb);
}

/// The fp16 loss scale a checkpoint's trainer_state.json holds.
fn loss_scale(step_dir: &Path) -> serde_json::Value {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(step_dir.join("trainer_state.json")).unwrap())
            .unwrap();
    state["loss_scale"].clone()
}

#[test]
fn bf16_and_fp16_runs_stopped_and_resumed_end_bit_identical_and_fp16_resumes_its_scale() {
    let steps = 15;
    let end = format!("step-{steps:09}");
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = stop_resume_pair(dir.path(), steps, &["train.precision=bf16"]);
    assert_eq!(loss_scale(&a.join(&end)), serde_json::Value::Null);

    // fp16 with a scale that grows every 2 steps: a resume that lost the scaler's state would
    // end at another scale (scaling by powers of two alone would not change the parameters).
    let dir = tempfile::tempdir().unwrap();
    let fp16 = [
        "train.precision=fp16",
        "train.loss_scale.init_scale=4",
        "train.loss_scale.growth_interval=2",
    ];
    let (a, b, k) = stop_resume_pair(dir.path(), steps, &fp16);
    let (sa, sb) = (loss_scale(&a.join(&end)), loss_scale(&b.join(&end)));
    println!("fp16 loss scale at step {steps}: stopped at {k} and resumed {sa}, straight {sb}");
    assert_eq!(sa, sb);
    assert!(sb["scale"].as_f64().unwrap() > 4.0, "{sb}");
}

#[test]
#[cfg(feature = "fault-injection")]
fn a_save_killed_mid_upload_leaves_the_previous_checkpoint_for_auto() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let ckpt = dir.path().join("ckpt").display().to_string();
    let logs = dir.path().join("runs");
    let o = train()
        .env(
            syncdiff_checkpoint::FAULT_KILL_AFTER_ENV,
            "model.safetensors@4",
        )
        .args(args(ds, &ckpt, &logs, 8))
        .args(["--set", "checkpoint.interval=2", "--resume", "auto"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = train()
        .args(args(ds, &ckpt, &logs, 8))
        .args(["--set", "checkpoint.interval=2", "--resume", "auto"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("step-000000004: no manifest (an unfinished save)"),
        "{err}"
    );
    assert!(
        out.contains(&format!(" from {ckpt}/step-000000002 at step 2")),
        "{out}"
    );
}

#[test]
fn an_s3_server_restarted_during_a_run_does_not_lose_it_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let logs = dir.path().join("runs");
    let mut moto = MotoServer::start();
    moto.create_bucket("runs");
    let env = moto.env();
    let secret = env
        .iter()
        .find(|(k, _)| *k == "AWS_SECRET_ACCESS_KEY")
        .unwrap()
        .1
        .clone();
    let url = "s3://runs/debug";
    let mut child = train()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args(ds, url, &logs, 1_000_000))
        .args([
            "--set",
            "checkpoint.interval=20",
            "--set",
            "checkpoint.retries=3",
        ])
        .args([
            "--set",
            "checkpoint.retry_backoff_s=0.5",
            "--resume",
            "never",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    wait_for(&rx, "checkpoint step 20 saved", &mut seen);
    moto.stop();
    wait_for(&rx, "attempt 1/3 failed", &mut seen);
    let port = moto.port;
    let moto = MotoServer::start_on(port);
    moto.create_bucket("runs");
    let restarted = seen.len();
    // A save that starts after the restart succeeds.
    loop {
        wait_for(&rx, "saved to s3://runs/debug/", &mut seen);
        if seen[restarted..]
            .iter()
            .filter(|l| l.contains("saved to s3://"))
            .count()
            >= 2
        {
            break;
        }
    }
    assert!(signal(child.id(), "-USR1"));
    let status = child.wait().unwrap();
    seen.extend(rx.try_iter());
    let all = seen.join("\n");
    assert!(status.success(), "{all}");
    // The run resumes from the restarted server at the step it stopped.
    let stopped: u64 = all
        .split("stopped on request after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let o = train()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args(ds, url, &logs, stopped + 1))
        .args(["--resume", "auto"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(out.contains(" from s3://runs/debug/step-"), "{out}\n{err}");
    for text in [&all, &out, &err] {
        assert!(!text.contains(&secret), "secret in output");
    }
}

#[test]
fn ckpt_list_inspect_and_export_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let ckpt = dir.path().join("ckpt");
    let url = ckpt.display().to_string();
    let o = train()
        .args(args(ds, &url, &dir.path().join("runs"), 4))
        .args(["--set", "checkpoint.interval=2", "--resume", "never"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    let tool = |a: &[&str]| {
        Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
            .current_dir(repo())
            .args(a)
            .output()
            .unwrap()
    };
    let (out, _) = text(&tool(&["ckpt", "list", &url]));
    assert!(
        out.contains("step-000000002") && out.contains("step-000000004"),
        "{out}"
    );
    assert!(
        out.contains(&format!("--resume auto would use {url}/step-000000004")),
        "{out}"
    );
    let step4 = format!("{url}/step-000000004");
    let (out, _) = text(&tool(&[
        "ckpt",
        "inspect",
        &step4,
        "--config",
        "configs/debug.yaml",
        "--set",
        "model.unet.model_channels=32",
    ]));
    assert!(
        out.contains("valid (every file's size and sha256 verified)"),
        "{out}"
    );
    assert!(
        out.contains("cannot resume it: model.unet.model_channels is 32"),
        "{out}"
    );

    let bundle = dir.path().join("bundle");
    let o = tool(&["ckpt", "export", &step4, "--out", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    let cfg = syncdiff_model::config::Config::load(&bundle.join("config.yaml"), &[]).unwrap();
    assert!(!cfg.to_yaml().contains(dir.path().to_str().unwrap()));
    let w: std::collections::BTreeMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(bundle.join("weights.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let ema: std::collections::BTreeMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(ckpt.join("step-000000004/ema.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let model: std::collections::BTreeMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(ckpt.join("step-000000004/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(w.len(), model.len());
    for (name, t) in &ema {
        if name != "ema_updates" {
            assert!(w[name].equal(t), "{name} is not the EMA weight");
        }
    }

    // A flipped byte: inspect fails naming the file.
    let f = ckpt.join("step-000000004/optimizer.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let o = tool(&["ckpt", "inspect", &step4]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("step-000000004/optimizer.safetensors is damaged"),
        "{err}"
    );
}

fn valid_steps(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort();
    steps
}

fn run_of(step_dir: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(step_dir.join("manifest.json")).unwrap()).unwrap();
    m["run"].as_str().unwrap().to_string()
}

#[test]
fn a_run_never_deletes_or_mixes_with_checkpoints_it_did_not_continue() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let logs = dir.path().join("runs");
    let ckpt = dir.path().join("ckpt");
    let url = ckpt.display().to_string();
    let run = |steps: u64, extra: &[&str]| {
        train()
            .args(args(ds, &url, &logs, steps))
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(
        20,
        &[
            "--set",
            "checkpoint.interval=5",
            "--set",
            "checkpoint.keep_last=3",
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(valid_steps(&ckpt), vec![10, 15, 20]);
    let first_run = run_of(&ckpt.join("step-000000010"));
    let after_20 = manifest_hashes(&ckpt.join("step-000000020"));

    // Continuing from an older step, or starting fresh, into this URL is refused, and nothing
    // is deleted (before: every new save and then step 10 were deleted, exit 0).
    let older = format!("{url}/step-000000010");
    let tight = [
        "--set",
        "checkpoint.interval=1",
        "--set",
        "checkpoint.keep_last=2",
    ];
    for resume in [older.as_str(), "never"] {
        let o = run(25, &[&["--resume", resume][..], &tight[..]].concat());
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("step-000000015") && err.contains("step-000000020"),
            "{err}"
        );
        assert!(err.contains("--move-aside"), "{err}");
        assert_eq!(valid_steps(&ckpt), vec![10, 15, 20], "{resume}: {err}");
    }
    assert_eq!(manifest_hashes(&ckpt.join("step-000000020")), after_20);

    // Rolling back on purpose: the newer checkpoints move aside (still valid), the run goes on
    // from step 10 as the same run, and retention keeps its newest saves.
    let o = run(
        14,
        &[
            &["--resume", older.as_str(), "--move-aside"][..],
            &tight[..],
        ]
        .concat(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("moved 2 checkpoint(s) out of the way"),
        "{err}"
    );
    assert!(
        out.contains(&format!("resumed {first_run} from {older} at step 10")),
        "{out}"
    );
    assert_eq!(valid_steps(&ckpt), vec![13, 14]);
    assert_eq!(run_of(&ckpt.join("step-000000014")), first_run);
    let aside: Vec<PathBuf> = std::fs::read_dir(ckpt.join("set-aside"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(valid_steps(&aside[0]), vec![15, 20]);
    assert_eq!(manifest_hashes(&aside[0].join("step-000000020")), after_20);

    // `auto` continues the newest (not the set-aside step 20).
    let o = run(15, &tight);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!("from {url}/step-000000014 at step 14")),
        "{out}"
    );
    assert_eq!(valid_steps(&ckpt), vec![14, 15]);

    // Every checkpoint damaged: `auto` refuses to start fresh among them (before: a fresh run
    // whose saves retention then deleted).
    for s in [14, 15] {
        let f = ckpt.join(format!("step-{s:09}/model.safetensors"));
        let mut bytes = std::fs::read(&f).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x10;
        std::fs::write(&f, bytes).unwrap();
    }
    let o = run(18, &tight);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no checkpoint under") && err.contains("verifies"),
        "{err}"
    );
    assert_eq!(valid_steps(&ckpt), vec![14, 15]);
}
