//! `syncdiff eval` metrics that need models or helpers: LSE-C/D with a SyncNet (TorchScript, and
//! the same weights as syncnet_v2.model-style state dicts run by the Rust SyncNet) and
//! LPIPS with a TorchScript network, each against a direct Python computation run live on the
//! same video (trainer/tests/reference/{syncnet,lpips}_ref.py, random weights in the real
//! layouts); the WER hook with a stand-in lip reader; the mouth-opening reader on `synth` frames.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn reference(script: &str, args: &[&str]) -> serde_json::Value {
    let o = common::python()
        .arg(common::repo().join("trainer/tests/reference").join(script))
        .args(args)
        .output()
        .unwrap();
    let (out, err) = common::text(&o);
    assert!(o.status.success(), "{script} {args:?}: {err}");
    serde_json::from_str(out.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null)
}

fn eval(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap();
    let (out, err) = common::text(&o);
    (o.status.success(), out, err)
}

/// Two synthetic clips (different speakers, real espeak speech) as `gt/a.mp4` and `gt/b.mp4`,
/// with their `.mouth.txt` beside them.
fn clips(dir: &Path) -> PathBuf {
    let root = common::synthetic();
    let gt = dir.join("gt");
    std::fs::create_dir_all(&gt).unwrap();
    for (name, src) in [("a", "spk00/00001"), ("b", "spk01/00002")] {
        for ext in ["mp4", "mouth.txt"] {
            let from = root.join("main").join(format!("{src}.{ext}"));
            std::fs::copy(from, gt.join(format!("{name}.{ext}"))).unwrap();
        }
    }
    gt
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Predictions for `gt`'s two clips: a's frames with b's name and vice versa (a real difference
/// to measure).
fn swapped(dir: &Path, gt: &Path) -> PathBuf {
    let pred = dir.join("pred");
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::copy(gt.join("a.mp4"), pred.join("b.mp4")).unwrap();
    std::fs::copy(gt.join("b.mp4"), pred.join("a.mp4")).unwrap();
    pred
}

/// Our per-video LPIPS in `ours` against `script score NET_ARGS --pred P --gt G` per clip.
fn assert_lpips_matches(
    ours: &serde_json::Value,
    script: &str,
    net_args: &[&str],
    pred: &Path,
    gt: &Path,
) {
    for (i, name) in ["a.mp4", "b.mp4"].iter().enumerate() {
        let (p, g) = (s(&pred.join(name)), s(&gt.join(name)));
        let mut args = vec!["score"];
        args.extend_from_slice(net_args);
        args.extend_from_slice(&["--pred", &p, "--gt", &g]);
        let py = reference(script, &args);
        let (l, lp) = (
            ours["videos"][i]["lpips"].as_f64().unwrap(),
            py["lpips"].as_f64().unwrap(),
        );
        println!("{name}: LPIPS ours {l}, {script} {lp}");
        assert!(lp > 0.01, "the two clips should differ");
        assert!((l - lp).abs() <= 1e-4 * lp, "{name}: LPIPS {l} vs {lp}");
    }
}

#[test]
fn lse_matches_the_syncnet_python_procedure_run_live() {
    let dir = tempfile::tempdir().unwrap();
    let gt = clips(dir.path());
    let model = dir.path().join("syncnet.pt");
    // The same random weights as TorchScript and as state dicts (syncnet_v2.model's legacy
    // torch.save format, and zipped), which the Rust SyncNet runs.
    let legacy = dir.path().join("syncnet_v2.model");
    let zipped = dir.path().join("syncnet.pth");
    reference(
        "syncnet_ref.py",
        &[
            "make",
            "--out",
            &s(&model),
            "--seed",
            "3",
            "--state-dict",
            &s(&legacy),
            "--state-dict-zip",
            &s(&zipped),
        ],
    );
    let scores = |net: &Path| {
        let rep = dir.path().join("r.json");
        let (ok, out, err) = eval(&[
            "--pred",
            &s(&gt),
            "--gt",
            &s(&gt),
            "--syncnet",
            &s(net),
            "--vshift",
            "5",
            "--report",
            &s(&rep),
        ]);
        assert!(ok, "{err}");
        println!("{out}");
        report(&rep)
    };
    let ours = scores(&model);
    let native = [scores(&legacy), scores(&zipped)];
    for (i, name) in ["a.mp4", "b.mp4"].iter().enumerate() {
        // The state dicts give the TorchScript module's scores (same ops in another order).
        for n in &native {
            let (x, y) = (&n["videos"][i]["lse"], &ours["videos"][i]["lse"]);
            assert_eq!(x["offset"], y["offset"], "{name}");
            for k in ["lse_d", "lse_c"] {
                let (a, b) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{name} {k}: {a} vs {b}"
                );
            }
        }
        let py = reference(
            "syncnet_ref.py",
            &[
                "lse",
                "--model",
                &s(&model),
                "--video",
                &s(&gt.join(name)),
                "--vshift",
                "5",
            ],
        );
        let lse = &ours["videos"][i]["lse"];
        println!("{name}: ours {lse}, python {py}");
        assert_eq!(ours["videos"][i]["name"], *name);
        assert_eq!(lse["windows"], py["windows"], "{name}");
        assert_eq!(lse["offset"], py["offset"], "{name}");
        let (d, dp) = (
            lse["lse_d"].as_f64().unwrap(),
            py["lse_d"].as_f64().unwrap(),
        );
        let (c, cp) = (
            lse["lse_c"].as_f64().unwrap(),
            py["lse_c"].as_f64().unwrap(),
        );
        assert!(
            (d - dp).abs() <= 1e-4 * dp.abs(),
            "{name}: LSE-D {d} vs {dp}"
        );
        assert!((c - cp).abs() <= 2e-5, "{name}: LSE-C {c} vs {cp}");
    }
}

/// Parity with a SyncNet no one here wrote: the PyPI package syncnet-python (its SyncNetModel and
/// SyncNetInstance.evaluate), random weights saved as syncnet_v2.model is (legacy torch.save).
/// The package scores JPEG frames; its script writes the pixels it read back from them, and the
/// same audio, to lossless mp4s, so both sides score identical bytes and the tolerance covers
/// float arithmetic only (1e-4 relative: the same ops, summed in another order).
#[test]
fn lse_matches_the_syncnet_python_package_run_live() {
    let dir = tempfile::tempdir().unwrap();
    let gt = clips(dir.path());
    let weights = dir.path().join("syncnet_v2.model");
    reference(
        "syncnet_peer.py",
        &["weights", "--out", &s(&weights), "--seed", "5"],
    );
    let pred = dir.path().join("lossless");
    let mut peer = Vec::new();
    for name in ["a", "b"] {
        peer.push(reference(
            "syncnet_peer.py",
            &[
                "lse",
                "--weights",
                &s(&weights),
                "--video",
                &s(&gt.join(format!("{name}.mp4"))),
                "--work",
                &s(&dir.path().join(format!("jpg-{name}"))),
                "--out",
                &s(&pred.join(format!("{name}.mp4"))),
            ],
        ));
    }
    let rep = dir.path().join("r.json");
    let (ok, out, err) = eval(&[
        "--pred",
        &s(&pred),
        "--gt",
        &s(&pred),
        "--syncnet",
        &s(&weights),
        "--report",
        &s(&rep),
    ]);
    assert!(ok, "{err}");
    println!("{out}");
    let ours = report(&rep);
    for (i, py) in peer.iter().enumerate() {
        let lse = &ours["videos"][i]["lse"];
        println!("clip {i}: ours {lse}, syncnet-python {py}");
        assert_eq!(lse["offset"], py["offset"], "clip {i}");
        assert_eq!(
            lse["windows"],
            py["frames"].as_i64().unwrap() - 5,
            "clip {i}"
        );
        for k in ["lse_d", "lse_c"] {
            let (a, b) = (lse[k].as_f64().unwrap(), py[k].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "clip {i} {k}: {a} vs {b}"
            );
        }
    }
}

/// Parity with the PyPI package lpips (LPIPS(net="alex"), v0.1): its shipped linear weights and
/// a random torchvision AlexNet state dict, the two files `--lpips` / `--alexnet` take. Both
/// sides decode the same mp4s with ffmpeg; 1e-4 relative covers float summation order.
#[test]
fn lpips_matches_the_lpips_package_run_live() {
    let dir = tempfile::tempdir().unwrap();
    let gt = clips(dir.path());
    let pred = swapped(dir.path(), &gt);
    let alexnet = dir.path().join("alexnet.pth");
    let made = reference(
        "lpips_peer.py",
        &["alexnet", "--out", &s(&alexnet), "--seed", "2"],
    );
    let lin = made["lin"].as_str().unwrap().to_string();
    let rep = dir.path().join("r.json");
    let (ok, out, err) = eval(&[
        "--pred",
        &s(&pred),
        "--gt",
        &s(&gt),
        "--lpips",
        &lin,
        "--alexnet",
        &s(&alexnet),
        "--report",
        &s(&rep),
    ]);
    assert!(ok, "{err}");
    println!("{out}");
    let ours = report(&rep);
    assert_lpips_matches(
        &ours,
        "lpips_peer.py",
        &["--alexnet", &s(&alexnet)],
        &pred,
        &gt,
    );
    // The linear weights alone, and the trunk given as --lpips, are named.
    let run = |extra: &[&str]| {
        let mut args = vec!["--pred", gt.to_str().unwrap(), "--gt", gt.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--report", rep.to_str().unwrap()]);
        let (ok, _, err) = eval(&args);
        assert!(!ok, "{extra:?} should fail");
        err
    };
    let err = run(&["--lpips", &lin]);
    assert!(
        err.contains("--alexnet") && err.contains("alex.pth"),
        "{err}"
    );
    let err = run(&["--lpips", &s(&alexnet), "--alexnet", &s(&alexnet)]);
    assert!(
        err.contains("missing tensor `lin0.model.1.weight`"),
        "{err}"
    );
}

#[test]
fn lpips_matches_the_python_computation_and_wer_scores_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let gt = clips(dir.path());
    let pred = swapped(dir.path(), &gt);
    std::fs::write(gt.join("a.txt"), "Text:  the cat sat down\nConf:  5\n").unwrap();
    std::fs::write(gt.join("b.txt"), "Text:  a dog ran\n").unwrap();
    let model = dir.path().join("lpips.pt");
    reference(
        "lpips_ref.py",
        &["make", "--out", &s(&model), "--seed", "1"],
    );
    let rep = dir.path().join("r.json");
    let (ok, out, err) = eval(&[
        "--pred",
        &s(&pred),
        "--gt",
        &s(&gt),
        "--lpips",
        &s(&model),
        "--wer-cmd",
        "echo loading; echo THE CAT SAT",
        "--report",
        &s(&rep),
    ]);
    assert!(ok, "{err}");
    println!("{out}");
    let ours = report(&rep);
    assert_lpips_matches(&ours, "lpips_ref.py", &["--model", &s(&model)], &pred, &gt);
    // "THE CAT SAT" vs "THE CAT SAT DOWN": 1 error in 4; vs "A DOG RAN": 3 in 3.
    assert_eq!(ours["videos"][0]["wer"]["errors"], 1);
    assert_eq!(ours["videos"][1]["wer"]["errors"], 3);
    assert!((ours["summary"]["corpus_wer_pct"].as_f64().unwrap() - 400.0 / 7.0).abs() < 1e-9);
    // A failing lip reader is named.
    let (ok, _, err) = eval(&[
        "--pred",
        &s(&pred),
        "--gt",
        &s(&gt),
        "--wer-cmd",
        "exit 3",
        "--report",
        &s(&rep),
    ]);
    assert!(!ok && err.contains("--wer-cmd `exit 3` failed"), "{err}");
}

#[test]
fn the_mouth_reader_recovers_synths_true_opening() {
    let dir = tempfile::tempdir().unwrap();
    let gt = clips(dir.path());
    let rep = dir.path().join("r.json");
    let (ok, out, err) = eval(&[
        "--pred",
        &s(&gt),
        "--gt",
        &s(&gt),
        "--openings",
        "--report",
        &s(&rep),
    ]);
    assert!(ok, "{err}");
    println!("{out}");
    let ours = report(&rep);
    for v in ours["videos"].as_array().unwrap() {
        let o = &v["openings"];
        assert!(o["reader_mae_gt"].as_f64().unwrap() < 0.03, "{v}");
        assert!(o["corr"].as_f64().unwrap() > 0.99, "{o}");
        // The clips speak: holding the first frame is far off.
        assert!(o["copy_identity_mae"].as_f64().unwrap() > 0.1, "{o}");
    }
}

#[test]
fn bad_metric_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let gt = clips(dir.path());
    let bogus = dir.path().join("not-a-model.pt");
    std::fs::write(&bogus, b"not torchscript").unwrap();
    let rep = s(&dir.path().join("r.json"));
    let (ok, _, err) = eval(&[
        "--pred",
        &s(&gt),
        "--gt",
        &s(&gt),
        "--syncnet",
        &s(&bogus),
        "--report",
        &rep,
    ]);
    assert!(
        !ok && err.contains("not-a-model.pt: neither a torch.save zip checkpoint nor a legacy"),
        "{err}"
    );
    // An LPIPS network used as SyncNet: the missing method is named.
    let model = dir.path().join("lpips.pt");
    reference(
        "lpips_ref.py",
        &["make", "--out", &s(&model), "--seed", "1"],
    );
    let (ok, _, err) = eval(&[
        "--pred",
        &s(&gt),
        "--gt",
        &s(&gt),
        "--syncnet",
        &s(&model),
        "--report",
        &rep,
    ]);
    assert!(!ok && err.contains("forward_lip"), "{err}");
    std::fs::remove_file(gt.join("b.mouth.txt")).unwrap();
    let (ok, _, err) = eval(&[
        "--pred",
        &s(&gt),
        "--gt",
        &s(&gt),
        "--openings",
        "--report",
        &rep,
    ]);
    assert!(!ok && err.contains("b.mouth.txt"), "{err}");
}
