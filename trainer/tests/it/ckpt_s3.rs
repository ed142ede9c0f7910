//! The checkpoint layer against a real S3 server (moto on 127.0.0.1): the same round trip as on
//! the local file system, multipart included; a missing bucket is a clear error without secrets.
#![allow(clippy::unwrap_used)]

use crate::ckpt_common;
use crate::common;

use syncdiff_checkpoint::{Retry, Store, StoreOptions};

#[test]
fn s3_round_trip_and_errors_without_secrets() {
    let moto = common::MotoServer::start();
    moto.create_bucket("ckpts");
    // Settings passed explicitly: the other tests of this process share its environment.
    let options = moto.options();
    let retry = Retry {
        attempts: 2,
        backoff: std::time::Duration::from_millis(50),
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_options("s3://ckpts/runs/a", retry, &options).unwrap();
    ckpt_common::round_trip(&store, dir.path());

    let missing = Store::open_with_options("s3://no-such-bucket/x", retry, &options).unwrap();
    let e = missing.put_bytes("f", b"x").unwrap_err().to_string();
    assert!(
        e.starts_with("upload s3://no-such-bucket/x/f failed"),
        "{e}"
    );
    for (key, value) in &options.0 {
        if key.contains("secret") {
            assert!(!e.contains(value.as_str()), "{e}");
        }
    }
    let bad = Store::open_with_options(
        "s3://ckpts/x",
        retry,
        &StoreOptions(vec![("aws_nonsense".into(), "1".into())]),
    );
    let e = bad.unwrap_err().to_string();
    assert!(e.contains("unknown store option \"aws_nonsense\""), "{e}");
}
