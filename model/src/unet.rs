//! Conditional denoising UNet with cross-attention (LDM `openaimodel`, with diffusers
//! `UNet2DConditionModel` parameter names so diffusers weights load directly).
//!
//! Level i (0 = full latent resolution) has `model_channels * channel_mult[i]` channels and carries
//! spatial transformers when its downsampling factor 2^i is listed in `attention_resolutions`.
//! Heads per level = channels / head_dim. The middle block always has one transformer.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::UnetConfig;
use crate::nn::{
    conv2d, group_norm, linear, Downsample, ResnetBlock, SpatialTransformer, Upsample,
};

/// GroupNorm epsilon of the UNet's residual blocks and output norm (diffusers `norm_eps`).
const EPS: f64 = 1e-5;

/// Shape of one UNet, resolved from the configuration and the derived channel counts.
#[derive(Debug, Clone, PartialEq)]
pub struct UnetShape {
    /// Input channels (derived from the priors).
    pub in_channels: i64,
    /// Output channels (the latent's).
    pub out_channels: i64,
    /// Cross-attention context width.
    pub context_dim: i64,
    /// Channels of each level.
    pub channels: Vec<i64>,
    /// Whether each level has transformers.
    pub attention: Vec<bool>,
    /// Residual blocks per level on the way down.
    pub num_res_blocks: i64,
    /// Channels per head.
    pub head_dim: i64,
    /// Transformer blocks per spatial transformer.
    pub depth: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// Residual-block dropout.
    pub dropout: f64,
}

impl UnetShape {
    /// Resolves the shape from `model.unet` and the derived channel counts.
    pub fn new(cfg: &UnetConfig, in_channels: u32, out_channels: u32, context_dim: u32) -> Self {
        let channels: Vec<i64> = cfg
            .block_out_channels()
            .into_iter()
            .map(i64::from)
            .collect();
        let attention = (0..channels.len())
            .map(|i| cfg.attention_resolutions.contains(&(1u32 << i)))
            .collect();
        Self {
            in_channels: i64::from(in_channels),
            out_channels: i64::from(out_channels),
            context_dim: i64::from(context_dim),
            channels,
            attention,
            num_res_blocks: i64::from(cfg.num_res_blocks),
            head_dim: i64::from(cfg.head_dim),
            depth: i64::from(cfg.transformer_depth),
            groups: i64::from(cfg.norm_num_groups),
            dropout: cfg.dropout,
        }
    }

    /// The shape of the denoiser's UNet in `model`: priors in, one latent out, audio context.
    pub fn of(model: &crate::config::ModelConfig) -> Self {
        Self::new(
            &model.unet,
            model.unet_in_channels(),
            model.unet_out_channels(),
            model.context_dim(),
        )
    }
}

/// Sinusoidal embedding of the timesteps, `[cos | sin]` (LDM; diffusers `flip_sin_to_cos=True`,
/// `downscale_freq_shift=0`). t: (B,) -> (B, dim).
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let freqs =
        (Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()) / half as f64)).exp();
    // (B, 1) x (1, half) -> (B, half)
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], -1)
}

/// Resnet (+ transformer) pairs of one level, and its resampler.
#[derive(Debug)]
struct Level<S> {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    sampler: Option<S>,
}

impl<S> Level<S> {
    /// Runs resnet i then transformer i (when the level has them).
    fn layer(&self, i: usize, x: &Tensor, temb: &Tensor, ctx: &Tensor, train: bool) -> Tensor {
        let h = self.resnets[i].forward(x, Some(temb), train);
        match self.attentions.get(i) {
            Some(a) => a.forward(&h, ctx),
            None => h,
        }
    }
}

/// The denoising UNet.
#[derive(Debug)]
pub struct Unet {
    shape: UnetShape,
    conv_in: nn::Conv2D,
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    down: Vec<Level<Downsample>>,
    mid_resnet0: ResnetBlock,
    mid_attention: SpatialTransformer,
    mid_resnet1: ResnetBlock,
    up: Vec<Level<Upsample>>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Unet {
    /// Builds the UNet under `vs`.
    pub fn new(vs: nn::Path, shape: &UnetShape) -> Self {
        let s = shape;
        let ch = &s.channels;
        let levels = ch.len();
        let temb = 4 * ch[0];
        let res = |p: nn::Path, cin: i64, cout: i64| {
            ResnetBlock::new(p, cin, cout, Some(temb), s.groups, EPS, s.dropout)
        };
        let xf = |p: nn::Path, c: i64| {
            SpatialTransformer::new(p, c, s.head_dim, s.depth, s.context_dim, s.groups)
        };

        let mut cin = ch[0];
        let down = (0..levels)
            .map(|i| {
                let p = &vs / "down_blocks" / i;
                let cout = ch[i];
                let resnets = (0..s.num_res_blocks)
                    .map(|j| res(&p / "resnets" / j, if j == 0 { cin } else { cout }, cout))
                    .collect();
                let attentions = if s.attention[i] {
                    (0..s.num_res_blocks)
                        .map(|j| xf(&p / "attentions" / j, cout))
                        .collect()
                } else {
                    Vec::new()
                };
                cin = cout;
                let sampler =
                    (i + 1 < levels).then(|| Downsample::new(&p / "downsamplers" / 0, cout, false));
                Level {
                    resnets,
                    attentions,
                    sampler,
                }
            })
            .collect();

        let deepest = ch[levels - 1];
        let mid = &vs / "mid_block";
        // Up block u works at level `levels - 1 - u`; its resnets take the skip connections of
        // that level (and the first one of the level below) concatenated to their input.
        let mut prev = deepest;
        let up = (0..levels)
            .map(|u| {
                let lvl = levels - 1 - u;
                let p = &vs / "up_blocks" / u;
                let cout = ch[lvl];
                let below = ch[lvl.saturating_sub(1)];
                let n = s.num_res_blocks + 1;
                let resnets = (0..n)
                    .map(|j| {
                        let skip = if j == n - 1 { below } else { cout };
                        let input = if j == 0 { prev } else { cout };
                        res(&p / "resnets" / j, input + skip, cout)
                    })
                    .collect();
                let attentions = if s.attention[lvl] {
                    (0..n).map(|j| xf(&p / "attentions" / j, cout)).collect()
                } else {
                    Vec::new()
                };
                prev = cout;
                let sampler = (lvl > 0).then(|| Upsample::new(&p / "upsamplers" / 0, cout));
                Level {
                    resnets,
                    attentions,
                    sampler,
                }
            })
            .collect();

        Self {
            conv_in: conv2d(&vs / "conv_in", s.in_channels, ch[0], 3, 1, 1),
            time_linear_1: linear(&vs / "time_embedding" / "linear_1", ch[0], temb, true),
            time_linear_2: linear(&vs / "time_embedding" / "linear_2", temb, temb, true),
            down,
            mid_resnet0: res(&mid / "resnets" / 0, deepest, deepest),
            mid_attention: xf(&mid / "attentions" / 0, deepest),
            mid_resnet1: res(&mid / "resnets" / 1, deepest, deepest),
            up,
            conv_norm_out: group_norm(&vs / "conv_norm_out", s.groups, ch[0], EPS),
            conv_out: conv2d(&vs / "conv_out", ch[0], s.out_channels, 3, 1, 1),
            shape: shape.clone(),
        }
    }

    /// The shape this UNet was built with.
    pub fn shape(&self) -> &UnetShape {
        &self.shape
    }

    /// x: (B, in_channels, h, w), t: (B,) timesteps, context: (B, M, context_dim)
    /// -> (B, out_channels, h, w). `h` and `w` must be divisible by 2^(levels - 1).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let temb = timestep_embedding(t, self.shape.channels[0]).to_kind(x.kind());
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb).silu());

        let mut h = self.conv_in.forward(x);
        let mut skips = vec![h.shallow_clone()];
        for level in &self.down {
            for i in 0..level.resnets.len() {
                h = level.layer(i, &h, &temb, context, train);
                skips.push(h.shallow_clone());
            }
            if let Some(d) = &level.sampler {
                h = d.forward(&h);
                skips.push(h.shallow_clone());
            }
        }

        h = self.mid_resnet0.forward(&h, Some(&temb), train);
        h = self.mid_attention.forward(&h, context);
        h = self.mid_resnet1.forward(&h, Some(&temb), train);

        for level in &self.up {
            for i in 0..level.resnets.len() {
                let skip = skips
                    .pop()
                    .unwrap_or_else(|| Tensor::zeros([0], (x.kind(), x.device())));
                h = level.layer(i, &Tensor::cat(&[&h, &skip], 1), &temb, context, train);
            }
            if let Some(u) = &level.sampler {
                h = u.forward(&h);
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h).silu())
    }
}

impl UnetShape {
    /// Rough number of activation floats one training sample keeps for the backward pass on an
    /// h x w latent: per pixel ~ (2 c_in + 4 c_out) per residual block and ~ 30 c per transformer
    /// block (norms, q/k/v, attention outputs, GEGLU), skips included. Attention matrices are not
    /// counted (fused attention keeps O(pixels) state). An estimate, not a measurement.
    pub fn activation_floats(&self, h: i64, w: i64) -> i64 {
        let ch = &self.channels;
        let levels = ch.len();
        let mut total = h * w * (self.in_channels + ch[0]);
        let res = |cin: i64, cout: i64, px: i64| (2 * cin + 4 * cout) * px;
        let xf = |c: i64, px: i64| (4 + 30 * self.depth) * c * px;
        let mut cin = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let px = (h >> i) * (w >> i);
            let attn = if self.attention[i] { xf(c, px) } else { 0 };
            for j in 0..self.num_res_blocks {
                total += res(if j == 0 { cin } else { c }, c, px) + attn;
            }
            // Up path: one more block per level, with the skip concatenated.
            total += (self.num_res_blocks + 1) * (res(2 * c, c, px) + attn);
            cin = c;
        }
        let deepest = ch[levels - 1];
        let px = (h >> (levels - 1)) * (w >> (levels - 1));
        total + 2 * res(deepest, deepest, px) + xf(deepest, px)
    }
}
