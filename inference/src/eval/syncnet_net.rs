//! SyncNet (syncnet_python's `SyncNetModel.S`) in Rust, loaded from the state dict users have:
//! `syncnet_v2.model`, a `torch.save`d state dict (legacy or zip format), read by the safe
//! pickle reader (nothing in the file is executed). Evaluation mode: batch norms use their
//! running statistics.
//!
//! Audio tower `netcnnaud` (Conv2d/BatchNorm2d) + `netfcaud`, lip tower `netcnnlip`
//! (Conv3d/BatchNorm3d) + `netfclip`; the layer indices below are those of the `nn.Sequential`s,
//! so the state dict's key names follow from them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use super::script::ScriptError;
use super::state_dict::{self, Shape};

/// One layer of a tower.
#[derive(Debug, Clone, Copy)]
enum Layer {
    /// Convolution at this index: weight shape (out, in, kernel...), stride, padding.
    Conv {
        at: usize,
        shape: &'static [i64],
        stride: &'static [i64],
        padding: &'static [i64],
    },
    /// Batch norm at this index over that many channels (followed by a ReLU in every tower).
    BnRelu { at: usize, channels: i64 },
    /// Max pooling: kernel, stride, padding.
    Pool {
        kernel: &'static [i64],
        stride: &'static [i64],
        padding: &'static [i64],
    },
}

use Layer::{BnRelu, Conv, Pool};

#[rustfmt::skip]
/// `netcnnaud`: (B, 1, 13, 20) MFCC windows -> (B, 512, 1, 1).
const AUDIO: &[Layer] = &[
    Conv { at: 0, shape: &[64, 1, 3, 3], stride: &[1, 1], padding: &[1, 1] },
    BnRelu { at: 1, channels: 64 },
    // MaxPool2d(1, 1) at 3 is the identity.
    Conv { at: 4, shape: &[192, 64, 3, 3], stride: &[1, 1], padding: &[1, 1] },
    BnRelu { at: 5, channels: 192 },
    Pool { kernel: &[3, 3], stride: &[1, 2], padding: &[0, 0] },
    Conv { at: 8, shape: &[384, 192, 3, 3], stride: &[1, 1], padding: &[1, 1] },
    BnRelu { at: 9, channels: 384 },
    Conv { at: 11, shape: &[256, 384, 3, 3], stride: &[1, 1], padding: &[1, 1] },
    BnRelu { at: 12, channels: 256 },
    Conv { at: 14, shape: &[256, 256, 3, 3], stride: &[1, 1], padding: &[1, 1] },
    BnRelu { at: 15, channels: 256 },
    Pool { kernel: &[3, 3], stride: &[2, 2], padding: &[0, 0] },
    Conv { at: 18, shape: &[512, 256, 5, 4], stride: &[1, 1], padding: &[0, 0] },
    BnRelu { at: 19, channels: 512 },
];

#[rustfmt::skip]
/// `netcnnlip`: (B, 3, 5, 224, 224) BGR frames -> (B, 512, 1, 1, 1).
const LIP: &[Layer] = &[
    Conv { at: 0, shape: &[96, 3, 5, 7, 7], stride: &[1, 2, 2], padding: &[0, 0, 0] },
    BnRelu { at: 1, channels: 96 },
    Pool { kernel: &[1, 3, 3], stride: &[1, 2, 2], padding: &[0, 0, 0] },
    Conv { at: 4, shape: &[256, 96, 1, 5, 5], stride: &[1, 2, 2], padding: &[0, 1, 1] },
    BnRelu { at: 5, channels: 256 },
    Pool { kernel: &[1, 3, 3], stride: &[1, 2, 2], padding: &[0, 1, 1] },
    Conv { at: 8, shape: &[256, 256, 1, 3, 3], stride: &[1, 1, 1], padding: &[0, 1, 1] },
    BnRelu { at: 9, channels: 256 },
    Conv { at: 11, shape: &[256, 256, 1, 3, 3], stride: &[1, 1, 1], padding: &[0, 1, 1] },
    BnRelu { at: 12, channels: 256 },
    Conv { at: 14, shape: &[256, 256, 1, 3, 3], stride: &[1, 1, 1], padding: &[0, 1, 1] },
    BnRelu { at: 15, channels: 256 },
    Pool { kernel: &[1, 3, 3], stride: &[1, 2, 2], padding: &[0, 0, 0] },
    Conv { at: 18, shape: &[512, 256, 1, 6, 6], stride: &[1, 1, 1], padding: &[0, 0, 0] },
    BnRelu { at: 19, channels: 512 },
];

/// Batch-norm epsilon (PyTorch's default, which SyncNetModel keeps).
const BN_EPS: f64 = 1e-5;

/// SyncNet with its weights on a device.
#[derive(Debug)]
pub struct NativeSyncNet {
    weights: HashMap<String, Tensor>,
    path: PathBuf,
    device: Device,
}

impl NativeSyncNet {
    /// Loads a SyncNetModel state dict (`syncnet_v2.model`) onto `device`. Key prefixes
    /// `__S__.` and `module.` are accepted; a missing, misshapen or unknown tensor is an error
    /// that names it.
    pub fn load(path: &Path, device: Device) -> Result<Self, ScriptError> {
        let file = state_dict::read(
            path,
            "a SyncNet state dict (syncnet_python's syncnet_v2.model)",
            |_| false,
        )?;
        let fc_out = file
            .get("netfcaud.3.weight")
            .map_or(1024, |t| t.size().first().copied().unwrap_or(1024));
        let weights = state_dict::take(file, &expected_shapes(fc_out), path, "SyncNet", device)?;
        Ok(Self {
            weights,
            path: path.to_path_buf(),
            device,
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `forward_lip`: (B, 3, 5, 224, 224) -> (B, D).
    pub fn forward_lip(&self, x: &Tensor) -> Tensor {
        let mid = self.tower("netcnnlip", LIP, x);
        let b = mid.size()[0];
        self.head("netfclip", &mid.reshape([b, -1]))
    }

    /// `forward_aud`: (B, 1, 13, 20) -> (B, D).
    pub fn forward_aud(&self, x: &Tensor) -> Tensor {
        let mid = self.tower("netcnnaud", AUDIO, x);
        let b = mid.size()[0];
        self.head("netfcaud", &mid.reshape([b, -1]))
    }

    fn w(&self, name: &str) -> &Tensor {
        // Every name used here was checked by `load` (expected_shapes lists them all).
        &self.weights[name]
    }

    fn bn(&self, prefix: &str, x: &Tensor) -> Tensor {
        let p = |s: &str| self.w(&format!("{prefix}.{s}"));
        Tensor::batch_norm(
            x,
            Some(p("weight")),
            Some(p("bias")),
            Some(p("running_mean")),
            Some(p("running_var")),
            false,
            0.1,
            BN_EPS,
            false,
        )
    }

    fn tower(&self, name: &str, layers: &[Layer], x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let mut x = x.shallow_clone();
            for layer in layers {
                x = match *layer {
                    Conv {
                        at,
                        stride,
                        padding,
                        shape,
                    } => {
                        let (w, b) = (
                            self.w(&format!("{name}.{at}.weight")),
                            self.w(&format!("{name}.{at}.bias")),
                        );
                        if shape.len() == 4 {
                            x.conv2d(w, Some(b), stride, padding, [1, 1], 1)
                        } else {
                            x.conv3d(w, Some(b), stride, padding, [1, 1, 1], 1)
                        }
                    }
                    BnRelu { at, .. } => self.bn(&format!("{name}.{at}"), &x).relu(),
                    Pool {
                        kernel,
                        stride,
                        padding,
                    } => {
                        if kernel.len() == 2 {
                            x.max_pool2d(kernel, stride, padding, [1, 1], false)
                        } else {
                            x.max_pool3d(kernel, stride, padding, [1, 1, 1], false)
                        }
                    }
                };
            }
            x
        })
    }

    /// Linear(512, 512), BatchNorm1d, ReLU, Linear(512, D).
    fn head(&self, name: &str, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let lin = |at: usize, x: &Tensor| {
                x.linear(
                    self.w(&format!("{name}.{at}.weight")),
                    Some(self.w(&format!("{name}.{at}.bias"))),
                )
            };
            let h = self.bn(&format!("{name}.1"), &lin(0, x)).relu();
            lin(3, &h)
        })
    }
}

/// Every tensor of the model with its shape (`fc_out`: the embedding width, 1024 in
/// syncnet_v2).
fn expected_shapes(fc_out: i64) -> Vec<Shape> {
    let mut out = Vec::new();
    for (name, layers) in [("netcnnaud", AUDIO), ("netcnnlip", LIP)] {
        for layer in layers {
            match *layer {
                Conv { at, shape, .. } => {
                    out.push((format!("{name}.{at}.weight"), shape.to_vec()));
                    out.push((format!("{name}.{at}.bias"), vec![shape[0]]));
                }
                BnRelu { at, channels } => bn_shapes(&mut out, &format!("{name}.{at}"), channels),
                Pool { .. } => {}
            }
        }
    }
    for name in ["netfcaud", "netfclip"] {
        out.push((format!("{name}.0.weight"), vec![512, 512]));
        out.push((format!("{name}.0.bias"), vec![512]));
        bn_shapes(&mut out, &format!("{name}.1"), 512);
        out.push((format!("{name}.3.weight"), vec![fc_out, 512]));
        out.push((format!("{name}.3.bias"), vec![fc_out]));
    }
    out
}

fn bn_shapes(out: &mut Vec<Shape>, prefix: &str, channels: i64) {
    for s in ["weight", "bias", "running_mean", "running_var"] {
        out.push((format!("{prefix}.{s}"), vec![channels]));
    }
}
