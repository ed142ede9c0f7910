//! Numeric precision settings: `train.precision`, `train.tf32`, `train.loss_scale`,
//! `dist.reduce_dtype` and `sample.precision` (docs/training.md, "Precision").

use serde::{Deserialize, Serialize};

/// The precision of the forward pass and the loss: autocast with libtorch's per-op casting policy
/// (the one `torch.autocast` uses). Master weights, the gradients the optimizer sees, AdamW
/// moments and the EMA stay float32 in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Float32 throughout (the default; what a CPU without bf16 units runs fastest).
    #[default]
    Fp32,
    /// bfloat16 autocast: the recommended setting on GPUs (float32's range, no loss scaling).
    Bf16,
    /// float16 autocast with a dynamic loss scale (`train.loss_scale`).
    Fp16,
}

impl Precision {
    /// The name in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        }
    }

    /// Bytes of one activation element stored for the backward pass under autocast (an estimate:
    /// the ops autocast keeps in float32, such as norms and softmax, store float32).
    pub fn activation_bytes(self) -> f64 {
        match self {
            Self::Fp32 => 4.0,
            Self::Bf16 | Self::Fp16 => 2.0,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "bf16" => Ok(Self::Bf16),
            "fp16" => Ok(Self::Fp16),
            _ => Err(format!("{s:?}: expected fp32, bf16 or fp16")),
        }
    }
}

/// `dist.reduce_dtype`: the element type gradients travel in during the all-reduce. `bf16`
/// halves the bytes on the wire; each bucket is rounded to bfloat16 after the division by the
/// world size, summed in bfloat16 (each partial sum rounded), and widened back to float32 for
/// clipping and the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceDtype {
    /// float32 (the default: the gradients as the backward pass left them).
    #[default]
    Fp32,
    /// bfloat16.
    Bf16,
}

/// `train.loss_scale`: the dynamic loss scale of `fp16` training, with the rules and defaults of
/// `torch.amp.GradScaler`: the loss is multiplied by `scale` before backward; a step whose
/// averaged gradients hold an inf or NaN is skipped on every rank and the scale multiplied by
/// `backoff_factor`; after `growth_interval` finite steps in a row it is multiplied by
/// `growth_factor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossScaleConfig {
    /// The first scale.
    pub init_scale: f64,
    /// Growth after `growth_interval` finite steps.
    pub growth_factor: f64,
    /// Back-off on a step with inf/NaN gradients.
    pub backoff_factor: f64,
    /// Finite steps in a row before growing.
    pub growth_interval: u64,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}
