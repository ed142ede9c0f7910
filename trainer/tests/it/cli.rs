//! The binaries as a user runs them: exit codes, one-line errors, `mpirun` dry runs.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{mpirun, rank_pids, repo, signal, text};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn train() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_syncdiff-train"));
    c.current_dir(repo());
    c
}

/// A user error: exit code 2, exactly one line on stderr, no panic.
fn assert_user_error(o: &Output, starts: &str) {
    let (_, err) = text(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(starts), "{err}");
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("x.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn dry_run_reports_the_plan() {
    let o = train()
        .args(["--config", "configs/debug.yaml", "--dry-run"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("[rank 0/1] batch: global 4 = 1 ranks x 4 per rank"),
        "{out}"
    );
    assert!(out.contains("run length: 10 optimizer steps"), "{out}");
    assert!(out.contains("device cpu, backend mpi"), "{out}");
    assert!(out.contains("MPI all-reduce check: ok"), "{out}");
    assert!(
        out.contains("parameters: unet 254083 (trainable), pose bottleneck 4 (trainable)"),
        "{out}"
    );
}

/// "~1.23 GiB" or "~456.7 MiB" after `key` in `line`, in MiB.
fn mib_after(line: &str, key: &str) -> f64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line}"))
        + key.len()..];
    let mut words = rest.trim_start_matches('~').split([' ', ')', ',']);
    let n: f64 = words.next().unwrap().parse().unwrap();
    match words.next().unwrap() {
        "GiB" => n * 1024.0,
        "MiB" => n,
        u => panic!("unit {u} in {line}"),
    }
}

#[test]
fn dry_run_estimates_memory_per_precision_at_the_paper_configuration() {
    let run = |precision: &str| {
        let o = train()
            .args(["--config", "configs/syncdiff-lrs2.yaml", "--dry-run"])
            .args(["--set", &format!("train.precision={precision}")])
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let line = |key: &str| {
            out.lines()
                .find(|l| l.contains(key))
                .unwrap_or_else(|| panic!("no {key:?} in {out}"))
                .to_string()
        };
        (
            line("memory estimate per rank"),
            line("parameter + optimizer bytes"),
        )
    };
    let (fp32, state32) = run("fp32");
    let (bf16, state16) = run("bf16");
    println!("{fp32}\n{bf16}\n{state16}");
    // Master weights, gradients, AdamW and EMA stay float32 under autocast.
    assert_eq!(state32, state16);
    assert!(bf16.contains("bf16 autocast; fp32 would be") && bf16.contains("bf16 weight copies"));
    let total = |l: &str| mib_after(l, "= ");
    assert_eq!(mib_after(&bf16, "fp32 would be "), total(&fp32));
    let (a32, a16) = (
        mib_after(&fp32, "activations "),
        mib_after(&bf16, "activations "),
    );
    assert!(
        (a16 / a32 - 0.5).abs() < 0.01,
        "bf16 activations {a16} vs fp32 {a32}"
    );
    assert!(total(&bf16) < total(&fp32), "{bf16}");
}

#[test]
fn dry_run_under_mpirun_reports_every_rank() {
    let o = mpirun(2)
        .args(["--config", "configs/syncdiff-lrs2.yaml", "--dry-run"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("[rank 0/2] host "), "{out}");
    assert!(out.contains("[rank 1/2] host "), "{out}");
    assert!(out.contains("node-local rank 1/2"), "{out}");
    assert!(
        out.contains("batch: global 48 = 2 ranks x 24 per rank"),
        "{out}"
    );
    assert!(
        out.contains("190800 optimizer steps = 200 epochs x 954 steps"),
        "{out}"
    );
    assert!(
        out.contains("MPI all-reduce check: ok (1024 x f64 summed over 2 ranks)"),
        "{out}"
    );
}

#[test]
fn indivisible_global_batch_fails_under_mpirun() {
    let o = mpirun(2)
        .args([
            "--config",
            "configs/debug.yaml",
            "--dry-run",
            "--set",
            "train.global_batch=3",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    // A configuration error (exit 2, as docs/configuration.md says), said once (by rank 0).
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains("train.global_batch: 3 samples cannot be split evenly over 2 ranks"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Training (not only the dry run) stops the same way, before touching data or checkpoints.
    let o = mpirun(2)
        .args([
            "--config",
            "configs/debug.yaml",
            "--set",
            "train.global_batch=3",
        ])
        .args([
            "--set",
            "data.dataset=/nonexistent",
            "--set",
            "checkpoint.url=/nonexistent/ckpt",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(err.contains("cannot be split evenly over 2 ranks"), "{err}");
    assert!(!Path::new("/nonexistent").exists());
}

#[test]
fn unknown_key_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        dir.path(),
        "extends: CONFIGS/debug.yaml\ntrain:\n  sead: 1\n"
            .replace("CONFIGS", &repo().join("configs").display().to_string())
            .as_str(),
    );
    let o = train()
        .arg("--config")
        .arg(&p)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_user_error(
        &o,
        &format!("error: {}: train.sead: unknown field `sead`", p.display()),
    );
}

#[test]
fn wrong_type_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), "model:\n  unet:\n    channel_mult: wide\n");
    let o = train()
        .arg("--config")
        .arg(&p)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_user_error(
        &o,
        &format!(
            "error: {}: model.unet.channel_mult: expected a list of integers",
            p.display()
        ),
    );
}

#[test]
fn bad_set_is_a_one_line_error() {
    let o = train()
        .args([
            "--config",
            "configs/debug.yaml",
            "--dry-run",
            "--set",
            "train.global_batch=lots",
        ])
        .output()
        .unwrap();
    assert_user_error(
        &o,
        "error: --set train.global_batch=lots: train.global_batch: invalid type",
    );
    let o = train()
        .args([
            "--config",
            "configs/debug.yaml",
            "--set",
            "train.global_batch",
        ])
        .output()
        .unwrap();
    assert_user_error(
        &o,
        "error: --set train.global_batch: expected key.path=value",
    );
}

#[test]
fn missing_file_and_bad_yaml_are_one_line_errors() {
    let o = train()
        .args(["--config", "configs/nope.yaml", "--dry-run"])
        .output()
        .unwrap();
    assert_user_error(
        &o,
        "error: configs/nope.yaml: cannot read the configuration",
    );
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), "train: [1, 2\n");
    let o = train().arg("--config").arg(&p).output().unwrap();
    assert_user_error(&o, &format!("error: {}: ", p.display()));
}

#[test]
fn print_config_shows_overrides_and_reloads() {
    let o = train()
        .args([
            "--config",
            "configs/debug.yaml",
            "--set",
            "train.seed=7",
            "--print-config",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("seed: 7"), "{out}");
    assert!(out.contains("#   model.unet.in_channels: 10"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), &out);
    let o = Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
        .arg("config")
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0, out);
}

#[test]
fn two_ranks_train_validate_and_log_to_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let val = common::val_dataset();
    let logs = dir.path().join("runs");
    let set = |k: &str, v: &Path| format!("{k}={}", v.display());
    let o = mpirun(2)
        .args([
            "--config",
            "configs/debug.yaml",
            "--resume",
            "never",
            "--set",
        ])
        .arg(set("data.dataset", ds))
        .arg("--set")
        .arg(set("data.val_dataset", val))
        .arg("--set")
        .arg(set("log.dir", &logs))
        .arg("--set")
        .arg(set("checkpoint.url", &dir.path().join("ckpt")))
        .args([
            "--set",
            "train.steps=6",
            "--set",
            "log.interval=2",
            "--set",
            "log.val_interval=3",
            "--set",
            "log.image_interval=6",
            "--set",
            "dist.checksum_interval=3",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("[rank 0/2] step 6/6 loss"), "{out}");
    assert!(out.contains("all-reduce"), "{out}");
    assert!(
        out.contains("[rank 0/2] val step 3: loss true-audio ")
            && out.contains("[rank 0/2] val step 6: loss true-audio "),
        "{out}"
    );
    assert!(out.contains("finished after 6 steps"), "{out}");
    // Read back with TensorBoard itself.
    let script = "import sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\nacc = EventAccumulator(sys.argv[1], size_guidance={'images': 0}); acc.Reload()\nfor tag in sorted(acc.Tags()['scalars']):\n    print(tag, [e.step for e in acc.Scalars(tag)])\nfor tag in acc.Tags()['images']:\n    print(tag, [(e.step, e.width, e.height) for e in acc.Images(tag)])\n";
    let o = common::python()
        .arg("-c")
        .arg(script)
        .arg(&logs)
        .output()
        .unwrap();
    let (tags, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for want in [
        "train/loss [2, 4, 6]",
        "train/lr [2, 4, 6]",
        "train/grad_norm [2, 4, 6]",
        "train/samples_per_s [2, 4, 6]",
        "time/data_wait_s [2, 4, 6]",
        "time/all_reduce_s [2, 4, 6]",
        "time/all_reduce_share [2, 4, 6]",
        "val/loss_true_audio [3, 6]",
        "val/loss_other_audio [3, 6]",
        "val/audio_gap [3, 6]",
        // 4 rows (truth, masked, true audio, other audio) x 2 val samples of 32 x 32 pixels.
        "val/frames [(6, 66, 134)]",
    ] {
        assert!(tags.contains(want), "{want} not in\n{tags}");
    }
}

#[test]
fn a_missing_or_malformed_resume_url_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let ckpt = dir.path().join("ckpt");
    for (resume, want) in [
        (
            format!("{}/step-000000007", ckpt.display()),
            format!(
                "resume: {}/step-000000007: no such checkpoint",
                ckpt.display()
            ),
        ),
        (
            "s3://bucket/run".to_string(),
            "--resume URL must end in /step-NNNNNNNNN".to_string(),
        ),
    ] {
        let o = train()
            .args([
                "--config",
                "configs/debug.yaml",
                "--resume",
                &resume,
                "--set",
            ])
            .arg(format!("data.dataset={}", ds.display()))
            .arg("--set")
            .arg(format!("checkpoint.url={}", ckpt.display()))
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(&want), "{err}");
    }
}

#[test]
fn sigusr1_to_one_rank_stops_all_ranks_after_the_same_step() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let mut child = mpirun(2)
        .args([
            "--config",
            "configs/debug.yaml",
            "--resume",
            "never",
            "--set",
        ])
        .arg(format!("data.dataset={}", ds.display()))
        .arg("--set")
        .arg(format!("log.dir={}", dir.path().join("runs").display()))
        .arg("--set")
        .arg(format!(
            "checkpoint.url={}",
            dir.path().join("ckpt").display()
        ))
        .args(["--set", "train.steps=100000", "--set", "log.interval=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for training to be under way, then signal rank 1 only.
    for line in lines.by_ref() {
        if line.unwrap().contains("step 3/") {
            break;
        }
    }
    let pids = rank_pids(child.id());
    assert_eq!(pids.len(), 2, "rank processes: {pids:?}");
    let (_, target) = *pids.iter().find(|(r, _)| *r == 1).unwrap();
    assert!(signal(target, "-USR1"));
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let out = rest.join("\n");
    assert!(status.success(), "{out}");
    let stopped = rest
        .iter()
        .find(|l| l.contains("stopped on request after"))
        .unwrap_or_else(|| panic!("{out}"));
    let steps: u64 = stopped
        .split("after ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(steps < 100000, "{stopped}");
}

#[test]
fn a_data_set_prepared_with_other_settings_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let ckpt = dir.path().join("ckpt");
    let run = |ds: &Path, sets: &[&str]| {
        let o = train()
            .args(["--config", "configs/debug.yaml", "--resume", "never"])
            .arg("--set")
            .arg(format!("data.dataset={}", ds.display()))
            .arg("--set")
            .arg(format!("checkpoint.url={}", ckpt.display()))
            .arg("--set")
            .arg(format!("log.dir={}", dir.path().join("runs").display()))
            .args(sets.iter().flat_map(|s| ["--set", s]))
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    // Before: trained silently on 32-pixel latents and saved resolution 64 in the checkpoint.
    let err = run(ds, &["data.resolution=64"]);
    assert!(
        err.contains(&format!(
            "data.dataset {} was prepared with other settings",
            ds.display()
        )),
        "{err}"
    );
    assert!(err.contains("resolution: 32 -> 64"), "{err}");
    assert!(err.contains("latent_shape: [3,8,8] -> [3,16,16]"), "{err}");
    let err = run(ds, &["data.mask_fraction=0.25"]);
    assert!(err.contains("mask_fraction: 0.5 -> 0.25"), "{err}");
    assert!(!ckpt.exists(), "a refused run wrote checkpoints");

    // A data set whose manifest misdescribes its shards: a one-line error naming the shard
    // (before: a panic in the loader thread, abort with a backtrace).
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    for e in std::fs::read_dir(ds).unwrap().flatten() {
        let to = mixed.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    let m = std::fs::read_to_string(mixed.join("manifest.json")).unwrap();
    let m = m
        .replace("\"resolution\": 32", "\"resolution\": 64")
        .replacen("8,\n      8", "16,\n      16", 1);
    std::fs::write(mixed.join("manifest.json"), m).unwrap();
    let err = run(&mixed, &["data.resolution=64"]);
    assert!(
        err.contains("shard-00000.zarr") && err.contains("latents has shape"),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn trained_layers_skipped_by_layerdrop_reduce_as_zero_gradients_on_every_rank() {
    // Tiny AV-HuBERT with its top layers trained and skipped 90% of the time: some steps a rank
    // uses a layer no sample of its micro-batch kept (before: "parameter N has no gradient").
    let dir = tempfile::tempdir().unwrap();
    let ds = common::dataset();
    let o = mpirun(2)
        .args(["--config", "configs/debug.yaml", "--resume", "never"])
        .arg("--set")
        .arg(format!("data.dataset={}", ds.display()))
        .arg("--set")
        .arg(format!(
            "checkpoint.url={}",
            dir.path().join("ckpt").display()
        ))
        .arg("--set")
        .arg(format!("log.dir={}", dir.path().join("runs").display()))
        .args(
            [
                "model.audio_encoder.kind=avhubert",
                "model.audio_encoder.embed_dim=16",
                "model.audio_encoder.layers=3",
                "model.audio_encoder.heads=2",
                "model.audio_encoder.ffn_dim=32",
                "model.audio_encoder.frozen_layers=1",
                "model.audio_encoder.pos_conv_kernel=4",
                "model.audio_encoder.pos_conv_groups=2",
                "model.audio_encoder.layerdrop=0.9",
                "train.steps=8",
                "dist.checksum_interval=2",
            ]
            .iter()
            .flat_map(|s| ["--set", s]),
        )
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("finished after 8 steps"), "{out}");
}

/// Flags with structured values are parsed by the command line: a bad one is a one-line usage
/// error naming the flag, before anything is loaded.
#[test]
fn bad_flag_values_are_one_line_usage_errors() {
    let syncdiff = |args: &[&str]| {
        Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
            .args(args)
            .output()
            .unwrap()
    };
    let eval = ["eval", "--pred", "p", "--gt", "g"];
    let o = syncdiff(&[&eval[..], &["--mouth", "0.5,0.5,0.7,0.2"]].concat());
    assert_user_error(
        &o,
        "error: invalid value '0.5,0.5,0.7,0.2' for '--mouth <X,Y,W,H>': the box must lie inside",
    );
    let o = syncdiff(&[&eval[..], &["--vshift", "0"]].concat());
    assert_user_error(&o, "error: invalid value '0' for '--vshift <VSHIFT>'");
    let o = syncdiff(&[&eval[..], &["--device", "gpu"]].concat());
    assert_user_error(&o, "error: invalid value 'gpu' for '--device <auto|cpu|cuda|cuda:N>': \"gpu\": expected auto, cpu, cuda or cuda:N");
    let o = syncdiff(&["generate", "--checkpoint", "b", "--device", "cuda:x"]);
    assert_user_error(&o, "error: invalid value 'cuda:x' for '--device");
    let o = syncdiff(&["generate", "--checkpoint", "b", "--sampler", "euler"]);
    assert_user_error(
        &o,
        "error: invalid value 'euler' for '--sampler <ddim|dpmpp-2m|dpmpp-2m-karras>': \"euler\": expected ddim, dpmpp-2m or dpmpp-2m-karras",
    );
    let o = train()
        .args(["--config", "configs/debug.yaml", "--no-such-flag"])
        .output()
        .unwrap();
    assert_user_error(&o, "error: unexpected argument '--no-such-flag' found");
}
