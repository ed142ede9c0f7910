//! Finding, verifying and reading checkpoints. Only safetensors, JSON and YAML are read: loading
//! a checkpoint never executes anything from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::format::{self, Manifest, TrainerState};
use super::CkptError;
use super::Store;
use syncdiff_runtime::objstore::ObjError;

/// A checkpoint directory as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Step from the directory name.
    pub step: u64,
    /// Directory name.
    pub dir: String,
    /// The manifest, when present and well-formed (the checkpoint exists).
    pub manifest: Option<Manifest>,
    /// Why it does not count, when it does not.
    pub problem: Option<String>,
}

/// Every `step-*` directory under the store, oldest first, with its manifest when valid.
/// File contents are not verified here (see [`fetch`]).
pub fn list(store: &Store) -> Result<Vec<Listed>, CkptError> {
    let mut out = Vec::new();
    for dir in store.list_dirs()? {
        let Some(step) = format::parse_step_dir(&dir) else {
            continue;
        };
        let files = store.list_files(&dir)?;
        let (manifest, problem) = if files.iter().any(|(n, _)| n == format::MANIFEST) {
            let text = store.get_bytes(&format!("{dir}/{}", format::MANIFEST))?;
            match serde_json::from_slice::<Manifest>(&text) {
                Ok(m) => match m.check(step) {
                    Ok(()) => match m.files.iter().find(|f| {
                        !files
                            .iter()
                            .any(|(n, size)| *n == f.name && *size == f.bytes)
                    }) {
                        None => (Some(m), None),
                        Some(f) => (
                            None,
                            Some(format!("{} is missing or has the wrong size", f.name)),
                        ),
                    },
                    Err(e) => (None, Some(format!("manifest: {e}"))),
                },
                Err(e) => (None, Some(format!("manifest unreadable: {e}"))),
            }
        } else {
            (None, Some("no manifest (an unfinished save)".into()))
        };
        out.push(Listed {
            step,
            dir,
            manifest,
            problem,
        });
    }
    out.sort_by_key(|c| c.step);
    Ok(out)
}

/// Downloads every file of a checkpoint into `local` and verifies sizes and sha256.
pub fn fetch(store: &Store, dir: &str, manifest: &Manifest, local: &Path) -> Result<(), CkptError> {
    std::fs::create_dir_all(local).map_err(|e| CkptError::Io {
        path: local.display().to_string(),
        message: e.to_string(),
    })?;
    for f in &manifest.files {
        let rel = format!("{dir}/{}", f.name);
        let (bytes, sha) = store.get_file(&rel, &local.join(&f.name))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(CkptError::Corrupt {
                url: store.display(&rel),
                message: format!(
                    "{bytes} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}",
                    f.bytes, f.sha256
                ),
            });
        }
    }
    Ok(())
}

/// A checkpoint chosen for a resume, downloaded and verified.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// Step.
    pub step: u64,
    /// Directory name.
    pub dir: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Where its files are on this node.
    pub local: PathBuf,
}

/// The newest checkpoint that downloads and verifies, trying older ones (with a warning) when
/// the newest is damaged; `None` when there is none.
pub fn newest_valid(store: &Store, local_root: &Path) -> Result<Option<Chosen>, CkptError> {
    newest_valid_of(store, &list(store)?, local_root)
}

/// [`newest_valid`] among checkpoints already listed from `store` (oldest first).
pub fn newest_valid_of(
    store: &Store,
    listed: &[Listed],
    local_root: &Path,
) -> Result<Option<Chosen>, CkptError> {
    for c in listed.iter().rev() {
        let Some(m) = &c.manifest else {
            eprintln!(
                "warning: skipping {}: {}",
                store.display(&c.dir),
                c.problem.as_deref().unwrap_or("invalid")
            );
            continue;
        };
        let local = local_root.join(&c.dir);
        match fetch(store, &c.dir, m, &local) {
            Ok(()) => {
                return Ok(Some(Chosen {
                    step: c.step,
                    dir: c.dir.clone(),
                    manifest: m.clone(),
                    local,
                }))
            }
            Err(e @ (CkptError::Corrupt { .. } | CkptError::Store(ObjError::Storage { .. }))) => {
                let _ = std::fs::remove_dir_all(&local);
                eprintln!("warning: {e}; using the next older checkpoint");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The checkpoint `dir` (which must be valid), downloaded and verified.
pub fn exact(store: &Store, dir: &str, local_root: &Path) -> Result<Chosen, CkptError> {
    let listed = list(store)?;
    let Some(c) = listed.iter().find(|c| c.dir == dir) else {
        return Err(CkptError::NotFound {
            url: store.display(dir),
        });
    };
    let Some(m) = &c.manifest else {
        return Err(CkptError::Invalid {
            url: store.display(dir),
            message: c.problem.clone().unwrap_or_default(),
        });
    };
    let local = local_root.join(dir);
    fetch(store, dir, m, &local)?;
    Ok(Chosen {
        step: c.step,
        dir: dir.to_string(),
        manifest: m.clone(),
        local,
    })
}

/// Splits a checkpoint URL `BASE/step-NNNNNNNNN` into the store URL and the directory name.
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    let url = url.trim_end_matches('/');
    let (base, dir) = url.rsplit_once('/')?;
    format::parse_step_dir(dir).map(|_| (base, dir))
}

/// A checkpoint read into host memory.
#[derive(Debug)]
pub struct Restored {
    /// Trainer state.
    pub state: TrainerState,
    /// Model tensors by name.
    pub model: BTreeMap<String, Tensor>,
    /// EMA state, when saved.
    pub ema: Option<BTreeMap<String, Tensor>>,
    /// Optimizer state, when saved.
    pub optimizer: Option<BTreeMap<String, Tensor>>,
    /// The resolved configuration of the run that saved it.
    pub config_yaml: String,
}

/// Reads a verified checkpoint from its local directory (CPU tensors).
pub fn read(local: &Path, manifest: &Manifest) -> Result<Restored, CkptError> {
    let io = |path: &Path, e: String| CkptError::Io {
        path: path.display().to_string(),
        message: e,
    };
    let has = |name: &str| manifest.files.iter().any(|f| f.name == name);
    let weights = |name: &str| -> Result<Option<BTreeMap<String, Tensor>>, CkptError> {
        if !has(name) {
            return Ok(None);
        }
        let path = local.join(name);
        syncdiff_model::weights::read(&path)
            .map(Some)
            .map_err(|e| io(&path, e.to_string()))
    };
    let state_path = local.join(format::STATE);
    let text = std::fs::read(&state_path).map_err(|e| io(&state_path, e.to_string()))?;
    let state: TrainerState =
        serde_json::from_slice(&text).map_err(|e| io(&state_path, e.to_string()))?;
    let config_path = local.join(format::CONFIG);
    let config_yaml =
        std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e.to_string()))?;
    Ok(Restored {
        state,
        model: weights(format::MODEL)?.unwrap_or_default(),
        ema: weights(format::EMA)?,
        optimizer: weights(format::OPTIMIZER)?,
        config_yaml,
    })
}
