//! Writing a data set to object storage (`syncdiff-dataprep lrs2 --out s3://bucket/ds`): shards
//! are built in a local staging directory as always, each is uploaded as soon as it is finished
//! (its `entry.json` last, so a shard with an `entry.json` in the store is whole), and the
//! manifest goes up last, written by whichever rank or array task finds every shard there.
//!
//! Resuming (another run, another node, a job-array task): a shard whose `entry.json` is in the
//! store is finished; its record is copied into the staging directory, where the usual checks
//! (settings, clip list) see it, and the shard is not built again.

use std::path::{Path, PathBuf};

use crate::ingest::IngestError;
use crate::objstore::{safe_url, ObjError, Retry, Store, StoreOptions};
use crate::store::shard_name;

/// The store a data set is published to.
#[derive(Debug)]
pub struct Publish {
    store: Store,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IngestError + '_ {
    move |e| IngestError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Publish {
    /// Opens `url` (s3://, gs://, az://) with the environment's credentials.
    pub fn open(url: &str) -> Result<Self, IngestError> {
        Self::open_with_options(url, &StoreOptions::default())
    }

    /// [`Publish::open`] with explicit store settings beside the environment's.
    pub fn open_with_options(url: &str, options: &StoreOptions) -> Result<Self, IngestError> {
        let retry = Retry {
            attempts: 4,
            backoff: std::time::Duration::from_secs(2),
        };
        Ok(Self {
            store: Store::open_with_options(url, retry, options)?,
        })
    }

    /// The URL (for messages).
    pub fn url(&self) -> String {
        safe_url(self.store.url())
    }

    /// Copies the `entry.json` of every shard in `shards` that is finished in the store into the
    /// staging directory `out` (a shard there already is left alone).
    pub fn pull_records(
        &self,
        out: &Path,
        shards: impl Iterator<Item = usize>,
    ) -> Result<(), IngestError> {
        let there: std::collections::HashSet<String> = self
            .store
            .list_files("")?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for i in shards {
            let rel = format!("{}/entry.json", shard_name(i));
            let local = out.join(&rel);
            if !there.contains(&rel) || local.exists() {
                continue;
            }
            let dir = out.join(shard_name(i));
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let tmp = dir.join(".entry.json.partial");
            self.store.get_file(&rel, &tmp)?;
            std::fs::rename(&tmp, &local).map_err(io(&local))?;
        }
        Ok(())
    }

    /// Uploads the finished shard `i` from `out`: every file, `entry.json` last.
    pub fn push_shard(&self, out: &Path, i: usize) -> Result<(), IngestError> {
        let name = shard_name(i);
        let root = out.join(&name);
        let mut files = Vec::new();
        walk(&root, &mut files).map_err(io(&root))?;
        files.sort_by_key(|p| (p.file_name().is_some_and(|n| n == "entry.json"), p.clone()));
        for f in files {
            let rel = f
                .strip_prefix(out)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            let data = std::fs::read(&f).map_err(io(&f))?;
            self.store.put_chunks(&rel, &[&data])?;
        }
        Ok(())
    }

    /// Uploads `rejected.jsonl`, then `manifest.json`, from `out`.
    pub fn push_manifest(&self, out: &Path) -> Result<(), IngestError> {
        for name in ["rejected.jsonl", "manifest.json"] {
            let p = out.join(name);
            let data = std::fs::read(&p).map_err(io(&p))?;
            self.store.put_bytes(name, &data)?;
        }
        Ok(())
    }

    /// Removes the store's manifest (before shards are rebuilt: it would describe old ones).
    pub fn remove_manifest(&self) -> Result<(), IngestError> {
        let listed = self.store.list_files("")?;
        if listed.iter().any(|(n, _)| n == "manifest.json") {
            self.store.delete("manifest.json")?;
        }
        Ok(())
    }
}

impl From<ObjError> for IngestError {
    fn from(e: ObjError) -> Self {
        IngestError::Publish(e.to_string())
    }
}

/// The staging directory for `url` when none is given: under the system's temporary directory,
/// named by a hash of the URL (the same URL resumes in the same place).
pub fn default_stage(url: &str) -> PathBuf {
    use sha2::Digest;
    let h = crate::hash::hex(&sha2::Sha256::digest(url.trim_end_matches('/').as_bytes()));
    std::env::temp_dir()
        .join("syncdiff-dataprep-stage")
        .join(&h[..16])
}

/// Appends every file under `dir` (recursively) to `out`.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}
