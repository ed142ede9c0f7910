//! Checkpoints on object storage (the storage layer is `syncdiff_runtime::objstore`, re-exported
//! here): the file layout (`format`), background saves with retention (`save`), finding and
//! verifying (`load`), what may change on resume (`compat`), the writer lease (`lease`), runs set
//! aside (`lineage`), bundles for generation (`bundle`), and safetensors files (`safetensors`).
//!
//! Training and generation both use it, so it holds no MPI: resuming on any world size (one
//! download per node, agreed over MPI) is the trainer's (`syncdiff_trainer::train::resume`).

mod bundle;
mod compat;
mod format;
mod lease;
pub mod lineage;
mod load;
mod safetensors;
mod save;

pub use bundle::{BundleInfo, BUNDLE};
pub use compat::{check_compatible, flatten};
pub use format::{
    new_run_id, now_unix, parse_step_dir, step_dir, utc_stamp, FileEntry, LossScaleState, Manifest,
    TrainerState, CONFIG, EMA, FORMAT, MANIFEST, MODEL, OPTIMIZER, STATE,
};
pub use lease::{Holder, Lease, Takeover, LEASE};
pub use lineage::SET_ASIDE;
pub use load::{
    exact, fetch, list, newest_valid, newest_valid_of, read, split_url, Chosen, Listed, Restored,
};
#[cfg(feature = "fault-injection")]
pub use save::FAULT_KILL_AFTER_ENV;
pub use save::{
    apply_retention, to_host, write, write_fenced, Retention, SaveReport, Saver, Snapshot,
};
pub use syncdiff_runtime::objstore::{
    hex, safe_url, sha256_file, ObjError, Retry, Store, StoreOptions,
};

/// Checkpoint errors. Messages name the URL or file; none holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum CkptError {
    /// The URL cannot be used.
    #[error("checkpoint.url {url}: {message}")]
    Url {
        /// URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Object storage failed: the URL, an operation after its retries, a missing location.
    #[error("{}", store_message(.0))]
    Store(#[from] ObjError),
    /// A local file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// Local path.
        path: String,
        /// Why.
        message: String,
    },
    /// A downloaded file does not match the manifest.
    #[error("{url} is damaged: {message}")]
    Corrupt {
        /// Object URL.
        url: String,
        /// What differs.
        message: String,
    },
    /// No such checkpoint.
    #[error("{url}: no such checkpoint")]
    NotFound {
        /// URL.
        url: String,
    },
    /// The checkpoint has no valid manifest.
    #[error("{url} is not a valid checkpoint: {message}")]
    Invalid {
        /// URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Writing a checkpoint failed before upload (e.g. NaN weights).
    #[error("checkpoint of step {step} not saved: {message}")]
    Save {
        /// Step.
        step: u64,
        /// Why.
        message: String,
    },
    /// The checkpoint cannot continue this run.
    #[error("cannot resume from {url}: {message}")]
    Incompatible {
        /// Checkpoint URL.
        url: String,
        /// Which key differs and how.
        message: String,
    },
    /// Another rank failed during the resume.
    #[error("resume: {0}")]
    Resume(String),
    /// Another job holds the writer lease on the checkpoint URL (or it cannot be read).
    #[error("{url}: {message}")]
    LeaseHeld {
        /// The lease's URL.
        url: String,
        /// Who holds it and what to do.
        message: String,
    },
    /// This job's writer lease was taken over: it saves nothing more.
    #[error("{url}: {message}")]
    LeaseLost {
        /// The lease's URL.
        url: String,
        /// Who holds it now.
        message: String,
    },
}

/// Storage errors in checkpoint terms (a bad URL is `checkpoint.url`'s).
/// An object-storage error as a checkpoint error says it: a URL problem names the setting.
fn store_message(e: &ObjError) -> String {
    match e {
        ObjError::Url { .. } => format!("checkpoint.url {e}"),
        _ => e.to_string(),
    }
}
