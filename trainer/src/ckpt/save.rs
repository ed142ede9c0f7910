//! Saving: the loop hands over a [`Snapshot`] (tensors already copied to host memory) and goes
//! on; a background thread writes the files to a local staging directory (refusing NaN/Inf),
//! uploads them, writes `manifest.json` last, then applies retention. At most one save is in
//! flight: the next waits for the previous.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tch::Tensor;

use super::format::{self, FileEntry, Manifest, TrainerState};
use super::load::list;
use super::store::Store;
use super::CkptError;

/// Test-only fault injection: `FILE@STEP` kills the process (abort) right after uploading that
/// file of the checkpoint of that step, leaving a save cut off mid-way.
pub const FAULT_KILL_AFTER_ENV: &str = "SYNCDIFF_FAULT_KILL_AFTER";

/// Everything a checkpoint holds, on the host.
#[derive(Debug)]
pub struct Snapshot {
    /// Named model tensors.
    pub model: Vec<(String, Tensor)>,
    /// EMA shadows (empty when EMA is off).
    pub ema: Vec<(String, Tensor)>,
    /// Optimizer state (empty for SGD).
    pub optimizer: Vec<(String, Tensor)>,
    /// Trainer state.
    pub state: TrainerState,
    /// Resolved configuration (YAML).
    pub config_yaml: String,
}

/// Copies named tensors to host memory (the only part of a save the loop waits for).
pub fn to_host(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tch::no_grad(|| {
        tensors
            .into_iter()
            .map(|(n, t)| {
                let host = t.detach().to_device(tch::Device::Cpu);
                // On the CPU `to_device` aliases: copy so later steps cannot change the snapshot.
                let host = if host.data_ptr() == t.data_ptr() {
                    host.copy()
                } else {
                    host
                };
                (n, host)
            })
            .collect()
    })
}

/// Which checkpoints to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// The newest K valid checkpoints.
    pub keep_last: u32,
    /// Every checkpoint whose step is a multiple of this.
    pub keep_every: Option<u64>,
}

/// What a finished save did.
#[derive(Debug, Clone)]
pub struct SaveReport {
    /// Step saved.
    pub step: u64,
    /// Where.
    pub url: String,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Seconds from hand-over to manifest.
    pub seconds: f64,
    /// Checkpoint directories deleted by retention.
    pub deleted: Vec<String>,
}

/// Writes checkpoints in the background, one at a time.
#[derive(Debug)]
pub struct Saver {
    store: Arc<Store>,
    staging: PathBuf,
    retention: Retention,
    pending: Option<JoinHandle<Result<SaveReport, CkptError>>>,
}

impl Saver {
    /// Saves under `store`, staging files in `staging` (a local directory).
    pub fn new(store: Arc<Store>, staging: PathBuf, retention: Retention) -> Self {
        Self {
            store,
            staging,
            retention,
            pending: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits for the save in flight, if any, and returns its outcome.
    pub fn wait(&mut self) -> Option<Result<SaveReport, CkptError>> {
        let h = self.pending.take()?;
        Some(h.join().unwrap_or_else(|_| {
            Err(CkptError::Io {
                path: self.staging.display().to_string(),
                message: "the checkpoint writer thread panicked".into(),
            })
        }))
    }

    /// Starts saving `snap` in the background after the previous save finished; returns the
    /// previous save's outcome.
    pub fn save_async(&mut self, snap: Snapshot) -> Option<Result<SaveReport, CkptError>> {
        let previous = self.wait();
        let (store, staging, retention) =
            (self.store.clone(), self.staging.clone(), self.retention);
        self.pending = std::thread::Builder::new()
            .name("ckpt-save".into())
            .spawn(move || write(&store, &staging, retention, snap))
            .ok();
        previous
    }

    /// Saves `snap` now (waiting for any save in flight first).
    pub fn save_blocking(&mut self, snap: Snapshot) -> Result<SaveReport, CkptError> {
        if let Some(Err(e)) = self.wait() {
            eprintln!("warning: {e}");
        }
        write(&self.store, &self.staging, self.retention, snap)
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CkptError + '_ {
    move |e| CkptError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes one checkpoint: staged files, uploads, manifest last, retention.
pub fn write(
    store: &Store,
    staging: &Path,
    retention: Retention,
    snap: Snapshot,
) -> Result<SaveReport, CkptError> {
    let start = Instant::now();
    let step = snap.state.step;
    let dir = format::step_dir(step);
    let local = staging.join(&dir);
    std::fs::create_dir_all(&local).map_err(io(&local))?;
    let result = (|| {
        let mut names = Vec::new();
        for (name, tensors) in [
            (format::MODEL, &snap.model),
            (format::EMA, &snap.ema),
            (format::OPTIMIZER, &snap.optimizer),
        ] {
            if tensors.is_empty() {
                continue;
            }
            let path = local.join(name);
            syncdiff_model::weights::save(tensors, &path).map_err(|e| CkptError::Save {
                step,
                message: e.to_string(),
            })?;
            names.push(name);
        }
        let state = serde_json::to_vec_pretty(&snap.state).map_err(|e| CkptError::Save {
            step,
            message: e.to_string(),
        })?;
        std::fs::write(local.join(format::STATE), state).map_err(io(&local))?;
        std::fs::write(local.join(format::CONFIG), &snap.config_yaml).map_err(io(&local))?;
        names.extend([format::STATE, format::CONFIG]);
        let kill_after = std::env::var(FAULT_KILL_AFTER_ENV).ok().and_then(|v| {
            let (file, at) = v.split_once('@')?;
            (at.parse::<u64>().ok()? == step).then(|| file.to_string())
        });
        let mut files = Vec::new();
        for name in names {
            let (bytes, sha256) = store.put_file(&format!("{dir}/{name}"), &local.join(name))?;
            files.push(FileEntry {
                name: name.to_string(),
                bytes,
                sha256,
            });
            if kill_after.as_deref() == Some(name) {
                eprintln!("fault injection: killing the process after uploading {name}");
                std::process::abort();
            }
        }
        let manifest = Manifest {
            format: format::FORMAT,
            step,
            saved_unix: format::now_unix(),
            files,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CkptError::Save {
            step,
            message: e.to_string(),
        })?;
        store.put_bytes(&format!("{dir}/{}", format::MANIFEST), &text)?;
        Ok(manifest.bytes() + text.len() as u64)
    })();
    let _ = std::fs::remove_dir_all(&local);
    let bytes = result?;
    let deleted = apply_retention(store, retention)?;
    Ok(SaveReport {
        step,
        url: store.display(&dir),
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        deleted,
    })
}

/// Deletes checkpoints retention does not keep: valid ones beyond the newest `keep_last` (except
/// multiples of `keep_every`), and cut-off saves older than the newest valid checkpoint. The
/// newest valid checkpoint is never deleted; nothing newer than it is touched.
pub fn apply_retention(store: &Store, r: Retention) -> Result<Vec<String>, CkptError> {
    let listed = list(store)?;
    let valid: Vec<u64> = listed
        .iter()
        .filter(|c| c.manifest.is_some())
        .map(|c| c.step)
        .collect();
    let Some(&newest) = valid.iter().max() else {
        return Ok(Vec::new());
    };
    let mut keep: Vec<u64> = valid
        .iter()
        .rev()
        .take(r.keep_last.max(1) as usize)
        .copied()
        .collect();
    keep.push(newest);
    let mut deleted = Vec::new();
    for c in &listed {
        let keep_it = if c.manifest.is_some() {
            keep.contains(&c.step) || r.keep_every.is_some_and(|m| m > 0 && c.step % m == 0)
        } else {
            c.step >= newest
        };
        if !keep_it {
            if c.manifest.is_some() {
                // Invisible first, then gone.
                store.delete(&format!("{}/{}", c.dir, format::MANIFEST))?;
            }
            store.delete_dir(&c.dir)?;
            deleted.push(c.dir.clone());
        }
    }
    Ok(deleted)
}
