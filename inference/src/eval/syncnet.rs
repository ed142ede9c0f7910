//! LSE-C and LSE-D (Wav2Lip's lip-sync metrics) with a user-supplied SyncNet, computed as
//! syncnet_python's `SyncNetInstance.evaluate` does:
//!
//! - frames: 224x224 face crops (here: the whole frame, scaled by ffmpeg's area filter; LRS2
//!   frames are face crops), BGR channel order, raw 0..255 values, shape (1, 3, T, 224, 224);
//! - audio: 16 kHz mono int16 -> python_speech_features `mfcc` (13 x N, 100 Hz);
//! - windows v = 0 .. min(T, samples / 640) - 5: frames v..v+5 through `forward_lip`, MFCC
//!   columns 4v..4v+20 through `forward_aud` (1024-d each);
//! - for each window, the distance from its lip feature to the audio features shifted by
//!   -vshift..=vshift (zero-padded) (`pairwise_distance`, eps 1e-6); mean over windows;
//! - LSE-D = the minimum of that mean, LSE-C = its median minus the minimum, offset = vshift
//!   minus the position of the minimum.
//!
//! The SyncNet is syncnet_python's own `syncnet_v2.model` (a state dict, run by
//! [`NativeSyncNet`]), or TorchScript with methods `forward_lip` ((B, 3, 5, 224, 224) -> (B,
//! 1024)) and `forward_aud` ((B, 1, 13, 20) -> (B, 1024)) for other SyncNets.

use std::path::Path;

use serde::Serialize;
use syncdiff_dataset::audio::{FbankParams, LogFbank};
use syncdiff_model::weights::torchzip::is_torchscript;
use tch::{Device, Kind, Tensor};

use super::script::{Script, ScriptError};
use super::syncnet_net::NativeSyncNet;
use syncdiff_model::offsets::offset_scores;

/// Side of SyncNet's face crops.
pub const CROP: u32 = 224;
/// Frames per lip window.
const WINDOW: i64 = 5;
/// Audio samples per video frame (16 kHz / 25 fps).
const SAMPLES_PER_FRAME: usize = 640;

/// A SyncNet: syncnet_python's state dict run natively, or a TorchScript module.
#[derive(Debug)]
pub enum SyncNet {
    /// `syncnet_v2.model` (or any SyncNetModel state dict).
    Native(NativeSyncNet),
    /// TorchScript with `forward_lip` and `forward_aud`.
    Script(Script),
}

impl SyncNet {
    /// Loads `path`: TorchScript when it is a TorchScript archive, else a SyncNetModel state dict.
    pub fn load(path: &Path, device: Device) -> Result<Self, ScriptError> {
        Ok(if is_torchscript(path) {
            Self::Script(Script::load(path, device)?)
        } else {
            Self::Native(NativeSyncNet::load(path, device)?)
        })
    }

    /// The device inputs go to.
    pub fn device(&self) -> Device {
        match self {
            Self::Native(n) => n.device(),
            Self::Script(s) => s.device(),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Native(n) => n.path(),
            Self::Script(s) => s.path(),
        }
    }

    fn lip(&self, x: &Tensor) -> Result<Tensor, ScriptError> {
        match self {
            Self::Native(n) => Ok(n.forward_lip(x)),
            Self::Script(s) => s.call("forward_lip", &[x.shallow_clone()]),
        }
    }

    fn aud(&self, x: &Tensor) -> Result<Tensor, ScriptError> {
        match self {
            Self::Native(n) => Ok(n.forward_aud(x)),
            Self::Script(s) => s.call("forward_aud", &[x.shallow_clone()]),
        }
    }
}

/// LSE scores of one video.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lse {
    /// Median minus minimum of the mean distance over offsets (higher: better sync).
    pub lse_c: f64,
    /// Minimum over offsets of the mean distance (lower: better sync).
    pub lse_d: f64,
    /// Audio-video offset at the minimum, in frames.
    pub offset: i64,
    /// 5-frame windows scored.
    pub windows: usize,
}

/// LSE-C/D of frames `rgb` ((T, 224, 224, 3) RGB24 bytes) and their audio (16 kHz mono).
pub fn lse(
    net: &SyncNet,
    rgb: &[u8],
    audio: &[i16],
    vshift: i64,
    batch: i64,
) -> Result<Lse, ScriptError> {
    let side = i64::from(CROP);
    let t = (rgb.len() / (CROP * CROP * 3) as usize) as i64;
    let usable = t.min((audio.len() / SAMPLES_PER_FRAME) as i64);
    let windows = usable - WINDOW;
    if windows < 1 {
        return Err(ScriptError::Input(format!(
            "{usable} frames with audio: SyncNet needs more than {WINDOW}"
        )));
    }
    let dev = net.device();
    // (T, H, W, RGB) -> (1, BGR, T, H, W), values 0..255.
    let video = Tensor::from_slice(rgb)
        .view([t, side, side, 3])
        .flip([3])
        .permute([3, 0, 1, 2])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        .to_device(dev);
    let samples: Vec<f64> = audio.iter().map(|&v| f64::from(v)).collect();
    let mfcc = LogFbank::new(FbankParams::default()).mfcc(&samples);
    let n = (mfcc.len() / 13) as i64;
    let cc = Tensor::from_slice(&mfcc)
        .view([n, 13])
        .transpose(0, 1)
        .unsqueeze(0)
        .unsqueeze(0)
        .to_kind(Kind::Float)
        .to_device(dev);
    let (mut lip, mut aud) = (Vec::new(), Vec::new());
    for start in (0..windows).step_by(batch.max(1) as usize) {
        let end = (start + batch).min(windows);
        let v: Vec<Tensor> = (start..end).map(|i| video.narrow(2, i, WINDOW)).collect();
        let a: Vec<Tensor> = (start..end).map(|i| cc.narrow(3, 4 * i, 20)).collect();
        lip.push(net.lip(&Tensor::cat(&v, 0))?);
        aud.push(net.aud(&Tensor::cat(&a, 0))?);
    }
    let lip = Tensor::cat(&lip, 0)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu);
    let aud = Tensor::cat(&aud, 0)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu);
    if lip.dim() != 2 || lip.size() != aud.size() {
        return Err(ScriptError::Run {
            path: net.path().to_path_buf(),
            message: format!(
                "forward_lip gave {:?} and forward_aud {:?}; expected two (windows, D) tensors",
                lip.size(),
                aud.size()
            ),
        });
    }
    let scores = offset_scores(&lip, &aud, vshift).map_err(|e| ScriptError::Run {
        path: net.path().to_path_buf(),
        message: format!("reading the offset distances: {e}"),
    })?;
    Ok(Lse {
        lse_c: scores.confidence,
        lse_d: scores.min_distance,
        offset: scores.offset,
        windows: windows as usize,
    })
}
