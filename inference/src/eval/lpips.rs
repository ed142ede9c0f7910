//! LPIPS over the frames of two videos, with the `lpips` package's AlexNet model run natively
//! ([`NativeLpips`]: its linear-layer weights plus torchvision's AlexNet state dict), or with a
//! user-supplied TorchScript network: `forward(x, y)` on two (N, 3, H, W) batches in [-1, 1]
//! returning (N, 1, 1, 1) (the package's convention).

use std::path::Path;

use syncdiff_model::weights::torchzip::is_torchscript;
use tch::{Device, Kind, Tensor};

use super::lpips_net::NativeLpips;
use super::script::{Script, ScriptError};

/// Frames per forward call.
const BATCH: i64 = 16;

/// An LPIPS network: the lpips package's AlexNet model, or TorchScript.
#[derive(Debug)]
pub enum Lpips {
    /// `lpips/weights/v0.1/alex.pth` + torchvision's AlexNet state dict.
    Native(NativeLpips),
    /// TorchScript with `forward(x, y)`.
    Script(Script),
}

impl Lpips {
    /// Loads `path`: TorchScript, or the lpips package's linear-layer weights, which need the
    /// AlexNet trunk (`alexnet`). Either way round is refused with the flag to use.
    pub fn load(path: &Path, alexnet: Option<&Path>, device: Device) -> Result<Self, ScriptError> {
        match (is_torchscript(path), alexnet) {
            (true, None) => Ok(Self::Script(Script::load(path, device)?)),
            (true, Some(a)) => Err(ScriptError::Weights(format!(
                "--alexnet {}: only used with the lpips package's linear weights, but --lpips {} \
                 is TorchScript (a whole LPIPS network)",
                a.display(),
                path.display()
            ))),
            (false, Some(a)) => Ok(Self::Native(NativeLpips::load(path, a, device)?)),
            (false, None) => Err(ScriptError::Weights(format!(
                "--lpips {}: not TorchScript, so the lpips package's linear weights \
                 (weights/v0.1/alex.pth), which need the AlexNet trunk: give torchvision's \
                 AlexNet state dict with --alexnet (alexnet-owt-7be5be79.pth)",
                path.display()
            ))),
        }
    }

    /// The device inputs go to.
    pub fn device(&self) -> Device {
        match self {
            Self::Native(n) => n.device(),
            Self::Script(s) => s.device(),
        }
    }

    fn forward(&self, x: Tensor, y: Tensor) -> Result<Tensor, ScriptError> {
        match self {
            Self::Native(n) => Ok(n.forward(&x, &y)),
            Self::Script(s) => s.call("forward", &[x, y]),
        }
    }
}

/// Mean LPIPS over the common frames of two RGB24 videos of the same size (`width` x `height`).
pub fn lpips(
    net: &Lpips,
    a: &[u8],
    b: &[u8],
    width: usize,
    height: usize,
) -> Result<f64, ScriptError> {
    let frame = width * height * 3;
    let n = (a.len() / frame).min(b.len() / frame) as i64;
    if n == 0 {
        return Err(ScriptError::Input("no frames to compare".into()));
    }
    let to_input = |bytes: &[u8], start: i64, len: i64| {
        Tensor::from_slice(&bytes[start as usize * frame..(start + len) as usize * frame])
            .view([len, height as i64, width as i64, 3])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float)
            .to_device(net.device())
            / 127.5
            - 1.0
    };
    let mut sum = 0.0;
    for start in (0..n).step_by(BATCH as usize) {
        let len = BATCH.min(n - start);
        let d = net.forward(to_input(a, start, len), to_input(b, start, len))?;
        if d.numel() != len as usize {
            return Err(ScriptError::Input(format!(
                "LPIPS forward returned {:?} for {len} frame pairs; expected one value per pair",
                d.size()
            )));
        }
        sum += f64::try_from(d.to_kind(Kind::Double).sum(Kind::Double)).map_err(|e| {
            ScriptError::Input(format!(
                "LPIPS distances of frames {start}.. unreadable: {e}"
            ))
        })?;
    }
    Ok(sum / n as f64)
}
