//! One storage layer over object_store, for data sets and checkpoints: local paths and
//! `file://`, `s3://`, `gs://`, `az://`.
//! Credentials come from the environment (or instance metadata) through object_store's builders;
//! or explicitly as [`StoreOptions`]; nothing secret is taken from URLs or configs, and error
//! messages pass through [`syncdiff_model::config::redact_secrets`].
//!
//! The API is blocking (the trainer is not async): each store owns a small tokio runtime. Every
//! operation is retried with exponential backoff (for checkpoints: `checkpoint.retries`, `retry_backoff_s`), each
//! failed attempt reported on stderr.

mod conditional;

pub use conditional::{Conditional, Version};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use crate::hash::{hex, sha256_file};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use sha2::{Digest, Sha256};

use syncdiff_model::config::redact_secrets;

/// A storage operation that failed (after its retries) or a location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ObjError {
    /// The URL cannot be used.
    #[error("{url}: {message}")]
    Url {
        /// URL (redacted).
        url: String,
        /// Why.
        message: String,
    },
    /// A storage operation failed after its retries.
    #[error("{what} {url} failed after {attempts} attempt(s): {message}")]
    Storage {
        /// Object URL.
        url: String,
        /// upload, download, list or delete.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last error (credentials redacted).
        message: String,
    },
    /// A location opened for reading does not exist (distinct from one that holds nothing).
    #[error("{url}: no such directory")]
    NoLocation {
        /// URL.
        url: String,
    },
}

/// Part size of multipart uploads (S3 needs at least 5 MiB per part).
const PART: usize = 16 << 20;
/// Files up to this size go in one request.
const SINGLE_PUT_MAX: u64 = 32 << 20;

/// `url` with any `user:secret@` part and query values replaced by `***` (for messages).
pub fn safe_url(url: &str) -> String {
    syncdiff_model::config::redact_url(url)
}

/// Store settings given explicitly, beside the environment: object_store configuration keys
/// (`aws_endpoint`, `aws_access_key_id`, `google_service_account_key`, `azure_storage_account_key`,
/// ...) and their values, applied after the `from_env` ones. Every value is treated as a secret
/// in messages. `Debug` shows the keys only.
#[derive(Clone, Default)]
pub struct StoreOptions(pub Vec<(String, String)>);

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per operation (>= 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
}

/// A storage location: an object store and a prefix inside it.
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
    retry: Retry,
    rt: tokio::runtime::Runtime,
    /// Values of explicit options, hidden in messages.
    secrets: Vec<String>,
    /// The directory, for local stores (empty directories are removed after deletes).
    local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Transient errors are retried; a missing object or a refused credential is not.
fn transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    )
}

/// The store's own HTTP retries stay short: ours (reported) wrap them.
fn http_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        ..RetryConfig::default()
    }
}

impl Store {
    /// Opens `url` to write checkpoints: a local path, `file:///abs/dir`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix`. Local directories are created.
    pub fn open(url: &str, retry: Retry) -> Result<Self, ObjError> {
        Self::open_with(url, retry, true, &StoreOptions::default())
    }

    /// [`Store::open`] with explicit settings beside the environment's.
    pub fn open_with_options(
        url: &str,
        retry: Retry,
        options: &StoreOptions,
    ) -> Result<Self, ObjError> {
        Self::open_with(url, retry, true, options)
    }

    /// Opens `url` to read only: nothing is created, and a local directory that does not exist is
    /// an error ([`ObjError::NoLocation`]), not an empty location.
    pub fn open_read(url: &str, retry: Retry) -> Result<Self, ObjError> {
        Self::open_with(url, retry, false, &StoreOptions::default())
    }

    fn open_with(
        url: &str,
        retry: Retry,
        create: bool,
        options: &StoreOptions,
    ) -> Result<Self, ObjError> {
        let bad = |message: String| ObjError::Url {
            url: safe_url(url),
            message,
        };
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(problem) = syncdiff_model::config::url_secret_problem(url) {
            return Err(bad(format!(
                "credentials in the URL are refused: it {problem}"
            )));
        }
        let secrets: Vec<String> = options.0.iter().map(|(_, v)| v.clone()).collect();
        let store_err = |e: object_store::Error| bad(redact_secrets(&e.to_string(), &secrets));
        // An unknown key is an error naming it, not a setting silently ignored.
        fn keyed<K: std::str::FromStr>(
            options: &StoreOptions,
            url: &str,
        ) -> Result<Vec<(K, String)>, ObjError> {
            options
                .0
                .iter()
                .map(|(k, v)| {
                    k.parse()
                        .map(|key| (key, v.clone()))
                        .map_err(|_| ObjError::Url {
                            url: safe_url(url),
                            message: format!("unknown store option {k:?} for this scheme"),
                        })
                })
                .collect()
        }
        let local = matches!(scheme, "" | "file")
            .then(|| std::path::PathBuf::from(if scheme == "file" { rest } else { url }));
        let (inner, prefix): (Arc<dyn ObjectStore>, &str) = match scheme {
            "" | "file" => {
                if !options.0.is_empty() {
                    return Err(bad(
                        "store options apply to s3://, gs:// and az:// only".into()
                    ));
                }
                let dir = if scheme == "file" { rest } else { url };
                if create {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| bad(format!("cannot create the directory: {e}")))?;
                } else if !Path::new(dir).is_dir() {
                    return Err(ObjError::NoLocation { url: safe_url(url) });
                }
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(store_err)?;
                (Arc::new(fs), "")
            }
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(http_retry());
                for (key, value) in keyed::<object_store::aws::AmazonS3ConfigKey>(options, url)? {
                    b = b.with_config(key, value);
                }
                (Arc::new(b.build().map_err(store_err)?), prefix)
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(http_retry());
                for (key, value) in keyed::<object_store::gcp::GoogleConfigKey>(options, url)? {
                    b = b.with_config(key, value);
                }
                (Arc::new(b.build().map_err(store_err)?), prefix)
            }
            "az" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(http_retry());
                for (key, value) in keyed::<object_store::azure::AzureConfigKey>(options, url)? {
                    b = b.with_config(key, value);
                }
                (Arc::new(b.build().map_err(store_err)?), prefix)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other}://; use a path, file://, s3://, gs:// or az://"
                )))
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-io")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Self {
            inner,
            prefix: ObjPath::from(prefix.trim_end_matches('/')),
            url: url.trim_end_matches('/').to_string(),
            retry,
            rt,
            secrets,
            local,
        })
    }

    /// The URL as given (it holds no secret: credentials in URLs are refused).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The retry policy.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// `url/rel`, for messages.
    pub fn display(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    fn path(&self, rel: &str) -> ObjPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Runs `op` up to `retry.attempts` times, reporting each failed attempt.
    fn retrying<T>(
        &self,
        what: &str,
        rel: &str,
        mut op: impl FnMut() -> Result<T, object_store::Error>,
    ) -> Result<T, ObjError> {
        let mut wait = self.retry.backoff;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && attempt < self.retry.attempts => {
                    eprintln!(
                        "warning: {what} {}: attempt {attempt}/{} failed: {}; retrying in {:.1} s",
                        self.display(rel),
                        self.retry.attempts,
                        redact_secrets(&e.to_string(), &self.secrets),
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(ObjError::Storage {
                        url: self.display(rel),
                        what: what.to_string(),
                        attempts: attempt,
                        message: redact_secrets(&e.to_string(), &self.secrets),
                    })
                }
            }
        }
    }

    /// Writes `data` to `rel` in one request.
    pub fn put_bytes(&self, rel: &str, data: &[u8]) -> Result<(), ObjError> {
        let path = self.path(rel);
        let payload = bytes::Bytes::copy_from_slice(data);
        self.retrying("upload", rel, || {
            self.rt
                .block_on(self.inner.put(&path, PutPayload::from(payload.clone())))
                .map(|_| ())
        })
    }

    /// Uploads the concatenation of `chunks` to `rel` (one request up to 32 MiB, else a
    /// multipart upload, aborted when it fails); returns its size and sha256, computed from the
    /// bytes sent.
    pub fn put_chunks(&self, rel: &str, chunks: &[&[u8]]) -> Result<(u64, String), ObjError> {
        let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if size <= SINGLE_PUT_MAX {
            let data = chunks.concat();
            self.put_bytes(rel, &data)?;
            return Ok((size, hex(&Sha256::digest(&data))));
        }
        let path = self.path(rel);
        let mut sha = String::new();
        self.retrying("upload", rel, || {
            self.rt.block_on(async {
                let upload = self.inner.put_multipart(&path).await?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
                let mut hasher = Sha256::new();
                for chunk in chunks {
                    for piece in chunk.chunks(PART) {
                        if let Err(e) = w.wait_for_capacity(4).await {
                            let _ = w.abort().await;
                            return Err(e);
                        }
                        hasher.update(piece);
                        w.write(piece);
                    }
                }
                // finish() aborts the upload itself when completing it fails.
                w.finish().await?;
                sha = hex(&hasher.finalize());
                Ok(())
            })
        })?;
        Ok((size, sha))
    }

    /// Reads `rel` whole.
    pub fn get_bytes(&self, rel: &str) -> Result<Vec<u8>, ObjError> {
        let path = self.path(rel);
        self.retrying("download", rel, || {
            self.rt.block_on(async {
                let r = self.inner.get(&path).await?;
                Ok(r.bytes().await?.to_vec())
            })
        })
    }

    /// Downloads `rel` into the local file `dest`; returns its size and sha256.
    pub fn get_file(&self, rel: &str, dest: &Path) -> Result<(u64, String), ObjError> {
        use std::io::Write;
        let path = self.path(rel);
        self.retrying("download", rel, || {
            let mut out = std::fs::File::create(dest).map_err(io_as_store)?;
            self.rt.block_on(async {
                let mut stream = self.inner.get(&path).await?.into_stream();
                let (mut size, mut hasher) = (0u64, Sha256::new());
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    hasher.update(&chunk);
                    out.write_all(&chunk).map_err(io_as_store)?;
                    size += chunk.len() as u64;
                }
                out.flush().map_err(io_as_store)?;
                Ok((size, hex(&hasher.finalize())))
            })
        })
    }

    /// Names of the "directories" directly under the prefix.
    pub fn list_dirs(&self) -> Result<Vec<String>, ObjError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listed = self.retrying("list", "", || {
            self.rt.block_on(self.inner.list_with_delimiter(prefix))
        })?;
        let mut dirs: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Objects under `dir` (relative names and sizes).
    pub fn list_files(&self, dir: &str) -> Result<Vec<(String, u64)>, ObjError> {
        let path = self.path(dir);
        let metas = self.retrying("list", dir, || {
            self.rt.block_on(async {
                let mut out = Vec::new();
                let mut s = self.inner.list(Some(&path));
                while let Some(m) = s.next().await {
                    out.push(m?);
                }
                Ok(out)
            })
        })?;
        let base = path.as_ref().len();
        Ok(metas
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                let rel = full.get(base..).unwrap_or(full).trim_start_matches('/');
                (rel.to_string(), m.size)
            })
            .collect())
    }

    /// Copies the object `from` to `to` inside the store (server-side where the store can).
    pub fn copy(&self, from: &str, to: &str) -> Result<(), ObjError> {
        let (src, dst) = (self.path(from), self.path(to));
        self.retrying("copy", from, || {
            self.rt.block_on(self.inner.copy(&src, &dst))
        })
    }

    /// Deletes the object `rel`.
    pub fn delete(&self, rel: &str) -> Result<(), ObjError> {
        let path = self.path(rel);
        self.retrying("delete", rel, || self.rt.block_on(self.inner.delete(&path)))
    }

    /// Deletes every object under `dir`.
    pub fn delete_dir(&self, dir: &str) -> Result<(), ObjError> {
        for (name, _) in self.list_files(dir)? {
            self.delete(&format!("{dir}/{name}"))?;
        }
        if let Some(root) = &self.local {
            // Object stores have no directories; a file system keeps an empty one.
            let _ = std::fs::remove_dir(root.join(dir));
        }
        Ok(())
    }
}

fn io_as_store(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local file",
        source: Box::new(e),
    }
}
