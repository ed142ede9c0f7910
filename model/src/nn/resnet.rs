//! Residual block and resampling layers (diffusers `ResnetBlock2D`, `Downsample2D`, `Upsample2D`).

use tch::nn::{self, Module};
use tch::Tensor;

use super::{conv2d, group_norm, linear};

/// GroupNorm -> SiLU -> conv -> (+ time embedding) -> GroupNorm -> SiLU -> dropout -> conv, plus a
/// 1x1 `conv_shortcut` when the width changes.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
    dropout: f64,
}

impl ResnetBlock {
    /// `temb`: width of the time embedding (None: no time conditioning, as in the autoencoder).
    pub fn new(
        vs: nn::Path,
        cin: i64,
        cout: i64,
        temb: Option<i64>,
        groups: i64,
        eps: f64,
        dropout: f64,
    ) -> Self {
        Self {
            norm1: group_norm(&vs / "norm1", groups, cin, eps),
            conv1: conv2d(&vs / "conv1", cin, cout, 3, 1, 1),
            time_emb_proj: temb.map(|t| linear(&vs / "time_emb_proj", t, cout, true)),
            norm2: group_norm(&vs / "norm2", groups, cout, eps),
            conv2: conv2d(&vs / "conv2", cout, cout, 3, 1, 1),
            conv_shortcut: (cin != cout).then(|| conv2d(&vs / "conv_shortcut", cin, cout, 1, 1, 0)),
            dropout,
        }
    }

    /// x: (B, Cin, H, W), temb: (B, T) -> (B, Cout, H, W).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>, train: bool) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            // (B, Cout) -> (B, Cout, 1, 1)
            h += proj.forward(&t.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.norm2.forward(&h).silu().dropout(self.dropout, train);
        let h = self.conv2.forward(&h);
        match &self.conv_shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// Stride-2 3x3 convolution. `asymmetric_pad`: pad (0, 1, 0, 1) and no conv padding, as LDM's
/// autoencoder does; otherwise padding 1, as the UNet does.
#[derive(Debug)]
pub struct Downsample {
    conv: nn::Conv2D,
    asymmetric_pad: bool,
}

impl Downsample {
    /// Key: `<vs>.conv`.
    pub fn new(vs: nn::Path, channels: i64, asymmetric_pad: bool) -> Self {
        let pad = if asymmetric_pad { 0 } else { 1 };
        Self {
            conv: conv2d(&vs / "conv", channels, channels, 3, 2, pad),
            asymmetric_pad,
        }
    }

    /// x: (B, C, H, W) -> (B, C, H/2, W/2).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.asymmetric_pad {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour x2 upsampling then a 3x3 convolution.
#[derive(Debug)]
pub struct Upsample {
    conv: nn::Conv2D,
}

impl Upsample {
    /// Key: `<vs>.conv`.
    pub fn new(vs: nn::Path, channels: i64) -> Self {
        Self {
            conv: conv2d(&vs / "conv", channels, channels, 3, 1, 1),
        }
    }

    /// x: (B, C, H, W) -> (B, C, 2H, 2W).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().expect("Upsample input is (B, C, H, W)");
        self.conv
            .forward(&x.upsample_nearest2d([2 * h, 2 * w], None, None))
    }
}
