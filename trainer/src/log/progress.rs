//! The progress bar of rank 0: step, loss, samples/s and ETA. Drawn only on a terminal (log
//! lines go through it so they do not tear the bar); in batch jobs the periodic log lines remain.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, or nothing (other ranks, `log.progress: false`, or no terminal).
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `total` steps starting at `done`, when `enabled`.
    pub fn new(enabled: bool, done: u64, total: u64) -> Self {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "train {bar:30} step {pos}/{len} {msg} elapsed {elapsed} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(done);
            bar.reset_eta();
            bar
        });
        Self {
            bar: bar.filter(|b| !b.is_hidden()),
        }
    }

    /// Moves to `step` with the latest loss and throughput.
    pub fn update(&self, step: u64, loss: f64, samples_per_s: f64) {
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(format!("loss {loss:.4} {samples_per_s:.1} samples/s"));
        }
    }

    /// Prints a log line (above the bar when there is one).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
