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
    /// The run that wrote it (see [`new_run_id`]); `None` in checkpoints of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The fp16 loss scaler (`train.precision: fp16` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScaleState>,
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
    /// The run that wrote it (the same as in `trainer_state.json`, here so that listing a URL
    /// tells runs apart without downloading more); `None` in checkpoints of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
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

/// A new run id: `run-<UTC date and time>-<8 hex digits>`, unique in practice (the digits mix
/// the time in nanoseconds, the process id and the host name). A run keeps its id across
/// resumes: a lineage of checkpoints shares one id.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in now
        .as_nanos()
        .to_le_bytes()
        .iter()
        .chain(&std::process::id().to_le_bytes())
        .chain(host.as_bytes())
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("run-{}-{:08x}", utc_stamp(now.as_secs()), h as u32)
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time.
pub fn utc_stamp(unix: u64) -> String {
    let (days, rem) = (unix / 86_400, unix % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a checkpoint keeps of fp16 training's loss scaler (`trainer_state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaleState {
    /// The current scale.
    pub scale: f32,
    /// Finite steps in a row since the last growth or back-off.
    pub growth_tracker: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn run_ids_carry_the_date_and_differ() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(utc_stamp(1_796_142_896), "20261201T163456Z");
        let (a, b) = (new_run_id(), new_run_id());
        assert!(a.starts_with("run-20") && a.len() == 29, "{a}");
        assert_ne!(a, b);
    }

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
