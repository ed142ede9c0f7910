//! Spatial transformer with cross-attention (diffusers `Transformer2DModel` with
//! `BasicTransformerBlock`s and a GEGLU feed-forward).

use tch::nn::{self, Module};
use tch::Tensor;

use super::{conv2d, group_norm, linear, Attention};

/// GEGLU feed-forward: `net.0.proj` (dim -> 2 x 4 dim), gate with GELU, `net.2` (4 dim -> dim).
#[derive(Debug)]
struct FeedForward {
    proj: nn::Linear,
    out: nn::Linear,
}

impl FeedForward {
    fn new(vs: nn::Path, dim: i64) -> Self {
        let inner = 4 * dim;
        Self {
            proj: linear(&vs / "net" / 0 / "proj", dim, 2 * inner, true),
            out: linear(&vs / "net" / 2, inner, dim, true),
        }
    }

    /// x: (B, N, dim) -> (B, N, dim).
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.proj.forward(x);
        let parts = h.chunk(2, -1);
        self.out.forward(&(&parts[0] * parts[1].gelu("none")))
    }
}

/// Pre-LN block: self-attention, cross-attention to the context, feed-forward.
#[derive(Debug)]
struct TransformerBlock {
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn new(vs: nn::Path, dim: i64, heads: i64, head_dim: i64, context_dim: i64) -> Self {
        let ln = |name: &str| nn::layer_norm(&vs / name, vec![dim], Default::default());
        Self {
            norm1: ln("norm1"),
            attn1: Attention::new(&vs / "attn1", dim, None, heads, head_dim, false),
            norm2: ln("norm2"),
            attn2: Attention::new(
                &vs / "attn2",
                dim,
                Some(context_dim),
                heads,
                head_dim,
                false,
            ),
            norm3: ln("norm3"),
            ff: FeedForward::new(&vs / "ff", dim),
        }
    }

    /// x: (B, N, dim), context: (B, M, context_dim) -> (B, N, dim).
    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let x = self.attn2.forward(&self.norm2.forward(&x), Some(context)) + x;
        self.ff.forward(&self.norm3.forward(&x)) + x
    }
}

/// GroupNorm -> 1x1 `proj_in` -> transformer blocks over the pixels -> 1x1 `proj_out`, residual.
#[derive(Debug)]
pub struct SpatialTransformer {
    norm: nn::GroupNorm,
    proj_in: nn::Conv2D,
    blocks: Vec<TransformerBlock>,
    proj_out: nn::Conv2D,
}

impl SpatialTransformer {
    /// `channels` wide with `channels / head_dim` heads and `depth` blocks.
    pub fn new(
        vs: nn::Path,
        channels: i64,
        head_dim: i64,
        depth: i64,
        context_dim: i64,
        groups: i64,
    ) -> Self {
        let heads = channels / head_dim;
        Self {
            norm: group_norm(&vs / "norm", groups, channels, 1e-6),
            proj_in: conv2d(&vs / "proj_in", channels, channels, 1, 1, 0),
            blocks: (0..depth)
                .map(|i| {
                    TransformerBlock::new(
                        &vs / "transformer_blocks" / i,
                        channels,
                        heads,
                        head_dim,
                        context_dim,
                    )
                })
                .collect(),
            proj_out: conv2d(&vs / "proj_out", channels, channels, 1, 1, 0),
        }
    }

    /// x: (B, C, H, W), context: (B, M, context_dim) -> (B, C, H, W).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("transformer input is (B, C, H, W)");
        let t = self.proj_in.forward(&self.norm.forward(x));
        // (B, C, H, W) -> (B, H*W, C)
        let mut t = t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        for block in &self.blocks {
            t = block.forward(&t, context);
        }
        // (B, H*W, C) -> (B, C, H, W)
        // Contiguous again, or the convolutions that follow switch to channels-last kernels.
        let t = t.reshape([b, h, w, c]).permute([0, 3, 1, 2]).contiguous();
        self.proj_out.forward(&t) + x
    }
}
