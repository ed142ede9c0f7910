//! The `model` section: the networks and the diffusion process.
//!
//! Defaults are the paper's values (see `docs/configuration.md` and the model spec); tiny configs
//! override them. Derived quantities (UNet input/output channels, latent size, context width) are
//! methods, never fields, so they cannot disagree with what they are derived from.

use serde::{Deserialize, Serialize};

use super::de::int_list;

/// `model`: every network of SyncDiff.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Image autoencoder that maps frames to latents (VQ-f4 in the paper).
    pub autoencoder: AutoencoderConfig,
    /// Audio encoder that turns the filterbank context into per-frame features.
    pub audio_encoder: AudioEncoderConfig,
    /// Temporal filtering network over the W audio frames around the target.
    pub temporal: TemporalConfig,
    /// Denoising UNet.
    pub unet: UnetConfig,
    /// Visual priors fed to the UNet (Table 3 / Table 5 ablations).
    pub priors: PriorsConfig,
    /// Noise schedule and prediction target.
    pub diffusion: DiffusionConfig,
}

impl ModelConfig {
    /// Channels of one latent frame (the autoencoder's latent channels).
    pub fn latent_channels(&self) -> u32 {
        self.autoencoder.latent_channels
    }

    /// UNet input channels: noisy latent + masked latent + the reference priors.
    pub fn unet_in_channels(&self) -> u32 {
        let c = self.latent_channels();
        c + c + self.priors.channels(c)
    }

    /// UNet output channels: one latent (the prediction target has the latent's shape).
    pub fn unet_out_channels(&self) -> u32 {
        self.latent_channels()
    }

    /// Width of the cross-attention context (the audio features' dimension).
    pub fn context_dim(&self) -> u32 {
        self.audio_encoder.embed_dim
    }

    /// Tokens of the cross-attention context: 1 (pooled) or the temporal window.
    pub fn context_tokens(&self) -> u32 {
        match self.temporal.tokens {
            TemporalTokens::Pooled => 1,
            TemporalTokens::All => self.temporal.window,
        }
    }
}

/// Which image autoencoder encodes frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoencoderKind {
    /// LDM's VQ-f4 (pretrained weights supplied by the user).
    VqF4,
    /// Weight-free area downsampling / bilinear upsampling by the same factor (CPU demo).
    Resample,
}

/// `model.autoencoder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderConfig {
    /// `vq_f4` or `resample`.
    pub kind: AutoencoderKind,
    /// Safetensors file with diffusers `VQModel` names (`syncdiff convert vq-f4` makes one).
    pub weights: Option<String>,
    /// Image channels (RGB).
    pub in_channels: u32,
    /// Channels of the latent (VQ embed_dim).
    pub latent_channels: u32,
    /// Codebook size of the vector quantizer.
    pub num_vq_embeddings: u32,
    /// Channels per resolution level; the downsampling factor is 2^(levels - 1).
    #[serde(deserialize_with = "int_list")]
    pub block_out_channels: Vec<u32>,
    /// Residual blocks per level in the encoder (the decoder has one more).
    pub layers_per_block: u32,
    /// GroupNorm groups.
    pub norm_num_groups: u32,
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        Self {
            kind: AutoencoderKind::VqF4,
            weights: None,
            in_channels: 3,
            latent_channels: 3,
            num_vq_embeddings: 8192,
            block_out_channels: vec![128, 256, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
        }
    }
}

impl AutoencoderConfig {
    /// Spatial downsampling factor between image and latent.
    pub fn downsample_factor(&self) -> u32 {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// Which audio encoder produces the per-frame features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioEncoderKind {
    /// AV-HuBERT audio-only encoder (the paper).
    Avhubert,
    /// A small per-frame projection of the filterbank, no transformer (tiny CPU configs).
    Mel,
}

/// `model.audio_encoder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioEncoderConfig {
    /// `avhubert` or `mel`.
    pub kind: AudioEncoderKind,
    /// Safetensors weights (`syncdiff convert avhubert` makes them from a fairseq checkpoint).
    pub weights: Option<String>,
    /// Input feature size per video frame (26 filters x 4 stacked frames).
    pub input_dim: u32,
    /// Transformer width D; also the cross-attention context width.
    pub embed_dim: u32,
    /// Transformer layers.
    pub layers: u32,
    /// Attention heads.
    pub heads: u32,
    /// Feed-forward width.
    pub ffn_dim: u32,
    /// Layers (from the bottom) that stay frozen (NF, Table 6); the rest train with the UNet.
    pub frozen_layers: u32,
    /// Dropout in the trained layers.
    pub dropout: f64,
    /// Attention-probability dropout in the trained layers.
    pub attention_dropout: f64,
    /// Dropout after the FFN activation in the trained layers.
    pub activation_dropout: f64,
    /// Probability of skipping a trained layer per step.
    pub layerdrop: f64,
    /// Positional convolution kernel.
    pub pos_conv_kernel: u32,
    /// Positional convolution groups.
    pub pos_conv_groups: u32,
    /// Audio context around the target, in video frames (250 = 10 s at 25 fps).
    pub context_frames: u32,
}

impl Default for AudioEncoderConfig {
    fn default() -> Self {
        Self {
            kind: AudioEncoderKind::Avhubert,
            weights: None,
            input_dim: super::MEL_DIM as u32,
            embed_dim: 768,
            layers: 12,
            heads: 12,
            ffn_dim: 3072,
            frozen_layers: 9,
            dropout: 0.1,
            attention_dropout: 0.1,
            activation_dropout: 0.0,
            layerdrop: 0.0,
            pos_conv_kernel: 128,
            pos_conv_groups: 16,
            context_frames: 250,
        }
    }
}

/// How the temporal filter hands the audio window to cross-attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemporalTokens {
    /// One attention-pooled token (DiffTalk's AudioAttNet).
    Pooled,
    /// All W filtered tokens.
    All,
}

/// `model.temporal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalConfig {
    /// Frames in the window around the target: [t - W/2, t + W/2).
    pub window: u32,
    /// `pooled` or `all`.
    pub tokens: TemporalTokens,
    /// Width of the low-dimensional projection the attention conv stack runs on.
    pub hidden: u32,
}

impl Default for TemporalConfig {
    fn default() -> Self {
        Self {
            window: 8,
            tokens: TemporalTokens::Pooled,
            hidden: 32,
        }
    }
}

/// `model.unet`. `in_channels` is derived from `model.priors` and cannot be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnetConfig {
    /// Channels of the first level.
    pub model_channels: u32,
    /// Multiplier of `model_channels` per level.
    #[serde(deserialize_with = "int_list")]
    pub channel_mult: Vec<u32>,
    /// Residual blocks per level (the up path has one more).
    pub num_res_blocks: u32,
    /// Downsampling factors (1 = first level) whose blocks carry spatial transformers.
    #[serde(deserialize_with = "int_list")]
    pub attention_resolutions: Vec<u32>,
    /// Channels per attention head.
    pub head_dim: u32,
    /// Transformer blocks per spatial transformer.
    pub transformer_depth: u32,
    /// GroupNorm groups.
    pub norm_num_groups: u32,
    /// Dropout in residual blocks.
    pub dropout: f64,
}

impl Default for UnetConfig {
    fn default() -> Self {
        Self {
            model_channels: 256,
            channel_mult: vec![1, 2, 3, 4],
            num_res_blocks: 2,
            attention_resolutions: vec![8, 4, 2],
            head_dim: 32,
            transformer_depth: 1,
            norm_num_groups: 32,
            dropout: 0.0,
        }
    }
}

impl UnetConfig {
    /// Output channels of each level.
    pub fn block_out_channels(&self) -> Vec<u32> {
        self.channel_mult
            .iter()
            .map(|m| m * self.model_channels)
            .collect()
    }
}

/// Reference frames given to the UNet (paper Table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferenceMode {
    /// A random frame of the clip (identity).
    #[serde(rename = "rnd")]
    Rnd,
    /// The NP previous frames, raw.
    #[serde(rename = "prv")]
    Prv,
    /// The NP previous frames through the bottleneck conv.
    #[serde(rename = "prv-")]
    PrvMinus,
    /// Identity frame plus bottlenecked previous frames (SyncDiff).
    #[serde(rename = "rnd+prv-")]
    RndPrvMinus,
}

impl ReferenceMode {
    /// Whether an identity frame is part of the input.
    pub fn uses_identity(self) -> bool {
        matches!(self, Self::Rnd | Self::RndPrvMinus)
    }

    /// Whether previous frames are part of the input.
    pub fn uses_previous(self) -> bool {
        !matches!(self, Self::Rnd)
    }

    /// Whether previous frames go through the bottleneck.
    pub fn uses_bottleneck(self) -> bool {
        matches!(self, Self::PrvMinus | Self::RndPrvMinus)
    }
}

/// `model.priors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorsConfig {
    /// `rnd`, `prv`, `prv-` or `rnd+prv-`.
    pub reference: ReferenceMode,
    /// Previous frames used as pose prior (NP, Table 5).
    pub previous_frames: u32,
    /// Standard deviation of Gaussian noise added to the previous-frame latents in training only
    /// (not in the paper: 0 there). At inference the pose prior is a *generated* frame whose
    /// errors compound frame after frame; training on perturbed pose frames makes the model
    /// lean less on them. Used by the CPU demo.
    pub previous_noise: f64,
}

impl Default for PriorsConfig {
    fn default() -> Self {
        Self {
            reference: ReferenceMode::RndPrvMinus,
            previous_frames: 1,
            previous_noise: 0.0,
        }
    }
}

impl PriorsConfig {
    /// Channels the priors add to the UNet input, given the latent channels.
    pub fn channels(&self, latent_channels: u32) -> u32 {
        let identity = if self.reference.uses_identity() {
            latent_channels
        } else {
            0
        };
        let previous = match (
            self.reference.uses_previous(),
            self.reference.uses_bottleneck(),
        ) {
            (false, _) => 0,
            // The bottleneck compresses each previous frame to one channel.
            (true, true) => self.previous_frames,
            (true, false) => self.previous_frames * latent_channels,
        };
        identity + previous
    }

    /// Number of previous frames a training sample needs (0 when the mode uses none).
    pub fn needed_previous_frames(&self) -> u32 {
        if self.reference.uses_previous() {
            self.previous_frames
        } else {
            0
        }
    }
}

/// What the UNet is trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionTarget {
    /// The added noise (the paper).
    Eps,
    /// The clean latent (diffusers `prediction_type="sample"`; converges much faster on CPU).
    X0,
    /// The velocity sqrt(a) * eps - sqrt(1 - a) * x0.
    V,
}

/// Shape of the beta schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// betas = linspace(sqrt(start), sqrt(end), T)^2 (LDM "linear", diffusers "scaled_linear").
    ScaledLinear,
    /// betas = linspace(start, end, T).
    Linear,
}

/// `model.diffusion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// Training timesteps T.
    pub timesteps: u32,
    /// `scaled_linear` or `linear`.
    pub beta_schedule: BetaSchedule,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// `eps`, `x0` or `v`.
    pub prediction: PredictionTarget,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            timesteps: 1000,
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.0015,
            beta_end: 0.0195,
            prediction: PredictionTarget::Eps,
        }
    }
}
