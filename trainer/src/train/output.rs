//! What the run shows, in one place: rank 0's log lines, TensorBoard scalars and images, and the
//! progress bar. On other ranks every method does nothing, so the loop never asks which rank it
//! is on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use syncdiff_model::config::Config;

use crate::cadence::Due;
use crate::dist::Runtime;
use crate::error::TrainError;
use crate::heldout::ValLoss;
use crate::log::{png, EventWriter, Progress, Rgb};
use crate::trainer::StepStats;

/// Timings of the steps since the last log line.
#[derive(Debug, Default)]
struct Interval {
    losses: Vec<f64>,
    data: Duration,
    all_reduce: Duration,
    /// Gradient all-reduce collectives.
    calls: usize,
    step: Duration,
    /// Steps skipped on inf/NaN gradients (the fp16 loss scaler, or a non-finite step under
    /// fp32/bf16).
    skipped: u64,
}

/// Rank 0's output sink.
pub(super) struct RunLog {
    prefix: String,
    /// TensorBoard (rank 0 only).
    tb: Option<EventWriter>,
    dir: PathBuf,
    progress: Progress,
    every: u64,
    total: u64,
    global_batch: u32,
    first: u64,
    start: Instant,
    iv: Interval,
    /// Mean loss of the last logged interval.
    last_loss: f64,
}

impl RunLog {
    /// Opens `log.dir` on rank 0 (TensorBoard) and the progress bar from `step` of `total`.
    pub fn open(config: &Config, rt: &Runtime, step: u64, total: u64) -> Result<Self, TrainError> {
        let dir = PathBuf::from(&config.log.dir);
        let tb = if rt.is_main() {
            Some(EventWriter::create(&dir).map_err(log_error(&dir))?)
        } else {
            None
        };
        Ok(Self {
            prefix: rt.prefix(),
            tb,
            dir,
            progress: Progress::new(
                rt.is_main() && config.log.progress,
                "train",
                "step",
                step,
                total,
            ),
            every: config.log.interval,
            total,
            global_batch: config.train.global_batch,
            first: step,
            start: Instant::now(),
            iv: Interval::default(),
            last_loss: f64::NAN,
        })
    }

    /// The rank's prefix for log lines (`[rank 0/2]`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Prints a line on rank 0 (above the progress bar).
    pub fn say(&self, line: &str) {
        if self.tb.is_some() {
            self.progress.println(line);
        }
    }

    /// Mean loss of the last logged interval (NaN before the first).
    pub fn last_loss(&self) -> f64 {
        self.last_loss
    }

    /// Seconds since the log was opened.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn err(&self, source: std::io::Error) -> TrainError {
        log_error(&self.dir)(source)
    }

    /// Records step `step` (learning rate `lr`); every `log.interval` steps, at the last step
    /// and at a stop, logs the interval's means to TensorBoard and a line.
    pub fn step(&mut self, due: Due, lr: f64, st: &StepStats) -> Result<(), TrainError> {
        let step = due.step;
        self.iv.losses.push(st.loss);
        self.iv.data += st.data;
        self.iv.all_reduce += st.all_reduce;
        self.iv.calls += st.all_reduces;
        self.iv.step += st.total;
        self.iv.skipped += u64::from(st.skipped);
        let sps = f64::from(self.global_batch) * (step - self.first) as f64 / self.seconds();
        self.progress.set(step);
        self.progress
            .message(|| format!("loss {:.4} {sps:.1} samples/s", st.loss));
        if !due.every(self.every) {
            return Ok(());
        }
        let iv = std::mem::take(&mut self.iv);
        let n = iv.losses.len().max(1) as f64;
        self.last_loss = iv.losses.iter().sum::<f64>() / n;
        if let Some(tb) = &mut self.tb {
            log_interval(tb, &iv, step, self.last_loss, lr, st, sps)
                .map_err(log_error(&self.dir))?;
            let scale = match st.loss_scale {
                Some(scale) => format!(" loss-scale {scale} ({} skipped)", iv.skipped),
                None if iv.skipped > 0 => format!(
                    " ({} step(s) skipped: non-finite loss or gradients)",
                    iv.skipped
                ),
                None => String::new(),
            };
            self.progress.println(&format!(
                "{} step {step}/{} loss {:.4} lr {lr:.2e} {sps:.1} samples/s data {:.1} ms \
                 all-reduce {:.1} ms ({:.0}% of step, {:.0} calls/step){scale}",
                self.prefix,
                self.total,
                self.last_loss,
                iv.data.as_secs_f64() * 1e3 / n,
                iv.all_reduce.as_secs_f64() * 1e3 / n,
                100.0 * iv.all_reduce.as_secs_f64() / iv.step.as_secs_f64().max(1e-9),
                iv.calls as f64 / n,
            ));
        }
        Ok(())
    }

    /// Logs validation losses (TensorBoard and a line).
    pub fn val(&mut self, step: u64, loss: &ValLoss) -> Result<(), TrainError> {
        let Some(tb) = &mut self.tb else {
            return Ok(());
        };
        let s = step as i64;
        let r = tb
            .scalar("val/loss_true_audio", loss.true_audio as f32, s)
            .and_then(|()| tb.scalar("val/loss_other_audio", loss.other_audio as f32, s))
            .and_then(|()| {
                let gap = loss.other_audio - loss.true_audio;
                tb.scalar("val/audio_gap", gap as f32, s)
            });
        r.map_err(|e| self.err(e))?;
        self.say(&format!(
            "{} val step {step}: loss true-audio {:.4} other-audio {:.4} (gap {:+.4}, {} samples)",
            self.prefix,
            loss.true_audio,
            loss.other_audio,
            loss.other_audio - loss.true_audio,
            loss.samples
        ));
        Ok(())
    }

    /// Logs an image grid of validation samples.
    pub fn image(&mut self, step: u64, img: &Rgb) -> Result<(), TrainError> {
        let Some(tb) = &mut self.tb else {
            return Ok(());
        };
        let r = png(img)
            .and_then(|bytes| tb.image("val/frames", &bytes, img.width, img.height, step as i64));
        r.map_err(|e| self.err(e))
    }

    /// Removes the progress bar (before the final checkpoint lines).
    pub fn end_progress(&self) {
        self.progress.finish();
    }

    /// Flushes TensorBoard.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        match &mut self.tb {
            Some(tb) => tb.flush().map_err(log_error(&self.dir)),
            None => Ok(()),
        }
    }
}

fn log_interval(
    tb: &mut EventWriter,
    iv: &Interval,
    step: u64,
    loss: f64,
    lr: f64,
    st: &StepStats,
    sps: f64,
) -> std::io::Result<()> {
    let s = step as i64;
    let n = iv.losses.len().max(1) as f64;
    tb.scalar("train/loss", loss as f32, s)?;
    tb.scalar("train/lr", lr as f32, s)?;
    if let Some(g) = st.grad_norm {
        tb.scalar("train/grad_norm", g as f32, s)?;
    }
    if let Some(scale) = st.loss_scale {
        tb.scalar("train/loss_scale", scale, s)?;
        tb.scalar("train/skipped_steps", iv.skipped as f32, s)?;
    }
    tb.scalar("train/samples_per_s", sps as f32, s)?;
    tb.scalar("time/step_s", (iv.step.as_secs_f64() / n) as f32, s)?;
    tb.scalar("time/data_wait_s", (iv.data.as_secs_f64() / n) as f32, s)?;
    tb.scalar(
        "time/all_reduce_s",
        (iv.all_reduce.as_secs_f64() / n) as f32,
        s,
    )?;
    tb.scalar("dist/all_reduce_calls", (iv.calls as f64 / n) as f32, s)?;
    let share = iv.all_reduce.as_secs_f64() / iv.step.as_secs_f64().max(1e-9);
    tb.scalar("time/all_reduce_share", share as f32, s)
}

/// The error of a failed write under the log directory `dir`.
fn log_error(dir: &std::path::Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Log {
        path: dir.to_path_buf(),
        source,
    }
}
