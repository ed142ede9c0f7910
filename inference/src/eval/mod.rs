//! Evaluation of generated videos: PSNR/SSIM (scikit-image definitions), LSE-C/D (syncnet_python's
//! SyncNet from its state dict, or TorchScript), LPIPS (the lpips package's AlexNet model from
//! its weights, or TorchScript), WER through an external lip reader, and the mouth opening of the
//! synthetic data set; `score` a video against its ground truth, `report` the table and JSON.

mod lpips;
mod lpips_net;
mod metrics;
pub mod mouth;
pub mod report;
mod script;
mod state_dict;
mod syncnet;
mod syncnet_net;
mod videos;
pub mod wer;

pub use lpips::{lpips, Lpips};
pub use lpips_net::NativeLpips;
pub use metrics::{psnr, ssim, MetricError, Region, View};
pub use script::{Script, ScriptError};
pub use syncdiff_model::offsets::{offset_scores, OffsetScores};
pub use syncnet::{lse, Lse, SyncNet, CROP};
pub use syncnet_net::NativeSyncNet;
pub use videos::{
    mean_finite, pairs, score, EvalError, MouthBox, Nets, OpeningScores, ScoreOptions, VideoScores,
};
