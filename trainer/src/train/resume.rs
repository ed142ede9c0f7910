//! Resuming a run on any number of ranks: rank 0 picks the checkpoint (`auto`: the newest that
//! downloads and verifies; a URL: exactly that one) and tells every rank; the first rank of each
//! node downloads and verifies it once into a node-local directory; every rank reads it to host
//! memory from there (each rank then moves tensors to its own device, never all to one GPU).

use std::path::PathBuf;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::topology::Communicator;
use serde::{Deserialize, Serialize};

use syncdiff_checkpoint::lineage::{describe, in_the_way, set_aside, Start};
use syncdiff_checkpoint::{
    exact, fetch, list, new_run_id, newest_valid_of, read, split_url, Chosen, CkptError, Listed,
    Manifest, Restored, Store, SET_ASIDE,
};

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

impl std::str::FromStr for ResumePolicy {
    type Err = std::convert::Infallible;

    /// The `--resume` argument: `auto`, `never`, or a checkpoint URL (checked when resuming).
    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        Ok(match arg {
            "never" => Self::Never,
            "auto" => Self::Auto,
            url => Self::Url(url.to_string()),
        })
    }
}

/// What rank 0 decided, sent to every rank.
#[derive(Debug, Serialize, Deserialize)]
enum Decision {
    Fresh {
        run: String,
    },
    Resume {
        run: String,
        base: String,
        dir: String,
        manifest: Manifest,
        local_root: PathBuf,
    },
    Failed(String),
}

/// How a run starts: its run id, and the checkpoint it continues (None: fresh).
#[derive(Debug)]
pub struct Resumed {
    /// The run id its checkpoints record (a resumed run keeps the id of the run it continues).
    pub run: String,
    /// `URL/step-N` and its contents, when resuming.
    pub from: Option<(String, Restored)>,
}

fn broadcast_bytes(rt: &Runtime, bytes: &mut Vec<u8>) {
    let root = rt.comm().process_at_rank(0);
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    bytes.resize(len as usize, 0);
    root.broadcast_into(&mut bytes[..]);
}

/// The checkpoint `policy` names (downloaded and verified into `local_root`), or None for a
/// fresh start.
fn choose(
    policy: &ResumePolicy,
    store: &Store,
    listed: &[Listed],
    local_root: &std::path::Path,
) -> Result<Option<(String, Chosen)>, CkptError> {
    match policy {
        ResumePolicy::Never => Ok(None),
        ResumePolicy::Auto => {
            Ok(newest_valid_of(store, listed, local_root)?.map(|c| (store.url().to_string(), c)))
        }
        ResumePolicy::Url(url) => {
            let Some((base, dir)) = split_url(url) else {
                return Err(CkptError::Url {
                    url: url.clone(),
                    message: "--resume URL must end in /step-NNNNNNNNN (see `syncdiff ckpt list`)"
                        .into(),
                });
            };
            let c = if base.trim_end_matches('/') == store.url() {
                exact(store, dir, local_root)?
            } else {
                exact(&Store::open_read(base, store.retry())?, dir, local_root)?
            };
            Ok(Some((base.to_string(), c)))
        }
    }
}

/// Rank 0's choice: the checkpoint to continue, with the location's other checkpoints checked
/// against it (see [`super::lineage`]).
fn decide(
    policy: &ResumePolicy,
    move_aside: bool,
    store: &Store,
    local_root: &std::path::Path,
) -> Result<Decision, CkptError> {
    // One listing of `checkpoint.url` serves both the choice and the check against it.
    let listed = list(store)?;
    let chosen = choose(policy, store, &listed, local_root)?;
    let start = match &chosen {
        None => Start::Fresh,
        Some((_, c)) => Start::From {
            step: c.step,
            run: c.manifest.run.as_deref(),
        },
    };
    let found = in_the_way(&listed, start);
    // `auto` skips checkpoints that fail verification (with a warning each): the ones newer
    // than the one it continues can never be resumed, and this run is about to write those
    // steps again, so they go aside by themselves.
    let damaged_newer = matches!(policy, ResumePolicy::Auto) && chosen.is_some();
    let (aside, refused): (Vec<&Listed>, Vec<&Listed>) = found.into_iter().partition(|c| {
        move_aside || (damaged_newer && matches!(start, Start::From { step, .. } if c.step > step))
    });
    if !refused.is_empty() {
        let url = store.url();
        let what = describe(&refused);
        let how = format!(
            "use a new checkpoint.url, or add --move-aside to move them to {url}/{SET_ASIDE}/<UTC time>/ \
             (where --resume auto never looks; nothing is deleted)"
        );
        let message = match (policy, &chosen) {
            (ResumePolicy::Auto, None) => format!(
                "no checkpoint under {url} verifies ({what}: see the warnings above), and a fresh \
                 start would mix a new run with them; check them with `syncdiff ckpt inspect`, or {how}"
            ),
            (_, None) => format!(
                "{url} already holds checkpoints ({what}); --resume never would start a second run \
                 among them: continue it with --resume auto, or {how}"
            ),
            (_, Some((base, c))) => format!(
                "{url} holds checkpoints that continuing from {base}/{} would mix with ({what}: \
                 newer steps or another run); to roll back on purpose, {how}",
                c.dir
            ),
        };
        return Ok(Decision::Failed(message));
    }
    if !aside.is_empty() {
        let to = set_aside(store, &aside)?;
        eprintln!(
            "note: moved {} checkpoint(s) out of the way to {to}: {}",
            aside.len(),
            describe(&aside)
        );
    }
    Ok(match chosen {
        None => Decision::Fresh { run: new_run_id() },
        Some((base, c)) => Decision::Resume {
            run: c.manifest.run.clone().unwrap_or_else(new_run_id),
            base,
            dir: c.dir,
            manifest: c.manifest,
            local_root: local_root.to_path_buf(),
        },
    })
}

/// Runs the resume protocol on every rank: rank 0 decides (and refuses a start that would mix
/// runs under `checkpoint.url`, unless `move_aside`), the others follow.
pub fn resume(
    policy: &ResumePolicy,
    move_aside: bool,
    store: &Store,
    rt: &Runtime,
) -> Result<Resumed, CkptError> {
    let mut bytes = Vec::new();
    if rt.is_main() {
        // One directory per job, the same path for every rank of a node.
        let local_root = std::env::temp_dir().join(format!(
            "syncdiff-resume-{}-{}",
            std::process::id(),
            syncdiff_checkpoint::now_unix()
        ));
        let d = decide(policy, move_aside, store, &local_root)
            .unwrap_or_else(|e| Decision::Failed(e.to_string()));
        if matches!(d, Decision::Failed(_) | Decision::Fresh { .. }) {
            let _ = std::fs::remove_dir_all(&local_root);
        }
        bytes = serde_json::to_vec(&d).map_err(|e| CkptError::Resume(e.to_string()))?;
    }
    broadcast_bytes(rt, &mut bytes);
    let decision: Decision = serde_json::from_slice(&bytes)
        .map_err(|e| CkptError::Resume(format!("cannot decode rank 0's decision: {e}")))?;
    let (run, base, dir, manifest, local_root) = match decision {
        Decision::Fresh { run } => return Ok(Resumed { run, from: None }),
        Decision::Failed(m) => return Err(CkptError::Resume(m)),
        Decision::Resume {
            run,
            base,
            dir,
            manifest,
            local_root,
        } => (run, base, dir, manifest, local_root),
    };
    let local = local_root.join(&dir);
    let leader = rt.node_comm().rank() == 0;
    // Rank 0 has its copy; the first rank of every other node downloads one.
    let fetched = if leader && !rt.is_main() {
        Store::open_read(&base, store.retry())
            .map_err(CkptError::from)
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
    Ok(Resumed {
        run,
        from: Some((format!("{base}/{dir}"), restored?)),
    })
}
