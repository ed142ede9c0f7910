//! Temporal filtering network (DiffTalk's AudioAttNet adapted to wide features): attention over a
//! window of W audio frames around the target frame, producing the cross-attention context.
//!
//! Window: frames [t - W/2, t + W/2), zero outside the clip. Attention logits come from a conv
//! stack over time on a learned low-dimensional projection (hidden -> 16 -> 8 -> 4 -> 2 -> 1,
//! kernel 3, LeakyReLU 0.02), then Linear(W, W) and a softmax over the W frames.
//! `pooled`: the weighted sum, one D-dim token. `all`: the W frames re-weighted by W x their
//! attention weight plus a learned position embedding, W tokens.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::{TemporalConfig, TemporalTokens};
use crate::nn::linear;

/// Channel widths of the attention conv stack after the projection.
const CONV_WIDTHS: [i64; 5] = [16, 8, 4, 2, 1];

/// The temporal filter.
#[derive(Debug)]
pub struct TemporalFilter {
    proj: nn::Linear,
    convs: Vec<nn::Conv1D>,
    attention: nn::Linear,
    position: Option<Tensor>,
    window: i64,
    tokens: TemporalTokens,
}

impl TemporalFilter {
    /// Builds the filter for `dim`-wide features under `vs`.
    pub fn new(vs: nn::Path, cfg: &TemporalConfig, dim: i64) -> Self {
        let w = i64::from(cfg.window);
        let hidden = i64::from(cfg.hidden);
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let mut cin = hidden;
        let convs = CONV_WIDTHS
            .iter()
            .enumerate()
            .map(|(i, &cout)| {
                let c = nn::conv1d(&vs / "convs" / i, cin, cout, 3, conv);
                cin = cout;
                c
            })
            .collect();
        let position = (cfg.tokens == TemporalTokens::All).then(|| {
            vs.var(
                "position",
                &[w, dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )
        });
        Self {
            proj: linear(&vs / "proj", dim, hidden, true),
            convs,
            attention: linear(&vs / "attention", w, w, true),
            position,
            window: w,
            tokens: cfg.tokens,
        }
    }

    /// Frames in the window.
    pub fn window(&self) -> i64 {
        self.window
    }

    /// Cuts the window around each target: features (B, T, D), centres t (B,) int64 ->
    /// (B, W, D) holding frames [t - W/2, t + W/2), zeros where that leaves [0, T).
    pub fn gather_window(&self, features: &Tensor, centres: &Tensor) -> Tensor {
        let (b, _, d) = features.size3().expect("audio features are (B, T, D)");
        let half = self.window / 2;
        // Pad W/2 zero frames on both sides: frame j of the window for centre t is padded[t + j].
        let padded = features.constant_pad_nd([0, 0, half, half]);
        let offsets = Tensor::arange(self.window, (Kind::Int64, features.device()));
        let idx = centres.to_kind(Kind::Int64).unsqueeze(1) + offsets.unsqueeze(0);
        // (B, W) -> (B, W, D)
        let idx = idx.unsqueeze(-1).expand([b, self.window, d], false);
        padded.gather(1, &idx, false)
    }

    /// [`gather_window`](Self::gather_window) for one centre given on the host: a slice of the
    /// padded features, with no index tensor to upload. (B, T, D) -> (B, W, D).
    pub fn window_at(&self, features: &Tensor, centre: i64) -> Tensor {
        let half = self.window / 2;
        features
            .constant_pad_nd([0, 0, half, half])
            .narrow(1, centre, self.window)
    }

    /// Attention weights over the window: (B, W, D) -> (B, W).
    pub fn weights(&self, window: &Tensor) -> Tensor {
        // (B, W, hidden) -> (B, hidden, W)
        let mut h = self.proj.forward(window).transpose(1, 2);
        for c in &self.convs {
            // LeakyReLU with slope 0.02: max(y, 0.02 y).
            let y = c.forward(&h);
            h = y.maximum(&(&y * 0.02));
        }
        // (B, 1, W) -> (B, W)
        let logits = self.attention.forward(&h.squeeze_dim(1));
        logits.softmax(-1, Kind::Float)
    }

    /// Context tokens for cross-attention: (B, W, D) -> (B, 1, D) pooled or (B, W, D) all.
    pub fn forward(&self, window: &Tensor) -> Tensor {
        let a = self.weights(window);
        match (&self.position, self.tokens) {
            (Some(pos), TemporalTokens::All) => {
                window * (a.unsqueeze(-1) * self.window as f64) + pos.unsqueeze(0)
            }
            _ => a.unsqueeze(1).matmul(window),
        }
    }
}
