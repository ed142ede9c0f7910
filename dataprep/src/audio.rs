//! Audio features: log mel filterbank energies exactly as python_speech_features `logfbank`
//! (the features AV-HuBERT was trained on), stacked to the video rate and normalised.
//!
//! 16 kHz int16-scale samples -> 26 log energies per 10 ms -> 4 frames stacked (104-d at 25 Hz)
//! -> per-frame layer norm -> trimmed / zero-padded to the number of video frames.
//! Resampling is ffmpeg's job (the video module), not this one's.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Filterbank parameters (python_speech_features defaults for 16 kHz as AV-HuBERT uses them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FbankParams {
    /// Sample rate of the input.
    pub sample_rate: u32,
    /// Samples per analysis frame (25 ms).
    pub frame_len: usize,
    /// Samples between frames (10 ms).
    pub frame_step: usize,
    /// Mel filters.
    pub nfilt: usize,
    /// FFT size.
    pub nfft: usize,
    /// Pre-emphasis coefficient.
    pub preemph: f64,
    /// Frames stacked into one video-rate feature.
    pub stack: usize,
}

impl Default for FbankParams {
    fn default() -> Self {
        Self {
            sample_rate: 16000,
            frame_len: 400,
            frame_step: 160,
            nfilt: 26,
            nfft: 512,
            preemph: 0.97,
            stack: 4,
        }
    }
}

/// A reusable filterbank: FFT plan and triangular mel filters built once.
pub struct LogFbank {
    params: FbankParams,
    fft: Arc<dyn RealToComplex<f64>>,
    /// nfilt x (nfft/2 + 1) filter weights, stored sparsely as (first bin, weights).
    filters: Vec<(usize, Vec<f64>)>,
}

impl std::fmt::Debug for LogFbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFbank")
            .field("params", &self.params)
            .finish()
    }
}

fn hz_to_mel(hz: f64) -> f64 {
    2595.0 * (1.0 + hz / 700.0).log10()
}

fn mel_to_hz(mel: f64) -> f64 {
    700.0 * (10f64.powf(mel / 2595.0) - 1.0)
}

impl LogFbank {
    /// Plans the FFT and builds the mel filters (lowfreq 0, highfreq = sample_rate / 2).
    pub fn new(params: FbankParams) -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(params.nfft);
        let nbins = params.nfft / 2 + 1;
        let (low, high) = (
            hz_to_mel(0.0),
            hz_to_mel(f64::from(params.sample_rate) / 2.0),
        );
        let n = params.nfilt + 2;
        let bins: Vec<f64> = (0..n)
            .map(|i| {
                let mel = low + (high - low) * i as f64 / (n - 1) as f64;
                ((params.nfft + 1) as f64 * mel_to_hz(mel) / f64::from(params.sample_rate)).floor()
            })
            .collect();
        let filters = (0..params.nfilt)
            .map(|j| {
                let (a, b, c) = (bins[j], bins[j + 1], bins[j + 2]);
                let start = a as usize;
                let end = (c as usize).min(nbins);
                let w = (start..end)
                    .map(|i| {
                        let x = i as f64;
                        if x < b {
                            (x - a) / (b - a)
                        } else {
                            (c - x) / (c - b)
                        }
                    })
                    .collect();
                (start, w)
            })
            .collect();
        Self {
            params,
            fft,
            filters,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &FbankParams {
        &self.params
    }

    /// Number of 10 ms frames for `n` samples: 1 + ceil((n - frame_len) / step), at least 1.
    pub fn num_frames(&self, n: usize) -> usize {
        let p = &self.params;
        if n <= p.frame_len {
            1
        } else {
            1 + (n - p.frame_len).div_ceil(p.frame_step)
        }
    }

    /// Log filterbank energies, row-major (frames x nfilt). `samples` are int16-scale values.
    pub fn compute(&self, samples: &[f64]) -> Vec<f64> {
        let p = &self.params;
        let frames = self.num_frames(samples.len());
        let nbins = p.nfft / 2 + 1;
        // Pre-emphasis, then zero padding to cover the last frame.
        let padded = (frames - 1) * p.frame_step + p.frame_len;
        let mut sig = vec![0.0; padded.max(samples.len())];
        if let Some(&first) = samples.first() {
            sig[0] = first;
        }
        for i in 1..samples.len() {
            sig[i] = samples[i] - p.preemph * samples[i - 1];
        }
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0; nbins];
        let mut out = Vec::with_capacity(frames * p.nfilt);
        for f in 0..frames {
            let start = f * p.frame_step;
            // Rectangular window; frames longer than nfft would be truncated (not the case here).
            let len = p.frame_len.min(p.nfft);
            input[..len].copy_from_slice(&sig[start..start + len]);
            input[len..].iter_mut().for_each(|x| *x = 0.0);
            // The plan only fails on wrong buffer lengths, which make_*_vec rule out.
            let _ = self
                .fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch);
            for (pw, c) in power.iter_mut().zip(&spectrum) {
                *pw = c.norm_sqr() / p.nfft as f64;
            }
            for (start, w) in &self.filters {
                let e: f64 = w.iter().zip(&power[*start..]).map(|(a, b)| a * b).sum();
                out.push(if e == 0.0 { f64::EPSILON.ln() } else { e.ln() });
            }
        }
        out
    }
}

/// Stacks `stack` consecutive frames (zero-padding to a multiple first): (T, F) -> (ceil(T/s), s F).
pub fn stack_frames(feats: &[f64], dim: usize, stack: usize) -> Vec<f64> {
    let t = feats.len() / dim;
    let groups = t.div_ceil(stack);
    let mut out = feats.to_vec();
    out.resize(groups * stack * dim, 0.0);
    out
}

/// Layer norm of each row over its `dim` values (no affine, eps 1e-5), in place.
pub fn normalize_rows(x: &mut [f64], dim: usize) {
    for row in x.chunks_mut(dim) {
        let n = row.len() as f64;
        let mean = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        row.iter_mut().for_each(|v| *v = (*v - mean) * inv);
    }
}

/// Trims or zero-pads rows of width `dim` to exactly `frames` rows.
pub fn align_rows(mut x: Vec<f64>, dim: usize, frames: usize) -> Vec<f64> {
    x.resize(frames * dim, 0.0);
    x
}

/// The model's audio input for a clip: stacked, normalised filterbank rows aligned to
/// `video_frames`, as float32 (video_frames x nfilt*stack).
pub fn mel_group_features(fb: &LogFbank, samples: &[f64], video_frames: usize) -> Vec<f32> {
    let p = fb.params();
    let dim = p.nfilt * p.stack;
    let mut x = stack_frames(&fb.compute(samples), p.nfilt, p.stack);
    normalize_rows(&mut x, dim);
    align_rows(x, dim, video_frames)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}
