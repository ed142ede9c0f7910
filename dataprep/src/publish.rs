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

/// What an upload sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Files sent.
    pub files: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Files already in the store at the same size, not sent again.
    pub skipped: u64,
}

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
        self.push_dir(
            out,
            &shard_name(i),
            &Default::default(),
            &mut Uploaded::default(),
        )
    }

    /// Uploads the files of `out/dir` whose size differs from `there` (the store's listing),
    /// `entry.json` last, so a shard with an `entry.json` in the store is whole.
    fn push_dir(
        &self,
        out: &Path,
        dir: &str,
        there: &std::collections::HashMap<String, u64>,
        sent: &mut Uploaded,
    ) -> Result<(), IngestError> {
        let root = out.join(dir);
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
            if there.get(&rel) == Some(&(data.len() as u64)) {
                sent.skipped += 1;
                continue;
            }
            self.store.put_chunks(&rel, &[&data])?;
            sent.files += 1;
            sent.bytes += data.len() as u64;
        }
        Ok(())
    }

    /// Uploads the prepared data set `dir` (which has its manifest): every shard as
    /// [`Publish::push_shard`] does, skipping files already in the store at the same size (an
    /// interrupted upload resumes), then `rejected.jsonl` and `manifest.json`.
    pub fn push_dataset(&self, dir: &Path) -> Result<Uploaded, IngestError> {
        let mp = dir.join("manifest.json");
        let text = std::fs::read(&mp).map_err(|e| IngestError::Io {
            path: mp.clone(),
            message: format!(
                "{e}; a data set without manifest.json is incomplete: finish syncdiff-dataprep first"
            ),
        })?;
        let manifest: crate::store::Manifest =
            serde_json::from_slice(&text).map_err(|e| IngestError::Io {
                path: mp.clone(),
                message: e.to_string(),
            })?;
        let there: std::collections::HashMap<String, u64> =
            self.store.list_files("")?.into_iter().collect();
        let mut sent = Uploaded::default();
        for shard in &manifest.shards {
            self.push_dir(dir, &shard.name, &there, &mut sent)?;
        }
        let (files, sent_bytes) = self.push_manifest(dir)?;
        sent.files += files;
        sent.bytes += sent_bytes;
        Ok(sent)
    }

    /// Uploads `rejected.jsonl` (when there is one), then `manifest.json`, from `out`; the
    /// files and bytes sent.
    pub fn push_manifest(&self, out: &Path) -> Result<(u64, u64), IngestError> {
        let mut sent = (0, 0);
        for name in ["rejected.jsonl", "manifest.json"] {
            let p = out.join(name);
            if name == "rejected.jsonl" && !p.exists() {
                continue;
            }
            let data = std::fs::read(&p).map_err(io(&p))?;
            self.store.put_bytes(name, &data)?;
            sent = (sent.0 + 1, sent.1 + data.len() as u64);
        }
        Ok(sent)
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
