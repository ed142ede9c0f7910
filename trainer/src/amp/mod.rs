//! Mixed precision of training: autocast regions and TF32 (`syncdiff_model::autocast`,
//! re-exported: generation uses them too) and the dynamic loss scale of fp16 training
//! ([`LossScaler`]). Parameters stay float32 under autocast, so their gradients, the AdamW
//! moments and the EMA are float32 too.

mod scaler;

pub use scaler::{all_finite, unscale_and_check, LossScaler};
pub use syncdiff_checkpoint::LossScaleState;
pub use syncdiff_model::autocast::{autocast_enabled, set_tf32, tf32, AmpError, Autocast};
