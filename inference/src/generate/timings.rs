//! Where generation's time goes: wall time per phase of the frame loop, summed over frame steps
//! (and over worker threads for the model's phases under `--workers`), so a user or a benchmark
//! can see which part a batch of clips speeds up and which it does not.

use std::fmt;
use std::time::{Duration, Instant};

/// Time per phase of [`super::generate_batch`]'s loop.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Reading reference frames (waiting on each clip's ffmpeg decoder, or its scratch file).
    pub read: Duration,
    /// Cropping, masking and converting frames into the model's input tensors.
    pub input: Duration,
    /// The audio path (mel windows -> cross-attention context), per clip, in chunks of frames.
    pub context: Duration,
    /// Encoding the reference and masked frames to latents.
    pub encode: Duration,
    /// The sampler: every UNet call of every step.
    pub denoise: Duration,
    /// Decoding the generated latents to images.
    pub decode: Duration,
    /// Pasting the generated face back and handing frames to their sinks (an mp4 encoder).
    pub output: Duration,
    /// The whole loop, wall time.
    pub total: Duration,
    /// Frame steps that ran the model, and the model calls they made (one per chunk).
    pub steps: usize,
    /// Sampling calls (`steps` x the chunks each step was split into).
    pub calls: usize,
}

impl Timings {
    /// Adds the time `f` takes to `slot`.
    pub(crate) fn time<T>(slot: &mut Duration, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        *slot += start.elapsed();
        out
    }

    /// The phases with their names, in loop order.
    pub fn phases(&self) -> [(&'static str, Duration); 7] {
        [
            ("read", self.read),
            ("input", self.input),
            ("context", self.context),
            ("encode", self.encode),
            ("denoise", self.denoise),
            ("decode", self.decode),
            ("output", self.output),
        ]
    }

    /// The loop's time outside the named phases (stacking inputs, bookkeeping).
    pub fn other(&self) -> Duration {
        let named: Duration = self.phases().iter().map(|(_, d)| *d).sum();
        self.total.saturating_sub(named)
    }

    /// Adds another run's timings.
    pub fn add(&mut self, o: &Self) {
        self.read += o.read;
        self.input += o.input;
        self.context += o.context;
        self.encode += o.encode;
        self.denoise += o.denoise;
        self.decode += o.decode;
        self.output += o.output;
        self.total += o.total;
        self.steps += o.steps;
        self.calls += o.calls;
    }
}

impl fmt::Display for Timings {
    /// `read 0.12 s, input 0.30 s, ..., other 0.01 s (total 4.20 s, 25 steps, 25 model calls)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, d) in self.phases() {
            write!(f, "{name} {:.2} s, ", d.as_secs_f64())?;
        }
        write!(
            f,
            "other {:.2} s (total {:.2} s, {} frame steps, {} model calls)",
            self.other().as_secs_f64(),
            self.total.as_secs_f64(),
            self.steps,
            self.calls
        )
    }
}
