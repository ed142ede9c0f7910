//! Reading a data set from the node cache vs from local disk, measured in one run:
//!
//! 1. sample reads (every frame of every clip as a training sample: target, masked frame,
//!    previous frames, identity, mel window) from the data set on local disk vs from its copy
//!    in the node cache, interleaved (target: within 10%);
//! 2. a cold fill of the cache from S3 (moto on 127.0.0.1), MB/s, for the record.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench data_cache   # BENCH_REPS=9
//! ```

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{debug_config, with_dataset};
use syncdiff_dataset::remote::{self, CacheSettings};
use syncdiff_dataset::shards::{Dataset, SampleRequest};
use syncdiff_devkit::env_or;
use syncdiff_devkit::stats::interleave;

/// Reads every frame of every clip as a sample; seconds.
fn read_all(root: &Path) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let ds = Dataset::open(root)?;
    let mut bytes = 0usize;
    for (clip, info) in ds.clips().iter().enumerate() {
        for t in 2..info.frames {
            let s = ds.sample(&SampleRequest {
                clip,
                t,
                identity: 0,
                previous: 2,
                context_frames: 5,
            })?;
            bytes += s.target.len() + s.masked.len();
        }
    }
    anyhow::ensure!(bytes > 0, "no samples read");
    Ok(t0.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let reps = env_or("BENCH_REPS", 9);
    let dir = tempfile::tempdir()?;
    let config = with_dataset(
        dir.path(),
        debug_config(&["data.clips_per_shard=2", "data.resolution=256"])?,
    )?;
    let local = std::path::PathBuf::from(&config.data.dataset);

    // A real S3 server on loopback; object_store reads its settings from the environment.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut moto = Command::new(syncdiff_devkit::python_path().with_file_name("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(t0.elapsed().as_secs() < 30, "moto_server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for (k, v) in [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
    ] {
        // Single-threaded so far: nothing else reads the environment yet.
        std::env::set_var(k, v);
    }
    let reply = Command::new("curl")
        .args(["-s", "-X", "PUT", &format!("http://127.0.0.1:{port}/bench")])
        .status()?;
    anyhow::ensure!(reply.success(), "could not create the bucket");
    let url = "s3://bench/ds";
    let retry = syncdiff_checkpoint::Retry {
        attempts: 2,
        backoff: std::time::Duration::from_millis(200),
    };
    remote::upload(&local, url)?;
    let settings = CacheSettings {
        dir: dir.path().join("cache"),
        max_bytes: 1 << 34,
        retry,
        local_rank: 0,
        local_size: 1,
    };
    let t0 = Instant::now();
    let filled = remote::fill("data.dataset", url, &settings)?;
    let cold = t0.elapsed().as_secs_f64();
    println!(
        "cold fill from S3 (moto on loopback): {} shards, {} files, {:.2} MB in {cold:.2} s = {:.1} MB/s",
        filled.shards,
        filled.fetched_files,
        filled.fetched_bytes as f64 / 1e6,
        filled.fetched_bytes as f64 / 1e6 / cold
    );
    let c = interleave(reps, || read_all(&filled.entry), || read_all(&local))?;
    println!(
        "sample reads, node cache vs local disk ({} reps, both in the page cache): {}",
        reps,
        c.summary()
    );
    let _ = moto.kill();
    let _ = moto.wait();
    Ok(())
}
