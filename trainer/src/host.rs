//! Reading tensor values back to the host. On a GPU every read waits until the device has run
//! everything queued before it, so the training step makes as few as it can: the loss, the
//! gradient norm and the stop flag, once per step each. Every such read in the step goes
//! through [`scalar`], which counts them, so a test can hold the number per step
//! (`tests/it/step.rs`) and a source check keeps other reads out of the step's files.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;

static READS: AtomicU64 = AtomicU64::new(0);

/// The value of a one-element tensor, as f64 (a host read: counted).
pub fn scalar(t: &Tensor) -> Result<f64, tch::TchError> {
    READS.fetch_add(1, Ordering::Relaxed);
    f64::try_from(t)
}

/// Host reads made through [`scalar`] by this process so far.
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}
