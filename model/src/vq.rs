//! Image autoencoders: LDM's VQ-f4 (diffusers `VQModel` names) and the weight-free `resample`
//! stand-in used where no pretrained weights exist (the CPU demo).
//!
//! Images are (B, 3, H, W) in [-1, 1]; latents are (B, C, H/f, W/f) with f = 2^(levels - 1).

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::{AutoencoderConfig, AutoencoderKind};
use crate::nn::{conv2d, group_norm, Downsample, ResnetBlock, SpatialSelfAttention, Upsample};

/// GroupNorm epsilon of LDM's autoencoder.
const EPS: f64 = 1e-6;

/// Resnet -> self-attention -> resnet at the lowest resolution (`mid_block`).
#[derive(Debug)]
struct MidBlock {
    resnet0: ResnetBlock,
    attn: SpatialSelfAttention,
    resnet1: ResnetBlock,
}

impl MidBlock {
    fn new(vs: nn::Path, ch: i64, groups: i64) -> Self {
        Self {
            resnet0: ResnetBlock::new(&vs / "resnets" / 0, ch, ch, None, groups, EPS, 0.0),
            attn: SpatialSelfAttention::new(&vs / "attentions" / 0, ch, groups, EPS),
            resnet1: ResnetBlock::new(&vs / "resnets" / 1, ch, ch, None, groups, EPS, 0.0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.resnet0.forward(x, None, false);
        let x = self.attn.forward(&x);
        self.resnet1.forward(&x, None, false)
    }
}

/// One resolution level: resnets then an optional resampler.
#[derive(Debug)]
struct Level<S> {
    resnets: Vec<ResnetBlock>,
    sampler: Option<S>,
}

/// Image -> pre-quantization features (diffusers `Encoder`, `double_z = false`).
#[derive(Debug)]
struct Encoder {
    conv_in: nn::Conv2D,
    down: Vec<Level<Downsample>>,
    mid: MidBlock,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    fn new(vs: nn::Path, cfg: &AutoencoderConfig) -> Self {
        let ch: Vec<i64> = cfg
            .block_out_channels
            .iter()
            .map(|&c| i64::from(c))
            .collect();
        let g = i64::from(cfg.norm_num_groups);
        let last = ch.len() - 1;
        let mut cin = ch[0];
        let down = ch
            .iter()
            .enumerate()
            .map(|(i, &cout)| {
                let p = &vs / "down_blocks" / i;
                let resnets = (0..i64::from(cfg.layers_per_block))
                    .map(|j| {
                        ResnetBlock::new(
                            &p / "resnets" / j,
                            if j == 0 { cin } else { cout },
                            cout,
                            None,
                            g,
                            EPS,
                            0.0,
                        )
                    })
                    .collect();
                cin = cout;
                let sampler =
                    (i != last).then(|| Downsample::new(&p / "downsamplers" / 0, cout, true));
                Level { resnets, sampler }
            })
            .collect();
        Self {
            conv_in: conv2d(&vs / "conv_in", i64::from(cfg.in_channels), ch[0], 3, 1, 1),
            down,
            mid: MidBlock::new(&vs / "mid_block", ch[last], g),
            conv_norm_out: group_norm(&vs / "conv_norm_out", g, ch[last], EPS),
            conv_out: conv2d(
                &vs / "conv_out",
                ch[last],
                i64::from(cfg.latent_channels),
                3,
                1,
                1,
            ),
        }
    }

    /// x: (B, 3, H, W) -> (B, C, H/f, W/f).
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for level in &self.down {
            for r in &level.resnets {
                h = r.forward(&h, None, false);
            }
            if let Some(d) = &level.sampler {
                h = d.forward(&h);
            }
        }
        let h = self.mid.forward(&h);
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// Latent -> image (diffusers `Decoder`; `up_blocks.0` is the lowest resolution).
#[derive(Debug)]
struct Decoder {
    conv_in: nn::Conv2D,
    mid: MidBlock,
    up: Vec<Level<Upsample>>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    fn new(vs: nn::Path, cfg: &AutoencoderConfig) -> Self {
        let ch: Vec<i64> = cfg
            .block_out_channels
            .iter()
            .rev()
            .map(|&c| i64::from(c))
            .collect();
        let g = i64::from(cfg.norm_num_groups);
        let last = ch.len() - 1;
        let mut cin = ch[0];
        let up = ch
            .iter()
            .enumerate()
            .map(|(i, &cout)| {
                let p = &vs / "up_blocks" / i;
                let resnets = (0..=i64::from(cfg.layers_per_block))
                    .map(|j| {
                        ResnetBlock::new(
                            &p / "resnets" / j,
                            if j == 0 { cin } else { cout },
                            cout,
                            None,
                            g,
                            EPS,
                            0.0,
                        )
                    })
                    .collect();
                cin = cout;
                let sampler = (i != last).then(|| Upsample::new(&p / "upsamplers" / 0, cout));
                Level { resnets, sampler }
            })
            .collect();
        Self {
            conv_in: conv2d(
                &vs / "conv_in",
                i64::from(cfg.latent_channels),
                ch[0],
                3,
                1,
                1,
            ),
            mid: MidBlock::new(&vs / "mid_block", ch[0], g),
            up,
            conv_norm_out: group_norm(&vs / "conv_norm_out", g, ch[last], EPS),
            conv_out: conv2d(
                &vs / "conv_out",
                ch[last],
                i64::from(cfg.in_channels),
                3,
                1,
                1,
            ),
        }
    }

    /// z: (B, C, h, w) -> (B, 3, h f, w f).
    fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid.forward(&self.conv_in.forward(z));
        for level in &self.up {
            for r in &level.resnets {
                h = r.forward(&h, None, false);
            }
            if let Some(u) = &level.sampler {
                h = u.forward(&h);
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// LDM VQ-f4 autoencoder with diffusers `VQModel` parameter names.
#[derive(Debug)]
pub struct VqModel {
    encoder: Encoder,
    quant_conv: nn::Conv2D,
    codebook: Tensor,
    post_quant_conv: nn::Conv2D,
    decoder: Decoder,
}

impl VqModel {
    /// Builds the model under `vs` (weights loaded separately).
    pub fn new(vs: nn::Path, cfg: &AutoencoderConfig) -> Self {
        let c = i64::from(cfg.latent_channels);
        Self {
            encoder: Encoder::new(&vs / "encoder", cfg),
            quant_conv: conv2d(&vs / "quant_conv", c, c, 1, 1, 0),
            codebook: (&vs / "quantize" / "embedding").var(
                "weight",
                &[i64::from(cfg.num_vq_embeddings), c],
                nn::Init::Uniform {
                    lo: -1.0 / 8192.0,
                    up: 1.0 / 8192.0,
                },
            ),
            post_quant_conv: conv2d(&vs / "post_quant_conv", c, c, 1, 1, 0),
            decoder: Decoder::new(&vs / "decoder", cfg),
        }
    }

    /// The continuous latent LDM trains on: `quant_conv(encoder(x))`, before quantization.
    /// x: (B, 3, H, W) in [-1, 1] -> (B, C, H/4, W/4).
    pub fn encode(&self, x: &Tensor) -> Tensor {
        self.quant_conv.forward(&self.encoder.forward(x))
    }

    /// Nearest codebook entry of every latent pixel. z: (B, C, h, w) -> (B, C, h, w).
    pub fn quantize(&self, z: &Tensor) -> Tensor {
        let (b, c, h, w) = z.size4().expect("latents are (B, C, h, w)");
        // (B, C, h, w) -> (B h w, C)
        let flat = z.permute([0, 2, 3, 1]).reshape([-1, c]);
        let idx = Tensor::cdist(&flat, &self.codebook, 2.0, None).argmin(1, false);
        self.codebook
            .index_select(0, &idx)
            .reshape([b, h, w, c])
            .permute([0, 3, 1, 2])
    }

    /// `decoder(post_quant_conv(quantize(z)))`. z: (B, C, h, w) -> (B, 3, 4h, 4w).
    pub fn decode(&self, z: &Tensor) -> Tensor {
        self.decoder
            .forward(&self.post_quant_conv.forward(&self.quantize(z)))
    }
}

/// The autoencoder a configuration selects.
#[derive(Debug)]
pub enum Autoencoder {
    /// LDM VQ-f4.
    Vq(Box<VqModel>),
    /// Area downsampling / bilinear upsampling by `factor` (no parameters).
    Resample {
        /// Spatial factor.
        factor: i64,
    },
}

impl Autoencoder {
    /// Builds the configured autoencoder (VQ parameters under `vs`).
    pub fn new(vs: nn::Path, cfg: &AutoencoderConfig) -> Self {
        match cfg.kind {
            AutoencoderKind::VqF4 => Self::Vq(Box::new(VqModel::new(vs, cfg))),
            AutoencoderKind::Resample => Self::Resample {
                factor: i64::from(cfg.downsample_factor()),
            },
        }
    }

    /// x: (B, 3, H, W) in [-1, 1] -> latent (B, C, H/f, W/f).
    pub fn encode(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Vq(m) => m.encode(x),
            Self::Resample { factor } => x.avg_pool2d(
                [*factor, *factor],
                [*factor, *factor],
                [0, 0],
                false,
                true,
                None,
            ),
        }
    }

    /// latent (B, C, h, w) -> image (B, 3, h f, w f).
    pub fn decode(&self, z: &Tensor) -> Tensor {
        match self {
            Self::Vq(m) => m.decode(z),
            Self::Resample { factor } => {
                let (_, _, h, w) = z.size4().expect("latents are (B, C, h, w)");
                z.upsample_bilinear2d([h * factor, w * factor], false, None, None)
            }
        }
    }
}
