//! Data sets on object storage (`data.dataset: s3://bucket/ds`, `gs://`, `az://`), read through a
//! node-local cache (`data.cache.dir`, at most `data.cache.max_gb`) shared by every rank and run on
//! the node. The trainer then reads the cached copy exactly as a data set on disk.
//!
//! ```text
//! CACHE/.lock                                 held while space is reserved or freed
//! CACHE/<url hash>-<manifest hash>/           one entry per data set version
//!     in-use.lock                             shared lock of every process reading the entry
//!     last-used  reserved  source.txt         LRU time, bytes reserved, the URL (for people)
//!     shard-00003.zarr/  (+ .files.json)      a finished shard and the sizes of its files
//!     shard-00004.zarr.partial-<pid>/         a fill in progress, or cut short by a kill
//!     shard-00004.zarr.lock                   held while that shard is filled
//!     manifest.json                           written once every shard is there
//! ```
//!
//! - A shard is filled under its own lock into a `.partial-<pid>` directory and renamed into place
//!   when every file has the size the store listed, so a reader never sees half a shard; a fill
//!   killed half-way leaves a partial directory, removed by the next filler (who holds the lock).
//!   A finished shard whose files no longer have their recorded sizes is fetched again.
//! - The node's ranks fill different shards first (each starts at its own offset), then wait for
//!   the others' shards: every shard is fetched once per node.
//! - Before filling, the bytes the manifest gives are reserved; to stay under the limit, entries
//!   of other data sets are removed, least recently used first, but never one that a process holds
//!   (its shared lock); if that is not enough, the run stops with an error naming the sizes.
//! - The entry's name includes the manifest's hash: a data set rebuilt at the same URL is a new
//!   entry, never a mix of old and new shards.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::publish::Publish;
pub use crate::publish::Uploaded;
use crate::shards::Manifest;
use sha2::{Digest, Sha256};
use syncdiff_model::config::Config;

use syncdiff_runtime::objstore::{hex, safe_url, ObjError, Retry, Store};

/// With the `fault-injection` feature: `N` makes the process exit (as if killed) after
/// downloading N files into a shard's partial directory.
pub const FAULT_CACHE_KILL_ENV: &str = "SYNCDIFF_FAULT_CACHE_KILL_AFTER";

/// Why a data set on object storage could not be made local.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store or the data set in it.
    #[error("{key} {url}: {message}")]
    Remote {
        /// The configuration key (`data.dataset`, `data.val_dataset`).
        key: String,
        /// The data set URL (no credentials: those are refused in URLs).
        url: String,
        /// What failed.
        message: String,
    },
    /// The cache directory.
    #[error("data.cache.dir {path}: {message}")]
    Cache {
        /// File or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Where and how a node caches data sets.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The cache directory.
    pub dir: PathBuf,
    /// The size limit in bytes.
    pub max_bytes: u64,
    /// Store retries (the checkpoint settings).
    pub retry: Retry,
    /// This process's rank on the node and the node's rank count (who fills which shard first).
    pub local_rank: usize,
    /// Ranks on the node.
    pub local_size: usize,
}

impl CacheSettings {
    /// From `data.cache` and `checkpoint.retries`/`retry_backoff_s`.
    pub fn from_config(config: &Config, local_rank: usize, local_size: usize) -> Self {
        let dir = config.data.cache.dir.clone().map_or_else(
            || std::env::temp_dir().join("syncdiff-data-cache"),
            PathBuf::from,
        );
        Self {
            dir,
            max_bytes: (config.data.cache.max_gb * 1e9) as u64,
            retry: Retry {
                attempts: config.checkpoint.retries,
                backoff: std::time::Duration::from_secs_f64(config.checkpoint.retry_backoff_s),
            },
            local_rank,
            local_size: local_size.max(1),
        }
    }
}

/// What one process did to make a data set local.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filled {
    /// The local copy.
    pub entry: PathBuf,
    /// Shards in the data set.
    pub shards: usize,
    /// Shards this process fetched.
    pub fetched_shards: usize,
    /// Files and bytes it fetched (the manifest aside).
    pub fetched_files: u64,
    /// Bytes it fetched.
    pub fetched_bytes: u64,
    /// Unfinished fills (of killed processes) it removed, and damaged shards it replaced.
    pub repaired: usize,
    /// Entries of other data sets it removed to make room.
    pub evicted: Vec<String>,
}

impl std::fmt::Display for Filled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} shard(s) in the node cache {}: {} fetched here ({} file(s), {:.1} MB), {} from the cache or other ranks",
            self.shards,
            self.entry.display(),
            self.fetched_shards,
            self.fetched_files,
            self.fetched_bytes as f64 / 1e6,
            self.shards - self.fetched_shards
        )?;
        if self.repaired > 0 {
            write!(
                f,
                "; {} unfinished or damaged shard fill(s) redone",
                self.repaired
            )?;
        }
        if !self.evicted.is_empty() {
            write!(f, "; removed to make room: {}", self.evicted.join(", "))?;
        }
        Ok(())
    }
}

/// Whether `location` is an object-store URL (else a local path).
pub fn is_remote(location: &str) -> bool {
    location.contains("://") && !location.starts_with("file://")
}

/// Locks held for the life of the process: the entries it reads stay.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this File owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn lock_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Bytes of every file under `dir` (0 when it is gone).
fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Relative names and sizes of a shard's files, as recorded when it was filled.
const FILES: &str = ".files.json";

/// Whether the finished shard `dir` still has every file at its recorded size.
fn complete(dir: &Path) -> bool {
    let Ok(text) = std::fs::read(dir.join(FILES)) else {
        return false;
    };
    let Ok(files) = serde_json::from_slice::<Vec<(String, u64)>>(&text) else {
        return false;
    };
    files
        .iter()
        .all(|(rel, size)| std::fs::metadata(dir.join(rel)).is_ok_and(|m| m.len() == *size))
}

/// Checks read access to the data set at `url` without filling the cache: reads its manifest,
/// lists its first shard and reads that shard's `zarr.json`. Returns a one-line summary.
pub fn probe(key: &str, url: &str, s: &CacheSettings) -> Result<String, CacheError> {
    let remote = |message: String| CacheError::Remote {
        key: key.to_string(),
        url: safe_url(url),
        message,
    };
    let store = Store::open_read(url, s.retry).map_err(|e| remote(e.to_string()))?;
    let (bytes, manifest) = read_manifest(&store, &remote)?;
    let first = manifest
        .shards
        .first()
        .ok_or_else(|| remote("manifest.json lists no shards".into()))?;
    let files = store
        .list_files(&first.name)
        .map_err(|e| remote(e.to_string()))?;
    if files.is_empty() {
        return Err(remote(format!(
            "{}: listed in manifest.json but not in the store",
            first.name
        )));
    }
    store
        .get_bytes(&format!("{}/zarr.json", first.name))
        .map_err(|e| remote(e.to_string()))?;
    let size: u64 = manifest.shards.iter().map(|e| e.bytes).sum::<u64>() + bytes.len() as u64;
    Ok(format!(
        "{key} {} readable ({} clips in {} shards, {:.2} GB; node cache {} holds up to {:.0} GB)",
        safe_url(url),
        manifest.clips(),
        manifest.shards.len(),
        size as f64 / 1e9,
        s.dir.display(),
        s.max_bytes as f64 / 1e9
    ))
}

/// The manifest's bytes and contents; a missing one is named as such.
fn read_manifest(
    store: &Store,
    remote: &impl Fn(String) -> CacheError,
) -> Result<(Vec<u8>, Manifest), CacheError> {
    let bytes = store.get_bytes("manifest.json").map_err(|e| {
        // Missing (a listing that answers, without the manifest) reads better than a 404.
        match store.list_files("") {
            Ok(found) if !found.iter().any(|(n, _)| n == "manifest.json") => remote(
                "no manifest.json there: not a data set, or one still being written (its manifest \
                 is written last)"
                    .into(),
            ),
            _ => remote(e.to_string()),
        }
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| remote(format!("manifest.json: {e}")))?;
    Ok((bytes, manifest))
}

/// Makes the data set at `url` (the value of `key`) local: returns the cached copy's directory,
/// ready for `Dataset::open`, and what this process did.
pub fn fill(key: &str, url: &str, s: &CacheSettings) -> Result<Filled, CacheError> {
    let remote = |message: String| CacheError::Remote {
        key: key.to_string(),
        url: safe_url(url),
        message,
    };
    let store_err = |e: ObjError| remote(e.to_string());
    let cache = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| CacheError::Cache {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let store = Store::open_read(url, s.retry).map_err(store_err)?;
    let (bytes, manifest) = read_manifest(&store, &remote)?;
    let name = format!(
        "{}-{}",
        &hex(&Sha256::digest(url.trim_end_matches('/').as_bytes()))[..12],
        &hex(&Sha256::digest(&bytes))[..12]
    );
    std::fs::create_dir_all(&s.dir).map_err(cache(&s.dir))?;
    let entry = s.dir.join(&name);
    hold(&entry).map_err(cache(&entry))?;
    let _ = std::fs::write(entry.join("source.txt"), format!("{}\n", safe_url(url)));
    let _ = std::fs::write(entry.join("last-used"), format!("{}\n", now_s()));

    let need: u64 = manifest.shards.iter().map(|e| e.bytes).sum::<u64>() + bytes.len() as u64;
    let evicted = reserve(&s.dir, &name, need, s.max_bytes).map_err(|e| match e {
        Reserve::Io(path, e) => CacheError::Cache {
            path,
            message: e.to_string(),
        },
        Reserve::Full { busy } => CacheError::Cache {
            path: s.dir.clone(),
            message: format!(
                "{key} {} needs {:.2} GB but data.cache.max_gb is {:.2} and {:.2} GB are held by \
                 data sets in use on this node: raise data.cache.max_gb or use another data.cache.dir",
                safe_url(url),
                need as f64 / 1e9,
                s.max_bytes as f64 / 1e9,
                busy as f64 / 1e9
            ),
        },
    })?;

    let mut out = Filled {
        entry: entry.clone(),
        shards: manifest.shards.len(),
        evicted,
        ..Filled::default()
    };
    let n = manifest.shards.len();
    let first = s.local_rank * n / s.local_size;
    let mut downloaded_files = 0u64;
    for i in (0..n).map(|k| (k + first) % n) {
        let shard = &manifest.shards[i].name;
        let lock = lock_file(&entry.join(format!("{shard}.lock"))).map_err(cache(&entry))?;
        flock(&lock, libc::LOCK_EX).map_err(cache(&entry))?;
        let done = entry.join(shard);
        if complete(&done) {
            continue;
        }
        // Nobody else fills this shard now (we hold its lock): what is there is dead.
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(cache(&done))?;
            out.repaired += 1;
        }
        for e in std::fs::read_dir(&entry).map_err(cache(&entry))?.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{shard}.partial-"))
            {
                std::fs::remove_dir_all(e.path()).map_err(cache(&e.path()))?;
                out.repaired += 1;
            }
        }
        let partial = entry.join(format!("{shard}.partial-{}", std::process::id()));
        let files = store.list_files(shard).map_err(store_err)?;
        if files.is_empty() {
            return Err(remote(format!(
                "{shard}: listed in manifest.json but not in the store"
            )));
        }
        for (rel, size) in &files {
            let dest = partial.join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(cache(parent))?;
            }
            let (got, _) = store
                .get_file(&format!("{shard}/{rel}"), &dest)
                .map_err(store_err)?;
            if got != *size {
                return Err(remote(format!(
                    "{shard}/{rel}: downloaded {got} bytes, the store listed {size}"
                )));
            }
            out.fetched_files += 1;
            out.fetched_bytes += got;
            downloaded_files += 1;
            fault_kill(downloaded_files);
        }
        let record = serde_json::to_vec(&files).unwrap_or_default();
        std::fs::write(partial.join(FILES), record).map_err(cache(&partial))?;
        std::fs::rename(&partial, &done).map_err(cache(&done))?;
        out.fetched_shards += 1;
    }
    let mp = entry.join("manifest.json");
    if std::fs::read(&mp).ok().as_deref() != Some(bytes.as_slice()) {
        let tmp = entry.join(format!(".manifest.json.{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &mp))
            .map_err(cache(&mp))?;
    }
    Ok(out)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Takes (and keeps for the process's life) a shared lock on `entry`'s `in-use.lock`, creating
/// the entry; retries when an eviction removed the entry between opening and locking.
fn hold(entry: &Path) -> std::io::Result<()> {
    loop {
        std::fs::create_dir_all(entry)?;
        let path = entry.join("in-use.lock");
        let f = lock_file(&path)?;
        flock(&f, libc::LOCK_SH)?;
        let same = std::fs::metadata(&path).is_ok_and(|m| {
            f.metadata()
                .is_ok_and(|h| h.ino() == m.ino() && h.dev() == m.dev())
        });
        if same {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(f);
            return Ok(());
        }
    }
}

enum Reserve {
    Io(PathBuf, std::io::Error),
    Full { busy: u64 },
}

/// Records that entry `name` needs `need` bytes and removes unused entries (least recently used
/// first) until everything fits in `max`; the names removed.
fn reserve(dir: &Path, name: &str, need: u64, max: u64) -> Result<Vec<String>, Reserve> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Reserve::Io(p.clone(), e)
    };
    let global = lock_file(&dir.join(".lock")).map_err(io(dir))?;
    flock(&global, libc::LOCK_EX).map_err(io(dir))?;
    let ours = dir.join(name);
    std::fs::write(ours.join("reserved"), format!("{need}\n")).map_err(io(&ours))?;
    // (name, bytes it takes or will take, last used)
    let mut others = Vec::new();
    let mut total = du(&ours).max(need);
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let path = e.path();
        if !path.is_dir() || e.file_name() == name {
            continue;
        }
        let size = du(&path).max(read_u64(&path.join("reserved")));
        total += size;
        others.push((e.file_name(), size, read_u64(&path.join("last-used"))));
    }
    others.sort_by_key(|o| o.2);
    let mut evicted = Vec::new();
    let mut busy = 0;
    for (other, size, _) in others {
        if total <= max {
            break;
        }
        let path = dir.join(&other);
        let Ok(lock) = lock_file(&path.join("in-use.lock")) else {
            continue;
        };
        if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            busy += size;
            continue;
        }
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
        total -= size;
        evicted.push(other.to_string_lossy().into_owned());
    }
    if total > max {
        let _ = std::fs::remove_file(ours.join("reserved"));
        return Err(Reserve::Full { busy });
    }
    Ok(evicted)
}

#[cfg(feature = "fault-injection")]
fn fault_kill(files: u64) {
    let at = std::env::var(FAULT_CACHE_KILL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if at == Some(files) {
        eprintln!("fault injection: killed after {files} cached file(s)");
        // SAFETY: _exit ends the process at once, as a kill would; nothing is touched after.
        unsafe { libc::_exit(9) };
    }
}

#[cfg(not(feature = "fault-injection"))]
fn fault_kill(_files: u64) {}

/// The local directory of the data set `location` (the value of `key`): the path itself, or the
/// node cache's copy of an object-store data set (filled first; `announce` prints what this
/// process did, one line on stderr prefixed with `prefix`).
pub fn local(
    key: &str,
    location: &str,
    config: &Config,
    local_rank: usize,
    local_size: usize,
    prefix: &str,
) -> Result<PathBuf, CacheError> {
    if !is_remote(location) {
        return Ok(PathBuf::from(
            location.strip_prefix("file://").unwrap_or(location),
        ));
    }
    let s = CacheSettings::from_config(config, local_rank, local_size);
    let filled = fill(key, location, &s)?;
    // One write for the whole line: ranks share the launcher's stderr, and a line written in
    // pieces interleaves with other ranks' lines.
    let line = format!("{prefix} {key} {}: {filled}\n", safe_url(location));
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    Ok(filled.entry)
}

/// Uploads the prepared data set `dir` to `url`: every shard's files (`entry.json` last), then
/// `rejected.jsonl`, then `manifest.json` last, so that a reader never finds a manifest whose
/// shards are not all there. Files already in the store with the same size are skipped (an
/// interrupted upload resumes). The same uploader as `syncdiff-dataprep --out URL`.
pub fn upload(dir: &Path, url: &str) -> Result<Uploaded, CacheError> {
    let remote = |message: String| CacheError::Remote {
        key: "upload".into(),
        url: safe_url(url),
        message,
    };
    let p = Publish::open(url).map_err(|e| remote(e.to_string()))?;
    p.push_dataset(dir).map_err(|e| remote(e.to_string()))
}
