//! Autocast regions and TF32 through libtorch's own switches (`model/csrc/amp.cpp`, the
//! functions tch does not expose), for training and generation alike.
//!
//! Under `bf16` or `fp16` the forward pass runs inside an [`Autocast`] region: every operator
//! casts its inputs as libtorch's autocast policy says (matmuls and convolutions in the low
//! precision, norms, softmax and losses in float32), exactly as PyTorch's `torch.autocast` does,
//! because it is the same code. Parameters stay float32.

use std::ffi::c_char;
use std::marker::PhantomData;

use crate::config::Precision;
use tch::Device;

/// What an autocast region replaced (csrc/amp.cpp, same layout).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Prev {
    enabled: i32,
    dtype: i32,
    cache: i32,
}

unsafe extern "C" {
    fn syncdiff_autocast_enter(
        device: i32,
        dtype: i32,
        prev: *mut Prev,
        msg: *mut c_char,
        len: usize,
    ) -> i32;
    fn syncdiff_autocast_exit(device: i32, prev: *const Prev, msg: *mut c_char, len: usize) -> i32;
    fn syncdiff_autocast_enabled(device: i32) -> i32;
    fn syncdiff_set_tf32(on: i32, msg: *mut c_char, len: usize) -> i32;
    fn syncdiff_tf32() -> i32;
}

/// A failure inside libtorch's precision switches.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct AmpError {
    what: &'static str,
    message: String,
}

/// Calls a shim function (zero on success, else non-zero with a NUL-terminated message written
/// into the buffer), naming what failed.
fn call(what: &'static str, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), AmpError> {
    let mut buf = [0u8; 512];
    if f(buf.as_mut_ptr().cast(), buf.len()) == 0 {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let message = String::from_utf8_lossy(&buf[..end]).into_owned();
    Err(AmpError { what, message })
}

/// The shim's device type code of a tch device.
fn device_code(device: Device) -> i32 {
    match device {
        Device::Cpu => 0,
        _ => 1,
    }
}

/// An autocast region on the calling thread, closed when dropped (thread local in libtorch, so
/// the guard cannot move to another thread). Nesting works as with `torch.autocast`.
#[derive(Debug)]
pub struct Autocast {
    region: Option<(i32, Prev)>,
    _not_send: PhantomData<*const ()>,
}

impl Autocast {
    /// Opens a region for `precision` on `device`; `fp32` opens none (the guard does nothing).
    pub fn enter(precision: Precision, device: Device) -> Result<Self, AmpError> {
        let dtype = match precision {
            Precision::Fp32 => {
                return Ok(Self {
                    region: None,
                    _not_send: PhantomData,
                })
            }
            Precision::Bf16 => 0,
            Precision::Fp16 => 1,
        };
        let dev = device_code(device);
        let mut prev = Prev::default();
        // SAFETY: `prev` is a valid out-pointer for the call; the message buffer is `call`'s.
        call("entering autocast", |msg, len| unsafe {
            syncdiff_autocast_enter(dev, dtype, &mut prev, msg, len)
        })?;
        Ok(Self {
            region: Some((dev, prev)),
            _not_send: PhantomData,
        })
    }

    /// Runs `f` inside a region for `precision` on `device`.
    pub fn run<T>(
        precision: Precision,
        device: Device,
        f: impl FnOnce() -> T,
    ) -> Result<T, AmpError> {
        let _region = Self::enter(precision, device)?;
        Ok(f())
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if let Some((dev, prev)) = self.region.take() {
            // SAFETY: restores the state this guard's enter saved, on the same thread.
            if let Err(e) = call("leaving autocast", |msg, len| unsafe {
                syncdiff_autocast_exit(dev, &prev, msg, len)
            }) {
                // Only unknown codes fail, which enter already refused.
                eprintln!("warning: {e}");
            }
        }
    }
}

/// Whether autocast is on for `device`'s type on the calling thread.
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: reads libtorch's thread-local autocast flag.
    unsafe { syncdiff_autocast_enabled(device_code(device)) == 1 }
}

/// Turns TF32 for cuBLAS matmuls and cuDNN convolutions on or off (process wide; flags only,
/// so harmless without a GPU).
pub fn set_tf32(on: bool) -> Result<(), AmpError> {
    // SAFETY: sets two flags of libtorch's global context.
    call("setting TF32", |msg, len| unsafe {
        syncdiff_set_tf32(i32::from(on), msg, len)
    })
}

/// The TF32 flags (cuBLAS matmul, cuDNN convolution).
pub fn tf32() -> (bool, bool) {
    // SAFETY: reads two flags of libtorch's global context.
    let bits = unsafe { syncdiff_tf32() };
    (bits > 0 && bits & 1 != 0, bits > 0 && bits & 2 != 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn autocast_region_casts_matmuls_and_keeps_reductions_then_restores() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(Device::Cpu));
        let (mm, sum, inner) = Autocast::run(Precision::Bf16, Device::Cpu, || {
            let mm = a.matmul(&b);
            // Nested regions restore the outer one.
            let inner = Autocast::run(Precision::Bf16, Device::Cpu, || {
                autocast_enabled(Device::Cpu)
            })
            .unwrap();
            let sum = mm.log_softmax(1, Kind::Float);
            (mm, sum, inner && autocast_enabled(Device::Cpu))
        })
        .unwrap();
        assert!(inner);
        assert_eq!(mm.kind(), Kind::BFloat16, "matmul runs in bf16");
        assert_eq!(sum.kind(), Kind::Float);
        assert!(!autocast_enabled(Device::Cpu), "the region is closed");
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        let fp32 = Autocast::run(Precision::Fp32, Device::Cpu, || a.matmul(&b)).unwrap();
        assert_eq!(fp32.kind(), Kind::Float);
    }

    #[test]
    fn tf32_flags_follow_the_switch() {
        let before = tf32();
        set_tf32(true).unwrap();
        assert_eq!(tf32(), (true, true));
        set_tf32(false).unwrap();
        assert_eq!(tf32(), (false, false));
        set_tf32(before.0).unwrap();
    }
}
