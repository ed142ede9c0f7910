//! Loading and saving named weights (safetensors) with errors that name the tensor, and importing
//! original PyTorch checkpoints without executing their pickles.

pub mod convert;
pub mod pickle;
pub mod torchzip;

use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Why weights could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or parsed.
    #[error(
        "{path}: not a readable safetensors file (damaged, truncated or another format): {message}"
    )]
    Read {
        /// File.
        path: String,
        /// Reason.
        message: String,
    },
    /// The file could not be written.
    #[error("{path}: cannot write safetensors: {message}")]
    Write {
        /// File.
        path: String,
        /// Reason.
        message: String,
    },
    /// A parameter of the model is not in the file.
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?}){hint}")]
    Missing {
        /// File.
        path: String,
        /// Parameter name.
        name: String,
        /// Shape the model needs.
        expected: Vec<i64>,
        /// Extra context, e.g. how many others are missing.
        hint: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// File.
        path: String,
        /// Parameter name.
        name: String,
        /// Shape the model needs.
        expected: Vec<i64>,
        /// Shape in the file.
        actual: Vec<i64>,
    },
    /// A tensor is not floating point.
    #[error("{path}: tensor `{name}` has dtype {actual:?}, expected a floating-point dtype (model uses {expected:?})")]
    Dtype {
        /// File.
        path: String,
        /// Parameter name.
        name: String,
        /// Kind the model uses.
        expected: Kind,
        /// Kind in the file.
        actual: Kind,
    },
    /// The file has tensors the model does not.
    #[error("{path}: {count} tensor(s) the model does not have, e.g. `{first}` (wrong model configuration?)")]
    Unexpected {
        /// File.
        path: String,
        /// How many.
        count: usize,
        /// The first one.
        first: String,
    },
    /// A tensor holds NaN or Inf.
    #[error("refusing to save: tensor `{name}` holds NaN or Inf")]
    NonFinite {
        /// Parameter name.
        name: String,
    },
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>, WeightsError> {
    let tensors = Tensor::read_safetensors(path).map_err(|e| WeightsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(tensors.into_iter().collect())
}

/// Copies the tensors of `file` into the variables of `vs` whose names start with `prefix`
/// (the prefix is stripped before matching file names). Every such variable must be present
/// with the same shape and a floating dtype; file tensors under no variable are an error.
pub fn load_into(
    vs: &VarStore,
    prefix: &str,
    path: &Path,
    file: &BTreeMap<String, Tensor>,
) -> Result<(), WeightsError> {
    let p = path.display().to_string();
    let vars: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v)))
        .collect();
    // Shape and dtype first: on a wrong configuration they say more than a missing name.
    for (name, var) in &vars {
        let Some(src) = file.get(name) else { continue };
        if src.size() != var.size() {
            return Err(WeightsError::Shape {
                path: p,
                name: name.clone(),
                expected: var.size(),
                actual: src.size(),
            });
        }
        if !src.is_floating_point() {
            return Err(WeightsError::Dtype {
                path: p,
                name: name.clone(),
                expected: var.kind(),
                actual: src.kind(),
            });
        }
    }
    let missing: Vec<&String> = vars.keys().filter(|k| !file.contains_key(*k)).collect();
    let unexpected: Vec<&String> = file.keys().filter(|k| !vars.contains_key(*k)).collect();
    if let Some(first) = missing.first() {
        let mut hint = if missing.len() > 1 {
            format!(" and {} more", missing.len() - 1)
        } else {
            String::new()
        };
        if let Some(odd) = unexpected.first() {
            // Names that are there but wrong: a changed byte in the header does exactly this.
            hint += &format!(
                "; the file has {} name(s) the model does not, e.g. `{odd}`: a damaged file, or \
                 weights of another model",
                unexpected.len()
            );
        }
        return Err(WeightsError::Missing {
            path: p,
            name: (*first).clone(),
            expected: vars[*first].size(),
            hint,
        });
    }
    if let Some(first) = unexpected.first() {
        return Err(WeightsError::Unexpected {
            path: p,
            count: unexpected.len(),
            first: (*first).clone(),
        });
    }
    for (name, var) in &vars {
        let src = &file[name];
        tch::no_grad(|| {
            let mut v = var.shallow_clone();
            v.copy_(&src.to_kind(var.kind()).to_device(var.device()));
        });
    }
    Ok(())
}

/// Loads a whole safetensors file into `vs` (strict: see [`load_into`]).
pub fn load(vs: &VarStore, path: &Path) -> Result<(), WeightsError> {
    load_into(vs, "", path, &read(path)?)
}

/// Writes named tensors to a safetensors file, refusing NaN or Inf.
pub fn save(tensors: &[(String, Tensor)], path: &Path) -> Result<(), WeightsError> {
    for (name, t) in tensors {
        if t.is_floating_point() && !bool::try_from(t.isfinite().all()).unwrap_or(false) {
            return Err(WeightsError::NonFinite { name: name.clone() });
        }
    }
    let contiguous: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.contiguous()))
        .collect();
    Tensor::write_safetensors(&contiguous, path).map_err(|e| WeightsError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Number of scalar parameters of the variables whose names start with `prefix`.
pub fn count(vs: &VarStore, prefix: &str) -> i64 {
    vs.variables()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v.numel() as i64)
        .sum()
}
