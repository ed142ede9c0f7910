//! The checkpoint layer against a real S3 server (moto on 127.0.0.1): the same round trip as on
//! the local file system, multipart included; a missing bucket is a clear error without secrets.
#![allow(clippy::unwrap_used)]

mod ckpt_common;
mod common;

use syncdiff_trainer::ckpt::{Retry, Store};

#[test]
fn s3_round_trip_and_errors_without_secrets() {
    let moto = common::MotoServer::start();
    moto.create_bucket("ckpts");
    // The only test of this binary: nothing else reads the environment concurrently.
    for (k, v) in moto.env() {
        std::env::set_var(k, v);
    }
    let retry = Retry {
        attempts: 2,
        backoff: std::time::Duration::from_millis(50),
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open("s3://ckpts/runs/a", retry).unwrap();
    ckpt_common::round_trip(&store, dir.path());

    let missing = Store::open("s3://no-such-bucket/x", retry).unwrap();
    let e = missing.put_bytes("f", b"x").unwrap_err().to_string();
    assert!(
        e.starts_with("upload s3://no-such-bucket/x/f failed"),
        "{e}"
    );
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    assert!(!e.contains(&secret), "{e}");
}
