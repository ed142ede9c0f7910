//! The one progress bar of the project's binaries (data preparation, training, generation):
//! `LABEL [bar] UNIT pos/len MESSAGE elapsed ETA` on stderr, drawn only on a terminal and only
//! where asked (rank 0, `log.progress`). Lines printed while it is drawn go above it so they do
//! not tear it; without a bar they are plain lines (batch jobs keep their logs).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, or nothing (other ranks, switched off, or no terminal).
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar `label` over `total` `unit`s (0: not known yet, see [`Progress::set_total`]),
    /// starting at `done`, when `enabled`.
    pub fn new(enabled: bool, label: &str, unit: &str, done: u64, total: u64) -> Self {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = format!(
                "{label} {{bar:30}} {unit} {{pos}}/{{len}} {{msg}} elapsed {{elapsed}} ETA {{eta}}"
            );
            bar.set_style(
                ProgressStyle::with_template(&template)
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

    /// Sets the total.
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Adds `n` to the total.
    pub fn add_total(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(n);
        }
    }

    /// Moves to `pos`.
    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Moves on by `n`.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// The text after the count (built only when a bar is drawn).
    pub fn message(&self, text: impl FnOnce() -> String) {
        if let Some(b) = &self.bar {
            b.set_message(text());
        }
    }

    /// Prints a line on stdout (above the bar when there is one).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
    }

    /// Prints an error line on stderr (above the bar when there is one).
    pub fn eprintln(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// This process's peak resident memory in MiB (Linux `VmHWM`; child processes such as ffmpeg
/// not included); `None` where the system does not say.
pub fn peak_memory_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
