//! Evaluation of generated videos: PSNR/SSIM (scikit-image definitions), LSE-C/D (SyncNet as
//! TorchScript), LPIPS (TorchScript), WER through an external lip reader, and the mouth opening
//! of the synthetic data set.

mod lpips;
mod metrics;
pub mod mouth;
mod syncnet;
pub mod wer;

pub use lpips::lpips;
pub use metrics::{psnr, ssim, MetricError, Region, View};
pub use syncnet::{lse, Lse, Script, ScriptError, CROP};
