//! Inference bundles (`syncdiff ckpt export`): a directory with `weights.safetensors`,
//! `config.yaml`, `autoencoder.safetensors` for VQ models, and `bundle.json` written last with
//! the size and sha256 of each of them, verified whenever the bundle is loaded (as a
//! checkpoint's manifest is).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::format::FileEntry;
use super::sha256_file;
use super::CkptError;

/// The description of a bundle, written last.
pub const BUNDLE: &str = "bundle.json";

/// `bundle.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleInfo {
    /// The checkpoint it was exported from.
    pub source: String,
    /// Its step.
    pub step: u64,
    /// Which weights (`EMA weights`, or live ones when the run had no EMA).
    pub weights: String,
    /// The run that trained it, when recorded.
    #[serde(default)]
    pub run: Option<String>,
    /// Seconds since the Unix epoch at export.
    pub created_unix: u64,
    /// Every other file of the bundle.
    pub files: Vec<FileEntry>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> CkptError {
    CkptError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl BundleInfo {
    /// Hashes `names` (files already in `dir`) into `self.files` and writes `bundle.json`.
    pub fn write(mut self, dir: &Path, names: &[&str]) -> Result<(), CkptError> {
        self.files = names
            .iter()
            .map(|name| {
                let p = dir.join(name);
                let (bytes, sha256) = sha256_file(&p).map_err(|e| io(&p, e))?;
                Ok(FileEntry {
                    name: name.to_string(),
                    bytes,
                    sha256,
                })
            })
            .collect::<Result<_, CkptError>>()?;
        let p = dir.join(BUNDLE);
        let text = serde_json::to_vec_pretty(&self).map_err(|e| io(&p, e))?;
        std::fs::write(&p, text).map_err(|e| io(&p, e))
    }

    /// Reads `dir/bundle.json` and checks the size and sha256 of every file it lists.
    pub fn verify(dir: &Path) -> Result<Self, CkptError> {
        let p = dir.join(BUNDLE);
        let text = std::fs::read(&p).map_err(|e| CkptError::Invalid {
            url: dir.display().to_string(),
            message: format!(
                "{BUNDLE}: {e} (a bundle is made by `syncdiff ckpt export`, which lists every \
                 file's sha256 there)"
            ),
        })?;
        let info: Self = serde_json::from_slice(&text).map_err(|e| CkptError::Invalid {
            url: dir.display().to_string(),
            message: format!(
                "{BUNDLE} unreadable or without file hashes ({e}); export the bundle again"
            ),
        })?;
        for f in &info.files {
            let path = dir.join(&f.name);
            if f.name.contains('/') || f.name == BUNDLE {
                return Err(CkptError::Invalid {
                    url: dir.display().to_string(),
                    message: format!("{BUNDLE} lists a bad file name {:?}", f.name),
                });
            }
            let (bytes, sha) = sha256_file(&path).map_err(|e| io(&path, e))?;
            if bytes != f.bytes || sha != f.sha256 {
                return Err(CkptError::Corrupt {
                    url: path.display().to_string(),
                    message: format!(
                        "{bytes} bytes with sha256 {sha}, {BUNDLE} says {} bytes with sha256 {}",
                        f.bytes, f.sha256
                    ),
                });
            }
        }
        Ok(info)
    }

    /// Whether the bundle lists `name` (so that it was verified).
    pub fn lists(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name)
    }
}
