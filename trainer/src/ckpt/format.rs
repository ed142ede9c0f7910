//! The checkpoint contract (ARCHITECTURE.md): `<url>/step-<9 digits>/` holds the weight files,
//! `trainer_state.json`, the resolved `config.yaml`, and `manifest.json` (written last) with the
//! size and sha256 of every other file. A directory without a valid manifest does not exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every trained and frozen parameter of TrainModel (`audio.*`, `temporal.*`, `unet.*`,
/// `bottleneck.*`).
pub const MODEL: &str = "model.safetensors";
/// EMA shadows of the trained parameters, plus `ema_updates`.
pub const EMA: &str = "ema.safetensors";
/// AdamW moments (`exp_avg.<name>`, `exp_avg_sq.<name>`) and `step`.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// [`TrainerState`] as JSON.
pub const STATE: &str = "trainer_state.json";
/// The resolved configuration of the run.
pub const CONFIG: &str = "config.yaml";
/// [`Manifest`] as JSON, written last.
pub const MANIFEST: &str = "manifest.json";

/// Version of the layout.
pub const FORMAT: u32 = 1;

/// The directory name of step `step`.
pub fn step_dir(step: u64) -> String {
    format!("step-{step:09}")
}

/// The step of a directory name `step-NNNNNNNNN`.
pub fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() == 9 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Where the run is: everything besides tensors that a resume needs or checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Layout version.
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Loader epoch.
    pub epoch: u64,
    /// Samples of the epoch consumed.
    pub consumed: u64,
    /// `train.seed`.
    pub seed: u64,
    /// Ranks of the run that saved it.
    pub world_size: u32,
    /// `train.global_batch` (a resume must keep it: the loader state counts in it).
    pub global_batch: u32,
    /// sha256 of the training data set's manifest.
    pub dataset_sha256: String,
    /// sha256 of external weight files used (`vq_f4`, `avhubert`), when any.
    pub external_weights: BTreeMap<String, String>,
    /// Seconds since the Unix epoch at save.
    pub saved_unix: u64,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the step directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, lower-case hex.
    pub sha256: String,
}

/// The last file written: what a valid checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version.
    pub format: u32,
    /// Step of the checkpoint.
    pub step: u64,
    /// Seconds since the Unix epoch at save.
    pub saved_unix: u64,
    /// Every other file.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Checks the manifest itself: format, the required files, nothing outside the directory.
    pub fn check(&self, dir_step: u64) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} (this build reads {FORMAT})",
                self.format
            ));
        }
        if self.step != dir_step {
            return Err(format!("manifest says step {}", self.step));
        }
        for required in [MODEL, STATE, CONFIG] {
            if !self.files.iter().any(|f| f.name == required) {
                return Err(format!("{required} is not listed"));
            }
        }
        if let Some(f) = self
            .files
            .iter()
            .find(|f| f.name.contains('/') || f.name == MANIFEST)
        {
            return Err(format!("bad file name {:?}", f.name));
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn step_directories_round_trip_and_reject_others() {
        assert_eq!(step_dir(1234), "step-000001234");
        assert_eq!(parse_step_dir("step-000001234"), Some(1234));
        for bad in [
            "step-1234",
            "step-00000123x",
            "steps-000001234",
            "step-0000012345",
        ] {
            assert_eq!(parse_step_dir(bad), None, "{bad}");
        }
    }
}
