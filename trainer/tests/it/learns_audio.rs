//! The model uses the audio: after a short run of the debug configuration on synthetic talking
//! faces (2 ranks), the validation loss with each clip's own audio is clearly below the loss with
//! another clip's audio (same frames, timesteps and noise).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{mpirun, repo, text};
use syncdiff_model::config::{Config, Override};

#[test]
fn validation_loss_with_the_true_audio_ends_below_other_audio() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lrs2");
    syncdiff_dataprep::synth::synth(
        &syncdiff_dataprep::synth::SynthOptions {
            out: root.clone(),
            speakers: 4,
            clips_per_speaker: 5,
            seconds: 2.0,
            seed: 11,
        },
        |_, _| {},
    )
    .unwrap();
    let cfg = Config::load(&repo().join("configs/debug.yaml"), &[] as &[Override]).unwrap();
    let mut sets = Vec::new();
    for split in ["train", "val"] {
        let out = dir.path().join(split);
        common::ingest(&root, split, &out, &cfg);
        let key = if split == "train" {
            "dataset"
        } else {
            "val_dataset"
        };
        sets.push("--set".to_string());
        sets.push(format!("data.{key}={}", out.display()));
    }
    let steps = 1000;
    let o = mpirun(2)
        .args(["--config", "configs/debug.yaml", "--resume", "never"])
        .args(&sets)
        .arg("--set")
        .arg(format!("log.dir={}", dir.path().join("runs").display()))
        .arg("--set")
        .arg(format!(
            "checkpoint.url={}",
            dir.path().join("ckpt").display()
        ))
        .args(["--set", &format!("train.steps={steps}")])
        .args(["--set", "log.interval=500", "--set", "log.val_interval=500"])
        .args(["--set", "log.val_batches=16"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let last = out
        .lines()
        .rfind(|l| l.contains("val step"))
        .unwrap_or_else(|| panic!("{out}"));
    println!("{out}");
    assert!(last.contains(&format!("val step {steps}:")), "{last}");
    let number = |key: &str| -> f64 {
        last.split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (own, other) = (number("true-audio "), number("other-audio "));
    assert!(other > 1.2 * own, "true-audio {own} vs other-audio {other}");
}
