//! Saving: the loop hands over a [`Snapshot`] (tensors already copied to host memory) and goes
//! on; a background thread streams each file to the store (refusing NaN/Inf, hashing on the
//! way), writes `manifest.json` last, then applies retention. At most one save is in
//! flight: the next waits for the previous.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tch::Tensor;

use super::format::{self, FileEntry, Manifest, TrainerState};
use super::lease::Lease;
use super::load::list;
use super::safetensors::encode;
use super::CkptError;
use super::Store;

/// Test-only fault injection (cargo feature `fault-injection`): `FILE@STEP` kills the process
/// (abort) right after uploading that file of the checkpoint of that step, leaving a save cut
/// off mid-way.
#[cfg(feature = "fault-injection")]
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
    retention: Retention,
    /// The writer lease every save checks before its manifest and its deletions.
    fence: Option<Arc<Lease>>,
    pending: Option<JoinHandle<Result<SaveReport, CkptError>>>,
    /// The outcome of a save made in the foreground (no writer thread could start).
    done: Option<Result<SaveReport, CkptError>>,
}

impl Saver {
    /// Saves under `store`.
    pub fn new(store: Arc<Store>, retention: Retention) -> Self {
        Self {
            store,
            retention,
            fence: None,
            pending: None,
            done: None,
        }
    }

    /// Every save from now on checks `lease` before its manifest and its retention deletes.
    pub fn fenced_by(mut self, lease: Arc<Lease>) -> Self {
        self.fence = Some(lease);
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits for the save in flight, if any, and returns its outcome.
    pub fn wait(&mut self) -> Option<Result<SaveReport, CkptError>> {
        if let Some(done) = self.done.take() {
            return Some(done);
        }
        let h = self.pending.take()?;
        Some(h.join().unwrap_or_else(|_| {
            Err(CkptError::Io {
                path: self.store.url().to_string(),
                message: "the checkpoint writer thread panicked".into(),
            })
        }))
    }

    /// Starts saving `snap` in the background after the previous save finished; returns the
    /// previous save's outcome.
    pub fn save_async(&mut self, snap: Snapshot) -> Option<Result<SaveReport, CkptError>> {
        let previous = self.wait();
        let (store, retention, fence) = (self.store.clone(), self.retention, self.fence.clone());
        // The snapshot travels to the thread once it runs, so a thread that cannot start does
        // not take the checkpoint with it.
        let (tx, rx) = std::sync::mpsc::channel::<Snapshot>();
        let spawned = std::thread::Builder::new()
            .name("ckpt-save".into())
            .spawn(move || match rx.recv() {
                Ok(snap) => write_fenced(&store, retention, snap, fence.as_deref()),
                Err(_) => Err(CkptError::Io {
                    path: store.url().to_string(),
                    message: "the checkpoint writer thread received no snapshot".into(),
                }),
            });
        match spawned {
            Ok(h) => {
                // The receiver lives until the thread has the snapshot: sending cannot fail.
                let _ = tx.send(snap);
                self.pending = Some(h);
            }
            Err(e) => {
                eprintln!(
                    "warning: cannot start the checkpoint writer thread ({e}); saving step {} \
                     in the foreground",
                    snap.state.step
                );
                self.done = Some(write_fenced(
                    &self.store,
                    self.retention,
                    snap,
                    self.fence.as_deref(),
                ));
            }
        }
        previous
    }

    /// Saves `snap` now (waiting for any save in flight first).
    pub fn save_blocking(&mut self, snap: Snapshot) -> Result<SaveReport, CkptError> {
        if let Some(Err(e)) = self.wait() {
            eprintln!("warning: {e}");
        }
        write_fenced(&self.store, self.retention, snap, self.fence.as_deref())
    }
}

/// Writes one checkpoint: each file streamed to the store (hashed on the way), the manifest
/// last, then retention.
pub fn write(store: &Store, retention: Retention, snap: Snapshot) -> Result<SaveReport, CkptError> {
    write_fenced(store, retention, snap, None)
}

/// [`write`] for the holder of `fence`: the lease is checked before the first upload, before
/// the manifest and before retention deletes anything; a lost lease stops the save there.
pub fn write_fenced(
    store: &Store,
    retention: Retention,
    snap: Snapshot,
    fence: Option<&Lease>,
) -> Result<SaveReport, CkptError> {
    let check = || fence.map_or(Ok(()), Lease::check);
    check()?;
    let start = Instant::now();
    let step = snap.state.step;
    let dir = format::step_dir(step);
    let failed = |message: String| CkptError::Save { step, message };
    #[cfg(feature = "fault-injection")]
    let kill_after = std::env::var(FAULT_KILL_AFTER_ENV).ok().and_then(|v| {
        let (file, at) = v.split_once('@')?;
        (at.parse::<u64>().ok()? == step).then(|| file.to_string())
    });
    #[cfg(not(feature = "fault-injection"))]
    let kill_after: Option<String> = None;
    let mut files = Vec::new();
    let mut upload = |name: &str, chunks: &[&[u8]]| -> Result<(), CkptError> {
        let (bytes, sha256) = store.put_chunks(&format!("{dir}/{name}"), chunks)?;
        files.push(FileEntry {
            name: name.to_string(),
            bytes,
            sha256,
        });
        if kill_after.as_deref() == Some(name) {
            eprintln!("fault injection: killing the process after uploading {name}");
            std::process::abort();
        }
        Ok(())
    };
    for (name, tensors) in [
        (format::MODEL, &snap.model),
        (format::EMA, &snap.ema),
        (format::OPTIMIZER, &snap.optimizer),
    ] {
        if tensors.is_empty() {
            continue;
        }
        let encoded = encode(tensors).map_err(failed)?;
        upload(name, &encoded.chunks())?;
    }
    let state = serde_json::to_vec_pretty(&snap.state).map_err(|e| failed(e.to_string()))?;
    upload(format::STATE, &[&state])?;
    upload(format::CONFIG, &[snap.config_yaml.as_bytes()])?;
    let manifest = Manifest {
        format: format::FORMAT,
        step,
        saved_unix: format::now_unix(),
        files,
        run: snap.state.run.clone(),
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
    check()?;
    store.put_bytes(&format!("{dir}/{}", format::MANIFEST), &text)?;
    check()?;
    let deleted = apply_retention(store, retention, snap.state.run.as_deref(), step)?;
    Ok(SaveReport {
        step,
        url: store.display(&dir),
        bytes: manifest.bytes() + text.len() as u64,
        seconds: start.elapsed().as_secs_f64(),
        deleted,
    })
}

/// Deletes the checkpoints of run `run` that retention does not keep: valid ones beyond the
/// run's newest `keep_last` (except multiples of `keep_every`), and cut-off saves (no manifest)
/// older than the run's newest checkpoint. Never deleted: `just_written`, the run's newest
/// checkpoint, anything newer than it, and checkpoints of other runs (or of builds that did not
/// record a run: `run` None matches only those).
pub fn apply_retention(
    store: &Store,
    r: Retention,
    run: Option<&str>,
    just_written: u64,
) -> Result<Vec<String>, CkptError> {
    let listed = list(store)?;
    let ours =
        |c: &&super::load::Listed| c.manifest.as_ref().is_some_and(|m| m.run.as_deref() == run);
    let mine: Vec<u64> = listed.iter().filter(ours).map(|c| c.step).collect();
    let Some(&newest) = mine.iter().max() else {
        return Ok(Vec::new());
    };
    let mut keep: Vec<u64> = mine
        .iter()
        .rev()
        .take(r.keep_last.max(1) as usize)
        .copied()
        .collect();
    keep.extend([newest, just_written]);
    let mut deleted = Vec::new();
    for c in &listed {
        let delete = match &c.manifest {
            Some(_) if ours(&c) => {
                !keep.contains(&c.step) && !r.keep_every.is_some_and(|m| m > 0 && c.step % m == 0)
            }
            Some(_) => false,
            None => c.step < newest && c.step != just_written,
        };
        if delete {
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
