//! Optimisation written on tensors, so every piece of state can be saved and restored:
//! AdamW (`adamw`), EMA with warm-up (`ema`), learning-rate schedule and clipping (`schedule`).

mod adamw;
mod ema;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, OptimError};
pub use ema::Ema;
pub use schedule::{clip_grad_norm, lr_at};
