//! LPIPS with a user-supplied TorchScript network: `forward(x, y)` on two (N, 3, H, W) batches in
//! [-1, 1] returning (N, 1, 1, 1) (the `lpips` package's convention; docs/evaluation.md shows how
//! to script its AlexNet model).

use tch::{Kind, Tensor};

use super::syncnet::{Script, ScriptError};

/// Frames per forward call.
const BATCH: i64 = 16;

/// Mean LPIPS over the common frames of two RGB24 videos of the same size (`width` x `height`).
pub fn lpips(
    net: &Script,
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
        let d = net.call(
            "forward",
            &[to_input(a, start, len), to_input(b, start, len)],
        )?;
        if d.numel() != len as usize {
            return Err(ScriptError::Input(format!(
                "LPIPS forward returned {:?} for {len} frame pairs; expected one value per pair",
                d.size()
            )));
        }
        sum += f64::try_from(d.to_kind(Kind::Double).sum(Kind::Double)).unwrap_or(f64::NAN);
    }
    Ok(sum / n as f64)
}
