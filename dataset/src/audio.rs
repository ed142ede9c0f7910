//! Audio features: log mel filterbank energies exactly as python_speech_features `logfbank`
//! (the features AV-HuBERT was trained on), stacked to the video rate and normalised.
//!
//! 16 kHz int16-scale samples -> 26 log energies per 10 ms -> 4 frames stacked (104-d at 25 Hz)
//! -> per-frame layer norm -> trimmed / zero-padded to the number of video frames.
//! Resampling is ffmpeg's job (the video module), not this one's.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

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

/// Accumulator lanes of the filter dot products (one AVX register of f32).
const LANES: usize = 8;

/// A reusable filterbank: FFT plan and triangular mel filters built once.
pub struct LogFbank {
    params: FbankParams,
    // Real FFT of nfft points as a complex f32 FFT of nfft/2 points (even samples in the real
    // part, odd in the imaginary part) plus a split step with `twiddles`; errors ~1e-5 on the
    // log energies.
    fft: Arc<dyn Fft<f32>>,
    twiddles: Vec<Complex<f32>>,
    /// nfilt x (nfft/2 + 1) filter weights, stored sparsely as (first bin, weights).
    filters: Vec<(usize, Vec<f32>)>,
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
        assert!(params.nfft % 2 == 0, "nfft must be even");
        let fft = FftPlanner::<f32>::new().plan_fft_forward(params.nfft / 2);
        let twiddles = (0..=params.nfft / 2)
            .map(|k| {
                let a = -std::f64::consts::TAU * k as f64 / params.nfft as f64;
                Complex::new(a.cos() as f32, a.sin() as f32)
            })
            .collect();
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
                        let v = if x < b {
                            (x - a) / (b - a)
                        } else {
                            (c - x) / (c - b)
                        };
                        v as f32
                    })
                    .collect::<Vec<f32>>();
                // Zero-padded to whole lanes, so the dot product below vectorises.
                let mut w = w;
                w.resize(w.len().div_ceil(LANES) * LANES, 0.0);
                (start, w)
            })
            .collect();
        Self {
            params,
            fft,
            twiddles,
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
        let mut out = Vec::with_capacity(self.num_frames(samples.len()) * self.params.nfilt);
        self.each_frame(samples, |power| self.log_energies(power, &mut out));
        out
    }

    /// MFCCs as python_speech_features `mfcc` computes them with its defaults (13 cepstra of
    /// these filters, DCT-II orthonormal, lifter 22, the first replaced by the log frame
    /// energy), row-major (frames x 13): the audio features of SyncNet.
    pub fn mfcc(&self, samples: &[f64]) -> Vec<f64> {
        const CEPS: usize = 13;
        const LIFTER: f64 = 22.0;
        let nf = self.params.nfilt;
        let mut out = Vec::with_capacity(self.num_frames(samples.len()) * CEPS);
        let mut logs = Vec::with_capacity(nf);
        let lift: Vec<f64> = (0..CEPS)
            .map(|n| 1.0 + LIFTER / 2.0 * (std::f64::consts::PI * n as f64 / LIFTER).sin())
            .collect();
        self.each_frame(samples, |power| {
            logs.clear();
            self.log_energies(power, &mut logs);
            let energy: f64 = power[..=self.params.nfft / 2]
                .iter()
                .map(|&v| f64::from(v))
                .sum();
            out.push(if energy == 0.0 {
                f64::EPSILON.ln()
            } else {
                energy.ln()
            });
            for (k, l) in lift.iter().enumerate().skip(1) {
                let c: f64 = logs
                    .iter()
                    .enumerate()
                    .map(|(n, &x)| {
                        x * (std::f64::consts::PI * k as f64 * (2 * n + 1) as f64 / (2 * nf) as f64)
                            .cos()
                    })
                    .sum();
                out.push(c * (2.0 / nf as f64).sqrt() * l);
            }
        });
        out
    }

    /// Appends the log energies of the filters for one power spectrum.
    fn log_energies(&self, power: &[f32], out: &mut Vec<f64>) {
        for (first, w) in &self.filters {
            let mut acc = [0.0f32; LANES];
            for (wc, pc) in w
                .chunks_exact(LANES)
                .zip(power[*first..].chunks_exact(LANES))
            {
                for l in 0..LANES {
                    acc[l] += wc[l] * pc[l];
                }
            }
            let e: f32 = acc.iter().sum();
            // Exact zeros become machine epsilon, as in python_speech_features.
            out.push(if e == 0.0 {
                f64::EPSILON.ln()
            } else {
                f64::from(e.ln())
            });
        }
    }

    /// Calls `f` with the power spectrum (nfft/2 + 1 bins, then zeros) of every frame.
    fn each_frame(&self, samples: &[f64], mut visit: impl FnMut(&[f32])) {
        let p = &self.params;
        let frames = self.num_frames(samples.len());
        let len = p.frame_len.min(p.nfft);
        let padded = (frames - 1) * p.frame_step + len;
        let mut sig = vec![0.0f32; padded.max(samples.len())];
        if let Some(&first) = samples.first() {
            sig[0] = first as f32;
        }
        for (d, w) in sig[1..].iter_mut().zip(samples.windows(2)) {
            *d = (w[1] - p.preemph * w[0]) as f32;
        }
        let mut work = self.work();
        for f in 0..frames {
            let x = &sig[f * p.frame_step..f * p.frame_step + len];
            self.power(x, &mut work);
            visit(&work.power);
        }
    }

    /// Scratch space of [`Self::power`].
    fn work(&self) -> Work {
        let m = self.params.nfft / 2;
        Work {
            buf: vec![Complex::new(0.0f32, 0.0); m],
            scratch: vec![Complex::new(0.0f32, 0.0); self.fft.get_inplace_scratch_len()],
            power: vec![0.0f32; m + 1 + LANES],
        }
    }

    /// The power spectrum of one pre-emphasised frame `x` into `work.power`.
    fn power(&self, x: &[f32], work: &mut Work) {
        let p = &self.params;
        let m = p.nfft / 2;
        let scale = 1.0 / p.nfft as f32;
        let Work {
            buf,
            scratch,
            power,
        } = work;
        // The real FFT of nfft points as a complex FFT of nfft/2: even samples in the real
        // parts, odd ones in the imaginary parts, then split.
        let pairs = x.chunks_exact(2);
        let odd = pairs.remainder().first().copied();
        let full = pairs.len();
        for (z, xy) in buf.iter_mut().zip(pairs) {
            *z = Complex::new(xy[0], xy[1]);
        }
        buf[full..]
            .iter_mut()
            .for_each(|z| *z = Complex::new(0.0, 0.0));
        if let Some(last) = odd {
            buf[full] = Complex::new(last, 0.0);
        }
        self.fft.process_with_scratch(buf, scratch);
        let split = |zk: Complex<f32>, zmk: Complex<f32>, w: Complex<f32>| {
            let zc = zmk.conj();
            let e = (zk + zc) * 0.5;
            let d = zk - zc;
            let o = Complex::new(d.im * 0.5, -d.re * 0.5);
            (e + w * o).norm_sqr() * scale
        };
        power[0] = split(buf[0], buf[0], self.twiddles[0]);
        power[m] = split(buf[0], buf[0], self.twiddles[m]);
        let mirrored = buf[1..].iter().rev();
        for (((pw, zk), zmk), w) in power[1..m]
            .iter_mut()
            .zip(&buf[1..])
            .zip(mirrored)
            .zip(&self.twiddles[1..m])
        {
            *pw = split(*zk, *zmk, *w);
        }
    }

    /// The samples that rows `rows` of [`mel_group_features`] are made from: give
    /// [`mel_group_rows`] at least these (clipped to the clip's length).
    pub fn samples_for_rows(&self, rows: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let p = &self.params;
        let hop = p.frame_step * p.stack;
        let len = p.frame_len.min(p.nfft);
        if rows.is_empty() {
            return 0..0;
        }
        // One sample before the first for the pre-emphasis.
        let first = (rows.start * hop).saturating_sub(1);
        let last = ((rows.end - 1) * p.stack + p.stack - 1) * p.frame_step + len;
        first..last
    }
}

/// Scratch space of one frame's FFT.
struct Work {
    buf: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
}

/// Rows `rows` of `mel_group_features(fb, all, video_frames)` computed from a part of the clip's
/// samples only, bit for bit the same: `part` holds `all[start..start + part.len()]`, `total` is
/// `all.len()`, and `part` must cover `fb.samples_for_rows(rows)` clipped to `total` (else
/// `None`). Long recordings are featurised a segment at a time this way.
pub fn mel_group_rows(
    fb: &LogFbank,
    part: &[f64],
    start: usize,
    total: usize,
    rows: std::ops::Range<usize>,
) -> Option<Vec<f32>> {
    let p = fb.params();
    let need = fb.samples_for_rows(rows.clone());
    let (need_start, need_end) = (need.start.min(total), need.end.min(total));
    if need_start < start || need_end > start + part.len() {
        return None;
    }
    let dim = p.nfilt * p.stack;
    let frames = fb.num_frames(total);
    let groups = frames.div_ceil(p.stack);
    let len = p.frame_len.min(p.nfft);
    // The pre-emphasised signal at i, zero past the end (as `each_frame` pads it).
    let s = |i: usize| part[i - start];
    let sig = |i: usize| -> f32 {
        if i >= total {
            0.0
        } else if i == 0 {
            s(0) as f32
        } else {
            (s(i) - p.preemph * s(i - 1)) as f32
        }
    };
    let mut work = fb.work();
    let mut x = vec![0.0f32; len];
    let mut out = Vec::with_capacity(rows.len() * dim);
    let mut row = Vec::with_capacity(dim);
    for k in rows {
        if k >= groups {
            // Rows past the audio are zeros (`align_rows`), not normalised.
            out.extend(std::iter::repeat_n(0.0f32, dim));
            continue;
        }
        row.clear();
        for f in k * p.stack..(k + 1) * p.stack {
            if f >= frames {
                // The stack's padding frames (`stack_frames`).
                row.extend(std::iter::repeat_n(0.0f64, p.nfilt));
                continue;
            }
            for (t, v) in x.iter_mut().enumerate() {
                *v = sig(f * p.frame_step + t);
            }
            fb.power(&x, &mut work);
            fb.log_energies(&work.power, &mut row);
        }
        normalize_rows(&mut row, dim);
        out.extend(row.iter().map(|&v| v as f32));
    }
    Some(out)
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
