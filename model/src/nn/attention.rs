//! Multi-head attention (diffusers `Attention`), self or cross.

use tch::nn::{self, Module};
use tch::Tensor;

use super::{group_norm, linear};

/// Multi-head attention with `to_q`, `to_k`, `to_v`, `to_out.0`.
#[derive(Debug)]
pub struct Attention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    /// `context_dim` None: self-attention. `qkv_bias`: biases on the q/k/v projections (the
    /// output projection always has one).
    pub fn new(
        vs: nn::Path,
        query_dim: i64,
        context_dim: Option<i64>,
        heads: i64,
        head_dim: i64,
        qkv_bias: bool,
    ) -> Self {
        let inner = heads * head_dim;
        let kv_dim = context_dim.unwrap_or(query_dim);
        Self {
            to_q: linear(&vs / "to_q", query_dim, inner, qkv_bias),
            to_k: linear(&vs / "to_k", kv_dim, inner, qkv_bias),
            to_v: linear(&vs / "to_v", kv_dim, inner, qkv_bias),
            to_out: linear(&vs / "to_out" / 0, inner, query_dim, true),
            heads,
            head_dim,
        }
    }

    /// x: (B, N, query_dim); context: (B, M, context_dim) or None for self-attention.
    /// Returns (B, N, query_dim).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let (b, n, _) = x.size3().expect("attention input is (B, N, D)");
        let ctx = context.unwrap_or(x);
        // (B, L, heads * head_dim) -> (B, heads, L, head_dim)
        let split = |t: Tensor| t.view([b, -1, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(self.to_q.forward(x));
        let k = split(self.to_k.forward(ctx));
        let v = split(self.to_v.forward(ctx));
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        // (B, heads, N, head_dim) -> (B, N, heads * head_dim)
        let o = o
            .transpose(1, 2)
            .reshape([b, n, self.heads * self.head_dim]);
        self.to_out.forward(&o)
    }
}

/// Single-head self-attention over the pixels of a feature map with a GroupNorm in front and a
/// residual connection (the autoencoder's mid-block attention; diffusers `group_norm` + `Attention`).
#[derive(Debug)]
pub struct SpatialSelfAttention {
    group_norm: nn::GroupNorm,
    attn: Attention,
}

impl SpatialSelfAttention {
    /// `channels` wide, GroupNorm with `groups` and `eps`.
    pub fn new(vs: nn::Path, channels: i64, groups: i64, eps: f64) -> Self {
        Self {
            group_norm: group_norm(&vs / "group_norm", groups, channels, eps),
            attn: Attention::new(vs, channels, None, 1, channels, true),
        }
    }

    /// x: (B, C, H, W) -> (B, C, H, W).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("attention block input is (B, C, H, W)");
        // (B, C, H, W) -> (B, H*W, C)
        let t = self
            .group_norm
            .forward(x)
            .view([b, c, h * w])
            .transpose(1, 2);
        let o = self.attn.forward(&t, None);
        o.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}
