//! The evaluation networks' common ground: [`Script`], a TorchScript module on a device (a
//! user's own SyncNet or LPIPS network), and [`ScriptError`], why a metric's network cannot run
//! (TorchScript or a state dict).

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Tensor};

/// Why a TorchScript metric cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The module cannot be loaded.
    #[error("{path}: cannot load TorchScript: {message}")]
    Load {
        /// File.
        path: PathBuf,
        /// libtorch's message (first line).
        message: String,
    },
    /// A state dict cannot be read or is not the network's (the message names the file).
    #[error("{0}")]
    Weights(String),
    /// Running the module failed (wrong method names or shapes).
    #[error("{path}: {message}")]
    Run {
        /// File.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The video is too short for one window.
    #[error("{0}")]
    Input(String),
}

fn first_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// A TorchScript module on a device.
#[derive(Debug)]
pub struct Script {
    module: CModule,
    path: PathBuf,
    device: Device,
}

impl Script {
    /// Loads a TorchScript file onto `device` (evaluation mode).
    pub fn load(path: &Path, device: Device) -> Result<Self, ScriptError> {
        let mut module = CModule::load_on_device(path, device).map_err(|e| ScriptError::Load {
            path: path.to_path_buf(),
            message: first_line(e),
        })?;
        module.set_eval();
        Ok(Self {
            module,
            path: path.to_path_buf(),
            device,
        })
    }

    /// The device inputs go to.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `method` (`forward` included) with tensor inputs; the output must be a tensor.
    pub fn call(&self, method: &str, inputs: &[Tensor]) -> Result<Tensor, ScriptError> {
        let args: Vec<IValue> = inputs
            .iter()
            .map(|t| IValue::Tensor(t.shallow_clone()))
            .collect();
        let out = tch::no_grad(|| self.module.method_is(method, &args)).map_err(|e| {
            ScriptError::Run {
                path: self.path.clone(),
                message: format!("{method}: {}", first_line(e)),
            }
        })?;
        match out {
            IValue::Tensor(t) => Ok(t),
            other => Err(ScriptError::Run {
                path: self.path.clone(),
                message: format!("{method} returned {other:?}, not a tensor"),
            }),
        }
    }
}
