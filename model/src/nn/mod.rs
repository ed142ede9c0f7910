//! Building blocks shared by the autoencoder and the UNet, with diffusers' parameter names.

mod attention;
mod resnet;
mod transformer;

pub use attention::{Attention, SpatialSelfAttention};
pub use resnet::{Downsample, ResnetBlock, Upsample};
pub use transformer::SpatialTransformer;

use tch::nn;

/// 2-D convolution with "same"-style padding `pad` and stride `stride`.
pub(crate) fn conv2d(
    vs: nn::Path,
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    pad: i64,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: pad,
        ..Default::default()
    };
    nn::conv2d(vs, cin, cout, k, cfg)
}

/// GroupNorm with affine parameters.
pub(crate) fn group_norm(vs: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    let cfg = nn::GroupNormConfig {
        eps,
        ..Default::default()
    };
    nn::group_norm(vs, groups, channels, cfg)
}

/// Linear layer, with or without bias.
pub(crate) fn linear(vs: nn::Path, din: i64, dout: i64, bias: bool) -> nn::Linear {
    nn::linear(
        vs,
        din,
        dout,
        nn::LinearConfig {
            bias,
            ..Default::default()
        },
    )
}
