//! Shared by the checkpoint store tests (local and S3).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use syncdiff_checkpoint::{
    list, newest_valid, read, write, Retention, Snapshot, Store, TrainerState,
};
use tch::{Device, Kind, Tensor};

/// A small snapshot at `step` whose values depend on `seed`, with one 40 MiB tensor (multipart).
pub fn snapshot(step: u64, seed: i64) -> Snapshot {
    // Values from a formula, not the global generator (tests run in parallel).
    let t = |shape: &[i64]| {
        let n: i64 = shape.iter().product();
        (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.37 + seed as f64))
            .sin()
            .view(shape)
    };
    Snapshot {
        model: vec![
            ("unet.a".into(), t(&[3, 4])),
            ("unet.big".into(), t(&[10 << 20])),
        ],
        ema: vec![("unet.a".into(), t(&[3, 4]))],
        optimizer: vec![("step".into(), Tensor::from_slice(&[step as i64]))],
        state: TrainerState {
            format: 1,
            step,
            epoch: 1,
            consumed: 8 * step,
            seed: 0,
            world_size: 2,
            global_batch: 8,
            dataset_sha256: "d".into(),
            external_weights: Default::default(),
            saved_unix: 0,
            run: None,
            loss_scale: None,
        },
        config_yaml: "train: {}\n".into(),
    }
}

/// Save two checkpoints, list them, pick the newest, read it back equal.
pub fn round_trip(store: &Store, tmp: &Path) {
    let keep = Retention {
        keep_last: 3,
        keep_every: None,
    };
    write(store, keep, snapshot(5, 1)).unwrap();
    let want = snapshot(10, 2);
    let report = write(store, keep, snapshot(10, 2)).unwrap();
    assert!(report.bytes > 40 << 20, "{report:?}");
    let listed = list(store).unwrap();
    assert_eq!(
        listed.iter().map(|c| c.step).collect::<Vec<_>>(),
        vec![5, 10]
    );
    let chosen = newest_valid(store, &tmp.join("local")).unwrap().unwrap();
    assert_eq!(chosen.step, 10);
    let r = read(&chosen.local, &chosen.manifest).unwrap();
    assert_eq!(r.state, want.state);
    for (name, t) in &want.model {
        assert!(r.model[name].equal(t), "{name}");
    }
    assert!(r.ema.unwrap()["unet.a"].equal(&want.ema[0].1));
    assert_eq!(r.config_yaml, want.config_yaml);
}
