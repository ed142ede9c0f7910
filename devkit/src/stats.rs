//! Statistics for side-by-side benchmarks: interleaved A/B timings, the median ratio A/B and a
//! bootstrap 95% confidence interval of that median.

/// Timings of two implementations measured in alternation.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Seconds per repetition of A (ours).
    pub a: Vec<f64>,
    /// Seconds per repetition of B (the reference), paired with `a`.
    pub b: Vec<f64>,
}

/// Median ratio and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioSummary {
    /// Median of a_i / b_i.
    pub median: f64,
    /// 2.5th percentile of the bootstrap medians.
    pub low: f64,
    /// 97.5th percentile of the bootstrap medians.
    pub high: f64,
    /// Median seconds of A.
    pub a_median: f64,
    /// Median seconds of B.
    pub b_median: f64,
}

/// Median of a slice (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

impl Comparison {
    /// Median ratio A/B of the paired repetitions, with a percentile-bootstrap 95% interval
    /// (2000 resamples, fixed seed: the same timings give the same interval).
    pub fn summary(&self) -> RatioSummary {
        let ratios: Vec<f64> = self.a.iter().zip(&self.b).map(|(a, b)| a / b).collect();
        let n = ratios.len();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut meds: Vec<f64> = (0..2000)
            .map(|_| {
                let sample: Vec<f64> = (0..n)
                    .map(|_| ratios[(next() % n.max(1) as u64) as usize])
                    .collect();
                median(&sample)
            })
            .collect();
        meds.sort_by(f64::total_cmp);
        RatioSummary {
            median: median(&ratios),
            low: meds[50],
            high: meds[1949],
            a_median: median(&self.a),
            b_median: median(&self.b),
        }
    }
}

impl std::fmt::Display for RatioSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ours {:.4} s, reference {:.4} s, ratio {:.3}x (95% CI {:.3}-{:.3})",
            self.a_median, self.b_median, self.median, self.low, self.high
        )
    }
}

/// The reference side of a benchmark: a Python script that prints `ready`, then for every line
/// `step` on its stdin runs one repetition and prints the seconds it took.
#[derive(Debug)]
pub struct PyServer {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
}

impl PyServer {
    /// Starts `python script args...` with extra environment variables.
    pub fn start(
        script: &std::path::Path,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        use std::io::BufRead;
        let mut cmd = crate::python();
        cmd.arg(script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let broken = || std::io::Error::other("the reference process has no pipes");
        let to = child.stdin.take().ok_or_else(broken)?;
        let mut from = std::io::BufReader::new(child.stdout.take().ok_or_else(broken)?);
        let mut line = String::new();
        from.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(std::io::Error::other(format!(
                "{} did not start: {line:?}",
                script.display()
            )));
        }
        Ok(Self { child, to, from })
    }

    /// The process id of the reference process.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Runs one repetition; returns its seconds.
    pub fn step(&mut self) -> std::io::Result<f64> {
        use std::io::{BufRead, Write};
        writeln!(self.to, "step")?;
        self.to.flush()?;
        let mut l = String::new();
        self.from.read_line(&mut l)?;
        l.trim()
            .parse()
            .map_err(|e| std::io::Error::other(format!("reference printed {l:?}: {e}")))
    }

    /// Stops the process.
    pub fn finish(mut self) -> std::io::Result<()> {
        drop(self.to);
        self.child.wait().map(|_| ())
    }
}

/// One warm-up of each, then `reps` interleaved repetitions (A first on even, B first on odd).
pub fn interleave<E>(
    reps: usize,
    mut a: impl FnMut() -> Result<f64, E>,
    mut b: impl FnMut() -> Result<f64, E>,
) -> Result<Comparison, E> {
    a()?;
    b()?;
    let mut c = Comparison::default();
    for i in 0..reps {
        if i % 2 == 0 {
            c.a.push(a()?);
            c.b.push(b()?);
        } else {
            c.b.push(b()?);
            c.a.push(a()?);
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_constant_ratio_is_exact() {
        let c = Comparison {
            a: vec![1.0, 2.0, 3.0, 4.0],
            b: vec![2.0, 4.0, 6.0, 8.0],
        };
        let s = c.summary();
        assert_eq!((s.median, s.low, s.high), (0.5, 0.5, 0.5));
        assert_eq!(s.a_median, 2.5);
    }

    #[test]
    fn interval_brackets_the_median() {
        let c = Comparison {
            a: vec![1.0, 1.1, 0.9, 1.3, 0.8, 1.0, 1.2, 0.95, 1.05, 1.0],
            b: vec![1.0; 10],
        };
        let s = c.summary();
        assert!(
            s.low <= s.median && s.median <= s.high && s.low < s.high,
            "{s:?}"
        );
    }
}
