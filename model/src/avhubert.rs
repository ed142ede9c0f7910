//! AV-HuBERT audio-only encoder (fairseq names, positional-conv weight norm folded), with the
//! frozen/trainable split of SyncDiff: the first NF layers and everything before them are a fixed
//! function of the audio (no_grad, eval mode); the remaining layers train with the UNet.
//!
//! Input: stacked normalised filterbank (B, T, 104) at 25 Hz over the clip's audio context;
//! output: one D-dim feature per frame (B, T, D).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::AudioEncoderConfig;
use crate::nn::linear;

/// Self-attention with fairseq's `q_proj`, `k_proj`, `v_proj`, `out_proj` (all with bias).
#[derive(Debug)]
struct SelfAttention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    heads: i64,
}

impl SelfAttention {
    fn new(vs: nn::Path, dim: i64, heads: i64) -> Self {
        Self {
            q_proj: linear(&vs / "q_proj", dim, dim, true),
            k_proj: linear(&vs / "k_proj", dim, dim, true),
            v_proj: linear(&vs / "v_proj", dim, dim, true),
            out_proj: linear(&vs / "out_proj", dim, dim, true),
            heads,
        }
    }

    /// x: (B, T, D) -> (B, T, D).
    fn forward(&self, x: &Tensor, dropout: f64) -> Tensor {
        let (b, t, d) = x.size3().expect("AV-HuBERT layer input is (B, T, D)");
        let hd = d / self.heads;
        // (B, T, D) -> (B, heads, T, hd)
        let split = |y: Tensor| y.view([b, t, self.heads, hd]).transpose(1, 2);
        let q = split(self.q_proj.forward(x));
        let k = split(self.k_proj.forward(x));
        let v = split(self.v_proj.forward(x));
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            dropout,
            false,
            None,
            false,
        );
        self.out_proj.forward(&o.transpose(1, 2).reshape([b, t, d]))
    }
}

/// Pre-LN transformer layer (fairseq `TransformerSentenceEncoderLayer`, `layer_norm_first`).
#[derive(Debug)]
struct EncoderLayer {
    self_attn: SelfAttention,
    self_attn_layer_norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    final_layer_norm: nn::LayerNorm,
}

/// Dropout probabilities of a layer; all zero in eval mode.
#[derive(Debug, Clone, Copy, Default)]
struct Dropouts {
    hidden: f64,
    attention: f64,
    activation: f64,
}

impl EncoderLayer {
    fn new(vs: nn::Path, cfg: &AudioEncoderConfig) -> Self {
        let d = i64::from(cfg.embed_dim);
        let ln = |name: &str| nn::layer_norm(&vs / name, vec![d], Default::default());
        Self {
            self_attn: SelfAttention::new(&vs / "self_attn", d, i64::from(cfg.heads)),
            self_attn_layer_norm: ln("self_attn_layer_norm"),
            fc1: linear(&vs / "fc1", d, i64::from(cfg.ffn_dim), true),
            fc2: linear(&vs / "fc2", i64::from(cfg.ffn_dim), d, true),
            final_layer_norm: ln("final_layer_norm"),
        }
    }

    /// Every parameter tensor of the layer.
    fn parameters(&self) -> Vec<&Tensor> {
        let a = &self.self_attn;
        let linears = [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.out_proj,
            &self.fc1,
            &self.fc2,
        ];
        let norms = [&self.self_attn_layer_norm, &self.final_layer_norm];
        linears
            .iter()
            .flat_map(|l| std::iter::once(&l.ws).chain(&l.bs))
            .chain(norms.iter().flat_map(|n| n.ws.iter().chain(&n.bs)))
            .collect()
    }

    /// x: (B, T, D) -> (B, T, D).
    fn forward(&self, x: &Tensor, p: Dropouts, train: bool) -> Tensor {
        let h = self.self_attn.forward(
            &self.self_attn_layer_norm.forward(x),
            if train { p.attention } else { 0.0 },
        );
        let x = x + h.dropout(p.hidden, train);
        let h = self
            .fc1
            .forward(&self.final_layer_norm.forward(&x))
            .gelu("none")
            .dropout(p.activation, train);
        &x + self.fc2.forward(&h).dropout(p.hidden, train)
    }
}

/// The AV-HuBERT audio encoder.
#[derive(Debug)]
pub struct AvHubert {
    proj: nn::Linear,
    layer_norm: nn::LayerNorm,
    post_extract_proj: nn::Linear,
    pos_conv: nn::Conv1D,
    layers: Vec<EncoderLayer>,
    final_layer_norm: nn::LayerNorm,
    embed_dim: i64,
    frozen: usize,
    dropouts: Dropouts,
    layerdrop: f64,
}

impl AvHubert {
    /// Builds the encoder under `vs` and marks the frozen parameters (`requires_grad = false`):
    /// with NF > 0 the front end, the positional convolution and layers 0..NF.
    pub fn new(vs: nn::Path, cfg: &AudioEncoderConfig) -> Self {
        let d = i64::from(cfg.embed_dim);
        let conv = nn::ConvConfig {
            padding: i64::from(cfg.pos_conv_kernel) / 2,
            groups: i64::from(cfg.pos_conv_groups),
            ..Default::default()
        };
        let enc = &vs / "encoder";
        let model = Self {
            proj: linear(
                &vs / "feature_extractor_audio" / "proj",
                i64::from(cfg.input_dim),
                d,
                true,
            ),
            layer_norm: nn::layer_norm(&vs / "layer_norm", vec![2 * d], Default::default()),
            post_extract_proj: linear(&vs / "post_extract_proj", 2 * d, d, true),
            pos_conv: nn::conv1d(
                &enc / "pos_conv" / 0,
                d,
                d,
                i64::from(cfg.pos_conv_kernel),
                conv,
            ),
            layers: (0..cfg.layers)
                .map(|i| EncoderLayer::new(&enc / "layers" / i, cfg))
                .collect(),
            final_layer_norm: nn::layer_norm(&enc / "layer_norm", vec![d], Default::default()),
            embed_dim: d,
            frozen: cfg.frozen_layers as usize,
            dropouts: Dropouts {
                hidden: cfg.dropout,
                attention: cfg.attention_dropout,
                activation: cfg.activation_dropout,
            },
            layerdrop: cfg.layerdrop,
        };
        if model.frozen > 0 {
            let mut frozen = vec![
                &model.proj.ws,
                &model.post_extract_proj.ws,
                &model.pos_conv.ws,
            ];
            frozen.extend(
                model
                    .proj
                    .bs
                    .iter()
                    .chain(&model.post_extract_proj.bs)
                    .chain(&model.pos_conv.bs),
            );
            frozen.extend(model.layer_norm.ws.iter().chain(&model.layer_norm.bs));
            for layer in &model.layers[..model.frozen.min(model.layers.len())] {
                frozen.extend(layer.parameters());
            }
            for t in frozen {
                let _ = t.set_requires_grad(false);
            }
        }
        model
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Frozen layers NF.
    pub fn frozen_layers(&self) -> usize {
        self.frozen
    }

    /// Front end: Linear(104 -> D), concatenation with a zero video stream, LayerNorm(2D),
    /// Linear(2D -> D). (B, T, 104) -> (B, T, D).
    pub fn input_features(&self, x: &Tensor) -> Tensor {
        let f = self.proj.forward(x);
        // The video stream of AV-HuBERT is absent: zeros in its half of the fused features.
        let f = Tensor::cat(&[&f, &f.zeros_like()], -1);
        self.post_extract_proj.forward(&self.layer_norm.forward(&f))
    }

    /// Positional convolution, then layers 0..n in eval mode, on front-end features
    /// (B, T, D) -> (B, T, D), without the final LayerNorm.
    pub fn encoder_until(&self, f: &Tensor, n: usize) -> Tensor {
        let t = f.size()[1];
        // (B, T, D) -> (B, D, T); the even kernel makes T + 1 outputs: drop the last.
        let c = self
            .pos_conv
            .forward(&f.transpose(1, 2))
            .narrow(2, 0, t)
            .gelu("none");
        let mut h = f + c.transpose(1, 2);
        for layer in &self.layers[..n.min(self.layers.len())] {
            h = layer.forward(&h, Dropouts::default(), false);
        }
        h
    }

    /// Front end, positional convolution and layers 0..n, eval mode: (B, T, 104) -> (B, T, D).
    pub fn until_layer(&self, x: &Tensor, n: usize) -> Tensor {
        self.encoder_until(&self.input_features(x), n)
    }

    /// Runs layers n.. and the final LayerNorm on the output of `until_layer(x, n)`.
    /// In training, these layers use the configured dropouts and layerdrop (`keep(i)` decides
    /// whether layer i runs; pass `|_| true` for none).
    pub fn from_layer(
        &self,
        h: &Tensor,
        n: usize,
        train: bool,
        mut keep: impl FnMut(usize) -> bool,
    ) -> Tensor {
        let mut h = h.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate().skip(n) {
            if train && self.layerdrop > 0.0 && !keep(i) {
                continue;
            }
            h = layer.forward(&h, self.dropouts, train);
        }
        self.final_layer_norm.forward(&h)
    }

    /// The frozen part: everything up to layer NF, without gradient. (B, T, 104) -> (B, T, D).
    /// This is what dataprep can cache.
    pub fn frozen_features(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.until_layer(x, self.frozen))
    }

    /// Whole encoder: frozen part (no grad), then the trained layers. (B, T, 104) -> (B, T, D).
    pub fn forward(&self, x: &Tensor, train: bool, keep: impl FnMut(usize) -> bool) -> Tensor {
        let h = if self.frozen > 0 {
            self.frozen_features(x)
        } else {
            self.until_layer(x, 0)
        };
        self.from_layer(&h, self.frozen, train, keep)
    }

    /// Output width D.
    pub fn embed_dim(&self) -> i64 {
        self.embed_dim
    }
}

/// Per-frame projection of the filterbank with no transformer (`mel` encoder for tiny configs):
/// Linear(104 -> D), GELU, Linear(D -> D).
#[derive(Debug)]
pub struct MelEncoder {
    proj1: nn::Linear,
    proj2: nn::Linear,
}

impl MelEncoder {
    /// Builds it under `vs`.
    pub fn new(vs: nn::Path, cfg: &AudioEncoderConfig) -> Self {
        let d = i64::from(cfg.embed_dim);
        Self {
            proj1: linear(&vs / "proj1", i64::from(cfg.input_dim), d, true),
            proj2: linear(&vs / "proj2", d, d, true),
        }
    }

    /// (B, T, 104) -> (B, T, D).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.proj2
            .forward(&self.proj1.forward(&x.to_kind(Kind::Float)).gelu("none"))
    }
}
