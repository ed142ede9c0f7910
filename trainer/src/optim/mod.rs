//! Optimisation written on tensors, so every piece of state can be saved and restored:
//! AdamW and SGD (`adamw`), learning-rate schedules and EMA arrive with the training issue.

mod adamw;

pub use adamw::{AdamW, AdamWConfig, OptimError};
