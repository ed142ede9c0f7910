//! Writing a data set to object storage (`syncdiff-dataprep lrs2 --out s3://bucket/ds`): shards
//! are built in a local staging directory as always, each is uploaded as soon as it is finished
//! (its `entry.json` last, so a shard with an `entry.json` in the store is whole), and the
//! manifest goes up last, written by whichever rank or array task finds every shard there.
//!
//! Resuming (another run, another node, a job-array task): a shard whose `entry.json` is in the
//! store is finished; its record is copied into the staging directory, where the usual checks
//! (settings, clip list) see it, and the shard is not built again. The staging directory is never
//! taken as proof that the store has a shard: a shard finished in the stage but missing or
//! different in the store is uploaded again, a copied record the store no longer backs is
//! dropped (the shard is built again), and the manifest goes up only after every shard it lists
//! is verified in the store (names and sizes).

use std::path::{Path, PathBuf};

use crate::shards::shard_name;
use syncdiff_runtime::objstore::{safe_url, ObjError, Retry, Store, StoreOptions};

/// Why a data set could not be published or read back from its store.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A local file of the staging directory could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Reason.
        message: String,
    },
    /// The store failed (the URL, an operation after its retries).
    #[error(transparent)]
    Store(#[from] ObjError),
    /// The store does not hold what the manifest would list.
    #[error("{0}")]
    Incomplete(String),
}

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

fn io(path: &Path) -> impl Fn(std::io::Error) -> PublishError + '_ {
    move |e| PublishError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Publish {
    /// Opens `url` (s3://, gs://, az://) with the environment's credentials.
    pub fn open(url: &str) -> Result<Self, PublishError> {
        Self::open_with_options(url, &StoreOptions::default())
    }

    /// [`Publish::open`] with explicit store settings beside the environment's.
    pub fn open_with_options(url: &str, options: &StoreOptions) -> Result<Self, PublishError> {
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
    ) -> Result<(), PublishError> {
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

    /// Makes the staging directory `out` agree with the store for the finished shards among
    /// `shards`, before they are counted as done: a shard built here (its files are in `out`)
    /// whose files are missing from the store or differ in size there is uploaded again
    /// (`entry.json` last); a shard known here only by a record copied from the store, which the
    /// store no longer has, loses that record (it is built again, or waited for). Returns the
    /// shards uploaded again.
    pub fn reconcile(
        &self,
        out: &Path,
        shards: impl Iterator<Item = usize>,
    ) -> Result<Vec<String>, PublishError> {
        let there: std::collections::HashMap<String, u64> =
            self.store.list_files("")?.into_iter().collect();
        let mut again = Vec::new();
        for i in shards {
            let name = shard_name(i);
            let dir = out.join(&name);
            if !dir.join("entry.json").exists() {
                continue;
            }
            let mut files = Vec::new();
            walk(&dir, &mut files).map_err(io(&dir))?;
            if files.len() > 1 {
                let mut sent = Uploaded::default();
                self.push_dir(out, &name, &there, &mut sent)?;
                if sent.files > 0 {
                    again.push(name);
                }
            } else if !there.contains_key(&format!("{name}/entry.json")) {
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
        }
        Ok(again)
    }

    /// Checks, before a manifest goes up, that the store holds every shard in `names`: its
    /// `entry.json`, and every file the staging directory `out` has of it, at the same size.
    pub fn verify(&self, out: &Path, names: &[String]) -> Result<(), PublishError> {
        let there: std::collections::HashMap<String, u64> =
            self.store.list_files("")?.into_iter().collect();
        let url = self.url();
        let bad = |rel: &str, why: String| {
            PublishError::Incomplete(format!(
                "{}/{rel}: {why}; manifest.json not written (run the same command again to \
                 upload what is missing)",
                url.trim_end_matches('/')
            ))
        };
        for name in names {
            let entry = format!("{name}/entry.json");
            if !there.contains_key(&entry) {
                return Err(bad(&entry, "not in the store".into()));
            }
            for (f, rel) in staged(out, name)? {
                let size = std::fs::metadata(&f).map_err(io(&f))?.len();
                match there.get(&rel) {
                    Some(&s) if s == size => {}
                    Some(&s) => {
                        return Err(bad(&rel, format!("{s} bytes in the store, {size} staged")))
                    }
                    None => return Err(bad(&rel, "not in the store".into())),
                }
            }
        }
        Ok(())
    }

    /// Uploads the finished shard `i` from `out`: every file, `entry.json` last.
    pub fn push_shard(&self, out: &Path, i: usize) -> Result<(), PublishError> {
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
    ) -> Result<(), PublishError> {
        let mut files = staged(out, dir)?;
        files.sort_by_key(|(p, _)| (p.file_name().is_some_and(|n| n == "entry.json"), p.clone()));
        for (f, rel) in files {
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
    pub fn push_dataset(&self, dir: &Path) -> Result<Uploaded, PublishError> {
        let mp = dir.join("manifest.json");
        let text = std::fs::read(&mp).map_err(|e| PublishError::Io {
            path: mp.clone(),
            message: format!(
                "{e}; a data set without manifest.json is incomplete: finish syncdiff-dataprep first"
            ),
        })?;
        let manifest: crate::shards::Manifest =
            serde_json::from_slice(&text).map_err(|e| PublishError::Io {
                path: mp.clone(),
                message: e.to_string(),
            })?;
        let there: std::collections::HashMap<String, u64> =
            self.store.list_files("")?.into_iter().collect();
        let mut sent = Uploaded::default();
        for shard in &manifest.shards {
            self.push_dir(dir, &shard.name, &there, &mut sent)?;
        }
        let names: Vec<String> = manifest.shards.iter().map(|s| s.name.clone()).collect();
        self.verify(dir, &names)?;
        let (files, sent_bytes) = self.push_manifest(dir)?;
        sent.files += files;
        sent.bytes += sent_bytes;
        Ok(sent)
    }

    /// Uploads `rejected.jsonl` (when there is one), then `manifest.json`, from `out`; the
    /// files and bytes sent.
    pub fn push_manifest(&self, out: &Path) -> Result<(u64, u64), PublishError> {
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
    pub fn remove_manifest(&self) -> Result<(), PublishError> {
        let listed = self.store.list_files("")?;
        if listed.iter().any(|(n, _)| n == "manifest.json") {
            self.store.delete("manifest.json")?;
        }
        Ok(())
    }
}

/// The staging directory for `url` when none is given: under the system's temporary directory,
/// named by a hash of the URL (the same URL resumes in the same place).
pub fn default_stage(url: &str) -> PathBuf {
    use sha2::Digest;
    let h =
        syncdiff_runtime::hash::hex(&sha2::Sha256::digest(url.trim_end_matches('/').as_bytes()));
    std::env::temp_dir()
        .join("syncdiff-dataprep-stage")
        .join(&h[..16])
}

/// Every file under `out/dir` with its name relative to `out` (its name in the store).
fn staged(out: &Path, dir: &str) -> Result<Vec<(PathBuf, String)>, PublishError> {
    let root = out.join(dir);
    let mut files = Vec::new();
    walk(&root, &mut files).map_err(io(&root))?;
    Ok(files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(out)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            (f, rel)
        })
        .collect())
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
