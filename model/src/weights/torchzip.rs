//! Reading `torch.save` zip checkpoints without Python and without executing their pickle.
//!
//! Layout: `<name>/data.pkl` (the pickle), `<name>/data/<key>` (raw little-endian storages),
//! `<name>/byteorder` (optional). Tensors are views (offset, size, stride) into storages, which
//! several tensors may share.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::pickle::{self, PickleError, StorageKind, TensorRef, Value};

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be opened or read.
    #[error("{path}: {message}")]
    Io {
        /// File.
        path: PathBuf,
        /// Reason.
        message: String,
    },
    /// The pickle was refused or is malformed.
    #[error("{path}: {source}")]
    Pickle {
        /// File.
        path: PathBuf,
        /// Reason.
        source: PickleError,
    },
    /// A tensor does not fit its storage.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// File.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Reason.
        message: String,
    },
}

/// An open `torch.save` checkpoint.
pub struct TorchCheckpoint {
    path: PathBuf,
    archive: zip::ZipArchive<File>,
    prefix: String,
    storages: HashMap<String, Tensor>,
    /// The unpickled object.
    pub root: Value,
}

impl std::fmt::Debug for TorchCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchCheckpoint")
            .field("path", &self.path)
            .finish()
    }
}

fn kind_of(k: StorageKind) -> (Kind, usize) {
    match k {
        StorageKind::Float => (Kind::Float, 4),
        StorageKind::Double => (Kind::Double, 8),
        StorageKind::Half => (Kind::Half, 2),
        StorageKind::BFloat16 => (Kind::BFloat16, 2),
        StorageKind::Long => (Kind::Int64, 8),
        StorageKind::Int => (Kind::Int, 4),
        StorageKind::Short => (Kind::Int16, 2),
        StorageKind::Char => (Kind::Int8, 1),
        StorageKind::Byte => (Kind::Uint8, 1),
        StorageKind::Bool => (Kind::Bool, 1),
    }
}

impl TorchCheckpoint {
    /// Opens a checkpoint and parses its pickle (refusing disallowed globals).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |message: String| CheckpointError::Io {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|e| io(format!("cannot open: {e}")))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            io(format!("not a torch.save zip checkpoint ({e}); legacy (pre-1.6) tar/pickle checkpoints are not supported: re-save with torch.save"))
        })?;
        let pkl = archive
            .file_names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .ok_or_else(|| io("no <name>/data.pkl entry: not a torch.save checkpoint".into()))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut e) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut order = String::new();
            e.read_to_string(&mut order)
                .map_err(|e| io(e.to_string()))?;
            if order.trim() != "little" {
                return Err(io(format!(
                    "byte order `{}` is not supported",
                    order.trim()
                )));
            }
        }
        let mut bytes = Vec::new();
        archive
            .by_name(&pkl)
            .and_then(|mut e| e.read_to_end(&mut bytes).map_err(zip::result::ZipError::Io))
            .map_err(|e| io(format!("cannot read {pkl}: {e}")))?;
        let root = pickle::parse(&bytes).map_err(|source| CheckpointError::Pickle {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            archive,
            prefix,
            storages: HashMap::new(),
            root,
        })
    }

    /// Materialises a tensor (a contiguous copy of its view), reading its storage once.
    pub fn tensor(&mut self, name: &str, r: &TensorRef) -> Result<Tensor, CheckpointError> {
        let err = |message: String| CheckpointError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            message,
        };
        let (kind, elem) = kind_of(r.kind);
        if r.size.len() != r.stride.len()
            || r.size.iter().chain(&r.stride).any(|&x| x < 0)
            || r.offset < 0
        {
            return Err(err(format!(
                "invalid view: size {:?}, stride {:?}, offset {}",
                r.size, r.stride, r.offset
            )));
        }
        let last = r.offset
            + r.size
                .iter()
                .zip(&r.stride)
                .map(|(s, st)| (s - 1).max(0) * st)
                .sum::<i64>();
        let empty = r.size.contains(&0);
        if !empty && last >= r.storage_numel {
            return Err(err(format!(
                "view reaches element {last} of a storage of {}",
                r.storage_numel
            )));
        }
        if !self.storages.contains_key(&r.key) {
            let entry = format!("{}data/{}", self.prefix, r.key);
            let mut bytes = Vec::new();
            self.archive
                .by_name(&entry)
                .and_then(|mut e| e.read_to_end(&mut bytes).map_err(zip::result::ZipError::Io))
                .map_err(|e| err(format!("cannot read storage {entry}: {e}")))?;
            let want = r.storage_numel as usize * elem;
            if bytes.len() < want {
                return Err(err(format!(
                    "storage {entry} has {} bytes, expected {want}",
                    bytes.len()
                )));
            }
            let t = Tensor::from_data_size(&bytes[..want], &[r.storage_numel], kind);
            self.storages.insert(r.key.clone(), t);
        }
        let storage = &self.storages[&r.key];
        Ok(storage
            .as_strided(r.size.as_slice(), r.stride.as_slice(), r.offset)
            .contiguous())
    }
}

/// The named tensors of a state dict (a dict of name -> tensor; other values are skipped).
pub fn state_dict_entries(v: &Value) -> Vec<(String, TensorRef)> {
    match v {
        Value::Dict(items) => items
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => Some((k.clone(), t.clone())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
