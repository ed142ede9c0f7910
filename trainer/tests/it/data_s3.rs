//! Data sets on object storage (moto on 127.0.0.1) through the node-local cache: training from
//! `s3://` equals training from disk, a warm cache fetches no shard, the cache stays under its
//! limit (evicting data sets nobody uses, never one in use), a fill cut short by a kill or a
//! damaged file is detected and fetched again, and ranks on a node fetch each shard once.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{repo, text, MotoServer};
use syncdiff_dataprep::ingest::IngestOptions;
use syncdiff_dataprep::layout::Layout::Lrs2;
use syncdiff_devkit::tree as files;

fn syncdiff(moto: &MotoServer, args: &[&str]) -> Output {
    Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
        .current_dir(repo())
        .envs(moto.env().iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .unwrap()
}

fn upload(moto: &MotoServer, dir: &Path, url: &str) {
    let o = syncdiff(moto, &["data", "upload", dir.to_str().unwrap(), url]);
    assert!(o.status.success(), "{}", text(&o).1);
}

/// `syncdiff data fetch` of `url` into `cache` with a size limit (GB) and extra environment.
fn fetch(moto: &MotoServer, url: &str, cache: &Path, max_gb: f64, env: &[(&str, &str)]) -> Output {
    Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
        .current_dir(repo())
        .envs(moto.env().iter().map(|(k, v)| (*k, v.as_str())))
        .envs(env.iter().copied())
        .args(["data", "fetch", "--config", "configs/debug.yaml"])
        .args(["--set", &format!("data.dataset={url}")])
        .args(["--set", &format!("data.cache.dir={}", cache.display())])
        .args(["--set", &format!("data.cache.max_gb={max_gb}")])
        .output()
        .unwrap()
}

/// Every object of a store, by name.
fn objects(store: &syncdiff_checkpoint::Store) -> BTreeMap<String, Vec<u8>> {
    store
        .list_files("")
        .unwrap()
        .into_iter()
        .map(|(n, _)| {
            let b = store.get_bytes(&n).unwrap();
            (n, b)
        })
        .collect()
}

/// The shard files of a data set directory (what the cache must reproduce exactly).
fn shard_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files(root)
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("shard-") && !k.contains(".files.json") && !k.ends_with(".lock")
        })
        .collect()
}

fn du(dir: &Path) -> u64 {
    files(dir).values().map(|v| v.len() as u64).sum()
}

/// The one cache entry directory under `cache` whose source is `url`.
fn entry(cache: &Path, url: &str) -> PathBuf {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p.join("source.txt")).is_ok_and(|s| s.trim() == url))
        .unwrap_or_else(|| panic!("no entry for {url} in {}", cache.display()))
}

/// The loss of every logged step: `step i/N loss X`.
fn losses(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let rest = l.split("] step ").nth(1)?;
            let mut w = rest.split_whitespace();
            let step = w.next()?;
            (w.next()? == "loss").then(|| format!("{step} {}", w.next().unwrap_or("")))
        })
        .collect()
}

#[test]
fn training_from_s3_equals_training_from_disk_and_a_warm_cache_fetches_no_shard() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("data");
    let ds = common::dataset();
    upload(&moto, ds, "s3://data/train");
    let cache = dir.path().join("cache");
    let train = |dataset: &str, ckpt: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_syncdiff-train"))
            .current_dir(repo())
            .envs(moto.env().iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--config", "configs/debug.yaml", "--resume", "never"])
            .args(["--set", &format!("data.dataset={dataset}")])
            .args(["--set", &format!("data.cache.dir={}", cache.display())])
            .args([
                "--set",
                &format!("checkpoint.url={}", dir.path().join(ckpt).display()),
            ])
            .args([
                "--set",
                &format!("log.dir={}", dir.path().join("runs").display()),
            ])
            .args(["--set", "train.steps=6", "--set", "log.interval=1"])
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        (losses(&out), err)
    };
    let (disk, _) = train(ds.to_str().unwrap(), "a");
    assert_eq!(disk.len(), 6, "{disk:?}");
    let (cold, err) = train("s3://data/train", "b");
    assert_eq!(cold, disk, "the s3 data set gave other samples");
    let fetched = err
        .lines()
        .find(|l| l.contains("data.dataset s3://data/train:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(fetched.contains("1 fetched here (10 file(s)"), "{fetched}");
    let (warm, err) = train("s3://data/train", "c");
    assert_eq!(warm, disk);
    assert!(err.contains("0 fetched here (0 file(s), 0.0 MB)"), "{err}");
    // The cached copy is the data set, file for file.
    let e = entry(&cache, "s3://data/train");
    assert_eq!(shard_files(&e), shard_files(ds));

    // --preflight checks read access without filling a cache.
    let preflight = |dataset: &str| {
        Command::new(env!("CARGO_BIN_EXE_syncdiff-train"))
            .current_dir(repo())
            .envs(moto.env().iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--config", "configs/debug.yaml", "--preflight"])
            .args(["--set", &format!("data.dataset={dataset}")])
            .args([
                "--set",
                &format!("data.cache.dir={}", dir.path().join("c2").display()),
            ])
            .args([
                "--set",
                &format!("checkpoint.url={}", dir.path().join("p").display()),
            ])
            .output()
            .unwrap()
    };
    let o = preflight("s3://data/train");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("data.dataset s3://data/train readable (4 clips in 1 shards"),
        "{out}"
    );
    assert!(!dir.path().join("c2").exists(), "preflight filled a cache");
    let o = preflight("s3://data/missing");
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains("preflight dataset: data.dataset s3://data/missing: no manifest.json there"),
        "{err}"
    );
}

#[test]
fn the_cache_stays_under_its_limit_never_evicts_a_data_set_in_use_and_redoes_cut_short_fills() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("data");
    let (a, b) = (common::dataset(), common::val_dataset());
    upload(&moto, a, "s3://data/a");
    upload(&moto, b, "s3://data/b");
    let cache = dir.path().join("cache");
    // Room for either data set but not for both.
    let limit = du(a).max(du(b)) * 3 / 2;
    assert!(limit < du(a) + du(b), "{limit}");
    let gb = limit as f64 / 1e9;
    let o = fetch(&moto, "s3://data/a", &cache, gb, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(du(&cache) <= limit);
    let ea = entry(&cache, "s3://data/a");
    let name_a = ea.file_name().unwrap().to_string_lossy().into_owned();
    let o = fetch(&moto, "s3://data/b", &cache, gb, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!("removed to make room: {name_a}")),
        "{out}"
    );
    assert!(!ea.exists());
    assert!(du(&cache) <= limit, "{} > {limit}", du(&cache));

    // b in use (a shared lock, as a reading process holds): a cannot evict it and fails clearly.
    let eb = entry(&cache, "s3://data/b");
    let mut holder = Command::new("flock")
        .args([
            "-s",
            eb.join("in-use.lock").to_str().unwrap(),
            "sleep",
            "60",
        ])
        .spawn()
        .unwrap();
    // Wait until the holder has its lock (an exclusive try fails), not for a guessed time.
    let t0 = std::time::Instant::now();
    while Command::new("flock")
        .args([
            "-n",
            "-x",
            "-E",
            "99",
            eb.join("in-use.lock").to_str().unwrap(),
            "true",
        ])
        .status()
        .unwrap()
        .code()
        != Some(99)
    {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the holder never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = fetch(&moto, "s3://data/a", &cache, gb, &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(
        err.contains("data.cache.dir")
            && err.contains("raise data.cache.max_gb")
            && err.contains("held by data sets in use"),
        "{err}"
    );
    assert!(
        eb.join("manifest.json").exists(),
        "the data set in use was touched"
    );
    assert!(du(&cache) <= limit);

    // A fill killed after 2 files leaves a partial shard; the next fetch redoes it.
    let cache2 = dir.path().join("cache2");
    #[cfg(feature = "fault-injection")]
    {
        let kill = [(syncdiff_dataset::remote::FAULT_CACHE_KILL_ENV, "2")];
        let o = fetch(&moto, "s3://data/a", &cache2, 1.0, &kill);
        assert!(!o.status.success());
        let e2 = entry(&cache2, "s3://data/a");
        let partial = std::fs::read_dir(&e2).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".partial-")
        });
        assert!(partial, "no partial fill left");
        assert!(!e2.join("manifest.json").exists());
        let o = fetch(&moto, "s3://data/a", &cache2, 1.0, &[]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(
            out.contains("1 unfinished or damaged shard fill(s) redone"),
            "{out}"
        );
        assert_eq!(shard_files(&e2), shard_files(a));
    }
    // A finished shard with a file cut short is fetched again.
    let o = fetch(&moto, "s3://data/a", &cache2, 1.0, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let e2 = entry(&cache2, "s3://data/a");
    let victim = e2.join("shard-00000.zarr/latents/c/0/0/0/0");
    let len = std::fs::metadata(&victim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = fetch(&moto, "s3://data/a", &cache2, 1.0, &[]);
    let out = text(&o).0;
    assert!(
        out.contains("1 fetched here") && out.contains("redone"),
        "{out}"
    );
    assert_eq!(shard_files(&e2), shard_files(a));
}

#[test]
fn ranks_of_a_node_fetch_each_shard_once_and_missing_data_sets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("data");
    let ds = common::prepared(dir.path(), "train", &["data.clips_per_shard=1"]);
    upload(&moto, &ds, "s3://data/many");
    let cache = dir.path().join("cache");
    let o = Command::new("mpirun")
        .current_dir(repo())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .envs(moto.env().iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--oversubscribe", "-n", "2"])
        .arg(syncdiff_devkit::workspace_bin("syncdiff"))
        .args(["data", "fetch", "--config", "configs/debug.yaml"])
        .args(["--set", "data.dataset=s3://data/many"])
        .args(["--set", &format!("data.cache.dir={}", cache.display())])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // 4 shards, each fetched exactly once between the two ranks (how they split them depends
    // on when each started: they begin at different shards, then wait for the other's).
    let fetched: Vec<usize> = out
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(2)?
                .split(" fetched here")
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(fetched.len(), 2, "{out}");
    assert_eq!(fetched.iter().sum::<usize>(), 4, "{out}");
    assert_eq!(
        shard_files(&entry(&cache, "s3://data/many")),
        shard_files(&ds)
    );

    let o = fetch(&moto, "s3://data/none", &cache, 1.0, &[]);
    let err = text(&o).1;
    assert!(
        err.contains("data.dataset s3://data/none: no manifest.json there"),
        "{err}"
    );
    let o = fetch(&moto, "s3://no-bucket/x", &cache, 1.0, &[]);
    let err = text(&o).1;
    assert!(
        !o.status.success() && err.contains("s3://no-bucket/x"),
        "{err}"
    );
}

#[test]
fn dataprep_publishes_to_s3_from_two_tasks_with_the_manifest_last_and_equal_to_disk() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start();
    moto.create_bucket("data");
    let url = "s3://data/published";
    let cfg = syncdiff_model::config::Config::load(
        &repo().join("configs/debug.yaml"),
        &[syncdiff_model::config::Override::parse("data.clips_per_shard=1").unwrap()],
    )
    .unwrap();
    let on_disk = common::prepared(dir.path(), "train", &["data.clips_per_shard=1"]);
    let store = syncdiff_checkpoint::Store::open_with_options(
        url,
        syncdiff_checkpoint::Retry {
            attempts: 2,
            backoff: std::time::Duration::from_millis(100),
        },
        &moto.options(),
    )
    .unwrap();
    // Two tasks (ranks 0 and 1 of 2) on "different nodes": each its own staging directory.
    for rank in 0..2 {
        let opts = IngestOptions {
            batch: 16,
            rank,
            world: 2,
            publish: Some(std::sync::Arc::new(
                syncdiff_dataset::publish::Publish::open_with_options(url, &moto.options())
                    .unwrap(),
            )),
            ..IngestOptions::new(
                common::synthetic(),
                Lrs2,
                "train",
                dir.path().join(format!("stage-{rank}")),
            )
        };
        let report = syncdiff_dataprep::ingest::ingest(&opts, &cfg, |_, _, _| {}).unwrap();
        assert_eq!(report.built, 2);
        let names: Vec<String> = store
            .list_files("")
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        // The first task's shards are up, whole (entry.json included), but no manifest: the
        // data set is not readable until the last shard is there.
        assert_eq!(
            names.contains(&"manifest.json".to_string()),
            rank == 1,
            "{names:?}"
        );
        assert_eq!(report.manifest_written, rank == 1);
    }
    let remote = objects(&store);
    let local = files(&on_disk);
    let differ: Vec<&String> = remote
        .keys()
        .chain(local.keys())
        .filter(|k| remote.get(*k) != local.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "the published data set differs from the one on disk in {differ:?}; rejected: {:?} vs {:?}",
        String::from_utf8_lossy(remote.get("rejected.jsonl").map_or(&[][..], |v| v)),
        String::from_utf8_lossy(local.get("rejected.jsonl").map_or(&[][..], |v| v))
    );
    // A third run with an empty staging directory finds every shard finished in the store.
    let opts = IngestOptions {
        batch: 16,
        publish: Some(std::sync::Arc::new(
            syncdiff_dataset::publish::Publish::open_with_options(url, &moto.options()).unwrap(),
        )),
        ..IngestOptions::new(
            common::synthetic(),
            Lrs2,
            "train",
            dir.path().join("stage-new"),
        )
    };
    let report = syncdiff_dataprep::ingest::ingest(&opts, &cfg, |_, _, _| {}).unwrap();
    assert_eq!((report.built, report.skipped), (0, 4));

    // The bucket is emptied behind the stages' backs (recreated, or the prefix deleted to
    // rebuild). Before: "built 0 shard(s), 4 already finished", a manifest over no shards,
    // exit 0. Now stage-1's own shards (1 and 3, built there) go up again, the records it had
    // copied of shards 0 and 2 are dropped and those shards are built, and the manifest goes
    // up last, verified: the data set equals the one on disk again.
    for (name, _) in store.list_files("").unwrap() {
        store.delete(&name).unwrap();
    }
    let opts = IngestOptions {
        out: dir.path().join("stage-1"),
        ..opts
    };
    let report = syncdiff_dataprep::ingest::ingest(&opts, &cfg, |_, _, _| {}).unwrap();
    assert_eq!((report.built, report.skipped), (2, 2));
    assert!(report.manifest_written);
    let remote = objects(&store);
    let differ: Vec<&String> = remote
        .keys()
        .chain(local.keys())
        .filter(|k| remote.get(*k) != local.get(*k))
        .collect();
    assert!(differ.is_empty(), "after the re-publish: {differ:?}");
    // A shard deleted from the store while its stage record stays: the manifest is not
    // written over it by a task that finds it gone (stage-new holds records only).
    for (name, _) in store.list_files("").unwrap() {
        if name.starts_with(&format!("{}/", syncdiff_dataset::shards::shard_name(3)))
            || name == "manifest.json"
        {
            store.delete(&name).unwrap();
        }
    }
    let report = syncdiff_dataprep::ingest::ingest(
        &IngestOptions {
            out: dir.path().join("stage-new"),
            rank: 0,
            world: 2,
            ..opts
        },
        &cfg,
        |_, _, _| {},
    )
    .unwrap();
    assert!(!report.manifest_written);
    assert!(!store
        .list_files("")
        .unwrap()
        .iter()
        .any(|(n, _)| n == "manifest.json"));
}
