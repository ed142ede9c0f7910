//! Loading: YAML text -> tree -> overrides -> typed [`Config`] -> validation.

use std::path::Path;

use serde_json::{Map, Value};

use super::Config;

/// Why a configuration could not be loaded. Every message names its source (the file or the
/// `--set` argument) and, where there is one, the full key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not YAML, or not a mapping of sections.
    #[error("{origin}: {message}")]
    Syntax {
        /// File name or `--set` argument.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A key has a wrong type, an unknown name, or a value that fails validation.
    #[error("{origin}: {key}: {message}")]
    Key {
        /// File name or `--set` argument that supplied the key.
        origin: String,
        /// Full dotted key path, e.g. `model.unet.channel_mult`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration cannot be used with this launch (e.g. the world size).
    #[error("{key}: {message}")]
    Plan {
        /// Full dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A `--set` argument is malformed.
    #[error("--set {arg}: {message}")]
    BadOverride {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        message: String,
    },
}

/// One `--set key.path=value` override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The argument as given (for messages).
    pub arg: String,
    /// Key path segments.
    pub path: Vec<String>,
    /// Parsed YAML value.
    pub value: Value,
}

impl Override {
    /// Parses `key.path=value`; the value is YAML (`3`, `0.1`, `[1, 2]`, `null`, `s3://b/x`).
    pub fn parse(arg: &str) -> Result<Self, ConfigError> {
        // Messages quote the argument: a credential in it must not reach a log.
        let shown = super::redact_url(arg);
        let bad = |message: &str| ConfigError::BadOverride {
            arg: shown.clone(),
            message: message.to_string(),
        };
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected key.path=value"))?;
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        if path.iter().any(|s| s.is_empty()) {
            return Err(bad("empty key segment in the key path"));
        }
        let value = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str::<Value>(raw).map_err(|e| {
                // The parser's message may quote the value: not when the value holds a secret.
                if shown == arg {
                    bad(&one_line(&e.to_string()))
                } else {
                    bad("the value is not valid YAML")
                }
            })?
        };
        Ok(Self {
            arg: shown,
            path,
            value,
        })
    }
}

/// Keys derived from other keys, with the reason they cannot be set.
const DERIVED: &[(&str, &str)] = &[
    (
        "model.unet.in_channels",
        "derived from model.priors and model.autoencoder.latent_channels; it cannot be set",
    ),
    (
        "model.unet.out_channels",
        "derived from model.autoencoder.latent_channels; it cannot be set",
    ),
    (
        "model.unet.context_dim",
        "derived from model.audio_encoder.embed_dim; it cannot be set",
    ),
];

/// Maximum depth of `extends` chains (guards against cycles).
const MAX_EXTENDS: usize = 8;

/// One source of keys, in precedence order (later wins): base files, the file, overrides.
struct Layer {
    origin: String,
    tree: Value,
}

impl Config {
    /// Loads a YAML file (following its `extends:` chain) and applies `--set` overrides, then
    /// validates.
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Self, ConfigError> {
        let mut layers = Vec::new();
        read_layers(path, &mut layers, 0)?;
        Self::from_layers(layers, overrides)
    }

    /// Parses YAML text named `origin` (used in messages), applies overrides, validates.
    /// An `extends:` key is resolved relative to the current directory.
    pub fn from_yaml(
        text: &str,
        origin: &str,
        overrides: &[Override],
    ) -> Result<Self, ConfigError> {
        let mut layers = Vec::new();
        push_layer(text, origin, Path::new("."), &mut layers, 0)?;
        Self::from_layers(layers, overrides)
    }

    fn from_layers(mut layers: Vec<Layer>, overrides: &[Override]) -> Result<Self, ConfigError> {
        for o in overrides {
            let mut tree = Value::Object(Map::new());
            apply(&mut tree, o)?;
            layers.push(Layer {
                origin: format!("--set {}", o.arg),
                tree,
            });
        }
        let mut merged = Value::Object(Map::new());
        for layer in &layers {
            merge(&mut merged, &layer.tree);
        }
        let blame = |key: &str, message: &str| blame(&layers, key, message);
        for (key, why) in DERIVED {
            if lookup(&merged, key).is_some() {
                return Err(blame(key, why));
            }
        }
        let config: Config = serde_path_to_error::deserialize(merged)
            .map_err(|e| blame(&e.path().to_string(), &one_line(&e.inner().to_string())))?;
        config
            .validate()
            .map_err(|(key, message)| blame(&key, &message))?;
        Ok(config)
    }
}

fn read_layers(path: &Path, layers: &mut Vec<Layer>, depth: usize) -> Result<(), ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: origin.clone(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    push_layer(&text, &origin, dir, layers, depth)
}

/// Parses one file's text; its `extends:` base (relative to `dir`) is pushed before it.
fn push_layer(
    text: &str,
    origin: &str,
    dir: &Path,
    layers: &mut Vec<Layer>,
    depth: usize,
) -> Result<(), ConfigError> {
    let syntax = |message: String| ConfigError::Syntax {
        origin: origin.to_string(),
        message,
    };
    let mut tree = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str::<Value>(text).map_err(|e| syntax(one_line(&e.to_string())))?
    };
    if tree.is_null() {
        // An empty file is almost always a mistake (a truncated copy, the wrong path): running
        // the paper's defaults on it would start a very different job without a word.
        return Err(syntax(
            "the file is empty or only comments; write the keys to change, or \
             `extends: syncdiff-lrs2.yaml` for the paper's configuration"
                .into(),
        ));
    }
    let map = tree
        .as_object_mut()
        .ok_or_else(|| syntax("expected a mapping of sections (data, model, train, ...)".into()))?;
    if let Some(base) = map.shift_remove("extends") {
        let base = base.as_str().ok_or_else(|| {
            syntax("extends: expected the path of a base configuration file".into())
        })?;
        if depth >= MAX_EXTENDS {
            return Err(syntax(format!(
                "extends: more than {MAX_EXTENDS} levels (a cycle?)"
            )));
        }
        let path = dir.join(base);
        if !path.is_file() {
            return Err(syntax(format!(
                "extends: {base}: no such file (looked for {})",
                path.display()
            )));
        }
        read_layers(&path, layers, depth + 1)?;
    }
    layers.push(Layer {
        origin: origin.to_string(),
        tree,
    });
    Ok(())
}

/// An error for `key`, attributed to the last layer that sets it (else the last file).
fn blame(layers: &[Layer], key: &str, message: &str) -> ConfigError {
    let origin = layers
        .iter()
        .rev()
        .find(|l| lookup(&l.tree, key).is_some())
        .or_else(|| {
            layers
                .iter()
                .rev()
                .find(|l| !l.origin.starts_with("--set "))
        })
        .map(|l| l.origin.clone())
        .unwrap_or_default();
    ConfigError::Key {
        origin,
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// Deep merge: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, top: &Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, t) => *b = t.clone(),
    }
}

/// Sets `o.path` in the tree, creating intermediate sections.
fn apply(tree: &mut Value, o: &Override) -> Result<(), ConfigError> {
    let mut node = tree;
    let (last, parents) = o
        .path
        .split_last()
        .ok_or_else(|| ConfigError::BadOverride {
            arg: o.arg.clone(),
            message: "empty key".into(),
        })?;
    for (i, seg) in parents.iter().enumerate() {
        let map = node
            .as_object_mut()
            .ok_or_else(|| ConfigError::BadOverride {
                arg: o.arg.clone(),
                message: format!("{} is a value, not a section", o.path[..i].join(".")),
            })?;
        node = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
    }
    let map = node
        .as_object_mut()
        .ok_or_else(|| ConfigError::BadOverride {
            arg: o.arg.clone(),
            message: format!("{} is a value, not a section", parents.join(".")),
        })?;
    map.insert(last.clone(), o.value.clone());
    Ok(())
}

fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, seg| node.get(seg))
}

/// Collapses a multi-line parser message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
