//! The checkpoint layer on the local file system: save, list, verify, read, retention, damage.
#![allow(clippy::unwrap_used)]

use crate::ckpt_common;

use ckpt_common::{round_trip, snapshot};
use syncdiff_checkpoint::{
    apply_retention, list, newest_valid, write, Retention, Retry, Store, MANIFEST, MODEL,
};

fn retry() -> Retry {
    Retry {
        attempts: 2,
        backoff: std::time::Duration::from_millis(10),
    }
}

#[test]
fn local_round_trip_with_a_multipart_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("ckpt").to_str().unwrap(), retry()).unwrap();
    round_trip(&store, dir.path());
}

#[test]
fn retention_keeps_the_newest_and_the_multiples_and_removes_cut_off_saves() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("ckpt");
    let store = Store::open(url.to_str().unwrap(), retry()).unwrap();
    let none = Retention {
        keep_last: 100,
        keep_every: None,
    };
    for step in 1..=7 {
        write(&store, none, snapshot(step, 1)).unwrap();
    }
    // A save cut off before its manifest at step 4 (older than the newest) and at step 9 (newer:
    // maybe still being written by someone: never touched).
    for s in [4u64, 9] {
        let d = url.join(format!("step-{s:09}"));
        std::fs::remove_file(d.join(MANIFEST)).ok();
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(MODEL), b"partial").unwrap();
    }
    let deleted = apply_retention(
        &store,
        Retention {
            keep_last: 2,
            keep_every: Some(3),
        },
        None,
        7,
    )
    .unwrap();
    let left: Vec<(u64, bool)> = list(&store)
        .unwrap()
        .iter()
        .map(|c| (c.step, c.manifest.is_some()))
        .collect();
    assert_eq!(
        left,
        vec![(3, true), (6, true), (7, true), (9, false)],
        "{deleted:?}"
    );
    assert_eq!(deleted.len(), 4, "{deleted:?}"); // 1, 2, 5 and the cut-off 4
    assert!(!url.join("step-000000001").exists());
}

#[test]
fn a_flipped_byte_makes_auto_fall_back_to_the_next_older_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("ckpt");
    let store = Store::open(url.to_str().unwrap(), retry()).unwrap();
    let keep = Retention {
        keep_last: 5,
        keep_every: None,
    };
    for step in [10, 20] {
        write(&store, keep, snapshot(step, 1)).unwrap();
    }
    let model = url.join("step-000000020").join(MODEL);
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();
    // Same size: only the hash can tell.
    assert!(list(&store).unwrap().iter().all(|c| c.manifest.is_some()));
    let chosen = newest_valid(&store, &dir.path().join("local"))
        .unwrap()
        .unwrap();
    assert_eq!(chosen.step, 10);
}

#[test]
fn weights_with_nan_are_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("ckpt").to_str().unwrap(), retry()).unwrap();
    let snap = ckpt_common::snapshot(3, 1);
    let _ = snap.model[0].1.get(0).get(0).fill_(f64::NAN);
    let e = write(
        &store,
        Retention {
            keep_last: 1,
            keep_every: None,
        },
        snap,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("checkpoint of step 3 not saved:") && e.contains("unet.a"),
        "{e}"
    );
    assert!(list(&store).unwrap().iter().all(|c| c.manifest.is_none()));
}

#[test]
fn credentials_in_a_url_are_refused_without_being_echoed() {
    let e = Store::open("s3://AKIDEXAMPLE:hunter2secret@bucket/run", retry())
        .unwrap_err()
        .to_string();
    assert!(e.contains("credentials in the URL are refused"), "{e}");
    assert!(!e.contains("hunter2secret"), "{e}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/debug.yaml");
    let set = syncdiff_model::config::Override::parse("checkpoint.url=s3://AKID:hunter2secret@b/r")
        .unwrap();
    let e = syncdiff_model::config::Config::load(&path, &[set])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint.url") && !e.contains("hunter2secret"),
        "{e}"
    );
    // A pre-signed URL: the signature is a credential too.
    let signed = "s3://bucket/run?X-Amz-Credential=AKID&X-Amz-Signature=f00dfeedsig";
    let e = Store::open(signed, retry()).unwrap_err().to_string();
    assert!(e.contains("credentials in the URL are refused"), "{e}");
    assert!(!e.contains("f00dfeedsig"), "{e}");
    let set = syncdiff_model::config::Override::parse(&format!("checkpoint.url={signed}")).unwrap();
    let e = syncdiff_model::config::Config::load(&path, &[set])
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint.url: holds a query string"), "{e}");
    assert!(!e.contains("f00dfeedsig"), "{e}");
    // A malformed override quoting it does not echo it either.
    let e = syncdiff_model::config::Override::parse(&format!("checkpoint.url=[{signed}"))
        .unwrap_err()
        .to_string();
    assert!(!e.contains("f00dfeedsig"), "{e}");
}

#[test]
fn retention_deletes_only_the_current_runs_older_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("ckpt");
    let store = Store::open(url.to_str().unwrap(), retry()).unwrap();
    let keep = Retention {
        keep_last: 1,
        keep_every: None,
    };
    let of_run = |step: u64, run: &str| {
        let mut s = snapshot(step, 1);
        s.state.run = Some(run.into());
        s
    };
    // Another run's checkpoints, one of them newer than anything run B writes.
    for step in [30, 50] {
        write(&store, keep, of_run(step, "run-a")).unwrap();
    }
    assert_eq!(
        list(&store)
            .unwrap()
            .iter()
            .map(|c| c.step)
            .collect::<Vec<_>>(),
        vec![50],
        "run-a's own retention"
    );
    write(&store, keep, of_run(40, "run-a")).unwrap();
    for step in [10, 20] {
        let r = write(&store, keep, of_run(step, "run-b")).unwrap();
        // The checkpoint just written survives, though older than run-a's.
        assert!(
            !r.deleted.iter().any(|d| d.ends_with(&format!("{step:09}"))),
            "{r:?}"
        );
    }
    let left: Vec<(u64, String)> = list(&store)
        .unwrap()
        .iter()
        .map(|c| (c.step, c.manifest.as_ref().unwrap().run.clone().unwrap()))
        .collect();
    assert_eq!(
        left,
        vec![
            (20, "run-b".into()),
            (40, "run-a".into()),
            (50, "run-a".into())
        ],
        "retention of run-b deleted only run-b's step 10"
    );
    // The run's newest checkpoint is kept even when the one just written is older.
    let r = apply_retention(&store, keep, Some("run-b"), 15).unwrap();
    assert!(r.is_empty(), "{r:?}");
}
