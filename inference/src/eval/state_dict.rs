//! Reading the metric networks' `torch.save`d state dicts (legacy or zip format) through the safe
//! pickle reader, and checking them against the tensors a network needs: every missing,
//! misshapen or unknown tensor is an error that names the file and the tensor.

use std::collections::HashMap;
use std::path::Path;

use syncdiff_model::weights::torchzip::{state_dict_entries, TorchCheckpoint};
use tch::{Device, Kind, Tensor};

use super::script::ScriptError;

/// Tensor name and shape.
pub(super) type Shape = (String, Vec<i64>);

/// The tensors of the state dict in `path` (or of `{"state_dict": ...}` in it), with the key
/// prefixes `__S__.` and `module.` removed (wrappers' names). Tensors whose name `skip` accepts
/// are not read (e.g. a classifier a metric does not use). `what` names the expected network
/// in the error for a file without tensors.
pub(super) fn read(
    path: &Path,
    what: &str,
    skip: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>, ScriptError> {
    let mut ckpt = TorchCheckpoint::open(path).map_err(|e| ScriptError::Weights(e.to_string()))?;
    let root = ckpt.root.get("state_dict").unwrap_or(&ckpt.root).clone();
    let entries = state_dict_entries(&root);
    if entries.is_empty() {
        return Err(ScriptError::Weights(format!(
            "{}: no tensors: expected {what}",
            path.display()
        )));
    }
    let mut file = HashMap::new();
    for (name, r) in entries {
        let key = name
            .trim_start_matches("__S__.")
            .trim_start_matches("module.")
            .to_string();
        if skip(&key) {
            continue;
        }
        let t = ckpt
            .tensor(&name, &r)
            .map_err(|e| ScriptError::Weights(e.to_string()))?;
        file.insert(key, t);
    }
    Ok(file)
}

/// Takes every `expected` tensor out of `file` (float32, on `device`), checking its shape, and
/// refuses tensors left over, apart from batch-norm step counters (`num_batches_tracked`).
/// `net` names the network in the errors ("SyncNet", "AlexNet").
pub(super) fn take(
    mut file: HashMap<String, Tensor>,
    expected: &[Shape],
    path: &Path,
    net: &str,
    device: Device,
) -> Result<HashMap<String, Tensor>, ScriptError> {
    let err = |message: String| ScriptError::Weights(format!("{}: {message}", path.display()));
    let mut weights = HashMap::new();
    for (name, shape) in expected {
        let t = file.remove(name).ok_or_else(|| {
            err(format!(
                "missing tensor `{name}` (shape {shape:?}): not a {net} state dict"
            ))
        })?;
        if t.size() != *shape {
            return Err(err(format!(
                "tensor `{name}` has shape {:?}, {net}'s is {shape:?}",
                t.size()
            )));
        }
        weights.insert(name.clone(), t.to_kind(Kind::Float).to_device(device));
    }
    file.retain(|k, _| !k.ends_with(".num_batches_tracked"));
    if let Some(extra) = file.keys().min() {
        return Err(err(format!(
            "{} tensor(s) {net} does not have, e.g. `{extra}` (another model?)",
            file.len()
        )));
    }
    Ok(weights)
}
