//! Conditional writes: create an object only if it is absent, replace it only if it is still the
//! version that was read (compare-and-swap). Object stores do it with their own preconditions
//! through object_store's put modes (S3: `If-None-Match: *` / `If-Match: <etag>`; GCS:
//! generation match; Azure: etag match). A local directory has no such request: the same
//! semantics come from an exclusive lock (`flock`) on a file beside the object, held for the
//! read-compare-write, the version being the content's sha256.

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::{Digest, Sha256};

use super::{hex, ObjError, Store};

/// The version of an object that a conditional write expects to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// An object store's etag and version.
    Remote {
        /// Entity tag.
        e_tag: Option<String>,
        /// Object version (where the store keeps versions).
        version: Option<String>,
    },
    /// A local file: the sha256 of its content.
    Local(String),
}

impl Version {
    fn update(&self) -> UpdateVersion {
        match self {
            Version::Remote { e_tag, version } => UpdateVersion {
                e_tag: e_tag.clone(),
                version: version.clone(),
            },
            Version::Local(sha) => UpdateVersion {
                e_tag: Some(sha.clone()),
                version: None,
            },
        }
    }
}

/// How a conditional write that is not an error ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    /// Written; the new version.
    Written(Version),
    /// Not written: the object exists (create), or changed or went away (update).
    Refused,
}

fn local_version(bytes: &[u8]) -> Version {
    Version::Local(hex(&Sha256::digest(bytes)))
}

fn precondition(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

impl Store {
    /// Reads `rel` with its version; `None` when it does not exist.
    pub fn get_versioned(&self, rel: &str) -> Result<Option<(Vec<u8>, Version)>, ObjError> {
        if let Some(root) = &self.local {
            let p = root.join(rel);
            return match std::fs::read(&p) {
                Ok(b) => {
                    let v = local_version(&b);
                    Ok(Some((b, v)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.local_error("download", rel, &e)),
            };
        }
        let path = self.path(rel);
        self.retrying("download", rel, || {
            self.rt.block_on(async {
                match self.inner.get(&path).await {
                    Ok(r) => {
                        let (e_tag, version) = (r.meta.e_tag.clone(), r.meta.version.clone());
                        let b = r.bytes().await?.to_vec();
                        Ok(Some((b, Version::Remote { e_tag, version })))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
        })
    }

    /// Writes `data` to `rel` only if `expected` is `None` and nothing is there (create), or if
    /// what is there is still the version `expected` (compare-and-swap).
    pub fn put_conditional(
        &self,
        rel: &str,
        data: &[u8],
        expected: Option<&Version>,
    ) -> Result<Conditional, ObjError> {
        if self.local.is_some() {
            return self.put_conditional_local(rel, data, expected);
        }
        let path = self.path(rel);
        let mode = match expected {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v.update()),
        };
        let payload = bytes::Bytes::copy_from_slice(data);
        self.retrying("conditional upload", rel, || {
            let opts = PutOptions {
                mode: mode.clone(),
                ..PutOptions::default()
            };
            let put = self
                .inner
                .put_opts(&path, PutPayload::from(payload.clone()), opts);
            match self.rt.block_on(put) {
                Ok(r) => Ok(Conditional::Written(Version::Remote {
                    e_tag: r.e_tag,
                    version: r.version,
                })),
                Err(e) if precondition(&e) => Ok(Conditional::Refused),
                Err(e) => Err(e),
            }
        })
    }

    /// Deletes `rel` if it is still the version `expected` (local: under the lock; object
    /// stores: read, compare, delete, a window of one request). Returns whether it was deleted.
    pub fn delete_if(&self, rel: &str, expected: &Version) -> Result<bool, ObjError> {
        let _lock = self.local_lock(rel)?;
        match self.get_versioned(rel)? {
            Some((_, v)) if v == *expected => {
                self.delete(rel)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn put_conditional_local(
        &self,
        rel: &str,
        data: &[u8],
        expected: Option<&Version>,
    ) -> Result<Conditional, ObjError> {
        let _lock = self.local_lock(rel)?;
        let current = self.get_versioned(rel)?.map(|(_, v)| v);
        if current.as_ref() != expected {
            return Ok(Conditional::Refused);
        }
        let Some(root) = &self.local else {
            return Ok(Conditional::Refused);
        };
        let p = root.join(rel);
        let tmp = p.with_file_name(format!(
            ".{}.{}.partial",
            rel.replace('/', "_"),
            std::process::id()
        ));
        std::fs::write(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, &p))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                self.local_error("conditional upload", rel, &e)
            })?;
        Ok(Conditional::Written(local_version(data)))
    }

    /// For a local store, an exclusive lock on `rel.lock` beside `rel`, held until the file
    /// handle drops; nothing for object stores.
    fn local_lock(&self, rel: &str) -> Result<Option<std::fs::File>, ObjError> {
        let Some(root) = &self.local else {
            return Ok(None);
        };
        let p = root.join(format!("{rel}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| self.local_error("lock", rel, &e))?;
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: flock on a descriptor this File owns; no memory is passed.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Some(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(self.local_error("lock", rel, &e));
            }
        }
    }

    fn local_error(&self, what: &str, rel: &str, e: &std::io::Error) -> ObjError {
        ObjError::Storage {
            url: self.display(rel),
            what: what.to_string(),
            attempts: 1,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::objstore::Retry;

    #[test]
    fn local_create_and_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let retry = Retry {
            attempts: 1,
            backoff: std::time::Duration::ZERO,
        };
        let s = Store::open(dir.path().to_str().unwrap(), retry).unwrap();
        let Conditional::Written(v1) = s.put_conditional("lease.json", b"a", None).unwrap() else {
            panic!("create refused on an empty store")
        };
        assert_eq!(
            s.put_conditional("lease.json", b"b", None).unwrap(),
            Conditional::Refused
        );
        let (bytes, v) = s.get_versioned("lease.json").unwrap().unwrap();
        assert_eq!((bytes.as_slice(), &v), (&b"a"[..], &v1));
        let Conditional::Written(v2) = s.put_conditional("lease.json", b"c", Some(&v1)).unwrap()
        else {
            panic!("update of the version just read refused")
        };
        // The old version is gone: a second writer holding it is refused.
        assert_eq!(
            s.put_conditional("lease.json", b"d", Some(&v1)).unwrap(),
            Conditional::Refused
        );
        assert!(!s.delete_if("lease.json", &v1).unwrap());
        assert!(s.delete_if("lease.json", &v2).unwrap());
        assert!(s.get_versioned("lease.json").unwrap().is_none());
    }
}
