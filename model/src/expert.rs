//! The lip-sync expert: does this mouth say this audio? Two encoders map W consecutive frames to
//! embeddings, one from the lower (masked) half of the frames' stored latents, one from the
//! frames' stored filterbank rows; the cosine of the two embeddings is the probability that they
//! are in sync, trained with binary cross-entropy on aligned and shifted pairs (Wav2Lip's expert,
//! LatentSync's StableSyncNet). Both embeddings pass a ReLU before they are L2-normalised, so the
//! cosine lies in [0, 1] and needs no squashing.
//!
//! It works on the data set's own representation (any autoencoder's latents, including the
//! pixel-space `resample`), so it trains on the shards this project makes, with no decoder in
//! the loop.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::nn::{conv2d, group_norm, linear, Downsample, ResnetBlock};
use crate::offsets::{offset_scores, OffsetScores};

/// The expert's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertShape {
    /// Frames per window (W).
    pub window: i64,
    /// Channels of one frame's latent.
    pub latent_channels: i64,
    /// Rows of the lower half of a latent (the expert's view of the mouth).
    pub lower_rows: i64,
    /// Columns of a latent.
    pub latent_cols: i64,
    /// Width of one filterbank row (104: 26 filters x 4 stacked 10 ms frames per video frame).
    pub mel_dim: i64,
    /// Widths of the encoder stages (the visual encoder halves its resolution between them).
    pub channels: Vec<i64>,
    /// Width of the embeddings.
    pub embed_dim: i64,
    /// GroupNorm groups (dividing every width).
    pub groups: i64,
}

/// The visual encoder: the W frames' lower halves stacked on channels, residual stages with
/// stride-2 downsampling between them, global average pooling, a projection.
#[derive(Debug)]
struct Visual {
    conv_in: nn::Conv2D,
    stages: Vec<(ResnetBlock, Option<Downsample>)>,
    norm_out: nn::GroupNorm,
    proj: nn::Linear,
}

impl Visual {
    fn new(vs: nn::Path, s: &ExpertShape) -> Self {
        let cin = s.window * s.latent_channels;
        let c0 = s.channels[0];
        let last = s.channels.len() - 1;
        let mut stages = Vec::new();
        let mut prev = c0;
        for (i, &c) in s.channels.iter().enumerate() {
            let block = ResnetBlock::new(
                &vs / "stages" / i / "block",
                prev,
                c,
                None,
                s.groups,
                1e-6,
                0.0,
            );
            let down = (i < last).then(|| Downsample::new(&vs / "stages" / i / "down", c, false));
            stages.push((block, down));
            prev = c;
        }
        Self {
            conv_in: conv2d(&vs / "conv_in", cin, c0, 3, 1, 1),
            stages,
            norm_out: group_norm(&vs / "norm_out", s.groups, prev, 1e-6),
            proj: linear(&vs / "proj", prev, s.embed_dim, true),
        }
    }

    /// x: (B, W*C, rows, cols) -> (B, D), non-negative.
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for (block, down) in &self.stages {
            h = block.forward(&h, None, false);
            if let Some(d) = down {
                h = d.forward(&h);
            }
        }
        let h = self
            .norm_out
            .forward(&h)
            .silu()
            .mean_dim(&[2i64, 3][..], false, Kind::Float);
        self.proj.forward(&h).relu()
    }
}

/// One residual block over time (GroupNorm, SiLU, conv k=3, twice), with a 1x1 shortcut when
/// the width changes.
#[derive(Debug)]
struct Block1d {
    norm1: nn::GroupNorm,
    conv1: nn::Conv1D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv1D,
    shortcut: Option<nn::Conv1D>,
}

fn conv1d(vs: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv1D {
    let cfg = nn::ConvConfig {
        padding: k / 2,
        ..Default::default()
    };
    nn::conv1d(vs, cin, cout, k, cfg)
}

impl Block1d {
    fn new(vs: nn::Path, cin: i64, cout: i64, groups: i64) -> Self {
        Self {
            norm1: group_norm(&vs / "norm1", groups, cin, 1e-6),
            conv1: conv1d(&vs / "conv1", cin, cout, 3),
            norm2: group_norm(&vs / "norm2", groups, cout, 1e-6),
            conv2: conv1d(&vs / "conv2", cout, cout, 3),
            shortcut: (cin != cout).then(|| conv1d(&vs / "shortcut", cin, cout, 1)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// The audio encoder: the W frames' filterbank rows as a sequence (rows as channels), residual
/// blocks over time, average pooling, a projection.
#[derive(Debug)]
struct Audio {
    conv_in: nn::Conv1D,
    blocks: Vec<Block1d>,
    norm_out: nn::GroupNorm,
    proj: nn::Linear,
}

impl Audio {
    fn new(vs: nn::Path, s: &ExpertShape) -> Self {
        let c0 = s.channels[0];
        let mut blocks = Vec::new();
        let mut prev = c0;
        for (i, &c) in s.channels.iter().enumerate() {
            blocks.push(Block1d::new(&vs / "blocks" / i, prev, c, s.groups));
            prev = c;
        }
        Self {
            conv_in: conv1d(&vs / "conv_in", s.mel_dim, c0, 3),
            blocks,
            norm_out: group_norm(&vs / "norm_out", s.groups, prev, 1e-6),
            proj: linear(&vs / "proj", prev, s.embed_dim, true),
        }
    }

    /// x: (B, W, mel) -> (B, D), non-negative.
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(&x.transpose(1, 2));
        for b in &self.blocks {
            h = b.forward(&h);
        }
        let h = self
            .norm_out
            .forward(&h)
            .silu()
            .mean_dim(&[2i64][..], false, Kind::Float);
        self.proj.forward(&h).relu()
    }
}

/// The lip-sync expert: `visual.*` and `audio.*` parameters.
#[derive(Debug)]
pub struct SyncExpert {
    shape: ExpertShape,
    visual: Visual,
    audio: Audio,
}

impl SyncExpert {
    /// The expert of `shape` under `vs` (random initialisation).
    pub fn new(vs: &nn::Path, shape: &ExpertShape) -> Self {
        Self {
            shape: shape.clone(),
            visual: Visual::new(vs / "visual", shape),
            audio: Audio::new(vs / "audio", shape),
        }
    }

    /// Its sizes.
    pub fn shape(&self) -> &ExpertShape {
        &self.shape
    }

    /// Unit-length visual embeddings of windows of lower-half latents (B, W, C, rows, cols).
    pub fn embed_frames(&self, lower: &Tensor) -> Tensor {
        let s = &self.shape;
        let x = lower.reshape([
            -1,
            s.window * s.latent_channels,
            s.lower_rows,
            s.latent_cols,
        ]);
        normalise(&self.visual.forward(&x))
    }

    /// Unit-length audio embeddings of windows of filterbank rows (B, W, mel).
    pub fn embed_audio(&self, rows: &Tensor) -> Tensor {
        normalise(&self.audio.forward(rows))
    }

    /// A clip's sync scores (syncnet_python's protocol): every W-frame window of the clip's
    /// lower-half latents `lower` (T, C, rows, cols) and filterbank rows `mel` (T, mel) embedded
    /// (`batch` windows at a time, no gradients), then the offset search over +-`vshift` frames.
    /// `None` when the clip has fewer than W + 1 frames.
    pub fn clip_scores(
        &self,
        lower: &Tensor,
        mel: &Tensor,
        vshift: i64,
        batch: i64,
    ) -> Result<Option<OffsetScores>, tch::TchError> {
        let w = self.shape.window;
        let frames = lower.size()[0].min(mel.size()[0]);
        let windows = frames - w + 1;
        if windows < 2 {
            return Ok(None);
        }
        // Every window at once as views: (windows, W, C, rows, cols) and (windows, W, mel).
        let lw = lower
            .narrow(0, 0, frames)
            .unfold(0, w, 1)
            .permute([0, 4, 1, 2, 3]);
        let mw = mel.narrow(0, 0, frames).unfold(0, w, 1).transpose(1, 2);
        let (mut v, mut a) = (Vec::new(), Vec::new());
        tch::no_grad(|| {
            for start in (0..windows).step_by(batch.max(1) as usize) {
                let n = batch.min(windows - start);
                v.push(self.embed_frames(&lw.narrow(0, start, n).contiguous()));
                a.push(self.embed_audio(&mw.narrow(0, start, n).contiguous()));
            }
        });
        let host = |t: Vec<Tensor>| {
            Tensor::cat(&t, 0)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
        };
        offset_scores(&host(v), &host(a), vshift).map(Some)
    }
}

/// Rows divided by their L2 norm (a zero row stays zero).
fn normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-8)
}

/// Cosine similarity of unit embeddings, row by row: (B, D), (B, D) -> (B,), in [0, 1].
pub fn cosine(v: &Tensor, a: &Tensor) -> Tensor {
    (v * a).sum_dim_intlist(&[1i64][..], false, Kind::Float)
}

/// Distance of unit embeddings, row by row (what offset search minimises): sqrt(2 - 2 cos).
pub fn distance(v: &Tensor, a: &Tensor) -> Tensor {
    (cosine(v, a) * -2.0 + 2.0).clamp_min(0.0).sqrt()
}

/// Binary cross-entropy of the cosines against labels (1: in sync, 0: not), averaged. At
/// chance (every cosine 0.5) it is ln 2.
pub fn sync_loss(cos: &Tensor, labels: &Tensor) -> Tensor {
    let p = cos.clamp(1e-6, 1.0 - 1e-6);
    let q = p.neg() + 1.0;
    let r = labels.neg() + 1.0;
    -(labels * p.log() + r * q.log()).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tch::nn::OptimizerConfig;

    fn shape() -> ExpertShape {
        ExpertShape {
            window: 5,
            latent_channels: 3,
            lower_rows: 4,
            latent_cols: 8,
            mel_dim: 104,
            channels: vec![32, 64],
            embed_dim: 64,
            groups: 8,
        }
    }

    #[test]
    fn embeddings_are_unit_length_and_cosines_lie_in_0_1() {
        let _torch = syncdiff_devkit::torch();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let e = SyncExpert::new(&vs.root(), &shape());
        let v = e.embed_frames(&Tensor::randn([6, 5, 3, 4, 8], (Kind::Float, Device::Cpu)));
        let a = e.embed_audio(&Tensor::randn([6, 5, 104], (Kind::Float, Device::Cpu)));
        assert_eq!((v.size(), a.size()), (vec![6, 64], vec![6, 64]));
        let norms = Vec::<f64>::try_from(v.norm_scalaropt_dim(2.0, [1], false)).unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
        let c = Vec::<f64>::try_from(cosine(&v, &a)).unwrap();
        assert!(c.iter().all(|c| (-1e-6..=1.0 + 1e-6).contains(c)), "{c:?}");
        let d = Vec::<f64>::try_from(distance(&v, &a)).unwrap();
        for (c, d) in c.iter().zip(&d) {
            assert!((d * d - (2.0 - 2.0 * c)).abs() < 1e-4);
        }
        let half = Tensor::full([4], 0.5, (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]);
        let chance = f64::try_from(sync_loss(&half, &labels)).unwrap();
        assert!((chance - std::f64::consts::LN_2).abs() < 1e-6);
        assert!(e.shape() == &shape());
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names
            .iter()
            .all(|n| n.starts_with("visual.") || n.starts_with("audio.")));
    }

    /// A toy world: the "mouth" (one latent channel of the lower half) follows a fixed
    /// projection of each frame's audio row. The expert must tell aligned windows from windows
    /// whose audio is shifted by 2..=6 frames, from the cosine alone.
    #[test]
    fn it_learns_to_tell_aligned_from_shifted_windows() {
        let _torch = syncdiff_devkit::torch();
        tch::manual_seed(1);
        let dev = Device::Cpu;
        let s = shape();
        let frames = 400i64;
        let audio = Tensor::randn([frames, 104], (Kind::Float, dev));
        let u = Tensor::randn([104], (Kind::Float, dev)) / 104f64.sqrt();
        let opening = audio.matmul(&u).sigmoid(); // (frames,)
        let noise = Tensor::randn([frames, 3, 4, 8], (Kind::Float, dev)) * 0.3;
        let mouth = opening
            .view([frames, 1, 1, 1])
            .expand([frames, 1, 4, 8], false);
        let latents = Tensor::cat(
            &[&noise.narrow(1, 0, 2), &(noise.narrow(1, 2, 1) + mouth)],
            1,
        );
        let vs = nn::VarStore::new(dev);
        let e = SyncExpert::new(&vs.root(), &s);
        let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
        // Batches of 32 aligned and 32 shifted windows; starts and shifts from tch's generator.
        let batch = |n: i64| {
            let starts = Tensor::randint_low(6, frames - 12, [n], (Kind::Int64, dev));
            let shift = Tensor::randint_low(2, 7, [n], (Kind::Int64, dev))
                * (Tensor::randint(2, [n], (Kind::Int64, dev)) * 2 - 1);
            let win = Tensor::arange(5, (Kind::Int64, dev));
            let vi = (starts.unsqueeze(1) + &win).view([-1]);
            let pos = (starts.unsqueeze(1) + &win).view([-1]);
            let neg = ((starts + shift).unsqueeze(1) + &win).view([-1]);
            let v = latents.index_select(0, &vi).view([n, 5, 3, 4, 8]);
            let a_pos = audio.index_select(0, &pos).view([n, 5, 104]);
            let a_neg = audio.index_select(0, &neg).view([n, 5, 104]);
            (v, a_pos, a_neg)
        };
        let labels = Tensor::cat(
            &[
                Tensor::ones([32], (Kind::Float, dev)),
                Tensor::zeros([32], (Kind::Float, dev)),
            ],
            0,
        );
        let step = |e: &SyncExpert, v: &Tensor, ap: &Tensor, an: &Tensor| {
            let ev = e.embed_frames(&Tensor::cat(&[v, v], 0));
            let ea = e.embed_audio(&Tensor::cat(&[ap, an], 0));
            cosine(&ev, &ea)
        };
        let first = {
            let (v, ap, an) = batch(32);
            f64::try_from(sync_loss(&step(&e, &v, &ap, &an), &labels)).unwrap()
        };
        for _ in 0..300 {
            let (v, ap, an) = batch(32);
            let loss = sync_loss(&step(&e, &v, &ap, &an), &labels);
            opt.backward_step(&loss);
        }
        let (v, ap, an) = tch::no_grad(|| batch(32));
        let cos = tch::no_grad(|| step(&e, &v, &ap, &an));
        let right = cos
            .gt(0.5)
            .to_kind(Kind::Float)
            .eq_tensor(&labels)
            .to_kind(Kind::Float);
        let accuracy = f64::try_from(right.mean(Kind::Float)).unwrap();
        let last = f64::try_from(tch::no_grad(|| sync_loss(&cos, &labels))).unwrap();
        assert!(
            accuracy >= 0.9,
            "accuracy {accuracy}, loss {first:.3} -> {last:.3}"
        );
        assert!(last < first - 0.3, "loss {first:.3} -> {last:.3}");
        // A clip (frames 100..300) whose audio rows are those of `k` frames later: the offset
        // search on the trained expert's embeddings reports k (syncnet_python's sign), with a
        // clear confidence; aligned, 0.
        let lower = latents.narrow(0, 100, 200);
        for k in [-4i64, 0, 3] {
            let mel = audio.narrow(0, 100 + k, 200);
            let s = e.clip_scores(&lower, &mel, 8, 64).unwrap().unwrap();
            assert_eq!(s.offset, k, "{s:?}");
            assert!(s.confidence > 0.2, "{s:?}");
        }
        let short = e.clip_scores(&lower.narrow(0, 0, 5), &audio.narrow(0, 0, 5), 8, 64);
        assert!(short.unwrap().is_none());
    }
}
