//! Evaluation of generated videos (issue 8, in progress): image metrics so far.

mod metrics;

pub use metrics::{psnr, ssim, MetricError, Region, View};
