//! Resuming a run on any number of ranks: rank 0 picks the checkpoint (`auto`: the newest that
//! downloads and verifies; a URL: exactly that one) and tells every rank; the first rank of each
//! node downloads and verifies it once into a node-local directory; every rank reads it to host
//! memory from there (each rank then moves tensors to its own device, never all to one GPU).

use std::path::PathBuf;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::topology::Communicator;
use serde::{Deserialize, Serialize};

use super::load::{exact, fetch, newest_valid, read, split_url, Restored};
use super::{CkptError, Manifest, Store};
use crate::dist::Runtime;

/// `--resume`: `auto`, `never`, or a checkpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumePolicy {
    /// Start fresh, whatever exists.
    Never,
    /// The newest valid checkpoint under `checkpoint.url`, else a fresh start.
    Auto,
    /// Exactly this checkpoint (`BASE/step-NNNNNNNNN`), or an error.
    Url(String),
}

impl ResumePolicy {
    /// Parses the `--resume` argument.
    pub fn parse(arg: &str) -> Self {
        match arg {
            "never" => Self::Never,
            "auto" => Self::Auto,
            url => Self::Url(url.to_string()),
        }
    }
}

/// What rank 0 decided, sent to every rank.
#[derive(Debug, Serialize, Deserialize)]
enum Decision {
    Fresh,
    Resume {
        base: String,
        dir: String,
        manifest: Manifest,
        local_root: PathBuf,
    },
    Failed(String),
}

fn broadcast_bytes(rt: &Runtime, bytes: &mut Vec<u8>) {
    let root = rt.comm().process_at_rank(0);
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    bytes.resize(len as usize, 0);
    root.broadcast_into(&mut bytes[..]);
}

/// Rank 0's choice (downloads and verifies into `local_root`).
fn decide(policy: &ResumePolicy, store: &Store, local_root: &std::path::Path) -> Decision {
    let chosen = match policy {
        ResumePolicy::Never => return Decision::Fresh,
        ResumePolicy::Auto => {
            newest_valid(store, local_root).map(|c| c.map(|c| (store.url().to_string(), c)))
        }
        ResumePolicy::Url(url) => match split_url(url) {
            None => Err(CkptError::Url {
                url: url.clone(),
                message: "--resume URL must end in /step-NNNNNNNNN (see `syncdiff ckpt list`)"
                    .into(),
            }),
            Some((base, dir)) => {
                let own;
                let s = if base.trim_end_matches('/') == store.url() {
                    store
                } else {
                    match Store::open(base, store.retry()) {
                        Ok(x) => {
                            own = x;
                            &own
                        }
                        Err(e) => return Decision::Failed(e.to_string()),
                    }
                };
                exact(s, dir, local_root).map(|c| Some((base.to_string(), c)))
            }
        },
    };
    match chosen {
        Ok(None) => Decision::Fresh,
        Ok(Some((base, c))) => Decision::Resume {
            base,
            dir: c.dir,
            manifest: c.manifest,
            local_root: local_root.to_path_buf(),
        },
        Err(e) => Decision::Failed(e.to_string()),
    }
}

/// Runs the resume protocol on every rank; `None` means a fresh start.
pub fn resume(
    policy: &ResumePolicy,
    store: &Store,
    rt: &Runtime,
) -> Result<Option<(String, Restored)>, CkptError> {
    if *policy == ResumePolicy::Never {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    if rt.is_main() {
        // One directory per job, the same path for every rank of a node.
        let local_root = std::env::temp_dir().join(format!(
            "syncdiff-resume-{}-{}",
            std::process::id(),
            super::format::now_unix()
        ));
        let d = decide(policy, store, &local_root);
        bytes = serde_json::to_vec(&d).unwrap_or_default();
    }
    broadcast_bytes(rt, &mut bytes);
    let decision: Decision = serde_json::from_slice(&bytes)
        .map_err(|e| CkptError::Resume(format!("cannot decode rank 0's decision: {e}")))?;
    let (base, dir, manifest, local_root) = match decision {
        Decision::Fresh => return Ok(None),
        Decision::Failed(m) => return Err(CkptError::Resume(m)),
        Decision::Resume {
            base,
            dir,
            manifest,
            local_root,
        } => (base, dir, manifest, local_root),
    };
    let local = local_root.join(&dir);
    let leader = rt.node_comm().rank() == 0;
    // Rank 0 has its copy; the first rank of every other node downloads one.
    let fetched = if leader && !rt.is_main() {
        Store::open(&base, store.retry())
            .and_then(|s| fetch(&s, &dir, &manifest, &local))
            .map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    let mut all_ok = 0i32;
    rt.comm().all_reduce_into(
        &i32::from(fetched.is_ok()),
        &mut all_ok,
        SystemOperation::min(),
    );
    if let Err(m) = fetched {
        return Err(CkptError::Resume(m));
    }
    if all_ok == 0 {
        return Err(CkptError::Resume(
            "another node could not download the checkpoint (see its message)".into(),
        ));
    }
    rt.node_comm().barrier();
    let restored = read(&local, &manifest);
    rt.node_comm().barrier();
    if leader {
        let _ = std::fs::remove_dir_all(&local_root);
    }
    Ok(Some((format!("{base}/{dir}"), restored?)))
}
