//! Evaluation of generated videos: PSNR/SSIM (scikit-image definitions), LSE-C/D (syncnet_python's
//! SyncNet from its state dict, or TorchScript), LPIPS (TorchScript), WER through an external lip reader, and the mouth opening
//! of the synthetic data set.

mod lpips;
mod metrics;
pub mod mouth;
mod syncnet;
mod syncnet_net;
pub mod wer;

pub use lpips::lpips;
pub use metrics::{psnr, ssim, MetricError, Region, View};
pub use syncnet::{lse, Lse, Script, ScriptError, SyncNet, CROP};
pub use syncnet_net::NativeSyncNet;
