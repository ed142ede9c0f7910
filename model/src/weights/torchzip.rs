//! Reading `torch.save` checkpoints without Python and without executing their pickle.
//!
//! Zip layout (PyTorch >= 1.6): `<name>/data.pkl` (the pickle), `<name>/data/<key>` (raw
//! little-endian storages), `<name>/byteorder` (optional). Legacy layout (older files, e.g.
//! syncnet_python's `syncnet_v2.model`, or `_use_new_zipfile_serialization=False`): pickles of the
//! magic number, the protocol version (1001) and the system info, then the object's pickle, then
//! the pickled list of storage keys, then each storage in that order as an int64 element count and
//! its raw bytes. Tensors are views (offset, size, stride) into storages, which several tensors may
//! share.

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

/// Where a checkpoint's storages are.
enum Storages {
    /// `<prefix>data/<key>` entries of a zip archive.
    Zip {
        archive: zip::ZipArchive<File>,
        prefix: String,
    },
    /// The bytes of a legacy file and, per key, where the storage's data starts and its element
    /// count.
    Legacy {
        bytes: Vec<u8>,
        at: HashMap<String, (usize, i64)>,
    },
}

/// An open `torch.save` checkpoint.
pub struct TorchCheckpoint {
    path: PathBuf,
    source: Storages,
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
        let mut file = File::open(path).map_err(|e| io(format!("cannot open: {e}")))?;
        let mut magic = [0u8; 4];
        let n = file
            .read(&mut magic)
            .map_err(|e| io(format!("cannot read: {e}")))?;
        if magic[..n] != *b"PK\x03\x04" {
            let mut bytes = magic[..n].to_vec();
            file.read_to_end(&mut bytes)
                .map_err(|e| io(format!("cannot read: {e}")))?;
            return Self::legacy(path, bytes);
        }
        let file = File::open(path).map_err(|e| io(format!("cannot open: {e}")))?;
        let mut archive = zip::ZipArchive::new(file)
            .map_err(|e| io(format!("not a torch.save zip checkpoint ({e})")))?;
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
            source: Storages::Zip { archive, prefix },
            storages: HashMap::new(),
            root,
        })
    }

    /// A legacy (non-zip) `torch.save` file, already read into `bytes`.
    fn legacy(path: &Path, bytes: Vec<u8>) -> Result<Self, CheckpointError> {
        let io = |message: String| CheckpointError::Io {
            path: path.to_path_buf(),
            message,
        };
        let pickle = |source| CheckpointError::Pickle {
            path: path.to_path_buf(),
            source,
        };
        let not_torch = || {
            io(
                "neither a torch.save zip checkpoint nor a legacy torch.save file (no magic \
                number)"
                    .into(),
            )
        };
        // The magic number 0x1950a86a20f9469cfc6c, little-endian, as pickle's LONG1 stores it.
        const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        let mut pos = 0;
        let mut next = |what: &str| -> Result<Value, CheckpointError> {
            let (v, used) = pickle::parse_prefix(&bytes[pos..]).map_err(|e| match what {
                "magic" => not_torch(),
                _ => pickle(e),
            })?;
            pos += used;
            Ok(v)
        };
        match next("magic")? {
            Value::BigInt(b) if b == MAGIC => {}
            _ => return Err(not_torch()),
        }
        if next("protocol")? != Value::Int(1001) {
            return Err(io(
                "legacy torch.save file of an unknown protocol version".into()
            ));
        }
        let info = next("sys_info")?;
        if info.get("little_endian") == Some(&Value::Bool(false)) {
            return Err(io(
                "a big-endian legacy torch.save file is not supported".into()
            ));
        }
        let root = next("object")?;
        let keys = match next("storage keys")? {
            Value::List(k) => k,
            _ => {
                return Err(io(
                    "legacy torch.save file without its list of storage keys".into(),
                ))
            }
        };
        let mut at = HashMap::new();
        let mut elems = HashMap::new();
        collect_storage_sizes(&root, &mut elems);
        for key in keys {
            let Value::Str(key) = key else {
                return Err(io("a storage key is not a string".into()));
            };
            let count = bytes
                .get(pos..pos + 8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .ok_or_else(|| io(format!("truncated before storage {key}")))?;
            // The record gives elements; their size comes from the tensor that uses the storage.
            let elem = elems.get(&key).copied().ok_or_else(|| {
                io(format!(
                    "storage {key} is used by no tensor the reader understood (unsupported layout)"
                ))
            })?;
            let len = usize::try_from(count)
                .ok()
                .and_then(|c| c.checked_mul(elem))
                .filter(|&l| pos + 8 + l <= bytes.len())
                .ok_or_else(|| io(format!("storage {key} is truncated or damaged")))?;
            at.insert(key, (pos + 8, count));
            pos += 8 + len;
        }
        Ok(Self {
            path: path.to_path_buf(),
            source: Storages::Legacy { bytes, at },
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
            let want = r.storage_numel as usize * elem;
            let t = match &mut self.source {
                Storages::Zip { archive, prefix } => {
                    let entry = format!("{prefix}data/{}", r.key);
                    let mut bytes = Vec::new();
                    archive
                        .by_name(&entry)
                        .and_then(|mut e| {
                            e.read_to_end(&mut bytes).map_err(zip::result::ZipError::Io)
                        })
                        .map_err(|e| err(format!("cannot read storage {entry}: {e}")))?;
                    if bytes.len() < want {
                        return Err(err(format!(
                            "storage {entry} has {} bytes, expected {want}",
                            bytes.len()
                        )));
                    }
                    Tensor::from_data_size(&bytes[..want], &[r.storage_numel], kind)
                }
                Storages::Legacy { bytes, at } => {
                    let &(start, count) = at
                        .get(&r.key)
                        .ok_or_else(|| err(format!("storage {} is not in the file", r.key)))?;
                    if count != r.storage_numel {
                        return Err(err(format!(
                            "storage {} has {count} elements, the pickle says {}",
                            r.key, r.storage_numel
                        )));
                    }
                    Tensor::from_data_size(&bytes[start..start + want], &[r.storage_numel], kind)
                }
            };
            self.storages.insert(r.key.clone(), t);
        }
        let storage = &self.storages[&r.key];
        Ok(storage
            .as_strided(r.size.as_slice(), r.stride.as_slice(), r.offset)
            .contiguous())
    }
}

/// Bytes per element of every storage the object refers to, by key (a legacy file's storage
/// records give element counts, not byte lengths).
fn collect_storage_sizes(v: &Value, out: &mut HashMap<String, usize>) {
    match v {
        Value::Tensor(t) => {
            out.insert(t.key.clone(), kind_of(t.kind).1);
        }
        Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) => {
            xs.iter().for_each(|x| collect_storage_sizes(x, out));
        }
        Value::Dict(items) => items.iter().for_each(|(k, x)| {
            collect_storage_sizes(k, out);
            collect_storage_sizes(x, out);
        }),
        Value::Object { args, state, .. } => {
            args.iter().for_each(|x| collect_storage_sizes(x, out));
            collect_storage_sizes(state, out);
        }
        _ => {}
    }
}

/// Whether `path` is a TorchScript archive (a zip with `<name>/code/` and `constants.pkl`)
/// rather than a pickled object saved by `torch.save`.
pub fn is_torchscript(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(archive) = zip::ZipArchive::new(file) else {
        return false;
    };
    let names: Vec<&str> = archive.file_names().collect();
    names.iter().any(|n| n.ends_with("/constants.pkl"))
        && names.iter().any(|n| n.contains("/code/"))
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
