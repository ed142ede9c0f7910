//! The audio path: audio encoder (AV-HuBERT or the small `mel` encoder) over a sample's audio
//! context, then the temporal filter around the target frame -> cross-attention context.

use tch::nn;
use tch::Tensor;

use crate::avhubert::{AvHubert, MelEncoder};
use crate::config::{AudioEncoderKind, ModelConfig};
use crate::temporal::TemporalFilter;

/// Per-frame audio features.
#[derive(Debug)]
pub enum AudioEncoder {
    /// AV-HuBERT (frozen first NF layers).
    Avhubert(Box<AvHubert>),
    /// Per-frame projection.
    Mel(MelEncoder),
}

/// Audio encoder (`audio.*`) and temporal filter (`temporal.*`).
#[derive(Debug)]
pub struct AudioPath {
    encoder: AudioEncoder,
    temporal: TemporalFilter,
}

impl AudioPath {
    /// Builds both under `vs`.
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Self {
        let encoder = match cfg.audio_encoder.kind {
            AudioEncoderKind::Avhubert => {
                AudioEncoder::Avhubert(Box::new(AvHubert::new(vs / "audio", &cfg.audio_encoder)))
            }
            AudioEncoderKind::Mel => {
                AudioEncoder::Mel(MelEncoder::new(vs / "audio", &cfg.audio_encoder))
            }
        };
        Self {
            encoder,
            temporal: TemporalFilter::new(
                vs / "temporal",
                &cfg.temporal,
                i64::from(cfg.context_dim()),
            ),
        }
    }

    /// Cross-attention context of one sample: mel (T, 104) context, target at `offset` ->
    /// (1, M, D) with M = 1 (pooled) or W. In training, `keep(i)` decides whether AV-HuBERT layer
    /// i runs (layerdrop; called only when layerdrop > 0).
    pub fn context(
        &self,
        mel: &Tensor,
        offset: i64,
        train: bool,
        keep: impl FnMut(usize) -> bool,
    ) -> Tensor {
        let x = mel.unsqueeze(0);
        // (1, T, 104) -> (1, T, D)
        let f = match &self.encoder {
            AudioEncoder::Avhubert(e) => e.forward(&x, train, keep),
            AudioEncoder::Mel(e) => e.forward(&x),
        };
        self.temporal.forward(&self.temporal.window_at(&f, offset))
    }

    /// Contexts of a batch, each encoded on its own (contexts differ in length; nothing of one
    /// sample leaks into another's features): (B, M, D). `keep(s, i)`: whether layer i runs for
    /// sample s (layerdrop).
    pub fn batch_context(
        &self,
        mels: &[Tensor],
        offsets: &[i64],
        train: bool,
        keep: impl Fn(usize, usize) -> bool,
    ) -> Tensor {
        let parts: Vec<Tensor> = mels
            .iter()
            .zip(offsets)
            .enumerate()
            .map(|(s, (m, &o))| self.context(m, o, train, |i| keep(s, i)))
            .collect();
        Tensor::cat(&parts, 0)
    }
}
